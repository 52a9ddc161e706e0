//! Every import format against the fixture generator's ground truth: counts exact,
//! top-25 artists and tracks as far as each format's credits allow, a second import
//! adds nothing, imports across formats do not double count; malformed files keep
//! their good records and name the bad ones.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use hearsay::import::formats::{Format, Options, records};
use hearsay::import::{Summary, import_records};
use hearsay::stats::chart::Kind;
use hearsay::stats::credits::CreditRules;
use hearsay::stats::period::Period;
use hearsay::store::{Ingestor, Options as StoreOptions, Store, UserId};

use crate::gen_history::{END_2026, Fixture, Params, UserTruth};
use crate::support::{NOW, generate_fixture, hearsay};

/// The generator's output for one user in every format, made once per run.
fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let params = Params { users: 1, scrobbles: 6000, seed: "11".into(), ..Params::default() };
        generate_fixture("import", &params)
    })
}

const LATER: i64 = END_2026 + 86_400;

fn user() -> &'static UserTruth {
    &fixture().users[0]
}

struct Node {
    _dir: tempfile::TempDir,
    store: Store,
    ingestor: Ingestor,
    user: UserId,
}

fn node() -> Node {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), &StoreOptions { cache_mb: 16, ..Default::default() }).expect("open");
    let ingestor = Ingestor::start(store.clone(), 20_000, CreditRules::default()).expect("writer");
    let user = store.create_user("someone", "password1", NOW).expect("user").id;
    Node { _dir: dir, store, ingestor, user }
}

fn import(n: &Node, format: Format, path: &Path) -> Summary {
    let file = std::fs::File::open(path).expect("open");
    let reader: Box<dyn BufRead> = Box::new(std::io::BufReader::new(file));
    let options = Options { now: LATER, timezone: jiff::tz::TimeZone::UTC };
    import_records(records(format, reader, &options), &n.ingestor, n.user, |_| {}).expect("import")
}

fn import_bytes(n: &Node, format: Format, bytes: &[u8]) -> Summary {
    let reader: Box<dyn BufRead> = Box::new(std::io::BufReader::new(bytes));
    let options = Options { now: LATER, timezone: jiff::tz::TimeZone::UTC };
    import_records(records(format, reader, &options), &n.ingestor, n.user, |_| {}).expect("import")
}

fn top(n: &Node, kind: Kind) -> Vec<(String, u64)> {
    n.store
        .chart(n.user, kind, &Period::AllTime, 25, LATER)
        .expect("chart")
        .rows
        .into_iter()
        .map(|r| (r.artist.map_or_else(|| r.name.clone(), |a| format!("{a} - {}", r.name)), r.listens))
        .collect()
}

fn truth(u: &UserTruth, kind: Kind) -> Vec<(String, u64)> {
    match kind {
        Kind::Artist => u.top_artists.clone(),
        _ => u.top_tracks.iter().map(|(a, title, n)| (format!("{} - {title}", a[0]), *n)).collect(),
    }
}

fn same_names(ours: &[(String, u64)], truth: &[(String, u64)]) -> usize {
    truth.iter().filter(|t| ours.iter().any(|o| o.0 == t.0)).count()
}

/// Spotify rows the issue says to drop although the generator counts them as listens:
/// plays in a private session.
fn incognito_listens(u: &UserTruth) -> u64 {
    let mut n = 0;
    for path in &u.files.spotify {
        let text = std::fs::read_to_string(path).expect("read");
        let rows: Vec<serde_json::Value> = serde_json::from_str(&text).expect("json");
        n += rows
            .iter()
            .filter(|r| {
                r["incognito_mode"] == true
                    && r["master_metadata_track_name"].is_string()
                    && r["ms_played"].as_i64().unwrap_or(0) >= 30_000
            })
            .count() as u64;
    }
    n
}

