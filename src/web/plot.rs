//! Plots as SVG, drawn on the server with plotters: the page needs no JavaScript and
//! the picture is part of the HTML.

use plotters::prelude::*;

/// An area plot of listens per step (`(day number of the step's start, listens)`).
/// The caller gives the plot an accessible name; the SVG is decorative otherwise.
pub fn listens_svg(series: &[(i32, u64)], width: u32, height: u32) -> String {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (width, height)).into_drawing_area();
        let max = series.iter().map(|(_, n)| *n).max().unwrap_or(0).max(1);
        let n = series.len().max(2) as i32;
        let drawn = (|| -> Result<(), Box<dyn std::error::Error + '_>> {
            root.fill(&WHITE)?;
            let mut chart = ChartBuilder::on(&root)
                .margin(6)
                .x_label_area_size(0)
                .y_label_area_size(0)
                .build_cartesian_2d(0..n - 1, 0u64..max + max / 10 + 1)?;
            chart.draw_series(
                AreaSeries::new(
                    series.iter().enumerate().map(|(i, (_, v))| (i as i32, *v)),
                    0,
                    RGBColor(11, 87, 208).mix(0.25),
                )
                .border_style(RGBColor(11, 87, 208)),
            )?;
            root.present()?;
            Ok(())
        })();
        if let Err(e) = drawn {
            tracing::warn!(error = %e, "plot failed");
        }
    }
    svg
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_series_becomes_an_svg() {
        let svg = super::listens_svg(&[(0, 3), (7, 10), (14, 0), (21, 5)], 300, 100);
        assert!(svg.starts_with("<svg") && svg.contains("</svg>") && svg.contains("<polyline"), "{svg}");
        assert!(super::listens_svg(&[], 300, 100).contains("</svg>"));
    }
}
