//! Matrix products: [`matmul`] for a linear layer (`[..., m, k]·[k, n]`) and [`bmm`] for batched products
//! such as attention scores, both on top of [`crate::kernels::gemm`].
//!
//! For `C = A·B` the backward is `dA = dC·Bᵀ` and `dB = Aᵀ·dC`. No transpose is ever copied: each is a
//! [`MatRef::t`] view, i.e. swapped strides handed to the GEMM.

use crate::grad::Grad;
use crate::kernels::{gemm_batched, product, Float, MatRef};
use crate::tape::{Op, Tape, Var};
use crate::tensor::Tensor;

/// `[..., m, k]·[k, n]`: the leading axes of `a` are flattened into rows.
struct MatMul;

/// (rows, k, n) of `a [..., k]·b [k, n]`, the leading axes of `a` counted as rows; panics, naming `op` and
/// both shapes, unless the product is defined. Shared with `ops::linear`.
pub(super) fn row_product_dims<T: Float>(op: &str, a: &Tensor<T>, b: &Tensor<T>) -> (usize, usize, usize) {
    assert!(
        a.rank() >= 1 && b.rank() == 2 && a.last_dim() == b.dim(0),
        "{op}: cannot multiply {:?} by {:?} (want [..., k] · [k, n])",
        a.shape(),
        b.shape()
    );
    // The rows are the product of the leading axes (not numel / k, which is 0 / 0 when k = 0).
    let rows = a.shape()[..a.rank() - 1].iter().product();
    (rows, a.last_dim(), b.dim(1))
}

impl<T: Float> Op<T> for MatMul {
    fn name(&self) -> &'static str {
        "matmul"
    }

    fn forward(&mut self, x: &[&Tensor<T>]) -> Tensor<T> {
        let (a, b) = (x[0], x[1]);
        let (rows, k, n) = row_product_dims("matmul", a, b);
        let out = product(MatRef::new(a.data(), rows, k), MatRef::new(b.data(), k, n));
        let mut shape = a.shape().to_vec();
        *shape.last_mut().unwrap() = n;
        Tensor::from_vec(&shape, out)
    }

    // In the forward pass this was C = A·B ([rows, k]·[k, n] → [rows, n]), so now dA = dC·Bᵀ [rows, k]
    // and dB = Aᵀ·dC [k, n].
    fn backward(&self, x: &[&Tensor<T>], _out: &Tensor<T>, g: &Tensor<T>, needs: &[bool]) -> Vec<Option<Grad<T>>> {
        let (a, b) = (x[0], x[1]);
        let (rows, k, n) = row_product_dims("matmul", a, b);
        let (am, bm, gm) =
            (MatRef::new(a.data(), rows, k), MatRef::new(b.data(), k, n), MatRef::new(g.data(), rows, n));
        let grad_a = needs[0].then(|| {
            let da = product(gm, bm.t()); // dA = dC·Bᵀ
            Grad::Dense(Tensor::from_vec(a.shape(), da))
        });
        let grad_b = needs[1].then(|| {
            let db = product(am.t(), gm); // dB = Aᵀ·dC
            Grad::Dense(Tensor::from_vec(b.shape(), db))
        });
        vec![grad_a, grad_b]
    }
}

/// `a·b` for `a` of shape `[..., m, k]` and `b` of shape `[k, n]`, giving `[..., m, n]`: a linear layer
/// applied to every row of `a`.
///
/// # Panics
/// Unless `a` has rank ≥ 1, `b` is 2-D, and `a`'s last axis equals `b`'s first.
pub fn matmul<T: Float>(tape: &mut Tape<T>, a: &Var<T>, b: &Var<T>) -> Var<T> {
    tape.apply(MatMul, &[a, b])
}

/// Batched product with each operand optionally read transposed.
struct BatchedMatMul {
    trans_a: bool,
    trans_b: bool,
}

/// The batch size and the logical m, n of each product.
struct BmmDims {
    batch: usize,
    m: usize,
    n: usize,
}

