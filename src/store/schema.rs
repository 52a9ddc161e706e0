//! The source of truth for the on-disk layout: every sled tree, its key grammar, value
//! type and the queries it serves. `docs/storage.md` mirrors this file.
//!
//! Notation: `u32`/`u64` are fixed-width big-endian (so byte order is numeric order),
//! `‖` is concatenation. Every value starts with a one-byte version marker followed by
//! postcard (see `codec`). A change of any layout bumps `SCHEMA_VERSION` and adds a
//! migration to `migrate::MIGRATIONS`.

/// The layout version this build writes. A database with a newer version is refused.
pub const SCHEMA_VERSION: u32 = 20;

/// `meta`: `name (ASCII)` -> value.
/// Keys: `schema_version` -> u32 BE; `next_user_id`, `next_token_id`, `next_track_id`,
/// `next_client_id` -> u32 BE (the next id to hand out); `privacy_key` -> 32 random
/// bytes (the key of the hash that breaks ties in contribution bounding, made on first
/// use, never shown); `release_watermark` -> u64 BE (the start of the first period not
/// yet considered for release); `pending 0xFF ‖ kind u8 ‖ user u32` -> empty: a
/// multi-step change under way, finished when the store opens if a crash cut it short
/// (`d`: delete the records of a user whose account is already gone; `r`: recount a
/// user's statistics after a time-zone change).
pub const META: &str = "meta";

/// `username_userid`: `lower-case user name (UTF-8)` -> `user id u32`.
/// Serves: log-in and every lookup by name; enforces case-insensitive uniqueness.
pub const USERNAME_USERID: &str = "username_userid";

/// `userid_user`: `user id u32` -> `UserV1` (name as chosen, created_at, argon2id password
/// hash, ed25519 public key). Serves: profiles, user listing, authentication.
pub const USERID_USER: &str = "userid_user";

/// `userid_signingkey`: `user id u32` -> `SigningKeyV1` (the 32-byte ed25519 seed).
/// Kept apart from `userid_user` so no user listing ever touches private keys.
pub const USERID_SIGNINGKEY: &str = "userid_signingkey";

/// `tokendigest_token`: `blake3(token) (32 bytes)` -> `TokenV1` (user id, token id, name,
/// created_at). Serves: API authentication by a hash lookup; the token itself is stored
/// nowhere.
pub const TOKENDIGEST_TOKEN: &str = "tokendigest_token";

/// `userid_tokenid_tokendigest`: `user id u32 ‖ token id u32` -> `blake3(token)` raw 32
/// bytes. Serves: listing and revoking a user's tokens.
pub const USERID_TOKENID_TOKENDIGEST: &str = "userid_tokenid_tokendigest";

/// `userid_loghead`: `user id u32` -> `HeadV1` (next seq, chain link of the last entry,
/// number of live listens). Serves: appends; the head of the user's chain.
pub const USERID_LOGHEAD: &str = "userid_loghead";

/// `userid_seq_block`: `user id u32 ‖ first seq u64` -> `BlockV2`: up to
/// `BLOCK_ENTRIES` consecutive log entries (first seq a multiple of it) in compact form
/// (interned track and client ids, salt, 4-byte check) plus the user's seal over the
/// link of the block's last entry; since schema 15 each listen's time is stored as its
/// difference from the previous listen's in the block. Serves: the log in append order; verification;
/// export. Blocks, not one item per entry, because sled's per-item overhead dominated
/// small values (284 vs 88 bytes on disk per listen, measured).
pub const USERID_SEQ_BLOCK: &str = "userid_seq_block";

/// Entries per log block.
pub const BLOCK_ENTRIES: u64 = 64;

/// `userid_day_listens`: `user id u32 ‖ UTC day number u32` -> `DayV3`: the live listens
/// of that day as (second of day, seq), sorted; seconds and seqs stored as differences
/// from the previous item's since schema 15; without the track's dedupe key since schema
/// 16 (the duplicate rule reads it from the track). Serves: history by time range
/// (newest first by reverse range), duplicate detection, deletes.
pub const USERID_DAY_LISTENS: &str = "userid_day_listens";

/// `trackchunk_tracks`: `chunk number u32` -> `TrackChunkV2`: the interned tracks with ids
/// `chunk * TRACK_CHUNK .. (chunk + 1) * TRACK_CHUNK`, in id order (the TrackRef as
/// submitted; up to schema 16 with its dedupe key, which the writer now computes when it
/// starts). Serves: every read of a listen. Tracks are chunked
/// for the same reason as log entries: one sled item per small track cost ~590 bytes on
/// disk each (measured). The digest -> id lookup used at ingest is an in-memory index
/// the writer builds from this tree when it starts.
pub const TRACKCHUNK_TRACKS: &str = "trackchunk_tracks";

