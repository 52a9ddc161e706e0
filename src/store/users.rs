//! Users, their keys and their API tokens.
//!
//! User names are 1..=64 characters of `A-Z a-z 0-9 _ . -`, unique regardless of case.
//! Each user gets an ed25519 identity key generated on the node; its seed lives in its
//! own tree so listings never read it.

use ed25519_dalek::SigningKey;
use sled::Transactional;

use super::codec::{decode, encode};
use super::keys::{self, UserId};
use super::schema;
pub use super::values::SharingLevel;
use super::values::{
    LevelHistory, MAX_IMPORT_CURSORS, MAX_SERVICE_LEN, SessionV2, SettingsV2, SigningKeyV1, TokenV2, UserV3,
    WebSessionV1,
};
use super::{Error, Result, Store};
use crate::auth;
use crate::store::aggregates::{BucketWrite, NODE_STALE, bucket_write, write_buckets};

/// Longest user name.
pub const MAX_NAME_CHARS: usize = 64;

/// Checks a user name against the rule above.
pub fn validate_name(name: &str) -> Result<()> {
    let bad = |reason| Err(Error::InvalidName { name: name.to_owned(), reason });
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > MAX_NAME_CHARS {
        return bad("longer than 64 characters");
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')) {
        return bad("only letters, digits, '_', '.' and '-' are allowed");
    }
    Ok(())
}

fn check_password(password: &str) -> Result<()> {
    if password.chars().count() < auth::MIN_PASSWORD_CHARS {
        return Err(Error::InvalidPassword("shorter than 8 characters"));
    }
    if password.len() > auth::MAX_PASSWORD_BYTES {
        return Err(Error::InvalidPassword("longer than 1024 bytes"));
    }
    Ok(())
}

/// A user as listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub id: UserId,
    pub name: String,
    pub created_at: i64,
    pub public_key: [u8; 32],
    /// IANA time zone name (default `UTC`).
    pub timezone: String,
    pub visibility: SharingLevel,
    /// Recent level changes (for releases of periods not yet made).
    pub levels: LevelHistory,
}

/// A token as listed (the token itself is never stored).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenInfo {
    pub user: UserId,
    pub id: u32,
    pub name: String,
    pub created_at: i64,
    /// Made for a legacy client: its md5 is kept, which proves the token to the
    /// Audioscrobbler 1.2 handshake and Last.fm's `authToken` (and so is as good as the
    /// token to whoever reads the database).
    pub legacy: bool,
}

fn user_from(id: UserId, v: UserV3) -> User {
    User {
        id,
        name: v.name,
        created_at: v.created_at,
        public_key: v.public_key,
        timezone: v.timezone,
        visibility: v.visibility,
        levels: v.levels,
    }
}

impl Store {
    /// Creates a user with a fresh identity key.
    pub fn create_user(&self, name: &str, password: &str, now: i64) -> Result<User> {
        let seed = auth::random_bytes::<32>().map_err(Error::Random)?;
        self.create_user_with_key(name, password, seed, now)
    }

    /// Creates a user whose log is signed with the key of `seed` (an account moved from
    /// another node keeps its identity, so its log continues the same chain).
    pub fn create_user_with_key(&self, name: &str, password: &str, seed: [u8; 32], now: i64) -> Result<User> {
        self.writable()?;
        validate_name(name)?;
        check_password(password)?;
        let lower = name.to_ascii_lowercase();
        if self.trees.username_userid.contains_key(lower.as_bytes())? {
            return Err(Error::UserExists(name.to_owned()));
        }
        let password_hash = auth::hash_password(password).map_err(Error::PasswordHash)?;
        let public_key = SigningKey::from_bytes(&seed).verifying_key().to_bytes();
        let id = UserId(self.next_id("next_user_id", 1)?);
        if id.0 >= crate::store::aggregates::FIRST_NODE_ID {
            return Err(Error::Invalid("this node has given out every user id it has".into()));
        }
        let record = UserV3 {
            name: name.to_owned(),
            created_at: now,
            password_hash,
            public_key,
            timezone: "UTC".into(),
            visibility: self.default_level(),
            levels: LevelHistory::new(now, self.default_level()),
        };
        let t = &self.trees;
        (&t.username_userid, &t.userid_user, &t.userid_signingkey)
            .transaction(|(by_name, users, signing)| {
                if by_name.get(lower.as_bytes())?.is_some() {
                    return sled::transaction::abort(Error::UserExists(name.to_owned()));
                }
                by_name.insert(lower.as_bytes(), &keys::user(id))?;
                users.insert(&keys::user(id), encode(&record))?;
                signing.insert(&keys::user(id), encode(&SigningKeyV1 { seed }))?;
                Ok(())
            })
            .map_err(tx_error)?;
        self.accounts_changed();
        self.flush()?;
        Ok(user_from(id, record))
    }

