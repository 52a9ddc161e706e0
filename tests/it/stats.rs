//! Statistics against ground truth from the fixture generator, incremental aggregates
//! against a rebuild, time zones, series and the clock.

use std::collections::HashMap;
use std::sync::OnceLock;

use hearsay::import::import_jsonl;
use hearsay::log::dedupe::normalize_name;
use hearsay::stats::chart::Kind;
use hearsay::stats::credits::CreditRules;
use hearsay::stats::period::Period;
use hearsay::store::aggregates::Step;
use hearsay::store::{Action, Ingestor, Options, Store, UserId, schema};

use crate::gen_history::{END_2026, Fixture, Out, Params, UserTruth};
use crate::support::{NOW, TestStore, generate_fixture, listen};

/// The generator's output for 3 users (ListenBrainz JSONL), made once per test run.
pub fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let params = Params { users: 3, scrobbles: 30_000, formats: vec![Out::ListenBrainzJsonl], ..Params::default() };
        generate_fixture("stats", &params)
    })
}

/// "Now" for the fixture: a day after its histories end (2026-01-01).
const LATER: i64 = END_2026 + 86_400;

struct Node {
    _dir: tempfile::TempDir,
    store: Store,
    ingestor: Ingestor,
}

fn node() -> Node {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), &Options { cache_mb: 16, ..Default::default() }).expect("open");
    let ingestor = Ingestor::start(store.clone(), 20_000, CreditRules::default()).expect("writer");
    Node { _dir: dir, store, ingestor }
}

fn import_text(n: &Node, user: UserId, text: &[u8]) -> hearsay::import::Summary {
    import_jsonl(text, &n.ingestor, user, LATER, |_| {}).expect("import")
}

/// (name, listens) rows of a chart, with the main artist for tracks.
fn rows(n: &Node, user: UserId, kind: Kind, period: &Period, limit: usize) -> Vec<(String, u64)> {
    n.store
        .chart(user, kind, period, limit, LATER)
        .expect("chart")
        .rows
        .into_iter()
        .map(|r| {
            (
                match r.artist {
                    Some(a) => format!("{a} - {}", r.name),
                    None => r.name,
                },
                r.listens,
            )
        })
        .collect()
}

fn truth_artists(user: &UserTruth) -> Vec<(String, u64)> {
    user.top_artists.clone()
}

fn truth_tracks(user: &UserTruth) -> Vec<(String, u64)> {
    user.top_tracks.iter().map(|(artists, title, n)| (format!("{} - {title}", artists[0]), *n)).collect()
}

/// Truth rows that our chart has with the same count. A truth row tied with our last
/// place agrees if its count matches that place: the generator breaks ties by catalog
/// id, which a node cannot know.
fn agreement(ours: &[(String, u64)], truth: &[(String, u64)]) -> usize {
    let last = ours.last().map_or(0, |r| r.1);
    truth
        .iter()
        .filter(|t| ours.contains(t) || (t.1 == last && ours.iter().filter(|o| o.1 == last).count() > 0))
        .count()
}

/// Truth names that are also in our top list, whatever the counts.
fn same_names(ours: &[(String, u64)], truth: &[(String, u64)]) -> usize {
    truth.iter().filter(|t| ours.iter().any(|o| o.0 == t.0)).count()
}

#[test]
fn charts_and_counts_match_the_generators_ground_truth() {
    let n = node();
    for user in &fixture().users {
        let name = user.name.as_str();
        let id = n.store.create_user(name, "password1", NOW).expect("user").id;
        let text = std::fs::read(user.files.listenbrainz_jsonl.as_ref().expect("jsonl")).expect("listens.jsonl");
        let summary = import_text(&n, id, &text);
        let want = user.listens;
        assert_eq!((summary.imported, summary.bad), (want, 0), "{name}");
        // A second import adds nothing.
        assert_eq!(import_text(&n, id, &text).imported, 0);

        let all = n.store.chart(id, Kind::Artist, &Period::AllTime, 25, LATER).expect("chart");
        assert_eq!(all.listens, want);
        for (&year, &count) in &user.listens_per_year {
            let c = n.store.chart(id, Kind::Artist, &Period::Year(year), 1, LATER).expect("year chart");
            assert_eq!(c.listens, count, "{name} {year}");
        }
        let tracks = n.store.chart(id, Kind::Recording, &Period::AllTime, 25, LATER).expect("chart");
        assert_eq!(tracks.distinct, user.distinct_tracks, "{name}");

        // Plain-string credits: "A & B" without MBIDs stays one artist until both are
        // known, so a few counts differ. Report the agreement; require 23 of 25.
        let our_artists = rows(&n, id, Kind::Artist, &Period::AllTime, 25);
        let our_tracks = rows(&n, id, Kind::Recording, &Period::AllTime, 25);
        let artist_names = same_names(&our_artists, &truth_artists(user));
        let artist_counts = agreement(&our_artists, &truth_artists(user));
        let track_counts = agreement(&our_tracks, &truth_tracks(user));
        eprintln!(
            "{name} (plain-string credits): top-25 artists: {artist_names}/25 same artists, {artist_counts}/25 with the exact count; \
             top-25 tracks: {track_counts}/25 exact"
        );
        assert!(artist_names >= 23, "{name}: only {artist_names} of the 25 top artists found\n{our_artists:?}");
        assert!(track_counts >= 23, "{name}: only {track_counts} of 25 top tracks agree\n{our_tracks:?}");
    }
}

#[test]
fn charts_are_exact_when_clients_list_the_artists() {
    // Rewrite every listen as Navidrome sends it, with `artist_names` from the catalogue.
    let mut credits: HashMap<(String, String), Vec<String>> = HashMap::new();
    for t in &fixture().catalog {
        credits.insert((t.display_artist.clone(), t.display_title.clone()), t.artists.clone());
    }
    let n = node();
    for user in &fixture().users {
        let name = user.name.as_str();
        let id = n.store.create_user(name, "password1", NOW).expect("user").id;
        let text = std::fs::read_to_string(user.files.listenbrainz_jsonl.as_ref().expect("jsonl")).expect("listens");
        let mut enriched = String::new();
        for line in text.lines() {
            let mut v: serde_json::Value = serde_json::from_str(line).expect("line");
            let md = &v["track_metadata"];
            let key =
                (md["artist_name"].as_str().expect("a").to_owned(), md["track_name"].as_str().expect("t").to_owned());
            let listed = credits.get(&key).unwrap_or_else(|| panic!("{key:?} not in the catalogue")).clone();
            v["track_metadata"]["additional_info"]["artist_names"] = serde_json::json!(listed);
            enriched.push_str(&v.to_string());
            enriched.push('\n');
        }
        import_text(&n, id, enriched.as_bytes());
        assert_eq!(rows(&n, id, Kind::Artist, &Period::AllTime, 25), truth_artists(user), "{name}: top artists");
        let ours = rows(&n, id, Kind::Recording, &Period::AllTime, 25);
        assert_eq!(agreement(&ours, &truth_tracks(user)), 25, "{name}: top tracks\n{ours:?}");
    }
}

fn dump(store: &Store) -> Vec<(String, Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    for name in [
        schema::ITEMCHUNK_ITEMS,
        schema::TRACKCHUNK_CREDITS,
        schema::USERID_BUCKET_COUNTS,
        schema::USERID_RECORDING_FEEDBACK,
        schema::TRACKID_SPELLINGS,
    ] {
        for kv in store.raw_tree_for_tests(name).expect("tree").iter() {
            let (k, v) = kv.expect("kv");
            out.push((name.to_owned(), k.to_vec(), v.to_vec()));
        }
    }
    out
}

#[test]
fn incremental_aggregates_equal_a_rebuild_after_random_ingests_and_deletes() {
    let artists = [
        "Simon & Garfunkel",
        "Simon",
        "Garfunkel",
        "Beyonc\u{e9}",
        "BEYONCE\u{301}",
        "坂本龍一 feat. 細野晴臣",
        "Jay-Z & Kanye West",
        "Jay-Z",
        "Kanye West",
        "🎵 Emoji",
    ];
    for seed in 1..=6u64 {
        let t = TestStore::new();
        let bob = t.store.create_user("bob", "password1", NOW).expect("bob").id;
        t.store.set_timezone(bob, "America/New_York").expect("tz");
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut next = |m: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % m
        };
        let mut seqs: HashMap<UserId, u64> = HashMap::new();
        for _ in 0..40 {
            let user = if next(2) == 0 { t.user } else { bob };
            let mut actions = Vec::new();
            for _ in 0..(1 + next(30)) {
                let roll = next(10);
                let have = *seqs.get(&user).unwrap_or(&0);
                if roll == 0 && have > 0 {
                    actions.push(Action::Delete { seq: next(have) });
                } else if roll == 1 {
                    let track = listen(artists[next(artists.len() as u64) as usize], &format!("Song {}", next(5)), NOW)
                        .into_track();
                    actions.push(match next(3) {
                        0 => Action::Love(track),
                        1 => Action::Hate(track),
                        _ => Action::Unlove(track),
                    });
                } else {
                    let artist = artists[next(artists.len() as u64) as usize];
                    let title = format!("Song {} (feat. Guest {})", next(5), next(2));
                    let at = NOW - 400 * 86_400 + next(400 * 86_400) as i64;
                    actions.push(Action::Listen(listen(artist, &title, at)));
                }
            }
            let outcomes = t.ingestor.ingest_blocking(user, actions).expect("ingest");
            let appended =
                outcomes.iter().filter(|o| matches!(o, hearsay::store::Outcome::Appended { .. })).count() as u64;
            *seqs.entry(user).or_default() += appended;
        }
        t.ingestor.stop();
        let incremental = dump(&t.store);
        assert!(!incremental.is_empty());
        t.store.rebuild_stats(&CreditRules::default()).expect("rebuild");
        assert!(incremental == dump(&t.store), "seed {seed}: incremental aggregates differ from a rebuild");
    }
}

