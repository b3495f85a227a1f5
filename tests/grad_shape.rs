//! Gradient checks for reshape, transpose, concat, split and narrow, along every axis of rank-3 tensors.

mod common;

use common::{check_gradients, shape, tensor};
use peerlm::{ops, Tape};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn reshape_then_scale(dims in shape(3, 4), seed in any::<u64>()) {
        let x = tensor(&dims, -1.0, 1.0, seed);
        let w = tensor(&[dims[0] * dims[1], dims[2]], -1.0, 1.0, seed ^ 1);
        check_gradients(&[x, w], |t, x| {
            let flat = ops::reshape(t, &x[0], &[dims[0] * dims[1], dims[2]]);
            ops::mul(t, &flat, &x[1])
        })?;
    }

    #[test]
    fn transpose_each_pair(dims in shape(3, 4), pair in 0usize..3, seed in any::<u64>()) {
        let (a1, a2) = [(0, 1), (0, 2), (1, 2)][pair];
        let x = tensor(&dims, -1.0, 1.0, seed);
        check_gradients(&[x], |t, x| ops::transpose(t, &x[0], a1, a2))?;
    }

    #[test]
    fn concat_along_each_axis(dims in shape(3, 4), extra in 1usize..4, axis in 0usize..3, seed in any::<u64>()) {
        let mut other = dims.clone();
        other[axis] = extra;
        let a = tensor(&dims, -1.0, 1.0, seed);
        let b = tensor(&other, -1.0, 1.0, seed ^ 1);
        check_gradients(&[a, b], |t, x| ops::concat(t, &[&x[0], &x[1], &x[0]], axis))?;
    }

    #[test]
    fn split_and_narrow_along_each_axis(dims in shape(3, 5), axis in 0usize..3, cut in 0usize..5, seed in any::<u64>()) {
        let len = dims[axis];
        let first = cut % (len + 1);
        let x = tensor(&dims, -1.0, 1.0, seed);
        check_gradients(std::slice::from_ref(&x), |t, x| {
            let pieces = ops::split(t, &x[0], axis, &[first, len - first]);
            // Put the pieces back in the other order so that a split that ignored `first` would be caught.
            ops::concat(t, &[&pieces[1], &pieces[0]], axis)
        })?;
        let start = cut % len;
        check_gradients(&[x], |t, x| ops::narrow(t, &x[0], axis, start, len - start))?;
    }
}

#[test]
fn transpose_moves_elements() {
    let mut tape = Tape::<f64>::no_grad();
    let x = tape.constant(peerlm::Tensor::from_vec(&[2, 3], vec![1., 2., 3., 4., 5., 6.]));
    let y = ops::transpose(&mut tape, &x, 0, 1);
    assert_eq!(y.shape(), &[3, 2]);
    assert_eq!(y.value().data(), &[1., 4., 2., 5., 3., 6.]);
    let r = ops::reshape(&mut tape, &x, &[3, 2]);
    assert!(r.value().shares_buffer(x.value()));
}

#[test]
fn transpose_of_an_axis_with_itself_is_the_identity() {
    let x = tensor(&[2, 3, 4], -1.0, 1.0, 5);
    let mut tape = Tape::<f64>::no_grad();
    let xv = tape.constant(x.clone());
    for axis in 0..3 {
        let y = ops::transpose(&mut tape, &xv, axis, axis);
        assert_eq!(y.shape(), x.shape());
        assert_eq!(y.value().data(), x.data());
    }
    check_gradients(&[x], |t, x| ops::transpose(t, &x[0], 1, 1)).unwrap();
}
