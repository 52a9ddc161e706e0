//! Artist credits: which artists a listen credits, and the track's title without guests.
//!
//! The one place the credit rule lives (see `docs/ARCHITECTURE.md#artist-credits`):
//! 1. A submission that lists its artists (`artist_names`) is taken as it is.
//! 2. Otherwise the credit string is split at featuring markers (`A feat. B`,
//!    `A ft. B`, `A featuring B`) into a main artist and guests, and a title's
//!    `(feat. B)`, `(ft. B)`, `(featuring B)` or `(with B)` (also in brackets) is
//!    removed from the title and B credited as a guest.
//! 3. Each resulting name is split further at ` & ` and `, ` only with evidence: the
//!    submission's artist MBIDs count exactly the split names, or (only with
//!    `split_known_artists`, off by default: it lets other users' histories decide)
//!    every part is already known on the node as an artist of its own. Without evidence
//!    a name stays whole, so bands like "Simon & Garfunkel" stay one artist.
//!
//! Names keep their submitted spelling for display; identity compares them after
//! `dedupe::normalize_name`. Pure: the "known artist" test is passed in.

use crate::log::TrackRef;
use crate::log::dedupe::{collapse_spaces, normalize_name};

/// How credits are split; from the `[stats]` config section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreditRules {
    /// Markers between a main artist and guests, matched case-insensitively between
    /// spaces (in the artist string) or after an opening bracket (in the title).
    pub feat_markers: Vec<String>,
    /// Whether `A & B` may be split because A and B are both known artists.
    pub split_known_artists: bool,
}

impl Default for CreditRules {
    fn default() -> Self {
        CreditRules {
            feat_markers: ["feat.", "feat", "ft.", "ft", "featuring"].map(String::from).to_vec(),
            split_known_artists: false,
        }
    }
}

/// The artists a track credits (main artist first) and its title without guests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credits {
    pub artists: Vec<String>,
    pub title: String,
}

/// Finds the first marker in `text` (ASCII case-insensitive) preceded and followed by a
/// space; returns (start of the space before, end of the space after). Compared in
/// place: the writer credits every new track, and a lower-cased copy of the text and of
/// each marker was most of the allocations of an import's writer thread.
fn find_marker(text: &str, markers: &[String]) -> Option<(usize, usize)> {
    let bytes = text.as_bytes();
    markers
        .iter()
        .filter_map(|m| {
            let m = m.as_bytes();
            let n = m.len().checked_add(2)?;
            let last = bytes.len().checked_sub(n)?;
            (0..=last)
                .find(|&at| {
                    bytes.get(at) == Some(&b' ')
                        && bytes.get(at + n - 1) == Some(&b' ')
                        && bytes.get(at + 1..at + n - 1).is_some_and(|w| w.eq_ignore_ascii_case(m))
                })
                .map(|at| (at, at + n))
        })
        .min()
}

/// Whether `text` starts with `marker` (ASCII case-insensitive) and a space.
fn starts_with_marker(text: &str, marker: &str) -> bool {
    let (t, m) = (text.as_bytes(), marker.as_bytes());
    t.get(..m.len()).is_some_and(|w| w.eq_ignore_ascii_case(m)) && t.get(m.len()) == Some(&b' ')
}

/// Removes guest brackets from a title: returns the clean title and the guest strings.
fn strip_title_guests(title: &str, markers: &[String]) -> (String, Vec<String>) {
    let title_markers = markers.iter().map(String::as_str).chain(["with"]);
    let mut clean = String::with_capacity(title.len());
    let mut guests = Vec::new();
    let mut i = 0;
    while i < title.len() {
        let rest = &title[i..];
        let close = match rest.as_bytes().first() {
            Some(b'(') => Some(')'),
            Some(b'[') => Some(']'),
            _ => None,
        };
        if let Some(close) = close {
            let inner = &rest[1..];
            let marker = title_markers.clone().find(|m| starts_with_marker(inner, m));
            // The bracket's close after the marker and its space (a marker from the
            // configuration may hold a bracket of its own).
            let end = marker.and_then(|m| inner.get(m.len() + 1..)?.find(close).map(|e| (m, e + m.len() + 1)));
            if let Some((m, end)) = end {
                let guest = title.get(i + 1 + m.len() + 1..i + 1 + end).unwrap_or("");
                if !guest.trim().is_empty() {
                    guests.push(guest.trim().to_owned());
                }
                i += 1 + end + 1;
                continue;
            }
        }
        let ch_len = rest.chars().next().map_or(1, char::len_utf8);
        clean.push_str(&rest[..ch_len]);
        i += ch_len;
    }
    let clean = collapse_spaces(&clean);
    if clean.is_empty() { (title.to_owned(), Vec::new()) } else { (clean, guests) }
}

