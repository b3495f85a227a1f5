//! End to end on the bundled C4 sample: prepare a little data, train a tiny PEER model until its loss falls,
//! evaluate and sample from the saved checkpoint, and resume a stopped run to the same bits.

use std::path::{Path, PathBuf};

use peerlm::checkpoint::Checkpoint;
use peerlm::data::loader::Batch;
use peerlm::data::{shard, DocumentReader, TokenDataset, Tokenizer};
use peerlm::nn::Module;
use peerlm::sample::{generate, SampleConfig};
use peerlm::train::{self, RunConfig, RunOptions, Trainer};
use peerlm::Tape;

#[path = "common/tiny_peer.rs"]
mod tiny_peer;

const VOCAB: usize = 320;

/// Tokenizer and train/valid shards from the first documents of the bundled sample.
fn prepare(dir: &Path) -> (Tokenizer, TokenDataset, TokenDataset) {
    let reader = DocumentReader::open(&[PathBuf::from("datasets/c4/c4-train.00000-of-00001.json.gz")], false).unwrap();
    let docs: Vec<String> = reader.take(60).map(|d| d.unwrap().text).collect();
    let tokenizer = Tokenizer::train(&docs[..50], VOCAB).unwrap();
    let train_path = dir.join("train_000.bin");
    let valid_path = dir.join("valid_000.bin");
    shard::write_shard(&train_path, VOCAB as u32, &tokenizer.encode_documents(&docs[..50])).unwrap();
    shard::write_shard(&valid_path, VOCAB as u32, &tokenizer.encode_documents(&docs[50..])).unwrap();
    let seq_len = config().model.seq_len;
    (
        tokenizer,
        TokenDataset::open(&[train_path], seq_len).unwrap(),
        TokenDataset::open(&[valid_path], seq_len).unwrap(),
    )
}

fn config() -> RunConfig {
    let mut config = tiny_peer::config(VOCAB, 32);
    let t = &mut config.train;
    (t.batch_size, t.steps, t.lr, t.table_lr, t.warmup_steps) = (4, 40, 3e-3, 3e-3, 5);
    (t.eval_every, t.eval_batches, t.checkpoint_every) = (20, 4, 20);
    config.validate().unwrap();
    config
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("peerlm-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn quiet(out_dir: &Path) -> RunOptions {
    RunOptions::new(out_dir)
}

#[test]
fn loss_falls_and_the_checkpoint_evaluates_and_samples() {
    let dir = temp_dir("train");
    let (tokenizer, train_data, valid_data) = prepare(&dir);
    let mut trainer = Trainer::new(config()).unwrap();
    let before = trainer.validate(&valid_data, 4);
    let summary = train::run(&mut trainer, &train_data, Some(&valid_data), &quiet(&dir)).unwrap();
    let after = summary.final_valid_loss.unwrap();
    assert!(after < before - 0.5, "validation loss went from {before} to {after}");
    assert!(before > (VOCAB as f64).ln() - 0.5, "an untrained model should be near uniform: {before}");

    let (mut model, _, _) = train::load_model(Checkpoint::load(&summary.checkpoint).unwrap()).unwrap();
    let report =
        peerlm::eval::evaluate(&mut model, &valid_data, 4, 4, Some(&|t| tokenizer.token_bytes(t).unwrap().len()));
    assert!((report.loss - trainer.validate(&valid_data, 4)).abs() < 1e-9, "the checkpoint evaluates like the model");
    assert!(report.bits_per_byte.unwrap() > 0.0 && report.usage.len() == 1);
    assert!(report.usage[0].fraction_used > 0.0 && report.usage[0].fraction_used <= 1.0);
    let prompt = tokenizer.encode("The");
    let sample_config =
        SampleConfig { max_new_tokens: 20, temperature: 0.8, top_k: Some(10), seed: 1, stop_token: None };
    let tokens = generate(&mut model, &prompt, &sample_config, |_| {});
    assert_eq!(tokens.len(), 20);
    assert!(tokenizer.decode_bytes(&tokens).is_ok());
    let metrics = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().filter(|l| l.contains("\"loss\"")).count(), 40);
}

