//! Committing a group: one sled transaction over every touched tree, then one flush;
//! and the statistics buckets merged and persisted every few seconds (the node's
//! chunks, when due, right after the flush: `Store::store_node_changes`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::{Phase, committer};
use crate::stats::chart::Kind;
use crate::store::aggregates::{Change, NODE_STALE, NodeChanges, deltas as node_deltas, is_node_key, merged};
use crate::store::codec::{decode, encode};
use crate::store::keys::{self, UserId};
use crate::store::schema::{self};
use crate::store::values::{AggV2, ClientV1, InfoBlockV1, SpellingV1};
use crate::store::{Error, Result};

use super::*;

/// A group's merged user buckets, and the local days whose listens of counted users
/// changed (`Store::node_group_changed`); its changes of node buckets go to the
/// writer's `node_changes`.
pub(super) type NodeMerge = (Vec<([u8; 9], Arc<AggV2>)>, BTreeSet<i32>);

/// What `Writer::begin_apply` decided and leaves for `Writer::end_apply`, once the
/// group is written.
pub(super) struct After {
    /// The user buckets are stored with the group (dropped from memory once written).
    persist: bool,
    /// The node chunks are stored after the write...
    store_node: bool,
    /// ...by a background pass.
    in_background: bool,
    /// Node changes are held in memory once the group is written.
    node_held: bool,
    /// The node changes' pairs held before the group.
    node_pairs: usize,
    /// The group's user buckets, merged.
    buckets: Vec<([u8; 9], Arc<AggV2>)>,
    /// The local days whose listens of counted users changed.
    days: BTreeSet<i32>,
    /// The users whose buckets the group changed.
    group_users: BTreeSet<UserId>,
    /// The group's node changes, when no thread adds them (`absorb`): added by the
    /// writer once the group is written.
    inline: Option<NodeChanges>,
}

impl Writer {
    /// The buckets a group changed, with its changes applied, and the changes of the
    /// node buckets (`aggregates::node`) those of users counted in node charts make
    /// (added to the pending ones, `aggregates::NodePending`, and merged into the node
    /// chunks only when they are stored: merging every group's into its chunks copied
    /// thousands of chunks a group, more as the node grew), put into `node` (cleared).
    pub(super) fn merge_buckets(&self, group: &Group, node: &mut NodeChanges) -> Result<NodeMerge> {
        node.clear();
        let mut out = Vec::with_capacity(group.aggs.len());
        let mut by_user: BTreeMap<UserId, BTreeMap<[u8; 9], Change>> = BTreeMap::new();
        for (k, delta) in &group.aggs {
            let before = self.store.bucket(k)?;
            let after = Arc::new(merged(before.as_deref(), delta));
            let user = keys::parse_bucket(schema::USERID_BUCKET_COUNTS, k)?.0;
            by_user.entry(user).or_default().insert(*k, (before, Some(after.clone())));
            out.push((*k, after));
        }
        let mut days = BTreeSet::new();
        for (user, changes) in &by_user {
            if !self.store.counted_in_node(*user)? {
                continue;
            }
            for k in changes.keys() {
                if let (_, keys::BUCKET_DAY, day) = keys::parse_bucket(schema::USERID_BUCKET_COUNTS, k)? {
                    days.insert(day);
                }
            }
            let years = self.store.user_years(*user)?;
            // The items whose spelling this group records or removes for the user
            // (stored with it): whether the user shows their stored name may change
            // even where the user's count of them does not (an erased first listen and
            // a new one in one group).
            let mut respelled = Vec::new();
            let range = keys::user_item(*user, 0, 0)..=keys::user_item(*user, u8::MAX, u32::MAX);
            let recorded = group.spellings.range(range.clone()).map(|(k, _)| k);
            for k in recorded.chain(group.unspelled.range(range)) {
                let kind =
                    [Kind::Artist, Kind::Recording, Kind::Release].into_iter().find(|x| x.index() == usize::from(k[4]));
                if let (Some(kind), Ok(id)) = (kind, <[u8; 4]>::try_from(&k[5..9])) {
                    respelled.push((kind, u32::from_be_bytes(id)));
                }
            }
            let pending = Some((&group.spellings, &group.unspelled));
            // No spelling stored: only this group's can differ from the stored name.
            let stored_spellings = self.store.has_spellings(*user)?;
            node_deltas(
                changes,
                &mut |k| self.store.bucket(k),
                &years,
                &mut |kind, id, after| match (after, stored_spellings) {
                    (_, true) => self.store.shows_stored_name(*user, kind, id, if after { pending } else { None }),
                    (false, false) => Ok(true),
                    (true, false) => {
                        let key = keys::user_item(*user, kind.index() as u8, id);
                        Ok(group.spellings.get(&key).is_none_or(Option::is_none))
                    }
                },
                &respelled,
                node,
            )?;
        }
        Ok((out, days))
    }

    /// Writes a group in one transaction and flushes (then the node chunks, when they
    /// are stored, one write each with `NODE_STALE` set). Statistics buckets go to memory
    /// (`store.hot`) and are stored with a group only when `persist` is asked, the group
    /// erased a listen (a recount after a crash could not subtract erased content), the
    /// last store was `PERSIST_EVERY` ago, or memory holds too many; the stats marks are
    /// written with them.
    pub(super) fn apply(&mut self, group: &mut Group, persist: bool) -> Result<()> {
        // An erasure racing a release: see `Store::contributions_lock` (held through the
        // write).
        let store = self.store.clone();
        let _ordered = (!group.erased_at.is_empty()).then(|| store.contributions_lock());
        let (write, after) = self.begin_apply(group, persist)?;
        let written = self.write_now(write);
        self.end_apply(group, after, written)
    }

    /// Writes a group's write and waits for it: on the committing thread (`committer`),
    /// or on this one when there is none.
    pub(super) fn write_now(&mut self, write: Box<committer::Write>) -> Result<()> {
        let write = match self.committer.as_mut() {
            Some(committer) => match committer.send(write) {
                Ok(()) => return self.written(),
                Err(write) => write,
            },
            None => write,
        };
        self.committer = None;
        write.run()
    }

    /// Waits for the write handed to the committing thread (`Phase::Writing`): its
    /// result (`Ok` when none was in flight). A thread that stopped answers an error,
    /// which fails the store where it is handled, as a failed write does.
    pub(super) fn written(&mut self) -> Result<()> {
        let started = std::time::Instant::now();
        let written = self.committer.as_mut().and_then(committer::Committer::finish);
        self.stats.time(Phase::Writing, started);
        if self.committer.as_ref().is_some_and(committer::Committer::is_gone) {
            // Its write told no one: the thread adding node changes is told here (they
            // are dropped), and later groups are written by this thread.
            self.committer = None;
            if let Some(teller) = self.absorber.as_ref().and_then(absorb::Absorber::teller) {
                teller.tell(false);
            }
        }
        written.unwrap_or(Ok(()))
    }

