//! What every HTTP handler can reach, owned here so that the scrobbler APIs (`api`)
//! and the web view (`web`) share it without depending on each other (`http` composes
//! their routers): `AppState` (the store, the writer, the node's identity and
//! settings, the network handle), `Live` (what requests share in memory and never
//! write anywhere: now playing, failed log-ins, sessions, pending Last.fm tokens,
//! imports started from the web view) and the `ClientAddr` extractor.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;

use crate::log::TrackRef;
use crate::store::{Ingestor, Store, UserId};

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub ingestor: Ingestor,
    pub peer_id: String,
    /// In-memory state of requests.
    pub live: Live,
    /// Time zone of the node's own charts (`node.timezone`).
    pub node_timezone: String,
    /// Mark session cookies `Secure` (`http.secure_cookies`, for nodes behind TLS).
    pub secure_cookies: bool,
    /// Administrators' user names (`node.admins`).
    pub admins: Vec<String>,
    /// `node.open_registration`.
    pub open_registration: bool,
    /// The `[privacy]` section: what the transparency page explains.
    pub privacy: std::sync::Arc<crate::config::PrivacyConfig>,
    /// The network task, when `p2p.enabled`.
    pub p2p: Option<crate::p2p::P2pHandle>,
    /// The node key, to sign community manifests an administrator changes in the web
    /// view, and its public half.
    pub signer: std::sync::Arc<crate::identity::NodeIdentity>,
    pub node_key: [u8; 32],
    /// The secret of the operator's control requests (`hearsay store backup` to a
    /// running node), from `DATA_DIR/control.token` (0600), made at each start.
    pub control_token: Option<std::sync::Arc<String>>,
    /// `http.public_url` (normalised) and `http.trusted_proxies`.
    pub front: std::sync::Arc<Front>,
    /// The scrobbler APIs' per-client limit (`None`: off).
    pub api_limiter: Option<std::sync::Arc<ApiLimiter>>,
    /// The Prometheus metrics (`crate::metrics`) and who may read them.
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
    pub metrics_config: std::sync::Arc<crate::config::MetricsConfig>,
}

/// How the node is reached: its public address, and which peers are proxies whose
/// forwarded headers are believed.
#[derive(Debug, Default)]
pub struct Front {
    pub public_url: Option<String>,
    pub trusted: Vec<IpAddr>,
}

impl Front {
    /// Whether `peer` (the connection's address) is a listed proxy.
    pub fn is_trusted(&self, peer: Option<IpAddr>) -> bool {
        self.trusts(peer)
    }

    /// Whether `peer` (the connection's address) is a trusted proxy.
    fn trusts(&self, peer: Option<IpAddr>) -> bool {
        // A dual-stack listener sees 127.0.0.1 as ::ffff:127.0.0.1.
        peer.is_some_and(|p| self.trusted.iter().any(|t| t.to_canonical() == p.to_canonical()))
    }

    /// The base of every URL handed out: `http.public_url`; else, from a trusted proxy,
    /// its `X-Forwarded-Proto` and `X-Forwarded-Host`; else `http://` and the `Host`.
    pub fn base_url(&self, headers: &axum::http::HeaderMap, peer: Option<IpAddr>) -> String {
        if let Some(u) = &self.public_url {
            return u.clone();
        }
        let header = |name: &str| {
            headers.get(name).and_then(|v| v.to_str().ok()).and_then(|v| v.split(',').next()).map(str::trim)
        };
        let trusted = self.trusts(peer);
        let scheme = match header("x-forwarded-proto") {
            Some(p) if trusted && (p.eq_ignore_ascii_case("https") || p.eq_ignore_ascii_case("http")) => {
                p.to_ascii_lowercase()
            }
            _ => "http".to_owned(),
        };
        let host = header("x-forwarded-host")
            .filter(|_| trusted)
            .or_else(|| header("host"))
            .filter(|h| !h.is_empty() && h.chars().all(|c| c.is_ascii_graphic()) && !h.contains(['/', '@']))
            .unwrap_or("127.0.0.1:8487");
        format!("{scheme}://{host}")
    }
}

