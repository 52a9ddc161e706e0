//! Statistics rebuilt from the logs: after a crash (the users whose stats mark is
//! behind their log), after a settings change (`hearsay stats rebuild`), per user after
//! a time-zone change; and the feedback (loves and hates) tables.

use std::collections::BTreeMap;

use crate::stats::credits::CreditRules;
use crate::store::codec::{decode, encode};
use crate::store::keys::{self, UserId};
use crate::store::schema::{self, BLOCK_ENTRIES, TRACK_CHUNK};
use crate::store::values::{BlockV2, FeedbackV1, SpellingV1, StoredEntry, TrackChunkV2};
use crate::store::{Error, Result, Store};

use super::*;

impl Store {
    /// After an unclean stop, counts every user's entries past their stats mark into the
    /// in-memory buckets, so reads are right from the moment the store opens. A user
    /// whose records cannot be read is reported and skipped.
    pub(crate) fn recount_after_crash(&self) -> Result<()> {
        let mut dict: Option<Dictionary> = None;
        for kv in self.trees.userid_loghead.iter() {
            let (k, v) = kv?;
            let counted = keys::parse_user(schema::USERID_LOGHEAD, &k).and_then(|user| {
                let head: crate::store::values::HeadV1 = decode(schema::USERID_LOGHEAD, &k, &v)?;
                let mark = match self.trees.userid_statsmark.get(keys::user(user))? {
                    Some(b) => <[u8; 8]>::try_from(b.as_ref())
                        .map(u64::from_be_bytes)
                        .map_err(|_| Error::corrupt(schema::USERID_STATSMARK, &keys::user(user), "not a u64"))?,
                    None => 0,
                };
                if mark >= head.next_seq {
                    return Ok(());
                }
                if dict.is_none() {
                    dict = Some(Dictionary::load(self, CreditRules::default())?);
                }
                let Some(dict) = dict.as_ref() else { return Ok(()) };
                self.recount_user(user, mark, dict)?;
                tracing::info!(
                    user = user.0,
                    from = mark,
                    to = head.next_seq,
                    "statistics recounted after an unclean stop"
                );
                Ok(())
            });
            if let Err(e) = counted {
                tracing::error!(error = %e, "cannot recount statistics");
            }
        }
        Ok(())
    }

    pub(super) fn recount_user(&self, user: UserId, mark: u64, dict: &Dictionary) -> Result<()> {
        let tz = self.user_tz(user)?;
        let mut deltas: BTreeMap<[u8; 9], Delta> = BTreeMap::new();
        let start = keys::user_seq(user, mark - mark % BLOCK_ENTRIES);
        for kv in self.trees.userid_seq_block.range(start..=keys::user_seq(user, u64::MAX)) {
            let (k, v) = kv?;
            let (_, first) = keys::parse_user_seq(schema::USERID_SEQ_BLOCK, &k)?;
            let block: BlockV2 = decode(schema::USERID_SEQ_BLOCK, &k, &v)?;
            for (i, e) in block.entries.iter().enumerate() {
                let StoredEntry::Listen { listened_at, track, .. } = e else { continue };
                let Some(credits) = dict.known_credits(*track).filter(|_| first + i as u64 >= mark) else { continue };
                let p = place(user, *listened_at, &tz);
                for (j, key) in p.keys.iter().enumerate() {
                    deltas.entry(*key).or_default().add(credits, 1, (j == 2).then_some(p.slot));
                }
            }
        }
        let mut merged_buckets = Vec::new();
        let mut changes: BTreeMap<[u8; 9], Change> = BTreeMap::new();
        for (k, delta) in &deltas {
            let before = self.bucket(k)?;
            let after = merged(before.as_deref(), delta);
            changes.insert(*k, (before, Some(std::sync::Arc::new(after.clone()))));
            merged_buckets.push((*k, after));
        }
        if self.counted_in_node(user)? {
            let mut node = super::FastMap::default();
            let years = self.user_years(user)?;
            node::deltas(
                &changes,
                &mut |k| self.bucket(k),
                &years,
                &mut |kind, id, _| self.shows_stored_name(user, kind, id, None),
                &[],
                &mut node,
            )?;
            merged_buckets.extend(self.merged_node(&node)?);
        }
        let changed: Vec<[u8; 9]> = merged_buckets.iter().map(|(k, _)| *k).collect();
        let mut hot = self.hot.write().map_err(|_| Error::Invalid("statistics cache poisoned".into()))?;
        for (k, agg) in merged_buckets {
            hot.insert(k, std::sync::Arc::new(agg));
        }
        drop(hot);
        self.node_changed(Some(&changed));
        Ok(())
    }

