//! One release: from each user's counts for a finalised period to the publishable
//! snapshot.
//!
//! - *private* users are dropped before anything else looks at the data;
//! - *public* users' counts are summed exactly into the public section;
//! - *aggregate* users are charged to the accountant (refused users are left out), then
//!   bounded (top L0 items per chart, ties broken by a keyed hash, listens clamped at C),
//!   summed, and released by Laplace partition selection: an item is published only if
//!   it has ≥ k real listeners and its noisy listener count reaches τ; its listen count
//!   gets its own noise. Noise is exact discrete Laplace (`noise`).
//!
//! Sensitivity of the aggregate section, for one user-period added or removed: each
//! item's listener sum moves by at most 1 and its listen sum by at most C, on at most
//! L0 items per chart.

use std::collections::BTreeMap;

use super::SharingLevel;
use super::accountant::{Account, Ledger, Refusal};
use super::noise::{RandomSource, discrete_laplace};
use super::params::{Budget, MAX_ITEMS, MAX_PUBLIC_ITEMS, Params, Spend};
use super::snapshot::{Charts, Entry, ItemId, ItemName, SCHEMA, SnapshotV1};
use crate::log::TrackRef;
use crate::stats::credits::{CreditRules, credit};

/// A value that may leave the node. Only this module can make one (the field is
/// private), so code that sends or signs snapshots cannot be handed raw counts.
///
/// ```compile_fail,E0423
/// # fn f(s: hearsay::privacy::snapshot::SnapshotV1) {
/// let p = hearsay::privacy::Publishable(s); // private constructor: does not compile
/// # }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Publishable<T>(T);

impl<T> Publishable<T> {
    pub fn get(&self) -> &T {
        &self.0
    }
}

impl Publishable<SnapshotV1> {
    /// The canonical bytes, for signing.
    pub fn encode(&self) -> Vec<u8> {
        self.0.encode()
    }
}

/// Which chart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Chart {
    Artists,
    Tracks,
}

/// One user's listening in the period: listens per item, for both charts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserPeriod {
    pub user: u32,
    pub level: SharingLevel,
    pub artists: Vec<(ItemName, u64)>,
    pub tracks: Vec<(ItemName, u64)>,
}

impl UserPeriod {
    fn chart(&self, chart: Chart) -> &[(ItemName, u64)] {
        match chart {
            Chart::Artists => &self.artists,
            Chart::Tracks => &self.tracks,
        }
    }
}

impl UserPeriod {
    /// One user's period from their own listens alone: each listen credited by `rules`
    /// with no "known artist" evidence (that would be other users' histories), each item
    /// named by this user's most played spelling of it. Nothing here depends on anyone
    /// else's data, so a private user can change neither the counts nor the names.
    pub fn from_tracks<'a>(
        user: u32,
        level: SharingLevel,
        tracks: impl IntoIterator<Item = &'a TrackRef>,
        rules: &CreditRules,
    ) -> UserPeriod {
        let rules = CreditRules { split_known_artists: false, ..rules.clone() };
        // Per item: listens, and listens per spelling.
        type Tally = BTreeMap<ItemId, (u64, BTreeMap<ItemName, u64>)>;
        let (mut artists, mut tracks_out): (Tally, Tally) = Default::default();
        let count = |tally: &mut Tally, name: ItemName| {
            let e = tally.entry(name.id()).or_default();
            e.0 += 1;
            *e.1.entry(name).or_default() += 1;
        };
        for track in tracks {
            let credits = credit(track, &rules, &|_| false);
            for a in &credits.artists {
                count(&mut artists, ItemName::artist(a));
            }
            let main = credits.artists.first().map_or(track.artist.as_str(), String::as_str);
            count(&mut tracks_out, ItemName::track(main, &credits.title));
        }
        let named = |tally: Tally| -> Vec<(ItemName, u64)> {
            tally
                .into_values()
                .filter_map(|(n, spellings)| {
                    // Most played spelling; ties by the spelling itself.
                    let best = spellings.into_iter().max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)))?;
                    Some((best.0, n))
                })
                .collect()
        };
        UserPeriod { user, level, artists: named(artists), tracks: named(tracks_out) }
    }
}