    /// The first part of `apply`, up to the write: everything it reads is read, and every
    /// write encoded (`committer::Write`); what to do once it is written (`After`). Fails
    /// only before anything is written (a stored value that does not decode, a store that
    /// is no longer writable).
    pub(super) fn begin_apply(&mut self, group: &mut Group, persist: bool) -> Result<(Box<committer::Write>, After)> {
        // One group at a time: the one in flight is landed first (`Writer::land`).
        debug_assert!(self.in_flight.is_none(), "a group's write began with another in flight");
        // The last group's node changes are all added before anything below reads them.
        self.finish_absorb()?;
        #[cfg(test)]
        let node_max_pairs = match self.store.faults.node_max_pairs.load(std::sync::atomic::Ordering::Relaxed) {
            0 => NODE_HOT_MAX_PAIRS,
            n => n,
        };
        #[cfg(not(test))]
        let node_max_pairs = NODE_HOT_MAX_PAIRS;
        // Pre-encode every write so the transaction closure (which sled may retry) only
        // copies bytes. Tree indexes follow the `trees` array below.
        let mut ops: committer::Ops = Vec::new();
        for (k, b) in &group.blocks {
            ops.push((0, k.to_vec(), Some(encode(b))));
        }
        for (k, (d, dirty)) in &group.days {
            if *dirty {
                ops.push((1, k.to_vec(), (!d.items.is_empty()).then(|| encode(d))));
            }
        }
        for user in group.heads.keys() {
            if let Some(state) = self.users.get(user) {
                ops.push((2, keys::user(*user).to_vec(), Some(encode(&state.head))));
            }
        }
        for (chunk, tracks) in &group.track_chunks {
            ops.push((3, keys::u32_key(*chunk).to_vec(), Some(encode(tracks))));
        }
        if group.new_tracks && !self.open_chunk.1.tracks.is_empty() {
            ops.push((3, keys::u32_key(self.open_chunk.0).to_vec(), Some(encode(&self.open_chunk.1))));
        }
        for (name, id) in &group.clients {
            ops.push((4, name.as_bytes().to_vec(), Some(keys::u32_key(*id).to_vec())));
            ops.push((5, keys::u32_key(*id).to_vec(), Some(encode(&ClientV1 { name: name.clone() }))));
        }
        if !group.clients.is_empty() {
            ops.push((6, b"next_client_id".to_vec(), Some(self.next_client_id.to_be_bytes().to_vec())));
        }
        for (k, changes) in &group.infos {
            let mut block: InfoBlockV1 = match self.store.trees.userid_seq_info.get(k)? {
                Some(bytes) => decode(schema::USERID_SEQ_INFO, k, &bytes)?,
                None => InfoBlockV1::default(),
            };
            for (slot, info) in changes {
                block.items.retain(|(s, _)| s != slot);
                if let Some(info) = info {
                    block.items.push((*slot, info.clone()));
                }
            }
            block.items.sort_by_key(|(s, _)| *s);
            ops.push((12, k.to_vec(), (!block.items.is_empty()).then(|| encode(&block))));
        }
        for (k, f) in &group.feedback {
            ops.push((11, k.to_vec(), f.as_ref().map(encode)));
        }
        // A group that erased listens is written under `Store::contributions_lock` (`apply`).
        for (user, at) in &group.erased_at {
            if let Some((k, v)) = self.store.contribution_without_items(*user, *at)? {
                ops.push((13, k, Some(v)));
            }
        }
        for (k, name) in &group.spellings {
            ops.push((14, k.to_vec(), Some(encode(&SpellingV1 { name: name.clone() }))));
        }
        for k in &group.unspelled {
            ops.push((14, k.to_vec(), None));
        }
        for (tree, k, v) in self.dict.take_writes() {
            let index = match tree {
                schema::ITEMCHUNK_ITEMS => 7,
                schema::TRACKID_SPELLINGS => 15,
                _ => 8,
            };
            ops.push((index, k, Some(v)));
        }
        // Counts held in memory: the users' and the node's, each with its own bound.
        let (hot_pairs, mut node_pairs) = match self.store.hot.read() {
            Ok(h) => h.iter().fold((0usize, 0usize), |(users, node), (k, a)| {
                let n = a.counts.iter().map(Vec::len).sum::<usize>() + a.hours.len();
                if is_node_key(k) { (users, node + n) } else { (users + n, node) }
            }),
            Err(_) => (usize::MAX, usize::MAX),
        };
        // And the pending changes' pairs, as counted where they change. With no pass
        // running, the bound starts one; while one is under way (it takes the changes of
        // the chunks it reaches as it goes), the writer goes on up to `during_a_pass` of
        // the bound, then waits for it (`store_node_in_background`).
        node_pairs = node_pairs.saturating_add(self.store.node_pending_pairs());
        let node_max_pairs = match self.store.node_store_running() {
            true => during_a_pass(node_max_pairs),
            false => node_max_pairs,
        };
        #[cfg(test)]
        let persist = persist || self.store.faults.store_node_each_group.load(std::sync::atomic::Ordering::Relaxed);
        #[cfg(test)]
        let each_group = self
            .store
            .faults
            .store_node_in_background_each_group
            .load(std::sync::atomic::Ordering::Relaxed)
            || self.store.faults.store_node_in_background_next_group.swap(false, std::sync::atomic::Ordering::Relaxed);
        #[cfg(not(test))]
        let each_group = false;
        // Asked by a caller that needs everything stored when `apply` returns (a backup,
        // a deletion, a recount, the shutdown): the node chunks are stored on this thread.
        let asked = persist;
        let node_due = persist
            || each_group
            || self.last_node_persist.elapsed() >= NODE_PERSIST_EVERY
            || node_pairs >= node_max_pairs;
        // Node changes at their bound are stored now, not at the next `PERSIST_EVERY`:
        // once the writer's groups went faster (node changes added beside it), waiting
        // for that let an import's pending changes pass the bound by two fifths (a pass
        // of 8.35M pairs at 10,000 members, the import peaking at 492 MiB).
        let persist = persist
            || each_group
            || group.has_delete
            || self.last_persist.elapsed() >= PERSIST_EVERY
            || hot_pairs >= HOT_MAX_PAIRS
            || node_pairs >= node_max_pairs;
        let mut group_users: BTreeSet<UserId> = BTreeSet::new();
        for k in group.aggs.keys() {
            group_users.insert(keys::parse_bucket(schema::USERID_BUCKET_COUNTS, k)?.0);
        }
        // The writer's list of node changes, its room kept from group to group (given
        // back below; lost to an error, which leaves an empty one).
        let mut node = std::mem::take(&mut self.node_changes);
        let (buckets, days) = self.merge_buckets(group, &mut node)?;
        // The node buckets are stored with the user buckets when they are due: every
        // change held (the pending ones, this group's, a recount's memory copy) merged
        // into its stored chunk after the transaction (`Store::store_node_changes`).
        let store_node = persist && node_due;
        // Many changes, not asked: stored by a background pass while the writer goes on.
        let in_background = store_node && !asked && (each_group || node_pairs >= BACKGROUND_STORE_PAIRS);
        // A store on this thread first waits for a background pass still running; while
        // one runs, `NODE_STALE` stays set (its chunks are part written, and may hold
        // changes of groups whose user buckets are not stored yet).
        let storing = self.reap_node_store(store_node && !in_background);
        // A pass that failed (or panicked) failed the store: nothing of this group is
        // written yet, so it is refused, not written to a failed store.
        self.store.writable()?;
        // Whether node changes are held in memory once the transaction commits.
        let mut node_held = !node.is_empty();
        if persist {
            let in_group: BTreeSet<[u8; 9]> = buckets.iter().map(|(k, _)| *k).collect();
            if let Ok(hot) = self.store.hot.read() {
                for (k, agg) in hot.iter().filter(|(k, _)| !in_group.contains(*k)) {
                    if is_node_key(k) {
                        node_held = true;
                        continue;
                    }
                    ops.push((9, k.to_vec(), (agg.total > 0).then(|| encode(agg.as_ref()))));
                }
            }
            for (k, agg) in &buckets {
                ops.push((9, k.to_vec(), (agg.total > 0).then(|| encode(agg.as_ref()))));
            }
            match self.store.node_pending.read() {
                Ok(p) => node_held |= !p.is_empty(),
                Err(_) => return Err(Error::Invalid("node changes poisoned".into())),
            }
            // Stale while node changes wait in memory, and while the node chunks are
            // written after the transaction (cleared once they are).
            if node_held {
                ops.push((6, NODE_STALE.to_vec(), Some(Vec::new())));
            } else if store_node && !storing {
                ops.push((6, NODE_STALE.to_vec(), None));
            }
            for user in self.pending_users.union(&group_users) {
                let mark = match self.users.get(user) {
                    Some(state) => state.head.next_seq,
                    None => self.store.log_head(*user)?.n_entries,
                };
                ops.push((10, keys::user(*user).to_vec(), Some(mark.to_be_bytes().to_vec())));
            }
        }
        let t = &self.store.trees;
        let trees = [
            &t.userid_seq_block,
            &t.userid_day_listens,
            &t.userid_loghead,
            &t.trackchunk_tracks,
            &t.clientname_clientid,
            &t.clientid_clientname,
            &t.meta,
            &t.itemchunk_items,
            &t.trackchunk_credits,
            &t.userid_bucket_counts,
            &t.userid_statsmark,
            &t.userid_recording_feedback,
            &t.userid_seq_info,
            &t.userid_periodstart_contribution,
            &t.userid_item_spelling,
            &t.trackid_spellings,
        ];
        // Everything above only read; from here on, a failure leaves sled's memory ahead
        // of its disk, so it fails the store (see `poison`).
        // Only the trees this group writes take part (each one in a sled transaction costs
        // its own bookkeeping); `slot[i]` is tree i's place among them.
        let mut slot = [usize::MAX; 16];
        let mut used: Vec<sled::Tree> = Vec::new();
        for (i, _, _) in &ops {
            if let (Some(s), Some(tree)) = (slot.get_mut(*i), trees.get(*i))
                && *s == usize::MAX
            {
                *s = used.len();
                used.push((*tree).clone());
            }
        }
        // The group's node changes go to the thread adding them to the pending ones
        // (`absorb`: it orders them while the group is written, adds them once told it
        // is, by whoever writes it, right after the flush, and takes their lock before
        // the group is acknowledged; the writer waits for it before anything reads them
        // again), with what the group's batches carried. Only the write can fail from
        // here on.
        let spent = std::mem::take(&mut group.spent);
        let inline = match self.absorber.as_mut() {
            Some(absorber) => absorber.send((node, spent)).err().map(|(node, _)| node),
            None => Some(node),
        };
        let teller = match inline {
            None => self.absorber.as_ref().and_then(absorb::Absorber::teller),
            Some(_) => None,
        };
        let write = committer::Write {
            trees: used,
            slot,
            ops,
            store: self.store.clone(),
            stats: self.stats.clone(),
            absorber: teller,
        };
        let after =
            After { persist, store_node, in_background, node_held, node_pairs, buckets, days, group_users, inline };
        Ok((Box::new(write), after))
    }

