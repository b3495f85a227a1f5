//! Gradient checks for matmul (with leading axes) and bmm (all four transpose combinations).

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
