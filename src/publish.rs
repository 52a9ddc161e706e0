//! The publisher: finalises release periods once their grace time has passed, has the
//! privacy module make each period's release, signs it with the node key and stores it
//! (ledgers and contributions in the same transaction) **before** anything may send it.
//! Each period is released once, on a fixed schedule: every period gets a release, empty
//! or not (so its existence shows nothing), the watermark in `meta` moves past it, and a
//! stored release is never re-made.

use std::sync::Arc;

use crate::config::PrivacyConfig;
use crate::identity::NodeIdentity;
use crate::privacy::accountant::{period_of, week_of};
use crate::privacy::noise::RandomSource;
use crate::privacy::params::{Budget, Params};
use crate::privacy::release::{Period, release};
use crate::privacy::{SharingLevel, accountant::Refusal};
use crate::store::releases::CommitError;
use crate::store::{self, Store};

/// Most periods handled in one pass (a node stopped for long resumes over several).
const MAX_PER_PASS: usize = 64;

pub struct Publisher {
    store: Store,
    identity: Arc<NodeIdentity>,
    params: Params,
    budget: Budget,
    period_secs: i64,
    grace_secs: i64,
    backfill: i64,
    rules: crate::stats::credits::CreditRules,
    /// Whether the "clock behind the last release" warning has been given (once per
    /// episode, not every pass).
    clock_warned: std::sync::atomic::AtomicBool,
}

/// What one pass did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pass {
    /// Periods released (stored), by start.
    pub released: Vec<i64>,
    /// Periods finalised without a release (only when a stored release or ledger
    /// already held the period).
    pub empty: usize,
    /// The clock is behind this node's last release (it ran ahead and was set back):
    /// how many seconds until the next release can be made. Warned about once.
    pub clock_behind_secs: Option<i64>,
}

impl Publisher {
    pub fn new(
        store: Store,
        identity: Arc<NodeIdentity>,
        config: &PrivacyConfig,
    ) -> Result<Publisher, crate::config::Error> {
        config.validate()?;
        let (params, budget) = (config.params()?, config.budget()?);
        let paid = params.periods_paid(budget, i64::from(config.period_secs));
        let wanted = crate::privacy::params::periods_per_year(i64::from(config.period_secs));
        if paid < wanted {
            tracing::warn!(
                paid,
                wanted,
                "the privacy budget pays for fewer releases in 52 weeks than there are periods: aggregate users are left out of the rest"
            );
        }
        // A community shares one period grid: after a change of `privacy.period_secs`
        // this node's releases would lie off its communities' grid (peers ignore them,
        // and it would never be counted again). Refused until it leaves them.
        let last = store.releases(1).ok().and_then(|r| r.into_iter().next());
        let member = store.followed().map(|f| f.iter().any(|(_, f)| f.member)).unwrap_or(false);
        if let (Some((_, bytes)), true) = (last, member) {
            let released = crate::envelope::peek_signed(&bytes, crate::envelope::MAX_SIGNED_BYTES)
                .ok()
                .and_then(|e| crate::privacy::snapshot::SnapshotV1::decode(&e.body).ok())
                .map(|s| s.period_secs);
            if let Some(secs) = released.filter(|s| *s != config.period_secs) {
                return Err(crate::config::Error::Invalid {
                    key: "privacy.period_secs",
                    reason: format!(
                        "this node released {secs}-second periods to its communities, which share that grid; set it back to {secs}, or leave the communities first (`hearsay community leave`)"
                    ),
                });
            }
        }
        Ok(Publisher {
            clock_warned: Default::default(),
            store,
            identity,
            params: config.params()?,
            budget: config.budget()?,
            period_secs: i64::from(config.period_secs),
            grace_secs: i64::from(config.grace_secs),
            backfill: i64::from(config.backfill_periods),
            rules: crate::stats::credits::CreditRules::default(),
        })
    }

    /// The node's credit rules (`[stats]`: featuring markers) for counting releases; the
    /// "known artist" split is never used for them (`UserPeriod::from_tracks`).
    pub fn with_credit_rules(mut self, rules: crate::stats::credits::CreditRules) -> Publisher {
        self.rules = rules;
        self
    }

    /// How often the node should call `run_due`.
    pub fn tick(&self) -> std::time::Duration {
        std::time::Duration::from_millis(u64::try_from((self.period_secs * 250).clamp(250, 60_000)).unwrap_or(60_000))
    }

    /// Releases every period that is final at `now` and not yet considered.
    pub fn run_due(&self, now: i64) -> Result<Pass, store::Error> {
        self.run_due_with(now, &mut OsRandom)
    }

