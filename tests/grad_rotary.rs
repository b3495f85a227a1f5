//! Rotary position embedding: a gradient check, and the properties RoPE is used for: it only turns
//! vectors (norms are kept, position 0 is the identity), and after it a query–key score depends on the
//! two positions only through their difference.

mod common;

use common::{check_gradients, tensor};
use peerlm::{ops, Param, ParamKind, Tape, Tensor};
use proptest::prelude::*;

/// RoPE of `x` (`[batch, seq, d]`) at `first_position`, evaluated without recording.
fn rotated(x: &Tensor<f64>, heads: usize, first_position: usize) -> Tensor<f64> {
    let mut tape = Tape::no_grad();
    let v = tape.param(&Param::new("x", ParamKind::Weight, x.clone()));
    ops::rotary(&mut tape, &v, heads, first_position).value().clone()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn rotary_gradients(batch in 1usize..3, seq in 1usize..6, heads in 1usize..3, pairs in 1usize..4,
                        first in 0usize..50, seed in any::<u64>()) {
        let x = tensor(&[batch, seq, heads * 2 * pairs], -1.5, 1.5, seed);
        check_gradients(std::slice::from_ref(&x), |t, v| ops::rotary(t, &v[0], heads, first))?;
        // Used twice: rotary(x) ⊙ x.
        check_gradients(&[x], |t, v| {
            let turned = ops::rotary(t, &v[0], heads, first);
            ops::mul(t, &turned, &v[0])
        })?;
    }

    #[test]
    fn turns_keep_norms_and_position_zero_is_the_identity(seq in 1usize..6, pairs in 1usize..5, first in 0usize..1000,
                                                          seed in any::<u64>()) {
        let d = 2 * pairs;
        let x = tensor(&[1, seq, d], -2.0, 2.0, seed);
        let y = rotated(&x, 1, first);
        for (a, b) in x.data().chunks(d).zip(y.data().chunks(d)) {
            prop_assert!((dot(a, a) - dot(b, b)).abs() < 1e-12 * (1.0 + dot(a, a)));
        }
        let at_zero = tensor(&[1, 1, d], -2.0, 2.0, seed);
        let unturned = rotated(&at_zero, 1, 0);
        prop_assert_eq!(unturned.data(), at_zero.data());
    }

    #[test]
    fn scores_depend_on_the_position_difference_only(heads in 1usize..3, pairs in 1usize..5, m in 0usize..200,
                                                      n in 0usize..200, shift in 0usize..500, seed in any::<u64>()) {
        let d = heads * 2 * pairs;
        let (q, k) = (tensor(&[1, 1, d], -1.0, 1.0, seed), tensor(&[1, 1, d], -1.0, 1.0, seed ^ 1));
        let width = 2 * pairs;
        for h in 0..heads {
            let head = h * width..(h + 1) * width;
            let score = |qp, kp| dot(&rotated(&q, heads, qp).data()[head.clone()], &rotated(&k, heads, kp).data()[head.clone()]);
            let (near, far) = (score(m, n), score(m + shift, n + shift));
            prop_assert!((near - far).abs() < 1e-9, "head {}: {} at ({}, {}) vs {} shifted by {}", h, near, m, n, far, shift);
        }
    }
}

#[test]
fn the_first_pair_turns_by_one_radian_per_position() {
    // θ_0 = base^0 = 1: position 3 turns (1, 0) to (cos 3, sin 3). The last pair of a 4-wide head turns
    // by base^(-1/2) = 0.01 radians per position.
    let x = Tensor::from_vec(
        &[1, 4, 4],
        [[0.0, 0.0, 0.0, 0.0]; 3].concat().into_iter().chain([1.0, 0.0, 1.0, 0.0]).collect(),
    );
    let y = rotated(&x, 1, 0);
    let last = &y.data()[12..];
    let want = [3f64.cos(), 3f64.sin(), 0.03f64.cos(), 0.03f64.sin()];
    for (a, b) in last.iter().zip(want) {
        assert!((a - b).abs() < 1e-15, "{last:?} vs {want:?}");
    }
}