#[test]
fn names_are_one_item_after_normalisation_and_display_as_first_seen() {
    let t = TestStore::new();
    let spellings = ["Beyonc\u{e9}", "BEYONCE\u{301}", "beyonc\u{e9}", " Beyonc\u{e9} "];
    let actions = spellings
        .iter()
        .enumerate()
        .map(|(i, a)| Action::Listen(listen(a, "Halo", NOW - 10_000 + 300 * i as i64)))
        .collect();
    t.ingestor.ingest_blocking(t.user, actions).expect("ingest");
    let chart = t.store.chart(t.user, Kind::Artist, &Period::AllTime, 10, NOW).expect("chart");
    assert_eq!(chart.rows.len(), 1);
    assert_eq!((chart.rows[0].name.as_str(), chart.rows[0].listens), ("Beyonc\u{e9}", 4));
    let tracks = t.store.chart(t.user, Kind::Recording, &Period::AllTime, 10, NOW).expect("chart");
    assert_eq!(tracks.rows.len(), 1);
}

/// Each user's statistics name an item as that user first spelled it, whoever on the
/// node scrobbled it first (a private user's spelling must not reach anyone's page), and
/// links name items by a handle that does not depend on who came first. A rebuild and the
/// schema 6 migration give the same spellings.
#[test]
fn each_user_sees_items_as_they_first_spelled_them() {
    use hearsay::store::aggregates::item_handle;
    use hearsay::store::users::SharingLevel;
    let t = TestStore::new();
    let day = NOW - 86_400;
    let private = add_user(
        &t,
        "p",
        &[("radioHEAD", "CREEP", day), ("radioHEAD", "CREEP", day + 1000), ("Obscure  one", "x", day)],
    );
    t.store.set_visibility(private, SharingLevel::Private).expect("private");
    let u = add_user(&t, "u", &[("Radiohead", "Creep", day + 2), ("RADIOHEAD", "creep", day + 3000)]);
    let w = add_user(&t, "w", &[("radioHEAD", "CREEP", day + 4), ("Radiohead", "Creep", day + 3000)]);
    let x = add_user(&t, "x", &[("obscure one", "X", day + 6)]);
    for v in [u, w, x] {
        t.store.set_visibility(v, SharingLevel::Public).expect("public");
    }
    let names = |user: UserId, kind: Kind| -> Vec<(String, Option<String>, u64, String)> {
        let chart = t.store.chart(user, kind, &Period::AllTime, 10, NOW).expect("chart");
        chart.rows.into_iter().map(|r| (r.name, r.artist, r.listens, r.handle)).collect()
    };
    let artist = item_handle(Kind::Artist, "Radiohead", None);
    let track = item_handle(Kind::Recording, "Creep", Some("Radiohead"));
    let expect = |who: UserId, a: &str, tr: &str| {
        assert_eq!(names(who, Kind::Artist)[0], (a.to_owned(), None, 2, artist.clone()), "artists of {who:?}");
        assert_eq!(names(who, Kind::Recording)[0], (tr.to_owned(), Some(a.to_owned()), 2, track.clone()));
    };
    let check = |stage: &str| {
        expect(private, "radioHEAD", "CREEP");
        expect(u, "Radiohead", "Creep");
        expect(w, "radioHEAD", "CREEP");
        assert_eq!(names(x, Kind::Artist)[0].0, "obscure one", "{stage}");
        let utc = jiff::tz::TimeZone::UTC;
        let node = t.store.node_chart(Kind::Artist, &Period::AllTime, 10, NOW, &utc).expect("node chart");
        let rows: Vec<(&str, u64)> = node.rows.iter().map(|r| (r.row.name.as_str(), r.row.listens)).collect();
        // The stored "radioHEAD" is the private user's first spelling, but w (public)
        // shows it too; "Obscure  one" only the private user sent.
        assert_eq!(rows, [("radioHEAD", 4), ("obscure one", 1)], "{stage}: a public user's spelling");
    };
    check("incremental");
    let spellings = |store: &Store| -> Vec<(Vec<u8>, Vec<u8>)> {
        let tree = store.raw_tree_for_tests(schema::USERID_ITEM_SPELLING).expect("tree");
        tree.iter().map(|kv| kv.expect("kv")).map(|(k, v)| (k.to_vec(), v.to_vec())).collect()
    };
    let incremental = spellings(&t.store);
    assert!(!incremental.is_empty());
    t.ingestor.stop();
    t.store.rebuild_stats(&CreditRules::default()).expect("rebuild");
    assert_eq!(spellings(&t.store), incremental, "a rebuild gives the writer's spellings");
    check("rebuilt");
    t.store.rebuild_spellings(&CreditRules::default()).expect("migration");
    assert_eq!(spellings(&t.store), incremental, "the migration gives the writer's spellings");
    check("migrated");
    // Without w, no public user shows the stored spelling: u's is shown.
    t.store.set_visibility(w, SharingLevel::Aggregate).expect("w leaves");
    let utc = jiff::tz::TimeZone::UTC;
    for period in [Period::AllTime, Period::Year(2025), Period::LastDays(7)] {
        let node = t.store.node_chart(Kind::Recording, &period, 10, NOW, &utc).expect("node chart");
        let rows: Vec<(&str, Option<&str>, u64)> =
            node.rows.iter().map(|r| (r.row.name.as_str(), r.row.artist.as_deref(), r.row.listens)).collect();
        assert_eq!(rows, [("Creep", Some("Radiohead"), 2), ("X", Some("obscure one"), 1)], "{period:?}");
    }
}

#[test]
fn periods_follow_the_users_time_zone() {
    let t = TestStore::new();
    // 2024-03-31T22:30Z is already April 1st, 00:30, in Berlin (CEST).
    let at = 1_711_924_200;
    t.ingestor.ingest_blocking(t.user, vec![Action::Listen(listen("A", "T", at))]).expect("ingest");
    let march = Period::Month { year: 2024, month: 3 };
    let april = Period::Month { year: 2024, month: 4 };
    let count = |p: &Period| t.store.chart(t.user, Kind::Artist, p, 1, NOW).expect("chart").listens;
    assert_eq!((count(&march), count(&april)), (1, 0), "UTC");
    t.ingestor.stop();
    t.store.set_timezone(t.user, "Europe/Berlin").expect("tz");
    t.store.rebuild_user_stats(t.user).expect("rebuild");
    assert_eq!((count(&march), count(&april)), (0, 1), "Berlin");
    assert!(t.store.set_timezone(t.user, "Mars/Olympus").is_err());
    let bad = t.store.chart(t.user, Kind::Artist, &Period::Range { from: 10, to: 5 }, 1, NOW);
    assert!(bad.expect_err("reversed").to_string().contains("starts after it ends"));
    assert!(t.store.chart(UserId(999), Kind::Artist, &Period::AllTime, 1, NOW).is_err());
}

#[test]
fn series_clock_and_partial_days() {
    let t = TestStore::new();
    // Monday 2024-01-01: 3 listens at 10:xx UTC, 1 at 23:00; Wednesday: 2 at 08:xx.
    let monday = 1_704_067_200;
    let mut actions: Vec<Action> =
        (0..3).map(|i| Action::Listen(listen("A", &format!("T{i}"), monday + 10 * 3600 + i * 60))).collect();
    actions.push(Action::Listen(listen("B", "Late", monday + 23 * 3600)));
    actions.extend((0..2).map(|i| Action::Listen(listen("C", &format!("W{i}"), monday + 2 * 86_400 + 8 * 3600 + i))));
    t.ingestor.ingest_blocking(t.user, actions).expect("ingest");

    let week = Period::IsoWeek { year: 2024, week: 1 };
    let days = t.store.listens_series(t.user, &week, Step::Day, NOW).expect("series");
    let counts: Vec<u64> = days.iter().map(|(_, n)| *n).collect();
    assert_eq!(counts, [4, 0, 2, 0, 0, 0, 0]);
    let weeks =
        t.store.listens_series(t.user, &Period::Month { year: 2024, month: 1 }, Step::Week, NOW).expect("weeks");
    assert_eq!(weeks.iter().map(|(_, n)| n).sum::<u64>(), 6);
    let clock = t.store.clock(t.user, &week, NOW).expect("clock");
    assert_eq!((clock[0][10], clock[0][23], clock[2][8]), (3, 1, 2));
    // A range that cuts days in half reads the listens of the partial days.
    let partial = Period::Range { from: monday + 10 * 3600 + 30, to: monday + 2 * 86_400 + 8 * 3600 + 1 };
    let chart = t.store.chart(t.user, Kind::Artist, &partial, 10, NOW).expect("chart");
    assert_eq!(chart.listens, 4, "two of A's, B's and one of C's");
    let names: Vec<&str> = chart.rows.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["A", "B", "C"]);
    let _ = normalize_name("");
}

fn add_user(t: &TestStore, name: &str, listens: &[(&str, &str, i64)]) -> UserId {
    let id = t.store.create_user(name, "password1", NOW).expect("user").id;
    let actions = listens.iter().map(|(a, title, at)| Action::Listen(listen(a, title, *at))).collect();
    t.ingestor.ingest_blocking(id, actions).expect("ingest");
    id
}

#[test]
fn node_charts_count_public_users_only() {
    use hearsay::store::users::SharingLevel;
    let t = TestStore::new();
    let day = NOW - 86_400;
    let u1 = add_user(&t, "u1", &[("Shared", "S", day), ("Shared", "S", day + 300), ("Solo", "X", day + 2)]);
    let u2 = add_user(&t, "u2", &[("Shared", "S", day + 3)]);
    for u in [u1, u2] {
        t.store.set_visibility(u, SharingLevel::Public).expect("public");
    }
    let private = add_user(&t, "u3", &[("Secret Artist", "Z", day + 4), ("Shared", "S", day + 5)]);
    t.store.set_visibility(private, SharingLevel::Private).expect("private");
    // At the aggregate level (the default), a user counts only in DP releases.
    add_user(&t, "u4", &[("Aggregate Artist", "Q", day + 6), ("Shared", "S", day + 7)]);
    let utc = jiff::tz::TimeZone::UTC;
    let chart = t.store.node_chart(Kind::Artist, &Period::LastDays(7), 10, NOW, &utc).expect("node chart");
    let rows: Vec<(&str, u64, u64)> =
        chart.rows.iter().map(|r| (r.row.name.as_str(), r.row.listens, r.listeners)).collect();
    assert_eq!(rows, [("Shared", 3, 2), ("Solo", 1, 1)]);
    assert_eq!((chart.listens, chart.listeners), (4, 2));
}