    /// As `run_due` with the given randomness (tests only pass anything but the OS's).
    pub fn run_due_with(&self, now: i64, rng: &mut impl RandomSource) -> Result<Pass, store::Error> {
        let len = self.period_secs;
        // The latest final period, less the backfill: a node that starts (or restarts
        // after a long stop) releases that period and at most `backfill` before it.
        let latest_final = period_of(now - self.grace_secs - len, len);
        let oldest = latest_final - self.backfill * len;
        let mut clock_behind = None;
        let mut start = match self.store.release_watermark()? {
            Some(w) => {
                // The clock is behind the last release (it ran ahead and was set back):
                // nothing can be released until it catches up. Said once, loudly.
                use std::sync::atomic::Ordering;
                if w > latest_final + len {
                    clock_behind = Some(w + len + self.grace_secs - now);
                    if !self.clock_warned.swap(true, Ordering::Relaxed) {
                        tracing::warn!(
                            next_period = w,
                            now,
                            wait_secs = w + len + self.grace_secs - now,
                            "the clock is behind this node's last release (was it set back?): no release until it catches up"
                        );
                    }
                } else {
                    self.clock_warned.store(false, Ordering::Relaxed);
                }
                w.max(oldest)
            }
            None => {
                // First run: periods from here on are this node's to release.
                self.store.set_release_watermark(oldest)?;
                oldest
            }
        };
        let mut pass = Pass { clock_behind_secs: clock_behind, ..Pass::default() };
        for _ in 0..MAX_PER_PASS {
            if start + len + self.grace_secs > now {
                break;
            }
            match self.release_one(start, now, rng)? {
                Some(p) => pass.released.push(p),
                None => pass.empty += 1,
            }
            start += len;
            self.store.set_release_watermark(start)?;
        }
        Ok(pass)
    }

    fn release_one(&self, start: i64, now: i64, rng: &mut impl RandomSource) -> Result<Option<i64>, store::Error> {
        // Every period gets a release, whatever the activity: whether one exists (and its
        // size, beyond the DP values) says nothing about whether anyone listened.
        // No erasure commits between reading the period and storing its contribution
        // records (an erased listen's names must not outlive it there).
        let _ordered = self.store.contributions_lock();
        let inputs = self.store.period_inputs(start, start + self.period_secs, &self.rules)?;
        tracing::debug!(period = start, "finalising a period");
        let week = week_of(start);
        let aggregate = inputs.iter().filter(|u| u.level == SharingLevel::Aggregate).map(|u| u.user);
        let ledgers = self.store.accounts(week, aggregate)?;
        let period = Period {
            origin: self.identity.public_key(),
            start,
            secs: u32::try_from(self.period_secs).unwrap_or(u32::MAX),
            issued_at: now,
            // The communities this node publishes to, named inside the signed snapshot.
            communities: self.store.followed()?.into_iter().filter(|(_, f)| f.member).map(|(id, _)| id).collect(),
        };
        let key = self.store.privacy_key()?;
        let made = match release(period, &inputs, &self.params, self.budget, ledgers, &key, rng) {
            Ok(r) => r,
            Err(Refusal::AlreadyReleased(p)) => {
                tracing::warn!(period = p, "period already charged to a ledger; not released again");
                return Ok(None);
            }
            Err(e) => return Err(store::Error::Invalid(e.to_string())),
        };
        let signed = self.identity.sign_snapshot(&made.snapshot);
        match self.store.commit_release(start, week, &signed, &made.ledgers, &made.contributions) {
            Ok(()) => {
                // Held with the peers' snapshots too, so community charts count it.
                let snapshot = made.snapshot.get();
                self.store.put_snapshot(start, &snapshot.origin, snapshot.version, &signed)?;
                self.store.note_origin_seen(&snapshot.origin, now)?;
                tracing::info!(period = start, bytes = signed.len(), "period released");
                Ok(Some(start))
            }
            Err(CommitError::AlreadyReleased(p)) => {
                tracing::warn!(period = p, "period already released; the stored release stands");
                Ok(None)
            }
            Err(CommitError::Store(e)) => Err(e),
        }
    }
}
/// The operating system's CSPRNG. A failure to read it is a fatal error for a release,
/// so this panics rather than return predictable bytes.
pub struct OsRandom;

impl RandomSource for OsRandom {
    fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        #[allow(clippy::expect_used)]
        getrandom::getrandom(&mut b).expect("the OS random source failed; refusing to add predictable noise");
        u64::from_le_bytes(b)
    }
}