#[test]
fn every_format_imports_the_ground_truth_once() {
    let u = user();
    let want = u.listens;
    let files = &u.files;
    let path = |p: &Option<PathBuf>| p.clone().expect("written");
    let cases: Vec<(Format, Vec<PathBuf>, u64)> = vec![
        (Format::ListenBrainzJsonl, vec![path(&files.listenbrainz_jsonl)], want),
        (Format::ListenBrainzJson, vec![path(&files.listenbrainz_json)], want),
        (Format::LastfmCsv, vec![path(&files.lastfm_csv)], want),
        (Format::Maloja, vec![path(&files.maloja)], want),
        (Format::Rockbox, vec![path(&files.rockbox)], want),
        (Format::SpotifyExtended, files.spotify.clone(), want - incognito_listens(u)),
    ];
    for (format, paths, expected) in cases {
        let n = node();
        // Detection agrees with the format the fixture wrote.
        for p in &paths {
            let head = std::fs::read(p).expect("read");
            assert_eq!(Format::detect(p, &head[..head.len().min(4096)]), Some(format), "{}", p.display());
        }
        let mut total = Summary::default();
        for p in &paths {
            let s = import(&n, format, p);
            total.imported += s.imported;
            total.bad += s.bad;
            for (k, v) in s.dropped {
                *total.dropped.entry(k).or_default() += v;
            }
        }
        assert_eq!((total.imported, total.bad), (expected, 0), "{format:?}: {total:?}");
        match format {
            Format::Rockbox => assert_eq!(total.dropped.get("skipped on the device"), Some(&u.skips)),
            Format::SpotifyExtended => {
                // Skips in a private session are counted as private.
                let short = total.dropped.get("played under 30 s").copied().unwrap_or(0);
                let private = total.dropped.get("private session (incognito)").copied().unwrap_or(0);
                let skips = u.skips;
                assert!(short <= skips && short + private >= skips, "{:?}", total.dropped);
                assert_eq!(total.dropped.get("podcast or audiobook"), Some(&u.podcasts));
            }
            _ => assert!(total.dropped.is_empty(), "{format:?}: {:?}", total.dropped),
        }
        // Again: nothing new.
        let again: u64 = paths.iter().map(|p| import(&n, format, p).imported).sum();
        assert_eq!(again, 0, "{format:?}: a second import added listens");
        // Top lists. Maloja lists every artist of a track: exact. The other formats
        // carry one artist string: the credit rule splits what it can (see stats).
        let (artists, tracks) = (top(&n, Kind::Artist), top(&n, Kind::Recording));
        let (ta, tt) = (truth(u, Kind::Artist), truth(u, Kind::Recording));
        let (a, t) = (same_names(&artists, &ta), same_names(&tracks, &tt));
        eprintln!("{format:?}: {} listens; top-25 artists {a}/25, tracks {t}/25 by name", total.imported);
        if format == Format::Maloja {
            assert_eq!(artists, ta, "Maloja lists the artists: the chart is exact");
        } else if format != Format::SpotifyExtended {
            assert!(a >= 22 && t >= 22, "{format:?}: artists {a}/25, tracks {t}/25\n{artists:?}");
        } else {
            // Incognito plays are missing, so a few counts move; names still agree.
            assert!(a >= 20 && t >= 20, "{format:?}: artists {a}/25, tracks {t}/25\n{artists:?}");
        }
    }
}

