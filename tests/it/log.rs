//! The signed log through the real store: ingest, duplicates, tombstones, restart,
//! tampering underneath the node, concurrent submitters.

use std::collections::BTreeSet;

use hearsay::log::{Content, Listen, RawListen, VerifyError};
use hearsay::stats::chart::Kind;
use hearsay::stats::period::Period;
use hearsay::store::codec::{decode, encode};
use hearsay::store::logs::Order;
use hearsay::store::values::{BlockV2, ItemChunkV2, ItemName, StoredEntry, TrackChunkV2};
use hearsay::store::{Action, Outcome, schema};

use crate::support::{NOW, TestStore, listen};

fn appended(outcomes: &[Outcome]) -> usize {
    outcomes.iter().filter(|o| matches!(o, Outcome::Appended { .. })).count()
}

#[test]
fn listens_come_back_in_time_order_with_ranges_and_limits() {
    let t = TestStore::new();
    // Submitted out of time order, across several days and two batches.
    let base = NOW - 10 * 86_400;
    let batch1: Vec<Action> =
        (0..150).rev().map(|i| Action::Listen(listen("Artist", &format!("Song {i}"), base + i * 3_000))).collect();
    let batch2: Vec<Action> =
        (150..200).map(|i| Action::Listen(listen("Artist", &format!("Song {i}"), base + i * 3_000))).collect();
    assert_eq!(appended(&t.ingestor.ingest_blocking(t.user, batch1).expect("ingest")), 150);
    assert_eq!(appended(&t.ingestor.ingest_blocking(t.user, batch2).expect("ingest")), 50);

    let all = t.store.listens(t.user, 0, i64::MAX, 1000, Order::OldestFirst).expect("read");
    assert_eq!(all.len(), 200);
    assert!(all.windows(2).all(|w| w[0].listen.listened_at() <= w[1].listen.listened_at()));
    let newest = t.store.listens(t.user, 0, i64::MAX, 5, Order::NewestFirst).expect("read");
    let titles: Vec<&str> = newest.iter().map(|l| l.listen.track().title.as_str()).collect();
    assert_eq!(titles, ["Song 199", "Song 198", "Song 197", "Song 196", "Song 195"]);
    // [from, to) is half open.
    let window = t.store.listens(t.user, base + 10 * 3_000, base + 20 * 3_000, 1000, Order::OldestFirst).expect("read");
    assert_eq!(window.len(), 10);
    assert_eq!(window[0].listen.track().title, "Song 10");
    assert_eq!(t.store.log_head(t.user).expect("head").n_listens, 200);
    let v = t.store.verify_log(t.user).expect("db").expect("verifies");
    assert_eq!(v.n_entries, 200);
}

#[test]
fn the_duplicate_rule_drops_one_play_sent_twice_and_keeps_real_replays() {
    // The test listens are 200 s long, so plays of one track closer than 100 s are one.
    let t = TestStore::new();
    let at = NOW - 10_000;
    let first = t
        .ingestor
        .ingest_blocking(t.user, vec![Action::Listen(listen("Sigur Rós", "Hoppípolla", at))])
        .expect("ingest");
    assert_eq!(first, vec![Outcome::Appended { seq: 0 }]);
    let raw = RawListen {
        artist: "SIGUR RO\u{301}S".as_bytes(),
        title: "hoppípolla".as_bytes(),
        listened_at: at,
        client: Some(b"another player".as_slice()),
        ..RawListen::default()
    };
    let other_client = Listen::parse(&raw, NOW).expect("valid");
    let again = vec![
        Action::Listen(other_client), // the same play from another player
        Action::Listen(listen("Sigur Rós", "Hoppípolla", at + 1)), // "now playing" then the scrobble
        Action::Listen(listen("Sigur Rós", "Hoppípolla", at + 99)), // resumed after a pause
        Action::Listen(listen("Sigur Rós", "Hoppípolla", at + 200)), // a real second play
        Action::Listen(listen("Sigur Rós", "Hoppípolla", at + 200)), // re-sent in the same batch
        Action::Listen(listen("Sigur Rós", "Glósóli", at)), // another track, same second
    ];
    let outcomes = t.ingestor.ingest_blocking(t.user, again).expect("ingest");
    assert_eq!(
        outcomes,
        vec![
            Outcome::Duplicate,
            Outcome::Duplicate,
            Outcome::Duplicate,
            Outcome::Appended { seq: 1 },
            Outcome::Duplicate,
            Outcome::Appended { seq: 2 }
        ]
    );
    // A re-sent backlog adds nothing.
    let backlog = vec![
        Action::Listen(listen("Sigur Rós", "Hoppípolla", at)),
        Action::Listen(listen("Sigur Rós", "Hoppípolla", at + 200)),
        Action::Listen(listen("Sigur Rós", "Glósóli", at)),
    ];
    assert_eq!(t.ingestor.ingest_blocking(t.user, backlog).expect("ingest"), vec![Outcome::Duplicate; 3]);
    assert_eq!(t.store.log_head(t.user).expect("head").n_listens, 3);
}

