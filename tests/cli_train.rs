//! `peerlm train`, `eval` and `sample` as a careless or hostile user runs them: nothing made is lost,
//! nothing panics, and a stopped run resumes to the same bits.
#![cfg(feature = "cli")]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use peerlm::checkpoint::Checkpoint;
use peerlm::data::{shard, tokenizer_file, DocumentReader, Tokenizer};
use peerlm::run_dir::{Existing, RunDir};

const VOCAB: usize = 300;
const SAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/datasets/c4/c4-train.00000-of-00001.json.gz");

fn tmp(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("cli-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn peerlm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_peerlm")).args(args).output().unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Fails unless `output` is a one-line error containing `expected` (never a panic).
fn assert_error(output: &Output, expected: &str) {
    let message = stderr(output);
    assert_eq!(output.status.code(), Some(1), "{message}");
    assert!(message.contains(expected) && !message.contains("panicked"), "wanted {expected:?} in: {message}");
}

/// A prepared data set of the bundled sample with a 300-token vocabulary, made once.
fn data() -> &'static Path {
    static DATA: OnceLock<PathBuf> = OnceLock::new();
    DATA.get_or_init(|| {
        let dir = tmp("data");
        let out = dir.to_str().unwrap();
        let args = ["prepare", "--input", SAMPLE, "--out", out, "--vocab", "300", "--valid-docs", "100"];
        let output = peerlm(&[&args[..], &["--train-sample-bytes", "200000"]].concat());
        assert!(output.status.success(), "{}", stderr(&output));
        dir
    })
}

/// A tiny PEER model's config in `dir`.
fn config(dir: &Path, steps: u64) -> String {
    let path = dir.join(format!("tiny{steps}.json"));
    let text = format!(
        r#"{{"model": {{"vocab_size": {VOCAB}, "seq_len": 16, "d_model": 16, "n_layers": 2, "n_heads": 2, "ffw": "peer",
          "dense": {{"d_model": 16, "d_ff": 32}}, "peer": {{"d_model": 16, "num_experts": 64, "heads": 2, "top_k": 4, "key_dim": 8}}}},
          "train": {{"batch_size": 4, "steps": {steps}, "warmup_steps": 5, "eval_every": 10, "eval_batches": 2,
          "checkpoint_every": 10}}}}"#
    );
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

fn train(config: &str, out: &Path, extra: &[&str]) -> Output {
    train_on(data(), config, out, extra)
}

fn train_on(data: &Path, config: &str, out: &Path, extra: &[&str]) -> Output {
    let base = ["train", "--config", config, "--data", data.to_str().unwrap(), "--out", out.to_str().unwrap()];
    peerlm(&[&base[..], &["--sample-prompt", ""], extra].concat())
}

fn checkpoint_step(out: &Path) -> u64 {
    Checkpoint::load(&out.join("checkpoint.safetensors")).unwrap().metadata["step"].parse().unwrap()
}

#[test]
fn a_second_run_into_an_out_is_refused_overwrite_moves_the_first_aside_and_a_locked_out_is_refused() {
    let dir = tmp("refuse");
    let (config, out) = (config(&dir, 10), dir.join("run"));
    assert!(train(&config, &out, &[]).status.success());
    let first = std::fs::read(out.join("checkpoint.safetensors")).unwrap();
    assert_error(&train(&config, &out, &[]), "already holds a run");
    assert_eq!(std::fs::read(out.join("checkpoint.safetensors")).unwrap(), first);
    let overwritten = train(&config, &out, &["--overwrite"]);
    assert!(overwritten.status.success(), "{}", stderr(&overwritten));
    assert_eq!(std::fs::read(out.join("previous-1/checkpoint.safetensors")).unwrap(), first);
    assert!(out.join("previous-1/metrics.jsonl").exists());

    let _held = RunDir::open(&out, Existing::Resume).unwrap();
    assert_error(&train(&config, &out, &["--resume"]), "another process is training into this directory");
}

