//! Training throughput of the tiny GPT of the *language model* issue, dense and with PEER in block 2:
//! vocab 4096, d 256, 4 blocks, 4 heads, seq 256, batch 8 (2048 tokens a step), tied embeddings, AdamW;
//! PEER N = 512², h = 8, k = 16, key dim 256. The same shapes as `shared/reference/gpt_torch.py`.
//!
//! `cargo bench --bench gpt` runs each configuration in its own child process (`common/harness.rs`), so
//! each peak RSS (VmHWM) belongs to that configuration alone. A step is forward, backward, clipping and the
//! AdamW update on random tokens; the median of `PEERLM_BENCH_ITERS` (default 7) steps after two warm-up
//! steps is reported.
//!
//! With `PEERLM_BENCH_PROFILE=1` each configuration also prints where its timed steps went, op by op
//! (`peerlm::op_times`): milliseconds per step of each op's forward and backward and of the update.

use std::time::Instant;

use peerlm::data::Batch;
use peerlm::model::FfwKind;
use peerlm::op_times::OpTimes;
use peerlm::train::{RunConfig, Trainer};
use peerlm::Rng;

#[path = "common/harness.rs"]
mod harness;

const CONFIGS: [&str; 2] = ["dense", "peer_512sq"];

fn main() {
    let header =
        format!("{:<12} {:>10} {:>10} {:>12} {:>12}", "config", "params M", "median s", "tokens/s", "peak RSS MB");
    harness::run(CONFIGS, &header, run_one);
}

fn config(name: &str) -> RunConfig {
    let mut config = RunConfig::default();
    let m = &mut config.model;
    (m.vocab_size, m.d_model, m.n_layers, m.n_heads, m.seq_len) = (4096, 256, 4, 4, 256);
    m.dense.d_ff = 1024;
    if name.starts_with("peer") {
        m.ffw = FfwKind::Peer;
        m.ffw_blocks = Some(vec![2]);
        (m.peer.num_experts, m.peer.keys.heads, m.peer.keys.top_k, m.peer.keys.key_dim) = (512 * 512, 8, 16, 256);
    }
    m.propagate_d_model();
    config.train.batch_size = 8;
    config
}

fn run_one(name: &str) {
    let config = config(name);
    let (batch_size, seq_len, vocab) = (config.train.batch_size, config.model.seq_len, config.model.vocab_size);
    let mut trainer = Trainer::new(config).expect("valid config");
    let mut rng = Rng::new(0);
    let mut tokens = || (0..batch_size * seq_len).map(|_| rng.below(vocab as u64) as u32).collect::<Vec<u32>>();
    let iters = harness::iterations(7);
    let profile = std::env::var_os("PEERLM_BENCH_PROFILE").is_some();
    let mut times = Vec::new();
    for i in 0..iters + 2 {
        let batch = Batch { inputs: tokens(), targets: tokens(), batch_size, seq_len };
        if profile && i == 2 {
            trainer.time_ops();
        }
        let start = Instant::now();
        trainer.train_step(&batch).expect("finite loss");
        if i >= 2 {
            times.push(start.elapsed().as_secs_f64());
        }
    }
    if let Some(op_times) = trainer.op_times() {
        print_profile(op_times, &times);
    }
    let median = harness::median(times);
    println!(
        "{name:<12} {:>10.1} {median:>10.3} {:>12.0} {:>12.0}",
        trainer.model.num_params() as f64 / 1e6,
        (batch_size * seq_len) as f64 / median,
        harness::peak_rss_mb()
    );
}

/// Milliseconds per timed step of each (pass, op), largest first, with its share of the steps' wall-clock
/// time; what no op or update phase accounts for (recording the tape, the router's id bookkeeping, ...) last.
fn print_profile(op_times: &OpTimes, step_times_s: &[f64]) {
    let (steps, measured_s) = (step_times_s.len() as f64, step_times_s.iter().sum::<f64>());
    let per_step_ms = |s: f64| s * 1e3 / steps;
    for (pass, name, time, calls) in op_times.largest_first() {
        let s = time.as_secs_f64();
        println!(
            "  {:<9} {name:<24} {:>8.1} ms {:>6.1}% {:>5} calls",
            format!("{pass:?}"),
            per_step_ms(s),
            100.0 * s / measured_s,
            calls
        );
    }
    let rest = measured_s - op_times.total().as_secs_f64();
    println!("  {:<34} {:>8.1} ms {:>6.1}%", "not in any op", per_step_ms(rest), 100.0 * rest / measured_s);
}