/// The day index holds times and seqs only; the duplicate rule reads the earlier listen's
/// track wherever its block is: the tail being filled, a block this batch filled, a
/// stored block, and after a restart.
#[test]
fn duplicates_are_found_in_every_block_the_earlier_listen_can_be_in() {
    let t = TestStore::new();
    let at = |i: i64| NOW - 1_000_000 + i * 1_000;
    let song = |i: i64, late: i64| Action::Listen(listen("Artist", &format!("S{i}"), at(i) + late));
    // 70 listens fill one block (64) and start the next; then listen 5 again (in the
    // block the batch filled), listen 66 again (in the tail), and another track ten
    // seconds after listen 5 (not a duplicate).
    let mut batch: Vec<Action> = (0..70).map(|i| song(i, 0)).collect();
    batch.extend([song(5, 10), song(66, 10), song(6, -990)]);
    let out = t.ingestor.ingest_blocking(t.user, batch).expect("ingest");
    assert_eq!(out[70..], [Outcome::Duplicate, Outcome::Duplicate, Outcome::Appended { seq: 70 }]);
    // The next batch: the full block is stored, the tail still in the writer's memory.
    let again = vec![song(5, -10), song(66, -10), song(69, 5), song(3, 300)];
    let out = t.ingestor.ingest_blocking(t.user, again).expect("ingest");
    assert_eq!(out, [Outcome::Duplicate, Outcome::Duplicate, Outcome::Duplicate, Outcome::Appended { seq: 71 }]);
    // After a restart every block comes from the store, and every track's key is
    // computed again: another spelling of listen 5's track (a track of its own) is the
    // same play.
    let t = TestStore::reopen(t.close());
    let respelled = Action::Listen(listen("ARTIST", "s5", at(5) + 20));
    let again = vec![song(5, 0), song(66, 0), song(6, -990), song(3, 300), respelled, song(3, 200)];
    let out = t.ingestor.ingest_blocking(t.user, again).expect("ingest");
    assert_eq!(out, [Outcome::Duplicate; 5].into_iter().chain([Outcome::Appended { seq: 72 }]).collect::<Vec<_>>());
    assert_eq!(t.store.log_head(t.user).expect("head").n_listens, 73);
}

/// Day index items that name no live listen (damage: an entry that is a love, a block
/// that is gone) are reported and skipped by the duplicate rule: the user's scrobbles
/// close to them are still taken, and real duplicates still found.
#[test]
fn a_damaged_day_index_does_not_stop_scrobbles_near_it() {
    use hearsay::store::values::{DayItem, DayV3};
    let t = TestStore::new();
    let at = NOW - 50_000;
    let one = listen("Artist", "One", at);
    let first = vec![Action::Listen(one.clone()), Action::Love(one.into_track())];
    t.ingestor.ingest_blocking(t.user, first).expect("ingest");
    let user = t.user.0;
    let dir = t.close();
    let day = u32::try_from(at.div_euclid(86_400)).expect("day");
    let mut key = user.to_be_bytes().to_vec();
    key.extend_from_slice(&day.to_be_bytes());
    tamper(dir.path(), schema::USERID_DAY_LISTENS, &key, |value| {
        let mut d: DayV3 = decode(schema::USERID_DAY_LISTENS, &key, value).expect("day");
        let sec = d.items[0].sec;
        // Seq 1 is the love; seq 6,400 is in no block.
        d.items.extend([DayItem { sec: sec + 5, seq: 1 }, DayItem { sec: sec + 6, seq: 6_400 }]);
        d.items.sort();
        *value = encode(&d);
    });
    let t = TestStore::reopen(dir);
    let near = vec![
        Action::Listen(listen("Artist", "Two", at + 5)),
        Action::Listen(listen("Artist", "Three", at + 6)),
        Action::Listen(listen("Artist", "One", at + 7)),
    ];
    let out = t.ingestor.ingest_blocking(t.user, near).expect("ingest");
    assert_eq!(out, [Outcome::Appended { seq: 2 }, Outcome::Appended { seq: 3 }, Outcome::Duplicate]);
}

