//! `peerlm prepare` end to end on the bundled C4 sample, and its one-line errors on bad input.
#![cfg(feature = "cli")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use peerlm::data::{tokenizer_file, Shard};

/// Runs `peerlm prepare ARGS --input INPUT --out OUT`.
fn prepare(args: &[&str], input: &Path, out: &Path) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_peerlm"));
    command.arg("prepare").args(args).arg("--input").arg(input).arg("--out").arg(out).output().unwrap()
}

fn sample() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("datasets/c4/c4-train.00000-of-00001.json.gz")
}

#[test]
fn prepares_tokenizer_and_shards_with_held_out_documents() {
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("prepare_valid_docs");
    let _ = std::fs::remove_dir_all(&out);
    let args = ["--vocab", "512", "--valid-docs", "100", "--shard-tokens", "400000", "--train-sample-bytes", "300000"];
    let output = prepare(&args, &sample(), &out);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("train: 1400 documents") && stdout.contains("valid: 100 documents"), "{stdout}");
    let tokenizer = tokenizer_file::load(&out.join("tokenizer.bpe")).unwrap();
    assert_eq!(tokenizer.vocab_size(), 512);
    let train: Vec<Shard> = (0..)
        .map(|i| out.join(format!("train_{i:03}.bin")))
        .take_while(|p| p.exists())
        .map(|p| Shard::open(&p).unwrap())
        .collect();
    assert!(train.len() >= 2, "--shard-tokens splits the train set");
    assert!(train.iter().all(|s| s.len() <= 400_000 && s.vocab_size() == 512));
    let valid = Shard::open(&out.join("valid_000.bin")).unwrap();
    let mut tokens = vec![0; valid.len()];
    valid.read_tokens(0, &mut tokens);
    let eot = tokenizer.end_of_text();
    assert_eq!(tokens.iter().filter(|&&t| t == eot).count(), 100);
    let text = String::from_utf8(tokenizer.decode_bytes(&tokens).unwrap()).unwrap();
    assert!(text.starts_with("<|endoftext|>"));
}

#[test]
fn bad_input_is_one_error_line_and_a_failure_status() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("prepare_bad");
    // A failed prepare may leave its tokenizer, and prepare refuses a directory holding one.
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.jsonl");
    std::fs::write(&bad, "{\"text\":\"fine\"}\n{\"text\":\n").unwrap();
    // A malformed line (vocab 300), then a vocabulary out of range (vocab 3).
    for vocab in ["300", "3"] {
        let output = prepare(&["--valid-docs", "1", "--vocab", vocab], &bad, &dir.join("out"));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success());
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    }
    let output = prepare(&["--vocab", "300", "--valid-docs", "1", "--skip-bad-lines"], &bad, &dir.join("out"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "one document held out leaves none to train on");
    assert!(stderr.contains("no training documents"), "{stderr}");
}

#[test]
fn preparing_again_is_refused_and_overwrite_leaves_only_the_new_shards() {
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("prepare_again");
    let _ = std::fs::remove_dir_all(&out);
    let args = ["--vocab", "300", "--valid-docs", "100", "--train-sample-bytes", "100000"];
    let small_shards = prepare(&[&args[..], &["--shard-tokens", "200000"]].concat(), &sample(), &out);
    assert!(small_shards.status.success(), "{}", String::from_utf8_lossy(&small_shards.stderr));
    assert!(out.join("train_002.bin").exists(), "several shards at first");
    let refused = prepare(&args, &sample(), &out);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && stderr.contains("pass --overwrite"), "{stderr}");
    let replaced = prepare(&[&args[..], &["--overwrite"]].concat(), &sample(), &out);
    assert!(replaced.status.success(), "{}", String::from_utf8_lossy(&replaced.stderr));
    let mut names: Vec<String> =
        std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    assert_eq!(names, ["tokenizer.bpe", "train_000.bin", "valid_000.bin"]);
}
