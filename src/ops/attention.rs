//! Causal multi-head scaled dot-product attention ("Attention Is All You Need", eq. 1), one fused op.
//!
//! q is `[B, T, D]`, k and v are `[B, S, D]` with `S ≥ T`; head h uses columns `h·Dh..(h+1)·Dh`. Query i
//! sits at absolute position `S − T + i` and sees keys `0..=S − T + i`, so `S == T` is ordinary causal
//! self-attention and `S > T` lets the last T positions attend to a cache of earlier keys and values.
//! [`causal_self_attention`] takes q, k and v side by side in one `[B, T, 3D]` tensor, the output of one
//! linear map, and returns one `[B, T, 3D]` gradient: no split into three copies, no three zero-padded
//! gradients added back together.
//!
//! Per (batch, head), with `Q' = Q/√Dh`: `P = softmax(mask(Q'·Kᵀ))`, `out = P·V`. Forward keeps P for
//! backward, which is, with `dP = dOut·Vᵀ`: `dV = Pᵀ·dOut`, `dScores = P ⊙ (dP − rowsum(P ⊙ dP))` (the
//! softmax backward of `kernels::vector`), `dQ = dScores·K/√Dh`, `dK = dScoresᵀ·Q'`. Masked entries have
//! P = 0 and therefore receive no gradient.
//!
//! The queries go in tiles of [`QUERY_TILE`] rows. A tile's scores are `[rows, n]` with n the keys its last
//! query sees, so every product skips the key blocks above the diagonal, and P is stored tile by tile in
//! that ragged shape: never the masked `[T, S]` upper half. Each head's Q, K, V columns are first copied
//! into contiguous `[T, Dh]` / `[S, Dh]` blocks (O(T·D) work against O(T·S·D) for the products) so that
//! every product is one [`gemm`] call: at Dh = 32..64 the GEMM's packed micro-kernel is several times
//! faster than dot-product loops. The (batch, head) pairs run in parallel with rayon; each pair's
//! arithmetic is sequential and its results are joined in a fixed order, so the result does not depend
//! on the thread count.

use crate::grad::Grad;
use crate::kernels::memory::par_vec_filled;
use crate::kernels::parallel::prelude::*;
use crate::kernels::vector::{scale, softmax_backward_row, softmax_row};
use crate::kernels::{gemm, product, Float, MatRef};
use crate::tape::{Op, Tape, Var};
use crate::tensor::Tensor;

/// Query rows per tile. Smaller tiles skip more of the masked half (at T = S = 256, 32-row tiles compute
/// 56% of the full score matrix, 64-row tiles 62.5%) but make more, smaller products.
const QUERY_TILE: usize = 32;

struct CausalAttention<T> {
    n_heads: usize,
    /// One `[B, T, 3D]` input (q, k, v side by side) instead of three.
    packed: bool,
    /// Attention probabilities, per (batch, head) the tiles of [`Tiles`] one after another, zero where
    /// masked inside a tile.
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

    fn of_packed<T: Float>(qkv: &Tensor<T>, heads: usize) -> Dims {
        let ok = qkv.rank() == 3 && heads > 0 && qkv.dim(2) % (3 * heads) == 0;
        assert!(ok, "causal_self_attention: want [B, T, 3D] with D divisible by {heads} heads; got {:?}", qkv.shape());
        Dims { batch: qkv.dim(0), t: qkv.dim(1), s: qkv.dim(1), d: qkv.dim(2) / 3, heads }
    }
}

/// One tile of queries: rows `rows` of T, which see keys `0..keys`; its probabilities start at `offset`
/// in its head's stretch of `probs`.
struct Tile {
    rows: std::ops::Range<usize>,
    keys: usize,
    offset: usize,
}

/// The query tiles of one head, and the length of the head's probabilities.
struct Tiles {
    tiles: Vec<Tile>,
    len: usize,
}

impl Tiles {
    fn of(dims: Dims) -> Tiles {
        let mut len = 0;
        let tiles = (0..dims.t)
            .step_by(QUERY_TILE)
            .map(|start| {
                let rows = start..(start + QUERY_TILE).min(dims.t);
                let keys = dims.s - dims.t + rows.end;
                let tile = Tile { offset: len, keys, rows };
                len += tile.rows.len() * keys;
                tile
            })
            .collect();
        Tiles { tiles, len }
    }
}

