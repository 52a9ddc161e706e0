//! The project's own fixture generator: deterministic, realistic listening histories
//! for N users of one shared music world, written in every import format, with the
//! ground truth beside them. The tests read nothing outside the repository.
//!
//! The world: Zipf-distributed artists and tracks (popular artists have bigger
//! catalogues), albums and singles, durations around 3½ minutes, names in Latin with
//! diacritics, katakana, kanji, hangul, hanzi and emoji; a share of tracks have a guest
//! written as `A feat. B`, `A & B` (two artists) or `Title (feat. B)`, and some bands
//! really have `&` in their one name. Each user has a perturbed taste, a time zone, a
//! daily, weekly and seasonal rhythm with holidays, sessions and album runs, skips
//! (< 30 s) and podcast episodes (which importers must drop), and plays stopped early
//! that still count.
//!
//! Formats written per user: ListenBrainz JSONL and the older JSON array (newest first),
//! ListenBrainz `submit-listens` payloads, a Last.fm CSV (minute precision, newest
//! first, no header, ~3% without album), Spotify's extended streaming history (`ts` is
//! the *end* of playback; skips, podcasts, private sessions and device data as Spotify
//! writes them), a Rockbox `.scrobbler.log` (skips marked `S`) and a Maloja export
//! (every artist of a track listed). `manifest.json` holds the parameters and the truth
//! for a reader; tests use the typed [`Fixture`].
//!
//! Same parameters give byte-identical files: the random numbers come from
//! `Xoshiro256PlusPlus` (a portable generator) seeded from blake3 of a label, and no
//! hash map order reaches the output.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt as _, SeedableRng};
use serde_json::{Value, json};

/// Which files to write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Out {
    /// ListenBrainz export, JSON array (older style).
    ListenBrainzJson,
    ListenBrainzJsonl,
    /// ListenBrainz `submit-listens` payloads.
    Submit,
    LastfmCsv,
    Spotify,
    Rockbox,
    Maloja,
}

pub const ALL: &[Out] = &[
    Out::ListenBrainzJson,
    Out::ListenBrainzJsonl,
    Out::Submit,
    Out::LastfmCsv,
    Out::Spotify,
    Out::Rockbox,
    Out::Maloja,
];

/// The generator's knobs (defaults as in the reference generator).
#[derive(Clone, Debug)]
pub struct Params {
    pub seed: String,
    pub users: usize,
    /// Listens over all users.
    pub scrobbles: usize,
    pub artists: usize,
    pub tracks: usize,
    pub years: f64,
    /// Unix second (UTC midnight) the histories end before.
    pub end: i64,
    pub feat_rate: f64,
    pub skip_rate: f64,
    pub podcast_rate: f64,
    pub formats: Vec<Out>,
    pub lb_batch: usize,
    pub spotify_per_file: usize,
    /// Top-N of the ground truth per user.
    pub top: usize,
}

/// 2026-01-01T00:00:00Z.
pub const END_2026: i64 = 1_767_225_600;

impl Default for Params {
    fn default() -> Params {
        Params {
            seed: "hearsay".into(),
            users: 1,
            scrobbles: 100_000,
            artists: 5000,
            tracks: 50_000,
            years: 4.0,
            end: END_2026,
            feat_rate: 0.05,
            skip_rate: 0.05,
            podcast_rate: 0.005,
            formats: ALL.to_vec(),
            lb_batch: 500,
            spotify_per_file: 15_000,
            top: 25,
        }
    }
}

/// One catalogue track as the truth knows it.
#[derive(Clone, Debug)]
pub struct CatalogTrack {
    /// Every credited artist, main first.
    pub artists: Vec<String>,
    /// As a typical scrobbler sends them.
    pub display_artist: String,
    pub display_title: String,
}

/// What one user's files hold.
#[derive(Clone, Debug, Default)]
pub struct UserTruth {
    pub name: String,
    pub listens: u64,
    /// Plays under 30 s (Spotify and Rockbox only).
    pub skips: u64,
    /// Podcast episodes (Spotify only).
    pub podcasts: u64,
    pub listens_per_year: BTreeMap<i16, u64>,
    pub distinct_tracks: u64,
    /// (artist, listens), every artist of a track credited; ties by name.
    pub top_artists: Vec<(String, u64)>,
    /// (artists, title, listens); ties by catalogue id.
    pub top_tracks: Vec<(Vec<String>, String, u64)>,
    pub files: Files,
}

/// Paths of one user's files (absolute).
#[derive(Clone, Debug, Default)]
pub struct Files {
    pub listenbrainz_jsonl: Option<PathBuf>,
    pub listenbrainz_json: Option<PathBuf>,
    pub submit: Vec<PathBuf>,
    pub lastfm_csv: Option<PathBuf>,
    pub spotify_dir: Option<PathBuf>,
    pub spotify: Vec<PathBuf>,
    pub rockbox: Option<PathBuf>,
    pub maloja: Option<PathBuf>,
}

/// A generated fixture: the directory, the catalogue and each user's truth.
pub struct Fixture {
    pub catalog: Vec<CatalogTrack>,
    pub users: Vec<UserTruth>,
}

