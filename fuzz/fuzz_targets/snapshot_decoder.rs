//! Feeds arbitrary bytes to every decoder a peer can reach: the signed envelope with
//! its snapshot, a bare snapshot body, a community manifest and an invite ticket. Each
//! must return an error or a value that re-encodes to exactly the input; none may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = hearsay::privacy::snapshot::SnapshotV1::decode(data) {
        assert_eq!(s.encode(), data);
    }
    let _ = hearsay::identity::open_snapshot(data);
    let _ = hearsay::federation::community::open_manifest(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = hearsay::federation::community::TicketV2::from_text(text);
    }
});