/// The users whose period goes into a community's secure-aggregation reports: every
/// user at the aggregate level, whether they listened or not (an empty period is an
/// all-zero report: the number of reports must not say who was active). Public users
/// are counted exactly in the public section already; private users never leave the
/// node.
pub fn secure_inputs(inputs: &[UserPeriod]) -> impl Iterator<Item = &UserPeriod> {
    inputs.iter().filter(|u| u.level == SharingLevel::Aggregate)
}

/// What the period and the node are.
#[derive(Clone, Debug)]
pub struct Period {
    pub origin: [u8; 32],
    pub start: i64,
    pub secs: u32,
    pub issued_at: i64,
    /// The communities the release is for (named inside the signed snapshot; sorted
    /// and deduplicated here).
    pub communities: Vec<[u8; 32]>,
}

/// What happened to one user's data in a release (shown to that user only).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Contribution {
    pub user: u32,
    pub level: SharingLevel,
    /// `None` when the data went in; otherwise why it did not (over budget).
    pub refused: Option<String>,
    /// The items that entered the sums, with the listens counted (bounded for aggregate
    /// users; the exact top items for public users).
    pub artists: Vec<(ItemName, u64)>,
    pub tracks: Vec<(ItemName, u64)>,
    /// Charged to the user's weekly budget by this release.
    pub charged: Spend,
}

impl Contribution {
    /// Whether the user's exact counts went in (public section) rather than bounded ones.
    pub fn exact(&self) -> bool {
        self.level == SharingLevel::Public
    }
}

/// The outcome of a release: the snapshot, each user's contribution, and the ledgers
/// (for the aggregate users of the period's week) after charging.
#[derive(Debug)]
pub struct Release {
    pub snapshot: Publishable<SnapshotV1>,
    pub contributions: Vec<Contribution>,
    pub ledgers: BTreeMap<u32, Ledger>,
}

/// A user's bounded contribution to one chart: their top `l0` items by listens (ties by
/// the keyed hash of the item id, so neither insertion order nor names decide), each
/// with at most `clamp` listens.
pub fn bound(items: &[(ItemName, u64)], params: &Params, key: &[u8; 32]) -> Vec<(ItemName, u64)> {
    // The same item listed twice is one item: merge before ranking.
    let mut merged: BTreeMap<ItemId, (&ItemName, u64)> = BTreeMap::new();
    for (name, n) in items.iter().filter(|(_, n)| *n > 0) {
        merged.entry(name.id()).or_insert((name, 0)).1 += n;
    }
    let mut ranked: Vec<(u64, [u8; 32], &ItemName)> =
        merged.into_iter().map(|(id, (name, n))| (n, *blake3::keyed_hash(key, &id).as_bytes(), name)).collect();
    ranked.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    ranked
        .into_iter()
        .take(params.l0 as usize)
        .map(|(n, _, name)| (name.clone(), n.min(u64::from(params.clamp))))
        .collect()
}

/// Per-item sums of the bounded contributions of `users` to `chart`: (name, listeners,
/// listens).
pub fn bounded_sums(
    users: &[&UserPeriod],
    chart: Chart,
    params: &Params,
    key: &[u8; 32],
) -> BTreeMap<ItemId, (ItemName, u64, u64)> {
    let mut sums: BTreeMap<ItemId, (ItemName, u64, u64)> = BTreeMap::new();
    for u in users {
        for (name, n) in bound(u.chart(chart), params, key) {
            let e = sums.entry(name.id()).or_insert_with(|| (name, 0, 0));
            e.1 += 1;
            e.2 += n;
        }
    }
    sums
}

fn public_section(users: &[&UserPeriod], chart: Chart) -> Vec<Entry> {
    let mut sums: BTreeMap<ItemId, (ItemName, u64, u64)> = BTreeMap::new();
    for u in users {
        for (name, n) in u.chart(chart).iter().filter(|(_, n)| *n > 0) {
            let e = sums.entry(name.id()).or_insert_with(|| (name.clone(), 0, 0));
            e.1 += 1;
            e.2 += n;
        }
    }
    let mut rows: Vec<Entry> = sums
        .into_iter()
        .map(|(item, (name, listeners, listens))| Entry {
            item,
            name,
            listeners: i64::try_from(listeners).unwrap_or(i64::MAX),
            listens: i64::try_from(listens).unwrap_or(i64::MAX),
        })
        .collect();
    keep_top(&mut rows, MAX_PUBLIC_ITEMS, |e| (e.listens, e.listeners));
    rows
}

