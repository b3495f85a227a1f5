//! Causal multi-head scaled dot-product attention ("Attention Is All You Need", eq. 1), one fused op.
//!
//! q is `[B, T, D]`, k and v are `[B, S, D]` with `S ≥ T`; head h uses columns `h·Dh..(h+1)·Dh`. Query i
//! sits at absolute position `S − T + i` and sees keys `0..=S − T + i`, so `S == T` is ordinary causal
//! self-attention and `S > T` lets the last T positions attend to a cache of earlier keys and values.
//!
//! Per (batch, head): `P = softmax(mask(Q·Kᵀ/√Dh))`, `out = P·V`. Forward keeps P (B·H·T·S values) for
//! backward, which is, with `dP = dOut·Vᵀ`:
//! `dV = Pᵀ·dOut`, `dScores = P ⊙ (dP − rowsum(P ⊙ dP))` (the softmax backward), `dQ = dScores·K/√Dh`,
//! `dK = dScoresᵀ·Q/√Dh`. Masked entries have P = 0 and therefore receive no gradient.
//!
//! Each head's Q, K, V columns are first copied into contiguous `[T, Dh]` / `[S, Dh]` blocks (O(T·D) work
//! against O(T·S·D) for the products) so that every product above is one [`gemm`] call: at Dh = 32..64 the
//! GEMM's packed micro-kernel is several times faster than dot-product loops. The products compute the
//! masked upper triangle too and then zero it, wasting at most half the multiply work in exchange for
//! that speed. The (batch, head) pairs run in parallel with rayon; each pair's arithmetic is sequential and
//! its results are scattered back in a fixed order, so the result does not depend on the thread count.

use crate::kernels::parallel::prelude::*;

use crate::grad::Grad;
use crate::kernels::{gemm, Float, MatRef};
use crate::tape::{Op, Tape, Var};
use crate::tensor::Tensor;

struct CausalAttention<T> {
    n_heads: usize,
    /// Attention probabilities, `[B, H, T, S]`, zero where masked.
    probs: Vec<T>,
}

/// Sizes of one call.
#[derive(Clone, Copy)]
struct Dims {
    batch: usize,
    t: usize,
    s: usize,
    d: usize,
    heads: usize,
}

impl Dims {
    fn head_dim(&self) -> usize {
        self.d / self.heads
    }

    fn of<T: Float>(q: &Tensor<T>, k: &Tensor<T>, v: &Tensor<T>, heads: usize) -> Dims {
        let ok = q.rank() == 3
            && k.shape() == v.shape()
            && k.rank() == 3
            && q.dim(0) == k.dim(0)
            && q.dim(2) == k.dim(2)
            && k.dim(1) >= q.dim(1)
            && heads > 0
            && q.dim(2) % heads == 0;
        assert!(
            ok,
            "causal_attention: want q [B, T, D], k and v [B, S, D] with S >= T and D divisible by {heads} heads; \
             got q {:?}, k {:?}, v {:?}",
            q.shape(),
            k.shape(),
            v.shape()
        );
        Dims { batch: q.dim(0), t: q.dim(1), s: k.dim(1), d: q.dim(2), heads }
    }
}

/// Copies head `h` of batch entry `b` of a `[B, rows, D]` tensor into a contiguous `[rows, Dh]` block.
fn gather_head<T: Float>(x: &[T], dims: Dims, rows: usize, b: usize, h: usize) -> Vec<T> {
    let dh = dims.head_dim();
    let mut out = Vec::with_capacity(rows * dh);
    for r in 0..rows {
        let start = (b * rows + r) * dims.d + h * dh;
        out.extend_from_slice(&x[start..start + dh]);
    }
    out
}

/// Writes a `[rows, Dh]` head block back into columns of head `h`, batch entry `b`, of a `[B, rows, D]` buffer.
fn scatter_head<T: Float>(dst: &mut [T], block: &[T], dims: Dims, rows: usize, b: usize, h: usize) {
    let dh = dims.head_dim();
    for (r, src) in block.chunks(dh).enumerate() {
        let start = (b * rows + r) * dims.d + h * dh;
        dst[start..start + dh].copy_from_slice(src);
    }
}

/// Turns one head's raw scores `[T, S]` into causal softmax probabilities in place.
fn causal_softmax<T: Float>(scores: &mut [T], dims: Dims, scale: T) {
    for (i, row) in scores.chunks_mut(dims.s).enumerate() {
        let visible = dims.s - dims.t + i + 1; // keys 0..=S−T+i
        let (seen, masked) = row.split_at_mut(visible);
        let max = seen.iter().fold(T::NEG_INFINITY, |m, &x| m.max(x * scale));
        let mut total = T::ZERO;
        for x in seen.iter_mut() {
            *x = (*x * scale - max).exp();
            total += *x;
        }
        seen.iter_mut().for_each(|x| *x /= total);
        masked.iter_mut().for_each(|x| *x = T::ZERO);
    }
}

