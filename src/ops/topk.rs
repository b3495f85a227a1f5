//! Top-k along the last axis, differentiable in the selected values.
//!
//! Selecting is piecewise constant: small changes of `x` do not change *which* entries win (except on
//! ties, a set of measure zero), so the derivative of the selection itself is zero and the gradient of
//! the k values flows only to the k positions they came from. [`topk`] therefore splits in two: the
//! non-differentiable selection ([`crate::kernels::topk`], whose ranking rule — larger first, ties to the
//! lower index, NaN last — is documented there) and the differentiable [`gather_last`], which picks
//! given positions along the last axis and scatters its gradient back to them.

use crate::grad::Grad;
use crate::kernels::{topk_rows, Float};
use crate::tape::{Op, Tape, Var};
use crate::tensor::Tensor;

struct GatherLast {
    indices: Vec<u32>,
    k: usize,
}

impl<T: Float> Op<T> for GatherLast {
    fn name(&self) -> &'static str {
        "gather_last"
    }

    fn forward(&mut self, inputs: &[&Tensor<T>]) -> Tensor<T> {
        let &[x] = inputs else { unreachable!("gather_last takes x") };
        let n = x.last_dim();
        let mut out = Vec::with_capacity(self.indices.len());
        for (row, picks) in x.data().chunks_exact(n).zip(self.indices.chunks_exact(self.k)) {
            out.extend(picks.iter().map(|&i| row[i as usize]));
        }
        let mut shape = x.shape().to_vec();
        *shape.last_mut().unwrap() = self.k;
        Tensor::from_vec(&shape, out)
    }

    // In the forward pass this was out[r, j] = x[r, indices[r·k + j]] ([..., n] → [..., k]), so now
    // dx[r, indices[r·k + j]] += g[r, j], and 0 at the positions not picked.
    fn backward(&self, inputs: &[&Tensor<T>], _: &Tensor<T>, g: &Tensor<T>, _: &[bool]) -> Vec<Option<Grad<T>>> {
        let &[x] = inputs else { unreachable!("gather_last takes x") };
        let n = x.last_dim();
        let mut dx = vec![T::ZERO; x.numel()];
        // Scatter-add: a position picked twice receives both gradients.
        for ((dx_row, picks), g_row) in
            dx.chunks_exact_mut(n).zip(self.indices.chunks_exact(self.k)).zip(g.data().chunks_exact(self.k))
        {
            for (&i, &gi) in picks.iter().zip(g_row) {
                dx_row[i as usize] += gi;
            }
        }
        vec![Some(Grad::Dense(Tensor::from_vec(x.shape(), dx)))]
    }
}

/// Picks `k` entries of each row along the last axis of `x` `[..., n]`: `out[r, j] = x[r, indices[r·k + j]]`,
/// shape `[..., k]`. Indices may repeat; the gradient of `x` is the scatter-add of the output gradient.
///
/// # Panics
/// If `x` is a scalar or `n = 0`, `k = 0`, `indices` does not hold rows·k entries, or an index is ≥ n.
pub fn gather_last<T: Float>(tape: &mut Tape<T>, x: &Var<T>, indices: &[u32], k: usize) -> Var<T> {
    assert!(x.value().rank() >= 1 && x.value().last_dim() > 0, "gather_last: x {:?} has no last axis", x.shape());
    assert!(k > 0, "gather_last: k must be positive");
    let n = x.value().last_dim();
    let rows = x.value().numel() / n;
    assert_eq!(indices.len(), rows * k, "gather_last: {} indices for {rows} rows of k = {k}", indices.len());
    if let Some(bad) = indices.iter().find(|&&i| i as usize >= n) {
        panic!("gather_last: index {bad} is out of range for a last axis of {n}");
    }
    tape.apply(GatherLast { indices: indices.to_vec(), k }, &[x])
}

/// The `k` largest entries along the last axis of `x` `[..., n]`, sorted descending, as values `[..., k]`
/// (differentiable) and their indices within the row (`rows·k` of them). Ties go to the lower index and
/// NaN ranks last (see [`crate::kernels::topk`]).
///
/// # Panics
/// If `x` is a scalar, or `k` is 0 or exceeds `n`.
pub fn topk<T: Float>(tape: &mut Tape<T>, x: &Var<T>, k: usize) -> (Var<T>, Vec<u32>) {
    assert!(x.value().rank() >= 1, "topk: x must have a last axis, got {:?}", x.shape());
    let n = x.value().last_dim();
    assert!(k > 0 && k <= n, "topk: k = {k} must be in 1..={n} for x {:?}", x.shape());
    let (_, indices) = topk_rows(x.value().data(), n, k);
    let values = gather_last(tape, x, &indices, k);
    (values, indices)
}