/// Tracks per chunk.
pub const TRACK_CHUNK: u32 = 64;

/// `itemchunk_items`: `kind u8 (0 artist, 1 recording, 2 release) ‖ chunk u32` ->
/// `ItemChunkV2`: chart items with ids `chunk * ITEM_CHUNK ..`, display names as first
/// seen: since schema 19 a place in the names of the track that first credited the
/// item (`ItemName::Spelled`), or the name itself where no track holds it (version 1
/// chunks, read as literal names; items whose track compaction blanked). Identity
/// (normalised name; for recordings and releases also the main artist) is an in-memory
/// index rebuilt from this tree and the tracks. Since schema 2.
pub const ITEMCHUNK_ITEMS: &str = "itemchunk_items";

/// Items per dictionary chunk.
pub const ITEM_CHUNK: u32 = 64;

/// `trackchunk_credits`: `chunk u32` -> `CreditChunkV2`: for each track of the same
/// chunk of `trackchunk_tracks`, the artist, recording and release items it counts
/// for (the credit rule applied when the track was first seen). Since schema 2; ids
/// stored as differences since schema 18.
pub const TRACKCHUNK_CREDITS: &str = "trackchunk_credits";

/// `userid_bucket_counts`: `user id u32 ‖ granularity u8 (0 day, 1 month, 2 year) ‖
/// bucket number (i32 + 2^31) u32` -> `AggV2` (ids and hour slots stored as
/// differences from the previous one since schema 14): listens in that local day (day number
/// since 1970-01-01), month (year × 12 + month − 1) or year of the user's time zone:
/// total, per item counts, and (year buckets) counts per local day and hour. Serves
/// every chart, series and clock. Since schema 2. Since schema 12 it also holds the
/// node's buckets, summing the members counted into node charts
/// (`store::aggregates::node`): `0xFF ‖ what u8 (0 listens, 1 listeners, 2 stored-name
/// listeners, 3 totals) ‖ granularity u8 (1 month, 2 year, 3 ISO week numbered by its
/// Monday's day number, 4 all time numbered 0) ‖ number (i32 + 2^31) ‖ chunk u16 (item
/// id / 256 for all time, / 2,048 for years, / 16,384 for months, / 32,768 for weeks,
/// since schema 20; / 1,024, / 4,096 and / 8,192 in 13–19; / 256 for all in 12)`; no
/// account's id starts with 0xFF.
pub const USERID_BUCKET_COUNTS: &str = "userid_bucket_counts";

/// `userid_statsmark`: `user id u32` -> `seq u64 BE`: every log entry before this seq is
/// counted in the buckets stored in `userid_bucket_counts`. The writer keeps recently
/// changed buckets in memory and stores them every few seconds (and at once when a
/// group erases a listen, and at shutdown); after a crash it recounts the entries from
/// the mark on. Since schema 2.
pub const USERID_STATSMARK: &str = "userid_statsmark";

/// `userid_recording_feedback`: `user id u32 ‖ recording item id u32` -> `FeedbackV1`
/// (score 1 love / -1 hate, the track it was given on, the entry's seq): the user's
/// current feedback, derived from the log's Love / Hate / Unlove entries (latest wins).
/// Serves: loves and hates lists, love flags. Since schema 2.
pub const USERID_RECORDING_FEEDBACK: &str = "userid_recording_feedback";

/// `trackid_spellings`: `track id u32` -> `SpellingsV1`: for a track that spells one of
/// its items differently from the item's stored name (another case or spacing: identity
/// ignores both), that item and this track's spelling. Written when the track is first
/// interned; most tracks have none. Since schema 6.
pub const TRACKID_SPELLINGS: &str = "trackid_spellings";

/// `userid_item_spelling`: `user id u32 ‖ kind u8 ‖ item id u32` -> `SpellingV1`: the
/// spelling a user's statistics show for an item when it is not the item's stored name
/// (the first spelling this user scrobbled, from `trackid_spellings`). So a user's pages
/// name items only in spellings that user sent. Since schema 6.
pub const USERID_ITEM_SPELLING: &str = "userid_item_spelling";

/// `sessiondigest_session`: `blake3 derive_key("hearsay 2026-11-23 session key v1",
/// session key)` -> `SessionV2` (user id, created_at, the opening token's name; `SessionV1`
/// values read on the fly): Last.fm-style sessions from
/// `auth.getMobileSession`; the key itself is stored nowhere. Since schema 2.
pub const SESSIONDIGEST_SESSION: &str = "sessiondigest_session";