#[test]
fn shards_past_the_vocabulary_and_a_resume_with_another_model_are_errors_not_panics() {
    let dir = tmp("vocab");
    // The 300-token tokenizer copied beside shards of a 400-token vocabulary.
    let mixed = dir.join("mixed");
    std::fs::create_dir_all(&mixed).unwrap();
    std::fs::copy(data().join("tokenizer.bpe"), mixed.join("tokenizer.bpe")).unwrap();
    let tokens: Vec<u32> = (0..5000).map(|i| i % 400).collect();
    for split in ["train", "valid"] {
        shard::write_shard(&mixed.join(format!("{split}_000.bin")), 400, &tokens).unwrap();
    }
    let config = config(&dir, 10);
    let out = dir.join("run");
    assert_error(&train_on(&mixed, &config, &out, &[]), "holds tokens of a 400-token vocabulary");

    // A run of vocabulary 300, resumed with a config and data of vocabulary 400.
    let out = dir.join("run300");
    assert!(train(&config, &out, &[]).status.success());
    let bigger = dir.join("data400");
    std::fs::create_dir_all(&bigger).unwrap();
    let reader = DocumentReader::open(&[PathBuf::from(SAMPLE)], false).unwrap();
    let docs: Vec<String> = reader.take(50).map(|d| d.unwrap().text).collect();
    let tokenizer = Tokenizer::train(&docs, 400).unwrap();
    tokenizer_file::save(&tokenizer, &bigger.join("tokenizer.bpe")).unwrap();
    for split in ["train", "valid"] {
        shard::write_shard(&bigger.join(format!("{split}_000.bin")), 400, &tokens).unwrap();
    }
    let config400 = config_with_vocab(&dir, 400);
    let output = train_on(&bigger, &config400, &out, &["--resume"]);
    assert_error(&output, "the run's model differs");
    assert!(stderr(&output).contains("checkpoint.safetensors:"), "the error names the checkpoint");
}

