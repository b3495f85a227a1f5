//! The fused loops of a PEER layer's experts (He 2024, "Mixture of A Million Experts", §2).
//!
//! Each expert i is a one-neuron MLP: a down vector u_i and an up vector v_i, both of width d, and
//! e_i(x) = σ(u_iᵀx)·v_i. A token t that retrieved experts `ids[t, 0..m]` with softmaxed gates
//! `g[t, 0..m]` gets
//!
//! ```text
//! out[t] = Σ_j g[t,j] · σ(z[t,j]) · v[ids[t,j]],      z[t,j] = u[ids[t,j]] · x[t]
//! ```
//!
//! Written with tensors this would gather a `[T, m, d]` block of u rows and another of v rows, hundreds of
//! megabytes per batch. Here the loops read each expert's rows straight from the tables instead, with SIMD
//! dot products and axpys, and only the pre-activations `z` are kept for backward.
//!
//! **Expert order.** The tables are far larger than the caches (256 MiB each at N = 512², d = 256).
//! Visiting the pairs token by token reads 2 KiB of u and v from a random place in memory per pair, which
//! is latency-bound. The loops instead walk the distinct experts in ascending id (the occurrences grouped
//! by [`RowGroups`]), so each expert's rows are read once, in table order, and the randomly visited rows
//! are the token rows (`x`, `dout`: a few MiB, mostly in cache). Each walk keeps one token-side array in
//! play, so that fewer random rows compete for the cache:
//!
//! - forward: (1) `z = u[id]·x[t]` for every occurrence (t, j) of expert id; (2) the gate-weighted
//!   activations `w = g·σ(z)`, on SIMD vectors (σ's tanh was half the arithmetic as a scalar call);
//!   (3) `out[t] += w·v[id]`;
//! - backward, with `vg = v[id]·dout[t]`: (1) `dgate = σ(z)·vg`, `dz = g·σ'(z)·vg`,
//!   `dv[id] += g·σ(z)·dout[t]`; (2) `dx[t] += dz·u[id]`; (3) `du[id] += dz·x[t]`.
//!
//! The same sums in token order, as loops to read against the paper, are `kernels/peer_reference.rs`;
//! the timings of the two orders are in docs/PERFORMANCE.md.
//!
//! **Determinism.** A per-token sum (`out[t]`, `dx[t]`) collects from many experts, so the table is cut
//! into a fixed number of equal id ranges ([`EXPERT_CHUNKS`]), run in parallel, each into its own `[T, d]`
//! partial sum; the partials are added in chunk order. The order of a token's sum then depends on its own
//! expert ids only: results are bit-identical on any number of threads, and a token's output never depends
//! on the other tokens in the batch, not even in the last bit (the layer stays exactly causal). Cutting at
//! equal occurrence counts instead would balance the chunks better but let one token's choice move the
//! chunk boundaries, and with them the rounding of the others' sums. Memory is
//! O(T·m + EXPERT_CHUNKS·T·d + distinct·d): still never `[T, m, d]`.

use std::mem::MaybeUninit;
use std::ops::Range;

use crate::kernels::parallel::prelude::*;

use super::gelu::{gelu, gelu_grad, Fma};
use super::memory::{self, prefetch_row};
use super::row_groups::RowGroups;
use super::vector::{axpy, map_padded, row_dot, scale_into_uninit, sum_parts};
use super::{flop_count, Float, Lanes};

/// Parallel work items: equal id ranges of the expert table, each with its own `[T, d]` partial sum of
/// the per-token output (forward) or input gradient (backward), added up in chunk order at the end.
const EXPERT_CHUNKS: usize = 8;

/// How many distinct experts ahead the loops prefetch the rows they will read.
const PREFETCH_AHEAD: usize = 2;

/// The nonlinearity σ inside each expert.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpertActivation {
    /// GELU, tanh approximation (as in GPT-2): see [`super::gelu`].
    Gelu,
    /// max(z, 0).
    Relu,
}

impl ExpertActivation {
    /// σ(z).
    #[inline]
    pub fn apply<T: Float>(self, z: T) -> T {
        match self {
            ExpertActivation::Gelu => gelu(z, Fma::Separate),
            ExpertActivation::Relu => z.max(T::ZERO),
        }
    }

    /// σ'(z). For ReLU the derivative at exactly 0 is taken as 0.
    #[inline]
    pub fn derivative<T: Float>(self, z: T) -> T {
        match self {
            ExpertActivation::Gelu => gelu_grad(z, T::ONE, Fma::Separate),
            ExpertActivation::Relu => {
                if z > T::ZERO {
                    T::ONE
                } else {
                    T::ZERO
                }
            }
        }
    }

