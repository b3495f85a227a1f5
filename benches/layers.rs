//! Forward + backward throughput and peak memory of the PEER layer and the dense FFW baseline.
//!
//! `cargo bench --bench layers` runs every configuration in its own child process (`common/harness.rs`), so
//! each reported peak RSS (VmHWM from /proc/self/status) belongs to that configuration alone. Each child
//! builds the layer, runs one warm-up step and then `ITERS` timed steps of forward, `Σ y` loss and backward
//! (input gradient included, as inside a model), and prints the median. `PEERLM_BENCH_ITERS` overrides the
//! step count; `cargo bench --bench layers -- peer_512` runs only the configurations whose name contains
//! `peer_512`.

use std::time::Instant;

use peerlm::nn::{DenseFfw, DenseFfwConfig, FfwOut, Gate, Peer, PeerConfig, ProductKeyConfig};
use peerlm::ops::{self, ExpertActivation};
use peerlm::{Param, ParamKind, Rng, Tape, Tensor, Var};

#[path = "common/harness.rs"]
mod harness;

const D_MODEL: usize = 256;

/// (name, PEER sub-keys n (N = n²) or 0 for the dense FFW, tokens per batch).
const CONFIGS: [(&str, usize, usize); 6] = [
    ("ffw_1024tok", 0, 1024),
    ("ffw_4096tok", 0, 4096),
    ("peer_512sq_1024tok", 512, 1024),
    ("peer_512sq_4096tok", 512, 4096),
    ("peer_1024sq_1024tok", 1024, 1024),
    ("peer_1024sq_4096tok", 1024, 4096),
];

type Step = Box<dyn FnMut(&mut Tape<f32>, &Var<f32>) -> FfwOut<f32>>;

fn main() {
    let header = format!("{:<22} {:>10} {:>14} {:>12}", "config", "median s", "tokens/s", "peak RSS MB");
    harness::run(CONFIGS.iter().map(|(name, _, _)| *name), &header, run_one);
}

fn build(sub_keys: usize, rng: &mut Rng) -> Step {
    if sub_keys == 0 {
        let mut ffw = DenseFfw::new(&DenseFfwConfig { d_model: D_MODEL, d_ff: 4 * D_MODEL }, "ffw", rng);
        return Box::new(move |tape, x| ffw.forward(tape, x, true));
    }
    let config = PeerConfig {
        keys: ProductKeyConfig { d_model: D_MODEL, heads: 8, top_k: 16, key_dim: 256, query_batch_norm: true },
        num_experts: sub_keys * sub_keys,
        query_bn_per_head: false,
        gate: Gate::Softmax,
        activation: ExpertActivation::Gelu,
    };
    let mut peer = Peer::new(&config, "peer", rng);
    Box::new(move |tape, x| peer.forward(tape, x, true))
}

fn run_one(name: &str) {
    let &(_, sub_keys, tokens) = CONFIGS.iter().find(|(n, _, _)| *n == name).expect("known config");
    let mut rng = Rng::new(1);
    let x = Param::new("x", ParamKind::Weight, Tensor::<f32>::randn(&[tokens, D_MODEL], 1.0, &mut rng));
    let mut step = build(sub_keys, &mut rng);
    let iters = harness::iterations(if sub_keys == 0 { 20 } else { 5 });
    let mut tape = Tape::new();
    let mut times = Vec::with_capacity(iters);
    for i in 0..=iters {
        let start = Instant::now();
        let xv = tape.param(&x);
        let out = step(&mut tape, &xv);
        let loss = ops::sum(&mut tape, &out.y);
        drop((xv, out));
        tape.backward(&loss);
        tape.clear();
        if i > 0 {
            times.push(start.elapsed().as_secs_f64()); // step 0 is the warm-up
        }
    }
    let median = harness::median(times);
    println!("{name:<22} {median:>10.3} {:>14.0} {:>12.0}", tokens as f64 / median, harness::peak_rss_mb());
}
