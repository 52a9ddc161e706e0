//! The duplicate rule, and the name normalisation it relies on.
//!
//! Rule (v3): a listen is a duplicate of another when both belong to the same user, have
//! the same *normalised main artist and bare title*, and start less than a *window*
//! apart: half the track's length, at least 30 s and at most 240 s (30 s when the length
//! is unknown). A second play of a track cannot count as a scrobble before the first has
//! run for half its length or 4 minutes (Last.fm's and ListenBrainz's rule), so two
//! submissions closer than that are one play sent twice: "now playing" and the final
//! scrobble a second apart, the same play through two players or paths, a re-sent
//! backlog, a pause and resume. A real second play starts later and is kept.
//! Album, duration, MBIDs and client do not matter: two clients reporting the same play
//! often disagree on those (ListenBrainz keys on them and users see doubles for it).
//! Normalisation is Unicode NFC, then full case folding, then NFC again, with runs of
//! white space collapsed to one space. The comparison uses a 32-bit digest of the
//! normalised pair; two *different* tracks collide only with probability 2^-32, and only
//! matter if they were also played by the same user within the window.
//! **Main artist and bare title** (v3): sources credit guests differently ("A feat. B" /
//! "Song"; "A" / "Song (feat. B)"; Spotify's "A" / "Song (with B)"; Maloja's artist list
//! [A, B] / "Song"), so the key uses the first listed artist, else the artist string up
//! to the first ` feat. `, ` ft. `, ` featuring `, ` & ` or `, `, and the title without a
//! trailing "(feat. …)", "(ft. …)", "(with …)" or "[feat. …]". This part is fixed, not
//! configurable: every node and every import counts the same plays as one. (No key is
//! stored: the store computes each track's key when it starts.) No I/O.

use unicode_normalization::UnicodeNormalization;

use super::listen::TrackRef;

const DEDUPE_CONTEXT: &str = "hearsay 2026-11-23 dedupe key v3";
super::entry::context_key!(DEDUPE_KEY, DEDUPE_CONTEXT);

/// Identity form of a name: NFC, case-folded, white space collapsed.
pub fn normalize_name(name: &str) -> String {
    // ASCII (most names): NFC changes nothing and full case folding maps only A-Z, so
    // lower-casing is the same result without the two NFC passes and the folding
    // tables (the writer normalises every new track's names; `ascii_is_the_full_rule`).
    if name.is_ascii() {
        // Lower-cased in place: ASCII case changes no byte's length nor any space.
        let mut out = collapse_spaces(name);
        out.make_ascii_lowercase();
        return out;
    }
    full_normalize(name)
}

/// `normalize_name` without the ASCII shortcut.
fn full_normalize(name: &str) -> String {
    let folded = caseless::default_case_fold_str(&name.nfc().collect::<String>());
    collapse_spaces(&folded.nfc().collect::<String>())
}

/// `s` with runs of white space collapsed to one space, none at either end.
pub(crate) fn collapse_spaces(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    out.extend(collapsed_pieces(s));
    out
}

/// The pieces of `collapse_spaces(s)` in order: its words, with `" "` between them. For
/// callers that hash or compare the collapsed form without building it.
pub(crate) fn collapsed_pieces(s: &str) -> impl Iterator<Item = &str> {
    s.split_whitespace().enumerate().flat_map(|(i, word)| [(i > 0).then_some(" "), Some(word)].into_iter().flatten())
}

/// Separators after which an artist string names guests (matched case-insensitively).
const GUEST_SEPARATORS: &[&str] = &[" feat. ", " feat ", " ft. ", " ft ", " featuring ", " & ", ", "];
/// Openers of a trailing guest note in a title.
const TITLE_GUEST_NOTES: &[&str] = &["(feat. ", "(feat ", "(ft. ", "(ft ", "(featuring ", "(with ", "[feat. ", "[ft. "];

/// The main artist of a credit, for duplicate detection only.
/// The cut applies to a listed first artist too, so that a band named "A & B" listed as
/// one artist and the same string sent as a credit agree.
pub fn main_artist(track: &TrackRef) -> &str {
    let name: &str = track.artist_names.first().map_or(&track.artist, String::as_str);
    if name.is_ascii() {
        // ASCII lower-casing moves no byte: the separators are found in place, with no
        // lower-cased copy (the writer cuts every new track's artist, and every track's
        // when it starts; `ascii_cuts_are_the_lowered_cuts`).
        return guest_cut(name, find_ascii_caseless).map_or(name, |i| &name[..i]);
    }
    main_artist_lowered(name)
}