fn split_list(name: &str) -> Vec<String> {
    name.split(", ").flat_map(|p| p.split(" & ")).map(str::trim).filter(|p| !p.is_empty()).map(str::to_owned).collect()
}

/// Applies the credit rule to one track. `known` says whether a normalised name is
/// already an artist on the node.
pub fn credit(track: &TrackRef, rules: &CreditRules, known: &dyn Fn(&str) -> bool) -> Credits {
    let (title, title_guests) = strip_title_guests(&track.title, &rules.feat_markers);
    let mut artists: Vec<String> = if !track.artist_names.is_empty() {
        let mut listed = track.artist_names.clone();
        listed.extend(title_guests);
        listed
    } else {
        let mut segments = Vec::new();
        let mut rest = track.artist.as_str();
        while let Some((start, end)) = find_marker(rest, &rules.feat_markers) {
            segments.push(rest[..start].trim().to_owned());
            rest = &rest[end..];
        }
        segments.push(rest.trim().to_owned());
        segments.extend(title_guests);
        segments.retain(|s| !s.is_empty());
        let n_mbids = track.artist_mbids.len();
        // Split further only where evidence may allow it (most tracks carry no MBIDs and
        // the node does not split known artists by default): no parts built otherwise.
        let fully_split: Vec<String> =
            if n_mbids > 0 { segments.iter().flat_map(|s| split_list(s)).collect() } else { Vec::new() };
        if n_mbids > 0 && fully_split.len() == n_mbids {
            fully_split
        } else if (n_mbids > 0 && segments.len() == n_mbids) || !rules.split_known_artists {
            segments
        } else {
            segments
                .into_iter()
                .flat_map(|s| {
                    let parts = split_list(&s);
                    let evidence = parts.len() > 1 && parts.iter().all(|p| known(&normalize_name(p)));
                    if evidence { parts } else { vec![s] }
                })
                .collect()
        }
    };
    // One artist is credited once whatever it is called: nothing to compare.
    if artists.len() > 1 {
        let mut seen = std::collections::HashSet::new();
        artists.retain(|a| seen.insert(normalize_name(a)));
    }
    if artists.is_empty() {
        artists.push(track.artist.clone());
    }
    Credits { artists, title }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(artist: &str, title: &str, mbids: usize) -> TrackRef {
        TrackRef {
            artist: artist.into(),
            artist_names: vec![],
            artist_mbids: vec![[0; 16]; mbids],
            title: title.into(),
            album: None,
            recording_mbid: None,
            release_mbid: None,
        }
    }

    fn c(track: &TrackRef, known: &[&str]) -> (Vec<String>, String) {
        let known: Vec<String> = known.iter().map(|k| normalize_name(k)).collect();
        let rules = CreditRules { split_known_artists: true, ..CreditRules::default() };
        let r = credit(track, &rules, &|n| known.iter().any(|k| k == n));
        (r.artists, r.title)
    }

    // The helpers as they were before they compared in place (one lower-cased copy of
    // the text and each marker per call): the oracle the faster ones must equal.
    /// Finds the first marker in `text` (ASCII case-insensitive) preceded and followed by a
    /// space; returns (start of the space before, end of the space after).
    fn find_marker_reference(text: &str, markers: &[String]) -> Option<(usize, usize)> {
        let lower = text.to_ascii_lowercase();
        markers
            .iter()
            .filter_map(|m| {
                let needle = format!(" {} ", m.to_ascii_lowercase());
                lower.find(&needle).map(|at| (at, at + needle.len()))
            })
            .min()
    }

    /// Removes guest brackets from a title: returns the clean title and the guest strings.
    fn strip_title_guests_reference(title: &str, markers: &[String]) -> (String, Vec<String>) {
        let mut title_markers: Vec<String> = markers.iter().map(|m| m.to_ascii_lowercase()).collect();
        title_markers.push("with".into());
        let lower = title.to_ascii_lowercase();
        let mut clean = String::with_capacity(title.len());
        let mut guests = Vec::new();
        let mut i = 0;
        while i < title.len() {
            let rest = &lower[i..];
            let close = match rest.as_bytes().first() {
                Some(b'(') => Some(')'),
                Some(b'[') => Some(']'),
                _ => None,
            };
            if let Some(close) = close {
                let inner = &rest[1..];
                let marker = title_markers.iter().find(|m| inner.starts_with(&format!("{m} ")));
                if let (Some(m), Some(end)) = (marker, inner.find(close)) {
                    let guest = &title[i + 1 + m.len() + 1..i + 1 + end];
                    if !guest.trim().is_empty() {
                        guests.push(guest.trim().to_owned());
                    }
                    i += 1 + end + 1;
                    continue;
                }
            }
            let ch_len = title[i..].chars().next().map_or(1, char::len_utf8);
            clean.push_str(&title[i..i + ch_len]);
            i += ch_len;
        }
        let clean = clean.split_whitespace().collect::<Vec<_>>().join(" ");
        if clean.is_empty() { (title.to_owned(), Vec::new()) } else { (clean, guests) }
    }

    proptest::proptest! {
        /// The in-place marker search and title cleaning equal the copying originals on
        /// text built from markers, brackets, spaces, case and non-ASCII letters.
        #[test]
        fn in_place_helpers_equal_the_copying_ones(
            parts in proptest::collection::vec(
                proptest::sample::select(vec![
                    " ", "  ", "\t", "feat.", "FEAT", "ft.", "Ft", "featuring", "with", "WITH", "(", ")", "[", "]",
                    "A", "b", "É", "ß", "細", "&", ", ", "x", "",
                ]),
                0..24,
            ),
            markers in proptest::collection::vec(
                proptest::sample::select(vec!["feat.", "feat", "ft.", "ft", "featuring", "FEAT.", "", "É", "ß"]),
                0..6,
            ),
        ) {
            let text: String = parts.concat();
            let markers: Vec<String> = markers.into_iter().map(String::from).collect();
            proptest::prop_assert_eq!(find_marker(&text, &markers), find_marker_reference(&text, &markers));
            proptest::prop_assert_eq!(strip_title_guests(&text, &markers), strip_title_guests_reference(&text, &markers));
        }
    }

    fn v(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn featuring_forms_split_into_main_and_guest() {
        for artist in [
            "Daft Punk feat. Pharrell",
            "Daft Punk ft. Pharrell",
            "Daft Punk FEATURING Pharrell",
            "Daft Punk Feat Pharrell",
        ] {
            assert_eq!(
                c(&t(artist, "Get Lucky", 0), &[]),
                (v(&["Daft Punk", "Pharrell"]), "Get Lucky".into()),
                "{artist}"
            );
        }
        for title in ["Get Lucky (feat. Pharrell)", "Get Lucky (with Pharrell)", "Get Lucky [ft. Pharrell]"] {
            assert_eq!(
                c(&t("Daft Punk", title, 0), &[]),
                (v(&["Daft Punk", "Pharrell"]), "Get Lucky".into()),
                "{title}"
            );
        }
    }

    #[test]
    fn ampersands_split_only_with_evidence() {
        let sg = t("Simon & Garfunkel", "The Boxer", 0);
        assert_eq!(c(&sg, &[]).0, v(&["Simon & Garfunkel"]));
        assert_eq!(c(&t("Simon & Garfunkel", "The Boxer", 1), &[]).0, v(&["Simon & Garfunkel"]));
        assert_eq!(c(&t("Jay-Z & Kanye West", "Otis", 2), &[]).0, v(&["Jay-Z", "Kanye West"]));
        assert_eq!(c(&t("Jay-Z & Kanye West", "Otis", 0), &["jay-z", "KANYE WEST"]).0, v(&["Jay-Z", "Kanye West"]));
        assert_eq!(c(&t("Jay-Z & Kanye West", "Otis", 0), &["jay-z"]).0, v(&["Jay-Z & Kanye West"]));
        assert_eq!(c(&t("A feat. B & C", "X", 3), &[]).0, v(&["A", "B", "C"]));
        let mut listed = t("Whatever & Co", "X", 0);
        listed.artist_names = v(&["One", "Two"]);
        assert_eq!(c(&listed, &[]).0, v(&["One", "Two"]));
    }

    /// A configured marker holding a closing bracket: the guest ends at the bracket
    /// after the marker (the old search took the one inside it, and sliced backwards).
    #[test]
    fn a_marker_may_hold_a_bracket() {
        let markers = v(&["a)b"]);
        assert_eq!(strip_title_guests("X (a)b c) Y", &markers), ("X Y".to_owned(), v(&["c"])));
        assert_eq!(strip_title_guests("X (A)B ) Y", &markers), ("X Y".to_owned(), v(&[])));
        assert_eq!(strip_title_guests("X (a)b no close", &markers), ("X (a)b no close".to_owned(), v(&[])));
    }

    #[test]
    fn odd_input_keeps_something_sensible() {
        assert_eq!(c(&t("Artist", "(feat. X)", 0), &[]).1, "(feat. X)");
        assert_eq!(c(&t("feat. Someone", "Song", 0), &[]).0, v(&["feat. Someone"]));
        assert_eq!(c(&t("A feat. a", "Song", 0), &[]).0, v(&["A"]), "one artist credited once");
        assert_eq!(
            c(&t("坂本龍一 feat. 細野晴臣", "曲 (feat. 高橋幸宏)", 0), &[]).0,
            v(&["坂本龍一", "細野晴臣", "高橋幸宏"])
        );
        assert_eq!(c(&t("Café ft. Ñu", "Ça (with Émile) va", 0), &[]), (v(&["Café", "Ñu", "Émile"]), "Ça va".into()));
    }
}