    /// Recreates a user exactly as another store held them (same id, name, password
    /// hash, key, settings), for `recover`. The id counter moves past `id`.
    pub(crate) fn insert_recovered_user(&self, id: UserId, record: &UserV3, seed: [u8; 32]) -> Result<()> {
        if id.0 >= crate::store::aggregates::FIRST_NODE_ID {
            return Err(Error::Invalid(format!("user id {} is reserved for the node's statistics", id.0)));
        }
        let lower = record.name.to_ascii_lowercase();
        let t = &self.trees;
        t.username_userid.insert(lower.as_bytes(), &keys::user(id))?;
        t.userid_user.insert(keys::user(id), encode(record))?;
        t.userid_signingkey.insert(keys::user(id), encode(&SigningKeyV1 { seed }))?;
        t.meta.update_and_fetch("next_user_id", |old| {
            let current = old.and_then(|b| <[u8; 4]>::try_from(b).ok()).map_or(1, u32::from_be_bytes);
            Some(current.max(id.0.saturating_add(1)).to_be_bytes().to_vec())
        })?;
        self.accounts_changed();
        self.flush()
    }

    /// Looks a user up by name, case-insensitively.
    pub fn user_by_name(&self, name: &str) -> Result<Option<User>> {
        let Some(id) = self.trees.username_userid.get(name.to_ascii_lowercase().as_bytes())? else {
            return Ok(None);
        };
        let id = UserId(keys::parse_u32(schema::USERNAME_USERID, &id)?);
        self.user(id)
    }

    pub fn user(&self, id: UserId) -> Result<Option<User>> {
        let key = keys::user(id);
        match self.trees.userid_user.get(key)? {
            None => Ok(None),
            Some(bytes) => Ok(Some(user_from(id, decode(schema::USERID_USER, &key, &bytes)?))),
        }
    }