#[test]
fn loves_and_hates_follow_the_latest_feedback() {
    let t = TestStore::new();
    let song = |title: &str| listen("Band", title, NOW).into_track();
    t.ingestor
        .ingest_blocking(
            t.user,
            vec![
                Action::Listen(listen("Band", "One", NOW - 1000)),
                Action::Listen(listen("Band", "One", NOW - 500)),
                Action::Love(song("One")),
                Action::Love(song("Two")),
                Action::Hate(song("Three")),
                Action::Unlove(song("Two")),
                Action::Love(song("Four")),
            ],
        )
        .expect("ingest");
    let loves = t.store.feedback(t.user, 1, 10).expect("loves");
    let names: Vec<(&str, u64)> = loves.iter().map(|f| (f.row.name.as_str(), f.row.listens)).collect();
    assert_eq!(names, [("Four", 0), ("One", 2)], "newest first, with listen counts");
    let hates = t.store.feedback(t.user, -1, 10).expect("hates");
    assert_eq!(hates.len(), 1);
    assert_eq!(hates[0].row.name, "Three");
    // A love given on another spelling of the same recording replaces the hate.
    t.ingestor.ingest_blocking(t.user, vec![Action::Love(listen("BAND", "three", NOW).into_track())]).expect("love");
    assert!(t.store.feedback(t.user, -1, 10).expect("hates").is_empty());
    t.store.verify_log(t.user).expect("db").expect("feedback entries verify");
    let one = t.store.chart(t.user, Kind::Recording, &Period::AllTime, 5, NOW).expect("chart").rows[0].id;
    // Counted only where the policy lets a user be counted exactly: public users.
    assert_eq!(t.store.love_count(one).expect("love count"), 0, "the default level is aggregate");
    t.store.set_visibility(t.user, hearsay::store::users::SharingLevel::Public).expect("public");
    assert_eq!(t.store.love_count(one).expect("love count"), 1);
}

#[test]
fn discoveries_first_listens_streaks_and_rank_history() {
    let t = TestStore::new();
    let monday = 1_704_067_200; // 2024-01-01, a Monday
    let d = |n: i64| monday + n * 86_400 + 3600;
    let listens = [
        ("Old", "A", d(0)),
        ("Old", "A", d(1)),
        ("Old", "B", d(2)),
        ("New", "C", d(8)),
        ("New", "C", d(9)),
        ("New", "D", d(9) + 60),
        ("Old", "A", d(10)),
        ("Old", "A", d(11)),
    ];
    let actions = listens.iter().map(|(a, title, at)| Action::Listen(listen(a, title, *at))).collect();
    t.ingestor.ingest_blocking(t.user, actions).expect("ingest");
    let later = monday + 30 * 86_400;
    let week2 = Period::IsoWeek { year: 2024, week: 2 };
    let found = t.store.discoveries(t.user, Kind::Artist, &week2, 10, later).expect("discoveries");
    let names: Vec<&str> = found.rows.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["New"]);

    let all = t.store.chart(t.user, Kind::Artist, &Period::AllTime, 10, later).expect("chart");
    let new_id = all.rows.iter().find(|r| r.name == "New").expect("New").id;
    let old_id = all.rows.iter().find(|r| r.name == "Old").expect("Old").id;
    assert_eq!(t.store.first_listen(t.user, Kind::Artist, new_id).expect("first"), Some(d(8)));
    assert_eq!(t.store.first_listen(t.user, Kind::Artist, old_id).expect("first"), Some(d(0)));

    let s = t.store.streaks(t.user, d(11)).expect("streaks");
    assert_eq!(s.longest.map(|(_, n)| n), Some(4), "days 8..=11");
    assert_eq!(s.current, 4);

    // An artist's own series, and the weekly chart archive.
    let january = Period::Month { year: 2024, month: 1 };
    let weekly = t.store.item_series(t.user, Kind::Artist, old_id, &january, Step::Week, later).expect("series");
    assert_eq!(weekly.iter().map(|(_, n)| *n).collect::<Vec<_>>()[..3], [3, 2, 0]);
    let monthly =
        t.store.item_series(t.user, Kind::Artist, new_id, &Period::Year(2024), Step::Month, later).expect("series");
    assert_eq!((monthly.len(), monthly[0].1), (12, 3));
    let week2_chart = t.store.weekly_chart(t.user, Kind::Artist, 2024, 2, 10, later).expect("weekly");
    let rows: Vec<(&str, u32, Option<u32>, bool)> =
        week2_chart.iter().map(|w| (w.row.name.as_str(), w.rank, w.previous_rank, w.new)).collect();
    assert_eq!(rows, [("New", 1, None, true), ("Old", 2, Some(1), false)]);
    assert!(
        t.store.first_listen(t.user, Kind::Artist, 9_999).expect_err("unknown").to_string().contains("no such artist")
    );

    let history = t
        .store
        .rank_history(t.user, Kind::Artist, old_id, &Period::Month { year: 2024, month: 1 }, later)
        .expect("ranks");
    let ranks: Vec<Option<u32>> = history.iter().map(|w| w.rank).collect();
    // Week 1: Old is the only artist; week 2: New (3 listens) beats Old (2); week 3: none.
    assert_eq!(&ranks[..3], [Some(1), Some(2), None]);
    assert_eq!(history.len(), 5, "the ISO weeks starting in January 2024");
}