/// Where q, k or v lives: columns `offset..offset + D` of rows `stride` apart, `rows` rows per batch entry.
#[derive(Clone, Copy)]
struct Source<'a, T> {
    data: &'a [T],
    rows: usize,
    stride: usize,
    offset: usize,
}

impl<'a, T: Float> Source<'a, T> {
    /// A plain `[B, rows, D]` tensor.
    fn whole(x: &'a Tensor<T>) -> Self {
        Source { data: x.data(), rows: x.dim(1), stride: x.dim(2), offset: 0 }
    }

    /// Part `part` (0 = q, 1 = k, 2 = v) of a `[B, T, 3D]` tensor.
    fn part(qkv: &'a Tensor<T>, part: usize) -> Self {
        let d = qkv.dim(2) / 3;
        Source { data: qkv.data(), rows: qkv.dim(1), stride: 3 * d, offset: part * d }
    }

    /// Head `h` of batch entry `b` as a contiguous `[rows, Dh]` block.
    fn head(&self, b: usize, h: usize, dh: usize) -> Vec<T> {
        let mut out = Vec::with_capacity(self.rows * dh);
        for r in 0..self.rows {
            let start = (b * self.rows + r) * self.stride + self.offset + h * dh;
            out.extend_from_slice(&self.data[start..start + dh]);
        }
        out
    }
}

/// Joins per-(batch, head) `[rows, Dh]` blocks into `[B, rows, P·D]`: row r of batch entry b is, for each
/// part p in order, the heads' rows r side by side (`parts[p][b·H + h]` is a block).
fn join_heads<T: Float>(parts: &[Vec<&[T]>], dims: Dims, rows: usize) -> Vec<T> {
    let dh = dims.head_dim();
    let mut out = Vec::with_capacity(dims.batch * rows * parts.len() * dims.d);
    for b in 0..dims.batch {
        for r in 0..rows {
            for blocks in parts {
                for block in &blocks[b * dims.heads..(b + 1) * dims.heads] {
                    out.extend_from_slice(&block[r * dh..(r + 1) * dh]);
                }
            }
        }
    }
    out
}

/// One head's forward into its stretch of probabilities (zero on entry); returns its output `[T, Dh]`.
fn head_forward<T: Float>(q: &[T], k: &[T], v: &[T], tiles: &Tiles, dims: Dims, probs: &mut [T]) -> Vec<T> {
    let Dims { t, s, .. } = dims;
    let dh = dims.head_dim();
    let mut scores = Vec::with_capacity(QUERY_TILE * s);
    let mut out = Vec::with_capacity(t * dh);
    for Tile { rows, keys, offset } in &tiles.tiles {
        let (m, n) = (rows.len(), *keys);
        // scores [m, n] = Q'[rows] · K[..n]ᵀ
        scores.resize(m * n, T::ZERO);
        gemm(
            MatRef::new(&q[rows.start * dh..rows.end * dh], m, dh),
            MatRef::new(&k[..n * dh], n, dh).t(),
            &mut scores,
            false,
        );
        let p = &mut probs[*offset..offset + m * n];
        for (i, (score_row, p_row)) in scores.chunks(n).zip(p.chunks_mut(n)).enumerate() {
            let visible = s - t + rows.start + i + 1; // keys 0..=S−T+i
            softmax_row(&score_row[..visible], &mut p_row[..visible]);
        }
        // out[rows] [m, Dh] = P [m, n] · V[..n] [n, Dh]
        out.extend(product(MatRef::new(p, m, n), MatRef::new(&v[..n * dh], n, dh)));
    }
    out
}