    /// Waits for a group in flight without landing it (the writer is dropped after a
    /// panic, which failed the store): its batches are not acknowledged. Its write told
    /// the thread adding its node changes whether it was written (added if so, as for an
    /// acknowledged group; its write set `NODE_STALE` if it had any, so the next open
    /// rebuilds the node statistics either way).
    pub(super) fn abandon(&mut self) {
        // Its write told the thread adding its node changes whether it was written.
        if self.in_flight.take().is_some() {
            let _ = self.written();
        }
    }

    /// The rest of `apply`, once the group's write ended (`written`): its node changes
    /// added, its buckets put in memory (or dropped from it, stored), readers told, and
    /// the node chunks stored when due. Fails only when the write did (the store failed).
    pub(super) fn end_apply(&mut self, group: &Group, after: After, written: Result<()>) -> Result<()> {
        let After { persist, store_node, in_background, node_held, node_pairs, buckets, days, group_users, inline } =
            after;
        let started = std::time::Instant::now();
        // Told by the write (`committer::Write::run`).
        let told = match (&inline, self.absorber.as_ref()) {
            (None, Some(absorber)) => Some(absorber.locked(written.is_ok())),
            _ => None,
        };
        self.stats.time(Phase::NodeChanges, started);
        if let Err(e) = written {
            self.poison("a group commit", &e);
            let _ = self.finish_absorb();
            return Err(e);
        }
        let changed = match (inline, told) {
            // Without the thread: added here, now the group is written.
            (Some(mut node), _) => {
                let changed = absorb::absorb(&self.store.node_pending, &mut node);
                self.node_changes = node;
                changed
            }
            (None, Some(Ok(changed))) => changed,
            (None, told) => {
                let e = match told {
                    Some(Err(e)) => e,
                    _ => absorb::gone(),
                };
                // The group is written and stays acknowledged; the store fails.
                self.absorber = None;
                self.poison("adding a group's node changes", &e);
                return Ok(());
            }
        };
        // Each user's newest listen among the day buckets this group wrote (appends
        // only raise a user's newest live listen).
        let mut newest: BTreeMap<UserId, i64> = BTreeMap::new();
        for (k, (day, dirty)) in &group.days {
            if let (true, Ok((user, n))) = (*dirty, keys::parse_user_u32(schema::USERID_DAY_LISTENS, k))
                && let Some(at) = crate::store::logs::newest_in_day(n, day)
            {
                let e = newest.entry(user).or_insert(at);
                *e = (*e).max(at);
            }
        }
        // A user whose listens this group erased: their newest live one, read again.
        let mut exact = Vec::new();
        for user in group.erased_at.iter().map(|(u, _)| *u).collect::<BTreeSet<UserId>>() {
            match self.store.newest_listen_at(user) {
                Ok(at) => exact.push((user, at)),
                Err(e) => tracing::error!(error = %e, "reading a user's newest listen after an erasure"),
            }
        }
        self.store.note_newest_listens(&newest, &exact);
        // The group is durable: a lock poisoned by a panicking thread does not
        // unacknowledge it.
        let mut hot = self.store.hot.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if persist {
            hot.retain(|k, _| is_node_key(k));
        } else {
            for (k, agg) in buckets {
                hot.insert(k, agg);
            }
        }
        drop(hot);
        // Readers see the group from now on: the kept node buckets it changed go now,
        // not after the store below (a chart kept meanwhile would lag for its seconds).
        self.store.node_group_changed(&changed, &days, false);
        if persist {
            self.pending_users.clear();
            self.last_persist = std::time::Instant::now();
        } else {
            self.pending_users.extend(group_users);
        }
        // The node chunks now, one by one (not in the transaction: see
        // `put_node_chunks`). When a write fails, the group is still acknowledged (its
        // listens are stored); the store refuses writes from now on, memory keeps the
        // changes not stored (readers see them), and the next open rebuilds the node
        // buckets (`node_stale` is still set).
        // Every change added before a store of them. A thread that stopped failed the
        // store (`finish_absorb`); the group is written and stays acknowledged.
        if store_node && self.finish_absorb().is_err() {
            return Ok(());
        }
        if in_background && node_held {
            // `NODE_STALE` was set by the transaction above (`node_held`); the writer
            // clears it in a later one, once no pass runs and nothing is held.
            self.store_node_in_background(node_pairs);
            self.last_node_persist = std::time::Instant::now();
        } else if store_node {
            let stored = !node_held || store_node_pass(&self.store, node_pairs, true);
            if node_held && node_pairs >= GIVE_BACK_AFTER_PAIRS {
                self.give_back();
            }
            if stored {
                self.last_node_persist = std::time::Instant::now();
            }
        }
        if !group.heads.is_empty() {
            self.store.people_changed();
        }
        Ok(())
    }
}

/// The bound on pending node changes while a store of them is under way, for a bound
/// of `bound` with none: 8/5 times it (7/3 and 1.75 before). A pass took 5–10 s in a
/// 10,000-member import,
/// and the writer adds changes meanwhile. Waiting at the bound (the pending pairs
/// counted exactly), the writer waited out each pass: an import of 165.0 s with 76 s of
/// the writer's CPU time (2.17 times). At twice the bound: 87.4 and 92.7 s (1.44 and
/// 1.47 times), peaks of 460 and 449 MiB; 1.5 times: 126.0 s (1.59 times), 411 MiB;
/// 1.75 times: 127.2 s on a slow run (1.49 times), 434 MiB (2026-12-05, eighth session;
/// `bench community`). Since the tenth session of 2026-12-06, 7/3 times a bound of 3M:
/// the same 7M at most, with more room for a pass to end in (see `NODE_HOT_MAX_PAIRS`).
/// Since the thirteenth, 8/5 times a bound of 5M: 8M at most. Passes writing a leaf of
/// sled's tree at once (`sled::Tree::apply_sorted`) end before 5M more are pending (16
/// passes in an import, none of which the writer waited for), and 7/3 times 5M would let
/// a slower pass hold 11.7M.
pub(super) fn during_a_pass(bound: usize) -> usize {
    bound.saturating_add((bound / 5).saturating_mul(3))
}

