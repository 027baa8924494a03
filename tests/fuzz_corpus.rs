//! Replays the committed fuzz corpora (`fuzz/corpus/<target>/`) through the
//! fuzz targets' own checks, so stable `cargo test` catches a regression on
//! any input fuzzing once found interesting, without nightly or libFuzzer.

#[path = "../fuzz/src/checks.rs"]
mod checks;

use std::panic::catch_unwind;
use std::path::{Path, PathBuf};

/// A fuzz target's check: panics on a broken invariant.
type Check = fn(&[u8]);

/// Each fuzz target and its check, as the target binaries call them.
const TARGETS: &[(&str, Check)] = &[
    ("parse_message", checks::parse_message),
    ("framing", checks::framing),
    ("uri", checks::uri),
    ("roundtrip", checks::roundtrip),
    ("proxy", checks::proxy),
];

/// Corpora whose targets are replayed by tests elsewhere, and where.
const REPLAYED_ELSEWHERE: &[(&str, &str)] = &[("cluster_codec", "src/cluster/codec.rs")];

fn corpus_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus")
}

/// Runs every file of one corpus through its check; names each failure.
fn replay(target: &str) {
    let (_, check) = TARGETS.iter().find(|(t, _)| *t == target).unwrap();
    let dir = corpus_root().join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "corpus {target} is empty");
    let failed: Vec<String> = files
        .iter()
        .filter(|f| {
            let data = std::fs::read(f).unwrap();
            catch_unwind(|| check(&data)).is_err()
        })
        .map(|f| f.display().to_string())
        .collect();
    assert!(
        failed.is_empty(),
        "{target} fails on:\n{}",
        failed.join("\n")
    );
}

#[test]
fn parse_message_corpus() {
    replay("parse_message");
}

#[test]
fn framing_corpus() {
    replay("framing");
}

#[test]
fn uri_corpus() {
    replay("uri");
}

#[test]
fn roundtrip_corpus() {
    replay("roundtrip");
}

#[test]
fn proxy_corpus() {
    replay("proxy");
}

/// A corpus folder that no test replays would let regressions through.
#[test]
fn every_corpus_has_a_check() {
    for entry in std::fs::read_dir(corpus_root()).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        assert!(
            TARGETS.iter().any(|(t, _)| *t == name)
                || REPLAYED_ELSEWHERE.iter().any(|(t, _)| *t == name),
            "fuzz/corpus/{name} is replayed by no test"
        );
    }
}