/// In the forward pass this head made `out = P·V` from `P = softmax(mask(Q'·Kᵀ))`, so now, given dOut
/// `[T, Dh]`, it returns `[dQ [T, Dh], dK [S, Dh], dV [S, Dh]]`.
#[allow(clippy::too_many_arguments)]
fn head_backward<T: Float>(
    q: &[T],
    k: &[T],
    v: &[T],
    dout: &[T],
    probs: &[T],
    tiles: &Tiles,
    dims: Dims,
    inv_sqrt_dh: T,
) -> [Vec<T>; 3] {
    let Dims { t, s, .. } = dims;
    let dh = dims.head_dim();
    let (mut dq, mut dk, mut dv) = (Vec::with_capacity(t * dh), vec![T::ZERO; s * dh], vec![T::ZERO; s * dh]);
    let (mut dp, mut dscores) = (Vec::with_capacity(QUERY_TILE * s), Vec::with_capacity(QUERY_TILE * s));
    for Tile { rows, keys, offset } in &tiles.tiles {
        let (m, n) = (rows.len(), *keys);
        let p = MatRef::new(&probs[*offset..offset + m * n], m, n);
        let dout_tile = MatRef::new(&dout[rows.start * dh..rows.end * dh], m, dh);
        // dV[..n] += Pᵀ·dOut[rows]
        gemm(p.t(), dout_tile, &mut dv[..n * dh], true);
        // dP [m, n] = dOut[rows] · V[..n]ᵀ
        dp.resize(m * n, T::ZERO);
        gemm(dout_tile, MatRef::new(&v[..n * dh], n, dh).t(), &mut dp, false);
        // dScores = P ⊙ (dP − rowsum(P ⊙ dP)); masked entries have P = 0 and come out 0.
        dscores.resize(m * n, T::ZERO);
        for ((p_row, dp_row), ds_row) in
            probs[*offset..offset + m * n].chunks(n).zip(dp.chunks(n)).zip(dscores.chunks_mut(n))
        {
            softmax_backward_row(p_row, dp_row, ds_row);
        }
        let ds = MatRef::new(&dscores, m, n);
        // dQ[rows] [m, Dh] = dScores · K[..n] / √Dh
        let mut dq_tile = product(ds, MatRef::new(&k[..n * dh], n, dh));
        scale(&mut dq_tile, inv_sqrt_dh);
        dq.extend(dq_tile);
        // dK[..n] += dScoresᵀ · Q'[rows]
        gemm(ds.t(), MatRef::new(&q[rows.start * dh..rows.end * dh], m, dh), &mut dk[..n * dh], true);
    }
    [dq, dk, dv]
}

impl<T: Float> CausalAttention<T> {
    /// The sizes of the call, and where q, k and v live among the inputs (`[qkv]` packed, else `[q, k, v]`).
    fn read<'a>(&self, inputs: &[&'a Tensor<T>]) -> (Dims, [Source<'a, T>; 3]) {
        if self.packed {
            let &[qkv] = inputs else { unreachable!("causal_self_attention takes qkv") };
            (Dims::of_packed(qkv, self.n_heads), [0, 1, 2].map(|part| Source::part(qkv, part)))
        } else {
            let &[q, k, v] = inputs else { unreachable!("causal_attention takes q, k, v") };
            (Dims::of(q, k, v, self.n_heads), [q, k, v].map(Source::whole))
        }
    }

    /// Head `h` of batch entry `b`: Q' (already divided by √Dh), K and V as contiguous blocks.
    fn head_inputs(sources: &[Source<T>; 3], b: usize, h: usize, dims: Dims) -> [Vec<T>; 3] {
        let dh = dims.head_dim();
        let [mut q, k, v] = sources.map(|src| src.head(b, h, dh));
        scale(&mut q, T::ONE / T::from_usize(dh).sqrt());
        [q, k, v]
    }
}