/// `main_artist`'s cut of `name`, found in a lower-cased copy.
fn main_artist_lowered(name: &str) -> &str {
    let lower = name.to_lowercase();
    // Lower-casing can change byte offsets outside ASCII: cut only where it did not.
    if lower.len() != name.len() {
        return name;
    }
    guest_cut(&lower, |hay, sep| hay.find(sep)).map_or(name, |i| &name[..i])
}

/// The artist rule: where the first guest separator after the start begins in `name` (or
/// its lower-cased copy), given a finder of a lower-case separator's first start.
fn guest_cut(name: &str, find: impl Fn(&str, &str) -> Option<usize>) -> Option<usize> {
    GUEST_SEPARATORS.iter().filter_map(|sep| find(name, sep)).filter(|&i| i > 0).min()
}

/// The title without a trailing guest note, for duplicate detection only.
pub fn bare_title(title: &str) -> &str {
    if title.is_ascii() {
        // As in `main_artist`: found in place.
        return note_cut(title, rfind_ascii_caseless).map_or(title, |i| title[..i].trim_end());
    }
    bare_title_lowered(title)
}

/// `bare_title` of `title`, its notes found in a lower-cased copy.
fn bare_title_lowered(title: &str) -> &str {
    let lower = title.to_lowercase();
    if lower.len() != title.len() {
        return title;
    }
    note_cut(&lower, |hay, note| hay.rfind(note)).map_or(title, |i| title[..i].trim_end())
}

/// The title rule: where the last-opening guest note after the start begins in a title
/// closed by `)` or `]` (or its lower-cased copy), given a finder of a lower-case note's
/// last start.
fn note_cut(title: &str, rfind: impl Fn(&str, &str) -> Option<usize>) -> Option<usize> {
    if !(title.ends_with(')') || title.ends_with(']')) {
        return None;
    }
    TITLE_GUEST_NOTES.iter().filter_map(|note| rfind(title, note)).filter(|&i| i > 0).max()
}

