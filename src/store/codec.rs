//! Versioned values: one version byte, then postcard.
//!
//! Each stored type implements `Versioned`: `VERSION` is the marker it writes; `decode`
//! accepts that marker and, once a type has changed, older markers too (migrating the old
//! shape on read). A value that does not decode is `Error::Corrupt` naming tree and key.

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::Error;

pub trait Versioned: Serialize + DeserializeOwned {
    const VERSION: u8;

    /// Decodes a value written with an older version marker. Nothing has changed yet,
    /// so every type accepts only its current version.
    fn decode_old(version: u8, _body: &[u8]) -> Result<Self, String> {
        Err(format!("unknown value version {version}"))
    }
}

pub fn encode<T: Versioned>(value: &T) -> Vec<u8> {
    let out = vec![T::VERSION];
    // postcard serialisation into a Vec fails only for a shape serde cannot express (a
    // map or sequence of unknown length, e.g. a filtered iterator in a `serialize_with`),
    // which no stored type has: a bug every test writing the type finds, never reached by
    // input. Storing a one-byte value instead would be acknowledged and then unreadable.
    postcard::to_extend(value, out).expect("every stored type serialises with postcard")
}

pub fn decode<T: Versioned>(tree: &'static str, key: &[u8], bytes: &[u8]) -> Result<T, Error> {
    let Some((&version, body)) = bytes.split_first() else {
        return Err(Error::corrupt(tree, key, "empty value"));
    };
    if version != T::VERSION {
        return T::decode_old(version, body).map_err(|reason| Error::corrupt(tree, key, &reason));
    }
    whole(body).map_err(|reason| Error::corrupt(tree, key, &reason))
}