/// The scrobbler APIs' per-client request limit (`http.api_rate_limit` per 10 s): GCRA
/// from `governor`, keyed by client address, held in memory only.
pub struct ApiLimiter {
    limit: u32,
    limiter: governor::RateLimiter<
        IpAddr,
        governor::state::keyed::DefaultKeyedStateStore<IpAddr>,
        governor::clock::DefaultClock,
        governor::middleware::StateInformationMiddleware,
    >,
    checks: std::sync::atomic::AtomicU64,
}

/// What the limiter says of one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RateVerdict {
    /// Let through; `remaining` more may follow at once.
    Allowed { remaining: u32 },
    /// Refused; the next is allowed in `retry_in`.
    Limited { retry_in: Duration },
}

/// The window the API limit is stated over.
pub const API_RATE_WINDOW: Duration = Duration::from_secs(10);

impl ApiLimiter {
    /// `None` when the limit is 0 (off).
    pub fn new(limit: u32) -> Option<ApiLimiter> {
        let burst = std::num::NonZeroU32::new(limit)?;
        let quota = governor::Quota::with_period(API_RATE_WINDOW / limit)?.allow_burst(burst);
        Some(ApiLimiter {
            limit,
            limiter: governor::RateLimiter::keyed(quota).with_middleware(),
            checks: std::sync::atomic::AtomicU64::new(0),
        })
    }

    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// Takes one request of `addr`'s allowance.
    pub fn check(&self, addr: IpAddr) -> RateVerdict {
        // Addresses whose allowance is full again are forgotten now and then, so the
        // map holds only recent clients (the limit is memory, not storage).
        if self.checks.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 4096 == 4095 {
            self.limiter.retain_recent();
        }
        // An IPv6 client holds a whole /64: one allowance for all of it.
        match self.limiter.check_key(&client_key(addr)) {
            Ok(snapshot) => RateVerdict::Allowed { remaining: snapshot.remaining_burst_capacity() },
            Err(not_until) => {
                use governor::clock::Clock;
                RateVerdict::Limited {
                    retry_in: not_until.wait_time_from(governor::clock::DefaultClock::default().now()),
                }
            }
        }
    }

    /// Seconds until a client with `remaining` left has its whole allowance again.
    pub fn full_in(&self, remaining: u32) -> u64 {
        let missing = u64::from(self.limit.saturating_sub(remaining));
        (missing * API_RATE_WINDOW.as_secs()).div_ceil(u64::from(self.limit.max(1)))
    }
}

/// The client's address, when the server knows it (kept in memory only, for limits).
pub struct ClientAddr(pub Option<IpAddr>);

/// The connection's own address (before any proxy's word).
pub struct PeerAddr(pub Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for PeerAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(PeerAddr(parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip())))
    }
}

impl FromRequestParts<AppState> for ClientAddr {
    type Rejection = std::convert::Infallible;

    /// The connection's address; behind a trusted proxy, the client it forwards for:
    /// the right-most address of `X-Forwarded-For` that is not itself a trusted proxy.
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
        if !state.front.trusts(peer) {
            return Ok(ClientAddr(peer));
        }
        let forwarded = parts
            .headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|a| {
                // An address, or an address with a port (some proxies append it).
                let a = a.trim();
                a.parse::<IpAddr>().ok().or_else(|| a.parse::<SocketAddr>().ok().map(|s| s.ip()))
            })
            .collect::<Vec<_>>();
        // The right-most entry a trusted proxy did not add; an entry that is no address
        // at all stops the walk (what lies left of it cannot be trusted either).
        let mut client = None;
        for a in forwarded.into_iter().rev() {
            match a {
                Some(a) if state.front.trusts(Some(a)) => continue,
                Some(a) => {
                    client = Some(a);
                    break;
                }
                None => break,
            }
        }
        Ok(ClientAddr(client.or(peer)))
    }
}

impl AppState {
    /// `user` as the access policy sees them: id, sharing level and whether they opened
    /// their API reads (a store error reads as closed: the safe side).
    pub fn subject(&self, user: &crate::store::users::User) -> crate::policy::Subject {
        let api_reads_open = self.store.settings(user.id).map(|s| s.api_reads_open).unwrap_or(false);
        crate::policy::Subject { id: user.id.0, level: user.visibility, api_reads_open }
    }

