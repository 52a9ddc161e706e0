//! Periods and time zones: turning "this ISO week in Berlin" into a UTC range, and a
//! range into the day, month and year buckets the aggregates are kept in.
//!
//! A user's aggregates are bucketed by *local* civil dates in their time zone (a user
//! setting, default UTC), so period boundaries fall at their midnight, DST included.
//! Pure: `now` and the time zone are passed in.

use jiff::civil::{Date, ISOWeekDate, Weekday};
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};

use crate::log::listen::MIN_LISTENED_AT;

/// A period a chart or statistic covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Period {
    /// The last N days up to now (rolling, as Last.fm's "last 7 days").
    LastDays(u32),
    /// The last N months up to now (rolling: 1, 3, 6, 12 are the usual ones).
    LastMonths(u32),
    /// An ISO week (Monday to Sunday) in the user's time zone.
    IsoWeek {
        year: i16,
        week: i8,
    },
    Month {
        year: i16,
        month: i8,
    },
    Year(i16),
    /// Any `[from, to)` in UTC unix seconds.
    Range {
        from: i64,
        to: i64,
    },
    AllTime,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PeriodError {
    #[error("unknown time zone {0:?}")]
    UnknownTimeZone(String),
    #[error("the range starts after it ends ({from} > {to})")]
    Reversed { from: i64, to: i64 },
    #[error("the range {from}..{to} is outside 2002..2200")]
    Absurd { from: i64, to: i64 },
    #[error("no such period: {0}")]
    NoSuchPeriod(String),
}

impl std::str::FromStr for Period {
    type Err = PeriodError;

    /// `7d` (last 7 days), `3m` (last 3 months), `all`, `2024`, `2024-03`, `2024-W05`,
    /// or `FROM..TO` in unix seconds.
    fn from_str(s: &str) -> Result<Period, PeriodError> {
        let bad = || PeriodError::NoSuchPeriod(format!("{s:?} (try 7d, 3m, all, 2024, 2024-03, 2024-W05, FROM..TO)"));
        let s = s.trim();
        if s.eq_ignore_ascii_case("all") {
            return Ok(Period::AllTime);
        }
        if let Some((a, b)) = s.split_once("..") {
            return Ok(Period::Range { from: a.parse().map_err(|_| bad())?, to: b.parse().map_err(|_| bad())? });
        }
        if let Some(n) = s.strip_suffix('d') {
            return n.parse().ok().filter(|n| (1..=36_600).contains(n)).map(Period::LastDays).ok_or_else(bad);
        }
        if let Some(n) = s.strip_suffix('m') {
            return n.parse().ok().filter(|n| (1..=1_200).contains(n)).map(Period::LastMonths).ok_or_else(bad);
        }
        let year = |y: &str| y.parse::<i16>().ok().filter(|y| YEARS.contains(y)).ok_or_else(bad);
        if let Some((y, w)) = s.split_once("-W").or_else(|| s.split_once("-w")) {
            return Ok(Period::IsoWeek { year: year(y)?, week: w.parse().map_err(|_| bad())? });
        }
        if let Some((y, m)) = s.split_once('-') {
            return Ok(Period::Month { year: year(y)?, month: m.parse().map_err(|_| bad())? });
        }
        year(s).map(Period::Year)
    }
}

/// Latest instant a range may reach: 2200-01-01.
pub const MAX_INSTANT: i64 = 7_258_118_400;
/// The calendar years a period may name: listens start in 2002 and ranges end by 2200.
pub const YEARS: std::ops::RangeInclusive<i16> = 1970..=2199;

pub fn time_zone(name: &str) -> Result<TimeZone, PeriodError> {
    TimeZone::get(name).map_err(|_| PeriodError::UnknownTimeZone(name.to_owned()))
}

fn start_of(date: Date, tz: &TimeZone) -> Result<i64, PeriodError> {
    date.to_zoned(tz.clone()).map(|z| z.timestamp().as_second()).map_err(|e| PeriodError::NoSuchPeriod(e.to_string()))
}