    /// Every user, by id.
    pub fn users(&self) -> Result<Vec<User>> {
        self.trees
            .userid_user
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                let id = keys::parse_user(schema::USERID_USER, &k)?;
                Ok(user_from(id, decode(schema::USERID_USER, &k, &v)?))
            })
            .collect()
    }

    /// Checks a user's password; `None` for an unknown user or a wrong password alike.
    pub fn check_password(&self, name: &str, password: &str) -> Result<Option<User>> {
        let Some(user) = self.user_by_name(name)? else {
            // Hash anyway so an unknown name takes as long as a wrong password.
            auth::equalise_timing(password);
            return Ok(None);
        };
        let key = keys::user(user.id);
        let Some(bytes) = self.trees.userid_user.get(key)? else {
            return Ok(None);
        };
        let record: UserV3 = decode(schema::USERID_USER, &key, &bytes)?;
        let matches = auth::verify_password(&record.password_hash, password).map_err(|_| Error::Busy)?;
        Ok(matches.then_some(user))
    }

    /// Sets a user's time zone (an IANA name). Their statistics must be rebuilt after
    /// this (`rebuild_user_stats`), which the callers do.
    /// Changes a user's time zone and records that their statistics must be recounted
    /// (one transaction): the writer recounts at once, and a crash in between makes the
    /// next open recount (`finish_pending`), so buckets never mix two time zones.
    pub fn set_timezone(&self, id: UserId, timezone: &str) -> Result<()> {
        self.writable()?;
        crate::stats::period::time_zone(timezone).map_err(|e| Error::Invalid(e.to_string()))?;
        let key = keys::user(id);
        let bytes = self.trees.userid_user.get(key)?.ok_or_else(|| Error::NoSuchUser(format!("#{}", id.0)))?;
        let mut record: UserV3 = decode(schema::USERID_USER, &key, &bytes)?;
        record.timezone = timezone.to_owned();
        let value = encode(&record);
        (&self.trees.userid_user, &self.trees.meta)
            .transaction(|(users, meta)| {
                users.insert(&key, value.clone())?;
                meta.insert(&keys::pending(keys::Pending::RecountUser, id), &[])?;
                Ok::<(), sled::transaction::ConflictableTransactionError<Error>>(())
            })
            .map_err(tx_error)?;
        self.accounts_changed();
        self.flush()
    }

    /// Marks a recount done.
    pub(crate) fn recounted(&self, id: UserId) -> Result<()> {
        self.trees.meta.remove(keys::pending(keys::Pending::RecountUser, id))?;
        Ok(())
    }

    /// Finishes multi-step changes a crash cut short: deletions and recounts.
    pub(crate) fn finish_pending(&self) -> Result<()> {
        let pending: Vec<sled::IVec> =
            self.trees.meta.scan_prefix(keys::PENDING).keys().collect::<std::result::Result<_, _>>()?;
        for key in pending {
            match keys::parse_pending(&key) {
                Some((keys::Pending::DeleteUser, id)) => {
                    tracing::warn!(user = id.0, "finishing a user deletion cut short");
                    self.delete_user_records(id)?;
                }
                Some((keys::Pending::RecountUser, id)) => {
                    tracing::warn!(user = id.0, "finishing a statistics recount cut short");
                    self.rebuild_user_stats(id)?;
                    self.recounted(id)?;
                }
                None => return Err(Error::corrupt(schema::META, &key, "not a pending change")),
            }
        }
        self.flush()
    }

    /// Sets a user's sharing level.
    pub fn set_visibility(&self, id: UserId, visibility: SharingLevel) -> Result<()> {
        self.set_visibility_at(id, visibility, crate::now_unix())
    }

    /// As `set_visibility`, recording the change at `now`: releases of periods not yet
    /// made use the least shared level since their start (`LevelHistory`).
    pub fn set_visibility_at(&self, id: UserId, visibility: SharingLevel, now: i64) -> Result<()> {
        self.change_visibility(id, visibility, now, false)
    }

    /// As `set_visibility_at`, for the writer thread (the only one changing the memory
    /// copy of buckets): the node buckets' change is added to the pending changes
    /// (`aggregates::NodePending`) and the level with `NODE_STALE` goes to the store in
    /// one transaction; the writer stores the changes with its next store of node
    /// buckets (`writer::NODE_PERSIST_EVERY`), and after a crash meanwhile the open
    /// rebuilds the node buckets from the user buckets. So a change costs reading the
    /// user's own buckets, whatever the node's size (issue 17: storing every bucket in
    /// memory and rewriting the node chunks first took 349 ms at 1,000 members and
    /// 4.6 s at 10,000).
    pub(crate) fn set_visibility_deferred(&self, id: UserId, visibility: SharingLevel, now: i64) -> Result<()> {
        self.change_visibility(id, visibility, now, true)
    }

    fn change_visibility(&self, id: UserId, visibility: SharingLevel, now: i64, deferred: bool) -> Result<()> {
        self.writable()?;
        let key = keys::user(id);
        let bytes = self.trees.userid_user.get(key)?.ok_or_else(|| Error::NoSuchUser(format!("#{}", id.0)))?;
        let mut record: UserV3 = decode(schema::USERID_USER, &key, &bytes)?;
        let node_chart = |level| crate::policy::counted_exactly(level, crate::policy::Purpose::NodeChart);
        // Into or out of the node chart: the node buckets gain or lose the user's, in
        // the same transaction as the level (deferred: the level with `NODE_STALE`).
        let mut deltas = crate::store::aggregates::FastMap::default();
        if node_chart(record.visibility) != node_chart(visibility) {
            // Deferred, the user's buckets are read as they stand (memory over store).
            if !deferred {
                self.store_hot()?;
            }
            let buckets = self.user_buckets(id)?;
            // (A user with no buckets yet, a new account, moves nothing.)
            self.whole_user_deltas(id, &buckets, node_chart(visibility), &mut deltas)?;
        }
        record.visibility = visibility;
        record.levels.change(now, visibility);
        let value = encode(&record);
        let node: Vec<BucketWrite> = match deferred {
            true => Vec::new(),
            false => self.merged_node(&deltas)?.iter().map(|(k, agg)| bucket_write(k, agg)).collect(),
        };
        let stale = deferred && !deltas.is_empty();
        (&self.trees.userid_user, &self.trees.userid_bucket_counts, &self.trees.meta)
            .transaction(|(users, buckets, meta)| {
                users.insert(&key, value.clone())?;
                write_buckets(buckets, &node)?;
                if stale {
                    meta.insert(NODE_STALE, &[])?;
                }
                Ok::<(), sled::transaction::ConflictableTransactionError<Error>>(())
            })
            .map_err(tx_error)?;
        // Kept neighbours lists go first, before anything below can fail: a user who
        // just left the public level must not stay in one.
        self.accounts_changed();
        // The changes are pending as soon as the level is in sled's memory, before the
        // flush: a failed flush must not leave the level changed and the node not.
        if stale {
            self.add_node_pending(&deltas)?;
        } else {
            self.node_changed(Some(deltas.keys()));
        }
        self.flush()
    }

    /// The user's signing key.
    pub fn signing_key(&self, id: UserId) -> Result<SigningKey> {
        let key = keys::user(id);
        let bytes = self.trees.userid_signingkey.get(key)?.ok_or_else(|| Error::NoSuchUser(format!("#{}", id.0)))?;
        let v: SigningKeyV1 = decode(schema::USERID_SIGNINGKEY, &key, &bytes)?;
        Ok(SigningKey::from_bytes(&v.seed))
    }

    /// Creates an API token for `user`; the returned string is shown once and not stored.
    /// Only a `legacy` token keeps the md5 the Audioscrobbler 1.2 handshake and Last.fm's
    /// `authToken` prove a password with: that md5 is password-equivalent for those
    /// protocols, so it is kept only when the user asks for it (docs/privacy.md).
    pub fn create_token(&self, user: UserId, name: &str, now: i64, legacy: bool) -> Result<(String, TokenInfo)> {
        self.writable()?;
        let token = auth::new_token().map_err(Error::Random)?;
        let digest = auth::token_digest(&token);
        let id = self.next_id("next_token_id", 1)?;
        let legacy_md5 = legacy.then(|| <md5::Md5 as md5::Digest>::digest(token.as_bytes()).into());
        let record = TokenV2 { user: user.0, id, name: name.to_owned(), created_at: now, legacy_md5 };
        let t = &self.trees;
        (&t.tokendigest_token, &t.userid_tokenid_tokendigest)
            .transaction(|(by_digest, by_user)| {
                by_digest.insert(&digest, encode(&record))?;
                by_user.insert(&keys::user_u32(user, id), &digest)?;
                Ok(())
            })
            .map_err(tx_error)?;
        self.flush()?;
        Ok((token, TokenInfo { user, id, name: name.to_owned(), created_at: now, legacy }))
    }

    /// The user a token belongs to, if it is valid.
    pub fn user_by_token(&self, token: &str) -> Result<Option<(User, TokenInfo)>> {
        let digest = auth::token_digest(token);
        let Some(bytes) = self.trees.tokendigest_token.get(digest)? else {
            return Ok(None);
        };
        let record: TokenV2 = decode(schema::TOKENDIGEST_TOKEN, &digest, &bytes)?;
        let user = UserId(record.user);
        // The forward index must point back at the same digest; a revoked or foreign
        // record fails here.
        let back = self.trees.userid_tokenid_tokendigest.get(keys::user_u32(user, record.id))?;
        let back_ok =
            back.and_then(|b| <[u8; 32]>::try_from(b.as_ref()).ok()).is_some_and(|b| auth::digests_equal(&b, &digest));
        if !back_ok {
            return Ok(None);
        }
        let legacy = record.legacy_md5.is_some();
        let info = TokenInfo { user, id: record.id, name: record.name, created_at: record.created_at, legacy };
        Ok(self.user(user)?.map(|u| (u, info)))
    }

    /// Whether `check(md5 hex of a token)` holds for any of the user's tokens: how the
    /// legacy protocols' password proofs are verified (see `TokenV2::legacy_md5`).
    pub fn legacy_password_matches(&self, user: UserId, check: impl Fn(&str) -> bool) -> Result<bool> {
        Ok(self.legacy_token_matching(user, check)?.is_some())
    }

    /// As `legacy_password_matches`, with the name of the token that matched.
    pub fn legacy_token_matching(&self, user: UserId, check: impl Fn(&str) -> bool) -> Result<Option<String>> {
        for kv in self.trees.userid_tokenid_tokendigest.scan_prefix(keys::user(user)) {
            let (_, digest) = kv?;
            let Some(bytes) = self.trees.tokendigest_token.get(&digest)? else { continue };
            let r: TokenV2 = decode(schema::TOKENDIGEST_TOKEN, &digest, &bytes)?;
            if let Some(md5) = r.legacy_md5
                && check(&hex::encode(md5))
            {
                return Ok(Some(r.name));
            }
        }
        Ok(None)
    }

    /// Starts a Last.fm-style session for `user`; the key is returned once and stored
    /// only as a digest.
    pub fn create_session(&self, user: UserId, now: i64, client: Option<&str>) -> Result<String> {
        self.writable()?;
        let key = hex::encode(auth::random_bytes::<16>().map_err(Error::Random)?);
        let record = SessionV2 { user: user.0, created_at: now, client: client.map(str::to_owned) };
        self.trees.sessiondigest_session.insert(auth::session_digest(&key), encode(&record))?;
        self.flush()?;
        Ok(key)
    }

    /// The user a session key belongs to.
    pub fn user_by_session(&self, key: &str) -> Result<Option<User>> {
        Ok(self.session(key)?.map(|(user, _)| user))
    }

    /// The user a session key belongs to, and the name of the token that opened it.
    pub fn session(&self, key: &str) -> Result<Option<(User, Option<String>)>> {
        let digest = auth::session_digest(key);
        let Some(bytes) = self.trees.sessiondigest_session.get(digest)? else { return Ok(None) };
        let record: SessionV2 = decode(schema::SESSIONDIGEST_SESSION, &digest, &bytes)?;
        Ok(self.user(UserId(record.user))?.map(|u| (u, record.client)))
    }

    /// Starts a browser session: (cookie value, CSRF token), both shown only to the
    /// browser; the cookie is stored as a digest.
    pub fn create_web_session(&self, user: UserId, now: i64) -> Result<(String, String)> {
        self.writable()?;
        let key = hex::encode(auth::random_bytes::<32>().map_err(Error::Random)?);
        let csrf = auth::random_bytes::<16>().map_err(Error::Random)?;
        let record = WebSessionV1 { user: user.0, created_at: now, csrf };
        self.trees.sessiondigest_websession.insert(auth::session_digest(&key), encode(&record))?;
        Ok((key, hex::encode(csrf)))
    }

    /// The user and CSRF token of a browser session.
    pub fn web_session(&self, key: &str) -> Result<Option<(User, String)>> {
        let digest = auth::session_digest(key);
        let Some(bytes) = self.trees.sessiondigest_websession.get(digest)? else { return Ok(None) };
        let record: WebSessionV1 = decode(schema::SESSIONDIGEST_WEBSESSION, &digest, &bytes)?;
        Ok(self.user(UserId(record.user))?.map(|u| (u, hex::encode(record.csrf))))
    }

    /// Ends a browser session.
    pub fn end_web_session(&self, key: &str) -> Result<()> {
        self.writable()?;
        self.trees.sessiondigest_websession.remove(auth::session_digest(key))?;
        // A log-out holds after a crash too.
        self.flush()
    }

    /// The user's settings (defaults when never set).
    pub fn settings(&self, user: UserId) -> Result<SettingsV2> {
        let key = keys::user(user);
        Ok(match self.trees.userid_settings.get(key)? {
            Some(bytes) => decode::<SettingsV2>(schema::USERID_SETTINGS, &key, &bytes)?,
            None => SettingsV2::default(),
        })
    }

    /// Changes the user's settings with `change`, atomically against other changes.
    fn update_settings(&self, user: UserId, change: impl Fn(&mut SettingsV2)) -> Result<()> {
        self.writable()?;
        let key = keys::user(user);
        let mut failed = None;
        self.trees.userid_settings.fetch_and_update(key, |old| {
            // sled may run this more than once (a concurrent change): only the last run counts.
            failed = None;
            let mut s = match old.map(|b| decode::<SettingsV2>(schema::USERID_SETTINGS, &key, b)) {
                Some(Ok(s)) => s,
                Some(Err(e)) => {
                    failed = Some(e);
                    return old.map(<[u8]>::to_vec);
                }
                None => SettingsV2::default(),
            };
            change(&mut s);
            Some(encode(&s))
        })?;
        if let Some(e) = failed {
            return Err(e);
        }
        self.flush()
    }

    /// Whether the user has paused scrobbling (incognito).
    pub fn is_paused(&self, user: UserId) -> Result<bool> {
        Ok(self.settings(user)?.paused)
    }

    /// Pauses or resumes scrobbling for the user.
    pub fn set_paused(&self, user: UserId, paused: bool) -> Result<()> {
        self.update_settings(user, |s| s.paused = paused)
    }

    /// Lets anyone read the user's listens and statistics through the scrobbler APIs
    /// without a token, or stops it (`policy::Viewer::Api`).
    pub fn set_api_reads_open(&self, user: UserId, open: bool) -> Result<()> {
        self.update_settings(user, |s| s.api_reads_open = open)
    }

    /// Records ListenBrainz's `latest-import` cursor of `service` for the user. A new
    /// service past `MAX_IMPORT_CURSORS` replaces the oldest cursor.
    pub fn set_latest_import(&self, user: UserId, service: &str, ts: i64) -> Result<()> {
        if service.is_empty() || service.len() > MAX_SERVICE_LEN || service.chars().any(char::is_control) {
            return Err(Error::Invalid(format!("service must be 1 to {MAX_SERVICE_LEN} bytes, no control characters")));
        }
        self.update_settings(user, |s| {
            s.latest_import.retain(|(name, _)| name != service);
            if s.latest_import.len() >= MAX_IMPORT_CURSORS {
                s.latest_import.remove(0);
            }
            s.latest_import.push((service.to_owned(), ts));
        })
    }

    /// The user's `latest-import` cursor of `service` (0 when never set).
    pub fn latest_import(&self, user: UserId, service: &str) -> Result<i64> {
        Ok(self.settings(user)?.latest_import.iter().find(|(name, _)| name == service).map_or(0, |(_, ts)| *ts))
    }

    /// Makes a single-use invitation code.
    pub fn create_invite(&self, by: UserId, now: i64) -> Result<String> {
        self.writable()?;
        let code = hex::encode(auth::random_bytes::<16>().map_err(Error::Random)?);
        let record = super::values::InviteV1 { by: by.0, created_at: now };
        self.trees.invitedigest_invite.insert(auth::session_digest(&code), encode(&record))?;
        self.flush()?;
        Ok(code)
    }

    /// Whether an invitation code is valid (unused).
    pub fn invite_valid(&self, code: &str) -> Result<bool> {
        Ok(self.trees.invitedigest_invite.contains_key(auth::session_digest(code))?)
    }

    /// Creates a user with an invitation, using it up; None when the code is not valid.
    pub fn create_user_invited(&self, code: &str, name: &str, password: &str, now: i64) -> Result<Option<User>> {
        self.writable()?;
        let digest = auth::session_digest(code);
        // Taking the invitation is one atomic removal: of two registrations racing with
        // one code, only one gets it. It is put back if the account cannot be made
        // (a taken name, a short password), so the person can try again.
        let Some(invite) = self.trees.invitedigest_invite.remove(digest)? else {
            return Ok(None);
        };
        match self.create_user(name, password, now) {
            Ok(user) => {
                self.flush()?;
                Ok(Some(user))
            }
            Err(e) => {
                self.trees.invitedigest_invite.insert(digest, invite)?;
                Err(e)
            }
        }
    }

    /// A user's tokens, by id.
    pub fn tokens(&self, user: UserId) -> Result<Vec<TokenInfo>> {
        let mut out = Vec::new();
        for kv in self.trees.userid_tokenid_tokendigest.scan_prefix(keys::user(user)) {
            let (k, digest) = kv?;
            let Some(bytes) = self.trees.tokendigest_token.get(&digest)? else {
                continue;
            };
            let r: TokenV2 = decode(schema::TOKENDIGEST_TOKEN, &digest, &bytes)?;
            let _ = keys::parse_user_u32(schema::USERID_TOKENID_TOKENDIGEST, &k)?;
            out.push(TokenInfo {
                user,
                id: r.id,
                name: r.name,
                created_at: r.created_at,
                legacy: r.legacy_md5.is_some(),
            });
        }
        Ok(out)
    }

    /// Revokes a token by id; false when the user has no such token.
    pub fn revoke_token(&self, user: UserId, id: u32) -> Result<bool> {
        self.writable()?;
        let key = keys::user_u32(user, id);
        let Some(digest) = self.trees.userid_tokenid_tokendigest.get(key)? else {
            return Ok(false);
        };
        let t = &self.trees;
        (&t.tokendigest_token, &t.userid_tokenid_tokendigest)
            .transaction(|(by_digest, by_user)| {
                by_digest.remove(&digest)?;
                by_user.remove(&key)?;
                Ok(())
            })
            .map_err(tx_error)?;
        self.flush()?;
        Ok(true)
    }

    /// Deletes a user and everything stored under their id: log, indexes, keys, tokens.
    /// Interned track names shared with other users stay (see `docs/privacy.md`).
    /// Must not run while a writer is appending for this user (the CLI runs it with the
    /// node stopped).
    pub fn delete_user(&self, id: UserId) -> Result<u64> {
        self.writable()?;
        let Some(user) = self.user(id)? else {
            return Err(Error::NoSuchUser(format!("#{}", id.0)));
        };
        // First, atomically: the account is gone for every lookup (name, record: tokens
        // and sessions resolve to no user) and the deletion is recorded as pending, so
        // that a crash during the rest is finished at the next open.
        let name_key = user.name.to_ascii_lowercase().into_bytes();
        self.unacknowledge(self.log_head(id)?.n_entries)?;
        // A user counted in node charts leaves them with the account: their buckets go
        // in the same transaction as the node buckets lose them.
        self.store_hot()?;
        let mut bucket_ops: Vec<BucketWrite> = Vec::new();
        let buckets = self.user_buckets(id)?;
        if crate::policy::counted_exactly(user.visibility, crate::policy::Purpose::NodeChart) {
            let mut deltas = crate::store::aggregates::FastMap::default();
            self.whole_user_deltas(id, &buckets, false, &mut deltas)?;
            for (k, agg) in self.merged_node(&deltas)? {
                bucket_ops.push(bucket_write(&k, &agg));
            }
        }
        bucket_ops.extend(buckets.keys().map(|k| (k.to_vec(), None)));
        let t = &self.trees;
        (&t.username_userid, &t.userid_user, &t.meta, &t.userid_bucket_counts)
            .transaction(|(names, users, meta, counts)| {
                names.remove(name_key.as_slice())?;
                users.remove(&keys::user(id))?;
                meta.insert(&keys::pending(keys::Pending::DeleteUser, id), &[])?;
                write_buckets(counts, &bucket_ops)?;
                Ok::<(), sled::transaction::ConflictableTransactionError<Error>>(())
            })
            .map_err(tx_error)?;
        self.node_changed(Some(bucket_ops.iter().filter_map(|(k, _)| <&[u8; 9]>::try_from(k.as_slice()).ok())));
        self.accounts_changed();
        self.note_newest_listens(&std::collections::BTreeMap::new(), &[(id, None)]);
        self.flush()?;
        Ok(self.delete_user_records(id)? + 1)
    }

    /// The rest of a deletion: every record of a user whose account is already gone;
    /// finishes by clearing the pending mark. Safe to run again.
    fn delete_user_records(&self, id: UserId) -> Result<u64> {
        let mut removed = 0u64;
        // Secure-aggregation reports of theirs not yet delivered: the shares on disk
        // are, both together, their items. Their periods' undelivered reports all go
        // (which share is whose is not recorded); the other users stay charged.
        for r in self.secure_reports(id, usize::MAX)? {
            if r.refused.is_none() {
                self.drop_secagg_outbox(&r.community, r.period)?;
            }
        }
        for kv in self.trees.userid_tokenid_tokendigest.scan_prefix(keys::user(id)) {
            let (_, digest) = kv?;
            if self.trees.tokendigest_token.remove(digest)?.is_some() {
                removed += 1;
            }
        }
        for name in schema::USER_PREFIXED_TREES {
            let Some(tree) = self.tree(name) else {
                continue;
            };
            let mut batch = sled::Batch::default();
            for k in tree.scan_prefix(keys::user(id)).keys() {
                batch.remove(k?);
                removed += 1;
            }
            tree.apply_batch(batch)?;
        }
        for kv in self.trees.sessiondigest_session.iter() {
            let (k, v) = kv?;
            if decode::<SessionV2>(schema::SESSIONDIGEST_SESSION, &k, &v).is_ok_and(|s| s.user == id.0) {
                self.trees.sessiondigest_session.remove(k)?;
                removed += 1;
            }
        }
        for kv in self.trees.sessiondigest_websession.iter() {
            let (k, v) = kv?;
            if decode::<WebSessionV1>(schema::SESSIONDIGEST_WEBSESSION, &k, &v).is_ok_and(|s| s.user == id.0) {
                self.trees.sessiondigest_websession.remove(k)?;
                removed += 1;
            }
        }
        self.forget_hot(Some(id));
        self.trees.meta.remove(keys::pending(keys::Pending::DeleteUser, id))?;
        self.flush()?;
        Ok(removed)
    }
}