#[test]
fn overlapping_imports_of_different_precision_add_nothing_twice() {
    let u = user();
    let files = &u.files;
    let n = node();
    let first = import(&n, Format::ListenBrainzJsonl, files.listenbrainz_jsonl.as_ref().expect("jsonl"));
    assert_eq!(first.imported, u.listens);
    // Minute precision (Last.fm), end times (Spotify), guests credited differently
    // (Spotify "(with B)" titles, Maloja artist lists), Rockbox: all already there.
    for (format, path) in [
        (Format::LastfmCsv, &files.lastfm_csv),
        (Format::Maloja, &files.maloja),
        (Format::Rockbox, &files.rockbox),
        (Format::ListenBrainzJson, &files.listenbrainz_json),
    ] {
        let s = import(&n, format, path.as_ref().expect("written"));
        assert_eq!(s.imported, 0, "{format:?} added {} listens already imported", s.imported);
    }
    for f in &files.spotify {
        let s = import(&n, Format::SpotifyExtended, f);
        assert_eq!(s.imported, 0, "Spotify added {} listens already imported", s.imported);
    }
}

#[test]
fn malformed_files_keep_their_good_records_and_name_the_bad_ones() {
    // (format, file bytes, good records expected, bad expected, a word of the first reason)
    let cases: Vec<(Format, Vec<u8>, u64, u64, &str)> = vec![
        (Format::LastfmCsv, b"A,Al,T,31 May 2016 20:46\r\nB,,U\r\nC,Al,V,not a date\r\n".to_vec(), 1, 2, "columns"),
        (Format::LastfmCsv, b"\xEF\xBB\xBFuts,artist,album,track\n1464727560,A,Al,T\n1464727561,B\xff,Al,T\n".to_vec(), 1, 1, "UTF-8"),
        (Format::LastfmCsv, b"A,\"Al, with comma\",T,31 May 2016 20:46\n\"unterminated,x,y,z\n".to_vec(), 1, 1, "quote"),
        (Format::Rockbox, b"#AUDIOSCROBBLER/1.1\n#TZ/UTC\nA\tAl\tT\t1\t200\tL\t1464727560\t\nA\tAl\tT\t1\t200\tX\t1\t\nA\tshort\n".to_vec(), 1, 2, "rating"),
        (Format::SpotifyExtended, br#"[{"ts":"2024-01-01T00:10:00Z","ms_played":200000,"master_metadata_track_name":"T","master_metadata_album_artist_name":"A"},{"ts":"yesterday","ms_played":200000,"master_metadata_track_name":"T","master_metadata_album_artist_name":"A"},{"ts":"2024-01-01T00:20:00Z","ms_played":2"#.to_vec(), 1, 2, "ts"),
        (Format::Maloja, br#"{"scrobbles":[{"time":1700000000,"track":{"artists":["A"],"title":"T"}},{"time":1700000100,"track":{"title":"T"}},{"track":{"artists":["A"],"title":"T"}}]}"#.to_vec(), 1, 2, "artists"),
        (Format::ListenBrainzJson, br#"[{"listened_at":1700000000,"track_metadata":{"artist_name":"A","track_name":"T"}},{"listened_at":99999999999,"track_metadata":{"artist_name":"A","track_name":"T"}},"not an object",{"listened_at":1700000001}]"#.to_vec(), 1, 2, "listened_at"),
        (Format::SpotifyAccount, br#"[{"endTime":"2024-01-01 10:00","artistName":"A","trackName":"T","msPlayed":200000},{"endTime":"2024-01-01 10:05","artistName":"A","trackName":"T","msPlayed":1000},{"endTime":"noon","artistName":"A","trackName":"U","msPlayed":200000}]"#.to_vec(), 1, 1, "endTime"),
    ];
    for (format, bytes, good, bad, word) in cases {
        let n = node();
        let s = import_bytes(&n, format, &bytes);
        assert_eq!((s.imported, s.bad), (good, bad), "{format:?}: {s:?}");
        assert!(s.bad_examples.iter().any(|(_, why)| why.contains(word)), "{format:?}: {:?}", s.bad_examples);
        // Re-running finishes the job and adds nothing.
        assert_eq!(import_bytes(&n, format, &bytes).imported, 0);
    }
}

#[test]
fn the_import_command_detects_formats_and_prints_a_summary() {
    let u = user();
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "password123\n").expect("pw");
    assert_eq!(hearsay(&data, &["user", "add", "sam", "--password-file", pw.to_str().expect("utf8")]).0, 0);
    let spotify = u.files.spotify_dir.clone().expect("spotify");
    let rockbox = u.files.rockbox.clone().expect("rockbox");
    let (code, out, err) =
        hearsay(&data, &["import", "--user", "sam", spotify.to_str().expect("utf8"), rockbox.to_str().expect("utf8")]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("(spotify-extended):") && out.contains("not a listen: podcast or audiobook"), "{out}");
    // The Rockbox log holds the same plays (but for Spotify's private sessions).
    assert!(
        out.contains("(rockbox):") && out.contains("duplicates skipped") && out.contains("skipped on the device"),
        "{out}"
    );
    let garbage = dir.path().join("notes.txt");
    std::fs::write(&garbage, "hello").expect("write");
    let (code, out, _) = hearsay(&data, &["import", "--user", "sam", garbage.to_str().expect("utf8")]);
    assert_eq!(code, 1, "nothing could be read: {out}");
    assert!(out.contains("not a known export format"), "{out}");
}

fn chart_rows(n: &Node, kind: Kind) -> Vec<(String, u64)> {
    n.store
        .chart(n.user, kind, &Period::AllTime, 100, LATER)
        .expect("chart")
        .rows
        .into_iter()
        .map(|r| (format!("{:?} {}", r.artist, r.name), r.listens))
        .collect()
}

#[test]
fn export_then_import_into_a_fresh_node_gives_identical_statistics() {
    use hearsay::export::{ExportFormat, export};
    let u = user();
    let path = u.files.listenbrainz_jsonl.clone().expect("jsonl");
    let source = node();
    import(&source, Format::ListenBrainzJsonl, &path);
    for (format, read_as) in
        [(ExportFormat::ListenBrainz, Format::ListenBrainzJsonl), (ExportFormat::Csv, Format::LastfmCsv)]
    {
        let mut bytes = Vec::new();
        let n = export(&source.store, source.user, format, &mut bytes).expect("export");
        assert_eq!(n, u.listens, "{format:?}");
        let head = &bytes[..bytes.len().min(4096)];
        let name = format.file_name("someone");
        assert_eq!(Format::detect(Path::new(&name), head), Some(read_as), "{format:?} exports are recognised");
        let copy = node();
        let s = import_bytes(&copy, read_as, &bytes);
        assert_eq!((s.imported, s.bad), (n, 0), "{format:?}: {s:?}");
        // The ListenBrainz export keeps every field, so every statistic is identical.
        // CSV keeps the artist string but not artist lists or MBIDs, so credits that
        // relied on those may split differently; its listens are the same.
        if format == ExportFormat::ListenBrainz {
            for kind in [Kind::Artist, Kind::Recording, Kind::Release] {
                assert_eq!(chart_rows(&copy, kind), chart_rows(&source, kind), "{format:?} {kind:?}");
            }
        }
        let (a, b) = (
            source
                .store
                .listens(source.user, 0, i64::MAX, usize::MAX, hearsay::store::logs::Order::OldestFirst)
                .expect("a"),
            copy.store
                .listens(copy.user, 0, i64::MAX, usize::MAX, hearsay::store::logs::Order::OldestFirst)
                .expect("b"),
        );
        let same = |x: &hearsay::store::logs::StoredListen| {
            (x.listen.listened_at(), x.listen.track().artist.clone(), x.listen.track().title.clone())
        };
        assert_eq!(a.iter().map(same).collect::<Vec<_>>(), b.iter().map(same).collect::<Vec<_>>(), "{format:?}");
        if format == ExportFormat::ListenBrainz {
            let full = |x: &hearsay::store::logs::StoredListen| {
                (x.listen.track().clone(), x.listen.duration_ms(), x.listen.client().map(str::to_owned))
            };
            assert_eq!(
                a.iter().map(full).collect::<Vec<_>>(),
                b.iter().map(full).collect::<Vec<_>>(),
                "every field survives"
            );
        }
    }
}

#[test]
fn an_account_bundle_verifies_and_tampering_is_named() {
    use hearsay::account::{Error, export, verify};
    use hearsay::store::Action;
    let n = node();
    // 150 listens (three log blocks), a love, and a deleted listen (a tombstone).
    let u = user();
    let path = u.files.listenbrainz_jsonl.clone().expect("jsonl");
    let text = std::fs::read_to_string(path).expect("read");
    let head: String = text.lines().take(150).map(|l| format!("{l}\n")).collect();
    import_bytes(&n, Format::ListenBrainzJsonl, head.as_bytes());
    let some = n.store.listens(n.user, 0, i64::MAX, 1, hearsay::store::logs::Order::OldestFirst).expect("listens");
    n.ingestor
        .ingest_blocking(
            n.user,
            vec![Action::Love(some[0].listen.track().clone()), Action::Delete { seq: some[0].seq }],
        )
        .expect("love and delete");
    let mut bundle = Vec::new();
    let entries = export(&n.store, n.user, LATER, &mut bundle).expect("export");
    assert_eq!(entries, 152);
    let mut blocks = 0;
    let (header, verified) = verify(&mut bundle.as_slice(), |_| blocks += 1).expect("verifies");
    assert_eq!((header.name.as_str(), verified.n_entries, verified.n_erased, blocks), ("someone", 152, 1, 3));
    // The private key is not in it.
    let seed = n.store.signing_key(n.user).expect("key").to_bytes();
    assert!(!bundle.windows(32).any(|w| w == seed), "the bundle holds the secret key");

    // A changed byte inside a track name: the entry is named.
    let second: serde_json::Value = serde_json::from_str(text.lines().nth(70).expect("line")).expect("json");
    let title = second["track_metadata"]["track_name"].as_str().expect("title").as_bytes().to_vec();
    let at = bundle.windows(title.len()).position(|w| w == title.as_slice()).expect("the title is in the bundle");
    let mut tampered = bundle.clone();
    tampered[at] ^= 0x20;
    match verify(&mut tampered.as_slice(), |_| {}) {
        Err(Error::Verify(e)) => assert!(e.to_string().contains("entry "), "{e}"),
        other => panic!("tampering not refused: {other:?}"),
    }
    // Truncated: cut inside the last block, and cut between blocks.
    let cut = bundle[..bundle.len() - 10].to_vec();
    assert!(matches!(verify(&mut cut.as_slice(), |_| {}), Err(Error::Truncated { .. })), "cut inside a block");
    let frames = |b: &[u8]| -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        let mut i = hearsay::account::MAGIC.len();
        while i + 4 <= b.len() {
            let len = u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]) as usize;
            out.push((i, i + 4 + len));
            i += 4 + len;
        }
        out
    };
    let f = frames(&bundle);
    assert_eq!(f.len(), 4, "header and three blocks");
    // The header's ledgers are checked for shape: one dated after the export is refused.
    let header: hearsay::account::HeaderV2 = postcard::from_bytes(&bundle[f[0].0 + 4..f[0].1]).expect("header");
    let with_header = |h: &hearsay::account::HeaderV2, magic: &[u8], v1: bool| -> Vec<u8> {
        let bytes = if v1 {
            postcard::to_allocvec(&hearsay::account::HeaderV1 {
                name: h.name.clone(),
                public_key: h.public_key,
                timezone: h.timezone.clone(),
                created_at: h.created_at,
                exported_at: h.exported_at,
                entries: h.entries,
            })
        } else {
            postcard::to_allocvec(h)
        }
        .expect("encode");
        let mut out = magic.to_vec();
        out.extend_from_slice(&u32::try_from(bytes.len()).expect("small").to_be_bytes());
        out.extend_from_slice(&bytes);
        out.extend_from_slice(&bundle[f[1].0..]);
        out
    };
    let mut future = header.clone();
    let week = hearsay::privacy::accountant::week_of(header.exported_at + 30 * 86_400);
    future
        .ledgers
        .push((week, hearsay::privacy::accountant::Ledger { spent: Default::default(), periods: vec![week] }));
    let refused = verify(&mut with_header(&future, hearsay::account::MAGIC, false).as_slice(), |_| {});
    assert!(matches!(refused, Err(Error::Damaged { .. })), "a ledger after the export: {refused:?}");
    // A bundle written before ledgers travelled (v1) still verifies.
    let v1 = with_header(&header, hearsay::account::MAGIC_V1, true);
    assert!(verify(&mut v1.as_slice(), |_| {}).is_ok(), "a v1 bundle");
    let without_last = bundle[..f[3].0].to_vec();
    assert!(matches!(verify(&mut without_last.as_slice(), |_| {}), Err(Error::Truncated { .. })), "a block missing");
    // Reordered: the second and third blocks swapped.
    let mut reordered = bundle[..f[2].0].to_vec();
    reordered.extend_from_slice(&bundle[f[3].0..f[3].1]);
    reordered.extend_from_slice(&bundle[f[2].0..f[2].1]);
    match verify(&mut reordered.as_slice(), |_| {}) {
        Err(Error::Verify(e)) => {
            assert!(e.to_string().contains("out of order") || e.to_string().contains("entry"), "{e}")
        }
        other => panic!("reordering not refused: {other:?}"),
    }
    assert!(matches!(verify(&mut &b"garbage"[..], |_| {}), Err(Error::NotABundle)));
}