/// The local civil date of an instant.
pub fn local_date(at: i64, tz: &TimeZone) -> Date {
    Timestamp::from_second(at).unwrap_or(Timestamp::UNIX_EPOCH).to_zoned(tz.clone()).date()
}

/// Days since 1970-01-01 of a civil date (its "day number").
pub fn day_number(date: Date) -> i32 {
    let s = date.to_zoned(TimeZone::UTC).map(|z| z.timestamp().as_second()).unwrap_or(0);
    i32::try_from(s.div_euclid(86_400)).unwrap_or(0)
}

/// The civil date of a day number.
pub fn date_of(day: i32) -> Date {
    local_date(i64::from(day) * 86_400, &TimeZone::UTC)
}

/// Months since 0000-01 of a date: the month bucket number.
pub fn month_number(date: Date) -> i32 {
    i32::from(date.year()) * 12 + i32::from(date.month()) - 1
}

/// Resolves a period to `[from, to)` UTC seconds for a time zone and the current time.
pub fn resolve(period: &Period, tz: &TimeZone, now: i64) -> Result<(i64, i64), PeriodError> {
    let bad = |what: String| PeriodError::NoSuchPeriod(what);
    let now_z = Timestamp::from_second(now).map_err(|e| bad(e.to_string()))?.to_zoned(tz.clone());
    let (from, to) = match period {
        Period::LastDays(n) => {
            let from = now_z.checked_sub(i64::from(*n).days()).map_err(|e| bad(e.to_string()))?;
            (from.timestamp().as_second(), now + 1)
        }
        Period::LastMonths(n) => {
            let from = now_z.checked_sub(i64::from(*n).months()).map_err(|e| bad(e.to_string()))?;
            (from.timestamp().as_second(), now + 1)
        }
        Period::IsoWeek { year, week } => {
            let monday = ISOWeekDate::new(*year, *week, Weekday::Monday)
                .map_err(|_| bad(format!("ISO week {year}-W{week:02}")))?
                .date();
            let next = monday.checked_add(7.days()).map_err(|e| bad(e.to_string()))?;
            (start_of(monday, tz)?, start_of(next, tz)?)
        }
        Period::Month { year, month } => {
            let first = Date::new(*year, *month, 1).map_err(|_| bad(format!("month {year}-{month:02}")))?;
            let next = first.checked_add(1.month()).map_err(|e| bad(e.to_string()))?;
            (start_of(first, tz)?, start_of(next, tz)?)
        }
        Period::Year(year) => {
            let first = Date::new(*year, 1, 1).map_err(|_| bad(format!("year {year}")))?;
            let next = Date::new(year + 1, 1, 1).map_err(|_| bad(format!("year {year}")))?;
            (start_of(first, tz)?, start_of(next, tz)?)
        }
        Period::Range { from, to } => (*from, *to),
        Period::AllTime => (MIN_LISTENED_AT, now + 3601),
    };
    if from > to {
        return Err(PeriodError::Reversed { from, to });
    }
    if from < 0 || to > MAX_INSTANT {
        return Err(PeriodError::Absurd { from, to });
    }
    Ok((from, to))
}

/// A bucket of a user's aggregates, in local time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Bucket {
    Day(i32),
    Month(i32),
    Year(i32),
}

/// How to answer a range: whole buckets, plus partial days at either end that must be
/// read from the listens themselves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub buckets: Vec<Bucket>,
    /// `[from, to)` ranges not covered by whole local days.
    pub partial: Vec<(i64, i64)>,
}

