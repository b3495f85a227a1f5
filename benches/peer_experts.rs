//! Throughput of the fused PEER expert op (`ops::peer_experts`), forward and forward+backward, at the
//! paper's shape: d = 256, m = 8 heads × 16 = 128 experts per token, N = 512² or 1024² experts (f32
//! tables of 256 MiB or 1 GiB each, for u and for v), random expert ids. Prints the median of a few
//! runs and tokens per second. A plain `main` (harness = false) rather than criterion: one case at
//! N = 1024² takes seconds, and the tables take gigabytes, so each case is set up once and timed a few
//! times. Run with `cargo bench --bench peer_experts`.

use std::time::Instant;

use peerlm::ops::{self, ExpertActivation};
use peerlm::{Grad, Op, Param, ParamKind, Rng, Tape, Tensor};

const D: usize = 256;
const EXPERTS_PER_TOKEN: usize = 8 * 16;
const RUNS: usize = 5;

/// `loss = Σ out`: a scalar to back-propagate from.
struct Sum;

impl Op<f32> for Sum {
    fn name(&self) -> &'static str {
        "sum"
    }
    fn forward(&mut self, x: &[&Tensor<f32>]) -> Tensor<f32> {
        Tensor::scalar(x[0].data().iter().sum())
    }
    fn backward(&self, x: &[&Tensor<f32>], _: &Tensor<f32>, g: &Tensor<f32>, _: &[bool]) -> Vec<Option<Grad<f32>>> {
        vec![Some(Grad::Dense(Tensor::full(x[0].shape(), g.item())))]
    }
}

struct Case<'a> {
    x: Param<f32>,
    u: &'a Param<f32>,
    v: &'a Param<f32>,
    gates: Param<f32>,
    ids: Vec<u32>,
}

impl Case<'_> {
    fn forward(&self, tape: &mut Tape<f32>) -> peerlm::Var<f32> {
        let (x, u, v, gates) = (tape.param(&self.x), tape.param(self.u), tape.param(self.v), tape.param(&self.gates));
        ops::peer_experts(tape, &x, &u, &v, &gates, &self.ids, ExpertActivation::Gelu)
    }

    fn forward_only(&self) {
        let mut tape = Tape::no_grad();
        std::hint::black_box(self.forward(&mut tape));
    }

    fn forward_backward(&self) {
        let mut tape = Tape::new();
        let out = self.forward(&mut tape);
        let loss = tape.apply(Sum, &[&out]);
        drop(out);
        tape.backward(&loss);
        std::hint::black_box(tape.grad(self.u));
    }
}

/// Median wall time in seconds of `RUNS` calls, after one warm-up call.
fn median_seconds(f: impl Fn()) -> f64 {
    f();
    let mut times: Vec<f64> = (0..RUNS)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[RUNS / 2]
}

fn main() {
    let threads = rayon::current_num_threads();
    println!("peer_experts, f32, d = {D}, m = {EXPERTS_PER_TOKEN}, GELU, {threads} threads, median of {RUNS}");
    let mut rng = Rng::new(1);
    for side in [512usize, 1024] {
        let n = side * side;
        let table = |rng: &mut Rng| Param::new("t", ParamKind::Table, Tensor::uniform(&[n, D], -0.05, 0.05, rng));
        let (u, v) = (table(&mut rng), table(&mut rng));
        for tokens in [1024usize, 4096] {
            let case = Case {
                x: Param::new("x", ParamKind::Weight, Tensor::randn(&[tokens, D], 1.0, &mut rng)),
                u: &u,
                v: &v,
                gates: Param::new(
                    "g",
                    ParamKind::Weight,
                    Tensor::uniform(&[tokens, EXPERTS_PER_TOKEN], 0., 0.02, &mut rng),
                ),
                ids: (0..tokens * EXPERTS_PER_TOKEN).map(|_| rng.below(n as u64) as u32).collect(),
            };
            let fwd = median_seconds(|| case.forward_only());
            let both = median_seconds(|| case.forward_backward());
            println!(
                "N = {side}² = {n:>7}, T = {tokens:>4}: forward {:>7.1} ms ({:>7.0} tokens/s), \
                 forward+backward {:>7.1} ms ({:>7.0} tokens/s)",
                fwd * 1e3,
                tokens as f64 / fwd,
                both * 1e3,
                tokens as f64 / both
            );
        }
    }
}