/// A stray track chunk far past the last one (damage) is refused when the writer starts,
/// naming its tree and key, before any table is sized by its ids (chunk 2^24 would be
/// track 2^30: gigabytes of keys and credits).
#[test]
fn a_track_chunk_past_the_next_one_is_refused_at_start() {
    use hearsay::store::{Ingestor, Options, Store};
    let t = TestStore::new();
    t.ingestor.ingest_blocking(t.user, vec![Action::Listen(listen("A", "One", NOW - 100))]).expect("ingest");
    let dir = t.close();
    let stray = 16_777_216u32.to_be_bytes();
    {
        let db = crate::support::raw_open(&dir.path().join("db"));
        let tree = db.open_tree(schema::TRACKCHUNK_TRACKS).expect("tree");
        let chunk0 = tree.get(0u32.to_be_bytes()).expect("get").expect("chunk 0");
        tree.insert(stray, chunk0).expect("insert");
        db.flush().expect("flush");
    }
    let store = Store::open(dir.path(), &Options { cache_mb: 8, ..Default::default() }).expect("open");
    let Err(e) = Ingestor::start(store, 10_000, Default::default()) else { panic!("the writer started") };
    let text = e.to_string();
    assert!(text.contains("trackchunk_tracks") && text.contains("01000000"), "{text}");
}

/// A listen and its delete in one batch: the track and client the listen introduced
/// are not stored yet when the delete erases it.
#[test]
fn a_listen_deleted_in_its_own_batch_is_erased() {
    let t = TestStore::new();
    let raw = RawListen {
        artist: b"New Artist",
        title: b"Brand New Song",
        listened_at: NOW - 500,
        client: Some(b"a player never seen".as_slice()),
        ..RawListen::default()
    };
    let fresh = Listen::parse(&raw, NOW).expect("valid");
    let out =
        t.ingestor.ingest_blocking(t.user, vec![Action::Listen(fresh), Action::Delete { seq: 0 }]).expect("ingest");
    assert_eq!(out, [Outcome::Appended { seq: 0 }, Outcome::Appended { seq: 1 }]);
    let entries = t.store.entries(t.user).expect("entries");
    assert!(matches!(entries[0].1, Content::Erased { .. }), "{:?}", entries[0]);
    assert_eq!(t.store.log_head(t.user).expect("head").n_listens, 0);
    let v = t.store.verify_log(t.user).expect("db").expect("verifies");
    assert_eq!((v.n_entries, v.n_erased), (2, 1));
}

#[test]
fn a_tombstone_erases_content_from_every_read_path_and_the_chain_still_verifies() {
    let t = TestStore::new();
    let actions = vec![
        Action::Listen(listen("Band", "Public Song", NOW - 300)),
        Action::Listen(listen("Band", "Secret Song", NOW - 200)),
        Action::Listen(listen("Band", "Other Song", NOW - 100)),
    ];
    t.ingestor.ingest_blocking(t.user, actions).expect("ingest");
    let out = t.ingestor.ingest_blocking(t.user, vec![Action::Delete { seq: 1 }]).expect("delete");
    assert_eq!(out, vec![Outcome::Appended { seq: 3 }]);
    // A second delete, and deletes of non-listens or unknown positions, find nothing.
    let out = t
        .ingestor
        .ingest_blocking(t.user, vec![Action::Delete { seq: 1 }, Action::Delete { seq: 3 }, Action::Delete { seq: 99 }])
        .expect("delete");
    assert_eq!(out, vec![Outcome::NotFound; 3]);

    let listens = t.store.listens(t.user, 0, i64::MAX, 100, Order::OldestFirst).expect("read");
    let titles: BTreeSet<_> = listens.iter().map(|l| l.listen.track().title.clone()).collect();
    assert_eq!(titles, BTreeSet::from(["Public Song".to_string(), "Other Song".to_string()]));
    let entries = t.store.entries(t.user).expect("entries");
    assert!(matches!(entries[1].1, Content::Erased { .. }), "{:?}", entries[1]);
    assert!(!format!("{entries:?}").contains("Secret Song"));
    assert_eq!(t.store.log_head(t.user).expect("head").n_listens, 2);
    let v = t.store.verify_log(t.user).expect("db").expect("still verifies");
    assert_eq!((v.n_entries, v.n_erased), (4, 1));
    // The erased listen no longer blocks a new listen of the same play.
    let out = t
        .ingestor
        .ingest_blocking(t.user, vec![Action::Listen(listen("Band", "Secret Song", NOW - 200))])
        .expect("re-add");
    assert_eq!(out, vec![Outcome::Appended { seq: 4 }]);
}

