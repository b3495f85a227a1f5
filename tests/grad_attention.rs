//! Gradient checks for causal multi-head attention (q, k, v apart, and packed side by side in one tensor),
//! and checks of its masking: causality, and that attending from the last T of S positions (a KV cache)
//! equals the last T rows of full attention. The op works in tiles of 32 queries, so some shapes here
//! span several tiles; its results must not depend on the thread count.

mod common;

use common::{check_gradients, tensor};
use peerlm::{ops, Float, Param, ParamKind, Rng, Tape, Tensor, Var};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn attention_gradients(batch in 1usize..3, t in 1usize..6, extra in 0usize..3, heads in 1usize..3,
                           head_dim in 1usize..5, seed in any::<u64>()) {
        let s = t + extra;
        let d = heads * head_dim;
        let q = tensor(&[batch, t, d], -1.5, 1.5, seed);
        let k = tensor(&[batch, s, d], -1.5, 1.5, seed ^ 1);
        let v = tensor(&[batch, s, d], -1.5, 1.5, seed ^ 2);
        check_gradients(&[q, k, v], |tp, x| ops::causal_attention(tp, &x[0], &x[1], &x[2], heads))?;
    }

    #[test]
    fn single_query_gradients(batch in 1usize..3, s in 1usize..6, heads in 1usize..3, head_dim in 1usize..5,
                              seed in any::<u64>()) {
        let d = heads * head_dim;
        let q = tensor(&[batch, 1, d], -1.5, 1.5, seed);
        let k = tensor(&[batch, s, d], -1.5, 1.5, seed ^ 1);
        let v = tensor(&[batch, s, d], -1.5, 1.5, seed ^ 2);
        check_gradients(&[q, k, v], |tp, x| ops::causal_attention(tp, &x[0], &x[1], &x[2], heads))?;
    }

    #[test]
    fn self_attention_with_one_input(batch in 1usize..3, t in 1usize..6, heads in 1usize..3, head_dim in 1usize..5,
                                     seed in any::<u64>()) {
        let x = tensor(&[batch, t, heads * head_dim], -1.5, 1.5, seed);
        check_gradients(&[x], |tp, x| ops::causal_attention(tp, &x[0], &x[0], &x[0], heads))?;
    }

    #[test]
    fn packed_self_attention_gradients(batch in 1usize..3, t in 1usize..6, heads in 1usize..3,
                                       head_dim in 1usize..5, seed in any::<u64>()) {
        let qkv = tensor(&[batch, t, 3 * heads * head_dim], -1.5, 1.5, seed);
        check_gradients(&[qkv], |tp, x| ops::causal_self_attention(tp, &x[0], heads))?;
    }

    #[test]
    fn packed_equals_split(batch in 1usize..3, t in 1usize..70, heads in 1usize..3, head_dim in 1usize..5,
                           seed in any::<u64>()) {
        let d = heads * head_dim;
        let qkv = tensor(&[batch, t, 3 * d], -1.5, 1.5, seed);
        let (packed, split) = (packed_forward_backward(&qkv, heads), split_forward_backward(&qkv, heads));
        prop_assert_eq!(packed, split);
    }

    #[test]
    fn later_keys_and_values_do_not_leak(t in 1usize..6, extra in 0usize..3, heads in 1usize..3, seed in any::<u64>()) {
        let s = t + extra;
        let d = heads * 2;
        let q = tensor(&[1, t, d], -1.5, 1.5, seed);
        let k = tensor(&[1, s, d], -1.5, 1.5, seed ^ 1);
        let v = tensor(&[1, s, d], -1.5, 1.5, seed ^ 2);
        let base = attend(&q, &k, &v, heads);
        for j in 0..s {
            // Change key and value at absolute position j: queries before j must not move, query at j must.
            let (mut k2, mut v2) = (k.clone(), v.clone());
            k2.data_mut()[j * d..(j + 1) * d].iter_mut().for_each(|x| *x += 0.7);
            v2.data_mut()[j * d..(j + 1) * d].iter_mut().for_each(|x| *x -= 1.3);
            let moved = attend(&q, &k2, &v2, heads);
            for i in 0..t {
                let row = |o: &Tensor<f64>| o.data()[i * d..(i + 1) * d].to_vec();
                if s - t + i < j {
                    prop_assert_eq!(row(&base), row(&moved));
                } else if s - t + i == j {
                    prop_assert_ne!(row(&base), row(&moved));
                }
            }
        }
    }

    #[test]
    fn cached_queries_equal_the_tail_of_full_attention(batch in 1usize..3, s in 1usize..7, t_frac in 0usize..7,
                                                       heads in 1usize..3, seed in any::<u64>()) {
        let t = 1 + t_frac % s;
        let d = heads * 3;
        let q_full = tensor(&[batch, s, d], -1.5, 1.5, seed);
        let k = tensor(&[batch, s, d], -1.5, 1.5, seed ^ 1);
        let v = tensor(&[batch, s, d], -1.5, 1.5, seed ^ 2);
        let full = attend(&q_full, &k, &v, heads);
        let tail = |x: &Tensor<f64>| -> Vec<f64> {
            x.data().chunks(s * d).flat_map(|b| b[(s - t) * d..].to_vec()).collect()
        };
        let q_tail = Tensor::from_vec(&[batch, t, d], tail(&q_full));
        let cached = attend(&q_tail, &k, &v, heads);
        for (a, b) in tail(&full).iter().zip(cached.data()) {
            prop_assert!((a - b).abs() < 1e-12);
        }
    }
}