#[test]
fn a_resumed_run_ends_with_the_same_bits() {
    let dir = temp_dir("resume");
    let (_, train_data, valid_data) = prepare(&dir);
    let straight_dir = dir.join("straight");
    let mut straight = Trainer::new(config()).unwrap();
    train::run(&mut straight, &train_data, Some(&valid_data), &quiet(&straight_dir)).unwrap();

    // A run of 40 steps stopped after its checkpoint at step 20, then resumed from the file.
    let resumed_dir = dir.join("resumed");
    std::fs::create_dir_all(&resumed_dir).unwrap();
    let mut stopped = Trainer::new(config()).unwrap();
    let t = stopped.config.train.clone();
    for step in 0..20 {
        stopped.train_step(&train_data.train_batch(t.seed, step, t.batch_size)).unwrap();
    }
    let path = resumed_dir.join("checkpoint.safetensors");
    stopped.to_checkpoint().save(&path).unwrap();
    drop(stopped);
    let mut resumed = Trainer::from_checkpoint(Checkpoint::load(&path).unwrap()).unwrap();
    assert_eq!(resumed.step_count(), 20);
    train::run(&mut resumed, &train_data, Some(&valid_data), &quiet(&resumed_dir)).unwrap();

    let expected = straight.model.params();
    let got = resumed.model.params();
    assert_eq!(expected.len(), got.len());
    for (a, b) in expected.iter().zip(&got) {
        assert_eq!(a.name, b.name);
        assert!(a.value == b.value, "{} differs after resuming", a.name);
    }
    assert_eq!(straight.model.buffers(), resumed.model.buffers());
}

