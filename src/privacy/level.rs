//! The three sharing levels. Stored with each user (`UserV2::visibility`), so the variant
//! order is part of the storage format.

use serde::{Deserialize, Serialize};

/// What of a user may be seen by others, on and off the node.
/// Ordered from least to most shared (`Private < Aggregate < Public`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum SharingLevel {
    /// Nothing derived from the user leaves the node or is shown to anyone else: not in
    /// node charts, not as anyone's neighbour, not in any release.
    Private,
    /// Counted only through the differentially private aggregate section of each
    /// release; nothing else of the user is shown to anyone but themself.
    #[default]
    Aggregate,
    /// Profile and history visible to anyone; listening counts enter the exact public
    /// section of each release.
    Public,
}

impl SharingLevel {
    pub const ALL: [SharingLevel; 3] = [SharingLevel::Private, SharingLevel::Aggregate, SharingLevel::Public];

    pub fn parse(text: &str) -> Option<SharingLevel> {
        match text {
            "private" => Some(SharingLevel::Private),
            "aggregate" => Some(SharingLevel::Aggregate),
            "public" => Some(SharingLevel::Public),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SharingLevel::Private => "private",
            SharingLevel::Aggregate => "aggregate",
            SharingLevel::Public => "public",
        }
    }
}

/// How long level changes are remembered: longer than any period, its grace time and the
/// backfill a restarted node may release (a week, 48 h, two more weeks), with room.
pub const LEVEL_HISTORY_SECS: i64 = 8 * 7 * 86_400;

/// A user's level changes, oldest first: `(since, level)`, starting with the level the
/// account was created with. Only what `level_for_period` can still need is kept.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LevelHistory(pub Vec<(i64, SharingLevel)>);

impl LevelHistory {
    pub fn new(since: i64, level: SharingLevel) -> LevelHistory {
        LevelHistory(vec![(since, level)])
    }

    /// Records a change at `now`, forgetting what no period can need any more (the
    /// newest entry older than the remembered window stays: it is the level then).
    pub fn change(&mut self, now: i64, level: SharingLevel) {
        // Never before the last change (a clock stepped back must not reorder them).
        let now = self.0.last().map_or(now, |(t, _)| now.max(*t));
        self.0.push((now, level));
        let horizon = now.saturating_sub(LEVEL_HISTORY_SECS);
        let old = self.0.iter().filter(|(t, _)| *t < horizon).count();
        if old > 1 {
            self.0.drain(..old - 1);
        }
    }

    /// The level for the release of the period starting at `start`, made now: the
    /// least shared of the level in force at `start` and every level set since. A
    /// change toward sharing more applies from the next period; toward sharing less, at
    /// once, even to a period already over and not yet released. `None` before the
    /// account existed on this node (the joined-at rule: a moved account's earlier
    /// weeks were its old node's to release), and when the level at `start` is no longer
    /// known (older than every change kept): such a period is left out.
    pub fn level_for_period(&self, created_at: i64, start: i64) -> Option<SharingLevel> {
        if created_at > start {
            return None;
        }
        // The level at `start` is unknown when it is older than every change kept (only
        // a node stopped for longer than the history, releasing old periods): private.
        let at_start = self.0.iter().take_while(|(t, _)| *t <= start).last().map(|(_, l)| *l)?;
        let since = self.0.iter().filter(|(t, _)| *t > start).map(|(_, l)| *l);
        std::iter::once(at_start).chain(since).min().or(Some(SharingLevel::Private))
    }

    /// The level in force now.
    pub fn current(&self) -> Option<SharingLevel> {
        self.0.last().map(|(_, l)| *l)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use SharingLevel::*;

    #[test]
    fn sharing_more_waits_for_the_next_period_sharing_less_is_at_once() {
        let week = 604_800;
        let mut h = LevelHistory::new(0, Aggregate);
        // Public during the grace time after a week: that week stays aggregate.
        h.change(week + 3_600, Public);
        assert_eq!(h.level_for_period(0, 0), Some(Aggregate));
        assert_eq!(h.level_for_period(0, week), Some(Aggregate), "changed during the period: from the next one");
        assert_eq!(h.level_for_period(0, 2 * week), Some(Public));
        // Private now: applies to every period not yet released, even ended ones.
        h.change(2 * week + 10, Private);
        assert_eq!(h.level_for_period(0, week), Some(Private));
        assert_eq!(h.level_for_period(0, 2 * week), Some(Private));
        // Back to aggregate: private still for the periods that saw the private moment.
        h.change(2 * week + 20, Aggregate);
        assert_eq!(h.level_for_period(0, 2 * week), Some(Private));
        assert_eq!(h.level_for_period(0, 3 * week), Some(Aggregate));
        assert_eq!(h.current(), Some(Aggregate));
    }

    #[test]
    fn an_unknown_level_leaves_the_user_out_and_a_clock_going_back_keeps_the_order() {
        let mut h = LevelHistory(vec![(1_000, Public)]);
        // Pruned: nothing is known before 1_000.
        assert_eq!(h.level_for_period(0, 500), None);
        h.change(900, Private); // the clock stepped back
        assert_eq!(h.current(), Some(Private), "the latest change wins");
        assert_eq!(h.level_for_period(0, 1_000), Some(Private));
    }

    #[test]
    fn an_account_takes_part_only_in_periods_that_start_after_it_joined() {
        let h = LevelHistory::new(1_000, Aggregate);
        assert_eq!(h.level_for_period(1_000, 999), None);
        assert_eq!(h.level_for_period(1_000, 1_000), Some(Aggregate));
    }

    #[test]
    fn old_changes_are_forgotten_but_the_level_then_is_kept() {
        let mut h = LevelHistory::new(0, Public);
        for i in 1..100i64 {
            h.change(i * 86_400, if i % 2 == 0 { Public } else { Aggregate });
        }
        assert!(h.0.len() <= 58, "{} entries", h.0.len());
        let now = 99 * 86_400;
        let start = now - LEVEL_HISTORY_SECS + 1;
        assert!(h.level_for_period(0, start).is_some());
        assert_eq!(h.current(), Some(Aggregate));
    }
}