fn aggregate_section(
    users: &[&UserPeriod],
    chart: Chart,
    params: &Params,
    key: &[u8; 32],
    rng: &mut impl RandomSource,
) -> Vec<Entry> {
    let tau = params.tau();
    let (lt, ls) = params.listeners_scale();
    let (nt, ns) = params.listens_scale();
    let mut rows = Vec::new();
    for (item, (name, listeners, listens)) in bounded_sums(users, chart, params, key) {
        if listeners < u64::from(params.k) {
            continue;
        }
        let listeners = i64::try_from(listeners).unwrap_or(i64::MAX);
        let noisy = listeners.saturating_add(discrete_laplace(rng, lt, ls));
        if noisy < tau {
            continue;
        }
        let listens = i64::try_from(listens).unwrap_or(i64::MAX).saturating_add(discrete_laplace(rng, nt, ns));
        // The published name is the item's canonical form: which contributor's spelling
        // it would otherwise be is not DP-protected.
        rows.push(Entry { item, name: name.canonical(), listeners: noisy, listens });
    }
    keep_top(&mut rows, MAX_ITEMS, |e| (e.listeners, e.listens));
    rows
}

/// Keeps the `n` largest rows by `key` (ties by item id), then sorts by item id.
fn keep_top(rows: &mut Vec<Entry>, n: usize, key: impl Fn(&Entry) -> (i64, i64)) {
    rows.sort_by(|a, b| key(b).cmp(&key(a)).then(a.item.cmp(&b.item)));
    rows.truncate(n);
    rows.sort_by_key(|e| e.item);
}

