//! `peerlm eval`, `prepare --tokenizer/--from-checkpoint`, `train --resume` and `sample` end to end: raw
//! text and prepared shards give the same figures, and token ids are never read with another tokenizer.
#![cfg(feature = "cli")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use peerlm::checkpoint::Checkpoint;
use peerlm::data::{tokenizer_file, DocumentReader, Tokenizer};
use peerlm::train::{RunConfig, Trainer};

#[path = "common/tiny_peer.rs"]
mod tiny_peer;

const VOCAB: usize = 300;

fn peerlm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_peerlm")).args(args).output().unwrap()
}

fn stdout(output: &Output) -> String {
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "{text}\n{}", String::from_utf8_lossy(&output.stderr));
    text
}

fn stderr_of_failure(output: &Output) -> String {
    let text = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success(), "succeeded: {}", String::from_utf8_lossy(&output.stdout));
    assert!(!text.contains("panicked"), "{text}");
    text
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("eval_cli").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn c4_documents(skip: usize, count: usize) -> Vec<String> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("datasets/c4/c4-validation.00000-of-00001.json.gz");
    DocumentReader::open(&[path], false).unwrap().skip(skip).take(count).map(|d| d.unwrap().text).collect()
}

/// Documents as JSON lines with their text under `field`.
fn write_jsonl(path: &Path, documents: &[String], field: &str) {
    let lines: Vec<String> = documents.iter().map(|text| serde_json::json!({ field: text }).to_string()).collect();
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

fn config() -> RunConfig {
    let config = tiny_peer::config(VOCAB, 32);
    config.validate().unwrap();
    config
}

/// A tokenizer of exactly VOCAB tokens trained on some C4 documents.
fn tokenizer(skip: usize) -> Tokenizer {
    let tokenizer = Tokenizer::train(&c4_documents(skip, 40), VOCAB).unwrap();
    assert_eq!(tokenizer.vocab_size(), VOCAB);
    tokenizer
}

/// An untrained model's checkpoint holding `tokenizer`: enough to score and sample.
fn checkpoint(path: &Path, tokenizer: &Tokenizer) {
    let mut trainer = Trainer::new(config()).unwrap();
    trainer.set_tokenizer(tokenizer_file::to_text(tokenizer));
    trainer.to_checkpoint().save(path).unwrap();
}

fn hash(tokenizer: &Tokenizer) -> String {
    format!("{:016x}", tokenizer_file::hash(tokenizer))
}

fn assert_names(message: &str, parts: &[&str]) {
    for part in parts {
        assert!(message.contains(part), "{part} missing from: {message}");
    }
}

/// The figures after "<name>: " on the line of `name`.
fn figures_of(output: &str, name: &Path) -> String {
    let prefix = format!("{}: ", name.display());
    let line = output.lines().find(|l| l.starts_with(&prefix)).unwrap_or_else(|| panic!("no {prefix} in {output}"));
    line[prefix.len()..].to_string()
}

#[test]
fn raw_text_and_prepared_shards_give_identical_figures() {
    let dir = temp_dir("identical");
    let ckpt = dir.join("model.safetensors");
    checkpoint(&ckpt, &tokenizer(0));
    let text = dir.join("held_out.jsonl");
    write_jsonl(&text, &c4_documents(100, 12), "body");
    let prepared = dir.join("prepared");
    let (ckpt_arg, text_arg, prepared_arg) =
        (ckpt.to_str().unwrap(), text.to_str().unwrap(), prepared.to_str().unwrap());
    stdout(&peerlm(&[
        "prepare",
        "--from-checkpoint",
        ckpt_arg,
        "--valid",
        text_arg,
        "--field",
        "body",
        "--out",
        prepared_arg,
    ]));
    for stride in ["32", "10"] {
        let from_data =
            stdout(&peerlm(&["eval", "--checkpoint", ckpt_arg, "--data", prepared_arg, "--stride", stride]));
        let from_text = stdout(&peerlm(&[
            "eval",
            "--checkpoint",
            ckpt_arg,
            "--text",
            text_arg,
            "--field",
            "body",
            "--stride",
            stride,
        ]));
        let figures = figures_of(&from_text, &text);
        assert!(figures.starts_with("12 documents"), "{figures}");
        assert_eq!(figures, figures_of(&from_data, &prepared), "stride {stride}");
        assert!(from_text.contains(&format!("stride {stride}")), "the protocol is printed: {from_text}");
    }
}

#[test]
fn eval_refuses_shards_of_another_tokenizer() {
    let dir = temp_dir("eval_mismatch");
    let (ours, theirs) = (tokenizer(0), tokenizer(200));
    assert_ne!(hash(&ours), hash(&theirs));
    let ckpt = dir.join("model.safetensors");
    checkpoint(&ckpt, &ours);
    let their_file = dir.join("theirs.bpe");
    tokenizer_file::save(&theirs, &their_file).unwrap();
    let text = dir.join("held_out.jsonl");
    write_jsonl(&text, &c4_documents(100, 12), "text");
    let prepared = dir.join("prepared");
    let args = ["prepare", "--tokenizer", their_file.to_str().unwrap(), "--valid", text.to_str().unwrap()];
    stdout(&peerlm(&[&args[..], &["--out", prepared.to_str().unwrap()]].concat()));

    let eval = ["eval", "--checkpoint", ckpt.to_str().unwrap(), "--data", prepared.to_str().unwrap()];
    let message = stderr_of_failure(&peerlm(&eval));
    let copied = prepared.join("tokenizer.bpe");
    assert_names(&message, &[ckpt.to_str().unwrap(), copied.to_str().unwrap(), &hash(&ours), &hash(&theirs)]);
    // Without the directory's tokenizer file, the shard's own header still tells.
    std::fs::remove_file(&copied).unwrap();
    let message = stderr_of_failure(&peerlm(&eval));
    let shard = prepared.join("valid_000.bin");
    assert_names(&message, &[ckpt.to_str().unwrap(), shard.to_str().unwrap(), &hash(&ours), &hash(&theirs)]);
}

#[test]
fn resume_refuses_data_of_another_tokenizer_of_the_same_size() {
    let dir = temp_dir("resume_mismatch");
    let (ours, theirs) = (tokenizer(0), tokenizer(200));
    let out = dir.join("run");
    std::fs::create_dir_all(&out).unwrap();
    let ckpt = out.join("checkpoint.safetensors");
    checkpoint(&ckpt, &ours);
    let config_path = dir.join("config.json");
    std::fs::write(&config_path, serde_json::to_string(&config()).unwrap()).unwrap();
    let their_file = dir.join("theirs.bpe");
    tokenizer_file::save(&theirs, &their_file).unwrap();
    let (train, valid) = (dir.join("train.jsonl"), dir.join("valid.jsonl"));
    write_jsonl(&train, &c4_documents(0, 30), "text");
    write_jsonl(&valid, &c4_documents(100, 10), "text");
    let data = dir.join("data");
    let (train, valid, data_arg) = (train.to_str().unwrap(), valid.to_str().unwrap(), data.to_str().unwrap());
    stdout(&peerlm(&[
        "prepare",
        "--tokenizer",
        their_file.to_str().unwrap(),
        "--input",
        train,
        "--valid",
        valid,
        "--out",
        data_arg,
    ]));

    let args = ["train", "--config", config_path.to_str().unwrap(), "--data", data_arg, "--resume"];
    let message = stderr_of_failure(&peerlm(&[&args[..], &["--out", out.to_str().unwrap()]].concat()));
    let data_tokenizer = data.join("tokenizer.bpe");
    assert_names(&message, &[ckpt.to_str().unwrap(), data_tokenizer.to_str().unwrap(), &hash(&ours), &hash(&theirs)]);
    let restored = Trainer::from_checkpoint(Checkpoint::load(&ckpt).unwrap()).unwrap();
    assert_eq!(restored.tokenizer(), Some(tokenizer_file::to_text(&ours).as_str()), "the checkpoint is untouched");
}

#[test]
fn sample_refuses_a_checkpoint_whose_tokenizer_was_replaced() {
    let dir = temp_dir("sample_mismatch");
    let (ours, theirs) = (tokenizer(0), tokenizer(200));
    let ckpt = dir.join("model.safetensors");
    checkpoint(&ckpt, &ours);
    let sample = ["sample", "--checkpoint", ckpt.to_str().unwrap(), "--tokens", "3"];
    stdout(&peerlm(&sample));

    let mut swapped = Checkpoint::load(&ckpt).unwrap();
    swapped.metadata.insert("tokenizer".into(), tokenizer_file::to_text(&theirs));
    swapped.save(&ckpt).unwrap();
    let message = stderr_of_failure(&peerlm(&sample));
    assert_names(&message, &[ckpt.to_str().unwrap(), &hash(&ours), &hash(&theirs)]);
}