impl<T: Float> Op<T> for CausalAttention<T> {
    fn name(&self) -> &'static str {
        if self.packed {
            "causal_self_attention"
        } else {
            "causal_attention"
        }
    }

    fn forward(&mut self, inputs: &[&Tensor<T>]) -> Tensor<T> {
        let (dims, sources) = self.read(inputs);
        let Dims { batch, t, heads, d, .. } = dims;
        let tiles = Tiles::of(dims);
        // One task per (batch, head): its stretch of probabilities zeroed in cache (masked entries stay 0)
        // and written in place, the head's output returned.
        let (probs, head_outputs) = par_vec_filled(batch * heads * tiles.len, tiles.len, 1, T::ZERO, |bh, probs| {
            let [q, k, v] = Self::head_inputs(&sources, bh / heads, bh % heads, dims);
            head_forward(&q, &k, &v, &tiles, dims, probs)
        });
        self.probs = probs;
        let blocks = head_outputs.iter().map(Vec::as_slice).collect();
        Tensor::from_vec(&[batch, t, d], join_heads(&[blocks], dims, t))
    }

    // In the forward pass this was, per (batch, head), P = softmax(mask(Q'·Kᵀ)) and out = P·V; so now, with
    // dP = dOut·Vᵀ: dV = Pᵀ·dOut, dScores = P ⊙ (dP − rowsum(P ⊙ dP)), dQ = dScores·K/√Dh, dK = dScoresᵀ·Q'
    // (tile by tile in `head_backward`).
    fn backward(&self, inputs: &[&Tensor<T>], _: &Tensor<T>, g: &Tensor<T>, _: &[bool]) -> Vec<Option<Grad<T>>> {
        let (dims, sources) = self.read(inputs);
        let Dims { batch, t, s, heads, .. } = dims;
        let dh = dims.head_dim();
        let tiles = Tiles::of(dims);
        let dout = Source::whole(g);
        let inv_sqrt_dh = T::ONE / T::from_usize(dh).sqrt();
        let head_grads: Vec<[Vec<T>; 3]> = (0..batch * heads)
            .into_par_iter()
            .map(|bh| {
                let (b, h) = (bh / heads, bh % heads);
                let [q, k, v] = Self::head_inputs(&sources, b, h, dims);
                let probs = &self.probs[bh * tiles.len..(bh + 1) * tiles.len];
                head_backward(&q, &k, &v, &dout.head(b, h, dh), probs, &tiles, dims, inv_sqrt_dh)
            })
            .collect();
        let part = |i: usize| -> Vec<&[T]> { head_grads.iter().map(|g| g[i].as_slice()).collect() };
        let grad = |input: &Tensor<T>, parts: &[Vec<&[T]>], rows: usize| {
            Some(Grad::Dense(Tensor::from_vec(input.shape(), join_heads(parts, dims, rows))))
        };
        if self.packed {
            let &[qkv] = inputs else { unreachable!("causal_self_attention takes qkv") };
            return vec![grad(qkv, &[part(0), part(1), part(2)], t)];
        }
        let &[q, k, v] = inputs else { unreachable!("causal_attention takes q, k, v") };
        vec![grad(q, &[part(0)], t), grad(k, &[part(1)], s), grad(v, &[part(2)], s)]
    }
}

/// Causal multi-head attention of q `[B, T, D]` over k, v `[B, S, D]` (`S ≥ T`) with `n_heads` heads of
/// `D / n_heads` columns each; query i is at absolute position `S − T + i` and sees keys up to it.
/// Returns `[B, T, D]`, the heads' outputs side by side (no output projection).
///
/// # Panics
/// Unless q is `[B, T, D]`, k and v are both `[B, S, D]` with `S ≥ T`, and `n_heads > 0` divides D.
pub fn causal_attention<T: Float>(tape: &mut Tape<T>, q: &Var<T>, k: &Var<T>, v: &Var<T>, n_heads: usize) -> Var<T> {
    tape.apply(CausalAttention { n_heads, packed: false, probs: Vec::new() }, &[q, k, v])
}

/// Causal self-attention of `qkv` `[B, T, 3D]`, queries, keys and values side by side (columns `0..D`,
/// `D..2D`, `2D..3D`), as [`causal_attention`] of the three parts, without splitting them: its gradient
/// is one `[B, T, 3D]` tensor. Returns `[B, T, D]`.
///
/// # Panics
/// Unless `qkv` is 3-D with a last axis that `3·n_heads` divides (`n_heads > 0`).
pub fn causal_self_attention<T: Float>(tape: &mut Tape<T>, qkv: &Var<T>, n_heads: usize) -> Var<T> {
    tape.apply(CausalAttention { n_heads, packed: true, probs: Vec::new() }, &[qkv])
}

/// FLOPs of the products one call runs, for q `[B, T, D]` over `S` keys and values, as (forward,
/// backward): each tile's `[rows, keys]` scores cost `2·rows·keys·D` per product, two products forward
/// (scores, mixing) and four backward (dV, dP, dQ, dK). The model's FLOP count charges the full `T·S`
/// instead (`model::flops`), the convention of the isoFLOP study.
pub fn causal_attention_flops(batch: usize, t: usize, s: usize, d: usize) -> (usize, usize) {
    let tiles = Tiles::of(Dims { batch, t, s, d, heads: 1 });
    (batch * 4 * tiles.len * d, batch * 8 * tiles.len * d)
}
