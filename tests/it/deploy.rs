//! The deployment definitions in `deploy/`: the systemd unit verifies and its sandbox
//! scores as documented; the container image's runtime (an unprivileged user, its
//! environment, one data directory) serves and stops cleanly. The image itself is not
//! built here: the test machines have no container engine.

use std::path::PathBuf;
use std::process::Command;

use crate::support::{NodeProcess, bin, require};

fn deploy(file: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy").join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn the_systemd_unit_verifies_and_its_sandbox_scores_low_exposure() {
    require("systemd-analyze", "systemd");
    let dir = tempfile::tempdir().expect("tempdir");
    let unit = deploy("hearsay.service").replace("/usr/local/bin/hearsay", bin().to_str().expect("utf8"));
    let path = dir.path().join("hearsay.service");
    std::fs::write(&path, unit).expect("write");
    let out = Command::new("systemd-analyze").args(["verify", "--man=no"]).arg(&path).output().expect("verify");
    let text = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.trim().is_empty(), "systemd-analyze verify: {text}");
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&path)
        .output()
        .expect("security");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let score = text
        .lines()
        .find_map(|l| l.split("Overall exposure level for hearsay.service: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no exposure level in: {text}{}", String::from_utf8_lossy(&out.stderr)));
    println!("systemd-analyze security --offline=true: exposure {score} (0 safest, 10 unprotected)");
    // systemd calls 0–2.9 "OK" ("SAFE" below 1.1): the documented sandbox.
    assert!(score < 3.0, "exposure {score}:\n{text}");
}

#[test]
fn the_container_runtime_serves_and_stops_as_an_unprivileged_user_on_one_volume() {
    require("setpriv", "util-linux");
    let file = deploy("Containerfile");
    // What the image promises, read from its definition.
    let stages: Vec<&str> = file.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(stages.len(), 2, "a build stage and a runtime stage: {stages:?}");
    assert!(file.contains("\nUSER hearsay:hearsay\n") && file.contains("--uid 10001"), "runs as uid 10001");
    assert!(file.contains("VOLUME [\"/data\"]"), "one data volume");
    // The image's environment, every `ENV` pair (continued lines included).
    let mut env: Vec<(String, String)> = Vec::new();
    let mut in_env = false;
    for line in file.lines() {
        let body = match line.strip_prefix("ENV ") {
            Some(rest) => rest,
            None if in_env => line.trim(),
            None => continue,
        };
        in_env = body.ends_with('\\');
        for pair in body.trim_end_matches('\\').split_whitespace() {
            if let Some((k, v)) = pair.split_once('=') {
                env.push((k.to_owned(), v.to_owned()));
            }
        }
    }
    let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    assert_eq!(get("HEARSAY_NODE__DATA_DIR").as_deref(), Some("/data"));
    assert_eq!(get("HEARSAY_HTTP__LISTEN").as_deref(), Some("0.0.0.0:8487"));
    // /data is a fresh directory owned by the image's user, mode 0700, as the image makes it.
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    let data = dir.path().join("data");
    std::fs::create_dir(&data).expect("mkdir");
    std::os::unix::fs::chown(&data, Some(10001), Some(10001)).expect("chown");
    std::fs::set_permissions(&data, std::os::unix::fs::PermissionsExt::from_mode(0o700)).expect("chmod");
    let mut vars: Vec<(&str, &str)> =
        env.iter().filter(|(k, _)| k != "HEARSAY_NODE__DATA_DIR").map(|(k, v)| (k.as_str(), v.as_str())).collect();
    // Any free port rather than 8487 (tests run side by side), on the image's address.
    vars.push(("HEARSAY_HTTP__LISTEN", "0.0.0.0:0"));
    let node = NodeProcess::start_as(&data, &vars, 10001);
    let health = ureq::get(&format!("{}/health", node.url)).call().expect("health");
    assert_eq!(health.status(), 200);
    let pid = node.child.id();
    let uid = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("status")
        .lines()
        .find_map(|l| l.strip_prefix("Uid:").map(|r| r.split_whitespace().map(str::to_owned).collect::<Vec<_>>()))
        .expect("Uid line");
    assert!(uid.iter().all(|u| u == "10001"), "runs as 10001 only: {uid:?}");
    assert_eq!(node.terminate(), Some(0), "SIGTERM stops it cleanly");
    // Everything it wrote is in the volume, owned by the image's user.
    let mut entries = 0;
    for e in std::fs::read_dir(&data).expect("read_dir") {
        let meta = e.expect("entry").metadata().expect("meta");
        assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), 10001);
        entries += 1;
    }
    assert!(entries > 0, "the store and the node key are in the volume");
    let outside: Vec<_> = std::fs::read_dir(dir.path()).expect("read_dir").map(|e| e.expect("e").file_name()).collect();
    assert_eq!(outside, [std::ffi::OsString::from("data")], "nothing written beside the volume");
}
