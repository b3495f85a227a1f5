//! Gradient checks for causal multi-head attention, and checks of its masking: causality, and that
//! attending from the last T of S positions (a KV cache) equals the last T rows of full attention.

mod common;

use common::{check_gradients, tensor};
use peerlm::{ops, Tape, Tensor};
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
