//! The mechanism's parameters in exact integer units: ε in thousandths, δ in units of
//! 10⁻¹² ("pico"). Two charts (artists, tracks) are released per period, each spending
//! ε_listeners (selection and listener counts) + ε_listens (listen counts) and δ.

use serde::{Deserialize, Serialize};

use super::noise::partition_threshold;

/// Charts in one release: artists and tracks.
pub const CHARTS: u64 = 2;
/// Length of the accountant's unit, one ISO week.
pub const WEEK_SECS: i64 = 7 * 86_400;
/// Most items of one chart in one section (the reference's K_node).
pub const MAX_ITEMS: usize = 100;
/// Most items of one chart in the exact public section.
pub const MAX_PUBLIC_ITEMS: usize = 50;

/// Parameters of one release, as published inside each snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Params {
    /// ε for selecting items and noising their listener counts, per chart, in 1/1000.
    pub eps_listeners_milli: u32,
    /// ε for noising the selected items' listen counts, per chart, in 1/1000.
    pub eps_listens_milli: u32,
    /// δ per chart, in 10⁻¹².
    pub delta_pico: u64,
    /// Pre-threshold: never publish an item with fewer real listeners than this.
    pub k: u32,
    /// Items kept per user per chart (L0).
    pub l0: u32,
    /// Listens counted per user per kept item (C).
    pub clamp: u32,
}

impl Default for Params {
    fn default() -> Self {
        // A release every week all year fits a yearly ε of 8 (52 × 0.15 = 7.8): each
        // user counts with their top item per chart (L0 = 1), so the listener noise stays
        // as small as that budget allows (see docs/privacy.md, "The yearly budget").
        Params { eps_listeners_milli: 60, eps_listens_milli: 15, delta_pico: 50_000, k: 10, l0: 1, clamp: 10 }
    }
}

/// Privacy spent (or allowed): ε in 1/1000, δ in 10⁻¹².
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spend {
    pub eps_milli: u64,
    pub delta_pico: u64,
}

impl Spend {
    pub fn plus(self, other: Spend) -> Spend {
        Spend {
            eps_milli: self.eps_milli.saturating_add(other.eps_milli),
            delta_pico: self.delta_pico.saturating_add(other.delta_pico),
        }
    }

    pub fn within(self, budget: Spend) -> bool {
        self.eps_milli <= budget.eps_milli && self.delta_pico <= budget.delta_pico
    }
}

/// Weeks in the accountant's rolling year: the cap holds over any 52 consecutive weeks.
pub const YEAR_WEEKS: i64 = 52;

/// Periods of `period_secs` in 52 weeks (at least one a week).
pub fn periods_per_year(period_secs: i64) -> u64 {
    let per_week = u64::try_from(WEEK_SECS / period_secs.max(1)).unwrap_or(1).max(1);
    per_week.saturating_mul(YEAR_WEEKS as u64)
}

/// What one user may spend: per ISO week, and over any 52 consecutive weeks (basic
/// composition: the ε and δ of every release a user's data went into add up).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Budget {
    pub week: Spend,
    pub year: Spend,
}

impl Default for Budget {
    /// One release a week at the default parameters, all year: ε 0.15 a week, 8 a year.
    fn default() -> Self {
        Budget {
            week: Spend { eps_milli: 150, delta_pico: 100_000 },
            year: Spend { eps_milli: 8_000, delta_pico: 10_000_000 },
        }
    }
}

/// The least privacy a community accepts from a member (published in its manifest).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Floor {
    /// Largest ε per user-week, in 1/1000.
    pub max_eps_week_milli: u64,
    /// Largest δ per user-week, in 10⁻¹².
    pub max_delta_week_pico: u64,
    /// Smallest pre-threshold k.
    pub min_k: u32,
}