    /// Whether a request carries the node's control token (`Authorization: Bearer`):
    /// the operator's command line talking to its own node.
    pub fn is_operator(&self, headers: &axum::http::HeaderMap) -> bool {
        let given = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        self.control_token.as_deref().is_some_and(|t| crate::auth::strings_equal(t, given.trim()))
    }

    /// A password check off the async runtime: argon2 runs on `auth`'s hashing
    /// threads, and this task waits for it on a blocking thread, so log-ins never stall
    /// scrobbling on the runtime's workers.
    pub async fn check_password(
        &self,
        name: &str,
        password: &str,
    ) -> Result<Option<crate::store::users::User>, crate::store::Error> {
        let (store, name, password) = (self.store.clone(), name.to_owned(), password.to_owned());
        tokio::task::spawn_blocking(move || store.check_password(&name, &password))
            .await
            .map_err(|e| crate::store::Error::PasswordHash(e.to_string()))?
    }
}

/// The key limits are counted under: the address itself for IPv4, its /64 for IPv6
/// (one subscriber holds a whole /64, so single addresses would not limit anyone).
pub fn client_key(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V4(_) => addr,
        IpAddr::V6(v6) => IpAddr::V6(std::net::Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
    }
}

/// Failed authentications allowed per client address per minute before 429.
pub const MAX_FAILED_AUTH_PER_MINUTE: u32 = 30;
/// How far a listen may start before "now playing" was said and still end it, in
/// seconds: Last.fm's shortest scrobble (a track under 30 s is not one).
pub const NOW_PLAYING_SLACK: i64 = 30;
/// How long "now playing" lasts when the track's length is unknown (ListenBrainz: 10 min).
pub const NOW_PLAYING_DEFAULT: Duration = Duration::from_secs(600);

/// What a user is playing, kept in memory only and never written anywhere.
#[derive(Clone, Debug)]
pub struct NowPlaying {
    pub track: TrackRef,
    pub client: Option<String>,
    /// When the player said it started (the node's clock, unix seconds).
    pub since: i64,
    pub until: Instant,
}

/// What requests share in memory and never write anywhere.
#[derive(Clone, Default)]
pub struct Live {
    /// Audioscrobbler 1.2 sessions.
    pub as_sessions: Sessions,
    /// Last.fm web/desktop authentication tokens awaiting approval (`auth.getToken`,
    /// approved on the web view's `/api/auth` page).
    pub lastfm_tokens: PendingTokens,
    now_playing: Arc<Mutex<HashMap<UserId, NowPlaying>>>,
    failures: Arc<Mutex<HashMap<IpAddr, (Instant, u32)>>>,
    /// Imports started from the web view, by job id.
    pub imports: crate::import::jobs::Jobs,
}

impl Live {
    pub fn set_playing(&self, user: UserId, track: TrackRef, client: Option<String>, duration_ms: Option<u32>) {
        let length = duration_ms.map_or(NOW_PLAYING_DEFAULT, |ms| Duration::from_millis(u64::from(ms)));
        if let Ok(mut map) = self.now_playing.lock() {
            map.insert(user, NowPlaying { track, client, since: crate::now_unix(), until: Instant::now() + length });
        }
    }

    pub fn playing(&self, user: UserId) -> Option<NowPlaying> {
        let mut map = self.now_playing.lock().ok()?;
        match map.get(&user) {
            Some(p) if p.until > Instant::now() => Some(p.clone()),
            Some(_) => {
                map.remove(&user);
                None
            }
            None => None,
        }
    }

    /// Listens arrived: "now playing" ends if one of them began after it started (the
    /// playing track scrobbled, or the next one). A back-dated listen (an import, a
    /// player's cache sent late, the previous track scrobbled at its end) leaves it alone.
    /// `newest` is the latest start among them (`None`: no listen).
    pub fn listened(&self, user: UserId, newest: Option<i64>) {
        let Ok(mut map) = self.now_playing.lock() else { return };
        let Some(p) = map.get(&user) else { return };
        // The previous track lasted at least `NOW_PLAYING_SLACK` (no service counts a
        // shorter play), so it began at least that long before this one: the slack
        // absorbs a player's clock being behind the node's without letting it end this.
        if newest.is_some_and(|t| t >= p.since - NOW_PLAYING_SLACK) {
            map.remove(&user);
        }
    }