#[test]
fn neighbours_and_similar_artists_come_from_public_users_only() {
    use hearsay::store::users::SharingLevel;
    let t = TestStore::new();
    let at = NOW - 1000;
    let me =
        add_user(&t, "me", &[("Radiohead", "a", at), ("Portishead", "b", at + 1), ("Massive Attack", "c", at + 2)]);
    let twin =
        add_user(&t, "twin", &[("Radiohead", "a", at), ("Portishead", "b", at + 1), ("Massive Attack", "c", at + 2)]);
    let half = add_user(&t, "half", &[("Radiohead", "a", at), ("ABBA", "d", at + 1)]);
    let other = add_user(&t, "other", &[("ABBA", "d", at)]);
    for u in [twin, half, other] {
        t.store.set_visibility(u, SharingLevel::Public).expect("public");
    }
    let hidden =
        add_user(&t, "hidden", &[("Radiohead", "a", at), ("Portishead", "b", at + 1), ("Massive Attack", "c", at + 2)]);
    t.store.set_visibility(hidden, SharingLevel::Private).expect("private");
    // An aggregate user with a rare artist: neither a neighbour nor in "similar artists".
    add_user(&t, "quiet", &[("Radiohead", "a", at), ("Zzq Rare Aggregate Band", "r", at + 1)]);
    let n = t.store.neighbours(me, 10).expect("neighbours");
    let names: Vec<&str> = n.iter().map(|x| x.user.name.as_str()).collect();
    assert_eq!(names, ["twin", "half"]);
    assert!(n[0].similarity > 0.99 && n[1].similarity < 0.6);

    let chart = t.store.chart(me, Kind::Artist, &Period::AllTime, 10, NOW).expect("chart");
    let radiohead = chart.rows.iter().find(|r| r.name == "Radiohead").expect("r").id;
    let similar = t.store.similar_artists(radiohead, 5).expect("similar");
    let order: Vec<&str> = similar.iter().map(|(r, _)| r.name.as_str()).collect();
    let pos = |name: &str| order.iter().position(|n| *n == name).unwrap_or(usize::MAX);
    assert!(pos("Portishead") < pos("ABBA") && pos("Massive Attack") < pos("ABBA"), "{order:?}");
    assert!(!order.contains(&"Zzq Rare Aggregate Band"), "an aggregate user's artist leaked: {order:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_time_zone_change_through_the_running_writer_recounts_the_buckets() {
    let t = TestStore::new();
    let at = 1_711_924_200; // 2024-03-31T22:30Z: April 1st in Berlin
    t.ingestor.ingest(t.user, vec![Action::Listen(listen("A", "T", at))]).await.expect("ingest");
    let april = Period::Month { year: 2024, month: 4 };
    let count = |p: &Period| t.store.chart(t.user, Kind::Artist, p, 1, NOW).expect("chart").listens;
    assert_eq!(count(&april), 0);
    t.ingestor.set_timezone(t.user, "Europe/Berlin").await.expect("set");
    assert_eq!(count(&april), 1);
    // Appends after the change count in the new zone, and a rebuild agrees.
    t.ingestor.ingest(t.user, vec![Action::Listen(listen("B", "U", at + 600))]).await.expect("ingest");
    assert_eq!(count(&april), 2);
    t.ingestor.stop();
    let before = dump(&t.store);
    t.store.rebuild_stats(&CreditRules::default()).expect("rebuild");
    assert!(before == dump(&t.store), "incremental after a zone change equals a rebuild");
}

#[test]
fn a_time_zone_change_cut_short_is_recounted_at_the_next_open() {
    let t = TestStore::new();
    let at = 1_711_924_200; // 2024-03-31T22:30Z: April 1st in Berlin
    t.ingestor.ingest_blocking(t.user, vec![Action::Listen(listen("A", "T", at))]).expect("ingest");
    t.ingestor.stop();
    // The zone is stored (with its pending recount); the process dies before the recount.
    t.store.set_timezone(t.user, "Europe/Berlin").expect("set");
    let user = t.user;
    let dir = t.close();
    let store = Store::open(dir.path(), &Options { cache_mb: 8, ..Default::default() }).expect("reopen");
    let april = Period::Month { year: 2024, month: 4 };
    assert_eq!(store.chart(user, Kind::Artist, &april, 1, NOW).expect("chart").listens, 1, "counted in Berlin time");
    let before = dump(&store);
    store.rebuild_stats(&CreditRules::default()).expect("rebuild");
    assert!(before == dump(&store), "the recount equals a rebuild");
}

/// Two stores that differ only by a private user who scrobbled first: another member's
/// chart (with more items tied at the last place than any cap would name) and loves list
/// (a love for a track never listened to) are the same in both. Item numbers differ
/// between the two, so anything ordered or cut by them would show.
#[test]
fn a_private_user_who_came_first_changes_no_one_elses_chart_or_loves() {
    use hearsay::store::users::SharingLevel;
    let world = |with_private: bool| {
        let t = TestStore::new();
        let day = NOW - 86_400;
        if with_private {
            let p = add_user(&t, "p", &[("Probe Artist", "Probe Song", day), ("RADIOHEAD", "CREEP", day + 10)]);
            t.store.set_visibility(p, SharingLevel::Private).expect("private");
        }
        let m = t.store.create_user("m", "password1", NOW).expect("m").id;
        let mut actions: Vec<Action> =
            (0..1_010).map(|i| Action::Listen(listen(&format!("zz filler {i:04}"), "x", day - 70 * i))).collect();
        actions.push(Action::Listen(listen("Probe Artist", "y", day + 3_000)));
        actions.push(Action::Love(listen("radiohead", "creep", NOW).into_track()));
        t.ingestor.ingest_blocking(m, actions).expect("ingest");
        let chart = t.store.chart(m, Kind::Artist, &Period::AllTime, 10, NOW).expect("chart");
        let rows: Vec<(String, String, u64)> = chart.rows.into_iter().map(|r| (r.name, r.handle, r.listens)).collect();
        let loves: Vec<(String, Option<String>)> =
            t.store.feedback(m, 1, 10).expect("loves").into_iter().map(|f| (f.row.name, f.row.artist)).collect();
        (rows, loves)
    };
    let (with, without) = (world(true), world(false));
    assert_eq!(with, without);
    assert_eq!(with.0[0].0, "Probe Artist", "every item tied at the last place is named before the cut");
    assert_eq!(with.1, [("creep".to_owned(), Some("radiohead".to_owned()))], "loves as the member sent them");
}

/// Every member's recorded spelling (`userid_item_spelling`), raw.
fn spellings(store: &Store) -> Vec<(Vec<u8>, Vec<u8>)> {
    tree_entries(store, schema::USERID_ITEM_SPELLING, |_| true)
}

/// The stored entries of tree `name` whose key passes `keep`, raw.
fn tree_entries(store: &Store, name: &str, keep: impl Fn(&[u8]) -> bool) -> Vec<(Vec<u8>, Vec<u8>)> {
    let tree = store.raw_tree_for_tests(name).expect("tree");
    tree.iter().map(|kv| kv.expect("kv")).filter(|(k, _)| keep(k)).map(|(k, v)| (k.to_vec(), v.to_vec())).collect()
}

/// A new member at sharing level `level`.
fn member_at(t: &TestStore, name: &str, level: hearsay::store::users::SharingLevel) -> UserId {
    let id = t.store.create_user(name, "password1", NOW).expect("user").id;
    t.store.set_visibility(id, level).expect("level");
    id
}

/// A member whose first spelling is erased and whose listens left spell the item as
/// stored shows the stored name, and counts in the node buckets as one who does (what
/// lets the node chart show it), as a rebuild counts them.
#[test]
fn a_spelling_erased_down_to_the_stored_name_counts_as_stored() {
    use hearsay::store::users::SharingLevel;
    let t = TestStore::new();
    let day = NOW - 86_400;
    let p = add_user(&t, "p", &[("Radiohead", "Creep", day)]);
    t.store.set_visibility(p, SharingLevel::Private).expect("private");
    let utc = jiff::tz::TimeZone::UTC;
    let node_names = || -> Vec<(String, u64)> {
        let node = t.store.node_chart(Kind::Artist, &Period::AllTime, 10, NOW, &utc).expect("node chart");
        node.rows.into_iter().map(|r| (r.row.name, r.row.listens)).collect()
    };
    let n = member_at(&t, "n", SharingLevel::Public);
    let listens = [("RADIOHEAD", "Creep", day + 5), ("Radiohead", "Creep", day + 700)];
    let actions = listens.iter().map(|(a, s, at)| Action::Listen(listen(a, s, *at))).collect();
    t.ingestor.ingest_blocking(n, actions).expect("ingest");
    assert_eq!(node_names(), [("RADIOHEAD".to_owned(), 2)]);
    t.ingestor.ingest_blocking(n, vec![Action::Delete { seq: 0 }]).expect("erase");
    assert_eq!(node_names(), [("Radiohead".to_owned(), 1)], "n's one listen left spells it as stored");
    // o's first listen, a spelling of their own, is erased in the batch that adds one
    // spelled as stored: o's count of the item does not change, how o spells it does.
    let o = member_at(&t, "o", SharingLevel::Public);
    t.ingestor.ingest_blocking(o, vec![Action::Listen(listen("radioHEAD", "Creep", day + 9))]).expect("ingest");
    let batch = vec![Action::Listen(listen("Radiohead", "Creep", day + 900)), Action::Delete { seq: 0 }];
    t.ingestor.ingest_blocking(o, batch).expect("ingest");
    assert_eq!(node_names(), [("Radiohead".to_owned(), 2)]);
    t.ingestor.stop();
    let incremental = node_bucket_bytes(&t.store);
    let kept = spellings(&t.store);
    t.store.rebuild_stats(&CreditRules::default()).expect("rebuild");
    assert!(incremental == node_bucket_bytes(&t.store), "node buckets differ from a rebuild");
    assert!(kept == spellings(&t.store), "spellings differ from a rebuild");
}

/// A log block that cannot be read (damage) does not stop its member from erasing
/// listens elsewhere in the log: the spellings are derived from what can be read.
#[test]
fn an_erasure_goes_through_past_a_damaged_block() {
    let t = TestStore::new();
    let day = NOW - 86_400;
    let mut actions = vec![Action::Listen(listen("RADIOHEAD", "Creep", day))];
    actions.extend((1..69).map(|i| Action::Listen(listen(&format!("Other {i}"), "Song", day + 300 * i))));
    actions.push(Action::Listen(listen("radiohead", "Creep", day + 30_000)));
    t.ingestor.ingest_blocking(t.user, actions).expect("ingest");
    let blocks = t.store.raw_tree_for_tests(schema::USERID_SEQ_BLOCK).expect("tree");
    let first = hearsay::store::keys::user_seq(t.user, 0);
    assert!(blocks.remove(first).expect("remove").is_some(), "the first block was stored");
    let erased = t.ingestor.ingest_blocking(t.user, vec![Action::Delete { seq: 69 }]);
    assert!(erased.is_ok(), "an erasure past a damaged block: {erased:?}");
}

/// A member's spelling of an item is the one of their first listen of it as their log
/// stands: erasing that listen hands it to the next one, erasing every listen leaves none
/// (the next listen spells it afresh), and the node chart never falls back to the stored
/// name, here a private member's spelling, while no public member uses it. A rebuild
/// derives the same spellings.
#[test]
fn a_members_spelling_follows_their_log_through_erasures() {
    use hearsay::store::users::SharingLevel;
    let t = TestStore::new();
    let day = NOW - 86_400;
    let p = add_user(&t, "p", &[("Radiohead", "Creep", day)]);
    t.store.set_visibility(p, SharingLevel::Private).expect("private");
    let m = member_at(&t, "m", SharingLevel::Public);
    let names = |stage: &str, want: Option<&str>| {
        let mine = t.store.chart(m, Kind::Artist, &Period::AllTime, 10, NOW).expect("chart");
        let utc = jiff::tz::TimeZone::UTC;
        let node = t.store.node_chart(Kind::Artist, &Period::AllTime, 10, NOW, &utc).expect("node chart");
        let node: Vec<String> = node.rows.into_iter().map(|r| r.row.name).collect();
        let mine: Vec<String> = mine.rows.into_iter().map(|r| r.name).collect();
        let want: Vec<String> = want.into_iter().map(str::to_owned).collect();
        assert_eq!((&mine, &node), (&want, &want), "{stage}: the member's chart, the node chart");
    };
    let ingest = |actions: Vec<Action>| t.ingestor.ingest_blocking(m, actions).expect("ingest");
    ingest(vec![
        Action::Listen(listen("RADIOHEAD", "Creep", day + 10)),
        Action::Listen(listen("radiohead", "Creep", day + 600)),
    ]);
    names("first listen RADIOHEAD", Some("RADIOHEAD"));
    ingest(vec![Action::Delete { seq: 0 }]);
    names("RADIOHEAD erased", Some("radiohead"));
    ingest(vec![Action::Delete { seq: 1 }]);
    names("every listen erased", None);
    ingest(vec![Action::Listen(listen("RadioHead", "Creep", day + 1_200))]);
    names("a new first listen", Some("RadioHead"));
    // An erasure and a new listen in one batch, the erased one the first (seqs 2 and 3
    // are the erasures above, 4 is RadioHead).
    ingest(vec![Action::Listen(listen("radioHEAD", "Creep", day + 1_800)), Action::Delete { seq: 4 }]);
    names("first erased in the batch that adds another", Some("radioHEAD"));
    t.ingestor.stop();
    let kept = spellings(&t.store);
    t.store.rebuild_stats(&CreditRules::default()).expect("rebuild");
    assert!(kept == spellings(&t.store), "spellings differ from a rebuild");
    names("rebuilt", Some("radioHEAD"));
}

/// Every stored node bucket (keys starting with 0xFF), raw.
fn node_bucket_bytes(store: &Store) -> Vec<(Vec<u8>, Vec<u8>)> {
    tree_entries(store, schema::USERID_BUCKET_COUNTS, |k| k.first() == Some(&0xff))
}

/// The node buckets (`store::aggregates::node`), kept up by every group, sharing-level
/// change, time-zone recount and deletion, equal the sums of the public members' own
/// charts for weeks, months, years and all time (listens and listeners per item), and
/// their stored bytes equal a rebuild's, after random histories in three time zones.
/// Each page `(offset, count)` of the node chart of `period` is those rows of `long`,
/// the whole chart: a page names only its rows and their ties.
fn pages_are_rows_of(
    store: &Store,
    kind: Kind,
    period: &Period,
    long: &hearsay::store::aggregates::NodeChart,
    pages: &[(usize, usize)],
    what: &str,
) {
    let utc = jiff::tz::TimeZone::UTC;
    for &(offset, count) in pages {
        let page = store.node_chart_page(kind, period, offset..offset + count, NOW, &utc).expect("page");
        let want: Vec<_> = long.rows.iter().skip(offset).take(count).cloned().collect();
        assert_eq!(page.rows, want, "{what}: {kind:?} {period:?} page {offset}+{count}");
    }
}

#[test]
fn node_statistics_equal_the_members_charts_and_a_rebuild() {
    use hearsay::store::users::SharingLevel;
    let artists = ["Radiohead", "radioHEAD", "RADIOHEAD", "Björk", "bjork", "Jay-Z & Kanye West", "Kanye West", "Solo"];
    let zones = ["UTC", "America/New_York", "Asia/Kolkata"];
    let levels = [SharingLevel::Public, SharingLevel::Aggregate, SharingLevel::Private];
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    for seed in 1..=5u64 {
        let t = TestStore::new();
        let mut users = vec![t.user];
        for name in ["bob", "carol", "dave"] {
            users.push(t.store.create_user(name, "password1", NOW).expect("user").id);
        }
        // Public from the start (the level changes below move them): with the default
        // level every member of some seeds stayed out of the node chart, which then
        // held nothing to compare.
        for &u in &users {
            t.store.set_visibility(u, SharingLevel::Public).expect("public");
        }
        if seed % 2 == 0 {
            // A member outside the node chart first plays 32,766 items of their own, so
            // the members' items get ids on both sides of 32,768, a chunk boundary at
            // every granularity (chunks of 256, 2,048, 16,384 and 32,768 ids): node
            // buckets then have chunks other than the first, and one member's change
            // touches two chunks of the same bucket.
            let filler = t.store.create_user("filler", "password1", NOW).expect("user").id;
            let plays =
                (0..32_766).map(|i| Action::Listen(listen(&format!("Artist {i}"), "Song", NOW - 4_000 * 86_400 + i)));
            t.ingestor.ingest_blocking(filler, plays.collect()).expect("filler");
        }
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut next = |m: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % m
        };
        let mut seqs: HashMap<UserId, u64> = HashMap::new();
        let mut weeks: Vec<Period> = Vec::new();
        let check = |stage: &str, weeks: &[Period], users: &[UserId]| {
            let mut periods = vec![Period::AllTime, Period::Year(2024), Period::Year(2025)];
            periods.push(Period::Month { year: 2024, month: 12 });
            periods.push(Period::Month { year: 2025, month: 1 });
            periods.extend(weeks.iter().take(6).cloned());
            for period in &periods {
                for kind in [Kind::Artist, Kind::Recording, Kind::Release] {
                    let mut want: HashMap<u32, (u64, u64)> = HashMap::new();
                    let (mut listens, mut listeners) = (0, 0);
                    for &u in users {
                        let Some(user) = t.store.user(u).expect("user") else { continue };
                        if user.visibility != SharingLevel::Public {
                            continue;
                        }
                        let chart = t.store.chart(u, kind, period, usize::MAX, NOW).expect("chart");
                        listens += chart.listens;
                        listeners += u64::from(chart.listens > 0);
                        for r in chart.rows {
                            let e = want.entry(r.id).or_default();
                            e.0 += r.listens;
                            e.1 += 1;
                        }
                    }
                    let utc = jiff::tz::TimeZone::UTC;
                    let node = t.store.node_chart(kind, period, usize::MAX, NOW, &utc).expect("node chart");
                    let got: HashMap<u32, (u64, u64)> =
                        node.rows.iter().map(|r| (r.row.id, (r.row.listens, r.listeners))).collect();
                    assert_eq!(got, want, "seed {seed}, {stage}: {kind:?} {period:?}");
                    // A short chart (the cached head) is the long one's first rows.
                    let short = t.store.node_chart(kind, period, 3, NOW, &utc).expect("short chart");
                    let head = |c: &hearsay::store::aggregates::NodeChart, n: usize| -> Vec<(u32, u64, u64)> {
                        c.rows.iter().take(n).map(|r| (r.row.id, r.row.listens, r.listeners)).collect()
                    };
                    assert_eq!(head(&short, 3), head(&node, 3), "seed {seed}, {stage}: {kind:?} {period:?} head");
                    // A page names only its rows and their ties: the long chart's rows.
                    let pages = [(0, 1), (1, 1), (1, 3), (2, 4), (4, 9), (40, 5)];
                    pages_are_rows_of(&t.store, kind, period, &node, &pages, &format!("seed {seed}, {stage}"));
                    assert_eq!(
                        (short.listens, short.listeners, short.distinct),
                        (node.listens, node.listeners, node.distinct)
                    );
                    assert_eq!(
                        (node.listens, node.listeners),
                        (listens, listeners),
                        "seed {seed}, {stage}: {period:?}"
                    );
                    if *period == Period::AllTime {
                        // One item read alone (`Store::node_item`, found by its names through
                        // the writer, as `*.getInfo` answers) is its row of the chart.
                        for r in &node.rows {
                            let alone = t.store.node_item(kind, r.row.id).expect("node item");
                            assert_eq!(alone.as_ref(), Some(r), "seed {seed}, {stage}: {kind:?}");
                            if stage == "rebuilt" {
                                continue; // the writer is stopped
                            }
                            let id = rt.block_on(t.ingestor.item_id(kind, &r.row.name, r.row.artist.as_deref()));
                            assert_eq!(id.expect("writer"), Some(r.row.id), "seed {seed}, {stage}: {r:?}");
                        }
                        // The filler's items are the node's but no counted member's.
                        if seed % 2 == 0 && kind == Kind::Artist && stage != "rebuilt" {
                            let id = rt.block_on(t.ingestor.item_id(kind, "ARTIST  17", None)).expect("writer");
                            let id = id.expect("the filler's artist, by its normalised name");
                            assert_eq!(t.store.node_item(kind, id).expect("node item"), None);
                        }
                    }
                }
            }
        };
        for round in 0..50 {
            let user = users[next(users.len() as u64) as usize];
            match next(12) {
                0 => {
                    let level = levels[next(3) as usize];
                    // Through the writer (the web page) or the store (the command line).
                    if next(2) == 0 {
                        rt.block_on(t.ingestor.set_visibility(user, level)).expect("level");
                    } else {
                        t.store.set_visibility(user, level).expect("level");
                    }
                }
                1 => {
                    let zone = zones[next(3) as usize];
                    rt.block_on(t.ingestor.set_timezone(user, zone)).expect("zone");
                }
                2 if round > 40 && user != t.user => {
                    rt.block_on(t.ingestor.delete_user(user)).expect("delete");
                    users.retain(|u| *u != user);
                }
                _ => {
                    let mut actions = Vec::new();
                    for _ in 0..(1 + next(25)) {
                        let have = *seqs.get(&user).unwrap_or(&0);
                        if next(8) == 0 && have > 0 {
                            actions.push(Action::Delete { seq: next(have) });
                        } else {
                            let artist = artists[next(artists.len() as u64) as usize];
                            let title = format!("Song {}", next(4));
                            // December 2024 and January 2025, around the year's turn.
                            let at = 1_733_011_200 + next(62 * 86_400) as i64;
                            if weeks.len() < 6 {
                                let week =
                                    hearsay::stats::period::local_date(at, &jiff::tz::TimeZone::UTC).iso_week_date();
                                weeks.push(Period::IsoWeek { year: week.year(), week: week.week() });
                            }
                            actions.push(Action::Listen(listen(artist, &title, at)));
                        }
                    }
                    let outcomes = t.ingestor.ingest_blocking(user, actions).expect("ingest");
                    let appended =
                        outcomes.iter().filter(|o| matches!(o, hearsay::store::Outcome::Appended { .. })).count();
                    *seqs.entry(user).or_default() += appended as u64;
                }
            }
            if round % 10 == 9 {
                check(&format!("round {round}"), &weeks, &users);
            }
        }
        check("end", &weeks, &users);
        t.ingestor.stop();
        let incremental = node_bucket_bytes(&t.store);
        assert!(
            !incremental.is_empty()
                || users.iter().all(|u| t
                    .store
                    .user(*u)
                    .expect("u")
                    .is_none_or(|u| u.visibility != SharingLevel::Public)),
            "seed {seed}: no node buckets"
        );
        t.store.rebuild_node_stats().expect("rebuild node");
        assert!(incremental == node_bucket_bytes(&t.store), "seed {seed}: node buckets differ from a rebuild");
        // Each member's spelling of an item, kept through listens and erasures, is the
        // one a rebuild derives from what their log holds now.
        let kept = spellings(&t.store);
        t.store.rebuild_stats(&CreditRules::default()).expect("rebuild");
        assert!(kept == spellings(&t.store), "seed {seed}: spellings differ from a full rebuild");
        assert!(incremental == node_bucket_bytes(&t.store), "seed {seed}: node buckets differ from a full rebuild");
        check("rebuilt", &weeks, &users);
    }
}