/// Splits `[from, to)` into the fewest whole year, month and day buckets of the time
/// zone, plus the partial days at its ends.
pub fn plan(from: i64, to: i64, tz: &TimeZone) -> Result<Plan, PeriodError> {
    let mut plan = Plan { buckets: Vec::new(), partial: Vec::new() };
    if from >= to {
        return Ok(plan);
    }
    // First whole day: the day containing `from` if it starts exactly there, else the next.
    let mut first = local_date(from, tz);
    if start_of(first, tz)? < from {
        first = first.tomorrow().map_err(|e| PeriodError::NoSuchPeriod(e.to_string()))?;
    }
    // End (exclusive) of whole days: the day containing `to`.
    let end = local_date(to, tz);
    let first_start = start_of(first, tz)?;
    let end_start = start_of(end, tz)?;
    if first >= end {
        plan.partial.push((from, to));
        return Ok(plan);
    }
    if from < first_start {
        plan.partial.push((from, first_start));
    }
    if end_start < to {
        plan.partial.push((end_start, to));
    }
    let mut d = first;
    while d < end {
        let year_end = Date::new(d.year() + 1, 1, 1).ok();
        let month_end = d.first_of_month().checked_add(1.month()).ok();
        if d.day_of_year() == 1 && year_end.is_some_and(|y| y <= end) {
            plan.buckets.push(Bucket::Year(i32::from(d.year())));
            d = year_end.unwrap_or(end);
        } else if d.day() == 1 && month_end.is_some_and(|m| m <= end) {
            plan.buckets.push(Bucket::Month(month_number(d)));
            d = month_end.unwrap_or(end);
        } else {
            plan.buckets.push(Bucket::Day(day_number(d)));
            d = d.tomorrow().unwrap_or(end);
        }
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> i64 {
        s.parse::<Timestamp>().expect("timestamp").as_second()
    }

    #[test]
    fn months_and_weeks_follow_local_midnight_across_dst() {
        let berlin = time_zone("Europe/Berlin").expect("tz");
        // March 2024 starts in CET (+1) and ends in CEST (+2).
        let r = resolve(&Period::Month { year: 2024, month: 3 }, &berlin, 0).expect("month");
        assert_eq!(r, (utc("2024-02-29T23:00:00Z"), utc("2024-03-31T22:00:00Z")));
        // The week of the autumn change has 7 days and 169 hours.
        let (a, b) = resolve(&Period::IsoWeek { year: 2024, week: 43 }, &berlin, 0).expect("week");
        assert_eq!(b - a, 169 * 3600);
        assert_eq!(a, utc("2024-10-20T22:00:00Z"));
    }

    #[test]
    fn iso_week_53_exists_only_in_long_years() {
        let utc_tz = TimeZone::UTC;
        let (a, b) = resolve(&Period::IsoWeek { year: 2020, week: 53 }, &utc_tz, 0).expect("2020-W53");
        assert_eq!((a, b), (utc("2020-12-28T00:00:00Z"), utc("2021-01-04T00:00:00Z")));
        assert!(resolve(&Period::IsoWeek { year: 2021, week: 53 }, &utc_tz, 0).is_err());
        // 2026-01-01 is in ISO week 2026-W01, which starts in 2025.
        let (a, _) = resolve(&Period::IsoWeek { year: 2026, week: 1 }, &utc_tz, 0).expect("2026-W01");
        assert_eq!(a, utc("2025-12-29T00:00:00Z"));
    }

    #[test]
    fn bad_periods_are_clear_errors() {
        assert_eq!(time_zone("Mars/Olympus").err(), Some(PeriodError::UnknownTimeZone("Mars/Olympus".into())));
        assert!(matches!(
            resolve(&Period::Range { from: 10, to: 5 }, &TimeZone::UTC, 0),
            Err(PeriodError::Reversed { .. })
        ));
        assert!(matches!(
            resolve(&Period::Range { from: -5, to: 5 }, &TimeZone::UTC, 0),
            Err(PeriodError::Absurd { .. })
        ));
        assert!(resolve(&Period::Month { year: 2024, month: 13 }, &TimeZone::UTC, 0).is_err());
    }

    #[test]
    fn periods_parse_from_text() {
        let cases = [
            ("7d", Period::LastDays(7)),
            ("12m", Period::LastMonths(12)),
            ("all", Period::AllTime),
            ("2024", Period::Year(2024)),
            ("2024-03", Period::Month { year: 2024, month: 3 }),
            ("2020-W53", Period::IsoWeek { year: 2020, week: 53 }),
            ("10..20", Period::Range { from: 10, to: 20 }),
        ];
        for (text, want) in cases {
            assert_eq!(text.parse::<Period>(), Ok(want), "{text}");
        }
        for bad in ["", "0d", "week", "2024-xx", "1..x"] {
            assert!(bad.parse::<Period>().is_err(), "{bad}");
        }
    }

    #[test]
    fn rolling_periods_end_now() {
        let now = utc("2025-06-15T12:00:00Z");
        let (a, b) = resolve(&Period::LastDays(7), &TimeZone::UTC, now).expect("7 days");
        assert_eq!((a, b), (now - 7 * 86_400, now + 1));
        let (a, _) = resolve(&Period::LastMonths(1), &TimeZone::UTC, now).expect("1 month");
        assert_eq!(a, utc("2025-05-15T12:00:00Z"));
    }

    #[test]
    fn plans_use_the_largest_whole_buckets() {
        let tz = TimeZone::UTC;
        let p = plan(utc("2023-12-30T10:00:00Z"), utc("2025-03-03T05:00:00Z"), &tz).expect("plan");
        assert_eq!(
            p.buckets,
            vec![
                Bucket::Day(day_number(Date::new(2023, 12, 31).expect("d"))),
                Bucket::Year(2024),
                Bucket::Month(month_number(Date::new(2025, 1, 1).expect("d"))),
                Bucket::Month(month_number(Date::new(2025, 2, 1).expect("d"))),
                Bucket::Day(day_number(Date::new(2025, 3, 1).expect("d"))),
                Bucket::Day(day_number(Date::new(2025, 3, 2).expect("d"))),
            ]
        );
        assert_eq!(
            p.partial,
            vec![
                (utc("2023-12-30T10:00:00Z"), utc("2023-12-31T00:00:00Z")),
                (utc("2025-03-03T00:00:00Z"), utc("2025-03-03T05:00:00Z"))
            ]
        );
        let inside = plan(utc("2024-05-01T10:00:00Z"), utc("2024-05-01T11:00:00Z"), &tz).expect("plan");
        assert!(inside.buckets.is_empty());
        assert_eq!(inside.partial.len(), 1);
    }

    proptest::proptest! {
        #[test]
        fn a_plan_covers_its_range_exactly(from in 1_033_430_400i64..1_900_000_000, len in 0i64..200_000_000, zone in 0usize..4) {
            let tz = time_zone(["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe"][zone]).expect("tz");
            let to = from + len;
            let p = plan(from, to, &tz).expect("plan");
            // Sum the covered seconds: buckets by their local start/end, plus partials.
            let mut covered = 0i64;
            for b in &p.buckets {
                let (first, next) = match *b {
                    Bucket::Day(d) => (date_of(d), date_of(d + 1)),
                    Bucket::Month(m) => {
                        let first = Date::new((m / 12) as i16, (m % 12 + 1) as i8, 1).expect("month");
                        (first, first.checked_add(1.month()).expect("next"))
                    }
                    Bucket::Year(y) => (Date::new(y as i16, 1, 1).expect("y"), Date::new(y as i16 + 1, 1, 1).expect("y")),
                };
                let (a, b) = (start_of(first, &tz).expect("a"), start_of(next, &tz).expect("b"));
                proptest::prop_assert!(a >= from && b <= to);
                covered += b - a;
            }
            for (a, b) in &p.partial {
                proptest::prop_assert!(*a >= from && *b <= to && a < b);
                covered += b - a;
            }
            proptest::prop_assert_eq!(covered, to - from);
        }
    }
}