/// Makes the release of one period. `users` holds every user whose data the period may
/// use (the store decides who: members at the period's start, at their level for it);
/// `accounts` the ledger of the period's week and the spend of the 51 weeks before, for
/// (at least) every aggregate user in `users`; a missing one counts as empty.
///
/// Every aggregate user is charged, whether they listened or not: what a user spends
/// (and so whether they are left out later) never depends on their activity, and a
/// release is made every period, so its existence says nothing either.
///
/// Refused as a whole if any user's ledger already lists this period.
pub fn release(
    period: Period,
    users: &[UserPeriod],
    params: &Params,
    budget: Budget,
    accounts: BTreeMap<u32, Account>,
    key: &[u8; 32],
    rng: &mut impl RandomSource,
) -> Result<Release, Refusal> {
    let cost = params.release_cost();
    let mut contributions = Vec::new();
    let mut public = Vec::new();
    let mut aggregate = Vec::new();
    let mut earlier: BTreeMap<u32, Spend> = BTreeMap::new();
    let mut ledgers: BTreeMap<u32, Ledger> = BTreeMap::new();
    for (user, account) in accounts {
        earlier.insert(user, account.earlier);
        ledgers.insert(user, account.week);
    }
    // Fewer users at the aggregate level than τ: an item could pass τ only if nearly all
    // of them played it and the noise lifted it the rest of the way (at the defaults,
    // τ = 280 and a node of 20 such users would need noise of 260, scale 17). A policy,
    // not a proof: the release gives up that slim chance, leaves them all out and
    // charges none of them, and their budget stays theirs, for a community's secure
    // aggregation (`federation::secagg`), which counts them once per community. Who is
    // at which level is a setting, not listening data: the choice reveals nothing.
    let sharing = users.iter().filter(|u| u.level == SharingLevel::Aggregate).count();
    let too_few = i64::try_from(sharing).unwrap_or(i64::MAX) < params.tau();
    for u in users {
        let empty = u.artists.iter().all(|(_, n)| *n == 0) && u.tracks.iter().all(|(_, n)| *n == 0);
        match u.level {
            SharingLevel::Private => {}
            SharingLevel::Public if empty => {}
            SharingLevel::Public => {
                public.push(u);
                let top = |items: &[(ItemName, u64)]| {
                    let mut v = items.to_vec();
                    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
                    v.truncate(10);
                    v
                };
                contributions.push(Contribution {
                    user: u.user,
                    level: u.level,
                    refused: None,
                    artists: top(&u.artists),
                    tracks: top(&u.tracks),
                    charged: Spend::default(),
                });
            }
            SharingLevel::Aggregate if too_few => contributions.push(Contribution {
                user: u.user,
                level: u.level,
                refused: Some(format!(
                    "fewer than {} users share at the aggregate level on this node, the listeners an item \
                     needs to be released: the node's release leaves them out and nothing was charged",
                    params.tau()
                )),
                artists: Vec::new(),
                tracks: Vec::new(),
                charged: Spend::default(),
            }),
            SharingLevel::Aggregate => {
                let ledger = ledgers.entry(u.user).or_default();
                let before = earlier.get(&u.user).copied().unwrap_or_default();
                let (refused, charged) = match ledger.charge(period.start, cost, budget, before) {
                    Ok(()) => (None, cost),
                    Err(e @ Refusal::OverBudget { .. }) => (Some(e.to_string()), Spend::default()),
                    Err(e @ Refusal::AlreadyReleased(_)) => return Err(e),
                };
                let included = refused.is_none();
                contributions.push(Contribution {
                    user: u.user,
                    level: u.level,
                    refused,
                    artists: if included { bound(&u.artists, params, key) } else { Vec::new() },
                    tracks: if included { bound(&u.tracks, params, key) } else { Vec::new() },
                    charged,
                });
                if included && !empty {
                    aggregate.push(u);
                }
            }
        }
    }
    let mut communities = period.communities;
    communities.sort_unstable();
    communities.dedup();
    communities.truncate(crate::privacy::snapshot::MAX_COMMUNITIES);
    let snapshot = SnapshotV1 {
        schema: SCHEMA,
        communities,
        origin: period.origin,
        period_start: period.start,
        period_secs: period.secs,
        version: 1,
        issued_at: period.issued_at,
        params: *params,
        tau: params.tau(),
        public: Charts {
            artists: public_section(&public, Chart::Artists),
            tracks: public_section(&public, Chart::Tracks),
        },
        aggregate: Charts {
            artists: aggregate_section(&aggregate, Chart::Artists, params, key, rng),
            tracks: aggregate_section(&aggregate, Chart::Tracks, params, key, rng),
        },
    };
    Ok(Release { snapshot: Publishable(snapshot), contributions, ledgers })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::privacy::accountant::{Account, Ledger};
    use crate::privacy::noise::Seeded;
    use crate::privacy::snapshot::DecodeError;

    const KEY: [u8; 32] = [7; 32];
    const BIG: Budget = Budget {
        week: Spend { eps_milli: 1_000_000, delta_pico: 1_000_000_000 },
        year: Spend { eps_milli: 1_000_000, delta_pico: 1_000_000_000 },
    };

    fn period() -> Period {
        Period {
            origin: [1; 32],
            start: 1_795_392_000,
            secs: 604_800,
            issued_at: 1_795_392_000 + 691_200,
            communities: vec![[9; 32]],
        }
    }

    /// Loose parameters so a 40-user test node publishes something.
    fn loose() -> Params {
        Params { eps_listeners_milli: 20_000, eps_listens_milli: 20_000, k: 3, l0: 3, ..Params::default() }
    }

    fn user(id: u32, level: SharingLevel, artists: &[(&str, u64)]) -> UserPeriod {
        UserPeriod {
            user: id,
            level,
            artists: artists.iter().map(|(a, n)| (ItemName::artist(a), *n)).collect(),
            tracks: artists.iter().map(|(a, n)| (ItemName::track(a, &format!("{a} song")), *n)).collect(),
        }
    }

    /// 40 aggregate users sharing five common artists, plus a private and a public one.
    fn node(extra: &[UserPeriod]) -> Vec<UserPeriod> {
        let common = ["Common A", "Common B", "Common C", "Common D", "Common E"];
        let mut users: Vec<UserPeriod> = (0..40u32)
            .map(|i| {
                let picks: Vec<(&str, u64)> =
                    (0..4).map(|j| (common[((i + j) % 5) as usize], u64::from(1 + (i * 7 + j * 3) % 25))).collect();
                user(i, SharingLevel::Aggregate, &picks)
            })
            .collect();
        users.extend_from_slice(extra);
        users
    }

    fn snapshot_bytes(users: &[UserPeriod], params: &Params, seed: u64) -> Vec<u8> {
        release(period(), users, params, BIG, BTreeMap::new(), &KEY, &mut Seeded(seed))
            .expect("release")
            .snapshot
            .encode()
    }

    #[test]
    fn a_private_user_changes_no_byte_of_the_snapshot() {
        let secret = user(100, SharingLevel::Private, &[("Zzyzx Secret Band", 500), ("Common A", 50)]);
        for seed in 0..20 {
            let without = snapshot_bytes(&node(&[]), &loose(), seed);
            let with = snapshot_bytes(&node(std::slice::from_ref(&secret)), &loose(), seed);
            assert_eq!(with, without, "seed {seed}");
            assert!(!with.windows(6).any(|w| w == b"Zzyzx "), "the private name is in the bytes");
        }
    }

    #[test]
    fn public_users_are_exact_and_aggregate_items_need_k_listeners() {
        let public = user(200, SharingLevel::Public, &[("Open Band", 12), ("Common A", 3)]);
        // Two aggregate listeners of a rare artist: below k = 3 whatever the noise.
        let rare = [
            user(300, SharingLevel::Aggregate, &[("Rare Duo", 25)]),
            user(301, SharingLevel::Aggregate, &[("Rare Duo", 25)]),
        ];
        let mut users = node(&[public]);
        users.extend(rare);
        for seed in 0..50 {
            let r =
                release(period(), &users, &loose(), BIG, BTreeMap::new(), &KEY, &mut Seeded(seed)).expect("release");
            let s = r.snapshot.get();
            let open = s.public.artists.iter().find(|e| e.name.artist == "Open Band").expect("public entry");
            assert_eq!((open.listeners, open.listens), (1, 12));
            assert_eq!(s.public.artists.len(), 2, "only public users in the public section");
            assert!(s.aggregate.artists.iter().all(|e| e.name.artist.starts_with("common")), "seed {seed}");
            assert!(
                s.aggregate.artists.iter().all(|e| e.name == e.name.canonical()),
                "the DP section carries canonical names only"
            );
            assert!(s.aggregate.artists.iter().all(|e| e.listeners >= s.tau));
            assert_eq!(SnapshotV1::decode(&r.snapshot.encode()).as_ref(), Ok(s), "round trip");
        }
    }

    #[test]
    fn default_parameters_publish_nothing_for_a_small_node() {
        let r = release(period(), &node(&[]), &Params::default(), BIG, BTreeMap::new(), &KEY, &mut Seeded(1))
            .expect("release");
        assert!(r.snapshot.get().aggregate.artists.is_empty(), "40 listeners are far below τ");
    }

    #[test]
    fn one_users_week_moves_each_bounded_sum_by_at_most_the_sensitivity() {
        let params = loose();
        let base = node(&[]);
        // Heavy, light and many-item users: bounding must cap each the same way.
        let extras = [
            user(500, SharingLevel::Aggregate, &[("Common A", 5_000), ("Common B", 4_000), ("X", 3_000), ("Y", 2_000)]),
            user(501, SharingLevel::Aggregate, &[("Common C", 1)]),
            user(502, SharingLevel::Aggregate, &(0..50).map(|i| (["Common D", "Z"][i % 2], 7u64)).collect::<Vec<_>>()),
        ];
        for extra in &extras {
            let mut with = base.clone();
            with.push(extra.clone());
            for chart in [Chart::Artists, Chart::Tracks] {
                let a = bounded_sums(&base.iter().collect::<Vec<_>>(), chart, &params, &KEY);
                let b = bounded_sums(&with.iter().collect::<Vec<_>>(), chart, &params, &KEY);
                let mut touched = 0;
                for (id, (_, l, n)) in &b {
                    let (l0, n0) = a.get(id).map(|(_, l, n)| (*l, *n)).unwrap_or((0, 0));
                    assert!(l - l0 <= 1, "listeners moved by {}", l - l0);
                    assert!(n - n0 <= u64::from(params.clamp), "listens moved by {}", n - n0);
                    touched += usize::from(l != &l0);
                }
                assert!(touched <= params.l0 as usize, "{touched} items touched");
            }
            // With the same draws, the released counts move by the same bounded amounts
            // (the extra user only listens to items that are released either way).
            if extra.user == 501 {
                let r0 = release(period(), &base, &params, BIG, BTreeMap::new(), &KEY, &mut Seeded(9)).expect("r0");
                let r1 = release(period(), &with, &params, BIG, BTreeMap::new(), &KEY, &mut Seeded(9)).expect("r1");
                let (s0, s1) = (r0.snapshot.get(), r1.snapshot.get());
                assert_eq!(s0.aggregate.artists.len(), s1.aggregate.artists.len());
                for (e0, e1) in s0.aggregate.artists.iter().zip(&s1.aggregate.artists) {
                    assert!((e1.listeners - e0.listeners).abs() <= 1);
                    assert!((e1.listens - e0.listens).abs() <= i64::from(params.clamp));
                }
            }
        }
    }

    #[test]
    fn a_users_period_is_counted_and_named_from_their_own_listens_alone() {
        let track = |artist: &str, title: &str| TrackRef {
            artist: artist.into(),
            artist_names: Vec::new(),
            artist_mbids: Vec::new(),
            title: title.into(),
            album: None,
            recording_mbid: None,
            release_mbid: None,
        };
        let listens = [
            track("Ana & Bo", "Duet"),
            track("the band", "Song (feat. Guest)"),
            track("The Band", "Song"),
            track("The Band", "Song"),
        ];
        let u = UserPeriod::from_tracks(7, SharingLevel::Aggregate, &listens, &CreditRules::default());
        let artists: Vec<(String, u64)> = u.artists.iter().map(|(n, c)| (n.artist.clone(), *c)).collect();
        // No "known artist" split (that evidence is other users'), the user's most
        // played spelling, featured guests credited.
        assert!(artists.contains(&("Ana & Bo".into(), 1)), "{artists:?}");
        assert!(artists.contains(&("The Band".into(), 3)), "{artists:?}");
        assert!(artists.contains(&("Guest".into(), 1)), "{artists:?}");
        let song = u.tracks.iter().find(|(n, _)| n.title.as_deref() == Some("Song")).expect("song");
        assert_eq!((song.0.artist.as_str(), song.1), ("The Band", 3));
    }

    #[test]
    fn ties_are_broken_by_the_keyed_hash_not_by_order() {
        let params = Params { l0: 1, ..Params::default() };
        let items = vec![(ItemName::artist("A"), 5), (ItemName::artist("B"), 5)];
        let mut reversed = items.clone();
        reversed.reverse();
        assert_eq!(bound(&items, &params, &KEY), bound(&reversed, &params, &KEY));
        let clamped = bound(&[(ItemName::artist("A"), 99)], &params, &KEY);
        assert_eq!(clamped[0].1, 10, "listens clamp at C");
    }

    #[test]
    fn the_accountant_leaves_out_users_over_budget_and_refuses_a_second_release() {
        let users = node(&[]);
        let params = loose();
        let cost = params.release_cost();
        let mut ledgers = BTreeMap::new();
        // User 0 already spent the whole week on an earlier period.
        ledgers.insert(
            0,
            Account { week: Ledger { spent: cost, periods: vec![period().start - 3_600] }, earlier: Spend::default() },
        );
        // User 2 spent the year in the weeks before.
        ledgers.insert(2, Account { week: Ledger::default(), earlier: BIG.year });
        let budget = Budget { week: cost, year: BIG.year };
        let r = release(period(), &users, &params, budget, ledgers, &KEY, &mut Seeded(3)).expect("release");
        let c0 = r.contributions.iter().find(|c| c.user == 0).expect("user 0");
        assert!(c0.refused.as_deref().is_some_and(|m| m.contains("over budget")), "{c0:?}");
        assert!(c0.artists.is_empty() && c0.charged == Spend::default());
        let c1 = r.contributions.iter().find(|c| c.user == 1).expect("user 1");
        assert_eq!((c1.refused.as_ref(), c1.charged), (None, cost));
        assert_eq!(r.ledgers[&1].periods, vec![period().start]);
        let c2 = r.contributions.iter().find(|c| c.user == 2).expect("user 2");
        assert!(c2.refused.as_deref().is_some_and(|m| m.contains("52 weeks")), "{c2:?}");
        // The same period again: refused as a whole.
        let accounts =
            r.ledgers.into_iter().map(|(u, week)| (u, Account { week, earlier: Spend::default() })).collect();
        let again = release(period(), &users, &params, BIG, accounts, &KEY, &mut Seeded(4));
        assert!(matches!(again, Err(Refusal::AlreadyReleased(_))));
    }

    /// With fewer aggregate users than τ nothing could be released about them: none is
    /// charged and the section is empty, whatever they played; from τ users on, they are.
    #[test]
    fn a_node_with_fewer_aggregate_users_than_tau_charges_none() {
        let mut params = loose();
        let tau = usize::try_from(params.tau()).expect("tau");
        assert!(tau > 3 && tau < 40, "loose parameters: τ {tau}");
        // τ - 1 aggregate users, each playing one artist heavily; a public user too.
        let few: Vec<UserPeriod> = node(&[]).into_iter().take(tau - 1).collect();
        let mut users = few.clone();
        users.push(user(900, SharingLevel::Public, &[("Open Artist", 3)]));
        for seed in 0..20 {
            let r = release(period(), &users, &params, BIG, BTreeMap::new(), &KEY, &mut Seeded(seed)).expect("release");
            assert!(r.snapshot.0.aggregate.artists.is_empty() && r.snapshot.0.aggregate.tracks.is_empty());
            assert!(!r.snapshot.0.public.artists.is_empty(), "the public section is unchanged");
            for c in r.contributions.iter().filter(|c| c.level == SharingLevel::Aggregate) {
                assert_eq!(c.charged, Spend::default(), "{c:?}");
                assert!(c.refused.as_deref().is_some_and(|m| m.contains("nothing was charged")), "{c:?}");
            }
            assert!(r.ledgers.values().all(|l| l.spent == Spend::default() && l.periods.is_empty()));
        }
        // One more aggregate user (τ of them), even one who played nothing: all charged.
        users.push(user(901, SharingLevel::Aggregate, &[]));
        let r = release(period(), &users, &params, BIG, BTreeMap::new(), &KEY, &mut Seeded(1)).expect("release");
        let charged = r.contributions.iter().filter(|c| c.charged == params.release_cost()).count();
        assert_eq!(charged, tau, "every aggregate user is charged once τ of them share");
        // A stricter τ (the defaults' 280) turns the 40-user node's release off again.
        params = Params::default();
        let r = release(period(), &node(&[]), &params, BIG, BTreeMap::new(), &KEY, &mut Seeded(2)).expect("release");
        assert!(r.contributions.iter().all(|c| c.charged == Spend::default()));
    }

    #[test]
    fn the_decoder_refuses_non_canonical_and_inconsistent_bytes() {
        let r = release(period(), &node(&[]), &loose(), BIG, BTreeMap::new(), &KEY, &mut Seeded(5)).expect("release");
        let bytes = r.snapshot.encode();
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert_eq!(SnapshotV1::decode(&trailing), Err(DecodeError::NotCanonical));
        // A non-minimal varint for the schema (0x82 0x00 = 2).
        let mut long = vec![0x82, 0x00];
        long.extend_from_slice(&bytes[1..]);
        assert!(SnapshotV1::decode(&long).is_err());
        assert!(matches!(SnapshotV1::decode(&bytes[..bytes.len() - 3]), Err(DecodeError::Malformed(_))));
        assert!(matches!(SnapshotV1::decode(&vec![0u8; 70_000]), Err(DecodeError::TooLarge(_))));
        assert!(matches!(SnapshotV1::decode(&[3, 0]), Err(DecodeError::UnknownSchema(3))));
        // The communities: sorted and unique.
        let mut unsorted = r.snapshot.get().clone();
        unsorted.communities = vec![[2; 32], [1; 32]];
        assert!(matches!(SnapshotV1::decode(&unsorted.encode()), Err(DecodeError::Invalid(_))));
        let mut forged = r.snapshot.get().clone();
        if let Some(e) = forged.aggregate.artists.first_mut() {
            e.name.artist = "Someone Else".into();
        }
        assert!(matches!(SnapshotV1::decode(&forged.encode()), Err(DecodeError::Invalid(_))));
    }
}