/// `*.getInfo` reads one item's row of the all-time node chart alone: found by its names
/// through the writer (any spelling that normalises the same), counted as the chart
/// counts it (public members only), past the first chunk of item ids.
#[test]
fn one_items_node_row_read_alone_is_its_row_of_the_chart() {
    use hearsay::store::users::SharingLevel;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let t = TestStore::new();
    // A private member's 300 artists first: the others' items get ids past the first
    // chunk (256 ids) of the all-time bucket.
    let private = t.store.create_user("private", "password1", NOW).expect("user").id;
    rt.block_on(t.ingestor.set_visibility(private, SharingLevel::Private)).expect("level");
    let filler = (0..300).map(|i| Action::Listen(listen(&format!("Filler {i}"), "Song", NOW - 90_000 + i)));
    t.ingestor.ingest_blocking(private, filler.collect()).expect("filler");
    let bob = t.store.create_user("bob", "password1", NOW).expect("user").id;
    for (user, plays) in [
        (t.user, vec![("Radiohead", "Creep", 3), ("Björk", "Jóga", 1)]),
        (bob, vec![("radioHEAD", "creep", 1), ("Björk", "Hyperballad", 2)]),
    ] {
        rt.block_on(t.ingestor.set_visibility(user, SharingLevel::Public)).expect("level");
        let mut at = NOW - 5_000;
        let mut actions = Vec::new();
        for (artist, title, n) in plays {
            for _ in 0..n {
                at += 600;
                actions.push(Action::Listen(listen(artist, title, at)));
            }
        }
        t.ingestor.ingest_blocking(user, actions).expect("ingest");
    }
    let utc = jiff::tz::TimeZone::UTC;
    let mut compared = 0;
    for kind in [Kind::Artist, Kind::Recording, Kind::Release] {
        let node = t.store.node_chart(kind, &Period::AllTime, usize::MAX, NOW, &utc).expect("node chart");
        for r in &node.rows {
            assert!(r.row.id >= 256 || kind != Kind::Artist, "past the first chunk: {r:?}");
            assert_eq!(t.store.node_item(kind, r.row.id).expect("node item").as_ref(), Some(r));
            let id = rt.block_on(t.ingestor.item_id(kind, &r.row.name, r.row.artist.as_deref())).expect("writer");
            assert_eq!(id, Some(r.row.id), "{r:?}");
            compared += 1;
        }
    }
    assert_eq!(compared, 2 + 3 + 2, "two artists, three recordings, each artist's \"An Album\"");
    let radiohead = rt.block_on(t.ingestor.item_id(Kind::Artist, "RADIOHEAD ", None)).expect("writer");
    let row = t.store.node_item(Kind::Artist, radiohead.expect("by its normalised name")).expect("row");
    assert_eq!(row.map(|r| (r.row.listens, r.listeners)), Some((4, 2)));
    let creep = rt.block_on(t.ingestor.item_id(Kind::Recording, "CREEP", Some("radiohead"))).expect("writer");
    let row = t.store.node_item(Kind::Recording, creep.expect("creep")).expect("row");
    assert_eq!(row.map(|r| (r.row.listens, r.listeners)), Some((4, 2)));
    // The private member's items are the node's but no counted member's; no item, none.
    let hidden = rt.block_on(t.ingestor.item_id(Kind::Artist, "filler 7", None)).expect("writer");
    assert_eq!(t.store.node_item(Kind::Artist, hidden.expect("the private member's artist")).expect("row"), None);
    assert_eq!(rt.block_on(t.ingestor.item_id(Kind::Artist, "Nobody", None)).expect("writer"), None);
    assert_eq!(rt.block_on(t.ingestor.item_id(Kind::Recording, "Creep", Some("Nobody"))).expect("writer"), None);
}