#[test]
fn a_restart_keeps_everything_identical_and_the_chain_continues() {
    let t = TestStore::new();
    let actions: Vec<Action> =
        (0..130).map(|i| Action::Listen(listen("Artist", &format!("T{i}"), NOW - 100_000 + i * 60))).collect();
    t.ingestor.ingest_blocking(t.user, actions).expect("ingest");
    let love = listen("Artist", "T3", NOW).into_track();
    t.ingestor
        .ingest_blocking(t.user, vec![Action::Love(love.clone()), Action::Delete { seq: 7 }, Action::Unlove(love)])
        .expect("more");
    let before = (
        t.store.entries(t.user).expect("entries"),
        t.store.listens(t.user, 0, i64::MAX, 1000, Order::NewestFirst).expect("listens"),
        t.store.log_head(t.user).expect("head"),
        t.store.users().expect("users"),
    );
    let dir = t.close();
    let t = TestStore::reopen(dir);
    let after = (
        t.store.entries(t.user).expect("entries"),
        t.store.listens(t.user, 0, i64::MAX, 1000, Order::NewestFirst).expect("listens"),
        t.store.log_head(t.user).expect("head"),
        t.store.users().expect("users"),
    );
    assert_eq!(before, after);
    let out = t
        .ingestor
        .ingest_blocking(t.user, vec![Action::Listen(listen("Artist", "After restart", NOW))])
        .expect("append");
    assert_eq!(out, vec![Outcome::Appended { seq: 133 }]);
    let v = t.store.verify_log(t.user).expect("db").expect("verifies");
    assert_eq!(v.n_entries, 134);
}

/// Rewrites one value of a tree directly in sled, with the store closed.
fn tamper(dir: &std::path::Path, tree: &str, key: &[u8], change: impl FnOnce(&mut Vec<u8>)) {
    let db = crate::support::raw_open(&dir.join("db"));
    let t = db.open_tree(tree).expect("tree");
    let mut value = t.get(key).expect("get").expect("value present").to_vec();
    change(&mut value);
    t.insert(key, value).expect("insert");
    db.flush().expect("flush");
}

fn block_key(user: u32, first: u64) -> Vec<u8> {
    let mut k = user.to_be_bytes().to_vec();
    k.extend_from_slice(&first.to_be_bytes());
    k
}

fn store_with_100_listens() -> (tempfile::TempDir, u32) {
    let t = TestStore::new();
    let actions: Vec<Action> = (0..100)
        .map(|i| Action::Listen(listen("Tamper", &format!("Track {}", i % 10), NOW - 50_000 + i * 100)))
        .collect();
    t.ingestor.ingest_blocking(t.user, actions).expect("ingest");
    let user = t.user.0;
    (t.close(), user)
}

fn verify_after(dir: tempfile::TempDir) -> (tempfile::TempDir, Result<hearsay::log::Verified, VerifyError>) {
    let t = TestStore::reopen(dir);
    let result = t.store.verify_log(t.user).expect("db");
    (t.close(), result)
}

#[test]
fn one_changed_byte_in_a_stored_entry_is_named() {
    let (dir, user) = store_with_100_listens();
    let key = block_key(user, 0);
    tamper(dir.path(), schema::USERID_SEQ_BLOCK, &key, |value| {
        // Change one bit of entry 5's salt, and prove it is a one-byte change.
        let mut block: BlockV2 = decode(schema::USERID_SEQ_BLOCK, &key, value).expect("decode");
        if let StoredEntry::Listen { salt, .. } = &mut block.entries[5] {
            salt[3] ^= 0x10;
        }
        let changed = encode(&block);
        assert_eq!(changed.iter().zip(value.iter()).filter(|(a, b)| a != b).count(), 1);
        *value = changed;
    });
    let (_dir, result) = verify_after(dir);
    assert_eq!(result, Err(VerifyError::Entry { seq: 5 }));
}

#[test]
fn a_changed_signature_or_name_is_caught() {
    let (dir, user) = store_with_100_listens();
    let key = block_key(user, 64);
    tamper(dir.path(), schema::USERID_SEQ_BLOCK, &key, |value| {
        let n = value.len();
        value[n - 1] ^= 1; // last byte of the seal's signature
    });
    let (dir, result) = verify_after(dir);
    assert_eq!(result, Err(VerifyError::Seal { seq: 99, from: 64 }));

    let (dir2, _) = store_with_100_listens();
    tamper(dir2.path(), schema::TRACKCHUNK_TRACKS, &0u32.to_be_bytes(), |value| {
        let mut chunk: TrackChunkV2 = decode(schema::TRACKCHUNK_TRACKS, &[0; 4], value).expect("decode");
        chunk.tracks[4].title = "Track 5".into(); // renames what entry 4 played
        *value = encode(&chunk);
    });
    let (_dir2, result) = verify_after(dir2);
    assert_eq!(result, Err(VerifyError::Entry { seq: 4 }));
    drop(dir);
}

