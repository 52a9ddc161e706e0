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
];

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

    fn open(dir: &std::path::Path) -> Result<Store> {
        Store::open(dir, &Options { cache_mb: 4 })
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