    /// Recomputes every statistic from the logs: dictionaries, credits, every user's
    /// buckets. The writer must not be running.
    pub fn rebuild_stats(&self, rules: &CreditRules) -> Result<()> {
        // Cut short, the node buckets are rebuilt at the next open.
        self.mark_node_stale()?;
        for tree in [
            &self.trees.itemchunk_items,
            &self.trees.trackchunk_credits,
            &self.trees.userid_bucket_counts,
            &self.trees.userid_statsmark,
            &self.trees.userid_recording_feedback,
            &self.trees.trackid_spellings,
            &self.trees.userid_item_spelling,
        ] {
            tree.clear()?;
        }
        self.forget_hot(None);
        let mut dict = Dictionary::empty(rules.clone());
        for kv in self.trees.trackchunk_tracks.iter() {
            let (k, v) = kv?;
            let chunk = keys::parse_u32(schema::TRACKCHUNK_TRACKS, &k)?;
            let tracks: TrackChunkV2 = decode(schema::TRACKCHUNK_TRACKS, &k, &v)?;
            for (i, t) in tracks.tracks.iter().enumerate() {
                let id = chunk * TRACK_CHUNK + i as u32;
                if crate::store::compact::is_blank(t) {
                    dict.blank_track(id)?;
                } else {
                    dict.credit_track(id, t)?;
                }
            }
        }
        for (tree, k, v) in dict.take_writes() {
            if let Some(t) = self.tree(tree) {
                t.insert(k, v)?;
            }
        }
        for user in self.users()? {
            self.rebuild_user_buckets(user.id, &dict)?;
            self.rebuild_user_feedback(user.id, &dict)?;
            self.rebuild_user_spellings(user.id, &dict)?;
        }
        self.flush()?;
        self.rebuild_node_stats()
    }

    /// Fills `trackid_spellings` and `userid_item_spelling` from the tracks and the logs,
    /// leaving every other statistic as it is (schema 5 -> 6, compaction). `rules` must
    /// be the ones the credits were made with: the artist strings they split a track into
    /// are matched to the credited items by identity, and one that matches none gives no
    /// spelling (the user is then shown the stored name).
    pub fn rebuild_spellings(&self, rules: &CreditRules) -> Result<()> {
        // The stored-name counts follow the spellings: cut short, they are rebuilt at
        // the next open.
        self.store_hot()?;
        self.mark_node_stale()?;
        self.trees.trackid_spellings.clear()?;
        self.trees.userid_item_spelling.clear()?;
        let mut dict = Dictionary::load(self, rules.clone())?;
        for kv in self.trees.trackchunk_tracks.iter() {
            let (k, v) = kv?;
            let chunk = keys::parse_u32(schema::TRACKCHUNK_TRACKS, &k)?;
            let tracks: TrackChunkV2 = decode(schema::TRACKCHUNK_TRACKS, &k, &v)?;
            for (i, t) in tracks.tracks.iter().enumerate() {
                if !crate::store::compact::is_blank(t) {
                    dict.recompute_variants(chunk * TRACK_CHUNK + i as u32, t);
                }
            }
        }
        for (tree, k, v) in dict.take_writes() {
            if tree == schema::TRACKID_SPELLINGS {
                self.trees.trackid_spellings.insert(k, v)?;
            }
        }
        for user in self.users()? {
            self.rebuild_user_spellings(user.id, &dict)?;
        }
        self.flush()?;
        // Which members show an item under its stored name may have changed.
        self.rebuild_node_stats()
    }

    /// A user's spellings from their log, by the writer's rule (`note_spellings`): for an
    /// item some track spells otherwise than its stored name, the spelling of the user's
    /// first listen of it, recorded once the user plays such a track.
    fn rebuild_user_spellings(&self, user: UserId, dict: &Dictionary) -> Result<()> {
        let mut first: BTreeMap<[u8; 9], Option<String>> = BTreeMap::new();
        let mut heard: std::collections::HashSet<(u8, u32)> = std::collections::HashSet::new();
        for kv in self.trees.userid_seq_block.scan_prefix(keys::user(user)) {
            let (k, v) = kv?;
            let block: BlockV2 = decode(schema::USERID_SEQ_BLOCK, &k, &v)?;
            for e in &block.entries {
                let StoredEntry::Listen { track, .. } = e else { continue };
                let Some(credits) = dict.known_credits(*track) else { continue };
                let variants = dict.spellings_of(*track).unwrap_or_default();
                for (kind, item) in credits.items() {
                    let new = heard.insert((kind, item));
                    if let Some((_, _, name)) = variants.iter().find(|(k, i, _)| (*k, *i) == (kind, item)) {
                        first.entry(keys::user_item(user, kind, item)).or_insert_with(|| new.then(|| name.clone()));
                    }
                }
            }
        }
        let mut batch = sled::Batch::default();
        for (k, name) in &first {
            batch.insert(k.to_vec(), encode(&SpellingV1 { name: name.clone() }));
        }
        self.trees.userid_item_spelling.apply_batch(batch)?;
        Ok(())
    }