impl BatchedMatMul {
    fn dims<T: Float>(&self, a: &Tensor<T>, b: &Tensor<T>) -> BmmDims {
        assert!(
            a.rank() == 3 && b.rank() == 3 && a.dim(0) == b.dim(0),
            "bmm: want [B, m, k] and [B, k, n], got {:?} and {:?}",
            a.shape(),
            b.shape()
        );
        let (m, k) = if self.trans_a { (a.dim(2), a.dim(1)) } else { (a.dim(1), a.dim(2)) };
        let (k2, n) = if self.trans_b { (b.dim(2), b.dim(1)) } else { (b.dim(1), b.dim(2)) };
        assert_eq!(
            k,
            k2,
            "bmm: inner dimensions differ for {:?}{} · {:?}{}",
            a.shape(),
            if self.trans_a { "ᵀ" } else { "" },
            b.shape(),
            if self.trans_b { "ᵀ" } else { "" }
        );
        BmmDims { batch: a.dim(0), m, n }
    }

    /// The stack `t` (`[B, rows, cols]` as stored) as a batched operand, transposed if `transposed`.
    fn operand<T: Float>(t: &Tensor<T>, transposed: bool) -> MatRef<'_, T> {
        let m = MatRef::new(t.data(), t.dim(0) * t.dim(1), t.dim(2));
        if transposed {
            m.t()
        } else {
            m
        }
    }
}

impl<T: Float> Op<T> for BatchedMatMul {
    fn name(&self) -> &'static str {
        "bmm"
    }

    fn forward(&mut self, inputs: &[&Tensor<T>]) -> Tensor<T> {
        let &[a, b] = inputs else { unreachable!("bmm takes a, b") };
        let BmmDims { batch, m, n } = self.dims(a, b);
        let (am, bm) = (Self::operand(a, self.trans_a), Self::operand(b, self.trans_b));
        if batch == 1 {
            // One product (the tied output head's logits): written once, as `matmul` writes its output.
            return Tensor::from_vec(&[batch, m, n], product(am, bm));
        }
        let mut out = vec![T::ZERO; batch * m * n];
        gemm_batched(batch, am, bm, &mut out, false);
        Tensor::from_vec(&[batch, m, n], out)
    }

    // In the forward pass this was C = op(A)·op(B) per batch entry ([m, k]·[k, n] → [m, n]), so now
    // d op(A) = dC·op(B)ᵀ and d op(B) = op(A)ᵀ·dC, each transposed back if its operand is stored transposed.
    fn backward(&self, x: &[&Tensor<T>], _out: &Tensor<T>, g: &Tensor<T>, needs: &[bool]) -> Vec<Option<Grad<T>>> {
        let (a, b) = (x[0], x[1]);
        let BmmDims { batch, m, n } = self.dims(a, b);
        // op(A) and op(B): the operands as the product reads them.
        let (op_a, op_b) = (Self::operand(a, self.trans_a), Self::operand(b, self.trans_b));
        let dc = MatRef::new(g.data(), batch * m, n);
        // d op(A) = dC·op(B)ᵀ; if A is stored transposed its gradient is that transposed: op(B)·dCᵀ.
        let grad_a = needs[0].then(|| {
            let mut da = vec![T::ZERO; a.numel()];
            if self.trans_a {
                gemm_batched(batch, op_b, dc.t(), &mut da, false);
            } else {
                gemm_batched(batch, dc, op_b.t(), &mut da, false);
            }
            Grad::Dense(Tensor::from_vec(a.shape(), da))
        });
        // d op(B) = op(A)ᵀ·dC; if B is stored transposed: dCᵀ·op(A).
        let grad_b = needs[1].then(|| {
            let mut db = vec![T::ZERO; b.numel()];
            if self.trans_b {
                gemm_batched(batch, dc.t(), op_a, &mut db, false);
            } else {
                gemm_batched(batch, op_a.t(), dc, &mut db, false);
            }
            Grad::Dense(Tensor::from_vec(b.shape(), db))
        });
        vec![grad_a, grad_b]
    }
}

/// Batched product `op(a)·op(b)` of `[B, m, k]` and `[B, k, n]` stacks, giving `[B, m, n]`. With `trans_a`
/// the stored `a` is `[B, k, m]` and read transposed (likewise `trans_b`: stored `[B, n, k]`); transposes
/// are strides, never copies, in forward and backward.
///
/// # Panics
/// Unless `a` and `b` are both 3-D with the same B and, as read (after `trans_a`, `trans_b`), the same k.
pub fn bmm<T: Float>(tape: &mut Tape<T>, a: &Var<T>, b: &Var<T>, trans_a: bool, trans_b: bool) -> Var<T> {
    tape.apply(BatchedMatMul { trans_a, trans_b }, &[a, b])
}