/// Decodes `body` as one `T` with nothing after it (the body of a current or an older
/// version; `decode_old` implementations call it with their old shapes).
pub(crate) fn whole<T: DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    match postcard::take_from_bytes::<T>(body) {
        Ok((value, [])) => Ok(value),
        Ok((_, rest)) => Err(format!("{} trailing bytes", rest.len())),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::log::TrackRef;
    use crate::store::values::{
        AggV1, AggV2, BlockV1, BlockV2, CreditChunkV1, CreditChunkV2, DayItem, DayV1, DayV2, DayV3, HeadV1,
        ItemChunkV1, ItemChunkV2, ItemName, ItemV1, ItemV2, KeyedDayItem, StoredEntry, TrackChunkV1, TrackChunkV2,
        TrackCreditsV1, TrackV1,
    };

    fn entry() -> impl Strategy<Value = StoredEntry> {
        prop_oneof![
            (any::<[u8; 16]>(), any::<[u8; 4]>(), any::<i64>(), any::<u32>(), any::<Option<u32>>(), any::<u32>())
                .prop_map(|(salt, check, listened_at, track, duration_ms, client)| {
                    StoredEntry::Listen { salt, check, listened_at, track, duration_ms, client }
                }),
            // Love, Unlove and Hate: the same fields.
            (0..3u8, any::<[u8; 16]>(), any::<[u8; 4]>(), any::<u32>()).prop_map(
                |(kind, salt, check, track)| match kind {
                    0 => StoredEntry::Love { salt, check, track },
                    1 => StoredEntry::Unlove { salt, check, track },
                    _ => StoredEntry::Hate { salt, check, track },
                }
            ),
            (any::<[u8; 16]>(), any::<[u8; 4]>(), any::<u64>()).prop_map(|(salt, check, target)| StoredEntry::Delete {
                salt,
                check,
                target
            }),
            (any::<[u8; 32]>(), any::<[u8; 4]>())
                .prop_map(|(content_hash, check)| { StoredEntry::Erased { content_hash, check } }),
            // The extremes next to each other: the time differences wrap.
            prop_oneof![Just(i64::MIN), Just(i64::MAX), Just(0), Just(-1)].prop_map(|listened_at| {
                StoredEntry::Listen {
                    salt: [0; 16],
                    check: [0; 4],
                    listened_at,
                    track: u32::MAX,
                    duration_ms: Some(u32::MAX),
                    client: u32::MAX,
                }
            }),
        ]
    }

    fn track() -> impl Strategy<Value = TrackRef> {
        (
            "\\PC{0,40}",
            proptest::collection::vec("\\PC{0,10}", 0..3),
            "\\PC{0,40}",
            proptest::option::of("\\PC{0,20}"),
            any::<Option<[u8; 16]>>(),
        )
            .prop_map(|(artist, artist_names, title, album, recording_mbid)| TrackRef {
                artist,
                artist_names,
                artist_mbids: vec![],
                title,
                album,
                recording_mbid,
                release_mbid: None,
            })
    }

    proptest! {
        #[test]
        fn blocks_round_trip(entries in proptest::collection::vec(entry(), 0..64), signed_at in any::<i64>(), a in any::<[u8; 32]>(), b in any::<[u8; 32]>()) {
            let block = BlockV2 { entries, signed_at, sig: (a, b) };
            prop_assert_eq!(decode::<BlockV2>("t", b"k", &encode(&block)).expect("decode"), block.clone());
            let v1 = BlockV1 { entries: block.entries.clone(), signed_at, sig: block.sig };
            let v1 = [vec![1u8], postcard::to_allocvec(&v1).expect("v1")].concat();
            prop_assert_eq!(decode::<BlockV2>("t", b"k", &v1).expect("v1"), block);
        }

        #[test]
        fn days_heads_and_tracks_round_trip(
            items in proptest::collection::vec(any::<(u32, u64, [u8; 4])>(), 0..50),
            head in any::<(u64, [u8; 32], u64)>(),
            tracks in proptest::collection::vec((track(), any::<u32>()), 0..8),
        ) {
            // Versions 1 and 2 carried keys; read, the same items without them.
            let keyed: Vec<KeyedDayItem> = items.into_iter().map(|(sec, seq, key)| KeyedDayItem { sec, seq, key }).collect();
            let day = DayV3 { items: keyed.iter().map(|i| DayItem { sec: i.sec, seq: i.seq }).collect() };
            prop_assert_eq!(decode::<DayV3>("t", b"k", &encode(&day)).expect("day"), day.clone());
            let v1 = [vec![1u8], postcard::to_allocvec(&DayV1 { items: keyed.clone() }).expect("v1")].concat();
            prop_assert_eq!(decode::<DayV3>("t", b"k", &v1).expect("day v1"), day.clone());
            let v2 = [vec![2u8], postcard::to_allocvec(&DayV2 { items: keyed }).expect("v2")].concat();
            prop_assert_eq!(decode::<DayV3>("t", b"k", &v2).expect("day v2"), day);
            let head = HeadV1 { next_seq: head.0, link: head.1, n_listens: head.2 };
            prop_assert_eq!(decode::<HeadV1>("t", b"k", &encode(&head)).expect("head"), head);
            // Version 1 carried each track's dedupe key; read, the tracks without it.
            let v1 = TrackChunkV1 { tracks: tracks.into_iter().map(|(track, dedupe_key)| TrackV1 { track, dedupe_key }).collect() };
            let chunk = TrackChunkV2 { tracks: v1.tracks.iter().map(|t| t.track.clone()).collect() };
            prop_assert_eq!(decode::<TrackChunkV2>("t", b"k", &encode(&chunk)).expect("chunk"), chunk.clone());
            let v1 = [vec![1u8], postcard::to_allocvec(&v1).expect("v1")].concat();
            prop_assert_eq!(decode::<TrackChunkV2>("t", b"k", &v1).expect("chunk v1"), chunk);
        }

        #[test]
        fn garbage_is_an_error_naming_tree_and_key(bytes in proptest::collection::vec(any::<u8>(), 0..200), version in 0u8..6) {
            // Every version read (1 to 3, where damage reaches the decoders), and 0 and 4.
            let bytes = [vec![version.clamp(0, 4)], bytes].concat();
            if let Err(e) = decode::<TrackChunkV2>("trackchunk_tracks", &[0, 3], &bytes) {
                let text = e.to_string();
                prop_assert!(text.contains("trackchunk_tracks") && text.contains("0003"), "{}", text);
            }
            if let Err(e) = decode::<BlockV2>("userid_seq_block", &[0, 1], &bytes) {
                let text = e.to_string();
                prop_assert!(text.contains("userid_seq_block") && text.contains("0001"), "{}", text);
            }
            if let Err(e) = decode::<DayV3>("userid_day_listens", &[0, 2], &bytes) {
                let text = e.to_string();
                prop_assert!(text.contains("userid_day_listens") && text.contains("0002"), "{}", text);
            }
        }

        #[test]
        fn damaged_valid_blocks_and_days_are_errors_or_values(
            entries in proptest::collection::vec(entry(), 1..64),
            items in proptest::collection::vec(any::<(u32, u64, [u8; 4])>(), 1..50),
            at in any::<prop::sample::Index>(),
            flip in 1u8..=255,
            cut in any::<bool>(),
        ) {
            let block = encode(&BlockV2 { entries, signed_at: 1, sig: ([0; 32], [0; 32]) });
            let day = encode(&DayV3 { items: items.iter().map(|&(sec, seq, _)| DayItem { sec, seq }).collect() });
            let day_v2 = [vec![2u8], postcard::to_allocvec(&DayV2 {
                items: items.into_iter().map(|(sec, seq, key)| KeyedDayItem { sec, seq, key }).collect(),
            }).expect("v2")].concat();
            for mut bytes in [block, day, day_v2] {
                let i = at.index(bytes.len() - 1) + 1;
                if cut { bytes.truncate(i) } else { bytes[i] ^= flip }
                // No panic; whatever decodes is a value, whatever not an error.
                let _ = decode::<BlockV2>("userid_seq_block", b"k", &bytes);
                let _ = decode::<DayV3>("userid_day_listens", b"k", &bytes);
            }
        }
    }

    /// A stored value with its version byte made 1.
    fn v1_of(bytes: &[u8]) -> Vec<u8> {
        [&[1u8][..], bytes.get(1..).unwrap_or_default()].concat()
    }

    fn agg() -> impl Strategy<Value = AggV2> {
        let list = || proptest::collection::vec(any::<(u32, u32)>(), 0..40);
        (any::<u32>(), list(), list(), list(), proptest::collection::vec(any::<((u16, u8), u32)>(), 0..40)).prop_map(
            |(total, mut a, b, c, hours)| {
                // Mostly sorted, as stored, but unsorted lists must round-trip too.
                a.sort_unstable();
                AggV2 { total, counts: [a, b, c], hours }
            },
        )
    }

    proptest! {
        #[test]
        fn bucket_counts_round_trip_and_version_1_reads_the_same(agg in agg()) {
            prop_assert_eq!(decode::<AggV2>("t", b"k", &encode(&agg)).expect("v2"), agg.clone());
            let v1 = AggV1 { total: agg.total, counts: agg.counts.clone(), hours: agg.hours.clone() };
            let v1 = [vec![1u8], postcard::to_allocvec(&v1).expect("postcard")].concat();
            prop_assert_eq!(decode::<AggV2>("t", b"k", &v1).expect("v1"), agg);
        }

        #[test]
        fn credits_round_trip_and_version_1_reads_the_same(
            tracks in proptest::collection::vec(
                proptest::option::of((proptest::collection::vec(any::<u32>(), 0..4), any::<u32>(), any::<Option<u32>>())),
                0..64,
            ),
            // Mostly ids as interned: close to each other.
            near in any::<bool>(),
        ) {
            let tracks: Vec<Option<TrackCreditsV1>> = tracks
                .into_iter()
                .enumerate()
                .map(|(i, t)| t.map(|(artists, recording, release)| {
                    let shrink = |id: u32| if near { id % 1_000 } else { id };
                    TrackCreditsV1 {
                        artists: artists.into_iter().map(shrink).collect(),
                        recording: if near { i as u32 } else { recording },
                        release: release.map(shrink),
                    }
                }))
                .collect();
            let chunk = CreditChunkV2 { tracks: tracks.clone() };
            prop_assert_eq!(decode::<CreditChunkV2>("t", b"k", &encode(&chunk)).expect("v2"), chunk.clone());
            let v1 = [vec![1u8], postcard::to_allocvec(&CreditChunkV1 { tracks }).expect("v1")].concat();
            prop_assert_eq!(decode::<CreditChunkV2>("t", b"k", &v1).expect("v1"), chunk);
        }

        #[test]
        fn damaged_credits_are_an_error_or_a_value(bytes in proptest::collection::vec(any::<u8>(), 0..200), version in 1u8..=2) {
            let bytes = [vec![version], bytes].concat();
            if let Err(e) = decode::<CreditChunkV2>("trackchunk_credits", &[0, 3], &bytes) {
                prop_assert!(e.to_string().contains("trackchunk_credits"), "{}", e);
            }
        }

        #[test]
        fn item_names_round_trip_and_version_1_reads_as_literals(
            items in proptest::collection::vec(
                (
                    proptest::option::of((any::<u32>(), any::<u8>(), proptest::option::of((any::<u32>(), any::<u32>())))),
                    ".{0,12}",
                    any::<Option<u32>>(),
                ),
                0..64,
            ),
        ) {
            let items: Vec<ItemV2> = items
                .into_iter()
                .map(|(spelled, literal, artist)| ItemV2 {
                    name: match spelled {
                        Some((track, field, part)) => ItemName::Spelled { track, field, part },
                        None => ItemName::Literal(literal),
                    },
                    artist,
                })
                .collect();
            let chunk = ItemChunkV2 { items: items.clone() };
            prop_assert_eq!(decode::<ItemChunkV2>("t", b"k", &encode(&chunk)).expect("v2"), chunk);
            let v1: Vec<ItemV1> = items
                .iter()
                .map(|i| ItemV1 { name: format!("{:?}", i.name), artist: i.artist })
                .collect();
            let bytes = [vec![1u8], postcard::to_allocvec(&ItemChunkV1 { items: v1.clone() }).expect("v1")].concat();
            let read = decode::<ItemChunkV2>("t", b"k", &bytes).expect("v1");
            let literal: Vec<ItemV2> =
                v1.into_iter().map(|i| ItemV2 { name: ItemName::Literal(i.name), artist: i.artist }).collect();
            prop_assert_eq!(read.items, literal);
        }

        #[test]
        fn a_track_chunk_read_in_place_has_the_names_of_the_decoded_one(
            tracks in proptest::collection::vec((track(), 0usize..3, any::<Option<[u8; 16]>>()), 0..64),
        ) {
            use crate::store::values::{Named, borrowed_track, borrowed_tracks};
            let tracks: Vec<TrackRef> = tracks
                .into_iter()
                .map(|(t, mbids, release_mbid)| TrackRef { artist_mbids: vec![[9; 16]; mbids], release_mbid, ..t })
                .collect();
            let bytes = encode(&TrackChunkV2 { tracks: tracks.clone() });
            let read = borrowed_tracks(&bytes).expect("version 2").expect("decodes");
            prop_assert_eq!(read.len(), tracks.len());
            for (index, (borrowed, owned)) in read.iter().zip(&tracks).enumerate() {
                // The one track read alone, too.
                let alone = borrowed_track(&bytes, index).expect("version 2").expect("decodes").expect("a track");
                for field in 0..=u8::MAX {
                    prop_assert_eq!(borrowed.field(field), owned.field(field));
                    prop_assert_eq!(alone.field(field), owned.field(field));
                }
                prop_assert_eq!(borrowed.is_blank(), owned.is_blank());
                prop_assert_eq!(alone.is_blank(), owned.is_blank());
            }
            prop_assert!(matches!(borrowed_track(&bytes, tracks.len()), Some(Ok(None))), "past the last track");
            // Damage is an error, never a panic; older versions are left to `decode`.
            prop_assert!(borrowed_tracks(&bytes[..bytes.len() - 1]).is_some_and(|r| r.is_err()));
            if let Some(last) = tracks.len().checked_sub(1) {
                prop_assert!(borrowed_track(&bytes[..bytes.len() - 1], last).is_some_and(|r| r.is_err()));
            }
            prop_assert!(borrowed_track(&v1_of(&bytes), 0).is_none());
            prop_assert!(borrowed_tracks(&v1_of(&bytes)).is_none());
        }

        #[test]
        fn damaged_item_chunks_are_an_error_or_a_value(bytes in proptest::collection::vec(any::<u8>(), 0..200), version in 1u8..=2) {
            let bytes = [vec![version], bytes].concat();
            if let Err(e) = decode::<ItemChunkV2>("itemchunk_items", &[0, 3], &bytes) {
                prop_assert!(e.to_string().contains("itemchunk_items"), "{}", e);
            }
        }

        #[test]
        fn damaged_bucket_counts_are_an_error(bytes in proptest::collection::vec(any::<u8>(), 0..200), version in 1u8..=2) {
            let bytes = [vec![version], bytes].concat();
            if let Err(e) = decode::<AggV2>("userid_bucket_counts", &[0, 1], &bytes) {
                prop_assert!(e.to_string().contains("userid_bucket_counts"), "{}", e);
            }
        }
    }

    #[test]
    fn bucket_counts_store_sorted_ids_as_small_differences() {
        // 1,000 ids a few apart around 300,000: absolute varints take 3 bytes each, the
        // differences 1.
        let ids: Vec<(u32, u32)> = (0..1_000u32).map(|i| (300_000 + 5 * i, 1)).collect();
        let hours: Vec<((u16, u8), u32)> = (0..300u16).map(|d| ((d, 20), 2)).collect();
        let agg = AggV2 { total: 1_000, counts: [ids.clone(), vec![], vec![]], hours: hours.clone() };
        let v2 = encode(&agg).len();
        let v1 =
            postcard::to_allocvec(&AggV1 { total: 1_000, counts: [ids, vec![], vec![]], hours }).expect("v1").len();
        assert!(v2 <= 1 + 2 + 3 + 2 * 1_000 + 2 + 3 + 3 * 300, "{v2} bytes");
        assert!(v1 >= 4 * 1_000 + 3 * 300, "{v1} bytes");
        // An hour slot whose day does not fit in 16 bits is damage, not a panic.
        let slot = |gap: u32| {
            let no_counts = [(); 3].map(|()| Vec::<(u32, u32)>::new());
            [vec![2u8], postcard::to_allocvec(&(0u32, no_counts, vec![(gap, 1u32)])).expect("slot")].concat()
        };
        let last = decode::<AggV2>("userid_bucket_counts", b"k", &slot(0x00FF_FF14)).expect("day 65535");
        assert_eq!(last.hours, vec![((u16::MAX, 20), 1)]);
        let e = decode::<AggV2>("userid_bucket_counts", b"k", &slot(0x0100_0000)).expect_err("day 65536");
        assert!(e.to_string().contains("userid_bucket_counts"), "{e}");
    }

    /// The layouts pinned as bytes (postcard: varints, zigzag for signed, fixed arrays
    /// raw): version 1 as schemas up to 13 and 14 wrote them, version 2 as now. A change
    /// of either breaks stores on disk.
    #[test]
    fn version_1_and_2_layouts_are_fixed() {
        let agg = AggV2 {
            total: 5,
            counts: [vec![(300_000, 2), (300_005, 1)], vec![], vec![(7, 1)]],
            hours: vec![((10, 20), 1), ((11, 3), 4)],
        };
        let agg_v1 = [
            0x01, 0x05, 0x02, 0xE0, 0xA7, 0x12, 0x02, 0xE5, 0xA7, 0x12, 0x01, 0x00, 0x01, 0x07, 0x01, 0x02, 0x0A, 0x14,
            0x01, 0x0B, 0x03, 0x04,
        ];
        let agg_v2 = [
            0x02, 0x05, 0x02, 0xE0, 0xA7, 0x12, 0x02, 0x05, 0x01, 0x00, 0x01, 0x07, 0x01, 0x02, 0x94, 0x14, 0x01, 0xEF,
            0x01, 0x04,
        ];
        assert_eq!(decode::<AggV2>("t", b"k", &agg_v1).expect("agg v1"), agg);
        assert_eq!(decode::<AggV2>("t", b"k", &agg_v2).expect("agg v2"), agg);
        assert_eq!(encode(&agg), agg_v2);

        // Versions 1 and 2 carry keys (1, 2, 3, 4 and 9, 9, 9, 9), dropped when read.
        let day = DayV3 { items: vec![DayItem { sec: 100, seq: 300 }, DayItem { sec: 200, seq: 5 }] };
        let day_v1 = [0x01, 0x02, 0x64, 0xAC, 0x02, 0x01, 0x02, 0x03, 0x04, 0xC8, 0x01, 0x05, 0x09, 0x09, 0x09, 0x09];
        let day_v2 = [0x02, 0x02, 0x64, 0xD8, 0x04, 0x01, 0x02, 0x03, 0x04, 0x64, 0xCD, 0x04, 0x09, 0x09, 0x09, 0x09];
        // 100, then seq 300 zigzag (600 = 0xD8 0x04); 100 more seconds, seq -295 (589 = 0xCD 0x04).
        let day_v3 = [0x03, 0x02, 0x64, 0xD8, 0x04, 0x64, 0xCD, 0x04];
        assert_eq!(decode::<DayV3>("t", b"k", &day_v1).expect("day v1"), day);
        assert_eq!(decode::<DayV3>("t", b"k", &day_v2).expect("day v2"), day);
        assert_eq!(decode::<DayV3>("t", b"k", &day_v3).expect("day v3"), day);
        assert_eq!(encode(&day), day_v3);

        let block = BlockV2 {
            entries: vec![
                StoredEntry::Listen {
                    salt: [0x11; 16],
                    check: [0x22; 4],
                    listened_at: 1_700_000_000,
                    track: 5,
                    duration_ms: Some(180_000),
                    client: 0,
                },
                StoredEntry::Love { salt: [0x44; 16], check: [0x55; 4], track: 6 },
                StoredEntry::Listen {
                    salt: [0x11; 16],
                    check: [0x22; 4],
                    listened_at: 1_699_999_000,
                    track: 6,
                    duration_ms: None,
                    client: 0,
                },
            ],
            signed_at: 1_700_000_100,
            sig: ([0x33; 32], [0x33; 32]),
        };
        let listen = |time: &[u8], track: u8, duration: &[u8]| {
            [&[0x00][..], &[0x11; 16], &[0x22; 4], time, &[track], duration, &[0x00]].concat()
        };
        let love = [&[0x01][..], &[0x44; 16], &[0x55; 4], &[0x06]].concat();
        let (first, duration) = ([0x80, 0xC4, 0x9F, 0xD5, 0x0C], [0x01, 0xA0, 0xFE, 0x0A]);
        let tail = [&[0xC8, 0xC5, 0x9F, 0xD5, 0x0C][..], &[0x33; 64]].concat();
        let block_v1 = [
            &[0x01, 0x03][..],
            &listen(&first, 5, &duration),
            &love,
            &listen(&[0xB0, 0xB4, 0x9F, 0xD5, 0x0C], 6, &[0x00]),
            &tail,
        ]
        .concat();
        // The second listen: 1,000 s before the first, zigzag 1,999.
        let block_v2 =
            [&[0x02, 0x03][..], &listen(&first, 5, &duration), &love, &listen(&[0xCF, 0x0F], 6, &[0x00]), &tail]
                .concat();
        assert_eq!(decode::<BlockV2>("t", b"k", &block_v1).expect("block v1"), block);
        assert_eq!(decode::<BlockV2>("t", b"k", &block_v2).expect("block v2"), block);
        assert_eq!(encode(&block), block_v2);
    }

    #[test]
    fn track_chunk_layouts_are_fixed() {
        let track = TrackRef {
            artist: "A".into(),
            artist_names: vec![],
            artist_mbids: vec![],
            title: "T".into(),
            album: Some("B".into()),
            recording_mbid: None,
            release_mbid: None,
        };
        let chunk = TrackChunkV2 { tracks: vec![track] };
        // One track: "A", no names, no mbids, "T", Some("B"), None, None; version 1 then
        // its dedupe key (300 as a varint), dropped when read.
        let v1 = [0x01, 0x01, 0x01, b'A', 0x00, 0x00, 0x01, b'T', 0x01, 0x01, b'B', 0x00, 0x00, 0xAC, 0x02];
        let v2 = [0x02, 0x01, 0x01, b'A', 0x00, 0x00, 0x01, b'T', 0x01, 0x01, b'B', 0x00, 0x00];
        assert_eq!(decode::<TrackChunkV2>("t", b"k", &v1).expect("v1"), chunk);
        assert_eq!(decode::<TrackChunkV2>("t", b"k", &v2).expect("v2"), chunk);
        assert_eq!(encode(&chunk), v2);
    }

    #[test]
    fn item_layouts_are_fixed_and_a_spelled_name_takes_a_few_bytes() {
        let chunk = ItemChunkV2 {
            items: vec![
                ItemV2 { name: ItemName::Spelled { track: 300_000, field: 1, part: None }, artist: Some(5) },
                ItemV2 { name: ItemName::Spelled { track: 300_001, field: 0, part: Some((0, 9)) }, artist: None },
                ItemV2 { name: ItemName::Literal("Air".into()), artist: None },
                ItemV2 { name: ItemName::Spelled { track: 299_999, field: 4, part: None }, artist: Some(5) },
            ],
        };
        // Version 2, four items: Whole (1) with track 300,000 as a zigzag difference from
        // 0 (600,000), field 1, artist 5; Part (2) +1, field 0, bytes 0..9, no artist;
        // Literal (0) "Air"; Whole -2 (zigzag 3) from the last spelled track, field 4.
        let v2 = [
            0x02, 0x04, 0x01, 0xC0, 0xCF, 0x24, 0x01, 0x01, 0x05, 0x02, 0x02, 0x00, 0x00, 0x09, 0x00, 0x00, 0x03, b'A',
            b'i', b'r', 0x00, 0x01, 0x03, 0x04, 0x01, 0x05,
        ];
        assert_eq!(encode(&chunk), v2);
        assert_eq!(decode::<ItemChunkV2>("t", b"k", &v2).expect("v2"), chunk);
        // Version 1: the names themselves.
        let v1 = [0x01, 0x01, 0x03, b'A', b'i', b'r', 0x01, 0x05];
        let read = decode::<ItemChunkV2>("t", b"k", &v1).expect("v1");
        assert_eq!(read.items, [ItemV2 { name: ItemName::Literal("Air".into()), artist: Some(5) }]);
    }

    #[test]
    fn credits_layouts_are_fixed_and_interned_ids_take_a_byte() {
        let chunk = CreditChunkV2 {
            tracks: vec![
                Some(TrackCreditsV1 { artists: vec![70_000, 5], recording: 300_000, release: Some(90_000) }),
                None,
                Some(TrackCreditsV1 { artists: vec![70_000], recording: 300_001, release: None }),
                Some(TrackCreditsV1 { artists: vec![69_999], recording: 300_002, release: Some(90_000) }),
            ],
        };
        // Version 1: absolute varints.
        let v1 = [
            0x01, 0x04, 0x01, 0x02, 0xF0, 0xA2, 0x04, 0x05, 0xE0, 0xA7, 0x12, 0x01, 0x90, 0xBF, 0x05, 0x00, 0x01, 0x01,
            0xF0, 0xA2, 0x04, 0xE1, 0xA7, 0x12, 0x00, 0x01, 0x01, 0xEF, 0xA2, 0x04, 0xE2, 0xA7, 0x12, 0x01, 0x90, 0xBF,
            0x05,
        ];
        // Version 2: zigzag differences. The first track from 0 (70,000 -> 140,000; the
        // second artist 5 - 70,000 -> 139,989; 300,000 -> 600,000; 90,000 -> 180,000),
        // then 0 and +1; then -1, +1 and 0 from the last release.
        let v2 = [
            0x02, 0x04, 0x01, 0x02, 0xE0, 0xC5, 0x08, 0xD5, 0xC5, 0x08, 0xC0, 0xCF, 0x24, 0x01, 0xA0, 0xFE, 0x0A, 0x00,
            0x01, 0x01, 0x00, 0x02, 0x00, 0x01, 0x01, 0x01, 0x02, 0x01, 0x00,
        ];
        assert_eq!(decode::<CreditChunkV2>("t", b"k", &v1).expect("v1"), chunk);
        assert_eq!(decode::<CreditChunkV2>("t", b"k", &v2).expect("v2"), chunk);
        assert_eq!(encode(&chunk), v2);
        // 64 tracks as an import interns them: each a new recording, albums of ten from
        // one artist. Absolute: 3 bytes an id; as differences: 1.
        let tracks: Vec<_> = (0..64u32)
            .map(|i| {
                Some(TrackCreditsV1 {
                    artists: vec![80_000 + i / 10],
                    recording: 400_000 + i,
                    release: Some(200_000 + i / 10),
                })
            })
            .collect();
        let chunk = CreditChunkV2 { tracks: tracks.clone() };
        let (v1, v2) = (postcard::to_allocvec(&CreditChunkV1 { tracks }).expect("v1").len(), encode(&chunk).len());
        assert!(v2 <= 2 + 8 + 64 * (1 + 1 + 1 + 1 + 2), "{v2} bytes");
        assert!(v1 >= 64 * (1 + 1 + 3 + 3 + 1 + 3), "{v1} bytes");
        assert_eq!(decode::<CreditChunkV2>("t", b"k", &encode(&chunk)).expect("v2"), chunk);
    }

    #[test]
    fn a_block_stores_listen_times_as_small_differences() {
        // 63 listens of 2026 three minutes apart, a love between them and one listen
        // sent late: absolute, each time takes 5 bytes; as differences 2 (the late one
        // and the one after it 4), the first 5.
        let listen = |i: i64| StoredEntry::Listen {
            salt: [1; 16],
            check: [2; 4],
            listened_at: 1_780_000_000 + 180 * i,
            track: 5,
            duration_ms: None,
            client: 0,
        };
        let mut entries: Vec<StoredEntry> = (0..63).map(listen).collect();
        entries.insert(10, StoredEntry::Love { salt: [3; 16], check: [4; 4], track: 5 });
        entries[40] = listen(-20_000);
        let block = BlockV2 { entries, signed_at: 1_780_100_000, sig: ([5; 32], [6; 32]) };
        let v2 = encode(&block).len();
        let v1 = BlockV1 { entries: block.entries.clone(), signed_at: block.signed_at, sig: block.sig };
        // (`encode` adds the version byte.)
        let v1 = 1 + postcard::to_allocvec(&v1).expect("v1").len();
        assert_eq!(v1 - v2, 60 * 3 + 2, "{v1} bytes absolute, {v2} as differences");
        assert_eq!(decode::<BlockV2>("t", b"k", &encode(&block)).expect("block"), block);
    }

    fn encode_v2(items: &[KeyedDayItem]) -> usize {
        1 + postcard::to_allocvec(&DayV2 { items: items.to_vec() }).expect("v2").len()
    }

    #[test]
    fn a_day_stores_seconds_and_seqs_as_small_differences() {
        // 60 listens four minutes apart late in the day, seqs around 900,000 in order
        // but for one listen sent late: absolute, a second takes 3 bytes and a seq 3;
        // as differences 2 and 1 (3 for the late one's seq and the next one's).
        // Version 3 has no keys: 2 + 1 bytes an item where version 2 took 2 + 1 + 4.
        let mut items: Vec<KeyedDayItem> = (0..60u32)
            .map(|i| KeyedDayItem { sec: 60_000 + 240 * i, seq: 900_000 + u64::from(i), key: [7; 4] })
            .collect();
        items[30].seq = 950_000;
        let day = DayV3 { items: items.iter().map(|i| DayItem { sec: i.sec, seq: i.seq }).collect() };
        let v3 = encode(&day).len();
        let v2 = encode_v2(&items);
        let v1 = postcard::to_allocvec(&DayV1 { items }).expect("v1").len();
        assert!(v3 <= 2 + 60 * (2 + 1) + 8, "{v3} bytes");
        assert_eq!(v2 - v3, 60 * 4, "{v2} bytes with keys, {v3} without");
        assert!(v1 >= 60 * (3 + 3 + 4), "{v1} bytes");
        assert_eq!(decode::<DayV3>("t", b"k", &encode(&day)).expect("day"), day);
    }

    #[test]
    fn wrong_version_and_trailing_bytes_are_refused() {
        let mut v = encode(&HeadV1 { next_seq: 1, link: [0; 32], n_listens: 1 });
        v.push(0);
        assert!(decode::<HeadV1>("t", b"k", &v).is_err(), "trailing byte");
        v.pop();
        v[0] = 9;
        assert!(decode::<HeadV1>("t", b"k", &v).expect_err("version").to_string().contains("unknown value version 9"));
        assert!(decode::<HeadV1>("t", b"k", &[]).is_err());
    }

    #[test]
    fn version_1_settings_and_sessions_read_as_version_2() {
        use crate::store::values::{SessionV2, SettingsV2};
        let v1_settings = [vec![1u8], postcard::to_allocvec(&true).expect("postcard")].concat();
        let s: SettingsV2 = decode("userid_settings", b"k", &v1_settings).expect("v1 settings");
        assert_eq!(s, SettingsV2 { paused: true, api_reads_open: false, latest_import: Vec::new() });
        let v1_session = [vec![1u8], postcard::to_allocvec(&(7u32, 1_700_000_000i64)).expect("postcard")].concat();
        let s: SessionV2 = decode("sessiondigest_session", b"k", &v1_session).expect("v1 session");
        assert_eq!((s.user, s.created_at, s.client), (7, 1_700_000_000, None));
        // Trailing bytes after a version 1 value are damage, named as such.
        let mut damaged = v1_session.clone();
        damaged.push(0);
        assert!(decode::<SessionV2>("sessiondigest_session", b"k", &damaged).is_err());
        // And version 2 round-trips.
        let v2 = SessionV2 { user: 1, created_at: 2, client: Some("navidrome".into()) };
        let back: SessionV2 = decode("t", b"k", &encode(&v2)).expect("v2");
        assert_eq!(back.client.as_deref(), Some("navidrome"));
    }
}
