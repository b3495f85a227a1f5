//! Replays every input under `tests/fuzz_regressions/<target>/` through the parser its fuzz target drives
//! (`fuzz/fuzz_targets/<target>.rs`): each must give `Ok` or an error, never a panic. A crash the fuzzer
//! finds is copied here so that it stays fixed; the hand-made seeds cover the nastiest shapes we know of.
#![cfg(feature = "c4")]

use std::path::PathBuf;

use peerlm::data::c4::{open_stream, JsonLines};
use peerlm::data::{shard, tokenizer_file};

fn inputs(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_regressions").join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    assert!(!files.is_empty(), "no regression inputs in {}", dir.display());
    files.into_iter().map(|f| (f.display().to_string(), std::fs::read(&f).unwrap())).collect()
}

#[test]
fn json_lines_inputs_do_not_panic() {
    for (name, bytes) in inputs("json_lines") {
        for gzip in [false, true] {
            for skip in [false, true] {
                let lines = JsonLines::new(open_stream(bytes.as_slice(), gzip), name.clone(), skip);
                let outcomes: Vec<_> = lines.take(10_000).collect();
                // Skip mode skips malformed lines; only a damaged stream (a read error) is still an error.
                for error in outcomes.iter().filter_map(|o| o.as_ref().err()).filter(|_| skip) {
                    assert!(error.to_string().contains("read error"), "{name}: skip mode returned {error}");
                }
            }
        }
    }
}

#[test]
fn shard_header_inputs_are_rejected_cleanly() {
    for (name, bytes) in inputs("shard_header") {
        let result = shard::validate_bytes(&bytes, &name);
        assert!(result.is_err(), "{name} was accepted as a shard");
    }
}

#[test]
fn tokenizer_file_inputs_are_rejected_cleanly() {
    for (name, bytes) in inputs("tokenizer_file") {
        let result = tokenizer_file::parse(&bytes, &name);
        assert!(result.is_err(), "{name} was accepted as a tokenizer file");
    }
}
