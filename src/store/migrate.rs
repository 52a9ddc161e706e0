//! Schema versions and migrations.
//!
//! `meta/schema_version` records the layout a database was written with. On open,
//! `bring_up_to_date` initialises a new database, runs every migration newer than the
//! recorded version in order (each one records its version when done, so an interrupted
//! upgrade resumes), and refuses a database newer than this build.

use super::schema::SCHEMA_VERSION;
use super::{Error, Result, Store};

const KEY: &str = "schema_version";

/// A migration from `to - 1` to `to`.
pub struct Migration {
    pub to: u32,
    pub name: &'static str,
    pub run: fn(&Store) -> Result<()>,
}

/// Every migration this build knows, in order.
pub const MIGRATIONS: &[Migration] = &[
    Migration { to: 2, name: "build statistics from the logs", run: build_stats },
    Migration { to: 3, name: "add the release trees (created empty on open)", run: nothing_to_fill },
    Migration { to: 4, name: "add the federation trees (created empty on open)", run: nothing_to_fill },
    // 5 recomputed the duplicate keys stored with tracks and day items (v3: main artist
    // and bare title); since 17 neither stores them (the writer computes them at start).
    Migration { to: 5, name: "duplicate keys v3 (main artist and bare title)", run: nothing_to_fill },
    Migration {
        to: 6,
        name: "each user's own spellings of items; level histories start at the upgrade",
        run: spellings_and_level_histories,
    },
    Migration { to: 7, name: "open communities' probation from when an origin was first seen", run: first_seen_now },
    Migration { to: 8, name: "add the manifest fork tree (created empty on open)", run: nothing_to_fill },
    Migration {
        to: 9,
        name: "user settings gain API reads and import cursors (version 1 values read as they are)",
        run: nothing_to_fill,
    },
    Migration {
        to: 10,
        name: "add the tree of manifest versions this node signed (created empty on open)",
        run: nothing_to_fill,
    },
    Migration { to: 11, name: "add the community result trees (created empty on open)", run: nothing_to_fill },
    // 12 built the node buckets (`node_stats`), 13 built them again in chunks sized by
    // granularity and 20 in wider chunks, so a store below 20 builds them once, in 20.
    Migration { to: 12, name: "node statistics from the public members' buckets", run: nothing_to_fill },
    Migration { to: 13, name: "node statistics in chunks sized by granularity", run: nothing_to_fill },
    Migration {
        to: 14,
        name: "bucket counts with delta-coded ids (version 1 values read as they are)",
        run: nothing_to_fill,
    },
    Migration {
        to: 15,
        name: "day index and log blocks with delta-coded times (version 1 values read as they are)",
        run: nothing_to_fill,
    },
    Migration {
        to: 16,
        name: "day index without dedupe keys (versions 1 and 2 read as they are)",
        run: nothing_to_fill,
    },
    Migration { to: 17, name: "tracks without dedupe keys (version 1 chunks read as they are)", run: nothing_to_fill },
    Migration {
        to: 18,
        name: "track credits with delta-coded item ids (version 1 chunks read as they are)",
        run: nothing_to_fill,
    },
    Migration {
        to: 19,
        name: "item names stored as places in their tracks' names (version 1 chunks read as they are)",
        run: nothing_to_fill,
    },
    Migration { to: 20, name: "node statistics in wider chunks for weeks, months and years", run: node_stats },
];

/// 11 -> 12: node buckets (`store::aggregates::node`) from the stored user buckets;
/// a recount after an unclean stop runs after the migrations and moves them on.
/// 19 -> 20 (and 12 -> 13 before it): the same, with the chunks of week, month and year
/// buckets spanning more item ids (`node::chunk_shift`); the rebuild removes every node
/// bucket first.
fn node_stats(store: &Store) -> Result<()> {
    store.rebuild_node_stats()
}

/// 6 -> 7: every origin with snapshots held gets "first seen" = now: when this node
/// really first saw them is not recorded, and what they hold may be backdated, so an
/// open community's probation starts again for everyone (allow-list communities do not
/// use it).
fn first_seen_now(store: &Store) -> Result<()> {
    let now = crate::now_unix();
    let mut origins = std::collections::BTreeSet::new();
    for kv in store.trees.period_origin_snapshot.iter() {
        let (k, _) = kv?;
        if let Some(origin) = k.get(8..40) {
            origins.insert(origin.to_vec());
        }
    }
    for origin in origins {
        if let Ok(origin) = <[u8; 32]>::try_from(origin.as_slice()) {
            store.note_origin_seen(&origin, now)?;
        }
    }
    store.flush()
}

/// 5 -> 6: the spellings trees (`trackid_spellings`, `userid_item_spelling`) from the
/// tracks and the logs, so each user's statistics name items as that user spelled them.
/// With the default credit rules (the store does not know the configured ones): a node
/// with its own rules runs `hearsay stats rebuild` after the upgrade.
///
/// And every account still stored without a level history (`UserV1`, `UserV2`) gets one
/// that starts now: what level it held before is unknown (a change may not have been
/// recorded), so periods that began before the upgrade are released without it.
fn spellings_and_level_histories(store: &Store) -> Result<()> {
    use super::codec::{decode, encode};
    use super::schema::USERID_USER;
    use super::values::{LevelHistory, UserV3};
    let now = crate::now_unix();
    for kv in store.trees.userid_user.iter() {
        let (k, v) = kv?;
        if v.first().is_some_and(|version| *version < 3) {
            let mut user: UserV3 = decode(USERID_USER, &k, &v)?;
            user.levels = LevelHistory::new(now, user.visibility);
            store.trees.userid_user.insert(k, encode(&user))?;
        }
    }
    store.rebuild_spellings(&crate::stats::credits::CreditRules::default())
}