/// Schema 20 (12 and 13 before it) builds the node buckets of a store that had none
/// from its user buckets, and rebuilds those of a store with chunks of another span.
#[test]
fn the_node_statistics_migrations_build_the_node_statistics() {
    use hearsay::store::users::SharingLevel;
    let t = TestStore::new();
    let day = NOW - 86_400;
    let bob = add_user(&t, "bob", &[("A", "x", day), ("B", "y", day + 10), ("A", "z", day - 40 * 86_400)]);
    t.store.set_visibility(bob, SharingLevel::Public).expect("public");
    t.ingestor.ingest_blocking(t.user, vec![Action::Listen(listen("A", "x", day))]).expect("ingest");
    t.store.set_visibility(t.user, SharingLevel::Public).expect("public");
    let chart = |store: &Store| {
        let node = store.node_chart(Kind::Artist, &Period::AllTime, 10, NOW, &jiff::tz::TimeZone::UTC);
        node.expect("chart").rows.into_iter().map(|r| (r.row.name, r.listeners, r.row.listens)).collect::<Vec<_>>()
    };
    assert_eq!(chart(&t.store), [("A".to_owned(), 2, 3), ("B".to_owned(), 1, 1)]);
    let dir = t.close();
    // From 11: no node buckets at all. From 12: node buckets chunked by 256 item ids
    // in every granularity, so a week's chunk 1 (ids 256..511) may exist; from 19, by
    // 8,192 ids in weeks (chunk 1: ids 8,192..16,383); 20 keeps both in chunk 0 (ids
    // below 32,768): the migration must remove it.
    for from in [11u32, 12, 19] {
        let store = Store::open(dir.path(), &Options { cache_mb: 8, ..Default::default() }).expect("open");
        let before = node_bucket_bytes(&store);
        assert!(!before.is_empty());
        {
            let tree = store.raw_tree_for_tests(schema::USERID_BUCKET_COUNTS).expect("tree");
            if from == 11 {
                for (k, _) in &before {
                    tree.remove(k).expect("remove");
                }
            } else {
                let (week, value) = before.iter().find(|(k, _)| k[..3] == [0xFF, 0, 3]).expect("a week chunk");
                let mut old = week.clone();
                old[7..].copy_from_slice(&1u16.to_be_bytes());
                tree.insert(old, value.clone()).expect("insert");
            }
            let meta = store.raw_tree_for_tests(schema::META).expect("meta");
            meta.insert("schema_version", &from.to_be_bytes()).expect("version");
            store.flush().expect("flush");
        }
        drop(store);
        let store = Store::open(dir.path(), &Options { cache_mb: 8, ..Default::default() }).expect("migrated");
        assert!(before == node_bucket_bytes(&store), "the migration from {from} rebuilds the node buckets");
    }
    let t = TestStore::reopen(dir);
    assert_eq!(chart(&t.store), [("A".to_owned(), 2, 3), ("B".to_owned(), 1, 1)]);
}

/// Schema 14 writes bucket counts with delta-coded ids (`AggV2`), schema 15 day index
/// items and log blocks with delta-coded times (`BlockV2`), schema 16 day index items
/// without dedupe keys (`DayV3`), schema 17 tracks without them (`TrackChunkV2`),
/// schema 18 track credits with delta-coded ids (`CreditChunkV2`). A
/// store written by schema 13 (version 1 values, absolute ids and times, day items and
/// tracks with keys, here keys that are not the tracks') opens without a rewrite of
/// them (schema 20 rebuilds only the node buckets, from the version 1 user buckets); every chart,
/// history, log verification and duplicate check reads the same; and what a new listen
/// changes is stored in the current version beside the version 1 values still read as
/// they are.
#[test]
fn version_1_values_from_schema_13_read_the_same() {
    use hearsay::store::Outcome;
    use hearsay::store::codec;
    use hearsay::store::logs::Order;
    use hearsay::store::users::SharingLevel;
    use hearsay::store::values::{AggV2, BlockV2, CreditChunkV2, DayV3, TrackChunkV2};
    const TREES: [&str; 5] = [
        schema::USERID_BUCKET_COUNTS,
        schema::USERID_DAY_LISTENS,
        schema::USERID_SEQ_BLOCK,
        schema::TRACKCHUNK_TRACKS,
        schema::TRACKCHUNK_CREDITS,
    ];
    let current = |tree: &str| if tree == schema::USERID_DAY_LISTENS { 3 } else { 2 };
    // Version 1 of each: the same fields, ids and times as they are.
    let to_v1 = |tree: &'static str, k: &[u8], v: &[u8]| -> Vec<u8> {
        let body = match tree {
            schema::USERID_BUCKET_COUNTS => {
                let agg: AggV2 = codec::decode(tree, k, v).expect("v2");
                postcard::to_allocvec(&(agg.total, &agg.counts, &agg.hours))
            }
            schema::USERID_DAY_LISTENS => {
                // With keys that are not the tracks': the duplicate rule reads the tracks'.
                let day: DayV3 = codec::decode(tree, k, v).expect("v3");
                let keyed: Vec<_> = day.items.iter().map(|i| (i.sec, i.seq, [0u8; 4])).collect();
                postcard::to_allocvec(&(keyed,))
            }
            schema::TRACKCHUNK_CREDITS => {
                let chunk: CreditChunkV2 = codec::decode(tree, k, v).expect("v2");
                postcard::to_allocvec(&(chunk.tracks,))
            }
            schema::TRACKCHUNK_TRACKS => {
                let chunk: TrackChunkV2 = codec::decode(tree, k, v).expect("v2");
                let keyed: Vec<_> = chunk.tracks.iter().map(|t| (t, 0u32)).collect();
                postcard::to_allocvec(&(keyed,))
            }
            _ => {
                let block: BlockV2 = codec::decode(tree, k, v).expect("v2");
                postcard::to_allocvec(&(&block.entries, block.signed_at, &block.sig))
            }
        };
        [vec![1u8], body.expect("postcard")].concat()
    };
    let t = TestStore::new();
    let day = NOW - 86_400;
    let bob = add_user(&t, "bob", &[("A", "x", day), ("B", "y", day + 10), ("A", "z", day - 400 * 86_400)]);
    // Enough tracks for two chunks: a new one changes the second, the first stays.
    let carols: Vec<(String, i64)> = (0..70).map(|i| (format!("c{i}"), day - 7_200 * i)).collect();
    let carols: Vec<(&str, &str, i64)> = carols.iter().map(|(title, at)| ("C", title.as_str(), *at)).collect();
    add_user(&t, "carol", &carols);
    t.store.set_visibility(bob, SharingLevel::Public).expect("public");
    // Out of time order, as an import may send them.
    let mine: Vec<_> = (0..40)
        .map(|i| Action::Listen(listen(&format!("Artist {}", i % 7), &format!("t{i}"), day - 3_600 * ((i * 17) % 40))))
        .collect();
    t.ingestor.ingest_blocking(t.user, mine).expect("ingest");
    t.store.set_visibility(t.user, SharingLevel::Public).expect("public");
    let alice = t.user;
    let reads = |store: &Store| {
        let mut out = Vec::new();
        for period in [Period::AllTime, Period::LastDays(7), Period::LastMonths(12)] {
            let node = store.node_chart(Kind::Artist, &period, 10, NOW, &jiff::tz::TimeZone::UTC).expect("node");
            out.push(format!(
                "{:?}",
                node.rows.into_iter().map(|r| (r.row.name, r.listeners, r.row.listens)).collect::<Vec<_>>()
            ));
            for user in [alice, bob] {
                for kind in [Kind::Artist, Kind::Recording] {
                    let c = store.chart(user, kind, &period, 50, NOW).expect("chart");
                    out.push(format!("{:?}", c.rows.into_iter().map(|r| (r.name, r.listens)).collect::<Vec<_>>()));
                }
            }
        }
        for user in [alice, bob] {
            out.push(format!("{:?}", store.listens(user, 0, i64::MAX, 1_000, Order::NewestFirst).expect("listens")));
            out.push(format!("{:?}", store.verify_log(user).expect("db").expect("verifies")));
        }
        out
    };
    let before = reads(&t.store);
    assert!(before[0].matches("Artist").count() >= 7, "{}", before[0]);
    // Each listen at the time it was sent (the day index and the blocks both hold it).
    let times = |store: &Store| {
        let listens = store.listens(alice, 0, i64::MAX, 1_000, Order::OldestFirst).expect("listens");
        listens.iter().map(|l| l.listen.listened_at()).collect::<Vec<_>>()
    };
    let sent: Vec<i64> = (0..40).map(|i| day - 3_600 * (39 - i)).collect();
    assert_eq!(times(&t.store), sent);
    let dir = t.close();
    {
        let store = Store::open(dir.path(), &Options { cache_mb: 8, ..Default::default() }).expect("open");
        for name in TREES {
            let tree = store.raw_tree_for_tests(name).expect("tree");
            let mut n = 0;
            for kv in tree.iter() {
                let (k, v) = kv.expect("kv");
                assert_eq!(v[0], current(name), "this schema writes the current version in {name}");
                tree.insert(&k, to_v1(name, &k, &v)).expect("insert");
                n += 1;
            }
            assert!(n >= 2, "{n} values in {name}");
        }
        let meta = store.raw_tree_for_tests(schema::META).expect("meta");
        meta.insert("schema_version", &13u32.to_be_bytes()).expect("version");
        store.flush().expect("flush");
    }
    let t = TestStore::reopen(dir);
    assert_eq!(reads(&t.store), before, "version 1 values read the same");
    assert_eq!(times(&t.store), sent);
    let meta = t.store.raw_tree_for_tests(schema::META).expect("meta");
    let version = meta.get("schema_version").expect("read").expect("version");
    assert_eq!(u32::from_be_bytes(version.as_ref().try_into().expect("u32")), schema::SCHEMA_VERSION);
    drop(meta);
    // The version 1 day index still finds duplicates.
    let again = Action::Listen(listen("Artist 3", "t3", day - 3_600 * ((3 * 17) % 40)));
    assert_eq!(t.ingestor.ingest_blocking(t.user, vec![again]).expect("ingest"), vec![Outcome::Duplicate]);
    // Spelled otherwise (a track of its own): the keys the writer computed match.
    let respelled = Action::Listen(listen("ARTIST 3", "T3", day - 3_600 * ((3 * 17) % 40) + 20));
    assert_eq!(t.ingestor.ingest_blocking(t.user, vec![respelled]).expect("ingest"), vec![Outcome::Duplicate]);
    t.ingestor.ingest_blocking(t.user, vec![Action::Listen(listen("Artist 1", "new", day + 60))]).expect("ingest");
    let after = reads(&t.store);
    assert_ne!(after, before);
    let dir = t.close();
    let store = Store::open(dir.path(), &Options { cache_mb: 8, ..Default::default() }).expect("open");
    for name in TREES {
        let tree = store.raw_tree_for_tests(name).expect("tree");
        let versions: Vec<u8> = tree.iter().map(|kv| kv.expect("kv").1[0]).collect();
        let v1 = versions.iter().filter(|&&v| v == 1).count();
        let now = versions.iter().filter(|&&v| v == current(name)).count();
        assert!(
            v1 > 0 && now > 0 && v1 + now == versions.len(),
            "{name}: {v1} version 1, {now} in the current version of {}",
            versions.len()
        );
    }
    drop(store);
    let t = TestStore::reopen(dir);
    assert_eq!(reads(&t.store), after);
    // Compaction writes every value in the current version; reads are unchanged.
    let dir = t.close();
    hearsay::store::compact::compact(dir.path(), &Options { cache_mb: 8, ..Default::default() }, &Default::default())
        .expect("compact");
    let store = Store::open(dir.path(), &Options { cache_mb: 8, ..Default::default() }).expect("open");
    for name in TREES {
        let tree = store.raw_tree_for_tests(name).expect("tree");
        assert!(tree.iter().all(|kv| kv.expect("kv").1[0] == current(name)), "{name} all current after compaction");
    }
    drop(store);
    let t = TestStore::reopen(dir);
    assert_eq!(reads(&t.store), after);
}