    /// True when `addr` has failed authentication too often in the last minute. The
    /// address is kept in memory for at most that minute and never written anywhere.
    /// This counts failures, and is asked before a check without spending anything: a
    /// request-rate limiter (governor's GCRA spends a cell on every check and has no
    /// way to look without spending) does not fit, so it is a map of counters here.
    pub fn is_limited(&self, addr: IpAddr) -> bool {
        let Ok(mut map) = self.failures.lock() else { return false };
        let now = Instant::now();
        map.retain(|_, (since, _)| now.duration_since(*since) < Duration::from_secs(60));
        map.get(&client_key(addr)).is_some_and(|(_, n)| *n >= MAX_FAILED_AUTH_PER_MINUTE)
    }

    pub fn record_failure(&self, addr: IpAddr) {
        if let Ok(mut map) = self.failures.lock() {
            let entry = map.entry(client_key(addr)).or_insert((Instant::now(), 0));
            entry.1 += 1;
        }
    }
}

const SESSION_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// Audioscrobbler sessions, in memory only: the user, until when, and the player's name
/// from its handshake.
#[derive(Clone, Default)]
pub struct Sessions(Arc<Mutex<HashMap<String, AsSession>>>);

/// One Audioscrobbler session: its user, until when it lasts, the player's name.
type AsSession = (UserId, Instant, Arc<str>);

impl Sessions {
    pub fn create(&self, user: UserId, client: &str) -> Option<String> {
        let id = hex::encode(crate::auth::random_bytes::<16>().ok()?);
        let mut map = self.0.lock().ok()?;
        let now = Instant::now();
        map.retain(|_, (_, until, _)| *until > now);
        map.insert(id.clone(), (user, now + SESSION_LIFETIME, client.into()));
        Some(id)
    }

    /// The session's user and player name, while it lasts.
    pub fn get(&self, id: &str) -> Option<(UserId, Arc<str>)> {
        let map = self.0.lock().ok()?;
        map.get(id).filter(|(_, until, _)| *until > Instant::now()).map(|(u, _, c)| (*u, c.clone()))
    }
}

/// How long an `auth.getToken` token may wait for approval (Last.fm: 60 minutes).
const AUTH_TOKEN_LIFETIME: std::time::Duration = std::time::Duration::from_secs(3600);

/// Most `auth.getToken` tokens waiting at once (the call is anonymous).
pub const MAX_PENDING_TOKENS: usize = 10_000;
/// Most `auth.getToken` tokens one client address may make per minute.
pub const MAX_TOKENS_PER_MINUTE: u32 = 30;

/// Tokens from `auth.getToken`, in memory: when made, and the user who approved it.
/// Bounded: at most `MAX_PENDING_TOKENS` wait at once, each address makes at most
/// `MAX_TOKENS_PER_MINUTE`, and expired tokens leave from the front of a queue kept in
/// creation order (all live as long), so each call costs O(1), not a scan of the map.
#[derive(Clone, Default)]
pub struct PendingTokens(Arc<Mutex<Pending>>);

#[derive(Default)]
struct Pending {
    tokens: HashMap<String, PendingToken>,
    /// Tokens in creation order, for expiry.
    order: std::collections::VecDeque<(Instant, String)>,
    /// Tokens made per address in the current minute (cleared each minute).
    per_address: HashMap<IpAddr, u32>,
    window: Option<Instant>,
}

/// Why a pending token cannot be exchanged for a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenError {
    Unknown,
    Expired,
    NotApproved,
    /// The map's lock was poisoned.
    Unavailable,
}

/// When a token was made, and the user who approved it.
type PendingToken = (Instant, Option<UserId>);

/// Why no token was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CreateError {
    /// This address made its share this minute, or the node holds its most.
    TooMany,
    Unavailable,
}