fn config_with_vocab(dir: &Path, vocab: usize) -> String {
    let text = std::fs::read_to_string(config(dir, 10))
        .unwrap()
        .replace("\"vocab_size\": 300", &format!("\"vocab_size\": {vocab}"));
    let path = dir.join(format!("vocab{vocab}.json"));
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn a_model_too_large_for_the_machine_is_refused_before_allocating() {
    let dir = tmp("memory");
    // Width 2^27: the token embeddings alone are 160 GB, attention's d² weights far more.
    let text = std::fs::read_to_string(config(&dir, 10)).unwrap();
    let huge = dir.join("huge.json");
    std::fs::write(&huge, text.replace("\"d_model\": 16,", "\"d_model\": 134217728,")).unwrap();
    let output = train(huge.to_str().unwrap(), &dir.join("run"), &[]);
    assert_error(&output, "GiB is available");
    assert!(stderr(&output).contains("(weights "), "{}", stderr(&output));
}

#[test]
fn temporaries_of_a_killed_writer_are_swept_at_start() {
    let dir = tmp("sweep");
    let out = dir.join("run");
    std::fs::create_dir_all(&out).unwrap();
    // Named as AtomicFile names them, by a process id no live process has.
    let stale = out.join("checkpoint.safetensors.tmp2147483646-0");
    std::fs::write(&stale, vec![0u8; 1 << 16]).unwrap();
    let output = train(&config(&dir, 10), &out, &[]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(!stale.exists() && stderr(&output).contains("left by a writer that was killed"));
}

#[test]
fn readme_stop_and_resume_ends_with_the_bits_of_a_straight_run() {
    let dir = tmp("resume");
    let config = config(&dir, 30);
    let (straight, stopped) = (dir.join("straight"), dir.join("stopped"));
    assert!(train(&config, &straight, &[]).status.success());
    // README: `--stop-at 200` then `--resume`.
    let output = train(&config, &stopped, &["--stop-at", "12"]);
    assert!(output.status.success() && stderr(&output).contains("stopped (--stop-at) at step 12 of 30"));
    let output = train(&config, &stopped, &["--resume"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let bytes = |dir: &Path| std::fs::read(dir.join("checkpoint.safetensors")).unwrap();
    assert!(bytes(&straight) == bytes(&stopped), "the resumed run's checkpoint differs from the straight run's");

    // The schedule belongs to the run: changing its length on resume is refused, extending is explicit.
    assert_error(&train(&config, &stopped, &["--resume", "--steps", "60"]), "planned for 30 steps");
    let finished = train(&config, &stopped, &["--resume"]);
    assert!(finished.status.success() && stderr(&finished).contains("is finished (step 30 of 30)"));
    assert!(!String::from_utf8_lossy(&finished.stdout).contains("NaN"));
    assert!(train(&config, &stopped, &["--resume", "--extend-to", "40"]).status.success());
    assert_eq!(checkpoint_step(&stopped), 40);
}

#[test]
fn ctrl_c_finishes_the_step_writes_a_checkpoint_and_exits_130() {
    let dir = tmp("sigint");
    let out = dir.join("run");
    let config = config(&dir, 1_000_000);
    let mut child = Command::new(env!("CARGO_BIN_EXE_peerlm"))
        .args(["train", "--config", &config, "--data", data().to_str().unwrap(), "--out", out.to_str().unwrap()])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The handler is in place before the first step; a million steps cannot end before the signal.
    let metrics = out.join("metrics.jsonl");
    while std::fs::read_to_string(&metrics).map_or(true, |m| m.is_empty()) {
        if child.try_wait().unwrap().is_some() {
            break; // ended before training: the assertions below say how
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // SAFETY: sends SIGINT to the child this test spawned.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(130), "{}", stderr(&output));
    assert!(stderr(&output).contains("interrupted at step"), "{}", stderr(&output));
    let logged = std::fs::read_to_string(&metrics).unwrap().lines().filter(|l| l.contains("\"loss\"")).count();
    assert_eq!(checkpoint_step(&out), logged as u64, "every step trained is in the checkpoint");
}

#[test]
fn meaningless_flags_are_refused() {
    let dir = tmp("flags");
    let config = config(&dir, 10);
    let out = dir.join("run");
    for (flops, expected) in [("0", "positive"), ("-1e14", "positive"), ("NaN", "positive"), ("1e40", "2^53")] {
        assert_error(&train(&config, &out, &[&format!("--flops={flops}")]), expected);
    }
    assert!(train(&config, &out, &[]).status.success());
    let checkpoint = out.join("checkpoint.safetensors");
    let checkpoint = checkpoint.to_str().unwrap();
    for temperature in ["-1", "NaN", "inf"] {
        let temperature = format!("--temperature={temperature}");
        let output = peerlm(&["sample", "--checkpoint", checkpoint, "--tokens", "3", &temperature]);
        assert_error(&output, "--temperature");
    }
    let output = peerlm(&["eval", "--checkpoint", checkpoint, "--data", data().to_str().unwrap(), "--stride", "0"]);
    assert_error(&output, "--stride");

    let no_tokenizer = dir.join("no-tokenizer");
    std::fs::create_dir_all(&no_tokenizer).unwrap();
    for split in ["train", "valid"] {
        let name = format!("{split}_000.bin");
        std::fs::copy(data().join(&name), no_tokenizer.join(&name)).unwrap();
    }
    let output = train_on(&no_tokenizer, &config, &dir.join("run2"), &[]);
    assert_error(&output, "holds token shards but no tokenizer.bpe");
}

#[test]
fn an_interrupted_automatic_prepare_is_started_again() {
    let dir = tmp("auto-prepare");
    let raw = dir.join("raw");
    std::fs::create_dir_all(&raw).unwrap();
    let docs: Vec<String> =
        DocumentReader::open(&[PathBuf::from(SAMPLE)], false).unwrap().take(120).map(|d| d.unwrap().text).collect();
    for (name, part) in [("c4-train.json.gz", &docs[..100]), ("c4-validation.json.gz", &docs[100..])] {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        for text in part {
            writeln!(gz, "{}", serde_json::json!({ "text": text })).unwrap();
        }
        std::fs::write(raw.join(name), gz.finish().unwrap()).unwrap();
    }
    // What a preparation killed after writing its tokenizer left behind.
    let out = dir.join("run");
    std::fs::create_dir_all(out.join("data")).unwrap();
    std::fs::write(out.join("data/tokenizer.bpe"), "half").unwrap();
    let output = train_on(&raw, &config(&dir, 10), &out, &[]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(out.join("data/train_000.bin").exists() && !out.join("data.partial").exists());
}