/// The writer stores node buckets less often than user buckets (`NODE_PERSIST_EVERY`);
/// a crash in between leaves them stale on disk, marked so, and the next open rebuilds
/// them: the node chart after the crash is the members' sum, as a rebuild's.
#[test]
fn node_statistics_left_stale_by_a_crash_are_rebuilt_at_open() {
    use hearsay::store::users::SharingLevel;
    let t = TestStore::new();
    t.store.set_visibility(t.user, SharingLevel::Public).expect("public");
    let day = NOW - 86_400;
    t.ingestor.ingest_blocking(t.user, vec![Action::Listen(listen("A", "x", day))]).expect("ingest");
    // Past the user buckets' store interval (2 s), not the node buckets' (60 s).
    std::thread::sleep(std::time::Duration::from_millis(2_300));
    let more = (0..5).map(|i| Action::Listen(listen("B", &format!("y{i}"), day + 600 * (i + 1)))).collect();
    t.ingestor.ingest_blocking(t.user, more).expect("ingest");
    let meta = t.store.raw_tree_for_tests(schema::META).expect("meta");
    assert!(meta.contains_key("node_stale").expect("read"), "user buckets stored without the node's");
    drop(meta);
    // The crash: a copy of the files as they are, the writer still running.
    let copy = tempfile::tempdir().expect("tempdir");
    crate::two_worlds::copy_dir(t.dir.path(), copy.path());
    let store = Store::open(copy.path(), &Options { cache_mb: 8, ..Default::default() }).expect("open after crash");
    let chart = |store: &Store| {
        let node = store.node_chart(Kind::Artist, &Period::AllTime, 10, NOW, &jiff::tz::TimeZone::UTC);
        node.expect("chart").rows.into_iter().map(|r| (r.row.name, r.listeners, r.row.listens)).collect::<Vec<_>>()
    };
    assert_eq!(chart(&store), [("B".to_owned(), 1, 5), ("A".to_owned(), 1, 1)]);
    let meta = store.raw_tree_for_tests(schema::META).expect("meta");
    assert!(!meta.contains_key("node_stale").expect("read"), "rebuilt");
    drop(meta);
    assert_eq!(chart(&t.store), chart(&store));
}

/// A sharing-level change through the writer (the settings page) moves the node
/// buckets in memory only (`Store::set_visibility_deferred`): the chart shows it at
/// once, in both directions, and a crash before the writer stores the node buckets
/// leaves the level on disk with `node_stale`, so the next open rebuilds the node
/// buckets with the new level.
#[test]
fn a_level_change_through_the_writer_shows_at_once_and_survives_a_crash() {
    use hearsay::store::users::SharingLevel;
    let t = TestStore::new();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let day = NOW - 86_400;
    let bob = add_user(&t, "bob", &[("A", "x", day), ("B", "y", day + 10)]);
    t.store.set_visibility(bob, SharingLevel::Public).expect("public");
    t.store.set_visibility(t.user, SharingLevel::Public).expect("public");
    t.ingestor.ingest_blocking(t.user, vec![Action::Listen(listen("A", "x", day + 20))]).expect("ingest");
    let chart = |store: &Store| {
        let node = store.node_chart(Kind::Artist, &Period::AllTime, 10, NOW, &jiff::tz::TimeZone::UTC);
        node.expect("chart").rows.into_iter().map(|r| (r.row.name, r.listeners, r.row.listens)).collect::<Vec<_>>()
    };
    assert_eq!(chart(&t.store), [("A".to_owned(), 2, 2), ("B".to_owned(), 1, 1)]);
    rt.block_on(t.ingestor.set_visibility(bob, SharingLevel::Aggregate)).expect("aggregate");
    assert_eq!(chart(&t.store), [("A".to_owned(), 1, 1)], "bob left at once");
    let meta = t.store.raw_tree_for_tests(schema::META).expect("meta");
    assert!(meta.contains_key("node_stale").expect("read"), "the node buckets on disk lag the level");
    drop(meta);
    // A crash now: the stored node buckets still count bob, the stored level does not.
    let crashed = |stage: &str| {
        let copy = tempfile::tempdir().expect("tempdir");
        crate::two_worlds::copy_dir(t.dir.path(), copy.path());
        let store = Store::open(copy.path(), &Options { cache_mb: 8, ..Default::default() }).expect("open after crash");
        assert_eq!(chart(&store), chart(&t.store), "{stage}: rebuilt at open with the levels on disk");
    };
    crashed("after the change");
    // Past the user buckets' store interval (2 s), not the node buckets' (60 s): the
    // group stores user buckets and leaves the node changes pending, still marked.
    std::thread::sleep(std::time::Duration::from_millis(2_300));
    t.ingestor.ingest_blocking(t.user, vec![Action::Listen(listen("C", "z", day + 30))]).expect("ingest");
    assert_eq!(chart(&t.store), [("A".to_owned(), 1, 1), ("C".to_owned(), 1, 1)]);
    let meta = t.store.raw_tree_for_tests(schema::META).expect("meta");
    assert!(meta.contains_key("node_stale").expect("read"), "user buckets stored without the node's");
    drop(meta);
    crashed("after a store of user buckets");
    rt.block_on(t.ingestor.set_visibility(bob, SharingLevel::Public)).expect("public again");
    rt.block_on(t.ingestor.set_visibility(t.user, SharingLevel::Private)).expect("private");
    assert_eq!(chart(&t.store), [("A".to_owned(), 1, 1), ("B".to_owned(), 1, 1)], "bob back, the user gone");
    crashed("after two more changes");
    // A clean stop stores them: equal to a rebuild.
    t.ingestor.stop();
    let incremental = node_bucket_bytes(&t.store);
    let meta = t.store.raw_tree_for_tests(schema::META).expect("meta");
    assert!(!meta.contains_key("node_stale").expect("read"), "stored at the stop");
    drop(meta);
    t.store.rebuild_node_stats().expect("rebuild");
    assert!(incremental == node_bucket_bytes(&t.store), "equal to a rebuild");
}

/// A public member who erases their only listen of an item and sends it again in
/// another spelling, in one group, stops showing the stored name: the node chart then
/// names the item in their spelling, not in the stored one a private member sent.
#[test]
fn a_respelling_in_one_group_moves_the_stored_name_count() {
    use hearsay::store::users::SharingLevel;
    let t = TestStore::new();
    let day = NOW - 86_400;
    let private = add_user(&t, "p", &[("Foo Fighters", "Everlong", day)]);
    t.store.set_visibility(private, SharingLevel::Private).expect("private");
    t.store.set_visibility(t.user, SharingLevel::Public).expect("public");
    t.ingestor
        .ingest_blocking(t.user, vec![Action::Listen(listen("Foo Fighters", "Everlong", day + 10))])
        .expect("ingest");
    let respell = vec![Action::Delete { seq: 0 }, Action::Listen(listen("FOO FIGHTERS", "Everlong", day + 900))];
    t.ingestor.ingest_blocking(t.user, respell).expect("ingest");
    let name = |store: &Store| {
        let node = store.node_chart(Kind::Artist, &Period::AllTime, 10, NOW, &jiff::tz::TimeZone::UTC);
        node.expect("chart").rows.into_iter().map(|r| (r.row.name, r.row.listens)).collect::<Vec<_>>()
    };
    assert_eq!(name(&t.store), [("FOO FIGHTERS".to_owned(), 1)], "the public member's spelling");
    t.ingestor.stop();
    let incremental = node_bucket_bytes(&t.store);
    t.store.rebuild_node_stats().expect("rebuild");
    assert!(incremental == node_bucket_bytes(&t.store), "equal to a rebuild");
    assert_eq!(name(&t.store), [("FOO FIGHTERS".to_owned(), 1)]);
}

