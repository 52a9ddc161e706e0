//! The privacy accountant: for each user and ISO week (UTC), what the node's releases
//! have spent of that user's budget, and which periods were released. A release that
//! would exceed the week's budget, or the budget of the 52 weeks ending with it (basic
//! composition: spends add up), is refused for that user (they are left out of it), and
//! a second release of the same period is refused outright.

use serde::{Deserialize, Serialize};

use super::params::{Budget, Spend, WEEK_SECS, YEAR_WEEKS};

/// Monday 1970-01-05 00:00 UTC: ISO weeks (and every release period) are counted from it.
pub const EPOCH_MONDAY: i64 = 4 * 86_400;

/// Start of the ISO week (UTC) holding `t`.
pub fn week_of(t: i64) -> i64 {
    EPOCH_MONDAY + (t - EPOCH_MONDAY).div_euclid(WEEK_SECS) * WEEK_SECS
}

/// Start of the release period of length `secs` holding `t` (periods tile weeks).
pub fn period_of(t: i64, secs: i64) -> i64 {
    let secs = secs.max(1);
    EPOCH_MONDAY + (t - EPOCH_MONDAY).div_euclid(secs) * secs
}

/// One user's ledger for one week.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ledger {
    pub spent: Spend,
    /// Starts of the periods released with this user's data, ascending.
    pub periods: Vec<i64>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("period {0} was already released; it is never released again")]
    AlreadyReleased(i64),
    #[error("over budget: spent ε {spent_eps} {within}, this release costs {cost_eps}, the {within_short} allows {budget_eps}", spent_eps = super::params::eps_text(spent.eps_milli), cost_eps = super::params::eps_text(cost.eps_milli), budget_eps = super::params::eps_text(budget.eps_milli), within = if *yearly { "in the 52 weeks ending with this one" } else { "this week" }, within_short = if *yearly { "year" } else { "week" })]
    OverBudget { spent: Spend, cost: Spend, budget: Spend, yearly: bool },
}

impl Ledger {
    /// Records a release of `period` costing `cost`, or says why it may not happen (and
    /// then changes nothing). `earlier` is what the user's 51 weeks before this one spent.
    pub fn charge(&mut self, period: i64, cost: Spend, budget: Budget, earlier: Spend) -> Result<(), Refusal> {
        if self.periods.contains(&period) {
            return Err(Refusal::AlreadyReleased(period));
        }
        self.charge_report(cost, budget, earlier)?;
        let at = self.periods.partition_point(|&p| p < period);
        self.periods.insert(at, period);
        Ok(())
    }

    /// Records a secure-aggregation report's cost (`federation::secagg`): the same
    /// weekly and yearly caps as a release, without the period's release mark (a
    /// community report is its own release; the member node reports each community
    /// period once, which its store enforces).
    pub fn charge_report(&mut self, cost: Spend, budget: Budget, earlier: Spend) -> Result<(), Refusal> {
        let after = self.spent.plus(cost);
        if !after.within(budget.week) {
            return Err(Refusal::OverBudget { spent: self.spent, cost, budget: budget.week, yearly: false });
        }
        let year = earlier.plus(self.spent);
        if !year.plus(cost).within(budget.year) {
            return Err(Refusal::OverBudget { spent: year, cost, budget: budget.year, yearly: true });
        }
        self.spent = after;
        Ok(())
    }
}

/// The starts of the 51 weeks before `week`: with it, the rolling year the yearly cap
/// holds over.
pub fn weeks_before(week: i64) -> impl Iterator<Item = i64> {
    (1..YEAR_WEEKS).map(move |i| week - i * WEEK_SECS)
}

/// One user's account for the week of a release: the week's ledger and what the 51
/// weeks before it spent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Account {
    pub week: Ledger,
    pub earlier: Spend,
}

#[cfg(test)]
mod tests {
    use super::*;

    const COST: Spend = Spend { eps_milli: 2_000, delta_pico: 200_000 };
    const ROOMY_YEAR: Spend = Spend { eps_milli: 1_000_000, delta_pico: 1_000_000_000 };

    #[test]
    fn refuses_a_second_release_of_a_period_and_one_over_budget() {
        let budget = Budget { week: Spend { eps_milli: 4_000, delta_pico: 400_000 }, year: ROOMY_YEAR };
        let mut l = Ledger::default();
        l.charge(100, COST, budget, Spend::default()).expect("first release");
        assert_eq!(l.charge(100, COST, budget, Spend::default()), Err(Refusal::AlreadyReleased(100)));
        l.charge(200, COST, budget, Spend::default()).expect("second period fits the budget");
        let before = l.clone();
        let refused = l.charge(300, COST, budget, Spend::default()).expect_err("third is over budget");
        assert!(matches!(refused, Refusal::OverBudget { yearly: false, .. }), "{refused}");
        assert!(
            refused.to_string().contains("spent ε 4 this week, this release costs 2, the week allows 4"),
            "{refused}"
        );
        assert_eq!(l, before, "a refused charge changes nothing");
    }

    #[test]
    fn delta_counts_too() {
        let mut l = Ledger::default();
        let budget = Budget { week: Spend { eps_milli: 100_000, delta_pico: 300_000 }, year: ROOMY_YEAR };
        l.charge(1, COST, budget, Spend::default()).expect("fits");
        assert!(matches!(l.charge(2, COST, budget, Spend::default()), Err(Refusal::OverBudget { .. })));
    }

    #[test]
    fn the_yearly_cap_holds_over_any_52_weeks() {
        // Weekly releases costing 0.15 against a yearly 8: 53 weeks in a row would spend
        // 7.95 in the last 52 of them, so every week fits; at 0.2 a week the 41st is
        // refused, and the cap frees up only as old weeks leave the window.
        let budget = Budget { week: ROOMY_YEAR, ..Budget::default() };
        for (cost, refused_from) in [(150u64, None), (200, Some(40usize))] {
            let cost = Spend { eps_milli: cost, delta_pico: 100_000 };
            let mut weeks: Vec<Ledger> = Vec::new();
            let mut first_refused = None;
            for w in 0..60usize {
                let earlier = weeks.iter().rev().take(51).fold(Spend::default(), |a, l| a.plus(l.spent));
                let mut l = Ledger::default();
                let start = EPOCH_MONDAY + w as i64 * WEEK_SECS;
                match l.charge(start, cost, budget, earlier) {
                    Ok(()) => {}
                    Err(Refusal::OverBudget { yearly: true, .. }) => {
                        first_refused.get_or_insert(w);
                    }
                    Err(e) => panic!("week {w}: {e}"),
                }
                let total = earlier.plus(l.spent);
                assert!(total.within(budget.year), "week {w}: the rolling year spent {total:?}");
                weeks.push(l);
            }
            assert_eq!(first_refused, refused_from, "cost {cost:?}");
        }
        assert_eq!(weeks_before(1_000 * WEEK_SECS).count(), 51);
        assert_eq!(weeks_before(1_000 * WEEK_SECS).last(), Some(949 * WEEK_SECS));
    }

    #[test]
    fn weeks_start_on_monday_utc() {
        // 2026-11-23 is a Monday; 2026-11-29 23:59:59 the Sunday after.
        let monday = 1_795_392_000;
        assert_eq!(week_of(monday), monday);
        assert_eq!(week_of(monday + 7 * 86_400 - 1), monday);
        assert_eq!(week_of(monday - 1), monday - 7 * 86_400);
        assert_eq!(period_of(monday + 7, 5), monday + 5);
        assert_eq!(period_of(monday + 86_400 * 3 + 10, WEEK_SECS), monday);
    }
}
