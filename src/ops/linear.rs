//! A linear layer's product with its bias, `y = x·W + b`, as one op (llm.c's `matmul_forward` with bias).
//!
//! As `matmul` then a broadcast `add` this would be two ops: the add allocates a second `[rows, n]`
//! output and reads the product back, and its backward sums the bias gradient on one thread. Here the bias
//! is added in place to the product the op has just made, and its gradient is a column sum split over the
//! threads by columns. Every element is added in the same order as `matmul` then `add` adds it, so the two
//! paths agree to the bit (tests/grad_matmul.rs checks it at sizes that run on both threads).

use crate::grad::Grad;
use crate::kernels::vector::{add_to_rows, column_sums};
use crate::kernels::{product, Float, MatRef};
use crate::ops::matmul::row_product_dims;
use crate::tape::{Op, Tape, Var};
use crate::tensor::Tensor;

/// `[..., k]·[k, n] + [n]`: the leading axes of `x` are flattened into rows.
struct Linear;

impl Linear {
    /// (rows, k, n), as `matmul` reads `x·W`, once the bias is checked to be `[n]`.
    fn dims<T: Float>(x: &Tensor<T>, w: &Tensor<T>, b: &Tensor<T>) -> (usize, usize, usize) {
        let (rows, k, n) = row_product_dims("linear", x, w);
        assert!(b.shape() == [n], "linear: a bias of shape {:?} for {n} outputs (want [{n}])", b.shape());
        (rows, k, n)
    }
}

impl<T: Float> Op<T> for Linear {
    fn name(&self) -> &'static str {
        "linear"
    }

    // y = x·W + b: [rows, k]·[k, n] → [rows, n], then b [n] added to every row.
    fn forward(&mut self, inputs: &[&Tensor<T>]) -> Tensor<T> {
        let &[x, w, b] = inputs else { unreachable!("linear takes x, w, b") };
        let (rows, k, n) = Self::dims(x, w, b);
        let mut y = product(MatRef::new(x.data(), rows, k), MatRef::new(w.data(), k, n));
        add_to_rows(&mut y, b.data());
        let mut shape = x.shape().to_vec();
        *shape.last_mut().unwrap() = n;
        Tensor::from_vec(&shape, y)
    }

    // In the forward pass this was y = x·W + b, so now dx = dy·Wᵀ [rows, k], dW = xᵀ·dy [k, n] and
    // db = Σ_rows dy [n] (the bias was repeated over the rows, so its gradient is the sum over them).
    fn backward(&self, inputs: &[&Tensor<T>], _: &Tensor<T>, g: &Tensor<T>, needs: &[bool]) -> Vec<Option<Grad<T>>> {
        let &[x, w, b] = inputs else { unreachable!("linear takes x, w, b") };
        let (rows, k, n) = Self::dims(x, w, b);
        let (xm, wm, gm) =
            (MatRef::new(x.data(), rows, k), MatRef::new(w.data(), k, n), MatRef::new(g.data(), rows, n));
        let dx = needs[0].then(|| Grad::Dense(Tensor::from_vec(x.shape(), product(gm, wm.t()))));
        let dw = needs[1].then(|| Grad::Dense(Tensor::from_vec(w.shape(), product(xm.t(), gm))));
        let db = needs[2].then(|| Grad::Dense(Tensor::from_vec(b.shape(), column_sums(g.data(), n))));
        vec![dx, dw, db]
    }
}

/// `x·w + b` for `x` `[..., k]`, `w` `[k, n]` and `b` `[n]`, giving `[..., n]`: a linear layer with bias
/// applied to every row of `x`. Equal to `add(matmul(x, w), b)` to the bit, in one op.
///
/// # Panics
/// Unless `x` has rank ≥ 1, `w` is 2-D with `x`'s last axis as its first, and `b` is `[n]`.
pub fn linear<T: Float>(tape: &mut Tape<T>, x: &Var<T>, w: &Var<T>, b: &Var<T>) -> Var<T> {
    tape.apply(Linear, &[x, w, b])
}