/// A long node chart whose items a private member spelled first: every row in a public
/// member's spelling (past eight such items the spellers are found in one pass over the
/// public members' spellings).
#[test]
fn a_long_node_chart_is_spelled_by_public_members() {
    use hearsay::store::users::SharingLevel;
    let t = TestStore::new();
    let day = NOW - 86_400;
    let lower: Vec<(String, String, i64)> =
        (0..12).map(|i| (format!("band {i}"), format!("song {i}"), day + 600 * i64::from(i))).collect();
    let upper: Vec<(String, String, i64)> =
        (0..12).map(|i| (format!("Band {i}"), format!("Song {i}"), day + 600 * i64::from(i) + 1)).collect();
    fn refs(v: &[(String, String, i64)]) -> Vec<(&str, &str, i64)> {
        v.iter().map(|(a, b, c)| (a.as_str(), b.as_str(), *c)).collect()
    }
    let private = add_user(&t, "p", &refs(&lower));
    t.store.set_visibility(private, SharingLevel::Private).expect("private");
    let public = add_user(&t, "q", &refs(&upper));
    t.store.set_visibility(public, SharingLevel::Public).expect("public");
    for kind in [Kind::Artist, Kind::Recording] {
        let node = t.store.node_chart(kind, &Period::AllTime, 20, NOW, &jiff::tz::TimeZone::UTC).expect("chart");
        assert_eq!(node.rows.len(), 12);
        for r in &node.rows {
            let shown = format!("{} {}", r.row.name, r.row.artist.clone().unwrap_or_default());
            assert!(!shown.contains("band") && !shown.contains("song"), "{kind:?}: {shown}");
        }
    }
}

/// Similar users are kept per user until anything changes (`insights::SimilarCache`):
/// a member who stops being public, a new listen that changes a taste, and a deleted
/// account show in the next answer, through the writer as through the store.
#[test]
fn similar_users_kept_between_changes_follow_every_change() {
    use hearsay::store::users::SharingLevel;
    let t = TestStore::new();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let day = NOW - 86_400;
    let bob = add_user(&t, "bob", &[("A", "x", day), ("B", "y", day + 10)]);
    let carol = add_user(&t, "carol", &[("C", "z", day)]);
    for u in [t.user, bob, carol] {
        t.store.set_visibility(u, SharingLevel::Public).expect("public");
    }
    t.ingestor.ingest_blocking(t.user, vec![Action::Listen(listen("A", "x", day + 20))]).expect("ingest");
    let names = |t: &TestStore| -> Vec<String> {
        t.store.neighbours(t.user, 10).expect("neighbours").into_iter().map(|n| n.user.name).collect()
    };
    assert_eq!(names(&t), ["bob"]);
    assert_eq!(names(&t), ["bob"], "the kept list");
    // A listen shared with carol makes her a neighbour.
    t.ingestor.ingest_blocking(t.user, vec![Action::Listen(listen("C", "w", day + 30))]).expect("ingest");
    assert_eq!(names(&t).len(), 2, "a new listen");
    rt.block_on(t.ingestor.set_visibility(bob, SharingLevel::Private)).expect("private");
    assert_eq!(names(&t), ["carol"], "bob went private through the writer");
    t.store.set_visibility(bob, SharingLevel::Public).expect("public");
    assert_eq!(names(&t).len(), 2, "bob public again through the store");
    rt.block_on(t.ingestor.delete_user(carol)).expect("delete");
    assert_eq!(names(&t), ["bob"], "carol deleted");
}

/// The node chart of a range no node bucket holds (`range=quarter` of the sitewide
/// statistics) is kept between requests: after every kind of change it still equals the
/// public members' own charts of the range summed, whether the change fell inside the
/// range (kept chart forgotten) or outside (kept chart still right).
#[test]
fn kept_range_node_charts_follow_every_change() {
    use hearsay::store::users::SharingLevel;
    let t = TestStore::new();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    // September 2025 (NOW is in October 2025) as a range of instants; it starts on a Monday.
    let (from, to) = (1_756_684_800, 1_759_276_800);
    let september = Period::Range { from, to };
    let utc = jiff::tz::TimeZone::UTC;
    let bob = add_user(&t, "bob", &[("A", "x", from + 86_400), ("B", "y", from + 10 * 86_400)]);
    let carol = add_user(&t, "carol", &[("A", "x", from + 15 * 86_400), ("C", "z", to + 86_400)]);
    // Dave is eleven hours behind UTC: the range's first hours are his Sunday, August 31st.
    let dave = t.store.create_user("dave", "password1", NOW).expect("user").id;
    t.store.set_timezone(dave, "Pacific/Pago_Pago").expect("tz");
    for u in [t.user, bob, carol, dave] {
        t.store.set_visibility(u, SharingLevel::Public).expect("public");
    }
    let check = |stage: &str| {
        for kind in [Kind::Artist, Kind::Recording] {
            let mut want: HashMap<u32, (u64, u64)> = HashMap::new();
            let (mut listens, mut listeners) = (0, 0);
            for user in t.store.users().expect("users") {
                if user.visibility != SharingLevel::Public {
                    continue;
                }
                let chart = t.store.chart(user.id, kind, &september, usize::MAX, NOW).expect("chart");
                listens += chart.listens;
                listeners += u64::from(chart.listens > 0);
                for r in chart.rows {
                    let e = want.entry(r.id).or_default();
                    e.0 += r.listens;
                    e.1 += 1;
                }
            }
            // Twice: computed (or kept from before), then kept.
            for read in ["first", "second"] {
                let node = t.store.node_chart(kind, &september, 10, NOW, &utc).expect("node chart");
                let got: HashMap<u32, (u64, u64)> =
                    node.rows.iter().map(|r| (r.row.id, (r.row.listens, r.listeners))).collect();
                assert_eq!(got, want, "{stage}, {read} read: {kind:?}");
                assert_eq!((node.listens, node.listeners), (listens, listeners), "{stage}, {read} read");
                pages_are_rows_of(
                    &t.store,
                    kind,
                    &september,
                    &node,
                    &[(1, 1), (1, 2), (2, 9)],
                    &format!("{stage}, {read} read"),
                );
            }
        }
    };
    check("at first");
    let ingest = |u: UserId, actions: Vec<Action>| t.ingestor.ingest_blocking(u, actions).expect("ingest");
    ingest(bob, vec![Action::Listen(listen("D", "today", NOW - 600))]);
    check("a listen after the range");
    ingest(bob, vec![Action::Listen(listen("D", "then", from + 20 * 86_400))]);
    check("a listen inside the range");
    // 05:00 UTC on the range's first day is the evening of the Sunday before for dave.
    ingest(dave, vec![Action::Listen(listen("E", "sunday for dave", from + 5 * 3_600))]);
    check("a listen in the range's first hours, the week before in the member's calendar");
    let outcomes = ingest(t.user, vec![Action::Listen(listen("F", "once", from + 25 * 86_400))]);
    check("a new member of the range");
    let Some(hearsay::store::Outcome::Appended { seq }) = outcomes.first().cloned() else {
        panic!("not appended: {outcomes:?}")
    };
    ingest(t.user, vec![Action::Delete { seq }]);
    check("the listen deleted");
    rt.block_on(t.ingestor.set_visibility(carol, SharingLevel::Aggregate)).expect("aggregate");
    check("a member no longer public");
    t.store.set_visibility(carol, SharingLevel::Public).expect("public");
    check("public again");
    rt.block_on(t.ingestor.set_timezone(bob, "Pacific/Kiritimati")).expect("tz");
    check("a time zone change");
    rt.block_on(t.ingestor.delete_user(carol)).expect("delete");
    check("a member deleted");
}

/// A tie too long to rank at the end of the rows a request reads (the items played
/// once, on a large node) is left off: ranking it names every tied item, for each
/// request. Every page that reaches it agrees where the chart ends; a listing of the
/// whole chart still holds it all, ranked by name.
#[test]
fn a_node_chart_ends_before_a_tie_too_large_to_rank() {
    use hearsay::store::users::SharingLevel;
    let t = TestStore::new();
    let day = NOW - 86_400;
    t.store.set_visibility(t.user, SharingLevel::Public).expect("public");
    let mut actions = Vec::new();
    for i in 0..3 {
        for k in 0..2 {
            actions.push(Action::Listen(listen(&format!("Top {i}"), "Song", day + i * 10 + k * 3_600)));
        }
    }
    for j in 0..2_100 {
        actions.push(Action::Listen(listen(&format!("Tail {j}"), "Song", day + 100 + j)));
    }
    t.ingestor.ingest_blocking(t.user, actions).expect("ingest");
    let utc = jiff::tz::TimeZone::UTC;
    let names = |page: std::ops::Range<usize>| -> Vec<String> {
        let chart = t.store.node_chart_page(Kind::Artist, &Period::AllTime, page, NOW, &utc).expect("page");
        chart.rows.into_iter().map(|r| r.row.name).collect()
    };
    assert_eq!(names(0..2), ["Top 0", "Top 1"], "no long tie at row 2");
    for (page, want) in [(0..10, 3), (2..3, 1), (5..10, 0), (200..202, 0), (990..1_000, 0), (0..1_000, 3)] {
        assert_eq!(names(page.clone()).len(), want, "page {page:?}: the chart ends at row 3 for every page");
    }
    let long = t.store.node_chart(Kind::Artist, &Period::AllTime, usize::MAX, NOW, &utc).expect("chart");
    assert_eq!(long.rows.len(), 2_103);
    assert_eq!(long.rows[3].row.name, "Tail 0");
    // The cached head keeps the three rows and 2,001 of the tie: enough to see it is
    // too long to rank, not the whole tail.
    assert_eq!(t.store.cached_node_head_len_for_tests(Kind::Artist).expect("head"), 3 + 2_001);
    for (page, want) in [(0..10, 3), (990..1_000, 0), (0..1_000, 3)] {
        assert_eq!(names(page.clone()).len(), want, "page {page:?} from the cached head");
    }
}