/// `userid_seq_info`: `user id u32 ‖ first seq u64` (a log block's key) -> `InfoBlockV1`:
/// the extra client metadata (`Listen::info`, ListenBrainz's `additional_info`) of the
/// listens of that block that carried any, by slot. Beside the signed log, not in it;
/// erasing a listen removes its entry. Serves: ListenBrainz listen reads. Since schema 2.
pub const USERID_SEQ_INFO: &str = "userid_seq_info";

/// `sessiondigest_websession`: keyed blake3 of a browser session cookie ->
/// `WebSessionV1` (user id, created_at, CSRF token). Since schema 2.
pub const SESSIONDIGEST_WEBSESSION: &str = "sessiondigest_websession";

/// `userid_settings`: `user id u32` -> `SettingsV2` (scrobbling paused, API reads open to
/// anyone, ListenBrainz `latest-import` cursors). Since schema 2; version 1 values (paused
/// only) are read as version 2 since schema 9.
pub const USERID_SETTINGS: &str = "userid_settings";

/// `invitedigest_invite`: keyed blake3 of an invitation code -> `InviteV1` (who made it,
/// when). Single use. Since schema 2.
pub const INVITEDIGEST_INVITE: &str = "invitedigest_invite";

/// `clientname_clientid`: `client name (UTF-8)` -> `client id u32` (ids start at 1; 0
/// in a log entry means "no client").
pub const CLIENTNAME_CLIENTID: &str = "clientname_clientid";

/// `clientid_clientname`: `client id u32` -> `ClientV1` (the name).
pub const CLIENTID_CLIENTNAME: &str = "clientid_clientname";

/// `periodstart_release`: `period start u64` -> the node's signed snapshot envelope for
/// that period (`envelope::SignedV1` bytes, not versioned: these bytes are what was
/// published, re-served unchanged forever). Written once, in the same transaction as
/// the ledgers and contributions; never overwritten. Serves: re-serving, the
/// transparency page, (later) gossip and sync.
pub const PERIODSTART_RELEASE: &str = "periodstart_release";

/// `userid_week_ledger`: `user id u32 ‖ ISO week start u64` -> `LedgerV1`: the privacy
/// spent by releases on that user-week and the periods released. Serves: the
/// accountant; the transparency page.
pub const USERID_WEEK_LEDGER: &str = "userid_week_ledger";

/// `userid_periodstart_contribution`: `user id u32 ‖ period start u64` ->
/// `ContributionV1`: what of the user went into that release (bounded items, or why
/// they were left out). Shown to that user only.
pub const USERID_PERIODSTART_CONTRIBUTION: &str = "userid_periodstart_contribution";

/// `period_origin_snapshot`: `period start u64 ‖ origin (32 bytes) ‖ version u16 ‖
/// blake3 of the bytes (32)` -> a validated signed snapshot envelope, raw, as received
/// (or as this node released it). Every distinct version is kept, so two different
/// snapshots with one version stay as evidence of equivocation. Serves: community and
/// federated charts (prefix scan of a period), duplicate and replay checks, sync.
pub const PERIOD_ORIGIN_SNAPSHOT: &str = "period_origin_snapshot";

/// `origin_firstseen`: `origin [u8; 32]` -> `i64 BE`: when this node first took a snapshot
/// of that origin (from a peer, or its own first release). An open community's probation
/// counts periods from here, not from the snapshots an origin holds: a fresh key could
/// sign backdated snapshots for the whole retention window. Since schema 7.
pub const ORIGIN_FIRSTSEEN: &str = "origin_firstseen";

/// `community_version_manifest`: `community id (32) ‖ version u32` -> the signed
/// manifest, raw. The chain of every accepted version. Serves: the current manifest
/// (last key of the prefix), sync of later versions to peers.
pub const COMMUNITY_VERSION_MANIFEST: &str = "community_version_manifest";

/// `community_version_fork`: `community id (32) ‖ version u32` -> a second signed
/// manifest of that version, raw: validly signed by an administrator of the previous
/// version but different from the one in `community_version_manifest` (the
/// administrators forked the community's history). At most one per version. Serves: the
/// warning on `/network`, the evidence passed to peers.
pub const COMMUNITY_VERSION_FORK: &str = "community_version_fork";

/// `community_version_signed`: `community id (32) ‖ version u32` -> blake3 of the
/// manifest body this node signed (sealed or co-signed) as that version. This node
/// signs no second body of a version (two would be a fork, evidence against it) until
/// the pending one is withdrawn. Since schema 10.
pub const COMMUNITY_VERSION_SIGNED: &str = "community_version_signed";

/// `community_period_signer_result`: `community id (32) ‖ period start (time key) ‖
/// signer (32)` -> a signed community result (`federation::result`), raw: each
/// administrator's for the period, replaced only by one of that signer with more
/// inputs. Serves: the charts of linked communities this node is not a member of,
/// catch-up answers (a range per community), pruning by period. Since schema 11.
pub const COMMUNITY_PERIOD_SIGNER_RESULT: &str = "community_period_signer_result";