    /// σ(z) of every `z`, into `out`. GELU runs on SIMD vectors (its tanh is the bulk of the experts'
    /// arithmetic), padded: see [`map_padded`].
    pub fn apply_all<T: Float>(self, z: &[T], out: &mut [T]) {
        match self {
            ExpertActivation::Gelu => map_padded(z, out, |z| gelu(z, Fma::Separate)),
            ExpertActivation::Relu => z.iter().zip(out).for_each(|(&z, o)| *o = self.apply(z)),
        }
    }

    /// σ'(z) of every `z`, into `out`; like [`ExpertActivation::apply_all`].
    pub fn derivative_all<T: Float>(self, z: &[T], out: &mut [T]) {
        match self {
            ExpertActivation::Gelu => map_padded(z, out, |z| gelu_grad(z, T::Simd::splat(T::ONE), Fma::Separate)),
            ExpertActivation::Relu => z.iter().zip(out).for_each(|(&z, o)| *o = self.derivative(z)),
        }
    }
}

/// The inputs of the expert op, as flat row-major slices.
#[derive(Clone, Copy)]
pub(crate) struct ExpertBatch<'a, T> {
    /// Tokens `[T, d]`.
    pub x: &'a [T],
    /// Down vectors `[N, d]`.
    pub u: &'a [T],
    /// Up vectors `[N, d]`.
    pub v: &'a [T],
    /// Gates `[T, m]`, already softmaxed.
    pub gates: &'a [T],
    /// The token-major expert ids `[T, m]` (each `< N`) grouped by expert: `RowGroups::new(expert_ids)`.
    /// Position `t·m + j` is token t's j-th expert.
    pub groups: &'a RowGroups,
    /// Width of a token and of an expert row.
    pub d: usize,
    /// Experts per token.
    pub m: usize,
    pub act: ExpertActivation,
}

impl<T: Float> ExpertBatch<'_, T> {
    fn row<'t>(&self, table: &'t [T], id: u32) -> &'t [T] {
        let start = id as usize * self.d;
        &table[start..start + self.d]
    }

    /// Prefetches the row of `table` (u or v) of the `g`-th distinct expert (if any).
    #[inline(always)]
    fn prefetch(&self, table: &[T], g: usize) {
        if let Some(&id) = self.groups.rows.get(g) {
            // The walk skips most rows of a large table, so the hardware prefetcher cannot guess the next.
            prefetch_row(self.row(table, id));
        }
    }

    fn token(&self, t: usize) -> &[T] {
        &self.x[t * self.d..(t + 1) * self.d]
    }

    /// The distinct experts cut by id into [`EXPERT_CHUNKS`] equal ranges of the table:
    /// `bounds[c]..bounds[c + 1]` are chunk c's group indices.
    fn chunk_bounds(&self) -> Vec<usize> {
        let experts = self.u.len() / self.d;
        let ids = &self.groups.rows;
        let mut bounds: Vec<usize> = (0..EXPERT_CHUNKS)
            .map(|c| ids.partition_point(|&id| (id as usize) < c * experts / EXPERT_CHUNKS))
            .collect();
        bounds.push(ids.len());
        bounds
    }
}

/// Cuts `buf` into consecutive pieces of `(bounds[i + 1] − bounds[i])·width` elements.
fn split_at_bounds<'a, T>(mut buf: &'a mut [T], bounds: &[usize], width: usize) -> Vec<&'a mut [T]> {
    let mut pieces = Vec::with_capacity(bounds.len().saturating_sub(1));
    for w in bounds.windows(2) {
        let (piece, rest) = buf.split_at_mut((w[1] - w[0]) * width);
        pieces.push(piece);
        buf = rest;
    }
    pieces
}

/// Forward: returns `out` `[T, d]` and the pre-activations `z` in the order of `groups.occurrences`.
pub(crate) fn experts_forward<T: Float>(batch: &ExpertBatch<T>) -> (Vec<T>, Vec<T>) {
    let bounds = batch.chunk_bounds();
    let mut pre = vec![T::ZERO; batch.groups.occurrences.len()];
    let occurrence_bounds: Vec<usize> = bounds.iter().map(|&g| batch.groups.starts[g]).collect();
    let pre_chunks = split_at_bounds(&mut pre, &occurrence_bounds, 1);
    let parts: Vec<Vec<T>> = pre_chunks
        .into_par_iter()
        .enumerate()
        .map(|(c, pre_chunk)| forward_chunk(batch, bounds[c]..bounds[c + 1], pre_chunk))
        .collect();
    (sum_parts(parts, batch.x.len()), pre)
}

