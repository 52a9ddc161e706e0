//! Plots as SVG, drawn on the server with plotters: the page needs no JavaScript and
//! the picture is part of the HTML. Each has axes with labels and units; the caller
//! gives it an accessible name (and a table or text with the same numbers).

use plotters::prelude::*;

const BLUE: RGBColor = RGBColor(11, 87, 208);
/// Dark enough on white for text (WCAG AA).
const INK: RGBColor = RGBColor(60, 60, 67);

/// How the steps of a series are named on its horizontal axis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Steps {
    /// Weeks, named by the date they start on ("12 Jan").
    Weeks,
    /// Months ("Jan 2026").
    Months,
}

fn step_label(day: i32, steps: Steps) -> String {
    let date = crate::stats::period::date_of(day);
    match steps {
        Steps::Weeks => date.strftime("%-d %b").to_string(),
        Steps::Months => date.strftime("%b %Y").to_string(),
    }
}

fn text_style(size: u32) -> TextStyle<'static> {
    ("sans-serif", size).into_font().color(&INK)
}

/// Runs `draw` on a `width` × `height` SVG and returns the SVG (empty axes if it fails).
fn svg(
    width: u32,
    height: u32,
    draw: impl FnOnce(&DrawingArea<SVGBackend, plotters::coord::Shift>) -> Result<(), String>,
) -> String {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (width, height)).into_drawing_area();
        let drawn = root.fill(&WHITE).map_err(|e| e.to_string()).and_then(|()| draw(&root));
        if let Err(e) = drawn.and_then(|()| root.present().map_err(|e| e.to_string())) {
            tracing::warn!(error = %e, "plot failed");
        }
    }
    svg
}

/// An area plot of listens per step (`(day number of the step's start, listens)`), with
/// a vertical axis of listens and a horizontal axis of dates.
pub fn listens_svg(series: &[(i32, u64)], steps: Steps, width: u32, height: u32) -> String {
    svg(width, height, |root| {
        let max = series.iter().map(|(_, n)| *n).max().unwrap_or(0).max(1);
        let n = series.len().max(2) as i32;
        let mut chart = ChartBuilder::on(root)
            .margin(8)
            .x_label_area_size(28)
            .y_label_area_size(44)
            .build_cartesian_2d(0..n - 1, 0u64..max + max / 10 + 1)
            .map_err(|e| e.to_string())?;
        let labels = |i: &i32| series.get(usize::try_from(*i).unwrap_or(0)).map(|(d, _)| step_label(*d, steps));
        chart
            .configure_mesh()
            .disable_x_mesh()
            .light_line_style(RGBColor(235, 235, 235))
            .x_labels(6)
            .y_labels(4)
            .x_label_formatter(&|i| labels(i).unwrap_or_default())
            .y_label_formatter(&|v| v.to_string())
            .y_desc("listens")
            .label_style(text_style(15))
            .axis_desc_style(text_style(15))
            .draw()
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(
                AreaSeries::new(series.iter().enumerate().map(|(i, (_, v))| (i as i32, *v)), 0, BLUE.mix(0.25))
                    .border_style(BLUE),
            )
            .map_err(|e| e.to_string())?;
        Ok(())
    })
}

/// Rank over time: one point per week (`(day number of the week's start, rank)`), rank 1
/// at the top, weeks the item was not charted left as gaps.
pub fn ranks_svg(weeks: &[(i32, Option<u32>)], width: u32, height: u32) -> String {
    svg(width, height, |root| {
        let worst = weeks.iter().filter_map(|(_, r)| *r).max().unwrap_or(1).max(2);
        let n = weeks.len().max(2) as i32;
        // Drawn as height above the bottom: rank r at worst + 1 − r, so 1 is highest.
        let up = |r: u32| worst + 1 - r;
        let mut chart = ChartBuilder::on(root)
            .margin(8)
            .x_label_area_size(28)
            .y_label_area_size(44)
            .build_cartesian_2d(0..n - 1, 1u32..worst + 1)
            .map_err(|e| e.to_string())?;
        let labels = |i: &i32| weeks.get(usize::try_from(*i).unwrap_or(0)).map(|(d, _)| step_label(*d, Steps::Weeks));
        chart
            .configure_mesh()
            .disable_x_mesh()
            .light_line_style(RGBColor(235, 235, 235))
            .x_labels(6)
            .y_labels(usize::try_from(worst.min(6)).unwrap_or(6))
            .x_label_formatter(&|i| labels(i).unwrap_or_default())
            // Heights 1..=worst are ranks worst..=1; the top edge has no rank.
            .y_label_formatter(&|v| if (1..=worst).contains(v) { format!("#{}", worst + 1 - v) } else { String::new() })
            .y_desc("rank")
            .label_style(text_style(15))
            .axis_desc_style(text_style(15))
            .draw()
            .map_err(|e| e.to_string())?;
        // One line per run of charted weeks.
        let mut run: Vec<(i32, u32)> = Vec::new();
        let mut runs = Vec::new();
        for (i, (_, rank)) in weeks.iter().enumerate() {
            match rank {
                Some(r) => run.push((i as i32, up(*r))),
                None => runs.push(std::mem::take(&mut run)),
            }
        }
        runs.push(run);
        for run in runs.into_iter().filter(|r| !r.is_empty()) {
            chart.draw_series(LineSeries::new(run.iter().copied(), BLUE.stroke_width(2))).map_err(|e| e.to_string())?;
            chart.draw_series(run.iter().map(|p| Circle::new(*p, 3, BLUE.filled()))).map_err(|e| e.to_string())?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_series_becomes_an_svg_with_labelled_axes() {
        let day = |y, m, d| crate::stats::period::day_number(jiff::civil::date(y, m, d));
        let svg =
            listens_svg(&[(day(2026, 1, 5), 3), (day(2026, 1, 12), 10), (day(2026, 1, 19), 0)], Steps::Weeks, 300, 120);
        assert!(svg.starts_with("<svg") && svg.contains("</svg>") && svg.contains("<polyline"), "{svg}");
        // Labels are the texts of `<text>` elements, one per line.
        let texts: Vec<&str> = svg.lines().map(str::trim).collect();
        for label in ["listens", "5 Jan", "12 Jan", "10"] {
            assert!(texts.contains(&label), "no {label:?} in {svg}");
        }
        assert!(listens_svg(&[], Steps::Months, 300, 100).contains("</svg>"));
        let ranks =
            ranks_svg(&[(day(2026, 1, 5), Some(3)), (day(2026, 1, 12), None), (day(2026, 1, 19), Some(1))], 300, 120);
        let texts: Vec<&str> = ranks.lines().map(str::trim).collect();
        for label in ["rank", "#1", "#3", "19 Jan"] {
            assert!(texts.contains(&label), "no {label:?} in {ranks}");
        }
        assert!(ranks_svg(&[], 300, 100).contains("</svg>"));
    }
}