/// `community_period_signer_wrongresult`: same key -> a signed result that this node,
/// a member holding every snapshot it names, recomputed to another chart: evidence
/// against its signer, shown on `/network`. One per key. Since schema 11.
pub const COMMUNITY_PERIOD_SIGNER_WRONGRESULT: &str = "community_period_signer_wrongresult";

/// `community_follow`: `community id (32)` -> `FollowV1` { this node publishes there
/// (member) or only follows it, bootstrap addresses, when }. Serves: which topics to
/// subscribe, which charts to show.
pub const COMMUNITY_FOLLOW: &str = "community_follow";

/// `secagg_state`: secure aggregation (`federation::secagg`), keyed by a kind byte:
/// `r ‖ community (32) ‖ period (time key)` -> the signed round this node announced or
/// received as an aggregator; `s ‖ round (32) ‖ report (16)` -> `HeldV1` (a
/// share held as an aggregator, and who sent it); `a ‖ round (32)` -> `SecaggAggV1`
/// (the helper's noised aggregate share, until it co-signs); `d ‖ community ‖ period`
/// (aggregated: never again), `m ‖ community ‖ period` (this node reported: never
/// again) -> empty; `o ‖ community ‖ period` -> the signed round of this member's
/// undelivered reports, `o ‖ community ‖ period ‖ L|H ‖ index (u32 BE)` -> one share
/// for the leader or helper (postcard `ShareV1`); `R ‖ community ‖ period` -> a signed
/// secure result. Since schema 12 (new trees start empty).
pub const SECAGG_STATE: &str = "secagg_state";

/// `userid_period_community_securereport`: `user id ‖ period (time key) ‖ community
/// (32)` -> `SecureReportV1`: what this node sent for the user to a community's secure
/// aggregation (the items, the ε charged), or why nothing was sent. Shown to the user
/// only. Since schema 12.
pub const USERID_PERIOD_COMMUNITY_SECUREREPORT: &str = "userid_period_community_securereport";

/// Every tree, in the order `Store` opens them.
pub const ALL_TREES: &[&str] = &[
    META,
    USERNAME_USERID,
    USERID_USER,
    USERID_SIGNINGKEY,
    TOKENDIGEST_TOKEN,
    USERID_TOKENID_TOKENDIGEST,
    USERID_LOGHEAD,
    USERID_SEQ_BLOCK,
    USERID_DAY_LISTENS,
    TRACKCHUNK_TRACKS,
    CLIENTNAME_CLIENTID,
    CLIENTID_CLIENTNAME,
    ITEMCHUNK_ITEMS,
    TRACKCHUNK_CREDITS,
    USERID_BUCKET_COUNTS,
    USERID_STATSMARK,
    USERID_RECORDING_FEEDBACK,
    TRACKID_SPELLINGS,
    USERID_ITEM_SPELLING,
    SESSIONDIGEST_SESSION,
    USERID_SEQ_INFO,
    SESSIONDIGEST_WEBSESSION,
    USERID_SETTINGS,
    INVITEDIGEST_INVITE,
    PERIODSTART_RELEASE,
    USERID_WEEK_LEDGER,
    USERID_PERIODSTART_CONTRIBUTION,
    PERIOD_ORIGIN_SNAPSHOT,
    ORIGIN_FIRSTSEEN,
    COMMUNITY_VERSION_MANIFEST,
    COMMUNITY_VERSION_FORK,
    COMMUNITY_VERSION_SIGNED,
    COMMUNITY_PERIOD_SIGNER_RESULT,
    COMMUNITY_PERIOD_SIGNER_WRONGRESULT,
    COMMUNITY_FOLLOW,
    SECAGG_STATE,
    USERID_PERIOD_COMMUNITY_SECUREREPORT,
];

/// Trees whose keys start with a user id: deleting a user clears its prefix in each.
pub const USER_PREFIXED_TREES: &[&str] = &[
    USERID_USER,
    USERID_SIGNINGKEY,
    USERID_TOKENID_TOKENDIGEST,
    USERID_LOGHEAD,
    USERID_SEQ_BLOCK,
    USERID_DAY_LISTENS,
    USERID_BUCKET_COUNTS,
    USERID_STATSMARK,
    USERID_RECORDING_FEEDBACK,
    USERID_ITEM_SPELLING,
    USERID_SEQ_INFO,
    USERID_SETTINGS,
    USERID_WEEK_LEDGER,
    USERID_PERIODSTART_CONTRIBUTION,
    USERID_PERIOD_COMMUNITY_SECUREREPORT,
];