fn attend(q: &Tensor<f64>, k: &Tensor<f64>, v: &Tensor<f64>, heads: usize) -> Tensor<f64> {
    let mut tape = Tape::no_grad();
    let (q, k, v) = (tape.constant(q.clone()), tape.constant(k.clone()), tape.constant(v.clone()));
    ops::causal_attention(&mut tape, &q, &k, &v, heads).value().clone()
}

#[test]
fn one_key_returns_its_value() {
    let v = Tensor::from_vec(&[1, 1, 4], vec![1.0, -2.0, 3.0, 0.5]);
    let q = Tensor::from_vec(&[1, 1, 4], vec![9.0, 9.0, 9.0, 9.0]);
    let out = attend(&q, &q, &v, 2);
    assert_eq!(out.data(), v.data());
}

/// Across several 32-query tiles, with and without a cache of earlier positions.
#[test]
fn gradients_across_tiles() {
    for (t, s) in [(37, 37), (33, 40), (65, 66)] {
        let q = tensor(&[1, t, 2], -1.5, 1.5, 11);
        let k = tensor(&[1, s, 2], -1.5, 1.5, 12);
        let v = tensor(&[1, s, 2], -1.5, 1.5, 13);
        check_gradients(&[q, k, v], |tp, x| ops::causal_attention(tp, &x[0], &x[1], &x[2], 1))
            .unwrap_or_else(|e| panic!("t = {t}, s = {s}: {e}"));
    }
}

/// Output and gradient of `loss = Σ w ⊙ attention(qkv)` through the packed op, bit for bit.
fn packed_forward_backward(qkv: &Tensor<f64>, heads: usize) -> (Vec<u64>, Vec<u64>) {
    forward_backward(qkv, |tape, x| ops::causal_self_attention(tape, x, heads))
}

/// The same through three narrowed copies and the three-input op.
fn split_forward_backward(qkv: &Tensor<f64>, heads: usize) -> (Vec<u64>, Vec<u64>) {
    forward_backward(qkv, |tape, x| {
        let d = x.shape()[2] / 3;
        let parts = ops::split(tape, x, 2, &[d, d, d]);
        ops::causal_attention(tape, &parts[0], &parts[1], &parts[2], heads)
    })
}

fn forward_backward<T: Float>(x: &Tensor<T>, attend: impl Fn(&mut Tape<T>, &Var<T>) -> Var<T>) -> (Vec<u64>, Vec<u64>) {
    let param = Param::new("x", ParamKind::Weight, x.clone());
    let mut tape = Tape::new();
    let xv = tape.param(&param);
    let out = attend(&mut tape, &xv);
    let weights = tape.constant(Tensor::randn(out.shape(), 1.0, &mut Rng::new(3)));
    let weighted = ops::mul(&mut tape, &out, &weights);
    let loss = ops::sum(&mut tape, &weighted);
    tape.backward(&loss);
    let bits = |t: &Tensor<T>| t.data().iter().map(|v| v.to_f64().to_bits()).collect();
    (bits(out.value()), bits(&tape.grad(&param).unwrap().to_dense()))
}

#[test]
fn one_and_two_threads_give_identical_bits() {
    let qkv = Tensor::<f32>::randn(&[3, 100, 3 * 32], 1.0, &mut Rng::new(5));
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| {
            let packed = forward_backward(&qkv, |tape, x| ops::causal_self_attention(tape, x, 4));
            let split = forward_backward(&qkv, |tape, x| {
                let parts = ops::split(tape, x, 2, &[32, 32, 32]);
                ops::causal_attention(tape, &parts[0], &parts[1], &parts[2], 4)
            });
            (packed, split)
        })
    };
    assert!(run(1) == run(2), "attention differs between 1 and 2 threads");
}