#[test]
fn every_single_byte_flip_of_a_block_is_an_error_never_a_panic() {
    let t = TestStore::new();
    let actions: Vec<Action> =
        (0..20).map(|i| Action::Listen(listen("Flip", &format!("Song {i}"), NOW - 5_000 + i * 100))).collect();
    t.ingestor.ingest_blocking(t.user, actions).expect("ingest");
    let user = t.user.0;
    let dir = t.close();
    let key = block_key(user, 0);
    let db = crate::support::raw_open(&dir.path().join("db"));
    let original =
        db.open_tree(schema::USERID_SEQ_BLOCK).expect("tree").get(&key).expect("get").expect("block").to_vec();
    drop(db);
    let t = TestStore::reopen(dir);
    let raw = sled_tree_of(&t, schema::USERID_SEQ_BLOCK);
    for i in 0..original.len() {
        let mut v = original.clone();
        v[i] ^= 0x01;
        raw.insert(&key, v).expect("insert");
        let result = t.store.verify_log(t.user);
        assert!(!matches!(result, Ok(Ok(_))), "flip at byte {i} of {} went unnoticed", original.len());
    }
    raw.insert(&key, original).expect("restore");
    assert!(t.store.verify_log(t.user).expect("db").is_ok());
    t.ingestor.stop();
}

