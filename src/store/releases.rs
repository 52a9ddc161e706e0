//! Releases: the inputs of a period's release, and the one-time, atomic storing of its
//! result (signed snapshot, ledgers, contributions). Deciding what is released is the
//! privacy module's job; this file only reads and writes.

use std::collections::BTreeMap;

use sled::Transactional;

use super::codec::{decode, encode};
use super::keys::{self, UserId};
use super::logs::Order;
use super::values::{ContributionV1, LedgerV1};
use super::{Error, Result, Store, schema};
use crate::privacy::SharingLevel;
use crate::privacy::accountant::{Account, Ledger, weeks_before};
use crate::privacy::params::Spend;
use crate::privacy::release::{Contribution, UserPeriod};
use crate::stats::credits::CreditRules;

const PRIVACY_KEY: &str = "privacy_key";
const WATERMARK: &str = "release_watermark";

/// Why a release was not stored.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error("period {0} was already released; the stored release stands and is never re-made")]
    AlreadyReleased(i64),
    #[error(transparent)]
    Store(#[from] Error),
}

impl Store {
    /// The node's secret key for tie-breaking in contribution bounding, made on first use.
    pub fn privacy_key(&self) -> Result<[u8; 32]> {
        if let Some(v) = self.trees.meta.get(PRIVACY_KEY)? {
            return <[u8; 32]>::try_from(v.as_ref())
                .map_err(|_| Error::corrupt(schema::META, PRIVACY_KEY.as_bytes(), "privacy_key is not 32 bytes"));
        }
        self.writable()?;
        let fresh = crate::auth::random_bytes::<32>().map_err(Error::Random)?;
        // Another caller may have won the race: keep whichever was stored first.
        let _ = self.trees.meta.compare_and_swap(PRIVACY_KEY, None as Option<&[u8]>, Some(&fresh[..]))?;
        self.trees.meta.flush()?;
        self.privacy_key()
    }