/// Generates into `dir` (created; emptied first).
pub fn generate(dir: &Path, p: &Params) -> std::io::Result<Fixture> {
    assert!(p.users >= 1 && p.scrobbles >= p.users && p.tracks >= p.artists, "bad fixture parameters {p:?}");
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let cat = Catalog::new(&p.seed, p.artists, p.tracks, p.feat_rate);
    let mut urng = Rng::new(&format!("{}:volumes", p.seed));
    let volumes: Vec<f64> = (0..p.users).map(|_| urng.lognormal(0.0, 0.6)).collect();
    let mut per_user: Vec<usize> = largest_remainder(p.scrobbles, &volumes).into_iter().map(|n| n.max(1)).collect();
    while per_user.iter().sum::<usize>() > p.scrobbles {
        let i = (0..per_user.len()).max_by_key(|&i| (per_user[i], std::cmp::Reverse(i))).unwrap_or(0);
        per_user[i] -= 1;
    }
    let width = 4.max(p.users.to_string().len());
    let mut users = Vec::new();
    let mut manifest_users = Vec::new();
    for (u, &n) in per_user.iter().enumerate() {
        let name = format!("user{:0width$}", u + 1);
        let (events, tz) = user_timeline(&cat, &p.seed, u, n, p.end, p.years, p.skip_rate, p.podcast_rate);
        let files = write_user(&cat, dir, &name, &events, p)?;
        let listens: Vec<&Event> = events.iter().filter(|e| e.kind == Kind::Listen).collect();
        let mut truth = truth(&cat, &listens, p.top);
        truth.name = name.clone();
        truth.listens = listens.len() as u64;
        truth.skips = events.iter().filter(|e| e.kind == Kind::Skip).count() as u64;
        truth.podcasts = events.iter().filter(|e| e.kind == Kind::Podcast).count() as u64;
        for e in &listens {
            *truth.listens_per_year.entry(year_of(e.at)).or_default() += 1;
        }
        let unique: HashSet<i64> = listens.iter().map(|e| e.at).collect();
        assert_eq!(unique.len(), listens.len(), "listen timestamps are unique per user");
        truth.files = files;
        manifest_users.push(json!({
            "username": name, "listens": truth.listens, "skips": truth.skips, "podcasts": truth.podcasts,
            "tz_offset_hours": tz,
            "listens_per_year": truth.listens_per_year.iter().map(|(y, n)| (y.to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
            "top_artists": truth.top_artists.iter().map(|(a, n)| json!({"artist": a, "listens": n})).collect::<Vec<_>>(),
            "top_tracks": truth.top_tracks.iter().map(|(a, t, n)| json!({"artists": a, "title": t, "listens": n})).collect::<Vec<_>>(),
        }));
        users.push(truth);
    }
    let catalog: Vec<CatalogTrack> = (0..cat.tracks.len())
        .map(|t| {
            let (display_artist, display_title) = cat.display(t);
            CatalogTrack { artists: cat.credited(t), display_artist, display_title }
        })
        .collect();
    let manifest = json!({
        "generator": "hearsay tests/it/gen_history.rs",
        "params": format!("{p:?}"),
        "catalog": {"artists": cat.artists.len(), "tracks": cat.tracks.len(), "albums": cat.albums.len(),
            "artists_with_ampersand_in_name": cat.artists.iter().filter(|a| a.contains(" & ")).count()},
        "notes": [
            "listens = scrobbles. Spotify and Rockbox also hold skips (< 30 s), Spotify podcast episodes: importers drop those.",
            "Spotify ts = end of playback; the other formats carry the start time.",
            "Last.fm CSV: minute precision (UTC), newest first, no header; ~3% of rows without album.",
            "Guests: 'A feat. B', 'A & B' (two artists) or 'Title (feat. B)'; names with ' & ' and no guest are one artist.",
        ],
        "users": manifest_users,
    });
    std::fs::write(dir.join("manifest.json"), serde_json::to_vec_pretty(&manifest)?)?;
    Ok(Fixture { catalog, users })
}

// ---------------------------------------------------------------------------------
// random numbers, with the distributions the reference generator uses
// ---------------------------------------------------------------------------------

struct Rng(Xoshiro256PlusPlus);

impl Rng {
    fn new(label: &str) -> Rng {
        Rng(Xoshiro256PlusPlus::from_seed(*blake3::hash(label.as_bytes()).as_bytes()))
    }
    /// Uniform in [0, 1).
    fn random(&mut self) -> f64 {
        self.0.random::<f64>()
    }
    fn uniform(&mut self, a: f64, b: f64) -> f64 {
        a + (b - a) * self.random()
    }
    /// Uniform integer in [a, b].
    fn int(&mut self, a: i64, b: i64) -> i64 {
        self.0.random_range(a..=b)
    }
    /// Uniform index in [0, n).
    fn below(&mut self, n: usize) -> usize {
        self.0.random_range(0..n)
    }
    fn choice<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
    fn word(&mut self, pool: &[&'static str]) -> &'static str {
        pool[self.below(pool.len())]
    }
    /// Standard normal by Box–Muller.
    fn gauss(&mut self, mu: f64, sigma: f64) -> f64 {
        let u1 = 1.0 - self.random();
        let u2 = self.random();
        mu + sigma * (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
    fn lognormal(&mut self, mu: f64, sigma: f64) -> f64 {
        self.gauss(mu, sigma).exp()
    }
    fn expo(&mut self, lambda: f64) -> f64 {
        -(1.0 - self.random()).ln() / lambda
    }
    fn pareto(&mut self, alpha: f64) -> f64 {
        (1.0 - self.random()).powf(-1.0 / alpha)
    }
    /// Index drawn from a cumulative weight table.
    fn index_by_cumulative(&mut self, cum: &[f64]) -> usize {
        let x = self.random() * cum[cum.len() - 1];
        cum.partition_point(|&c| c <= x).min(cum.len() - 1)
    }
}

fn zipf_cum(n: usize, s: f64) -> Vec<f64> {
    let mut acc = 0.0;
    (0..n)
        .map(|i| {
            acc += 1.0 / (i as f64 + 1.0).powf(s);
            acc
        })
        .collect()
}

/// Splits `total` in proportion to `weights`, summing exactly.
fn largest_remainder(total: usize, weights: &[f64]) -> Vec<usize> {
    let sum: f64 = weights.iter().sum();
    let raw: Vec<f64> = weights.iter().map(|w| total as f64 * w / sum).collect();
    let mut base: Vec<usize> = raw.iter().map(|x| *x as usize).collect();
    let rest = total.saturating_sub(base.iter().sum());
    let mut order: Vec<usize> = (0..raw.len()).collect();
    order.sort_by(|&a, &b| (raw[b] - base[b] as f64).total_cmp(&(raw[a] - base[a] as f64)).then(a.cmp(&b)));
    for &i in order.iter().take(rest) {
        base[i] += 1;
    }
    base
}

// ---------------------------------------------------------------------------------
// the catalogue
// ---------------------------------------------------------------------------------

#[rustfmt::skip]
const FIRST: &[&str] = &[
    "Anna", "James", "Maria", "John", "Lena", "David", "Sofia", "Lucas", "Mia", "Noah", "Emma", "Leon", "Clara",
    "Adam", "Nina", "Oscar", "Ida", "Felix", "Laura", "Hugo", "Alice", "Victor", "Eva", "Max", "Julia", "Paul",
    "Sara", "Tom", "Lily", "Jack", "Rosa", "Otto", "Vera", "Sam", "Iris", "Ben", "Nora", "Theo", "Mara", "Elias",
    "Kenji", "Yuki", "Mateo", "Lucia", "Pedro", "Ines", "Astrid", "Lars", "Piotr", "Olga", "Ravi", "Aisha", "Zoë",
    "José", "Björn", "Chloé", "Søren", "Łukasz", "Ángel", "François", "Renée", "Jürgen", "Núria", "Åsa", "Dvořák",
    "Íñigo",
];
#[rustfmt::skip]
const LAST: &[&str] = &[
    "Smith", "Miller", "Jones", "Brown", "Garcia", "Fischer", "Weber", "Martin", "Bernard", "Rossi", "Novak",
    "Silva", "Santos", "Costa", "Olsen", "Berg", "Lind", "Kowalski", "Nowak", "Ivanova", "Petrov", "Tanaka",
    "Suzuki", "Kim", "Park", "Chen", "Wang", "Singh", "Khan", "Moreau", "Laurent", "Dubois", "Meyer", "Wagner",
    "Becker", "Klein", "Wolf", "Young", "Hall", "King", "Wright", "Green", "Müller", "Sørensen", "Ångström", "Nuñez",
    "Gómez", "Šimek", "Żak", "Óskarsdóttir", "Ñañez", "Čapek", "Håkansson", "Lefèvre",
];
#[rustfmt::skip]
const ADJ: &[&str] = &[
    "Silent", "Electric", "Golden", "Broken", "Velvet", "Neon", "Hollow", "Wild", "Crimson", "Lonely", "Bright",
    "Frozen", "Burning", "Paper", "Glass", "Silver", "Midnight", "Distant", "Secret", "Lazy", "Sweet", "Bitter",
    "Endless", "Quiet", "Fading", "Hidden", "Lucky", "Rising", "Falling", "Painted", "Savage", "Gentle", "Cosmic",
    "Northern", "Southern", "Little", "Big", "Strange", "Blue", "Black", "White", "Red", "Green", "Young", "Old",
];
#[rustfmt::skip]
const NOUN: &[&str] = &[
    "Heart", "River", "Mountain", "Ocean", "Shadow", "Light", "Dream", "Fire", "Rain", "Star", "Moon", "Sun", "City",
    "Garden", "Machine", "Mirror", "Echo", "Wave", "Storm", "Road", "Door", "Window", "Ghost", "Wolf", "Bird",
    "Tiger", "Sky", "Island", "Forest", "Desert", "Train", "Engine", "Signal", "Radio", "Satellite", "Planet",
    "Flower", "Stone", "Bridge", "Tower", "Harbor", "Lantern", "Thunder", "Summer", "Winter", "Autumn", "Spring",
    "Kingdom",
];
#[rustfmt::skip]
const SYLL: &[&str] = &[
    "ka", "lo", "mi", "ra", "ve", "no", "ta", "shi", "ze", "lu", "bo", "ri", "an", "el", "or", "is", "um", "ex",
    "ya", "qu", "fa", "dre", "kin", "sol", "mar", "vin", "tor", "ael", "ion", "ost",
];
#[rustfmt::skip]
const TITLE_WORDS: &[&str] = &[
    "love", "night", "day", "time", "way", "life", "world", "home", "heart", "light", "dance", "fire", "gold",
    "blue", "summer", "rain", "dream", "road", "sky", "tonight", "forever", "again", "alone", "together", "falling",
    "running", "waiting", "burning", "shining", "lost", "found", "wild", "free", "slow", "fast", "young", "midnight",
    "morning", "ocean", "stars", "memories", "shadows", "promises", "letters", "echoes", "highway", "paradise",
    "gravity", "silence", "thunder", "mirrors", "satellites", "horizon",
];
#[rustfmt::skip]
const TITLE_SUFFIXES: &[&str] = &[
    "(Live)", "(Acoustic)", "(Demo)", "(Acoustic Version)", "(Remastered 2011)", "(Radio Edit)",
    "- Live at the Roundhouse", "(Extended Mix)", "(Interlude)", "Pt. 2",
];
const KATAKANA: &str = "アカサタナハマヤラワキシチニヒミリクスツヌフムユルケセテネヘメレコソトノホモヨロン";
const KANJI: &str = "山川花月星夜風雪光海空森雨桜青白黒赤金銀心夢愛";
const HANGUL: &str = "가나다라마바사아자차카타파하서울별빛사랑꿈노래";
const HANZI: &str = "天地人和平安春秋东西南北明月清风白云";
const EMOJI: &[&str] = &["🌙", "🔥", "💔", "✨", "🎧", "🌊", "🦋", "🌈", "⚡", "🎵"];
#[rustfmt::skip]
const ALBUM_WORDS: &[&str] = &[
    "Sessions", "Chronicles", "Tapes", "Stories", "Songs", "Collection", "Diaries", "Letters", "Atlas", "Archive",
    "Anthology", "Reflections", "Visions",
];
const DISAMBIGUATION: &[&str] = &["II", "Trio", "Band", "Project", "Collective", "Ensemble", "Quartet"];
#[rustfmt::skip]
const PLATFORMS: &[&str] = &[
    "Android OS 13 API 33 (Google, Pixel 7)", "iOS 16.5 (iPhone14,5)", "Windows 10 (10.0.19045; x64)",
    "OS X 13.4.1 [arm 2]", "web_player linux ;chrome 114.0.0.0", "Partner sonos_one",
];
const REASON_START: &[&str] = &["trackdone", "trackdone", "trackdone", "trackdone", "clickrow", "fwdbtn", "playbtn"];
const HOUR_PROFILE: [f64; 24] = [
    2.0, 1.0, 0.5, 0.3, 0.2, 0.3, 1.0, 3.0, 5.0, 4.0, 3.0, 3.0, 4.0, 4.0, 3.0, 3.0, 4.0, 6.0, 7.0, 8.0, 8.0, 7.0, 5.0,
    3.0,
];
const WEEKDAY_FACTOR: [f64; 7] = [0.95, 0.95, 1.0, 1.0, 1.15, 1.2, 0.9];
const COUNTRIES: &[&str] = &["DE", "US", "GB", "FR", "JP", "BR", "SE", "PL", "KR", "ES"];
/// Average listens a day above which a user's history grows longer.
const MAX_PER_DAY: usize = 150;

fn chars(rng: &mut Rng, pool: &str, n: usize) -> String {
    let pool: Vec<char> = pool.chars().collect();
    (0..n).map(|_| *rng.choice(&pool)).collect()
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    c.next().map(|f| f.to_uppercase().chain(c).collect()).unwrap_or_default()
}

fn title_case(s: &str) -> String {
    s.split(' ').map(capitalize).collect::<Vec<_>>().join(" ")
}

/// Accent-, case- and space-insensitive key, to keep names distinct as a server sees them.
fn norm_key(s: &str) -> String {
    use unicode_normalization::UnicodeNormalization;
    let folded: String =
        s.nfkd().filter(|c| !unicode_normalization::char::is_combining_mark(*c)).collect::<String>().to_lowercase();
    folded.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn cjk(s: &str) -> bool {
    s.chars().any(|c| u32::from(c) > 0x2E80)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Guest {
    Feat,
    Amp,
    Title,
}

struct Track {
    artist: usize,
    title: String,
    feat: Option<(usize, Guest)>,
    album: String,
    album_id: usize,
    track_number: usize,
    length: i64,
    has_mbid: bool,
    no_album_in_csv: bool,
}

struct Catalog {
    artists: Vec<String>,
    tracks: Vec<Track>,
    /// Artist -> its track ids, most popular first.
    artist_tracks: Vec<Vec<usize>>,
    artist_track_cum: Vec<Vec<f64>>,
    albums: Vec<Vec<usize>>,
}

impl Catalog {
    fn new(seed: &str, n_artists: usize, n_tracks: usize, feat_rate: f64) -> Catalog {
        let mut rng = Rng::new(&format!("{seed}:catalog"));
        let artists = make_artists(&mut rng, n_artists);
        let weights: Vec<f64> = (0..n_artists).map(|r| 1.0 / ((r + 1) as f64).sqrt()).collect();
        let extra = largest_remainder(n_tracks - n_artists, &weights);
        let mut cat = Catalog {
            artists,
            tracks: Vec::new(),
            artist_tracks: Vec::new(),
            artist_track_cum: Vec::new(),
            albums: Vec::new(),
        };
        for (a, e) in extra.iter().enumerate() {
            let ids = cat.make_artist_tracks(&mut rng, a, 1 + e, feat_rate);
            cat.artist_track_cum.push(zipf_cum(ids.len(), 1.0));
            cat.artist_tracks.push(ids);
        }
        cat
    }

    fn make_artist_tracks(&mut self, rng: &mut Rng, a: usize, count: usize, feat_rate: f64) -> Vec<usize> {
        let name = self.artists[a].clone();
        let (mut ids, mut titles, mut albums) = (Vec::new(), HashSet::new(), HashSet::new());
        let mut remaining = count;
        while remaining > 0 {
            let single = remaining <= 2 || rng.random() < 0.08;
            let size = if single { 1 } else { remaining.min(rng.int(6, 14) as usize) };
            let album = if single {
                None
            } else {
                let mut album = album_title(rng, &name);
                while albums.contains(&norm_key(&album)) {
                    album =
                        if rng.random() < 0.5 { format!("{album} (Deluxe Edition)") } else { album_title(rng, &name) };
                }
                albums.insert(norm_key(&album));
                Some(album)
            };
            let album_id = self.albums.len();
            let mut album_tracks = Vec::new();
            for track_number in 1..=size {
                let mut title = track_title(rng, &name);
                while titles.contains(&norm_key(&title)) {
                    title = track_title(rng, &name);
                }
                titles.insert(norm_key(&title));
                let id = self.tracks.len();
                let length = rng.lognormal(215f64.ln(), 0.3).clamp(60.0, 900.0) as i64;
                let mut feat = None;
                if rng.random() < feat_rate && self.artists.len() > 1 {
                    let mut g = (self.artists.len() - 1).min(rng.pareto(1.2) as usize - 1 + rng.int(0, 30) as usize);
                    if g == a {
                        g = (a + 1) % self.artists.len();
                    }
                    let x = rng.random();
                    feat = Some((
                        g,
                        if x < 0.4 {
                            Guest::Feat
                        } else if x < 0.7 {
                            Guest::Amp
                        } else {
                            Guest::Title
                        },
                    ));
                }
                self.tracks.push(Track {
                    artist: a,
                    album: album.clone().unwrap_or_else(|| title.clone()),
                    title,
                    feat,
                    album_id,
                    track_number,
                    length,
                    has_mbid: rng.random() < 0.5,
                    no_album_in_csv: rng.random() < 0.03,
                });
                ids.push(id);
                album_tracks.push(id);
            }
            self.albums.push(album_tracks);
            remaining -= size;
        }
        // Popularity order within an artist is not album order.
        for i in (1..ids.len()).rev() {
            let j = rng.below(i + 1);
            ids.swap(i, j);
        }
        ids
    }

    /// Every artist credited on a track, main first.
    fn credited(&self, t: usize) -> Vec<String> {
        let tr = &self.tracks[t];
        let mut out = vec![self.artists[tr.artist].clone()];
        if let Some((g, _)) = tr.feat {
            out.push(self.artists[g].clone());
        }
        out
    }

    /// (artist, title) as a typical scrobbler sends them.
    fn display(&self, t: usize) -> (String, String) {
        let tr = &self.tracks[t];
        let (a, title) = (self.artists[tr.artist].clone(), tr.title.clone());
        match tr.feat {
            None => (a, title),
            Some((g, Guest::Feat)) => (format!("{a} feat. {}", self.artists[g]), title),
            Some((g, Guest::Amp)) => (format!("{a} & {}", self.artists[g]), title),
            Some((g, Guest::Title)) => (a, format!("{title} (feat. {})", self.artists[g])),
        }
    }

    /// Spotify: the album artist only, guests in the title.
    fn spotify_display(&self, t: usize) -> (String, String) {
        let tr = &self.tracks[t];
        let (a, title) = (self.artists[tr.artist].clone(), tr.title.clone());
        match tr.feat {
            None => (a, title),
            Some((g, style)) => {
                let word = if style == Guest::Amp { "with" } else { "feat." };
                (a, format!("{title} ({word} {})", self.artists[g]))
            }
        }
    }

    /// A track of artist `a` by the artist's own popularity.
    fn track_of(&self, rng: &mut Rng, a: usize) -> usize {
        self.artist_tracks[a][rng.index_by_cumulative(&self.artist_track_cum[a])]
    }
}

fn artist_name(rng: &mut Rng) -> String {
    let r = rng.random();
    let syllables = |rng: &mut Rng, n: usize| capitalize(&(0..n).map(|_| *rng.choice(SYLL)).collect::<String>());
    if r < 0.30 {
        format!("{} {}", rng.choice(FIRST), rng.choice(LAST))
    } else if r < 0.48 {
        format!("The {} {}s", rng.choice(ADJ), rng.choice(NOUN))
    } else if r < 0.62 {
        format!("{} {}", rng.choice(ADJ), rng.choice(NOUN))
    } else if r < 0.78 {
        let n = rng.int(2, 3) as usize;
        let w = syllables(rng, n);
        if rng.random() < 0.6 { w } else { format!("{w} {}", rng.choice(NOUN)) }
    } else if r < 0.82 {
        // Bands whose one name contains '&'.
        if rng.random() < 0.5 {
            format!("{} & {}", rng.choice(NOUN), rng.choice(NOUN))
        } else {
            format!("{} & the {}s", rng.choice(LAST), rng.choice(NOUN))
        }
    } else if r < 0.88 {
        let n = rng.int(3, 6) as usize;
        chars(rng, KATAKANA, n)
    } else if r < 0.91 {
        let n = rng.int(2, 4) as usize;
        chars(rng, KANJI, n)
    } else if r < 0.94 {
        let n = rng.int(2, 4) as usize;
        chars(rng, HANGUL, n)
    } else if r < 0.96 {
        let n = rng.int(2, 3) as usize;
        chars(rng, HANZI, n)
    } else if r < 0.98 {
        format!("{} {} {}", rng.choice(ADJ), rng.choice(EMOJI), rng.choice(NOUN))
    } else {
        format!("DJ {}", syllables(rng, 2))
    }
}

fn make_artists(rng: &mut Rng, n: usize) -> Vec<String> {
    let (mut seen, mut out) = (HashSet::new(), Vec::new());
    while out.len() < n {
        let mut name = artist_name(rng);
        if seen.contains(&norm_key(&name)) {
            name = format!("{name} {}", rng.choice(DISAMBIGUATION));
            if seen.contains(&norm_key(&name)) {
                continue;
            }
        }
        seen.insert(norm_key(&name));
        out.push(name);
    }
    out
}

fn track_title(rng: &mut Rng, artist: &str) -> String {
    if cjk(artist) && rng.random() < 0.6 {
        let pool = if artist.chars().any(|c| KATAKANA.contains(c) || KANJI.contains(c)) {
            format!("{KATAKANA}{KANJI}")
        } else {
            HANGUL.to_owned()
        };
        let n = rng.int(2, 6) as usize;
        return chars(rng, &pool, n);
    }
    let n = *rng.choice(&[1, 1, 2, 2, 2, 3, 3, 4]);
    let words: Vec<&str> = (0..n).map(|_| *rng.choice(TITLE_WORDS)).collect();
    let t = title_case(&words.join(" "));
    let r = rng.random();
    if r < 0.04 {
        format!("{t} {}", rng.choice(TITLE_SUFFIXES))
    } else if r < 0.06 {
        format!("{t} {}", rng.choice(EMOJI))
    } else if r < 0.08 {
        format!("{t}, Pt. {}", rng.int(1, 3))
    } else {
        t
    }
}

fn album_title(rng: &mut Rng, artist: &str) -> String {
    let r = rng.random();
    if r < 0.35 {
        format!("{} {}", rng.choice(ADJ), rng.choice(NOUN))
    } else if r < 0.55 {
        format!("{} {}", capitalize(rng.word(TITLE_WORDS)), rng.choice(ALBUM_WORDS))
    } else if r < 0.65 {
        format!("{} {}", rng.choice(NOUN), rng.choice(&["I", "II", "III", "IV"]))
    } else if r < 0.72 {
        // One title, many artists.
        "Greatest Hits".to_owned()
    } else if r < 0.78 && cjk(artist) {
        chars(rng, KANJI, 3)
    } else {
        let n = rng.int(1, 3) as usize;
        let words: Vec<&str> = (0..n).map(|_| *rng.choice(TITLE_WORDS)).collect();
        title_case(&words.join(" "))
    }
}

// ---------------------------------------------------------------------------------
// one user's timeline
// ---------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Listen,
    /// A play under 30 s.
    Skip,
    Podcast,
}

struct Event {
    /// Start of the play, unix seconds.
    at: i64,
    kind: Kind,
    /// Track id (unused for podcasts).
    track: usize,
    ms_played: i64,
    /// Listens: stopped early (still a scrobble); podcasts: the episode number.
    extra: i64,
}

#[allow(clippy::too_many_arguments)]
fn user_timeline(
    cat: &Catalog,
    seed: &str,
    u: usize,
    n_listens: usize,
    end: i64,
    years: f64,
    skip_rate: f64,
    podcast_rate: f64,
) -> (Vec<Event>, i64) {
    let mut rng = Rng::new(&format!("{seed}:user:{u}"));
    let n_art = cat.artists.len();
    let tz = *rng.choice(&[-8, -5, -3, 0, 0, 1, 1, 2, 3, 5, 8, 9]);
    // Personal taste: the global ranking perturbed, then Zipf over it.
    let sigma = rng.uniform(0.6, 1.4);
    let mut keys: Vec<(f64, usize)> = (0..n_art).map(|i| (((i + 1) as f64).ln() + rng.gauss(0.0, sigma), i)).collect();
    keys.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let pref: Vec<usize> = keys.into_iter().map(|(_, i)| i).collect();
    let exponent = rng.uniform(0.9, 1.1);
    let cum = zipf_cum(n_art, exponent);

    let base_days = (years * 365.25) as i64;
    let joined = if u > 0 { (base_days as f64 * rng.uniform(0.0, 0.3)) as i64 } else { 0 };
    let days = 30.max(base_days - joined).max(n_listens.div_ceil(MAX_PER_DAY) as i64);
    let start_day = end.div_euclid(86_400) - days;
    let phase = rng.uniform(0.0, 2.0 * std::f64::consts::PI);
    let drift = rng.uniform(-0.5, 0.5);
    let mut weights = Vec::new();
    let mut vacation = 0;
    for d in 0..days {
        let weekday = (start_day + d + 3).rem_euclid(7) as usize; // 1970-01-01 was a Thursday
        let mut f = WEEKDAY_FACTOR[weekday];
        f *= 1.0 + 0.15 * (2.0 * std::f64::consts::PI * d as f64 / 365.25 + phase).sin();
        f *= 1.0 + drift * (d as f64 / days as f64 - 0.5);
        f *= rng.lognormal(0.0, 0.5);
        if vacation > 0 {
            vacation -= 1;
            f *= 0.03;
        } else if rng.random() < 0.006 {
            vacation = rng.int(3, 14);
        }
        weights.push(f.max(1e-6));
    }
    let per_day = largest_remainder(n_listens, &weights);
    let mut hours = [0.0; 24];
    let mut acc = 0.0;
    for (h, w) in HOUR_PROFILE.iter().enumerate() {
        acc += w;
        hours[h] = acc;
    }

    let mut events = Vec::new();
    let mut cursor = 0i64;
    for (d, &count) in per_day.iter().enumerate() {
        if count == 0 {
            continue;
        }
        let local_midnight = (start_day + d as i64) * 86_400 - tz * 3600;
        let mut sessions = Vec::new();
        let mut left = count;
        while left > 0 {
            let size = left.min(1 + rng.expo(1.0 / 11.0) as usize);
            let hour = rng.index_by_cumulative(&hours) as i64;
            sessions.push((local_midnight + hour * 3600 + rng.int(0, 3599), size));
            left -= size;
        }
        sessions.sort();
        for (start, size) in sessions {
            let mut t = start.max(cursor + rng.int(5, 120));
            let album = if rng.random() < 0.22 {
                let a = pref[rng.index_by_cumulative(&cum)];
                let album_ids: Vec<usize> = cat.artist_tracks[a].iter().map(|&x| cat.tracks[x].album_id).collect();
                let album = &cat.albums[*rng.choice(&album_ids)];
                let pos = if rng.random() < 0.7 { 0 } else { rng.below(album.len()) };
                Some((album, pos))
            } else {
                None
            };
            let mut album = album;
            for _ in 0..size {
                if podcast_rate > 0.0 && rng.random() < podcast_rate {
                    let ms = rng.int(15, 60) * 60_000;
                    events.push(Event { at: t, kind: Kind::Podcast, track: 0, ms_played: ms, extra: rng.int(0, 999) });
                    t += ms / 1000 + rng.int(1, 30);
                }
                if skip_rate > 0.0 && rng.random() < skip_rate {
                    let a = pref[rng.index_by_cumulative(&cum)];
                    let track = cat.track_of(&mut rng, a);
                    let ms = rng.int(1500, 29_000);
                    events.push(Event { at: t, kind: Kind::Skip, track, ms_played: ms, extra: 0 });
                    t += ms / 1000 + 1;
                }
                let track = match &mut album {
                    Some((tracks, pos)) => {
                        let id = tracks[*pos % tracks.len()];
                        *pos += 1;
                        id
                    }
                    None => {
                        let a = pref[rng.index_by_cumulative(&cum)];
                        cat.track_of(&mut rng, a)
                    }
                };
                let length = cat.tracks[track].length;
                let (ms, extra) = if rng.random() < 0.1 {
                    // Stopped early, but still a scrobble.
                    (rng.int(30.max(length / 2), length) * 1000 + rng.int(0, 999), 1)
                } else {
                    (length * 1000 - rng.int(0, 1499), 0)
                };
                events.push(Event { at: t, kind: Kind::Listen, track, ms_played: ms, extra });
                let gap = if rng.random() < 0.9 { rng.int(0, 3) } else { rng.int(20, 600) };
                t += ms / 1000 + 1 + gap;
            }
            cursor = t;
        }
    }
    // Every event ends before `end` (local rhythms can spill past the last UTC
    // midnight): shift the whole timeline back by whole days.
    if let Some(last) = events.iter().map(|e| e.at + e.ms_played / 1000).max()
        && last >= end
    {
        let shift = ((last - end) / 86_400 + 1) * 86_400;
        for e in &mut events {
            e.at -= shift;
        }
    }
    (events, tz)
}

// ---------------------------------------------------------------------------------
// writers
// ---------------------------------------------------------------------------------

fn utc(t: i64, format: &str) -> String {
    jiff::Timestamp::from_second(t).map(|ts| ts.strftime(format).to_string()).unwrap_or_default()
}

fn year_of(t: i64) -> i16 {
    jiff::Timestamp::from_second(t).map(|ts| ts.to_zoned(jiff::tz::TimeZone::UTC).year()).unwrap_or(0)
}

/// A stable UUID-shaped id for a catalogue thing.
fn det_uuid(parts: &str) -> String {
    let h = blake3::hash(format!("gen_history:{parts}").as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&h.as_bytes()[..16]);
    uuid::Builder::from_custom_bytes(b).into_uuid().to_string()
}

fn spotify_id(track: &str) -> String {
    const B62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let h = blake3::hash(format!("sp:{track}").as_bytes());
    let mut n = u128::from_be_bytes(h.as_bytes()[..16].try_into().unwrap_or([0; 16]));
    (0..22)
        .map(|_| {
            let r = (n % 62) as usize;
            n /= 62;
            B62[r] as char
        })
        .collect()
}

fn lb_listen(cat: &Catalog, user: &str, e: &Event, with_meta: bool) -> Value {
    let (artist, title) = cat.display(e.track);
    let tr = &cat.tracks[e.track];
    let mut info = json!({
        "duration_ms": tr.length * 1000,
        "submission_client": "gen_history",
        "submission_client_version": "1.0",
        "tracknumber": tr.track_number,
        "spotify_id": format!("https://open.spotify.com/track/{}", spotify_id(&e.track.to_string())),
    });
    if tr.has_mbid {
        info["recording_mbid"] = json!(det_uuid(&format!("rec:{}", e.track)));
        info["release_mbid"] = json!(det_uuid(&format!("rel:{}", tr.album_id)));
        let mut mbids = vec![det_uuid(&format!("art:{}", tr.artist))];
        if let Some((g, _)) = tr.feat {
            mbids.push(det_uuid(&format!("art:{g}")));
        }
        info["artist_mbids"] = json!(mbids);
    }
    let md = json!({"artist_name": artist, "track_name": title, "release_name": tr.album, "additional_info": info});
    if with_meta {
        json!({
            "listened_at": e.at, "inserted_at": e.at + e.ms_played / 1000 + 2,
            "recording_msid": det_uuid(&format!("msid:{user}:{artist}:{title}")),
            "user_name": user, "track_metadata": md,
        })
    } else {
        json!({"listened_at": e.at, "track_metadata": md})
    }
}

/// One CSV field, quoted when it must be.
fn csv_field(out: &mut String, s: &str) {
    if s.contains([',', '"', '\n', '\r']) {
        out.push('"');
        out.push_str(&s.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(s);
    }
}

fn write_user(cat: &Catalog, dir: &Path, user: &str, events: &[Event], p: &Params) -> std::io::Result<Files> {
    let udir = dir.join(user);
    std::fs::create_dir_all(&udir)?;
    let mut files = Files::default();
    let listens: Vec<&Event> = events.iter().filter(|e| e.kind == Kind::Listen).collect();
    let has = |o: Out| p.formats.contains(&o);

    if has(Out::ListenBrainzJsonl) || has(Out::ListenBrainzJson) {
        let lines: Vec<Value> = listens.iter().map(|e| lb_listen(cat, user, e, true)).collect();
        if has(Out::ListenBrainzJsonl) {
            let path = udir.join("listens.jsonl");
            let mut f = std::io::BufWriter::new(std::fs::File::create(&path)?);
            for l in &lines {
                serde_json::to_writer(&mut f, l)?;
                f.write_all(b"\n")?;
            }
            f.flush()?;
            files.listenbrainz_jsonl = Some(path);
        }
        if has(Out::ListenBrainzJson) {
            let path = udir.join(format!("{user}_lb-{}.json", utc(p.end, "%Y-%m-%d")));
            let newest_first: Vec<&Value> = lines.iter().rev().collect();
            std::fs::write(&path, serde_json::to_vec(&newest_first)?)?;
            files.listenbrainz_json = Some(path);
        }
    }

    if has(Out::Submit) {
        let sdir = udir.join("submit");
        std::fs::create_dir_all(&sdir)?;
        for (n, chunk) in listens.chunks(p.lb_batch).enumerate() {
            let payload = json!({
                "listen_type": "import",
                "payload": chunk.iter().map(|e| lb_listen(cat, user, e, false)).collect::<Vec<_>>(),
            });
            let path = sdir.join(format!("submit_{n:05}.json"));
            std::fs::write(&path, serde_json::to_vec(&payload)?)?;
            files.submit.push(path);
        }
    }

    if has(Out::LastfmCsv) {
        let path = udir.join(format!("lastfm_{user}.csv"));
        let mut text = String::new();
        for e in listens.iter().rev() {
            let (artist, title) = cat.display(e.track);
            let tr = &cat.tracks[e.track];
            let album = if tr.no_album_in_csv { "" } else { tr.album.as_str() };
            for (i, field) in [artist.as_str(), album, title.as_str()].into_iter().enumerate() {
                if i > 0 {
                    text.push(',');
                }
                csv_field(&mut text, field);
            }
            let _ = writeln!(text, ",{}", utc(e.at, "%d %b %Y %H:%M"));
        }
        std::fs::write(&path, text)?;
        files.lastfm_csv = Some(path);
    }

    if has(Out::Spotify) {
        let sdir = udir.join("spotify");
        std::fs::create_dir_all(&sdir)?;
        let mut rng = Rng::new(&format!("spotify:{user}"));
        let country = *rng.choice(COUNTRIES);
        let first = rng.below(PLATFORMS.len());
        let second = (first + 1 + rng.below(PLATFORMS.len() - 1)) % PLATFORMS.len();
        let mut records = Vec::new();
        for e in events {
            let end = e.at + e.ms_played / 1000;
            let offline = rng.random() < 0.05;
            let platform = if rng.random() < 0.8 { PLATFORMS[first] } else { PLATFORMS[second] };
            let ip = format!("192.0.2.{}", rng.int(1, 254));
            let mut rec = json!({
                "ts": utc(end, "%Y-%m-%dT%H:%M:%SZ"), "platform": platform, "ms_played": e.ms_played,
                "conn_country": country, "ip_addr": ip,
                "audiobook_title": null, "audiobook_uri": null, "audiobook_chapter_uri": null,
                "audiobook_chapter_title": null, "offline": offline,
                "offline_timestamp": if offline { json!(e.at * 1000) } else { Value::Null },
            });
            if e.kind == Kind::Podcast {
                let word = title_case(rng.word(TITLE_WORDS));
                for (k, v) in [
                    ("master_metadata_track_name", Value::Null),
                    ("master_metadata_album_artist_name", Value::Null),
                    ("master_metadata_album_album_name", Value::Null),
                    ("spotify_track_uri", Value::Null),
                    ("episode_name", json!(format!("Episode {}: {word} Talk", e.extra))),
                    ("episode_show_name", json!("The Synthetic Podcast")),
                    (
                        "spotify_episode_uri",
                        json!(format!("spotify:episode:{}", spotify_id(&format!("ep{}", e.extra)))),
                    ),
                    ("reason_start", json!("clickrow")),
                    ("reason_end", json!("endplay")),
                    ("shuffle", json!(false)),
                    ("skipped", json!(false)),
                    ("incognito_mode", json!(false)),
                ] {
                    rec[k] = v;
                }
            } else {
                let (artist, title) = cat.spotify_display(e.track);
                let skipped = e.kind == Kind::Skip;
                let reason_end = if skipped || e.extra == 1 { "fwdbtn" } else { "trackdone" };
                for (k, v) in [
                    ("master_metadata_track_name", json!(title)),
                    ("master_metadata_album_artist_name", json!(artist)),
                    ("master_metadata_album_album_name", json!(cat.tracks[e.track].album)),
                    ("spotify_track_uri", json!(format!("spotify:track:{}", spotify_id(&e.track.to_string())))),
                    ("episode_name", Value::Null),
                    ("episode_show_name", Value::Null),
                    ("spotify_episode_uri", Value::Null),
                    ("reason_start", json!(rng.choice(REASON_START))),
                    ("reason_end", json!(reason_end)),
                    ("shuffle", json!(rng.random() < 0.4)),
                    ("skipped", json!(skipped)),
                    ("incognito_mode", json!(rng.random() < 0.01)),
                ] {
                    rec[k] = v;
                }
            }
            records.push(rec);
        }
        for (i, chunk) in records.chunks(p.spotify_per_file).enumerate() {
            let year = |r: &Value| r["ts"].as_str().map(|s| s[..4].to_owned()).unwrap_or_default();
            let (y0, y1) = (year(&chunk[0]), year(&chunk[chunk.len() - 1]));
            let span = if y0 == y1 { y0 } else { format!("{y0}-{y1}") };
            let path = sdir.join(format!("Streaming_History_Audio_{span}_{i}.json"));
            std::fs::write(&path, serde_json::to_vec_pretty(chunk)?)?;
            files.spotify.push(path);
        }
        files.spotify_dir = Some(sdir);
    }

    if has(Out::Rockbox) {
        let path = udir.join(".scrobbler.log");
        let mut text = String::from("#AUDIOSCROBBLER/1.1\n#TZ/UTC\n#CLIENT/Rockbox ipodvideo $Revision$\n");
        for e in events.iter().filter(|e| e.kind != Kind::Podcast) {
            let (artist, title) = cat.display(e.track);
            let tr = &cat.tracks[e.track];
            let mbid = if tr.has_mbid { det_uuid(&format!("rec:{}", e.track)) } else { String::new() };
            let rating = if e.kind == Kind::Listen { "L" } else { "S" };
            let _ = writeln!(
                text,
                "{artist}\t{}\t{title}\t{}\t{}\t{rating}\t{}\t{mbid}",
                tr.album, tr.track_number, tr.length, e.at
            );
        }
        std::fs::write(&path, text)?;
        files.rockbox = Some(path);
    }

    if has(Out::Maloja) {
        let path = udir.join(format!("maloja_export_{}.json", utc(p.end, "%Y_%m_%d_%H_%M_%S")));
        let scrobbles: Vec<Value> = listens
            .iter()
            .map(|e| {
                let tr = &cat.tracks[e.track];
                json!({"time": e.at, "track": {
                    "artists": cat.credited(e.track), "title": tr.title,
                    "album": {"albumtitle": tr.album, "artists": [cat.artists[tr.artist]]},
                    "length": tr.length}, "duration": e.ms_played / 1000, "origin": "import:gen_history"})
            })
            .collect();
        std::fs::write(&path, serde_json::to_vec(&json!({"maloja": {"export_time": p.end}, "scrobbles": scrobbles}))?)?;
        files.maloja = Some(path);
    }
    Ok(files)
}

fn truth(cat: &Catalog, listens: &[&Event], top: usize) -> UserTruth {
    let (mut artists, mut tracks): (HashMap<String, u64>, BTreeMap<usize, u64>) = Default::default();
    for e in listens {
        for a in cat.credited(e.track) {
            *artists.entry(a).or_default() += 1;
        }
        *tracks.entry(e.track).or_default() += 1;
    }
    let mut top_artists: Vec<(String, u64)> = artists.iter().map(|(a, n)| (a.clone(), *n)).collect();
    top_artists.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    top_artists.truncate(top);
    let mut top_tracks: Vec<(usize, u64)> = tracks.iter().map(|(t, n)| (*t, *n)).collect();
    top_tracks.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    top_tracks.truncate(top);
    UserTruth {
        distinct_tracks: tracks.len() as u64,
        top_artists,
        top_tracks: top_tracks.into_iter().map(|(t, n)| (cat.credited(t), cat.tracks[t].title.clone(), n)).collect(),
        ..UserTruth::default()
    }
}

#[test]
fn the_generator_is_deterministic_and_its_truth_adds_up() {
    let params = Params { users: 2, scrobbles: 3000, artists: 300, tracks: 3000, ..Params::default() };
    let (a, b) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
    let fa = generate(a.path(), &params).expect("generate");
    let fb = generate(b.path(), &params).expect("generate");
    assert_eq!(fa.users.iter().map(|u| u.listens).sum::<u64>(), 3000);
    for (ua, ub) in fa.users.iter().zip(&fb.users) {
        let files = |u: &UserTruth| {
            let f = &u.files;
            let mut v: Vec<PathBuf> =
                [&f.listenbrainz_jsonl, &f.listenbrainz_json, &f.lastfm_csv, &f.rockbox, &f.maloja]
                    .into_iter()
                    .flatten()
                    .cloned()
                    .collect();
            v.extend(f.spotify.iter().cloned());
            v.extend(f.submit.iter().cloned());
            v
        };
        let (pa, pb) = (files(ua), files(ub));
        assert_eq!(pa.len(), pb.len());
        assert!(pa.len() >= 7, "every format written: {pa:?}");
        for (x, y) in pa.iter().zip(&pb) {
            assert_eq!(std::fs::read(x).expect("a"), std::fs::read(y).expect("b"), "{} differs", x.display());
        }
        assert_eq!(ua.listens_per_year.values().sum::<u64>(), ua.listens);
        assert!(ua.skips > 0 && ua.listens > 0);
        let jsonl = std::fs::read_to_string(ua.files.listenbrainz_jsonl.as_ref().expect("jsonl")).expect("read");
        assert_eq!(jsonl.lines().count() as u64, ua.listens);
    }
    // The world has what importers must handle.
    let names: Vec<&str> = fa.catalog.iter().flat_map(|t| t.artists.iter().map(String::as_str)).collect();
    assert!(names.iter().any(|n| n.contains(" & ")), "a band with '&' in its name");
    assert!(names.iter().any(|n| n.chars().any(|c| ('\u{30A0}'..='\u{30FF}').contains(&c))), "katakana");
    assert!(names.iter().any(|n| n.chars().any(|c| ('\u{AC00}'..='\u{D7AF}').contains(&c))), "hangul");
    assert!(fa.catalog.iter().any(|t| t.display_title.contains("(feat. ")), "a guest in the title");
    assert!(fa.catalog.iter().any(|t| t.display_artist.contains(" feat. ")), "a guest in the artist");
}