/// The forward over one chunk of experts (the group indices `experts`), in three steps: every `z`, then
/// the gate-weighted activations on SIMD vectors, then the sums. Writes the chunk's `z` into `pre` and
/// returns its partial `out` `[T, d]`.
fn forward_chunk<T: Float>(batch: &ExpertBatch<T>, experts: Range<usize>, pre: &mut [T]) -> Vec<T> {
    let (d, m, groups) = (batch.d, batch.m, batch.groups);
    flop_count::record(pre.len() * 4 * d); // per occurrence: the dot product u·x and the axpy of v
    let mut slots = pre.iter_mut();
    for g in experts.clone() {
        batch.prefetch(batch.u, g + PREFETCH_AHEAD);
        let u_row = batch.row(batch.u, groups.rows[g]);
        for (&pos, z) in groups.group(g).iter().zip(&mut slots) {
            *z = row_dot(u_row, batch.token(pos as usize / m));
        }
    }
    let first = groups.starts[experts.start];
    let mut weights = vec![T::ZERO; pre.len()];
    batch.act.apply_all(pre, &mut weights);
    for (w, &pos) in weights.iter_mut().zip(&groups.occurrences[first..]) {
        *w *= batch.gates[pos as usize];
    }
    let mut out = vec![T::ZERO; batch.x.len()];
    let mut weights = weights.iter();
    for g in experts {
        batch.prefetch(batch.v, g + PREFETCH_AHEAD);
        let v_row = batch.row(batch.v, groups.rows[g]);
        for (&pos, &w) in groups.group(g).iter().zip(&mut weights) {
            let t = pos as usize / m;
            axpy(w, v_row, &mut out[t * d..(t + 1) * d]);
        }
    }
    out
}

/// Gradients of the expert op. `du`/`dv` are coalesced: row `r` of each belongs to expert `rows[r]`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ExpertGrads<T> {
    /// `[T, d]`.
    pub dx: Vec<T>,
    /// `[T, m]`.
    pub dgates: Vec<T>,
    /// `[groups.len(), d]`, row g for expert `groups.rows[g]`.
    pub du: Vec<T>,
    /// `[groups.len(), d]`.
    pub dv: Vec<T>,
}

/// One chunk's share of the backward: its experts' `du`/`dv` rows and its occurrences' `dgates`.
struct BackwardChunk<'a, T> {
    groups: Range<usize>,
    /// Not yet written: [`backward_chunk`] writes every row.
    du: &'a mut [MaybeUninit<T>],
    dv: &'a mut [MaybeUninit<T>],
    /// dgates in occurrence order.
    dgates: &'a mut [T],
    /// The pre-activations of the same occurrences.
    pre: &'a [T],
}

/// Backward from `grad_out` `[T, d]`, given the pre-activations `pre` kept by the forward.
pub(crate) fn experts_backward<T: Float>(batch: &ExpertBatch<T>, pre: &[T], grad_out: &[T]) -> ExpertGrads<T> {
    let (d, groups) = (batch.d, batch.groups);
    let bounds = batch.chunk_bounds();
    let occurrence_bounds: Vec<usize> = bounds.iter().map(|&g| groups.starts[g]).collect();
    // du and dv (each up to a table's size) are not zeroed: every expert's first occurrence writes its
    // rows, the others add to them.
    let grad_len = groups.len() * d;
    let (mut du, mut dv) = (memory::uninit_vec(grad_len), memory::uninit_vec(grad_len));
    let mut dgates_sorted = vec![T::ZERO; pre.len()];
    let chunks: Vec<BackwardChunk<T>> = split_at_bounds(&mut du.spare_capacity_mut()[..grad_len], &bounds, d)
        .into_iter()
        .zip(split_at_bounds(&mut dv.spare_capacity_mut()[..grad_len], &bounds, d))
        .zip(split_at_bounds(&mut dgates_sorted, &occurrence_bounds, 1))
        .enumerate()
        .map(|(c, ((du, dv), dgates))| BackwardChunk {
            groups: bounds[c]..bounds[c + 1],
            du,
            dv,
            dgates,
            pre: &pre[occurrence_bounds[c]..occurrence_bounds[c + 1]],
        })
        .collect();
    let parts: Vec<Vec<T>> = chunks.into_par_iter().map(|chunk| backward_chunk(batch, grad_out, chunk)).collect();
    // SAFETY: the chunks tile the first `grad_len` slots of du and dv (`chunk_bounds` runs from 0 to
    // groups.len()), and `backward_chunk` wrote every row of its chunk or panicked.
    unsafe {
        du.set_len(grad_len);
        dv.set_len(grad_len);
    }
    // Back from occurrence order to token order.
    let mut dgates = vec![T::ZERO; pre.len()];
    for (&pos, &dg) in groups.occurrences.iter().zip(&dgates_sorted) {
        dgates[pos as usize] = dg;
    }
    ExpertGrads { dx: sum_parts(parts, batch.x.len()), dgates, du, dv }
}