#[test]
fn an_account_moves_to_another_node_and_its_chain_continues_there() {
    use hearsay::account::{export, import};
    use hearsay::store::Action;
    let u = user();
    let path = u.files.listenbrainz_jsonl.clone().expect("jsonl");
    let text = std::fs::read_to_string(path).expect("read");
    let head: String = text.lines().take(300).map(|l| format!("{l}\n")).collect();
    let old = node();
    import_bytes(&old, Format::ListenBrainzJsonl, head.as_bytes());
    let some = old.store.listens(old.user, 0, i64::MAX, 2, hearsay::store::logs::Order::OldestFirst).expect("listens");
    old.ingestor
        .ingest_blocking(
            old.user,
            vec![Action::Love(some[1].listen.track().clone()), Action::Delete { seq: some[0].seq }],
        )
        .expect("love and delete");
    // The old node charged the user for releases of two weeks before the move.
    use hearsay::privacy::accountant::{Ledger, week_of};
    use hearsay::privacy::params::{Spend, WEEK_SECS};
    let charged = Spend { eps_milli: 150, delta_pico: 100_000 };
    for weeks_ago in [3, 1] {
        let week = week_of(LATER) - weeks_ago * WEEK_SECS;
        let ledger = Ledger { spent: charged, periods: vec![week] };
        old.store
            .commit_release(week, week, b"signed", &std::collections::BTreeMap::from([(old.user.0, ledger)]), &[])
            .expect("release");
    }
    let mut bundle = Vec::new();
    export(&old.store, old.user, LATER, &mut bundle).expect("export");
    let seed = old.store.signing_key(old.user).expect("key").to_bytes();

    // A tampered bundle is refused before anything is stored.
    let new = node();
    let mut bad = bundle.clone();
    let n = bad.len();
    bad[n - 100] ^= 1;
    let opener = |b: Vec<u8>| {
        move || -> std::io::Result<Box<dyn std::io::Read>> { Ok(Box::new(std::io::Cursor::new(b.clone()))) }
    };
    let refused = import(&new.store, &new.ingestor, &opener(bad), seed, Some("mover"), "password1", LATER);
    assert!(refused.is_err());
    assert!(new.store.user_by_name("mover").expect("lookup").is_none(), "nothing stored");
    // The wrong key is refused too.
    assert!(
        import(&new.store, &new.ingestor, &opener(bundle.clone()), [9; 32], Some("mover"), "password1", LATER).is_err()
    );
    assert!(new.store.user_by_name("mover").expect("lookup").is_none());

    let (moved, verified) =
        import(&new.store, &new.ingestor, &opener(bundle.clone()), seed, Some("mover"), "password1", LATER)
            .expect("import");
    assert_eq!(verified.n_entries, 302);
    let moved_node = Node {
        _dir: tempfile::tempdir().expect("unused"),
        store: new.store.clone(),
        ingestor: new.ingestor.clone(),
        user: moved.id,
    };
    for kind in [Kind::Artist, Kind::Recording, Kind::Release] {
        assert_eq!(chart_rows(&moved_node, kind), chart_rows(&old, kind), "{kind:?}");
    }
    assert_eq!(new.store.feedback(moved.id, 1, 10).expect("loves").len(), 1);
    // The ledgers came along: this node's yearly cap counts what the old node spent.
    assert_eq!(
        new.store.user_ledgers(moved.id, 10).expect("ledgers"),
        old.store.user_ledgers(old.user, 10).expect("old")
    );
    let account =
        new.store.accounts(week_of(LATER), [moved.id.0]).expect("accounts").remove(&moved.id.0).expect("account");
    assert_eq!(account.earlier, charged.plus(charged), "the rolling year holds the old node's charges");
    // New listens on the new node extend the same chain, and it still verifies.
    let l = &some[1].listen;
    let next = hearsay::log::Listen::from_parts(
        l.track().clone(),
        l.listened_at() + 86_400 * 3,
        l.duration_ms(),
        l.client().map(str::to_owned),
    )
    .expect("valid");
    new.ingestor.ingest_blocking(moved.id, vec![Action::Listen(next)]).expect("scrobble");
    let v = new.store.verify_log(moved.id).expect("read").expect("verifies");
    assert_eq!(v.n_entries, 303);
    assert_eq!(
        new.store.user(moved.id).expect("user").expect("exists").public_key,
        old.store.user(old.user).expect("u").expect("u").public_key
    );
}

