//! Gradient checks for matmul (with leading axes), linear (matmul with a bias, in one op) and bmm (all four
//! transpose combinations).

mod common;

use common::{check_gradients, shape, tensor};
use peerlm::ops;
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn matmul_with_leading_axes(lead in shape(2, 3), m in 1usize..5, k in 1usize..6, n in 1usize..6, seed in any::<u64>()) {
        let a_shape = [lead[0], lead[1], m, k];
        let a = tensor(&a_shape, -1.0, 1.0, seed);
        let b = tensor(&[k, n], -1.0, 1.0, seed ^ 1);
        check_gradients(&[a, b], |t, x| ops::matmul(t, &x[0], &x[1]))?;
    }

    #[test]
    fn linear_with_leading_axes(lead in shape(1, 3), m in 1usize..5, k in 1usize..6, n in 1usize..6, seed in any::<u64>()) {
        let x = tensor(&[lead[0], m, k], -1.0, 1.0, seed);
        let w = tensor(&[k, n], -1.0, 1.0, seed ^ 1);
        let b = tensor(&[n], -1.0, 1.0, seed ^ 2);
        check_gradients(&[x, w, b], |t, x| ops::linear(t, &x[0], &x[1], &x[2]))?;
    }

    #[test]
    fn matmul_of_an_input_with_itself(n in 1usize..6, seed in any::<u64>()) {
        let x = tensor(&[n, n], -1.0, 1.0, seed);
        check_gradients(&[x], |t, x| ops::matmul(t, &x[0], &x[0]))?;
    }

    #[test]
    fn bmm_all_transposes(batch in 1usize..4, m in 1usize..5, k in 1usize..5, n in 1usize..5,
                          trans_a in any::<bool>(), trans_b in any::<bool>(), seed in any::<u64>()) {
        let a_shape = if trans_a { [batch, k, m] } else { [batch, m, k] };
        let b_shape = if trans_b { [batch, n, k] } else { [batch, k, n] };
        let a = tensor(&a_shape, -1.0, 1.0, seed);
        let b = tensor(&b_shape, -1.0, 1.0, seed ^ 1);
        check_gradients(&[a, b], |t, x| ops::bmm(t, &x[0], &x[1], trans_a, trans_b))?;
    }

    #[test]
    fn bmm_of_an_input_with_its_transpose(batch in 1usize..3, m in 1usize..5, k in 1usize..5, seed in any::<u64>()) {
        // x·xᵀ: the same input on both sides, read transposed on one.
        let x = tensor(&[batch, m, k], -1.0, 1.0, seed);
        check_gradients(&[x], |t, x| ops::bmm(t, &x[0], &x[0], false, true))?;
    }
}

#[test]
fn bmm_forward_matches_matmul_per_entry() {
    use peerlm::{Tape, Tensor};
    let a = tensor(&[3, 4, 5], -1.0, 1.0, 1);
    let b = tensor(&[3, 5, 2], -1.0, 1.0, 2);
    let mut tape = Tape::<f64>::no_grad();
    let (av, bv) = (tape.constant(a.clone()), tape.constant(b.clone()));
    let batched = ops::bmm(&mut tape, &av, &bv, false, false);
    for i in 0..3 {
        let ai = tape.constant(Tensor::from_vec(&[4, 5], a.data()[i * 20..(i + 1) * 20].to_vec()));
        let bi = tape.constant(Tensor::from_vec(&[5, 2], b.data()[i * 10..(i + 1) * 10].to_vec()));
        let one = ops::matmul(&mut tape, &ai, &bi);
        assert_eq!(one.value().data(), &batched.value().data()[i * 8..(i + 1) * 8]);
    }
}

#[test]
fn matmul_over_an_empty_inner_axis_is_zero_with_empty_gradients() {
    use peerlm::{Param, ParamKind, Tape, Tensor};
    let a = Param::new("a", ParamKind::Weight, Tensor::<f64>::from_vec(&[2, 3, 0], vec![]));
    let b = Param::new("b", ParamKind::Weight, Tensor::<f64>::from_vec(&[0, 5], vec![]));
    let mut tape = Tape::new();
    let (av, bv) = (tape.param(&a), tape.param(&b));
    let c = ops::matmul(&mut tape, &av, &bv);
    assert_eq!(c.value().shape(), &[2, 3, 5]);
    assert!(c.value().data().iter().all(|&x| x == 0.0));
    let total = ops::sum(&mut tape, &c);
    tape.backward(&total);
    assert_eq!(tape.grad(&a).unwrap().to_dense().shape(), &[2, 3, 0]);
    assert_eq!(tape.grad(&b).unwrap().to_dense().shape(), &[0, 5]);
}

/// `linear` promises the very numbers of `matmul` then `add`, forward and backward, in f32 and at a size
/// where its bias add and bias gradient run on both threads (700×300 outputs, a width with a SIMD tail).
#[test]
fn linear_equals_matmul_then_add_to_the_bit() {
    use peerlm::{Param, ParamKind, Tape, Tensor};
    let (rows, k, n) = (700, 37, 300);
    let mut rng = peerlm::Rng::new(5);
    let x = Param::new("x", ParamKind::Weight, Tensor::<f32>::randn(&[rows, k], 1.0, &mut rng));
    let w = Param::new("w", ParamKind::Weight, Tensor::<f32>::randn(&[k, n], 1.0, &mut rng));
    let b = Param::new("b", ParamKind::NoDecay, Tensor::<f32>::randn(&[n], 1.0, &mut rng));
    let upstream = Tensor::<f32>::randn(&[rows, n], 1.0, &mut rng);
    let run = |fused: bool, threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| {
            let mut tape = Tape::new();
            let (xv, wv, bv) = (tape.param(&x), tape.param(&w), tape.param(&b));
            let y = if fused {
                ops::linear(&mut tape, &xv, &wv, &bv)
            } else {
                let product = ops::matmul(&mut tape, &xv, &wv);
                ops::add(&mut tape, &product, &bv)
            };
            // A loss whose gradient with respect to y is `upstream`.
            let u = tape.constant(upstream.clone());
            let weighted = ops::mul(&mut tape, &y, &u);
            let loss = ops::sum(&mut tape, &weighted);
            tape.backward(&loss);
            let grads = [&x, &w, &b].map(|p| tape.grad(p).unwrap().to_dense().data().to_vec());
            (y.value().data().to_vec(), grads)
        })
    };
    let reference = run(false, 1);
    for threads in [1, 2] {
        assert!(run(true, threads) == reference, "linear differs from matmul + add on {threads} threads");
    }
}