impl Default for Floor {
    /// The node's own floor: the reference's standard profile with room to double ε.
    fn default() -> Self {
        Floor { max_eps_week_milli: 4_000, max_delta_week_pico: 1_000_000, min_k: 5 }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamError {
    #[error("{0} must be greater than 0")]
    NotPositive(&'static str),
    #[error("k must be at least 2 (an item with one listener names that listener), got {0}")]
    KTooSmall(u32),
    #[error("delta must be below 1e-3 (it is the probability the guarantee fails), got {0}e-12")]
    DeltaTooLarge(u64),
    #[error("{what} is too large: {value} (most {max})")]
    TooLarge { what: &'static str, value: u64, max: u64 },
    #[error(
        "one release costs ε {cost_eps} and δ {cost_delta}e-12, more than the {which} budget (ε {budget_eps}, δ {budget_delta}e-12): no release could ever be made"
    )]
    BudgetTooSmall { which: &'static str, cost_eps: String, cost_delta: u64, budget_eps: String, budget_delta: u64 },
    #[error("below the privacy floor: {0}")]
    BelowFloor(String),
}

/// ε in thousandths as a decimal string (`800` → `0.8`).
pub fn eps_text(milli: u64) -> String {
    let s = format!("{}.{:03}", milli / 1000, milli % 1000);
    let s = s.trim_end_matches('0');
    s.trim_end_matches('.').to_owned()
}

impl Params {
    pub fn validate(&self) -> Result<(), ParamError> {
        if self.eps_listeners_milli == 0 {
            return Err(ParamError::NotPositive("epsilon_listeners"));
        }
        if self.eps_listens_milli == 0 {
            return Err(ParamError::NotPositive("epsilon_listens"));
        }
        if self.delta_pico == 0 {
            return Err(ParamError::NotPositive("delta"));
        }
        if self.delta_pico >= 1_000_000_000 {
            return Err(ParamError::DeltaTooLarge(self.delta_pico));
        }
        if self.k < 2 {
            return Err(ParamError::KTooSmall(self.k));
        }
        if self.l0 == 0 {
            return Err(ParamError::NotPositive("l0"));
        }
        if self.clamp == 0 {
            return Err(ParamError::NotPositive("clamp"));
        }
        for (what, value, max) in [
            ("epsilon_listeners", u64::from(self.eps_listeners_milli), 100_000),
            ("epsilon_listens", u64::from(self.eps_listens_milli), 100_000),
            ("l0", u64::from(self.l0), 100),
            ("clamp", u64::from(self.clamp), 10_000),
            ("k", u64::from(self.k), 1_000_000),
        ] {
            if value > max {
                return Err(ParamError::TooLarge { what, value, max });
            }
        }
        Ok(())
    }

    /// What one release (both charts) costs each contributing user.
    pub fn release_cost(&self) -> Spend {
        Spend {
            eps_milli: CHARTS * (u64::from(self.eps_listeners_milli) + u64::from(self.eps_listens_milli)),
            delta_pico: CHARTS * self.delta_pico,
        }
    }

    /// The listener threshold τ of partition selection: the smallest integer whose exact
    /// δ under the discrete Laplace noise meets the chart's δ.
    pub fn tau(&self) -> i64 {
        let (t, s) = self.listeners_scale();
        partition_threshold(t, s, self.l0, self.delta_pico as f64 * 1e-12, self.k)
    }

    /// Noise scale of listener counts as the ratio `t/s`: b = L0 / ε.
    pub fn listeners_scale(&self) -> (u64, u64) {
        (u64::from(self.l0) * 1000, u64::from(self.eps_listeners_milli))
    }

    /// Noise scale of listen counts as the ratio `t/s`: b = L0·C / ε.
    pub fn listens_scale(&self) -> (u64, u64) {
        (u64::from(self.l0) * u64::from(self.clamp) * 1000, u64::from(self.eps_listens_milli))
    }

    /// Checks that the weekly and the yearly budget each allow at least one release.
    pub fn fits(&self, budget: Budget) -> Result<(), ParamError> {
        let cost = self.release_cost();
        for (which, cap) in [("weekly", budget.week), ("yearly", budget.year)] {
            if !cost.within(cap) {
                return Err(ParamError::BudgetTooSmall {
                    which,
                    cost_eps: eps_text(cost.eps_milli),
                    cost_delta: cost.delta_pico,
                    budget_eps: eps_text(cap.eps_milli),
                    budget_delta: cap.delta_pico,
                });
            }
        }
        Ok(())
    }

    /// How many periods of `period_secs` a year's budget pays for with every aggregate
    /// user charged each period (at most `periods_per_year`).
    pub fn periods_paid(&self, budget: Budget, period_secs: i64) -> u64 {
        let cost = self.release_cost();
        let by = |cap: Spend| {
            cap.eps_milli
                .checked_div(cost.eps_milli)
                .unwrap_or(u64::MAX)
                .min(cap.delta_pico.checked_div(cost.delta_pico).unwrap_or(u64::MAX))
        };
        let per_week = periods_per_year(period_secs) / YEAR_WEEKS as u64;
        by(budget.week).min(per_week).saturating_mul(YEAR_WEEKS as u64).min(by(budget.year))
    }

    /// Checks these parameters and weekly budget against a floor.
    pub fn meets(&self, budget: Spend, floor: &Floor) -> Result<(), ParamError> {
        if budget.eps_milli > floor.max_eps_week_milli {
            return Err(ParamError::BelowFloor(format!(
                "weekly ε {} is above the floor's {}",
                eps_text(budget.eps_milli),
                eps_text(floor.max_eps_week_milli)
            )));
        }
        if budget.delta_pico > floor.max_delta_week_pico {
            return Err(ParamError::BelowFloor(format!(
                "weekly δ {}e-12 is above the floor's {}e-12",
                budget.delta_pico, floor.max_delta_week_pico
            )));
        }
        if self.k < floor.min_k {
            return Err(ParamError::BelowFloor(format!("k {} is below the floor's {}", self.k, floor.min_k)));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_release_every_week_for_a_year_within_single_digit_epsilon() {
        let p = Params::default();
        p.validate().expect("valid");
        assert_eq!(p.release_cost(), Spend { eps_milli: 150, delta_pico: 100_000 });
        let budget = Budget::default();
        p.fits(budget).expect("one release fits");
        assert_eq!(p.periods_paid(budget, WEEK_SECS), 52, "a weekly release all year is paid for");
        assert!(52 * p.release_cost().eps_milli <= budget.year.eps_milli && budget.year.eps_milli < 10_000);
        assert_eq!(p.tau(), 280, "exact τ at ε 0.06, L0 1, δ 5e-8, k 10");
        p.meets(budget.week, &Floor::default()).expect("meets");
    }

    #[test]
    fn bad_parameters_are_refused_with_a_reason() {
        let bad = |f: fn(&mut Params)| {
            let mut p = Params::default();
            f(&mut p);
            p.validate().expect_err("refused").to_string()
        };
        assert!(bad(|p| p.eps_listeners_milli = 0).contains("greater than 0"));
        assert!(bad(|p| p.k = 1).contains("at least 2"));
        assert!(bad(|p| p.delta_pico = 0).contains("delta"));
        assert!(bad(|p| p.delta_pico = 1_000_000_000_000).contains("below 1e-3"));
        let small = Budget { week: Spend { eps_milli: 100, delta_pico: 200_000 }, ..Budget::default() };
        let e = Params::default().fits(small).expect_err("too small");
        assert!(
            e.to_string().contains("weekly budget") && e.to_string().contains("no release could ever be made"),
            "{e}"
        );
        let small = Budget { year: Spend { eps_milli: 100, delta_pico: 200_000 }, ..Budget::default() };
        let e = Params::default().fits(small).expect_err("too small");
        assert!(e.to_string().contains("yearly budget"), "{e}");
        let e = Params { k: 3, ..Params::default() }
            .meets(Spend { eps_milli: 150, delta_pico: 100_000 }, &Floor::default())
            .expect_err("floor");
        assert!(e.to_string().contains("k 3 is below"), "{e}");
    }

    #[test]
    fn eps_text_is_a_short_decimal() {
        assert_eq!(eps_text(800), "0.8");
        assert_eq!(eps_text(2_000), "2");
        assert_eq!(eps_text(1_250), "1.25");
    }
}