#[test]
fn account_export_and_import_with_the_command_line_and_log_verify_there() {
    let u = user();
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "password123\n").expect("pw");
    let pw = pw.to_str().expect("utf8");
    assert_eq!(hearsay(&a, &["user", "add", "ann", "--password-file", pw]).0, 0);
    let jsonl = u.files.listenbrainz_jsonl.clone().expect("jsonl");
    assert_eq!(hearsay(&a, &["import", "--user", "ann", jsonl.to_str().expect("utf8")]).0, 0);
    let bundle = dir.path().join("ann.bundle");
    let key = dir.path().join("ann.secret-key");
    let (code, out, err) = hearsay(
        &a,
        &[
            "account",
            "export",
            "ann",
            "--out",
            bundle.to_str().expect("utf8"),
            "--with-secret-key",
            key.to_str().expect("utf8"),
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("entries of ann's log"), "{out}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&key).expect("key").permissions().mode() & 0o777, 0o600);
    let import_args = [
        "account",
        "import",
        bundle.to_str().expect("utf8"),
        "--secret-key",
        key.to_str().expect("utf8"),
        "--password-file",
        pw,
    ];
    let (code, out, err) = hearsay(&b, &import_args);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = hearsay(&b, &["log", "verify", "ann"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with(&format!("ok: {} entries", u.listens)), "{out}");
    // A second import of the same account is refused (the name is taken) and changes nothing.
    let (code, out, _) = hearsay(&b, &import_args);
    assert_eq!(code, 1, "{out}");
}

#[test]
fn a_zip_archive_is_read_member_by_member_and_strangers_are_skipped() {
    use std::io::Write;
    let u = user();
    let dir = tempfile::tempdir().expect("tempdir");
    let zip_path = dir.path().join("my_spotify_data.zip");
    {
        let mut z = zip::ZipWriter::new(std::fs::File::create(&zip_path).expect("zip"));
        let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
        z.add_directory("Spotify Extended Streaming History/", opts).expect("dir");
        for p in &u.files.spotify {
            let member =
                format!("Spotify Extended Streaming History/{}", p.file_name().expect("name").to_string_lossy());
            z.start_file(member, opts).expect("start");
            z.write_all(&std::fs::read(p).expect("read")).expect("write");
        }
        z.start_file("Spotify Extended Streaming History/ReadMeFirst_ExtendedStreamingHistory.pdf", opts)
            .expect("start");
        z.write_all(b"%PDF-1.4 not a history").expect("write");
        z.finish().expect("finish");
    }
    let data = dir.path().join("data");
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "password123\n").expect("pw");
    assert_eq!(hearsay(&data, &["user", "add", "zed", "--password-file", pw.to_str().expect("utf8")]).0, 0);
    let (code, out, err) = hearsay(&data, &["import", "--user", "zed", zip_path.to_str().expect("utf8")]);
    assert_eq!(code, 0, "{err}");
    let expected = u.listens - incognito_listens(u);
    let imported: u64 = out
        .lines()
        .filter(|l| l.contains("(spotify-extended):"))
        .filter_map(|l| l.split("): ").nth(1)?.split(' ').next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(imported, expected, "{out}");
    assert!(out.contains("ReadMeFirst_ExtendedStreamingHistory.pdf: skipped, not a listening history"), "{out}");
    // A damaged archive: a clear message, nothing imported, a non-zero exit.
    let broken = dir.path().join("broken.zip");
    let bytes = std::fs::read(&zip_path).expect("read");
    std::fs::write(&broken, &bytes[..bytes.len() / 3]).expect("write");
    let (code, out, _) = hearsay(&data, &["import", "--user", "zed", broken.to_str().expect("utf8")]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("skipped"), "{out}");
}

#[test]
fn the_older_spotify_account_data_history_imports_every_play() {
    // The generator writes the extended history; the account-data files hold the same
    // plays with fewer fields (minute-precision end time, no album, no flags), so the
    // test derives them from it, as Spotify does.
    let u = user();
    let mut rows = Vec::new();
    for f in &u.files.spotify {
        let text = std::fs::read_to_string(f).expect("read");
        let list: Vec<serde_json::Value> = serde_json::from_str(&text).expect("json");
        for r in list.into_iter().filter(|r| r["master_metadata_track_name"].is_string()) {
            let ts = r["ts"].as_str().expect("ts");
            rows.push(serde_json::json!({
                "endTime": format!("{} {}", &ts[..10], &ts[11..16]),
                "artistName": r["master_metadata_album_artist_name"],
                "trackName": r["master_metadata_track_name"],
                "msPlayed": r["ms_played"],
            }));
        }
    }
    let bytes = serde_json::to_vec(&rows).expect("json");
    assert_eq!(Format::detect(Path::new("StreamingHistory0.json"), &bytes[..4096]), Some(Format::SpotifyAccount));
    let n = node();
    let s = import_bytes(&n, Format::SpotifyAccount, &bytes);
    // Every play of 30 s or more is a listen (this format has no private-session flag).
    assert_eq!((s.imported, s.bad), (u.listens, 0), "{s:?}");
    assert_eq!(s.dropped.get("played under 30 s"), Some(&u.skips));
    assert_eq!(import_bytes(&n, Format::SpotifyAccount, &bytes).imported, 0, "a second import adds nothing");
    let (artists, ta) = (top(&n, Kind::Artist), truth(u, Kind::Artist));
    assert!(same_names(&artists, &ta) >= 22, "{artists:?}");
}