/// 2 -> 3 and 3 -> 4 add trees that start empty (releases; federation).
fn nothing_to_fill(_: &Store) -> Result<()> {
    Ok(())
}

/// 1 -> 2: schema 2 adds the statistics trees; fill them from the existing logs
/// (with the default credit rules; `hearsay stats rebuild` applies configured ones).
fn build_stats(store: &Store) -> Result<()> {
    store.rebuild_stats(&crate::stats::credits::CreditRules::default())
}

pub fn recorded_version(store: &Store) -> Result<Option<u32>> {
    match store.trees.meta.get(KEY)? {
        None => Ok(None),
        Some(bytes) => {
            let arr = <[u8; 4]>::try_from(bytes.as_ref())
                .map_err(|_| Error::corrupt("meta", KEY.as_bytes(), "schema_version is not a u32"))?;
            Ok(Some(u32::from_be_bytes(arr)))
        }
    }
}

pub fn set_version(store: &Store, version: u32) -> Result<()> {
    store.trees.meta.insert(KEY, &version.to_be_bytes())?;
    store.flush()
}

/// Initialises, migrates or refuses, as described above; `current` is the highest
/// version this build writes (the last migration's, or `SCHEMA_VERSION`).
pub fn bring_up_to_date(store: &Store, migrations: &[Migration]) -> Result<()> {
    let current = migrations.last().map_or(SCHEMA_VERSION, |m| m.to.max(SCHEMA_VERSION));
    match recorded_version(store)? {
        None => set_version(store, current),
        Some(found) if found > current => Err(Error::NewerSchema { found, supported: current }),
        Some(found) => {
            for m in migrations.iter().filter(|m| m.to > found) {
                tracing::info!(to = m.to, name = m.name, "migrating database");
                (m.run)(store)?;
                set_version(store, m.to)?;
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Options;
    use crate::store::schema;

    fn open(dir: &std::path::Path) -> Result<Store> {
        Store::open(dir, &Options { cache_mb: 4, ..Default::default() })
    }

    #[test]
    fn a_newer_database_is_refused_with_a_clear_message() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path()).expect("open");
        set_version(&store, SCHEMA_VERSION + 1).expect("set");
        drop(store);
        let err = open(dir.path()).err().expect("refused").to_string();
        assert!(err.contains("newer than this build"), "{err}");
    }

    #[test]
    fn an_account_without_a_level_history_gets_one_from_the_upgrade() {
        use crate::store::values::{SharingLevel, UserV2, UserV3};
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path()).expect("open");
        let created = 1_700_000_000;
        let v2 = UserV2 {
            name: "old".into(),
            created_at: created,
            password_hash: String::new(),
            public_key: [1; 32],
            timezone: "UTC".into(),
            visibility: SharingLevel::Aggregate,
        };
        let mut bytes = vec![2u8];
        bytes.extend(postcard::to_allocvec(&v2).expect("encode"));
        store.trees.userid_user.insert(crate::store::keys::user(crate::store::UserId(7)), bytes).expect("insert");
        set_version(&store, 5).expect("version");
        let before = crate::now_unix();
        bring_up_to_date(&store, MIGRATIONS).expect("migrate");
        let raw = store.trees.userid_user.get(crate::store::keys::user(crate::store::UserId(7))).expect("get");
        let raw = raw.expect("still there");
        assert_eq!(raw.first(), Some(&3), "rewritten as UserV3");
        let user: UserV3 = crate::store::codec::decode(schema::USERID_USER, b"k", &raw).expect("decode");
        // Periods that began before the upgrade: the level then is unknown, so none.
        assert_eq!(user.levels.level_for_period(created, created + 86_400), None);
        assert_eq!(user.levels.level_for_period(created, before - 3_600), None);
        assert_eq!(user.levels.level_for_period(created, crate::now_unix() + 3_600), Some(SharingLevel::Aggregate));
    }

    fn mark(store: &Store) -> Result<()> {
        store.trees.meta.insert("migrated", &[1])?;
        Ok(())
    }

    #[test]
    fn migrations_run_in_order_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path()).expect("open");
        let steps = [Migration { to: SCHEMA_VERSION + 1, name: "test", run: mark }];
        bring_up_to_date(&store, &steps).expect("migrate");
        assert_eq!(recorded_version(&store).expect("v"), Some(SCHEMA_VERSION + 1));
        assert!(store.trees.meta.get("migrated").expect("get").is_some());
        store.trees.meta.remove("migrated").expect("rm");
        bring_up_to_date(&store, &steps).expect("again");
        assert!(store.trees.meta.get("migrated").expect("get").is_none(), "ran twice");
    }
}