    /// Drops in-memory buckets (of one user, or all) that a rebuild or deletion replaced.
    pub(crate) fn forget_hot(&self, user: Option<UserId>) {
        if let Ok(mut hot) = self.hot.write() {
            match user {
                None => hot.clear(),
                Some(u) => hot.retain(|k, _| k[..4] != keys::user(u)),
            }
        }
        if user.is_none() {
            if let Ok(mut pending) = self.node_pending.write() {
                pending.clear();
            }
            self.node_changed(None::<&[[u8; 9]]>);
        }
    }

    /// Recomputes one user's buckets (after a time zone change), and the node buckets
    /// if the user counts in them, in one batch. No writer may be appending (the writer
    /// stores its in-memory buckets first).
    pub fn rebuild_user_stats(&self, user: UserId) -> Result<()> {
        self.store_hot()?;
        let dict = Dictionary::load(self, CreditRules::default())?;
        let old = self.user_buckets(user)?;
        let new = self.count_user_buckets(user, &dict)?;
        let mut batch = sled::Batch::default();
        if self.counted_in_node(user)? {
            let new_arc: BTreeMap<[u8; 9], std::sync::Arc<AggV2>> =
                new.iter().map(|(k, a)| (*k, std::sync::Arc::new(a.clone()))).collect();
            let mut node = super::FastMap::default();
            self.whole_user_deltas(user, &old, false, &mut node)?;
            self.whole_user_deltas(user, &new_arc, true, &mut node)?;
            for (k, agg) in self.merged_node(&node)? {
                match agg.total > 0 {
                    true => batch.insert(k.to_vec(), encode(&agg)),
                    false => batch.remove(k.to_vec()),
                }
            }
        }
        for k in old.keys().filter(|k| !new.contains_key(*k)) {
            batch.remove(k.to_vec());
        }
        for (k, agg) in &new {
            batch.insert(k.to_vec(), encode(agg));
        }
        self.trees.userid_bucket_counts.apply_batch(batch)?;
        self.node_changed(None::<&[[u8; 9]]>);
        let mark = self.log_head(user)?.n_entries;
        self.trees.userid_statsmark.insert(keys::user(user), &mark.to_be_bytes())?;
        self.flush()
    }

    pub(super) fn rebuild_user_feedback(&self, user: UserId, dict: &Dictionary) -> Result<()> {
        let mut current: BTreeMap<[u8; 8], FeedbackV1> = BTreeMap::new();
        for kv in self.trees.userid_seq_block.scan_prefix(keys::user(user)) {
            let (k, v) = kv?;
            let (_, first) = keys::parse_user_seq(schema::USERID_SEQ_BLOCK, &k)?;
            let block: BlockV2 = decode(schema::USERID_SEQ_BLOCK, &k, &v)?;
            for (i, e) in block.entries.iter().enumerate() {
                let (track, score) = match e {
                    StoredEntry::Love { track, .. } => (*track, 1),
                    StoredEntry::Hate { track, .. } => (*track, -1),
                    StoredEntry::Unlove { track, .. } => (*track, 0),
                    _ => continue,
                };
                let Some(credits) = dict.known_credits(track) else { continue };
                let key = keys::user_u32(user, credits.recording);
                if score == 0 {
                    current.remove(&key);
                } else {
                    current.insert(key, FeedbackV1 { score, track, seq: first + i as u64 });
                }
            }
        }
        let mut batch = sled::Batch::default();
        for (k, f) in &current {
            batch.insert(k.to_vec(), encode(f));
        }
        self.trees.userid_recording_feedback.apply_batch(batch)?;
        Ok(())
    }

    pub(super) fn rebuild_user_buckets(&self, user: UserId, dict: &Dictionary) -> Result<()> {
        let mut batch = sled::Batch::default();
        for (k, agg) in &self.count_user_buckets(user, dict)? {
            batch.insert(k.to_vec(), encode(agg));
        }
        self.trees.userid_bucket_counts.apply_batch(batch)?;
        let mark = self.log_head(user)?.n_entries;
        self.trees.userid_statsmark.insert(keys::user(user), &mark.to_be_bytes())?;
        Ok(())
    }

    /// Every bucket of `user` counted from their log, in their time zone.
    fn count_user_buckets(&self, user: UserId, dict: &Dictionary) -> Result<BTreeMap<[u8; 9], AggV2>> {
        let tz = self.user_tz(user)?;
        let mut buckets: BTreeMap<[u8; 9], Delta> = BTreeMap::new();
        for kv in self.trees.userid_seq_block.scan_prefix(keys::user(user)) {
            let (k, v) = kv?;
            let block: BlockV2 = decode(schema::USERID_SEQ_BLOCK, &k, &v)?;
            for e in &block.entries {
                let StoredEntry::Listen { listened_at, track, .. } = e else { continue };
                let Some(credits) = dict.known_credits(*track) else { continue };
                let p = place(user, *listened_at, &tz);
                for (i, key) in p.keys.iter().enumerate() {
                    buckets.entry(*key).or_default().add(credits, 1, (i == 2).then_some(p.slot));
                }
            }
        }
        Ok(buckets.iter().map(|(k, delta)| (*k, merged(None, delta))).filter(|(_, a)| a.total > 0).collect())
    }
}