/// The raw sled tree behind an open store, to change bytes underneath it (sled allows
/// one open handle per database and process).
fn sled_tree_of(t: &TestStore, name: &str) -> sled::Tree {
    t.store.raw_tree_for_tests(name).expect("tree")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_small_batches_are_all_kept_and_share_flushes() {
    let t = TestStore::new();
    let mut tasks = Vec::new();
    for c in 0..40i64 {
        let ingestor = t.ingestor.clone();
        let user = t.user;
        tasks.push(tokio::spawn(async move {
            let mut n = 0;
            for i in 0..25i64 {
                let l = listen("Concurrent", &format!("c{c} i{i}"), NOW - 100_000 + c * 1000 + i);
                let out = ingestor.ingest(user, vec![Action::Listen(l)]).await.expect("ingest");
                n += appended(&out);
            }
            n
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += task.await.expect("task");
    }
    assert_eq!(total, 1000);
    let stats = t.ingestor.stats();
    assert_eq!(stats.batches, 1000);
    assert!(stats.groups < stats.batches, "no group commit happened: {stats:?}");
    eprintln!("1000 concurrent single-listen batches took {} flushes", stats.groups);
    // An unknown user fails alone.
    let err = t.ingestor.ingest(hearsay::store::UserId(999), vec![Action::Listen(listen("A", "B", NOW))]).await;
    assert!(err.is_err());
    assert_eq!(t.store.log_head(t.user).expect("head").n_listens, 1000);
    let v = t.store.verify_log(t.user).expect("db").expect("verifies");
    assert_eq!(v.n_entries, 1000);
}

fn bytes_contain(dir: &std::path::Path, needle: &[u8]) -> bool {
    let mut found = false;
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            found |= bytes_contain(&path, needle);
        } else if let Ok(bytes) = std::fs::read(&path) {
            found |= bytes.windows(needle.len()).any(|w| w == needle);
        }
    }
    found
}

#[test]
fn compaction_removes_erased_listens_and_deleted_users_from_the_files() {
    // Uncompressed, before and after compaction: the files are searched for names.
    let plain = hearsay::store::Options { cache_mb: 8, compression: false, ..Default::default() };
    let t = TestStore::with(&plain);
    let secret = "Zyzzyva Private Song 7731";
    let bob = t.store.create_user("bob", "password1", NOW).expect("bob").id;
    let bobs = "Quixotic Bob Track 5521";
    t.ingestor
        .ingest_blocking(
            t.user,
            vec![
                Action::Listen(listen("Band", "Kept Song", NOW - 20)),
                Action::Listen(listen("Band", secret, NOW - 10)),
            ],
        )
        .expect("ingest");
    t.ingestor.ingest_blocking(bob, vec![Action::Listen(listen("Band", bobs, NOW - 5))]).expect("ingest bob");
    // Alice's own spelling of an artist someone else here spelled first, in a listen she
    // then erases: recorded as her spelling, it must leave the files with the listen.
    let carol = t.store.create_user("carol", "password1", NOW).expect("carol").id;
    t.ingestor.ingest_blocking(carol, vec![Action::Listen(listen("Vrrx Kept Artist", "A", NOW - 30))]).expect("carol");
    let spelling = "VRRX   kept ARTIST";
    t.ingestor.ingest_blocking(t.user, vec![Action::Listen(listen(spelling, "B", NOW - 3))]).expect("spelled");
    let alices = |t: &TestStore| -> Vec<String> {
        let chart = t.store.chart(t.user, Kind::Artist, &Period::AllTime, 10, NOW).expect("chart");
        chart.rows.into_iter().map(|r| r.name).collect()
    };
    assert!(alices(&t).contains(&spelling.to_owned()), "her spelling: {:?}", alices(&t));
    // A release of the hour holding the listens recorded what of alice went in (her
    // contribution record, names included), as the publisher does.
    let period = hearsay::privacy::accountant::period_of(NOW - 10, 3_600);
    let contribution = hearsay::privacy::release::Contribution {
        user: t.user.0,
        level: hearsay::privacy::SharingLevel::Aggregate,
        refused: None,
        artists: vec![(hearsay::privacy::snapshot::ItemName::artist("Band"), 2)],
        tracks: vec![(hearsay::privacy::snapshot::ItemName::track("Band", secret), 1)],
        charged: hearsay::privacy::params::Spend { eps_milli: 150, delta_pico: 100_000 },
    };
    t.store
        .commit_release(
            period,
            hearsay::privacy::accountant::week_of(period),
            b"signed",
            &Default::default(),
            &[contribution],
        )
        .expect("release");
    t.ingestor.ingest_blocking(t.user, vec![Action::Delete { seq: 1 }, Action::Delete { seq: 2 }]).expect("delete");
    // Erasure reaches the contribution record at once: no names, the charge kept.
    let records = t.store.contributions(t.user, 10).expect("contributions");
    assert_eq!(records.len(), 1);
    let (_, c) = &records[0];
    assert!(c.artists.is_empty() && c.tracks.is_empty(), "names survive erasure: {c:?}");
    assert_eq!(c.charged.eps_milli, 150, "the release was made: its charge stands");
    t.ingestor.stop();
    t.store.delete_user(bob).expect("delete bob");
    let dir = t.close();
    // Before compaction the old copies are still in sled's files: the test can fail.
    assert!(bytes_contain(dir.path(), secret.as_bytes()));
    assert!(bytes_contain(dir.path(), spelling.as_bytes()));
    let report = hearsay::store::compact::compact(dir.path(), &plain, &Default::default()).expect("compact");
    assert_eq!(report.tracks_blanked, 3);
    assert!(!bytes_contain(dir.path(), secret.as_bytes()), "erased listen still on disk");
    assert!(!bytes_contain(dir.path(), spelling.as_bytes()), "an erased listen's spelling still on disk");
    assert!(!bytes_contain(dir.path(), bobs.as_bytes()), "deleted user's listen still on disk");
    assert!(bytes_contain(dir.path(), b"Kept Song"));

    let t = TestStore::reopen(dir);
    assert!(t.store.user_by_name("bob").expect("lookup").is_none());
    let titles: Vec<String> = t
        .store
        .listens(t.user, 0, i64::MAX, 10, Order::OldestFirst)
        .expect("read")
        .into_iter()
        .map(|l| l.listen.track().title.clone())
        .collect();
    assert_eq!(titles, ["Kept Song"]);
    t.store.verify_log(t.user).expect("db").expect("verifies after compaction");
    // The blanked track is interned afresh when played again.
    t.ingestor.ingest_blocking(t.user, vec![Action::Listen(listen("Band", secret, NOW))]).expect("again");
    let newest = t.store.listens(t.user, 0, i64::MAX, 1, Order::NewestFirst).expect("read");
    assert_eq!(newest[0].listen.track().title, secret);
    t.store.verify_log(t.user).expect("db").expect("verifies");
}

/// An item's name is stored once, in the track that first credited it: when compaction
/// blanks that track (its one listen erased), an item another track still credits keeps
/// its name, the erased title leaves the files, and later listens find the same item.
#[test]
fn an_item_named_by_an_erased_track_keeps_its_name_through_compaction() {
    let plain = hearsay::store::Options { cache_mb: 8, compression: false, ..Default::default() };
    let t = TestStore::with(&plain);
    let (artist, erased, kept) = ("Obscure Artist Qx", "Erased Title Zq 4471", "Kept Title");
    let first = vec![Action::Listen(listen(artist, erased, NOW - 30)), Action::Listen(listen(artist, kept, NOW - 20))];
    t.ingestor.ingest_blocking(t.user, first).expect("ingest");
    // The artist's item points into the erased listen's track, not a copy of the name.
    let items = t.store.raw_tree_for_tests(schema::ITEMCHUNK_ITEMS).expect("tree");
    let (k, v) = items.first().expect("read").expect("the artists' chunk");
    assert_eq!(k[0], 0, "kind 0: artists");
    let artists: ItemChunkV2 = decode(schema::ITEMCHUNK_ITEMS, &k, &v).expect("decode");
    assert_eq!(artists.items.len(), 1);
    assert!(matches!(artists.items[0].name, ItemName::Spelled { track: 0, .. }), "{artists:?}");
    drop(items);
    t.ingestor.ingest_blocking(t.user, vec![Action::Delete { seq: 0 }]).expect("delete");
    t.ingestor.stop();
    let dir = t.close();
    let report = hearsay::store::compact::compact(dir.path(), &plain, &Default::default()).expect("compact");
    assert_eq!(report.tracks_blanked, 1);
    assert!(!bytes_contain(dir.path(), erased.as_bytes()), "the erased title is still on disk");
    let t = TestStore::reopen(dir);
    let names = |t: &TestStore, kind| -> Vec<(String, u64)> {
        let chart = t.store.chart(t.user, kind, &Period::AllTime, 10, NOW + 60).expect("chart");
        chart.rows.into_iter().map(|r| (r.name, r.listens)).collect()
    };
    assert_eq!(names(&t, Kind::Artist), [(artist.to_owned(), 1)]);
    assert_eq!(names(&t, Kind::Recording), [(kept.to_owned(), 1)]);
    // A new track of the artist counts for the same item, under the same name.
    t.ingestor.ingest_blocking(t.user, vec![Action::Listen(listen(artist, "New Title", NOW))]).expect("again");
    assert_eq!(names(&t, Kind::Artist), [(artist.to_owned(), 2)]);
    let t = TestStore::reopen(t.close());
    assert_eq!(names(&t, Kind::Artist), [(artist.to_owned(), 2)]);
}

/// sled cannot change a database's compression in place: a store made before
/// `store.compression` (uncompressed) opens under the default (compressed) and keeps its
/// own, and `store compact` rewrites it with the configured one, every listen, chart and
/// signature unchanged; either way round.
#[test]
fn a_store_keeps_its_compression_until_compact_rewrites_it() {
    let conf = |dir: &std::path::Path| std::fs::read(dir.join("db").join("conf")).expect("sled's conf");
    let says = |dir: &std::path::Path, compressed: bool| {
        let want = format!("use_compression: {compressed}");
        conf(dir).windows(want.len()).any(|w| w == want.as_bytes())
    };
    let title = "Plainly Stored Title 4410";
    let plain = hearsay::store::Options { cache_mb: 8, compression: false, ..Default::default() };
    let t = TestStore::with(&plain);
    let listens = (0..300)
        .map(|i| Action::Listen(listen(&format!("Band {}", i % 7), &format!("{title} {i}"), NOW - 100_000 + 300 * i)))
        .collect();
    t.ingestor.ingest_blocking(t.user, listens).expect("ingest");
    let dir = t.close();
    assert!(says(dir.path(), false) && bytes_contain(dir.path(), title.as_bytes()), "made uncompressed");

    // Opened with the default (compression on): it keeps its own setting and goes on.
    let t = TestStore::reopen(dir);
    t.ingestor.ingest_blocking(t.user, vec![Action::Listen(listen("Band 0", "Later", NOW - 5))]).expect("ingest");
    let chart = |t: &TestStore| t.store.chart(t.user, Kind::Artist, &Period::AllTime, 10, NOW).expect("chart");
    let before = chart(&t);
    assert_eq!(before.listens, 301);
    let dir = t.close();
    assert!(says(dir.path(), false), "an existing store keeps its compression");

    // Compacted with compression on: rewritten compressed, nothing changed.
    let on = hearsay::store::Options { cache_mb: 8, compression: true, ..Default::default() };
    hearsay::store::compact::compact(dir.path(), &on, &Default::default()).expect("compact");
    assert!(says(dir.path(), true), "compact rewrites with store.compression");
    let t = TestStore::reopen(dir);
    assert_eq!(chart(&t), before);
    t.store.verify_log(t.user).expect("db").expect("verifies");
    let dir = t.close();

    // And back: compacted without compression, opened with it, still the same.
    hearsay::store::compact::compact(dir.path(), &plain, &Default::default()).expect("compact");
    assert!(says(dir.path(), false) && bytes_contain(dir.path(), title.as_bytes()));
    let t = TestStore::reopen(dir);
    assert_eq!(chart(&t), before);
    t.store.verify_log(t.user).expect("db").expect("verifies");
}

#[test]
fn corrupt_values_are_errors_naming_tree_and_key_and_harm_no_one_else() {
    let t = TestStore::new();
    let bob = t.store.create_user("bob", "password1", NOW).expect("bob").id;
    let carol = t.store.create_user("carol", "password1", NOW).expect("carol").id;
    t.ingestor.ingest_blocking(t.user, vec![Action::Listen(listen("A", "B", NOW - 10))]).expect("ingest");
    let user = t.user.0;
    let dir = t.close();
    tamper(dir.path(), schema::USERID_LOGHEAD, &user.to_be_bytes(), |v| v.truncate(3));
    tamper(dir.path(), schema::USERID_USER, &bob.0.to_be_bytes(), |v| v[0] = 0xEE);
    let t = TestStore::reopen(dir);
    let err = t.store.users().expect_err("corrupt user record").to_string();
    assert!(err.contains("userid_user") && err.contains(&hex::encode(bob.0.to_be_bytes())), "{err}");
    let err = t
        .ingestor
        .ingest_blocking(t.user, vec![Action::Listen(listen("A", "C", NOW))])
        .expect_err("corrupt head")
        .to_string();
    assert!(err.contains("userid_loghead"), "{err}");
    let err =
        t.ingestor.ingest_blocking(bob, vec![Action::Listen(listen("A", "C", NOW))]).expect_err("bob").to_string();
    assert!(err.contains("userid_user"), "{err}");
    // Nobody else is affected.
    let out = t.ingestor.ingest_blocking(carol, vec![Action::Listen(listen("A", "C", NOW))]).expect("carol ingests");
    assert_eq!(out, vec![Outcome::Appended { seq: 0 }]);
}

#[test]
fn extra_client_metadata_is_kept_beside_the_log_and_erased_with_the_listen() {
    let t = TestStore::new();
    let with_info = listen("Band", "Song", NOW - 500)
        .with_info(Some(r#"{"origin_url":"https://example.org/x","tracknumber":3}"#.into()))
        .expect("valid");
    let out = t
        .ingestor
        .ingest_blocking(
            t.user,
            vec![Action::Listen(listen("Band", "Plain", NOW - 900)), Action::Listen(with_info.clone())],
        )
        .expect("ingest");
    assert_eq!(out, vec![Outcome::Appended { seq: 0 }, Outcome::Appended { seq: 1 }]);
    let infos = t.store.listen_infos(t.user, &[0, 1]).expect("infos");
    assert_eq!((infos.get(&0).map(String::as_str), infos.get(&1).map(String::as_str)), (None, with_info.info()));
    // Not part of the signed bytes: the log verifies, and survives a restart.
    t.store.verify_log(t.user).expect("db").expect("verifies");
    let t = TestStore::reopen(t.close());
    assert_eq!(t.store.listen_infos(t.user, &[1]).expect("infos").get(&1).map(String::as_str), with_info.info());
    t.ingestor.ingest_blocking(t.user, vec![Action::Delete { seq: 1 }]).expect("delete");
    assert!(t.store.listen_infos(t.user, &[1]).expect("infos").is_empty());
}

/// A batch refused for what it carries (an adopted listen or love this node would not
/// take from a client, an unknown user) fails alone before anything is prepared, and
/// costs no reload of the writer's memory (`IngestStats::reloads`: on a large node the
/// reload takes seconds while every batch waits). Damage met while preparing still
/// reloads.
#[test]
fn a_batch_refused_for_what_it_carries_costs_no_reload() {
    use hearsay::log::Body;
    let t = TestStore::new();
    t.ingestor.ingest_blocking(t.user, vec![Action::Listen(listen("A", "B", NOW - 10))]).expect("ingest");
    let user = t.user.0;
    let dir = t.close();
    tamper(dir.path(), schema::USERID_SEQ_BLOCK, &block_key(user, 0), |v| v.truncate(3));
    let t = TestStore::reopen(dir);
    t.ingestor.ingest_blocking(t.user, vec![Action::Listen(listen("A", "C", NOW))]).expect_err("damaged tail");
    assert_eq!(t.ingestor.stats().reloads, 1, "damage met while preparing reloads");
    let dir = t.close();
    let t = TestStore::reopen(dir);
    let bob = t.store.create_user("bob", "password1", NOW).expect("bob").id;
    let track = listen("A", "D", NOW).track().clone();
    let too_early = Body::Listen { track: track.clone(), listened_at: 5, duration_ms: Some(200_000), client: None };
    let no_duration = Body::Listen { track: track.clone(), listened_at: NOW - 50, duration_ms: Some(0), client: None };
    let mut long = track.clone();
    long.artist = "x".repeat(100_000);
    for body in [too_early, no_duration, Body::Love(long.clone()), Body::Hate(long)] {
        let good = Action::Listen(listen("A", "E", NOW - 20));
        let bad = Action::Adopt(Content::Present { salt: [7; 16], body });
        let err = t.ingestor.ingest_blocking(bob, vec![good, bad]).expect_err("refused").to_string();
        assert!(err.contains("adopted entry"), "{err}");
    }
    t.ingestor
        .ingest_blocking(hearsay::store::UserId(999), vec![Action::Listen(listen("A", "F", NOW))])
        .expect_err("no such user");
    assert_eq!(t.ingestor.stats().reloads, 0, "a refused batch reloaded the writer");
    // Nothing of a refused batch was appended, and the writer goes on.
    assert_eq!(t.store.log_head(bob).expect("head").n_entries, 0);
    let out = t.ingestor.ingest_blocking(bob, vec![Action::Listen(listen("A", "E", NOW - 20))]).expect("ingest");
    assert_eq!(out, vec![Outcome::Appended { seq: 0 }]);
    t.store.verify_log(bob).expect("db").expect("verifies");
}
