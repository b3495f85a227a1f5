//! Gradient checks for the elementwise binary ops, with and without broadcasting.

mod common;

use common::{check_gradients, shape, tensor};
use peerlm::ops;
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn add_sub_mul_div_same_shape(dims in shape(3, 4), seed in any::<u64>()) {
        let a = tensor(&dims, -2.0, 2.0, seed);
        let b = tensor(&dims, 0.5, 2.0, seed ^ 1); // away from 0 for div
        check_gradients(&[a, b], |t, x| {
            let s = ops::add(t, &x[0], &x[1]);
            let d = ops::sub(t, &s, &x[1]);
            let m = ops::mul(t, &d, &x[1]);
            ops::div(t, &m, &x[1])
        })?;
    }

    #[test]
    fn trailing_operand_broadcasts(lead in shape(2, 4), tail in shape(1, 5), seed in any::<u64>()) {
        let full: Vec<usize> = lead.iter().chain(&tail).copied().collect();
        let a = tensor(&full, -2.0, 2.0, seed);
        let b = tensor(&tail, 0.5, 2.0, seed ^ 2);
        check_gradients(&[a.clone(), b.clone()], |t, x| ops::mul(t, &x[0], &x[1]))?;
        check_gradients(&[a.clone(), b.clone()], |t, x| ops::div(t, &x[0], &x[1]))?;
        check_gradients(&[a, b], |t, x| ops::sub(t, &x[0], &x[1]))?;
    }

    #[test]
    fn input_used_twice(dims in shape(2, 5), seed in any::<u64>()) {
        let a = tensor(&dims, -2.0, 2.0, seed);
        check_gradients(&[a], |t, x| {
            let sq = ops::mul(t, &x[0], &x[0]);
            ops::add(t, &sq, &x[0])
        })?;
    }
}