pub(crate) fn tx_error(e: sled::transaction::TransactionError<Error>) -> Error {
    match e {
        sled::transaction::TransactionError::Abort(e) => e,
        sled::transaction::TransactionError::Storage(e) => Error::Db(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Options;

    #[test]
    fn users_and_tokens_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), &Options { cache_mb: 4, ..Default::default() }).expect("open");
        let alice = store.create_user("Alice", "password1", 100).expect("create");
        assert!(matches!(store.create_user("alice", "password1", 100), Err(Error::UserExists(_))));
        assert!(matches!(store.create_user("al ice", "password1", 100), Err(Error::InvalidName { .. })));
        assert!(matches!(store.create_user("bob", "short", 100), Err(Error::InvalidPassword(_))));
        assert_eq!(store.check_password("ALICE", "password1").expect("check"), Some(alice.clone()));
        assert_eq!(store.check_password("alice", "password2").expect("check"), None);
        assert_eq!(store.check_password("nobody", "password1").expect("check"), None);

        let (token, info) = store.create_token(alice.id, "navidrome", 200, true).expect("token");
        assert_eq!(store.user_by_token(&token).expect("lookup").map(|(u, _)| u.id), Some(alice.id));
        assert_eq!(store.tokens(alice.id).expect("list"), vec![info.clone()]);
        assert!(store.revoke_token(alice.id, info.id).expect("revoke"));
        assert_eq!(store.user_by_token(&token).expect("lookup"), None);
        assert!(!store.revoke_token(alice.id, info.id).expect("revoke twice"));

        assert_eq!(store.signing_key(alice.id).expect("key").verifying_key().to_bytes(), alice.public_key);
        store.delete_user(alice.id).expect("delete");
        assert_eq!(store.user_by_name("alice").expect("lookup"), None);
        assert!(store.users().expect("list").is_empty());
    }

    fn reopen(dir: &std::path::Path) -> Store {
        Store::open(dir, &Options { cache_mb: 4, ..Default::default() }).expect("open")
    }

    #[test]
    fn a_deletion_cut_short_is_finished_at_the_next_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = reopen(dir.path());
        let bob = store.create_user("bob", "password1", 100).expect("create");
        let (token, _) = store.create_token(bob.id, "player", 100, true).expect("token");
        // The first, atomic step of a deletion happened; the process died before the rest.
        store.trees.username_userid.remove(b"bob").expect("name");
        store.trees.userid_user.remove(keys::user(bob.id)).expect("record");
        store.trees.meta.insert(keys::pending(keys::Pending::DeleteUser, bob.id), &[]).expect("mark");
        store.flush().expect("flush");
        assert_eq!(store.user_by_token(&token).expect("lookup"), None, "the token is dead at once");
        drop(store);
        let store = reopen(dir.path());
        for name in schema::USER_PREFIXED_TREES {
            let tree = store.tree(name).expect("tree");
            assert_eq!(tree.scan_prefix(keys::user(bob.id)).count(), 0, "{name} still holds bob's records");
        }
        assert!(store.trees.tokendigest_token.is_empty(), "the token record is gone");
        assert_eq!(store.trees.meta.scan_prefix(keys::PENDING).count(), 0);
    }

    #[test]
    fn one_invitation_makes_one_account_however_many_race_for_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = reopen(dir.path());
        let admin = store.create_user("admin", "password1", 100).expect("create");
        let code = store.create_invite(admin.id, 100).expect("invite");
        let made: Vec<bool> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|i| {
                    let (store, code) = (store.clone(), code.clone());
                    s.spawn(move || {
                        store.create_user_invited(&code, &format!("racer{i}"), "password1", 100).expect("try").is_some()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("thread")).collect()
        });
        assert_eq!(made.iter().filter(|m| **m).count(), 1, "{made:?}");
        // A failed attempt (a taken name) gives the invitation back.
        let code = store.create_invite(admin.id, 100).expect("invite");
        assert!(store.create_user_invited(&code, "admin", "password1", 100).is_err());
        assert!(store.create_user_invited(&code, "carol", "password1", 100).expect("retry").is_some());
    }
}