    /// The start of the first period not yet considered for release.
    pub fn release_watermark(&self) -> Result<Option<i64>> {
        Ok(self.trees.meta.get(WATERMARK)?.and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok()).map(|b| {
            let t = u64::from_be_bytes(b);
            i64::try_from(t).unwrap_or(i64::MAX)
        }))
    }

    pub fn set_release_watermark(&self, t: i64) -> Result<()> {
        self.writable()?;
        self.trees.meta.insert(WATERMARK, &keys::time_key(t))?;
        Ok(())
    }

    /// Every user who takes part in the release of `[from, to)` made now, at their
    /// level for it (`LevelHistory::level_for_period`: members since before `from`, the
    /// least shared level since `from`), with their listens per artist and per track,
    /// counted and named from their own log alone (`UserPeriod::from_tracks`: not the
    /// node's statistics, whose credits and spellings other users' histories decide).
    /// Aggregate users who did not listen are listed too (they are charged all the
    /// same); users private for the period are not even read.
    pub fn period_inputs(&self, from: i64, to: i64, rules: &CreditRules) -> Result<Vec<UserPeriod>> {
        let mut out = Vec::new();
        for user in self.users()? {
            let level = match user.levels.level_for_period(user.created_at, from) {
                None | Some(SharingLevel::Private) => continue,
                Some(level) => level,
            };
            let mut tracks = Vec::new();
            self.each_listen(user.id, from, to, Order::OldestFirst, |l| {
                tracks.push(l.listen.track().clone());
                Ok(true)
            })?;
            if tracks.is_empty() && level != SharingLevel::Aggregate {
                continue;
            }
            out.push(UserPeriod::from_tracks(user.id.0, level, &tracks, rules));
        }
        Ok(out)
    }

    fn ledger(&self, user: UserId, week: i64) -> Result<Option<Ledger>> {
        let key = keys::user_time(user, week);
        match self.trees.userid_week_ledger.get(key)? {
            Some(v) => Ok(Some(decode::<LedgerV1>(schema::USERID_WEEK_LEDGER, &key, &v)?)),
            None => Ok(None),
        }
    }

    /// What `user` spent in the 51 weeks before `week` (one range read): with `week`,
    /// their rolling year.
    fn spent_before(&self, user: UserId, week: i64) -> Result<Spend> {
        let from = keys::user_time(user, weeks_before(week).last().unwrap_or(week));
        let mut total = Spend::default();
        for kv in self.trees.userid_week_ledger.range(from..keys::user_time(user, week)) {
            let (k, v) = kv?;
            total = total.plus(decode::<LedgerV1>(schema::USERID_WEEK_LEDGER, &k, &v)?.spent);
        }
        Ok(total)
    }

    /// The accounts of `users` for a release in the week starting at `week`.
    pub fn accounts(&self, week: i64, users: impl IntoIterator<Item = u32>) -> Result<BTreeMap<u32, Account>> {
        let mut out = BTreeMap::new();
        for u in users {
            let account = Account {
                week: self.ledger(UserId(u), week)?.unwrap_or_default(),
                earlier: self.spent_before(UserId(u), week)?,
            };
            out.insert(u, account);
        }
        Ok(out)
    }

    /// Stores a release: the signed snapshot, the charged ledgers and the
    /// contributions, in one transaction, then flushes. A period is stored once: a
    /// second attempt is refused and changes nothing.
    pub fn commit_release(
        &self,
        period: i64,
        week: i64,
        signed: &[u8],
        ledgers: &BTreeMap<u32, Ledger>,
        contributions: &[Contribution],
    ) -> Result<(), CommitError> {
        self.writable()?;
        let t = &self.trees;
        let result = (&t.periodstart_release, &t.userid_week_ledger, &t.userid_periodstart_contribution).transaction(
            |(releases, ledger_tree, contribution_tree)| {
                let key = keys::time_key(period);
                if releases.get(key)?.is_some() {
                    return sled::transaction::abort(CommitError::AlreadyReleased(period));
                }
                releases.insert(&key, signed)?;
                for (user, ledger) in ledgers {
                    ledger_tree.insert(&keys::user_time(UserId(*user), week), encode(ledger))?;
                }
                for c in contributions {
                    contribution_tree.insert(&keys::user_time(UserId(c.user), period), encode(c))?;
                }
                Ok(())
            },
        );
        match result {
            Ok(()) => {}
            Err(sled::transaction::TransactionError::Abort(e)) => return Err(e),
            Err(sled::transaction::TransactionError::Storage(e)) => return Err(CommitError::Store(Error::Db(e))),
        }
        // The network page's default period is the newest release.
        self.network_changed();
        self.flush()?;
        Ok(())
    }

    /// The user's contribution record of the release whose period holds `at` (the
    /// newest starting at or before it, at most a week before), re-encoded without its
    /// item names: a listen erased from the log leaves no name in the user's records.
    /// The charge stays (the release was made). `None` when there is no such record.
    pub(crate) fn contribution_without_items(&self, user: UserId, at: i64) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        let from = keys::user_time(user, at.saturating_sub(crate::privacy::params::WEEK_SECS));
        let to = keys::user_time(user, at);
        let Some(kv) = self.trees.userid_periodstart_contribution.range(from..=to).next_back() else {
            return Ok(None);
        };
        let (k, v) = kv?;
        let mut c: ContributionV1 = decode(schema::USERID_PERIODSTART_CONTRIBUTION, &k, &v)?;
        if c.artists.is_empty() && c.tracks.is_empty() {
            return Ok(None);
        }
        c.artists.clear();
        c.tracks.clear();
        Ok(Some((k.to_vec(), encode(&c))))
    }

    /// The stored release of the period starting at `period`, byte for byte.
    pub fn release(&self, period: i64) -> Result<Option<Vec<u8>>> {
        Ok(self.trees.periodstart_release.get(keys::time_key(period))?.map(|v| v.to_vec()))
    }

    /// Every stored release, newest first, at most `limit`.
    pub fn releases(&self, limit: usize) -> Result<Vec<(i64, Vec<u8>)>> {
        let mut out = Vec::new();
        for kv in self.trees.periodstart_release.iter().rev().take(limit) {
            let (k, v) = kv?;
            let b = <[u8; 8]>::try_from(k.as_ref())
                .map_err(|_| Error::corrupt(schema::PERIODSTART_RELEASE, &k, "key is not a u64"))?;
            out.push((i64::try_from(u64::from_be_bytes(b)).unwrap_or(i64::MAX), v.to_vec()));
        }
        Ok(out)
    }

    /// The user's contributions, newest first: (period start, contribution).
    pub fn contributions(&self, user: UserId, limit: usize) -> Result<Vec<(i64, Contribution)>> {
        self.user_time_values::<ContributionV1>(
            &self.trees.userid_periodstart_contribution,
            schema::USERID_PERIODSTART_CONTRIBUTION,
            user,
            limit,
        )
    }

    /// Stores ledgers a moved account brought from its old node (`account::import`), for
    /// a user who has none here yet for those weeks.
    pub fn adopt_ledgers(&self, user: UserId, ledgers: &[(i64, Ledger)]) -> Result<()> {
        self.writable()?;
        let mut batch = sled::Batch::default();
        for (week, ledger) in ledgers {
            let key = keys::user_time(user, *week);
            if self.trees.userid_week_ledger.get(key)?.is_none() {
                batch.insert(key.to_vec(), encode(ledger));
            }
        }
        self.trees.userid_week_ledger.apply_batch(batch)?;
        self.flush()
    }

    /// The user's ledgers, newest week first: (week start, ledger).
    pub fn user_ledgers(&self, user: UserId, limit: usize) -> Result<Vec<(i64, Ledger)>> {
        self.user_time_values::<LedgerV1>(&self.trees.userid_week_ledger, schema::USERID_WEEK_LEDGER, user, limit)
    }

    fn user_time_values<T: super::codec::Versioned>(
        &self,
        tree: &sled::Tree,
        name: &'static str,
        user: UserId,
        limit: usize,
    ) -> Result<Vec<(i64, T)>> {
        let mut out = Vec::new();
        for kv in tree.scan_prefix(keys::user(user)).rev().take(limit) {
            let (k, v) = kv?;
            let (_, t) = keys::parse_user_seq(name, &k)?;
            out.push((i64::try_from(t).unwrap_or(i64::MAX), decode(name, &k, &v)?));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Options;

    #[test]
    fn a_period_is_stored_once_and_a_second_commit_changes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), &Options { cache_mb: 4, ..Default::default() }).expect("open");
        let mut ledgers = BTreeMap::new();
        ledgers.insert(1, Ledger { spent: Default::default(), periods: vec![100] });
        store.commit_release(100, 0, b"first", &ledgers, &[]).expect("first");
        let mut other = ledgers.clone();
        other.insert(2, Ledger::default());
        let again = store.commit_release(100, 0, b"second", &other, &[]);
        assert!(matches!(again, Err(CommitError::AlreadyReleased(100))), "{again:?}");
        assert_eq!(store.release(100).expect("get").as_deref(), Some(&b"first"[..]));
        assert!(
            store.user_ledgers(UserId(2), 1).expect("ledgers").is_empty(),
            "nothing of the refused commit was written"
        );
        assert_eq!(store.privacy_key().expect("key"), store.privacy_key().expect("same key"));
    }

    #[test]
    fn an_account_sums_exactly_the_51_weeks_before_its_week() {
        use crate::privacy::params::WEEK_SECS;
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), &Options { cache_mb: 4, ..Default::default() }).expect("open");
        let week = 100 * WEEK_SECS;
        let spent = |eps_milli| Ledger { spent: Spend { eps_milli, delta_pico: 1 }, periods: vec![] };
        // 52 weeks back (outside), 51 back and 1 back (inside), this week, next week.
        for (w, eps) in [
            (week - 52 * WEEK_SECS, 1_000),
            (week - 51 * WEEK_SECS, 20),
            (week - WEEK_SECS, 3),
            (week, 7),
            (week + WEEK_SECS, 500),
        ] {
            store.commit_release(w, w, b"r", &BTreeMap::from([(1, spent(eps))]), &[]).expect("commit");
        }
        let accounts = store.accounts(week, [1, 2]).expect("accounts");
        assert_eq!(accounts[&1].earlier, Spend { eps_milli: 23, delta_pico: 2 });
        assert_eq!(accounts[&1].week.spent.eps_milli, 7);
        assert_eq!(accounts[&2], Account::default(), "another user's weeks do not count");
    }
}
