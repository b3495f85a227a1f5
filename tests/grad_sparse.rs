//! Gradient checks (f64 central differences) for the sparse retrieval ops: embedding, weighted gather,
//! top-k, product-key top-k, batch norm and the fused PEER experts. Row-sparse table gradients are
//! compared through `Grad::to_dense`, so a wrong row id fails just like a wrong value.

mod common;

use common::{check_gradients, tensor};
use peerlm::ops::{self, BatchNormStats, ExpertActivation};
use peerlm::Rng;
use proptest::prelude::*;

/// `len` ids below `n`, with repeats likely when `len` is large against `n`.
fn random_ids(len: usize, n: usize, seed: u64) -> Vec<u32> {
    let mut rng = Rng::new(seed);
    (0..len).map(|_| rng.below(n as u64) as u32).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn embedding_grad(n in 1usize..6, d in 1usize..5, len in 1usize..9, seed in any::<u64>()) {
        let table = tensor(&[n, d], -1.0, 1.0, seed);
        let ids = random_ids(len, n, seed ^ 7);
        check_gradients(&[table], |t, x| ops::embedding(t, &x[0], &ids))?;
    }

    #[test]
    fn weighted_gather_grad(n in 1usize..6, d in 1usize..5, tokens in 1usize..5, k in 1usize..4, seed in any::<u64>()) {
        let table = tensor(&[n, d], -1.0, 1.0, seed);
        let weights = tensor(&[tokens, k], -1.0, 1.0, seed ^ 1);
        let ids = random_ids(tokens * k, n, seed ^ 7);
        check_gradients(&[table, weights], |t, x| ops::weighted_gather(t, &x[0], &ids, &x[1]))?;
    }

    #[test]
    fn topk_grad(rows in 1usize..4, n in 1usize..9, k_frac in 0.0f64..1.0, seed in any::<u64>()) {
        let k = 1 + (k_frac * n as f64) as usize % n;
        let x = tensor(&[rows, n], -1.0, 1.0, seed);
        check_gradients(&[x], |t, x| ops::topk(t, &x[0], k).0)?;
    }

    #[test]
    fn gather_last_grad_with_repeated_indices(rows in 1usize..4, n in 1usize..6, k in 1usize..6, seed in any::<u64>()) {
        let x = tensor(&[rows, n], -1.0, 1.0, seed);
        let indices = random_ids(rows * k, n, seed ^ 3);
        check_gradients(&[x], |t, x| ops::gather_last(t, &x[0], &indices, k))?;
    }

    #[test]
    fn product_key_topk_grad(
        rows in 1usize..5, n in 2usize..7, dh in 1usize..5, k_frac in 0.0f64..1.0, seed in any::<u64>()
    ) {
        let k = 1 + (k_frac * n as f64) as usize % n;
        let query = tensor(&[rows, 2 * dh], -1.0, 1.0, seed);
        let keys1 = tensor(&[n, dh], -1.0, 1.0, seed ^ 1);
        let keys2 = tensor(&[n, dh], -1.0, 1.0, seed ^ 2);
        check_gradients(&[query, keys1, keys2], |t, x| ops::product_key_topk(t, &x[0], &x[1], &x[2], k).0)?;
    }

    #[test]
    fn batch_norm_training_grad(rows in 2usize..7, c in 1usize..5, seed in any::<u64>()) {
        let x = tensor(&[rows, c], -2.0, 2.0, seed);
        let gain = tensor(&[c], 0.5, 1.5, seed ^ 1);
        let bias = tensor(&[c], -1.0, 1.0, seed ^ 2);
        check_gradients(&[x, gain, bias], |t, v| {
            // A fresh running state per evaluation: the check perturbs inputs and re-runs the forward.
            let mut stats = BatchNormStats::new(c, 0.1);
            ops::batch_norm(t, &v[0], &v[1], &v[2], &mut stats, true, 1e-5)
        })?;
    }

    #[test]
    fn batch_norm_eval_grad(rows in 1usize..6, c in 1usize..5, seed in any::<u64>()) {
        let x = tensor(&[rows, c], -2.0, 2.0, seed);
        let gain = tensor(&[c], 0.5, 1.5, seed ^ 1);
        let bias = tensor(&[c], -1.0, 1.0, seed ^ 2);
        let running = BatchNormStats {
            mean: tensor(&[c], -1.0, 1.0, seed ^ 3).into_vec(),
            var: tensor(&[c], 0.5, 2.0, seed ^ 4).into_vec(),
            momentum: 0.1,
        };
        check_gradients(&[x, gain, bias], |t, v| {
            let mut stats = running.clone();
            ops::batch_norm(t, &v[0], &v[1], &v[2], &mut stats, false, 1e-5)
        })?;
    }

    #[test]
    fn peer_experts_grad(
        tokens in 1usize..5, n in 1usize..7, d in 1usize..20, m in 1usize..5, gelu in any::<bool>(), seed in any::<u64>()
    ) {
        let act = if gelu { ExpertActivation::Gelu } else { ExpertActivation::Relu };
        let x = tensor(&[tokens, d], -1.0, 1.0, seed);
        let u = tensor(&[n, d], -1.0, 1.0, seed ^ 1);
        let v = tensor(&[n, d], -1.0, 1.0, seed ^ 2);
        let gates = tensor(&[tokens, m], 0.0, 1.0, seed ^ 3);
        let ids = random_ids(tokens * m, n, seed ^ 7);
        check_gradients(&[x, u, v, gates], |t, w| ops::peer_experts(t, &w[0], &w[1], &w[2], &w[3], &ids, act))?;
    }
}

#[test]
#[should_panic(expected = "embedding: id 4 is out of range for a table of 4 rows")]
fn embedding_rejects_out_of_range_id() {
    let mut tape = peerlm::Tape::<f64>::new();
    let table = tape.constant(peerlm::Tensor::zeros(&[4, 2]));
    ops::embedding(&mut tape, &table, &[0, 4]);
}

#[test]
#[should_panic(expected = "peer_experts: expert id 9 is out of range for 3 experts")]
fn peer_experts_rejects_out_of_range_id() {
    let mut tape = peerlm::Tape::<f64>::new();
    let x = tape.constant(peerlm::Tensor::zeros(&[1, 2]));
    let table = tape.constant(peerlm::Tensor::zeros(&[3, 2]));
    let gates = tape.constant(peerlm::Tensor::zeros(&[1, 2]));
    ops::peer_experts(&mut tape, &x, &table, &table, &gates, &[0, 9], ExpertActivation::Relu);
}