#[test]
fn a_truncated_checkpoint_is_refused() {
    let dir = temp_dir("truncated");
    let trainer = Trainer::new(config()).unwrap();
    let path = dir.join("checkpoint.safetensors");
    trainer.to_checkpoint().save(&path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();
    assert!(Checkpoint::load(&path).is_err());
}

#[test]
fn a_nan_loss_stops_the_run_and_keeps_the_checkpoint() {
    let dir = temp_dir("nan");
    let (_, train_data, valid_data) = prepare(&dir);
    let mut trainer = Trainer::new(config()).unwrap();
    trainer.config.train.steps = 20;
    train::run(&mut trainer, &train_data, Some(&valid_data), &quiet(&dir)).unwrap();
    let saved = std::fs::read(dir.join("checkpoint.safetensors")).unwrap();
    for param in trainer.model.params_mut() {
        param.value.data_mut().iter_mut().for_each(|x| *x = f32::NAN);
    }
    trainer.config.train.steps = 40;
    let error = train::run(&mut trainer, &train_data, Some(&valid_data), &quiet(&dir)).unwrap_err();
    assert!(error.to_string().contains("NaN") && error.to_string().contains("checkpoint"), "{error}");
    assert_eq!(
        std::fs::read(dir.join("checkpoint.safetensors")).unwrap(),
        saved,
        "the good checkpoint was overwritten"
    );
}

#[test]
fn an_overflowing_gradient_stops_the_step_and_leaves_the_weights() {
    let mut trainer = Trainer::new(config()).unwrap();
    let (batch_size, seq_len) = (trainer.config.train.batch_size, trainer.config.model.seq_len);
    let inputs: Vec<u32> = (0..batch_size * seq_len).map(|i| (i % 7) as u32).collect();
    let batch = peerlm::data::Batch { targets: inputs.clone(), inputs, batch_size, seq_len };
    // One huge weight in the first feed-forward: the layer norms after it keep the loss finite, but the
    // backward overflows and the gradient norm is NaN. Unchecked, AdamW would write NaN into the weights,
    // and the next checkpoint would save them.
    for param in trainer.model.params_mut() {
        if param.name == "blocks.0.ffw.fc_in.weight" {
            param.value.data_mut()[0] = 1e30;
        }
    }
    let weights = |t: &Trainer| -> Vec<Vec<f32>> { t.model.params().iter().map(|p| p.value.data().to_vec()).collect() };
    let running_stats =
        |t: &Trainer| -> Vec<Vec<f32>> { t.model.buffers().iter().map(|(_, b)| b.data().to_vec()).collect() };
    let (weights_before, stats_before) = (weights(&trainer), running_stats(&trainer));
    assert!(!stats_before.is_empty(), "the PEER block should have query batch-norm statistics");
    let error = trainer.train_step(&batch).unwrap_err();
    // NaN here; an overflow elsewhere could give inf, and either must stop the step.
    assert!(error.to_string().contains("gradient norm is"), "{error}");
    assert!(weights_before == weights(&trainer), "a failed step changed the weights");
    // The forward ran in training mode and moved the running statistics; the failed step puts them back.
    assert!(stats_before == running_stats(&trainer), "a failed step changed the running statistics");
    assert_eq!(trainer.step_count(), 0);
}

/// A batch of `batch_size` windows of arbitrary tokens below the vocabulary.
fn synthetic_batch(batch_size: usize, seq_len: usize, seed: usize) -> Batch {
    let token = |i: usize| ((i * 31 + seed * 7) % VOCAB) as u32;
    let n = batch_size * seq_len;
    Batch { inputs: (0..n).map(token).collect(), targets: (1..=n).map(token).collect(), batch_size, seq_len }
}

#[test]
fn training_normalises_queries_by_the_batch_and_moves_the_running_statistics() {
    for per_head in [false, true] {
        let mut config = config();
        config.model.peer.query_bn_per_head = per_head;
        let (heads, key_dim) = (config.model.peer.keys.heads, config.model.peer.keys.key_dim);
        let mut trainer = Trainer::new(config.clone()).unwrap();
        let before = trainer.model.buffers();
        let width = if per_head { heads * key_dim } else { key_dim };
        assert!(before.iter().all(|(_, t)| t.numel() == width), "per_head {per_head}: {before:?}");
        let batch = synthetic_batch(4, config.model.seq_len, 1);

        // Evaluation reads the running statistics and leaves them alone; training normalises by the
        // batch's own, so the two losses differ on the same tokens (untrained running statistics are
        // mean 0, variance 1, far from the queries' batch statistics).
        let mut tape = Tape::no_grad();
        let (_, eval_loss) = trainer.model.loss(&mut tape, &batch.inputs, &batch.targets, 4, false);
        assert_eq!(trainer.model.buffers(), before, "per_head {per_head}: evaluation moved the statistics");
        let mut tape = Tape::no_grad();
        let (_, train_loss) = trainer.model.loss(&mut tape, &batch.inputs, &batch.targets, 4, true);
        assert_ne!(eval_loss, train_loss, "per_head {per_head}: training did not use batch statistics");
        assert_ne!(trainer.model.buffers(), before, "per_head {per_head}: training left the statistics");

        // Through the trainer: one step moves the running statistics of a fresh model.
        let mut fresh = Trainer::new(config).unwrap();
        fresh.train_step(&synthetic_batch(4, fresh.config.model.seq_len, 2)).unwrap();
        assert_ne!(fresh.model.buffers(), before, "per_head {per_head}: a training step left the statistics");
    }
}

#[test]
fn a_nan_stop_before_any_checkpoint_names_none() {
    let dir = temp_dir("nan-first");
    let (_, train_data, valid_data) = prepare(&dir);
    let run_dir = dir.join("run");
    let mut trainer = Trainer::new(config()).unwrap();
    for param in trainer.model.params_mut() {
        param.value.data_mut().iter_mut().for_each(|x| *x = f32::NAN);
    }
    let error = train::run(&mut trainer, &train_data, Some(&valid_data), &quiet(&run_dir)).unwrap_err();
    assert!(error.to_string().contains("no checkpoint was written yet"), "{error}");
    assert!(!error.to_string().contains("last good checkpoint"), "{error}");
}

#[test]
fn a_model_of_one_position_samples_past_its_context() {
    let mut config = config().model;
    config.seq_len = 1;
    let mut model = peerlm::model::Gpt::<f32>::new(&config, 1);
    let sample_config = SampleConfig { max_new_tokens: 5, temperature: 0.0, top_k: None, seed: 1, stop_token: None };
    assert_eq!(generate(&mut model, &[3, 4], &sample_config, |_| {}).len(), 5);
}

/// The step numbers of the training lines of `metrics.jsonl` in `dir`.
fn metric_steps(dir: &Path) -> Vec<u64> {
    let text = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    text.lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .filter(|v| v.get("loss").is_some())
        .map(|v| v["step"].as_u64().unwrap())
        .collect()
}

#[test]
fn a_run_stopped_by_its_flag_or_stop_at_checkpoints_and_resumes_without_repeating_metrics() {
    static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);
    let dir = temp_dir("stop");
    let (_, train_data, valid_data) = prepare(&dir);
    let run_dir = dir.join("run");
    let path = run_dir.join("checkpoint.safetensors");
    let mut trainer = Trainer::new(config()).unwrap();
    let at_step_25 =
        train::run(&mut trainer, &train_data, Some(&valid_data), &RunOptions { stop_at: Some(25), ..quiet(&run_dir) })
            .unwrap();
    assert_eq!((at_step_25.steps, at_step_25.interrupted), (25, false));
    let at_25 = std::fs::read(&path).unwrap();
    // Steps 26..=30 are trained and logged, then the process dies before its next checkpoint.
    train::run(&mut trainer, &train_data, Some(&valid_data), &RunOptions { stop_at: Some(30), ..quiet(&run_dir) })
        .unwrap();
    std::fs::write(&path, at_25).unwrap();

    let mut resumed = Trainer::from_checkpoint(Checkpoint::load(&path).unwrap()).unwrap();
    let interrupted = RunOptions { stop: Some(&STOP), ..quiet(&run_dir) };
    let summary = train::run(&mut resumed, &train_data, Some(&valid_data), &interrupted).unwrap();
    assert!(summary.interrupted && summary.steps == 25, "{summary:?}");
    // A sitting that takes no step still reports the run's last loss and its training time, from the metrics.
    assert!((summary.final_train_loss - at_step_25.final_train_loss).abs() < 1e-5, "{summary:?}");
    assert!(summary.train_seconds > 0.0 && summary.train_seconds <= at_step_25.train_seconds, "{summary:?}");
    assert_eq!(Trainer::from_checkpoint(Checkpoint::load(&path).unwrap()).unwrap().step_count(), 25);
    assert_eq!(metric_steps(&run_dir), (1..=25).collect::<Vec<_>>(), "each step once, none past the checkpoint");
}

#[test]
fn a_checkpoint_whose_config_outgrows_its_tensors_is_refused_before_building() {
    let dir = temp_dir("crafted");
    let path = dir.join("checkpoint.safetensors");
    let mut checkpoint = Trainer::new(config()).unwrap().to_checkpoint();
    let mut crafted = config();
    crafted.model.peer.num_experts = 65_535 * 65_535; // 2 × 65,535² × 32 floats: 1.1 TB of experts
    checkpoint.metadata.insert("config".into(), serde_json::to_string(&crafted).unwrap());
    checkpoint.save(&path).unwrap();
    let error = train::load_model(Checkpoint::load(&path).unwrap()).err().unwrap();
    assert!(error.to_string().contains("parameters, but the file holds only"), "{error}");
}
