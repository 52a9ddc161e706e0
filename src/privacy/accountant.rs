//! The privacy accountant: for each user and ISO week (UTC), what the node's releases
//! have spent of that user's budget, and which periods were released. A release that
//! would exceed the budget is refused for that user (they are left out of it), and a
//! second release of the same period is refused outright.

use serde::{Deserialize, Serialize};

use super::params::{Spend, WEEK_SECS};

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
    #[error("over budget: spent ε {spent_eps}, this release costs {cost_eps}, the week allows {budget_eps}", spent_eps = super::params::eps_text(spent.eps_milli), cost_eps = super::params::eps_text(cost.eps_milli), budget_eps = super::params::eps_text(budget.eps_milli))]
    OverBudget { spent: Spend, cost: Spend, budget: Spend },
}

impl Ledger {
    /// Records a release of `period` costing `cost`, or says why it may not happen (and
    /// then changes nothing).
    pub fn charge(&mut self, period: i64, cost: Spend, budget: Spend) -> Result<(), Refusal> {
        if self.periods.contains(&period) {
            return Err(Refusal::AlreadyReleased(period));
        }
        let after = self.spent.plus(cost);
        if !after.within(budget) {
            return Err(Refusal::OverBudget { spent: self.spent, cost, budget });
        }
        self.spent = after;
        let at = self.periods.partition_point(|&p| p < period);
        self.periods.insert(at, period);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COST: Spend = Spend { eps_milli: 2_000, delta_pico: 200_000 };

    #[test]
    fn refuses_a_second_release_of_a_period_and_one_over_budget() {
        let budget = Spend { eps_milli: 4_000, delta_pico: 400_000 };
        let mut l = Ledger::default();
        l.charge(100, COST, budget).expect("first release");
        assert_eq!(l.charge(100, COST, budget), Err(Refusal::AlreadyReleased(100)));
        l.charge(200, COST, budget).expect("second period fits the budget");
        let before = l.clone();
        let refused = l.charge(300, COST, budget).expect_err("third is over budget");
        assert!(matches!(refused, Refusal::OverBudget { .. }), "{refused}");
        assert!(refused.to_string().contains("spent ε 4, this release costs 2, the week allows 4"), "{refused}");
        assert_eq!(l, before, "a refused charge changes nothing");
    }

    #[test]
    fn delta_counts_too() {
        let mut l = Ledger::default();
        let budget = Spend { eps_milli: 100_000, delta_pico: 300_000 };
        l.charge(1, COST, budget).expect("fits");
        assert!(matches!(l.charge(2, COST, budget), Err(Refusal::OverBudget { .. })));
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
