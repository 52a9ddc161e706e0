//! The module graph against the layering `docs/ARCHITECTURE.md` states: every
//! `crate::` path in `src/` may name only a module of a lower layer, the pure cores do
//! no I/O, and sled, libp2p and axum stay in their modules. The table is read from the
//! doc itself, so a new module or a changed rule is one edit there.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// module -> layer, from the "## Layers" table.
fn layers() -> BTreeMap<String, u32> {
    let doc = std::fs::read_to_string(root().join("docs/ARCHITECTURE.md")).expect("docs/ARCHITECTURE.md");
    let section = doc.split("\n## Layers\n").nth(1).expect("a '## Layers' section").split("\n## ").next().unwrap_or("");
    let mut out = BTreeMap::new();
    for line in section.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let Some(layer) = cells.get(1).and_then(|c| c.parse::<u32>().ok()) else { continue };
        for module in cells[2].split(',') {
            let module = module.trim().trim_matches('`');
            assert!(out.insert(module.to_owned(), layer).is_none(), "{module} is in two layers");
        }
    }
    assert!(out.len() > 10, "the layers table was not found: {out:?}");
    out
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src").flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file belongs to (`src/store/writer.rs` -> `store`).
fn module_of(path: &Path) -> String {
    let rel = path.strip_prefix(root().join("src")).expect("under src");
    let first = rel.components().next().expect("a component").as_os_str().to_string_lossy().into_owned();
    first.trim_end_matches(".rs").to_owned()
}

/// The code of a file without comments (doc comments name modules freely).
fn code(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("//") {
            out.push('\n'); // keep line numbers
            continue;
        }
        // A trailing comment starts at " //" (a URL's "://" has no space before it).
        let line = line.find(" //").map_or(line, |i| &line[..i]);
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Every top-level module a piece of code names through `crate::`, with the line.
fn crate_uses(code: &str) -> Vec<(String, usize)> {
    let mut out = Vec::new();
    for (n, line) in code.lines().enumerate() {
        let mut rest = line;
        while let Some(i) = rest.find("crate::") {
            let before = rest[..i].chars().last();
            rest = &rest[i + "crate::".len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue; // e.g. `hearsay_crate::`
            }
            if let Some(group) = rest.strip_prefix('{') {
                // `use crate::{a::b, c};` on one line or over several.
                let end = group.find('}').unwrap_or(group.len());
                for item in group[..end].split(',') {
                    let name: String = item.trim().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                    if !name.is_empty() {
                        out.push((name, n + 1));
                    }
                }
            } else {
                let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                if !name.is_empty() {
                    out.push((name, n + 1));
                }
            }
        }
    }
    out
}

#[test]
fn every_module_uses_only_lower_layers() {
    let layers = layers();
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    files.sort();
    let mut violations = Vec::new();
    let mut edges: BTreeSet<(String, String)> = BTreeSet::new();
    for path in &files {
        let module = module_of(path);
        if module == "lib" || module == "main" {
            continue;
        }
        let Some(&own) = layers.get(&module) else {
            violations.push(format!("{}: module `{module}` is not in the layers table", path.display()));
            continue;
        };
        let text = std::fs::read_to_string(path).expect("read");
        for (used, line) in crate_uses(&code(&text)) {
            if used == module {
                continue;
            }
            match layers.get(&used) {
                None => {
                    violations.push(format!("{}:{line}: `crate::{used}` is not in the layers table", path.display()))
                }
                Some(&l) if l >= own => violations.push(format!(
                    "{}:{line}: `{module}` (layer {own}) uses `crate::{used}` (layer {l})",
                    path.display()
                )),
                Some(_) => {
                    edges.insert((module.clone(), used));
                }
            }
        }
    }
    eprintln!("{} modules, {} dependencies, all downward", layers.len(), edges.len());
    assert!(violations.is_empty(), "layering violations (docs/ARCHITECTURE.md#layers):\n{}", violations.join("\n"));
}

#[test]
fn pure_cores_do_no_io_and_dependencies_stay_in_their_modules() {
    // (forbidden text, modules allowed to use it; empty = only outside the pure cores)
    let pure = ["log", "stats", "privacy", "policy", "envelope", "federation"];
    let only_in: &[(&str, &[&str])] = &[
        ("sled::", &["store"]),
        // `config` checks the syntax of the multiaddrs it is given, nothing more.
        ("libp2p::", &["p2p", "bench", "config"]),
        ("axum::", &["state", "api", "web", "http", "node", "bench", "cli"]),
    ];
    let io = [
        "std::fs",
        "std::net",
        "tokio::",
        "SystemTime",
        "Instant::now",
        "crate::now_unix",
        "rand::rng",
        "thread_rng",
        "getrandom",
        "OsRng",
        "std::env",
    ];
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    let mut violations = Vec::new();
    for path in &files {
        let module = module_of(path);
        let text = code(&std::fs::read_to_string(path).expect("read"));
        for (n, line) in text.lines().enumerate() {
            for (needle, allowed) in only_in {
                if line.contains(needle) && !allowed.contains(&module.as_str()) {
                    violations.push(format!("{}:{}: `{needle}` outside {allowed:?}", path.display(), n + 1));
                }
            }
            if pure.contains(&module.as_str()) {
                for needle in io {
                    if line.contains(needle) {
                        violations.push(format!("{}:{}: pure core `{module}` uses `{needle}`", path.display(), n + 1));
                    }
                }
            }
        }
    }
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}

#[test]
fn the_checker_sees_grouped_and_inline_paths() {
    let found =
        crate_uses(&code("use crate::{store::Store, log};\nlet x = crate::now_unix();\n// crate::web in a comment\n"));
    let names: Vec<&str> = found.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["store", "log", "now_unix"]);
    assert_eq!(crate_uses(&code("// use crate::web;\nlet a = 1; // crate::api\n")), vec![]);
}

/// The access policy (`src/policy.rs`) is the one place that decides what a viewer may
/// learn about a user: no other module compares sharing levels to decide it. The
/// release pipeline (`privacy`, and the store and schedule that feed it each user at
/// their level for a period) is the DP mechanism itself, and may.
#[test]
fn only_the_access_policy_compares_sharing_levels() {
    let allowed = ["src/policy.rs", "src/privacy/", "src/store/releases.rs", "src/publish.rs"];
    let needles = [
        "visibility ==",
        "visibility !=",
        "== SharingLevel::",
        "!= SharingLevel::",
        "level ==",
        "level !=",
        "matches!(level",
    ];
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    let mut violations = Vec::new();
    for path in &files {
        let rel = path.strip_prefix(root()).expect("under the root").to_string_lossy().replace('\\', "/");
        if allowed.iter().any(|a| rel.starts_with(a)) {
            continue;
        }
        let text = code(&std::fs::read_to_string(path).expect("read"));
        for (n, line) in text.lines().enumerate() {
            // Comparing a level with the one a form chose (the settings picker) is not a
            // decision about access; everything else is.
            if line.contains("me.visibility == level") {
                continue;
            }
            for needle in needles {
                if line.contains(needle) {
                    violations.push(format!("{rel}:{}: `{needle}`: decide access in src/policy.rs", n + 1));
                }
            }
            // Ordered comparisons and pattern matches on a level decide access too.
            let on_level = line.contains("visibility") || line.contains(".level");
            let decides = ["matches!(", "match ", " >= ", " <= ", " > ", " < "].iter().any(|d| line.contains(d));
            if on_level && decides {
                violations.push(format!("{rel}:{}: a level compared: decide access in src/policy.rs", n + 1));
            }
        }
    }
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}