/// Stores every node change held in memory (`Store::store_node_changes`), then, when
/// `clear_stale` (the writer, right after a transaction that stored every user bucket,
/// with no other pass running), clears `NODE_STALE`. A failure fails the store (the
/// next open rebuilds the node statistics: `NODE_STALE` is still set). Whether it stored.
/// The memory its store freed is given back every `CHUNKS_PER_FLUSH` chunks by the
/// pass's thread (`Store::store_node_changes`: with glibc the whole process's; with
/// mimalloc only that thread's heap), and by the threads that allocated it, the writer
/// and the one adding node changes (`Writer::give_back`: mimalloc takes other threads'
/// frees back only then), after the pass or when the writer reaps a background one
/// (`reap_node_store`).
fn store_node_pass(store: &crate::store::Store, pairs: usize, clear_stale: bool) -> bool {
    #[cfg(test)]
    while !clear_stale && store.faults.hold_node_store_start.load(std::sync::atomic::Ordering::Relaxed) {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let started = std::time::Instant::now();
    // What the pass starts from, for the debug log only (a walk over every pending chunk).
    let census = tracing::enabled!(tracing::Level::DEBUG).then(|| store.node_pending_census());
    let stored = store.store_node_changes().and_then(|()| if clear_stale { store.clear_node_stale() } else { Ok(()) });
    let ok = match stored {
        Ok(()) => {
            let [chunks, counted, walked, maps, room] = census.unwrap_or_default();
            tracing::debug!(
                pairs,
                chunks,
                counted,
                walked,
                maps,
                room,
                ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                background = !clear_stale,
                "node statistics stored"
            );
            true
        }
        Err(e) => {
            tracing::error!(error = %e, "storing the node statistics failed");
            store.fail(&format!("storing the node statistics: {e}"));
            false
        }
    };
    #[cfg(test)]
    while !clear_stale && store.faults.hold_node_store.load(std::sync::atomic::Ordering::Relaxed) {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    // After a store of node chunks every node bucket kept from chunks goes (the stored
    // chunks changed where the last group did not; their sums did not).
    store.node_group_changed(None::<&[u8; 9]>, &BTreeSet::new(), true);
    ok
}

impl Writer {
    /// Stores the node changes held in memory on a thread of their own, after any pass
    /// still running (so at most one runs; the writer waits for it once `during_a_pass`
    /// of `NODE_HOT_MAX_PAIRS` are pending before a group, which then adds its own).
    /// Meanwhile the writer goes on adding changes: each chunk is
    /// written and its change dropped under the locks readers and the writer take
    /// (`Store::store_node_changes`), so a change absorbed during the pass is either
    /// taken by it or left pending for the next. Without a thread, stored here.
    pub(super) fn store_node_in_background(&mut self, pairs: usize) {
        self.wait_for_node_store();
        // Under way from now (the thread takes a while to start, and the debug census
        // walks every pending chunk before the pass takes any) until the thread ends,
        // a panic included (`UnderWay`'s drop).
        struct UnderWay(Arc<std::sync::atomic::AtomicBool>);
        impl Drop for UnderWay {
            fn drop(&mut self) {
                self.0.store(false, std::sync::atomic::Ordering::Release);
            }
        }
        self.store.node_pass_under_way.store(true, std::sync::atomic::Ordering::Release);
        let under_way = UnderWay(self.store.node_pass_under_way.clone());
        let store = self.store.clone();
        let spawned = std::thread::Builder::new().name("hearsay-node-store".into()).spawn(move || {
            let _under_way = under_way;
            store_node_pass(&store, pairs, false);
        });
        match spawned {
            Ok(handle) => self.node_store = Some(handle),
            Err(e) => {
                // The closure, and the flag's guard with it, was dropped unrun.
                tracing::warn!(error = %e, "no thread for the node store; storing on the writer");
                store_node_pass(&self.store, pairs, false);
                self.give_back();
            }
        }
    }

    /// Gives back freed memory (`memory::give_back`), and asks the thread adding node
    /// changes to give back its own (with mimalloc, each thread collects its heap).
    fn give_back(&self) {
        crate::memory::give_back();
        if let Some(absorber) = &self.absorber {
            absorber.give_back();
        }
    }

    /// Waits for the thread adding the last group's node changes (`absorb`), and takes
    /// back their room. A thread that stopped
    /// (it panicked) fails the store: the pending changes are then not whole, and the
    /// next open counts them again from the log, as after a crash.
    pub(super) fn finish_absorb(&mut self) -> Result<()> {
        let Some(absorber) = self.absorber.as_mut() else { return Ok(()) };
        let started = std::time::Instant::now();
        let finished = absorber.finish();
        self.stats.time(Phase::NodeChanges, started);
        match finished {
            Ok(None) => Ok(()),
            Ok(Some(node)) => {
                self.node_changes = node;
                Ok(())
            }
            Err(e) => {
                self.absorber = None;
                self.poison("adding a group's node changes", &e);
                Err(e)
            }
        }
    }

    /// Whether a background pass still runs, after waiting for it when `wait` (or
    /// collecting it if it ended).
    pub(super) fn reap_node_store(&mut self, wait: bool) -> bool {
        match self.node_store.take() {
            None => false,
            Some(handle) if wait || handle.is_finished() => {
                let started = std::time::Instant::now();
                let joined = handle.join();
                self.stats.time(Phase::NodePass, started);
                if joined.is_err() {
                    self.store.fail("the node statistics store panicked");
                }
                // The pass (≥ `BACKGROUND_STORE_PAIRS` changes) freed pending changes this
                // thread and the one adding them allocated (`store_node_pass`).
                self.give_back();
                false
            }
            Some(handle) => {
                self.node_store = Some(handle);
                true
            }
        }
    }

    /// Waits for a background pass still running.
    pub(super) fn wait_for_node_store(&mut self) {
        self.reap_node_store(true);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering::Relaxed;

    use super::*;
    use crate::log::listen::RawListen;
    use crate::stats::period::Period;
    use crate::store::users::SharingLevel;
    use crate::store::{Options, Store};

    fn listen(i: i64, now: i64) -> Action {
        listen_apart(i, now, 3_600)
    }

    /// The `i`th listen back from `now`, `apart` seconds from the next.
    fn listen_apart(i: i64, now: i64, apart: i64) -> Action {
        let (artist, title) = (format!("Artist {}", i % 5), format!("Song {i}"));
        let raw = RawListen {
            artist: artist.as_bytes(),
            title: title.as_bytes(),
            listened_at: now - apart * (i + 1),
            ..RawListen::default()
        };
        Action::Listen(Listen::parse(&raw, now).expect("listen"))
    }

    /// A group of an import's size (`BULK_GROUP` actions) grows sled's page cache until
    /// the node settles it; a smaller one leaves it at rest.
    #[test]
    fn a_group_of_an_imports_size_grows_the_page_cache() {
        let dir = tempfile::tempdir().expect("tempdir");
        let now = crate::now_unix();
        let store =
            Store::open(dir.path(), &Options { cache_mb: 4, import_cache_mb: 64, ..Options::default() }).expect("open");
        let user = store.create_user("alice", "password1", now).expect("user").id;
        let ingestor = Ingestor::start(store.clone(), 20_000, CreditRules::default()).expect("writer");
        let in_bulk = |s: &Store| *s.cache.state.lock().expect("lock") != crate::store::Bulk::AtRest;
        let group = |from: usize, n: usize| (from..from + n).map(|i| listen(i as i64, now)).collect::<Vec<_>>();
        let small = ingestor.ingest_blocking(user, group(0, super::super::BULK_GROUP - 1)).expect("small group");
        assert!(small.iter().all(|o| matches!(o, Outcome::Appended { .. })));
        assert!(!in_bulk(&store), "a group below an import's size grew the cache");
        ingestor.ingest_blocking(user, group(5_000, super::super::BULK_GROUP)).expect("bulk group");
        assert!(in_bulk(&store), "an import's group left the cache at rest");
        // The writer stamps the group's end too, after answering it: stopped first.
        ingestor.stop();
        assert!(store.settle_cache(std::time::Duration::ZERO));
        assert!(!in_bulk(&store));
    }

    /// The writer's phases (`IngestStats::phases`, what `bench community` prints): each
    /// timed where it happens, a written group counted before it is acknowledged, and the
    /// parts within the groups' time.
    #[test]
    fn the_writer_times_its_phases() {
        use std::time::Duration;

        use crate::store::Phase;
        let dir = tempfile::tempdir().expect("tempdir");
        let now = crate::now_unix();
        let (store, user) = public_member(dir.path(), now);
        // Each group's node changes go to a background pass, held until released below.
        store.faults.store_node_in_background_each_group.store(true, Relaxed);
        let _held = Held::set(&store, |f| &f.hold_node_store);
        let ingestor = Ingestor::start(store.clone(), 1_000, CreditRules::default()).expect("writer");
        // Longer than the wait asserted: the writer's clock starts once its thread runs.
        std::thread::sleep(Duration::from_millis(100));
        ingestor.ingest_blocking(user, (0..50).map(|i| listen(i, now)).collect()).expect("first group");
        // Read right after the acknowledgement: the group is counted already.
        let first = ingestor.stats();
        assert_eq!(first.groups, 1);
        // `IngestStats::phases` is indexed by a phase's place in `Phase::ALL`.
        assert!(Phase::ALL.iter().enumerate().all(|(i, p)| *p as usize == i), "Phase::ALL out of order");
        assert!(first.phase(Phase::Waiting) >= Duration::from_millis(30), "the wait for a batch: {first:?}");
        for phase in [Phase::Groups, Phase::Preparing, Phase::Transaction, Phase::Flush] {
            assert!(first.phase(phase) > Duration::ZERO, "{phase:?} not timed: {first:?}");
        }
        assert_eq!(first.phase(Phase::NodePass), Duration::ZERO, "no pass was waited for yet: {first:?}");
        // The second group waits for the first one's pass before starting its own: the
        // pass is released once the group is past its transaction, and a while later.
        std::thread::scope(|s| {
            s.spawn(|| {
                wait_until("the second group's transaction", || {
                    ingestor.stats().phase(Phase::Transaction) > first.phase(Phase::Transaction)
                });
                std::thread::sleep(Duration::from_millis(200));
                store.faults.hold_node_store.store(false, Relaxed);
            });
            ingestor.ingest_blocking(user, (50..100).map(|i| listen(i, now)).collect()).expect("second group");
        });
        let second = ingestor.stats();
        assert_eq!(second.groups, 2);
        assert!(second.phase(Phase::NodePass) > Duration::ZERO, "the wait for the pass: {second:?}");
        // The transactions and flushes are the committing thread's (`committer`); the
        // writer's wait for them is `Writing`.
        let parts: Duration = [Phase::Preparing, Phase::Writing, Phase::NodeChanges, Phase::NodePass]
            .iter()
            .map(|p| second.phase(*p))
            .sum();
        assert!(parts <= second.phase(Phase::Groups), "parts {parts:?} past the groups' time: {second:?}");
        ingestor.stop();
    }

    /// What each batch sent on its own thread came to, with the groups the writer had
    /// written when it was answered (`IngestStats::groups`, counted before answering).
    type Answered = Vec<(&'static str, Result<Vec<Outcome>>, u64)>;
    type Answers = std::sync::Mutex<Answered>;

    fn send(ingestor: &Ingestor, answers: &Answers, name: &'static str, user: UserId, actions: Vec<Action>) {
        let answer = ingestor.ingest_blocking(user, actions);
        let groups = ingestor.stats().groups;
        answers.lock().expect("answers").push((name, answer, groups));
    }

    fn preparing(ingestor: &Ingestor) -> std::time::Duration {
        ingestor.stats().phase(crate::store::Phase::Preparing)
    }

    /// The writer's time waiting for groups' writes: more than zero once it took a
    /// message while a group was in flight.
    fn writing(ingestor: &Ingestor) -> std::time::Duration {
        ingestor.stats().phase(crate::store::Phase::Writing)
    }

    /// Alice (a public member of a store at `dir`) sends 50 listens, then bob 40 once
    /// alice's group is prepared, alice's write held (`faults.hold_write`) until bob's
    /// group is prepared too; `meanwhile` runs then, before the write goes on. The store,
    /// alice, bob, the running writer and what each batch was answered.
    fn alice_then_bob_while_held(
        dir: &std::path::Path,
        now: i64,
        meanwhile: impl FnOnce(&Store, &Ingestor, &Answers),
    ) -> (Store, UserId, UserId, Ingestor, Answered) {
        let (store, alice) = public_member(dir, now);
        let bob = store.create_user("bob", "password1", now).expect("bob").id;
        let held = Held::set(&store, |f| &f.hold_write);
        let ingestor = Ingestor::start(store.clone(), 1_000, CreditRules::default()).expect("writer");
        let answers = Answers::default();
        std::thread::scope(|s| {
            s.spawn(|| send(&ingestor, &answers, "alice", alice, (0..50).map(|i| listen(i, now)).collect()));
            wait_until("alice's group prepared", || preparing(&ingestor) > std::time::Duration::ZERO);
            let first = preparing(&ingestor);
            s.spawn(|| send(&ingestor, &answers, "bob", bob, (0..40).map(|i| listen(i, now)).collect()));
            wait_until("bob's group prepared while alice's is written", || preparing(&ingestor) > first);
            meanwhile(&store, &ingestor, &answers);
            drop(held);
        });
        let answers = answers.into_inner().expect("answers");
        (store, alice, bob, ingestor, answers)
    }

    /// While a group is written (by the committing thread, `committer`), the writer
    /// prepares the next one; each is answered once its own write ended, in order.
    #[test]
    fn a_group_is_prepared_while_the_one_before_is_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let now = crate::now_unix();
        let (store, alice, bob, ingestor, mut answers) =
            alice_then_bob_while_held(dir.path(), now, |_, ingestor, answers| {
                assert!(answers.lock().expect("answers").is_empty(), "a batch answered before its write ended");
                assert_eq!(ingestor.stats().groups, 0);
            });
        answers.sort_by_key(|(name, _, _)| *name);
        assert_eq!(answers.len(), 2);
        for ((name, answer, groups), n) in answers.iter().zip([50, 40]) {
            let outcomes = answer.as_ref().unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(outcomes.iter().filter(|o| matches!(o, Outcome::Appended { .. })).count(), n, "{name}");
            // Bob's group, written second, is answered only after alice's was landed.
            if *name == "bob" {
                assert_eq!(*groups, 2, "bob answered before alice's group was written");
            }
        }
        assert_eq!(ingestor.stats().groups, 2);
        ingestor.stop();
        drop(store);
        let store = Store::open(dir.path(), &test_options()).expect("reopen");
        assert_eq!(store.log_head(alice).expect("alice").n_listens, 50, "alice's acknowledged listens kept");
        assert_eq!(store.log_head(bob).expect("bob").n_listens, 40, "bob's acknowledged listens kept");
    }

    /// A batch of a user whose group is being written waits for that write: preparing it
    /// reads the user's stored records, which the write changes (here: its duplicates
    /// are found only in the group before).
    #[test]
    fn a_batch_of_a_user_being_written_waits_for_that_write() {
        let dir = tempfile::tempdir().expect("tempdir");
        let now = crate::now_unix();
        let (store, alice) = public_member(dir.path(), now);
        let held = Held::set(&store, |f| &f.hold_write);
        let ingestor = Ingestor::start(store.clone(), 1_000, CreditRules::default()).expect("writer");
        let answers = Answers::default();
        std::thread::scope(|s| {
            s.spawn(|| send(&ingestor, &answers, "first", alice, (0..50).map(|i| listen(i, now)).collect()));
            wait_until("the first group prepared", || preparing(&ingestor) > std::time::Duration::ZERO);
            let first = preparing(&ingestor);
            s.spawn(|| send(&ingestor, &answers, "again", alice, (0..50).map(|i| listen(i, now)).collect()));
            // Taken while the first is written (the writer's wait for a message counts as
            // `Writing` then), and not prepared meanwhile.
            wait_until("the second batch taken", || writing(&ingestor) > std::time::Duration::ZERO);
            std::thread::sleep(std::time::Duration::from_millis(100));
            assert_eq!(preparing(&ingestor), first, "prepared while the same user's group was written");
            drop(held);
        });
        let answers = answers.into_inner().expect("answers");
        assert_eq!(answers.len(), 2);
        let again = answers.iter().find(|(name, _, _)| *name == "again").expect("again");
        let outcomes = again.1.as_ref().expect("the second batch");
        assert!(outcomes.iter().all(|o| *o == Outcome::Duplicate), "{outcomes:?}");
        ingestor.stop();
        assert_eq!(store.log_head(alice).expect("head").n_listens, 50);
    }

    /// A batch that erases a listen waits for the group being written: an erasure reads
    /// the names of the listen's track and client from the store, and they may be that
    /// group's to write (here: a client first seen in it).
    #[test]
    fn an_erasure_waits_for_the_group_being_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let now = crate::now_unix();
        let (store, alice) = public_member(dir.path(), now);
        let bob = store.create_user("bob", "password1", now).expect("bob").id;
        let from_player = |listened_at: i64| {
            let raw = RawListen {
                artist: b"Artist",
                title: b"Song",
                listened_at,
                client: Some(b"A player first seen here"),
                ..RawListen::default()
            };
            Action::Listen(Listen::parse(&raw, now).expect("listen"))
        };
        let held = Held::set(&store, |f| &f.hold_write);
        let ingestor = Ingestor::start(store.clone(), 1_000, CreditRules::default()).expect("writer");
        let answers = Answers::default();
        std::thread::scope(|s| {
            s.spawn(|| send(&ingestor, &answers, "alice", alice, vec![from_player(now - 7_200)]));
            wait_until("alice's group prepared", || preparing(&ingestor) > std::time::Duration::ZERO);
            let erased = vec![from_player(now - 3_600), Action::Delete { seq: 0 }];
            s.spawn(|| send(&ingestor, &answers, "bob", bob, erased));
            wait_until("bob's batch taken while alice's is written", || writing(&ingestor) > std::time::Duration::ZERO);
            std::thread::sleep(std::time::Duration::from_millis(100));
            drop(held);
        });
        for (name, answer, _) in answers.into_inner().expect("answers") {
            let outcomes = answer.unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(outcomes.iter().all(|o| matches!(o, Outcome::Appended { .. })), "{name}: {outcomes:?}");
        }
        assert_eq!(ingestor.stats().reloads, 0, "no batch was taken for damage");
        ingestor.stop();
        assert_eq!(store.log_head(bob).expect("bob").n_listens, 0, "bob's listen erased");
    }

    /// A write that fails fails the store: its batches get the failure, the group
    /// prepared meanwhile is refused, and nothing of either is acknowledged or stored.
    #[test]
    fn a_failed_write_refuses_the_group_prepared_meanwhile() {
        let dir = tempfile::tempdir().expect("tempdir");
        let now = crate::now_unix();
        let (store, alice, bob, ingestor, answers) =
            alice_then_bob_while_held(dir.path(), now, |store, _, _| store.faults.fail_write.store(true, Relaxed));
        assert_eq!(answers.len(), 2);
        for (name, answer, _) in &answers {
            match answer {
                Err(Error::CommitFailed(reason)) if *name == "alice" => {
                    assert!(reason.contains("injected: writing a group"), "{reason}")
                }
                Err(_) if *name == "bob" => {}
                other => panic!("{name}: {other:?}"),
            }
        }
        assert!(store.failure().is_some(), "the store failed");
        assert!(ingestor.ingest_blocking(alice, vec![listen(99, now)]).is_err(), "a failed store refuses writes");
        assert_eq!(ingestor.stats().groups, 0);
        ingestor.stop();
        drop(store);
        let store = Store::open(dir.path(), &test_options()).expect("reopen");
        assert_eq!(store.log_head(alice).expect("alice").n_listens, 0);
        assert_eq!(store.log_head(bob).expect("bob").n_listens, 0);
    }

    /// A fault flag of a store, set until dropped: cleared however the test ends, so no
    /// thread is left waiting on it.
    struct Held(Store, fn(&crate::store::Faults) -> &std::sync::atomic::AtomicBool);

    impl Held {
        fn set(store: &Store, flag: fn(&crate::store::Faults) -> &std::sync::atomic::AtomicBool) -> Held {
            flag(&store.faults).store(true, Relaxed);
            Held(store.clone(), flag)
        }
    }

    impl Drop for Held {
        fn drop(&mut self) {
            (self.1)(&self.0.faults).store(false, Relaxed);
        }
    }

    fn node_chunks(store: &Store) -> Vec<(sled::IVec, sled::IVec)> {
        store.trees.userid_bucket_counts.scan_prefix([0xFF]).map(|kv| kv.expect("scan")).collect()
    }

    fn test_options() -> Options {
        Options { cache_mb: 4, ..Options::default() }
    }

    /// A store with one public member, whose writer stores the node's chunks with every
    /// group (as it does every `NODE_PERSIST_EVERY`).
    fn public_member_storing_node_each_group(dir: &std::path::Path, now: i64) -> (Store, UserId, Ingestor) {
        public_member_storing_node(dir, now, false)
    }

    /// As `public_member_storing_node_each_group`; `background`: by a background pass
    /// (as a bulk import's stores are).
    fn public_member_storing_node(dir: &std::path::Path, now: i64, background: bool) -> (Store, UserId, Ingestor) {
        let (store, user) = public_member(dir, now);
        match background {
            false => store.faults.store_node_each_group.store(true, Relaxed),
            true => store.faults.store_node_in_background_each_group.store(true, Relaxed),
        }
        let ingestor = Ingestor::start(store.clone(), 1_000, CreditRules::default()).expect("writer");
        (store, user, ingestor)
    }

    /// A store at `dir` with one member, alice, counted in the node charts (public).
    fn public_member(dir: &std::path::Path, now: i64) -> (Store, UserId) {
        let store = Store::open(dir, &test_options()).expect("open");
        let user = store.create_user("alice", "password1", now).expect("user").id;
        store.set_visibility(user, SharingLevel::Public).expect("public");
        (store, user)
    }

    /// Waits (up to 30 s, else fails naming `what`) until `done`.
    fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
        let started = std::time::Instant::now();
        while !done() {
            assert!(started.elapsed() < std::time::Duration::from_secs(30), "{what}");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// Waits until no node change is pending (a background pass took them all).
    fn wait_for_no_pending(store: &Store, what: &str) {
        wait_until(what, || store.node_pending.read().expect("pending").is_empty());
    }

    fn node_keys(store: &Store) -> Vec<[u8; 9]> {
        node_chunks(store).iter().map(|(k, _)| <[u8; 9]>::try_from(k.as_ref()).expect("a key")).collect()
    }

    /// Every node bucket as readers see it (stored, with the memory copy and the pending
    /// changes over it), encoded as it would be stored.
    fn node_as_read(store: &Store) -> Vec<(sled::IVec, sled::IVec)> {
        let mut keys: BTreeSet<[u8; 9]> = node_keys(store).into_iter().collect();
        keys.extend(store.hot.read().expect("hot").keys().filter(|k| is_node_key(k.as_slice())));
        keys.extend(store.node_pending.read().expect("pending").keys());
        let read = keys.into_iter().filter_map(|k| store.bucket(&k).expect("read").map(|agg| (k, agg)));
        read.filter(|(_, agg)| agg.total > 0).map(|(k, agg)| (k[..].into(), encode(agg.as_ref()).into())).collect()
    }

    /// While the writer stores node chunks (one at a time, each dropping its change from
    /// memory), a reader sees every change once: no chunk's total ever goes back (only
    /// appends here), and a chart's rows always add up to its total.
    #[test]
    fn readers_see_each_node_change_once_while_chunks_are_stored() {
        readers_see_each_change_once(false);
    }

    /// The same while background passes store the chunks as the writer goes on adding
    /// changes (`Writer::store_node_in_background`): each change is still seen once, and
    /// `NODE_STALE` stays set on disk after every group until the writer stops.
    #[test]
    fn readers_see_each_node_change_once_while_chunks_are_stored_in_the_background() {
        readers_see_each_change_once(true);
    }

    /// Group `g` of the bound's tests: its own artist and songs, in a year of its own, so
    /// its changes are pairs of its own (but the all-time totals'). Its listens on one
    /// day, a Wednesday mid-month (2023-03-15 12:00 UTC, 52 weeks earlier for each
    /// group), so that no group spans two weeks or months (a group with one unit more
    /// would bring three pairs more, and a bound set between groups would not sit there).
    fn year_group(g: i64, now: i64) -> Vec<Action> {
        let wednesday = 1_678_881_600;
        (0..4)
            .map(|i| {
                let (artist, title) = (format!("Artist of group {g}"), format!("Song {g}.{i}"));
                let raw = RawListen {
                    artist: artist.as_bytes(),
                    title: title.as_bytes(),
                    listened_at: wednesday - 364 * 86_400 * g - 3_600 * (i + 1),
                    ..RawListen::default()
                };
                Action::Listen(Listen::parse(&raw, now).expect("listen"))
            })
            .collect()
    }

    /// The pending changes' pairs as counted (`PendingChanges::pairs`) and as walked.
    fn pending_pairs(store: &Store) -> usize {
        let pending = store.node_pending.read().expect("pending");
        let walked = pending.values().map(crate::store::aggregates::Delta::pairs).sum();
        assert_eq!(pending.pairs(), walked, "the pending pairs as counted and as walked");
        walked
    }

    /// A background pass takes the changes of the chunks it reaches, those added while
    /// it runs included: the pending changes' pairs are counted where they are added
    /// and taken, so changes a pass took do not count towards the bound
    /// (`NODE_HOT_MAX_PAIRS`) and start the next store early (an import's passes
    /// started with two thirds of the bound pending when the writer counted what it
    /// added); and what is really pending at the bound is still stored.
    #[test]
    fn changes_a_pass_took_do_not_count_towards_the_bound() {
        let (dir, now) = (tempfile::tempdir().expect("tempdir"), crate::now_unix());
        let (store, user) = public_member(dir.path(), now);
        let ingestor = Ingestor::start(store.clone(), 1_000, CreditRules::default()).expect("writer");
        let group = |g: i64| year_group(g, now);
        // Group 1 starts a background pass, held before it begins; group 2 is added
        // meanwhile, counted by the writer, and taken by the pass with group 1's.
        store.faults.hold_node_store_start.store(true, Relaxed);
        store.faults.store_node_in_background_next_group.store(true, Relaxed);
        ingestor.ingest_blocking(user, group(1)).expect("stored");
        let first = pending_pairs(&store);
        ingestor.ingest_blocking(user, group(2)).expect("stored");
        let second = pending_pairs(&store) - first;
        store.faults.hold_node_store_start.store(false, Relaxed);
        wait_for_no_pending(&store, "the pass never took groups 1 and 2");
        // Past the pass (a pass under way lets the writer go on past the bound).
        wait_until("the pass never ended", || !store.node_store_running());
        // A bound group 3 alone stays under, and group 3 with group 2 counted again
        // (as a count of what the writer added would) reaches.
        let bound = 2 * second;
        store.faults.node_max_pairs.store(bound, Relaxed);
        ingestor.ingest_blocking(user, group(3)).expect("stored");
        let third = pending_pairs(&store);
        assert!(third < bound && second + third >= bound, "group 3: {third} pairs, group 2: {second}, bound {bound}");
        // The writer decides at the next group whether the bound is reached.
        ingestor.ingest_blocking(user, group(4)).expect("stored");
        let fourth = pending_pairs(&store);
        assert!(fourth > third, "stored with {third} pairs pending under a bound of {bound}");
        // Groups 3 and 4 are at the bound: stored with the next group.
        assert!(fourth >= bound, "{fourth} pairs");
        ingestor.ingest_blocking(user, group(5)).expect("stored");
        assert_eq!(pending_pairs(&store), 0, "pending past the bound, not stored");
        ingestor.stop();
    }

    /// While a background pass is under way, the writer goes on adding changes up to
    /// `during_a_pass` of the bound (`NODE_HOT_MAX_PAIRS`) without waiting for it; there
    /// it waits.
    /// (Waiting at the bound, an import's writer waited out each pass in turn.)
    #[test]
    fn the_writer_goes_on_while_a_pass_runs_past_the_bound() {
        let (dir, now) = (tempfile::tempdir().expect("tempdir"), crate::now_unix());
        let (store, user) = public_member(dir.path(), now);
        let ingestor =
            std::sync::Arc::new(Ingestor::start(store.clone(), 1_000, CreditRules::default()).expect("writer"));
        let group = |g: i64| year_group(g, now);
        // One group's pairs (its own artist, songs and year; the all-time totals shared).
        ingestor.ingest_blocking(user, group(1)).expect("stored");
        let one = pending_pairs(&store);
        // A pass starts with the next group and holds, under way, before it begins
        // (its thread started, nothing taken yet: the gap in which the writer, deciding
        // by the pass's lock, waited for it), released when the test ends.
        let _held = Held::set(&store, |f| &f.hold_node_store_start);
        store.faults.store_node_in_background_next_group.store(true, Relaxed);
        ingestor.ingest_blocking(user, group(2)).expect("stored");
        wait_until("the pass never got under way", || store.node_store_running());
        // A bound that groups 1 to 3 pending reach, and 1 to 4 stay under `during_a_pass`
        // of it (each group brings at most `one` pairs: a new year's, and the shared
        // totals).
        let bound = 3 * one;
        let limit = during_a_pass(bound);
        assert!(4 * one < limit, "one group: {one} pairs, bound {bound}, limit {limit}");
        store.faults.node_max_pairs.store(bound, Relaxed);
        // Each group answered while the pass holds: the writer does not wait for it.
        for g in 3..=5 {
            let (tx, rx) = std::sync::mpsc::channel();
            let (ingestor, actions) = (ingestor.clone(), group(g));
            std::thread::spawn(move || tx.send(ingestor.ingest_blocking(user, actions).is_ok()));
            let answered = rx.recv_timeout(std::time::Duration::from_secs(10));
            assert_eq!(
                answered,
                Ok(true),
                "group {g} waited for the pass ({} pairs pending, bound {bound})",
                pending_pairs(&store)
            );
        }
        let pending = pending_pairs(&store);
        assert!(pending >= bound, "{pending} pairs pending, bound {bound}");
        // Past `during_a_pass` of the bound the writer waits for the pass, then stores.
        let (tx, rx) = std::sync::mpsc::channel();
        let (writer, more) = (ingestor.clone(), [group(6), group(7), group(8), group(9), group(10), group(11)]);
        std::thread::spawn(move || {
            for actions in more {
                let _ = tx.send(writer.ingest_blocking(user, actions).is_ok());
            }
        });
        // Groups are answered until the limit is pending (a slow machine waits longer,
        // never less): then the writer waits for the held pass.
        let mut answered = 0;
        while rx.recv_timeout(std::time::Duration::from_secs(2)).is_ok() {
            answered += 1;
        }
        let pending = pending_pairs(&store);
        assert!(answered < 6, "every group answered with {pending} pairs pending, limit {limit}");
        assert!(pending >= limit, "the writer stopped with {pending} pairs pending under the limit {limit}");
        store.faults.hold_node_store_start.store(false, Relaxed);
        while answered < 6 {
            assert_eq!(rx.recv_timeout(std::time::Duration::from_secs(30)), Ok(true), "a group after the pass");
            answered += 1;
        }
        ingestor.stop();
    }

    /// A group is acknowledged once the thread adding its node changes holds the lock
    /// readers take (`writer::absorb`), not once it is done: a reader after the
    /// acknowledgement waits for the changes, and never sees the group's listens
    /// without them.
    #[test]
    fn an_acknowledged_group_is_read_with_its_node_changes() {
        let (dir, now) = (tempfile::tempdir().expect("tempdir"), crate::now_unix());
        let (store, user) = public_member(dir.path(), now);
        let ingestor = Ingestor::start(store.clone(), 1_000, CreditRules::default()).expect("writer");
        let read = || store.node_chart(Kind::Recording, &Period::AllTime, 10, now, &jiff::tz::TimeZone::UTC);
        assert_eq!(read().expect("chart").listens, 0);
        store.faults.hold_absorb.store(true, Relaxed);
        ingestor.ingest_blocking(user, (0..3).map(|i| listen(i, now)).collect()).expect("stored");
        assert!(store.faults.hold_absorb.load(Relaxed), "acknowledged while the changes are being added");
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(std::time::Duration::from_millis(200));
                store.faults.hold_absorb.store(false, Relaxed);
            });
            assert_eq!(read().expect("chart").listens, 3, "read with the group's node changes");
        });
        ingestor.stop();
    }

    fn readers_see_each_change_once(background: bool) {
        let (dir, now) = (tempfile::tempdir().expect("tempdir"), crate::now_unix());
        let (store, user, ingestor) = public_member_storing_node(dir.path(), now, background);
        let (batches, per_batch) = (30, 40);
        let batch = |b: i64| (b * per_batch..(b + 1) * per_batch).map(|i| listen(i, now)).collect();
        ingestor.ingest_blocking(user, batch(0)).expect("stored");
        // Once a background pass wrote them: the chunks every later store rewrites (the
        // all-time bucket's, the totals).
        wait_for_no_pending(&store, "the first pass never ended");
        let keys = node_keys(&store);
        assert!(!keys.is_empty(), "node chunks stored");
        let done = std::sync::atomic::AtomicBool::new(false);
        let (progress, mut written) = (std::sync::atomic::AtomicU64::new(0), batches);
        let reads = std::thread::scope(|s| {
            let reader = s.spawn(|| {
                let mut last = vec![0; keys.len()];
                let (mut reads, mut listens) = (0u64, 0);
                for round in 0u64.. {
                    if done.load(Relaxed) {
                        break;
                    }
                    for (k, last) in keys.iter().zip(&mut last) {
                        let total = store.bucket(k).expect("read").map_or(0, |a| a.total);
                        assert!(total >= *last, "chunk {k:?} went back to {total} from {last}");
                        *last = total;
                        reads += 1;
                    }
                    progress.store(reads, Relaxed);
                    if round % 64 != 0 {
                        continue;
                    }
                    let chart = store
                        .node_chart(Kind::Recording, &Period::AllTime, 10_000, now, &jiff::tz::TimeZone::UTC)
                        .expect("node chart");
                    let rows: u64 = chart.rows.iter().map(|r| r.row.listens).sum();
                    assert_eq!(rows, chart.listens, "the rows add up to the total");
                    assert!(chart.listens >= listens, "the total went back: {} after {listens}", chart.listens);
                    listens = chart.listens;
                }
                reads
            });
            // Distinct recordings: every store spans several chunks of each bucket.
            // At least `batches`, and on until the reader read a thousand chunks meanwhile
            // (a writer storing in the background goes fast), below the chart's 10,000
            // distinct recordings (past them, its last tie is every row).
            for b in 1.. {
                if b >= batches && (progress.load(Relaxed) > 1_000 || b >= 8 * batches) {
                    written = b;
                    break;
                }
                ingestor.ingest_blocking(user, batch(b)).expect("stored");
                if background {
                    // The pass of this group may still be writing chunks (the group's
                    // transaction set the mark: it carried node changes).
                    assert!(store.trees.meta.contains_key(NODE_STALE).expect("meta"), "stale while stored behind");
                }
            }
            done.store(true, Relaxed);
            reader.join().expect("reader")
        });
        assert!(reads > 1_000, "{reads} reads");
        let chart =
            store.node_chart(Kind::Recording, &Period::AllTime, 10_000, now, &jiff::tz::TimeZone::UTC).expect("chart");
        assert_eq!(chart.listens, (written * per_batch) as u64);
        if !background {
            assert!(store.node_pending.read().expect("pending").is_empty(), "every change stored");
        }
        ingestor.stop();
        // The shutdown stores everything on the writer and clears the mark.
        assert!(store.node_pending.read().expect("pending").is_empty(), "every change stored");
        assert!(!store.trees.meta.contains_key(NODE_STALE).expect("meta"), "not stale after a clean stop");
        let stored = node_chunks(&store);
        store.rebuild_node_stats().expect("rebuild");
        assert_eq!(stored, node_chunks(&store), "the stored node buckets are a rebuild's");
    }

    /// While a background pass has not ended, the writer never clears `NODE_STALE` (the
    /// chunks it wrote may hold changes of user buckets not stored yet, and may not be
    /// flushed), even after a group with nothing to add to the node; once the pass ended,
    /// such a group clears it.
    #[test]
    fn node_stale_stays_set_until_a_background_store_has_ended() {
        let (dir, now) = (tempfile::tempdir().expect("tempdir"), crate::now_unix());
        let (store, alice, ingestor) = public_member_storing_node(dir.path(), now, true);
        let bob = store.create_user("bob", "password1", now).expect("user").id;
        store.set_visibility(bob, SharingLevel::Private).expect("private");
        store.faults.hold_node_store.store(true, Relaxed);
        ingestor.ingest_blocking(alice, (0..20).map(|i| listen(i, now)).collect()).expect("stored");
        // The pass took every change, and holds.
        wait_for_no_pending(&store, "the pass never took the changes");
        ingestor.ingest_blocking(bob, (100..110).map(|i| listen(i, now)).collect()).expect("stored");
        assert!(store.trees.meta.contains_key(NODE_STALE).expect("meta"), "cleared while a pass ran");
        store.faults.hold_node_store.store(false, Relaxed);
        let ended = std::time::Instant::now();
        loop {
            ingestor.ingest_blocking(bob, vec![listen(200 + ended.elapsed().as_millis() as i64, now)]).expect("stored");
            if !store.trees.meta.contains_key(NODE_STALE).expect("meta") {
                break;
            }
            assert!(ended.elapsed() < std::time::Duration::from_secs(30), "never cleared after the pass ended");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let stored = node_chunks(&store);
        ingestor.stop();
        assert_eq!(stored, node_chunks(&store), "nothing was left to store at the stop");
        store.rebuild_node_stats().expect("rebuild");
        assert_eq!(stored, node_chunks(&store), "the stored node buckets are a rebuild's");
    }

    /// A background pass takes the changes of groups whose user buckets are still only
    /// in memory (stored every `PERSIST_EVERY`): its chunks are then ahead of the stored
    /// user buckets. Stopped like a crash at that moment (nothing more stored), the
    /// next open rebuilds the node buckets from the stored user buckets (`NODE_STALE`
    /// is still set), then the recount adds the rest once: the node counts every listen
    /// once, as a rebuild does.
    #[test]
    fn a_crash_after_a_background_store_took_unstored_groups_counts_each_listen_once() {
        let (dir, now) = (tempfile::tempdir().expect("tempdir"), crate::now_unix());
        let (store, user) = public_member(dir.path(), now);
        let ingestor = Ingestor::start(store.clone(), 1_000, CreditRules::default()).expect("writer");
        let batch = |b: i64| (b * 20..(b + 1) * 20).map(|i| listen(i, now)).collect::<Vec<_>>();
        ingestor.ingest_blocking(user, batch(0)).expect("stored");
        // The next group stores every user bucket and starts a pass, held before it
        // takes anything; the two after it are held in memory only.
        store.faults.hold_node_store_start.store(true, Relaxed);
        store.faults.store_node_in_background_next_group.store(true, Relaxed);
        ingestor.ingest_blocking(user, batch(1)).expect("stored");
        ingestor.ingest_blocking(user, batch(2)).expect("stored");
        ingestor.ingest_blocking(user, batch(3)).expect("stored");
        assert!(store.trees.meta.contains_key(NODE_STALE).expect("meta"));
        store.faults.hold_node_store_start.store(false, Relaxed);
        wait_for_no_pending(&store, "the pass never took the changes");
        let chart = |store: &Store| {
            let c = store.node_chart(Kind::Recording, &Period::AllTime, 1_000, now, &jiff::tz::TimeZone::UTC);
            c.expect("chart").listens
        };
        assert_eq!(chart(&store), 80, "readers see every listen once");
        store.faults.skip_final_store.store(true, Relaxed);
        ingestor.stop();
        drop(store);

        let store = Store::open(dir.path(), &test_options()).expect("reopen");
        assert_eq!(chart(&store), 80, "each listen counted once after the crash");
        // Stored, with the recount's changes in memory over it.
        let opened = node_as_read(&store);
        store.rebuild_node_stats().expect("rebuild");
        assert_eq!(opened, node_chunks(&store), "the node's buckets after the reopen are a rebuild's");
    }

    /// A background pass whose chunk write fails fails the store: later writes are
    /// refused, `NODE_STALE` is still set, and the next open rebuilds the node buckets
    /// to what readers of the failed process saw.
    #[test]
    fn a_failed_background_store_fails_the_store_and_the_reopen_rebuilds() {
        let (dir, now) = (tempfile::tempdir().expect("tempdir"), crate::now_unix());
        let (store, user, ingestor) = public_member_storing_node(dir.path(), now, true);
        store.faults.node_chunk_fails_at.store(2, Relaxed);
        let outcomes = ingestor.ingest_blocking(user, (0..40).map(|i| listen(i, now)).collect()).expect("acknowledged");
        assert_eq!(outcomes.iter().filter(|o| matches!(o, Outcome::Appended { .. })).count(), 40);
        wait_until("the failed pass did not fail the store", || store.failure().is_some());
        assert!(store.failure().is_some_and(|f| f.contains("node statistics")), "{:?}", store.failure());
        assert!(ingestor.ingest_blocking(user, vec![listen(40, now)]).is_err(), "a failed store refuses writes");
        assert!(store.trees.meta.contains_key(NODE_STALE).expect("meta"), "still marked stale on disk");
        let seen = node_as_read(&store);
        ingestor.stop();
        drop(store);
        let store = Store::open(dir.path(), &test_options()).expect("reopen");
        assert_eq!(seen, node_chunks(&store), "what readers saw after the failure is the rebuild's");
        assert_eq!(store.log_head(user).expect("head").n_listens, 40, "every acknowledged listen kept");
    }

    /// The node's chunks are written after a group is durable: when one of those
    /// writes fails, the group is still acknowledged (its listens are stored), the store
    /// refuses what comes next, and the next open recounts the node from the users'
    /// buckets (`node_stale` stayed set), however many chunks were written.
    ///
    /// Meanwhile readers of that process see every change: the chunks written, and the
    /// changes of the rest still in memory (the one whose write failed included). A
    /// pass writes `PASS_BATCH` chunks at a time: failures in the first batch (listens
    /// an hour apart touch a few chunks) and in later ones (a week apart: 30 weeks'
    /// chunks, and their months' and years').
    #[test]
    fn a_durable_group_is_acknowledged_when_its_node_chunks_fail() {
        for (fails_at, apart) in [(1, 3_600), (3, 3_600), (6, 3_600), (70, 7 * 86_400), (100, 7 * 86_400)] {
            a_node_chunk_fails(fails_at, apart);
        }
    }

    fn a_node_chunk_fails(fails_at: usize, apart: i64) {
        let (dir, now) = (tempfile::tempdir().expect("tempdir"), crate::now_unix());
        let (store, user, ingestor) = public_member_storing_node_each_group(dir.path(), now);
        ingestor.ingest_blocking(user, (100..110).map(|i| listen_apart(i, now, apart)).collect()).expect("stored");
        assert!(!node_chunks(&store).is_empty(), "node chunks stored before the failure");
        store.faults.node_chunk_fails_at.store(fails_at, Relaxed);
        let outcomes = ingestor
            .ingest_blocking(user, (0..30).map(|i| listen_apart(i, now, apart)).collect())
            .expect("acknowledged");
        assert_eq!(outcomes.iter().filter(|o| matches!(o, Outcome::Appended { .. })).count(), 30);
        assert!(store.failure().is_some_and(|f| f.contains("node statistics")), "{:?}", store.failure());
        assert!(ingestor.ingest_blocking(user, vec![listen(40, now)]).is_err(), "a failed store refuses writes");
        assert!(
            store.trees.meta.contains_key(NODE_STALE).expect("meta"),
            "still marked stale on disk: the chunks on disk are part old, part new"
        );
        let seen = node_as_read(&store);
        ingestor.stop();
        drop(store);

        let store = Store::open(dir.path(), &test_options()).expect("reopen");
        assert_eq!(seen, node_chunks(&store), "what readers saw after the failure (chunk {fails_at}) is the rebuild's");
        assert_eq!(store.log_head(user).expect("head").n_listens, 40, "every acknowledged listen kept");
        let chart =
            store.node_chart(Kind::Artist, &Period::AllTime, 10, now, &jiff::tz::TimeZone::UTC).expect("node chart");
        assert_eq!((chart.listens, chart.listeners, chart.rows.len()), (40, 1, 5));
        let reopened = node_chunks(&store);
        store.rebuild_node_stats().expect("rebuild");
        assert_eq!(reopened, node_chunks(&store), "the node's buckets after the reopen are a rebuild's");
        assert!(!store.trees.meta.contains_key(NODE_STALE).expect("meta"));
    }
}