/// The backward over one chunk of experts; returns its partial `dx` `[T, d]`. Per occurrence (token t,
/// gate g, pre-activation z) of expert (u, v), with `vg = v·dout[t]`:
/// `dgate = σ(z)·vg`, `dz = g·σ'(z)·vg`, `dx[t] += dz·u`, `du += dz·x[t]`, `dv += g·σ(z)·dout[t]`.
/// Three walks over the chunk's experts, each with one token-side array in play: v with `dout`
/// (everything but `dx` and `du`), u with `dx`, `du` with `x`: fewer random token rows compete for the
/// cache at a time than in one walk doing it all.
fn backward_chunk<T: Float>(batch: &ExpertBatch<T>, grad_out: &[T], chunk: BackwardChunk<T>) -> Vec<T> {
    let (d, m, groups) = (batch.d, batch.m, batch.groups);
    flop_count::record(chunk.pre.len() * 8 * d); // per occurrence: v·dout, then dv, dx and du rows
    let (mut act, mut dz) = (vec![T::ZERO; chunk.pre.len()], vec![T::ZERO; chunk.pre.len()]);
    batch.act.apply_all(chunk.pre, &mut act);
    batch.act.derivative_all(chunk.pre, &mut dz); // σ'(z) for now, dz once multiplied below
    let mut occurrences = act.iter().zip(dz.iter_mut()).zip(chunk.dgates.iter_mut());
    for (g, dv_slots) in chunk.groups.clone().zip(chunk.dv.chunks_exact_mut(d)) {
        batch.prefetch(batch.v, g + PREFETCH_AHEAD);
        let v_row = batch.row(batch.v, groups.rows[g]);
        let (mut unwritten, mut dv_row) = (Some(dv_slots), &mut [][..]);
        for (&pos, ((&a, dz), dgate)) in groups.group(g).iter().zip(&mut occurrences) {
            let (t, gate) = (pos as usize / m, batch.gates[pos as usize]);
            let g_t = &grad_out[t * d..(t + 1) * d];
            let vg = row_dot(v_row, g_t);
            *dgate = a * vg;
            *dz = gate * *dz * vg;
            match unwritten.take() {
                Some(slots) => dv_row = scale_into_uninit(gate * a, g_t, slots),
                None => axpy(gate * a, g_t, dv_row),
            }
        }
        assert!(unwritten.is_none(), "expert group {g} has no occurrence");
    }
    let mut dx = vec![T::ZERO; batch.x.len()];
    let mut dh_iter = dz.iter();
    for g in chunk.groups.clone() {
        batch.prefetch(batch.u, g + PREFETCH_AHEAD);
        let u_row = batch.row(batch.u, groups.rows[g]);
        for (&pos, &dz) in groups.group(g).iter().zip(&mut dh_iter) {
            let t = pos as usize / m;
            axpy(dz, u_row, &mut dx[t * d..(t + 1) * d]);
        }
    }
    let mut dh_iter = dz.iter();
    for (g, du_slots) in chunk.groups.zip(chunk.du.chunks_exact_mut(d)) {
        let (mut unwritten, mut du_row) = (Some(du_slots), &mut [][..]);
        for (&pos, &dz) in groups.group(g).iter().zip(&mut dh_iter) {
            let x_t = batch.token(pos as usize / m);
            match unwritten.take() {
                Some(slots) => du_row = scale_into_uninit(dz, x_t, slots),
                None => axpy(dz, x_t, du_row),
            }
        }
        assert!(unwritten.is_none(), "expert group {g} has no occurrence");
    }
    dx
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::peer_reference::Mixture;
    use crate::rng::Rng;

    /// The expert-order kernel against the token-order reference, on shapes with repeated experts,
    /// SIMD tails and more experts than chunks.
    #[test]
    fn fast_kernel_equals_token_order_reference() {
        let mut rng = Rng::new(17);
        for (tokens, n, d, m) in [(1, 1, 1, 1), (7, 5, 3, 4), (40, 29, 37, 8), (25, 300, 64, 6)] {
            for act in [ExpertActivation::Gelu, ExpertActivation::Relu] {
                let mut normal = |len: usize| -> Vec<f64> { (0..len).map(|_| rng.normal()).collect() };
                let (x, u, v, dout) = (normal(tokens * d), normal(n * d), normal(n * d), normal(tokens * d));
                let gates: Vec<f64> = (0..tokens * m).map(|_| rng.uniform()).collect();
                let ids: Vec<u32> = (0..tokens * m).map(|_| rng.below(n as u64) as u32).collect();
                let reference = Mixture { x: &x, u: &u, v: &v, gates: &gates, ids: &ids, d, act };
                let groups = RowGroups::new(&ids);
                let batch = ExpertBatch { x: &x, u: &u, v: &v, gates: &gates, groups: &groups, d, m, act };
                let (out, pre) = experts_forward(&batch);
                let fast = experts_backward(&batch, &pre, &dout);
                let want = reference.backward(&dout);
                // The kernel's du/dv hold one row per distinct expert; spread them over the table.
                let dense = |rows: &[f64]| {
                    let mut table = vec![0.0; n * d];
                    for (g, &id) in groups.rows.iter().enumerate() {
                        table[id as usize * d..(id as usize + 1) * d].copy_from_slice(&rows[g * d..(g + 1) * d]);
                    }
                    table
                };
                let pairs = [
                    ("out", out, reference.forward()),
                    ("dx", fast.dx, want.dx),
                    ("dgates", fast.dgates, want.dgates),
                    ("du", dense(&fast.du), want.du),
                    ("dv", dense(&fast.dv), want.dv),
                ];
                for (what, got, want) in pairs {
                    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                        assert!((g - w).abs() <= 1e-12 * (1.0 + w.abs()), "{what}[{i}] ({act:?}): {g} vs {w}");
                    }
                }
            }
        }
    }

    #[test]
    #[should_panic(expected = "has no occurrence")]
    fn an_expert_group_without_occurrences_is_refused() {
        // Expert 0 is listed but never retrieved: its gradient rows would never be written.
        let groups = RowGroups { rows: vec![0, 1], starts: vec![0, 0, 1], occurrences: vec![0] };
        let table = [0.5f32, -1.0, 2.0, 0.25];
        let batch = ExpertBatch {
            x: &[1.0, 2.0],
            u: &table,
            v: &table,
            gates: &[1.0],
            groups: &groups,
            d: 2,
            m: 1,
            act: ExpertActivation::Relu,
        };
        experts_backward(&batch, &[1.0], &[1.0, 1.0]);
    }

    #[test]
    fn simd_activations_match_scalar_and_ignore_position() {
        let z: Vec<f32> = (0..37).map(|i| (i as f32 - 18.0) * 0.37).collect();
        for act in [ExpertActivation::Gelu, ExpertActivation::Relu] {
            let (mut values, mut grads) = (vec![0.0; z.len()], vec![0.0; z.len()]);
            act.apply_all(&z, &mut values);
            act.derivative_all(&z, &mut grads);
            for ((&z, &v), &g) in z.iter().zip(&values).zip(&grads) {
                assert!((v - act.apply(z)).abs() < 1e-6 && (g - act.derivative(z)).abs() < 1e-6, "{act:?} at {z}");
            }
            // Each value alone (always in a padded vector) gives the same bits as inside the full run.
            for (i, &zi) in z.iter().enumerate() {
                let (mut one, mut one_grad) = ([0.0f32], [0.0f32]);
                act.apply_all(&[zi], &mut one);
                act.derivative_all(&[zi], &mut one_grad);
                assert_eq!((one[0].to_bits(), one_grad[0].to_bits()), (values[i].to_bits(), grads[i].to_bits()));
            }
        }
    }

    #[test]
    fn relu_and_its_derivative() {
        assert_eq!(ExpertActivation::Relu.apply(-2.0f64), 0.0);
        assert_eq!(ExpertActivation::Relu.derivative(3.0f64), 1.0);
        assert_eq!(ExpertActivation::Relu.derivative(0.0f64), 0.0);
    }
}