/// Where `needle` (lower-case ASCII) first starts in `hay`, ignoring ASCII case.
fn find_ascii_caseless(hay: &str, needle: &str) -> Option<usize> {
    hay.as_bytes().windows(needle.len()).position(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

/// Where `needle` (lower-case ASCII) last starts in `hay`, ignoring ASCII case.
fn rfind_ascii_caseless(hay: &str, needle: &str) -> Option<usize> {
    hay.as_bytes().windows(needle.len()).rposition(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

/// The 32-bit digest of a track's normalised main artist and bare title.
pub fn dedupe_key(track: &TrackRef) -> u32 {
    let mut hasher = super::entry::derive_hasher(&DEDUPE_KEY);
    hasher.update(normalize_name(main_artist(track)).as_bytes());
    hasher.update(&[0x1f]);
    hasher.update(normalize_name(bare_title(&track.title)).as_bytes());
    let digest = hasher.finalize();
    let b = digest.as_bytes();
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Smallest and largest duplicate windows, in seconds.
pub const MIN_WINDOW_SECS: i64 = 30;
pub const MAX_WINDOW_SECS: i64 = 240;

/// How close two listens of one track must start to be one play (see the rule above).
pub fn window_secs(duration_ms: Option<u32>) -> i64 {
    duration_ms.map_or(MIN_WINDOW_SECS, |ms| (i64::from(ms) / 2000).clamp(MIN_WINDOW_SECS, MAX_WINDOW_SECS))
}

/// Exports with minute precision (Last.fm CSV, Spotify account data) stamp a play on
/// the whole minute it started in.
pub const MINUTE: i64 = 60;

/// How far around a listen to look for duplicates.
pub fn search_secs(window: i64) -> i64 {
    window.max(MINUTE)
}

/// True when a listen at `listened_at` with `key` duplicates one of `existing`
/// (pairs of `listened_at`, key): the same track starting less than `window` seconds
/// apart, or, when one of the two is stamped on a whole minute, starting within that
/// minute (it may be a minute-precision copy of the other: the same track cannot be
/// played twice within one minute and both count).
pub fn is_duplicate(existing: impl IntoIterator<Item = (i64, u32)>, listened_at: i64, key: u32, window: i64) -> bool {
    existing.into_iter().any(|(at, k)| k == key && close_enough(at, listened_at, window))
}

/// The time half of the duplicate rule: whether plays starting at `a` and `b` are close
/// enough to be one play if they are of the same track. The store checks this first and
/// reads the track's key only for the few listens that pass.
pub fn close_enough(a: i64, b: i64, window: i64) -> bool {
    let within_minute =
        |whole: i64, exact: i64| whole % MINUTE == 0 && whole <= exact && exact.abs_diff(whole) < MINUTE.unsigned_abs();
    a.abs_diff(b) < window.max(1).unsigned_abs() || within_minute(a, b) || within_minute(b, a)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The key is the first four bytes of `derive_key` of the main artist and bare title
    /// (the context key is hashed once, `entry::derive_hasher`).
    #[test]
    fn a_dedupe_key_is_the_derive_key_of_artist_and_title() {
        let t = track("Björk feat. Thom Yorke", "Nattura (feat. x)", None);
        let want = blake3::derive_key(DEDUPE_CONTEXT, "björk\x1fnattura".as_bytes());
        assert_eq!(dedupe_key(&t), u32::from_be_bytes([want[0], want[1], want[2], want[3]]));
    }

    fn track(artist: &str, title: &str, album: Option<&str>) -> TrackRef {
        TrackRef {
            artist: artist.into(),
            artist_names: vec![],
            artist_mbids: vec![],
            title: title.into(),
            album: album.map(Into::into),
            recording_mbid: None,
            release_mbid: None,
        }
    }

    #[test]
    fn case_composition_and_spacing_do_not_matter() {
        // "é" precomposed vs "e" + combining acute; "ß" folds to "ss".
        let a = track("Beyonc\u{e9}", "Stra\u{df}e  Song", Some("X"));
        let b = track("BEYONCE\u{301}", "strasse song", None);
        assert_eq!(dedupe_key(&a), dedupe_key(&b));
        assert!(is_duplicate([(100, dedupe_key(&a))], 100, dedupe_key(&b), 30));
    }

    #[test]
    fn guests_credited_differently_are_the_same_play() {
        let k = |a: &str, t: &str| dedupe_key(&track(a, t, None));
        let base = k("Jonas Hoffmann", "Night Road");
        assert_eq!(k("Jonas Hoffmann feat. Iris Meyer", "Night Road"), base);
        assert_eq!(k("Jonas Hoffmann & Iris Meyer", "Night Road"), base);
        assert_eq!(k("Jonas Hoffmann", "Night Road (feat. Iris Meyer)"), base);
        assert_eq!(k("Jonas Hoffmann", "Night Road (with Iris Meyer)"), base);
        let listed = TrackRef {
            artist_names: vec!["Jonas Hoffmann".into(), "Iris Meyer".into()],
            ..track("Jonas Hoffmann, Iris Meyer", "Night Road", None)
        };
        assert_eq!(dedupe_key(&listed), base);
        assert_ne!(k("Jonas Hoffmann", "Night Road (Live)"), base);
        assert_ne!(k("Iris Meyer", "Night Road"), base);
    }

    #[test]
    fn a_different_second_or_track_is_a_new_listen() {
        let a = track("Muse", "Uprising", None);
        let b = track("Muse", "Resistance", None);
        assert!(!is_duplicate([(100, dedupe_key(&a))], 130, dedupe_key(&a), 30));
        assert!(is_duplicate([(100, dedupe_key(&a))], 129, dedupe_key(&a), 30));
        assert!(!is_duplicate([(100, dedupe_key(&a))], 100, dedupe_key(&b), 30));
        // A minute-precision copy (12:01:00) of a play at 12:01:45, either way round.
        assert!(is_duplicate([(120, dedupe_key(&a))], 165, dedupe_key(&a), 30));
        assert!(is_duplicate([(165, dedupe_key(&a))], 120, dedupe_key(&a), 30));
        assert!(!is_duplicate([(120, dedupe_key(&a))], 181, dedupe_key(&a), 30));
        let windows =
            (window_secs(None), window_secs(Some(20_000)), window_secs(Some(300_000)), window_secs(Some(900_000)));
        assert_eq!(windows, (30, 30, 150, 240));
    }

    #[test]
    fn times_far_apart_never_overflow_into_one_play() {
        // i64::MIN + 8 is a whole minute; the difference to i64::MAX wraps in an i64.
        for (a, b) in [(i64::MIN + 8, i64::MAX), (i64::MAX, i64::MIN + 8), (i64::MIN, i64::MAX), (0, i64::MIN)] {
            assert!(!close_enough(a, b, 240), "{a} {b}");
        }
        assert!(close_enough(i64::MAX, i64::MAX - 29, 30));
        assert!(close_enough(i64::MIN + 8, i64::MIN + 67, 30), "within the whole minute");
    }

    #[test]
    fn every_ascii_character_takes_the_full_rule() {
        for c in (0u8..128).map(char::from) {
            for name in [format!("{c}"), format!("Ab{c}Cd"), format!(" {c} x{c}{c}Y ")] {
                assert_eq!(normalize_name(&name), full_normalize(&name), "{name:?}");
            }
        }
    }

    fn names() -> impl proptest::strategy::Strategy<Value = String> {
        // Accents (precomposed and combining), CJK, Hangul, emoji, spaces.
        proptest::string::string_regex("[a-zA-Zéèüñßø\u{0301}\u{0308}坂本龍一안녕🎵🌙 ]{0,24}").expect("regex")
    }

    proptest::proptest! {
        #[test]
        fn ascii_cuts_are_the_lowered_cuts(
            name in "(( feat\\. )|( Feat )|( FT\\. )|( ft )|( FEATURING )|( & )|(, )|(\\(feat\\. )|(\\(With )|(\\[Ft\\. )|(\\(FEAT )|[A-Za-z0-9 ()\\[\\]]){0,12}[)\\]]?"
        ) {
            proptest::prop_assert_eq!(find_ascii_caseless(&name, "x").is_some(), name.to_lowercase().contains('x'));
            let track = track(&name, &name, None);
            proptest::prop_assert_eq!(main_artist(&track), main_artist_lowered(&name));
            proptest::prop_assert_eq!(bare_title(&name), bare_title_lowered(&name));
        }

        #[test]
        fn ascii_cuts_take_the_first_separator_and_the_last_note(a in "[A-Za-z]{1,6}", b in "[A-Za-z]{1,6}") {
            let artist = format!("{a} Feat. {b} & {a}");
            let title = format!("{a} (FEAT. {b}) (feat {a})");
            let t = track(&artist, &title, None);
            proptest::prop_assert_eq!(main_artist(&t), a.as_str());
            proptest::prop_assert_eq!(bare_title(&title), format!("{a} (FEAT. {b})"));
            proptest::prop_assert_eq!(main_artist_lowered(&artist), a.as_str());
            proptest::prop_assert_eq!(bare_title_lowered(&title), format!("{a} (FEAT. {b})"));
        }

        #[test]
        fn ascii_is_the_full_rule(name in "[ -~\t\n\x0b\x0c\r\x1c-\x1f\x00]{0,40}") {
            proptest::prop_assert_eq!(normalize_name(&name), full_normalize(&name));
        }

        #[test]
        fn normalisation_is_idempotent_and_ignores_composition(name in names()) {
            let n = normalize_name(&name);
            proptest::prop_assert_eq!(normalize_name(&n), n.clone());
            let decomposed: String = name.nfd().collect();
            proptest::prop_assert_eq!(normalize_name(&decomposed), n.clone());
            let spaced = format!("  {}  ", name.replace(' ', "   "));
            proptest::prop_assert_eq!(normalize_name(&spaced), n);
        }

        #[test]
        fn case_does_not_matter_for_ascii_and_latin(name in "[a-zA-Zéüñø ]{1,20}") {
            proptest::prop_assert_eq!(normalize_name(&name.to_uppercase()), normalize_name(&name.to_lowercase()));
        }
    }

    #[test]
    fn cjk_and_emoji_survive_normalisation() {
        assert_eq!(normalize_name(" 坂本 龍一 "), "坂本 龍一");
        assert_eq!(normalize_name("🎵 Ｂeat"), "🎵 ｂeat");
    }
}
