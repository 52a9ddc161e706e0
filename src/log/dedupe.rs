//! The duplicate rule, and the name normalisation it relies on.
//!
//! Rule (v1): a listen is a duplicate of another when both belong to the same user, have
//! the same `listened_at` second, and the same *normalised* artist credit and track title.
//! Album, duration, MBIDs and client do not matter: two clients reporting the same play
//! often disagree on those (ListenBrainz keys on them and users see doubles for it).
//! Normalisation is Unicode NFC, then full case folding, then NFC again, with runs of
//! white space collapsed to one space. The comparison uses a 32-bit digest of the
//! normalised pair; two *different* tracks collide only with probability 2^-32, and only
//! matter if they were also played by the same user in the same second.
//! The scrobbler-API issue widens the rule with a time window (`DedupeWindow`). No I/O.

use unicode_normalization::UnicodeNormalization;

use super::listen::TrackRef;

const DEDUPE_CONTEXT: &str = "hearsay 2026-11-23 dedupe key v1";

/// Identity form of a name: NFC, case-folded, white space collapsed.
pub fn normalize_name(name: &str) -> String {
    let folded = caseless::default_case_fold_str(&name.nfc().collect::<String>());
    let mut out = String::with_capacity(folded.len());
    for word in folded.nfc().collect::<String>().split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}

/// The 32-bit digest of a track's normalised artist credit and title.
pub fn dedupe_key(track: &TrackRef) -> u32 {
    let mut hasher = blake3::Hasher::new_derive_key(DEDUPE_CONTEXT);
    hasher.update(normalize_name(&track.artist).as_bytes());
    hasher.update(&[0x1f]);
    hasher.update(normalize_name(&track.title).as_bytes());
    let digest = hasher.finalize();
    let b = digest.as_bytes();
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// How far apart two listens of the same track may be and still count as one play.
/// v1 uses zero: exact duplicates only.
pub const DEDUPE_WINDOW_SECS: i64 = 0;

/// True when a listen at `listened_at` with `key` duplicates one of `existing`
/// (pairs of `listened_at`, key) under the rule above.
pub fn is_duplicate(existing: impl IntoIterator<Item = (i64, u32)>, listened_at: i64, key: u32) -> bool {
    existing.into_iter().any(|(at, k)| k == key && (at - listened_at).abs() <= DEDUPE_WINDOW_SECS)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(is_duplicate([(100, dedupe_key(&a))], 100, dedupe_key(&b)));
    }

    #[test]
    fn a_different_second_or_track_is_a_new_listen() {
        let a = track("Muse", "Uprising", None);
        let b = track("Muse", "Resistance", None);
        assert!(!is_duplicate([(100, dedupe_key(&a))], 101, dedupe_key(&a)));
        assert!(!is_duplicate([(100, dedupe_key(&a))], 100, dedupe_key(&b)));
    }

    fn names() -> impl proptest::strategy::Strategy<Value = String> {
        // Accents (precomposed and combining), CJK, Hangul, emoji, spaces.
        proptest::string::string_regex("[a-zA-Zéèüñßø\u{0301}\u{0308}坂本龍一안녕🎵🌙 ]{0,24}").expect("regex")
    }

    proptest::proptest! {
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