impl PendingTokens {
    /// A new pending token for a client at `addr` (when known).
    pub fn create(&self, addr: Option<IpAddr>) -> Result<String, CreateError> {
        let mut p = self.0.lock().map_err(|_| CreateError::Unavailable)?;
        let now = Instant::now();
        while p.order.front().is_some_and(|(made, _)| now.duration_since(*made) >= AUTH_TOKEN_LIFETIME) {
            if let Some((_, old)) = p.order.pop_front() {
                p.tokens.remove(&old);
            }
        }
        if p.window.is_none_or(|w| now.duration_since(w) >= Duration::from_secs(60)) {
            p.window = Some(now);
            p.per_address.clear();
        }
        if p.tokens.len() >= MAX_PENDING_TOKENS {
            return Err(CreateError::TooMany);
        }
        if let Some(a) = addr {
            let n = p.per_address.entry(client_key(a)).or_insert(0);
            if *n >= MAX_TOKENS_PER_MINUTE {
                return Err(CreateError::TooMany);
            }
            *n += 1;
        }
        let token = hex::encode(crate::auth::random_bytes::<16>().map_err(|_| CreateError::Unavailable)?);
        p.tokens.insert(token.clone(), (now, None));
        p.order.push_back((now, token.clone()));
        Ok(token)
    }

    /// Marks a pending token approved by `user`; false when unknown or expired.
    pub fn approve(&self, token: &str, user: UserId) -> bool {
        let Ok(mut p) = self.0.lock() else { return false };
        match p.tokens.get_mut(token) {
            Some((made, approved)) if made.elapsed() < AUTH_TOKEN_LIFETIME => {
                *approved = Some(user);
                true
            }
            _ => false,
        }
    }

    /// Takes a token for `auth.getSession`: Ok(user) once approved (single use).
    pub fn take(&self, token: &str) -> Result<UserId, TokenError> {
        let mut p = self.0.lock().map_err(|_| TokenError::Unavailable)?;
        match p.tokens.get(token).copied() {
            None => Err(TokenError::Unknown),
            Some((made, _)) if made.elapsed() >= AUTH_TOKEN_LIFETIME => {
                p.tokens.remove(token);
                Err(TokenError::Expired)
            }
            Some((_, None)) => Err(TokenError::NotApproved),
            // Used: gone from the map (its queue entry goes when it would have expired).
            Some((_, Some(user))) => {
                p.tokens.remove(token);
                Ok(user)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_tokens_are_bounded_per_address_and_in_all() {
        let pending = PendingTokens::default();
        let a: IpAddr = [192, 0, 2, 1].into();
        for _ in 0..MAX_TOKENS_PER_MINUTE {
            pending.create(Some(a)).expect("within the share");
        }
        assert_eq!(pending.create(Some(a)), Err(CreateError::TooMany));
        let b: IpAddr = [192, 0, 2, 2].into();
        let t = pending.create(Some(b)).expect("another address");
        assert_eq!(pending.take(&t), Err(TokenError::NotApproved));
        assert!(pending.approve(&t, UserId(7)));
        assert_eq!(pending.take(&t), Ok(UserId(7)));
        assert_eq!(pending.take(&t), Err(TokenError::Unknown), "single use");
        // One IPv6 /64 is one client.
        let v6 = |low: u128| -> IpAddr { std::net::Ipv6Addr::from((0x2001_0db8u128 << 96) | low).into() };
        for i in 0..MAX_TOKENS_PER_MINUTE {
            pending.create(Some(v6(u128::from(i) + 1))).expect("within the /64's share");
        }
        assert_eq!(pending.create(Some(v6(999))), Err(CreateError::TooMany), "another address of the same /64");
        // The whole map is capped, whatever the addresses.
        for i in 0..MAX_PENDING_TOKENS {
            let addr: IpAddr = std::net::Ipv6Addr::from((i as u128) << 64).into();
            if pending.create(Some(addr)).is_err() {
                break;
            }
        }
        let c: IpAddr = [192, 0, 2, 3].into();
        assert_eq!(pending.create(Some(c)), Err(CreateError::TooMany));
        assert!(pending.0.lock().expect("lock").tokens.len() <= MAX_PENDING_TOKENS);
    }
}