impl<T: Float> Op<T> for CausalAttention<T> {
    fn name(&self) -> &'static str {
        "causal_attention"
    }

    fn forward(&mut self, x: &[&Tensor<T>]) -> Tensor<T> {
        let dims = Dims::of(x[0], x[1], x[2], self.n_heads);
        let Dims { t, s, heads, .. } = dims;
        let dh = dims.head_dim();
        let scale = T::ONE / T::from_usize(dh).sqrt();
        let (q, k, v) = (x[0].data(), x[1].data(), x[2].data());
        let mut probs = vec![T::ZERO; dims.batch * heads * t * s];
        // One task per (batch, head): probabilities written in place, the head's output returned.
        let head_outputs: Vec<Vec<T>> = probs
            .par_chunks_mut((t * s).max(1))
            .enumerate()
            .map(|(bh, p)| {
                let (b, h) = (bh / heads, bh % heads);
                let (qh, kh, vh) =
                    (gather_head(q, dims, t, b, h), gather_head(k, dims, s, b, h), gather_head(v, dims, s, b, h));
                gemm(MatRef::new(&qh, t, dh), MatRef::new(&kh, s, dh).t(), p, false);
                causal_softmax(p, dims, scale);
                let mut out = vec![T::ZERO; t * dh];
                gemm(MatRef::new(p, t, s), MatRef::new(&vh, s, dh), &mut out, false);
                out
            })
            .collect();
        let mut out = vec![T::ZERO; x[0].numel()];
        for (bh, block) in head_outputs.iter().enumerate() {
            scatter_head(&mut out, block, dims, t, bh / heads, bh % heads);
        }
        self.probs = probs;
        Tensor::from_vec(x[0].shape(), out)
    }

    fn backward(&self, x: &[&Tensor<T>], _out: &Tensor<T>, g: &Tensor<T>, _needs: &[bool]) -> Vec<Option<Grad<T>>> {
        let dims = Dims::of(x[0], x[1], x[2], self.n_heads);
        let Dims { t, s, heads, .. } = dims;
        let dh = dims.head_dim();
        let scale = T::ONE / T::from_usize(dh).sqrt();
        let (q, k, v) = (x[0].data(), x[1].data(), x[2].data());
        let head_grads: Vec<[Vec<T>; 3]> = (0..dims.batch * heads)
            .into_par_iter()
            .map(|bh| {
                let (b, h) = (bh / heads, bh % heads);
                let p = &self.probs[bh * t * s..(bh + 1) * t * s];
                let (qh, kh, vh) =
                    (gather_head(q, dims, t, b, h), gather_head(k, dims, s, b, h), gather_head(v, dims, s, b, h));
                let dout = gather_head(g.data(), dims, t, b, h);
                let (pm, dout_m) = (MatRef::new(p, t, s), MatRef::new(&dout, t, dh));
                let mut dv = vec![T::ZERO; s * dh];
                gemm(pm.t(), dout_m, &mut dv, false); // dV = Pᵀ·dOut
                let mut dscores = vec![T::ZERO; t * s];
                gemm(dout_m, MatRef::new(&vh, s, dh).t(), &mut dscores, false); // dP = dOut·Vᵀ
                softmax_backward(&mut dscores, p, s, scale);
                let ds = MatRef::new(&dscores, t, s);
                let mut dq = vec![T::ZERO; t * dh];
                gemm(ds, MatRef::new(&kh, s, dh), &mut dq, false); // dQ = dScores·K (scale folded in)
                let mut dk = vec![T::ZERO; s * dh];
                gemm(ds.t(), MatRef::new(&qh, t, dh), &mut dk, false); // dK = dScoresᵀ·Q
                [dq, dk, dv]
            })
            .collect();
        let mut grads = [vec![T::ZERO; q.len()], vec![T::ZERO; k.len()], vec![T::ZERO; v.len()]];
        for (bh, blocks) in head_grads.iter().enumerate() {
            let (b, h) = (bh / heads, bh % heads);
            for (i, (dst, block)) in grads.iter_mut().zip(blocks).enumerate() {
                scatter_head(dst, block, dims, if i == 0 { t } else { s }, b, h);
            }
        }
        grads.into_iter().zip(x).map(|(gr, xi)| Some(Grad::Dense(Tensor::from_vec(xi.shape(), gr)))).collect()
    }
}

/// Replaces `dp` (dLoss/dP for one head, `[T, S]`) with dLoss/dScores of the raw (unscaled) scores:
/// `scale · P ⊙ (dP − rowsum(P ⊙ dP))`.
fn softmax_backward<T: Float>(dp: &mut [T], p: &[T], s: usize, scale: T) {
    for (dp_row, p_row) in dp.chunks_mut(s).zip(p.chunks(s)) {
        let dot: T = dp_row.iter().zip(p_row).map(|(&a, &b)| a * b).sum();
        for (d, &pr) in dp_row.iter_mut().zip(p_row) {
            *d = scale * pr * (*d - dot);
        }
    }
}

/// Causal multi-head attention of q `[B, T, D]` over k, v `[B, S, D]` (`S ≥ T`) with `n_heads` heads of
/// `D / n_heads` columns each; query i is at absolute position `S − T + i` and sees keys up to it.
/// Returns `[B, T, D]`, the heads' outputs side by side (no output projection).
pub fn causal_attention<T: Float>(tape: &mut Tape<T>, q: &Var<T>, k: &Var<T>, v: &Var<T>, n_heads: usize) -> Var<T> {
    tape.apply(CausalAttention { n_heads, probs: Vec::new() }, &[q, k, v])
}
