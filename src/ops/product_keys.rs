//! Product-key retrieval: the top k of N = n² keys in O(n + k²) work per query, not O(N).
//!
//! Lample et al. 2019 (§3.2) and PEER (He 2024, §2) never store the N keys. A query q is split into
//! halves q1, q2 and each half is scored against its own table of n sub-keys; the key of expert
//! `(i, j)` is the concatenation of sub-keys `K1[i]` and `K2[j]`, so its score is
//!
//! ```text
//! s(i, j) = q1·K1[i] + q2·K2[j],      expert id = i·n + j.
//! ```
//!
//! The best k sums can only use sub-keys that are each in their own half's top k (if `K1[i]` is not in
//! the top k of s1, k better rows `i'` paired with the same `j` beat it). So: top-k of s1, top-k of s2,
//! then the top k of the k×k candidate sums, pruned: the candidates of both halves are sorted, so once a
//! sum falls below the worst of the k kept, the rest of its row (and, at its first column, every later
//! row) is lower still.
//!
//! The selection is piecewise constant (see `ops::topk`); the scores of the selected pairs are
//! differentiable in the query and in the two selected sub-key rows. The sub-key gradients are returned
//! **dense** `[n, dh]`: with R·k selections (tens of thousands per batch) against n ≤ ~1024 sub-keys,
//! nearly every row is touched, and a dense table of n·dh values is smaller than the R·k sparse rows.
//! For the same reason the backward accumulates them densely, per chunk of query rows, rather than
//! grouping the selections by sub-key.
//!
//! Cost (N = 512², 32768 query rows): the [R, n] score GEMMs and the top-k of each score row dominate the
//! forward. The selection scores row blocks of [`ROW_BLOCK`] rows at a time, so the scores stay in
//! cache, and keeps the selected sums as the op's output values rather than recomputing R·k dot products.

use crate::kernels::parallel::prelude::*;

use crate::grad::Grad;
use crate::kernels::topk::{topk_row_into, TopKBuffer};
use crate::kernels::vector::{axpy, scale_into, sum_parts};
use crate::kernels::{flop_count, product, Float, MatRef};
use crate::tape::{Op, Tape, Var};
use crate::tensor::Tensor;

/// Query rows scored together by one GEMM and handled by one rayon task: large enough that
/// matrixmultiply's packing of the sub-key table (once per product) is spread over many rows.
const ROW_BLOCK: usize = 256;

/// Query rows per parallel work item of the backward. Each item sums its rows' share of the sub-key
/// gradients into a private dense pair of tables (2·n·dh values, L2-sized at n = 512, dh = 128), so no
/// row is shared between threads and nothing needs sorting; fixed, so the result does not depend on the
/// thread count. Faster than grouping the selections by sub-key row, which needs sorts.
const GRAD_ROW_CHUNK: usize = 2048;

/// Shapes of one retrieval.
#[derive(Clone, Copy)]
struct Dims {
    /// Width of a query half and of a sub-key.
    dh: usize,
    /// Sub-keys per table.
    n: usize,
    k: usize,
}

/// The k best sums `a[ii] + b[jj]` of two sorted candidate lists, as ids `ia[ii]·n + ib[jj]`; returns how
/// many of the k×k sums it computed before the pruning stopped it.
fn best_sums<T: Float>(a: &[T], ia: &[u32], b: &[T], ib: &[u32], n: usize, buffer: &mut TopKBuffer<T>) -> usize {
    buffer.clear();
    let mut computed = 0;
    for (&ai, &i) in a.iter().zip(ia) {
        for (jj, (&bj, &j)) in b.iter().zip(ib).enumerate() {
            let sum = ai + bj;
            computed += 1;
            if buffer.is_full() && buffer.worst().is_some_and(|(worst, _)| sum < worst) {
                if jj == 0 {
                    return computed; // a[ii] + b[0] is the best sum left in this and every later row
                }
                break;
            }
            buffer.offer(sum, i * n as u32 + j);
        }
    }
    computed
}

/// Selects the top-k expert ids of every query row, best first, with their scores; rows in parallel
/// blocks.
fn select<T: Float>(query: &[T], keys1: &[T], keys2: &[T], dims: Dims) -> (Vec<u32>, Vec<T>) {
    let Dims { dh, k, .. } = dims;
    let rows = query.len() / (2 * dh);
    let (mut ids, mut scores) = (vec![0u32; rows * k], vec![T::ZERO; rows * k]);
    let blocks = query.par_chunks(ROW_BLOCK * 2 * dh).zip(ids.par_chunks_mut(ROW_BLOCK * k));
    blocks.zip(scores.par_chunks_mut(ROW_BLOCK * k)).for_each(|((q_block, id_block), score_block)| {
        let ((a, ia), (c, ic)) = (half_topk(q_block, 0, keys1, dims), half_topk(q_block, 1, keys2, dims));
        let mut buffer = TopKBuffer::new(k);
        let mut sums = 0;
        let rows = id_block.chunks_exact_mut(k).zip(score_block.chunks_exact_mut(k)).enumerate();
        for (r, (out_ids, out_scores)) in rows {
            let at = r * k..(r + 1) * k;
            sums += best_sums(&a[at.clone()], &ia[at.clone()], &c[at.clone()], &ic[at], dims.n, &mut buffer);
            for ((id, score), &(sum, sum_id)) in out_ids.iter_mut().zip(out_scores.iter_mut()).zip(buffer.items()) {
                (*id, *score) = (sum_id, sum);
            }
        }
        flop_count::record(sums);
    });
    (ids, scores)
}

/// For a block of query rows `[b, 2·dh]`, the given half of each (0: first, 1: second) and that half's
/// sub-key table: the top k sub-key scores of each row (`[b, k]`, best first) and their sub-key ids.
fn half_topk<T: Float>(q_block: &[T], half: usize, keys: &[T], dims: Dims) -> (Vec<T>, Vec<u32>) {
    let Dims { dh, n, k } = dims;
    let b = q_block.len() / (2 * dh);
    // The half as a contiguous [b, dh] matrix, so that GEMM can read it.
    let q: Vec<T> = q_block.chunks_exact(2 * dh).flat_map(|q| &q[half * dh..(half + 1) * dh]).copied().collect();
    let scores = product(MatRef::new(&q, b, dh), MatRef::new(keys, n, dh).t());
    let (mut values, mut ids) = (vec![T::ZERO; b * k], vec![0u32; b * k]);
    let mut buffer = TopKBuffer::new(k);
    for ((row, values), ids) in scores.chunks_exact(n).zip(values.chunks_exact_mut(k)).zip(ids.chunks_exact_mut(k)) {
        topk_row_into(row, &mut buffer, values, ids);
    }
    (values, ids)
}

/// Product-key top-k as a differentiable op: the forward selects each query row's k best expert ids
/// and outputs their scores `s = q1·K1[id / n] + q2·K2[id % n]`, summed once by the selection (from its
/// score GEMMs); the backward differentiates those sums in the query and the two selected sub-key rows.
struct ProductKeyScores {
    /// `[R, k]`, written by the forward.
    ids: Vec<u32>,
    dims: Dims,
}

impl ProductKeyScores {
    /// For selection number `s` (row `s / k`): the sub-key rows it pairs.
    fn halves(&self, s: usize) -> (usize, usize) {
        let id = self.ids[s] as usize;
        (id / self.dims.n, id % self.dims.n)
    }

    /// The backward for the query rows from `first_row` on that `dq_rows` holds: writes their `dq`, and
    /// returns their share of `[dK1; dK2]` as one dense `[2·n, dh]` buffer.
    fn grad_rows<T: Float>(&self, inputs: &[&Tensor<T>], ds: &[T], first_row: usize, dq_rows: &mut [T]) -> Vec<T> {
        let &[query, keys1, keys2] = inputs else { unreachable!("product_key_topk takes query, keys1, keys2") };
        let (query, keys1, keys2) = (query.data(), keys1.data(), keys2.data());
        let Dims { dh, n, k } = self.dims;
        // Per selection: the two halves of dq and of the sub-key gradients, dh multiply-adds each.
        flop_count::record(dq_rows.len() / (2 * dh) * k * 8 * dh);
        let mut d_keys = vec![T::ZERO; 2 * n * dh];
        let (dk1, dk2) = d_keys.split_at_mut(n * dh);
        for (r, dq_r) in (first_row..).zip(dq_rows.chunks_exact_mut(2 * dh)) {
            let (q1, q2) = query[r * 2 * dh..(r + 1) * 2 * dh].split_at(dh);
            let (dq1, dq2) = dq_r.split_at_mut(dh);
            for (s, &ds_s) in (r * k..).zip(&ds[r * k..(r + 1) * k]) {
                let (i, j) = self.halves(s);
                let (key1, key2) = (&keys1[i * dh..(i + 1) * dh], &keys2[j * dh..(j + 1) * dh]);
                if s == r * k {
                    // First write, no read: `dq` is fresh memory (see `scale_into`).
                    scale_into(ds_s, key1, dq1);
                    scale_into(ds_s, key2, dq2);
                } else {
                    axpy(ds_s, key1, dq1);
                    axpy(ds_s, key2, dq2);
                }
                axpy(ds_s, q1, &mut dk1[i * dh..(i + 1) * dh]);
                axpy(ds_s, q2, &mut dk2[j * dh..(j + 1) * dh]);
            }
        }
        d_keys
    }
}

impl<T: Float> Op<T> for ProductKeyScores {
    fn name(&self) -> &'static str {
        "product_key_topk"
    }

    fn forward(&mut self, inputs: &[&Tensor<T>]) -> Tensor<T> {
        let &[query, keys1, keys2] = inputs else { unreachable!("product_key_topk takes query, keys1, keys2") };
        let (ids, scores) = select(query.data(), keys1.data(), keys2.data(), self.dims);
        self.ids = ids;
        Tensor::from_vec(&[query.dim(0), self.dims.k], scores)
    }

    // In the forward pass this was s[r, j] = q1[r]·K1[i] + q2[r]·K2[j'] for the selected id = i·n + j';
    // so now dq1[r] = Σ_s ds·K1[i] and dq2[r] = Σ_s ds·K2[j'] row by row, and dK1[i] = Σ ds·q1[r] over the
    // selections using i (likewise dK2 with q2), summed per chunk of rows into that chunk's own dense
    // [K1; K2]-shaped pair, the chunks' pairs added in chunk order.
    fn backward(&self, inputs: &[&Tensor<T>], _: &Tensor<T>, g: &Tensor<T>, needs: &[bool]) -> Vec<Option<Grad<T>>> {
        let &[query, _, _] = inputs else { unreachable!("product_key_topk takes query, keys1, keys2") };
        let (Dims { dh, n, .. }, ds) = (self.dims, g.data());
        let mut dq = vec![T::ZERO; query.numel()];
        let parts: Vec<Vec<T>> = dq
            .par_chunks_mut(GRAD_ROW_CHUNK * 2 * dh)
            .enumerate()
            .map(|(c, dq_chunk)| self.grad_rows(inputs, ds, c * GRAD_ROW_CHUNK, dq_chunk))
            .collect();
        let d_keys = sum_parts(parts, 2 * n * dh);
        let (dk1, dk2) = d_keys.split_at(n * dh);
        let dense = |values: &[T]| Grad::Dense(Tensor::from_vec(&[n, dh], values.to_vec()));
        vec![
            needs[0].then(|| Grad::Dense(Tensor::from_vec(query.shape(), dq))),
            needs[1].then(|| dense(dk1)),
            needs[2].then(|| dense(dk2)),
        ]
    }
}

/// Product-key top-k: for `query` `[R, 2·dh]` and sub-key tables `keys1`, `keys2` `[n, dh]`, returns the
/// scores `[R, k]` (descending; differentiable in all three inputs) and the `R·k` expert ids `i·n + j`
/// in `0..n²`, equal to the exhaustive top-k of `q1·K1[i] + q2·K2[j]` over all n² pairs under the ranking
/// rule of [`crate::kernels::topk`] (ties to the lower id). The one exception is a tie *created by
/// rounding* (`s1[i′] > s1[i]` but the rounded sums with the same `s2[j]` are equal), which has probability
/// ~0 on real-valued data.
///
/// # Panics
/// Unless the shapes fit as above with `dh > 0`, `1 ≤ k ≤ n`, and n² fits in u32.
pub fn product_key_topk<T: Float>(
    tape: &mut Tape<T>,
    query: &Var<T>,
    keys1: &Var<T>,
    keys2: &Var<T>,
    k: usize,
) -> (Var<T>, Vec<u32>) {
    let (qs, k1s, k2s) = (query.shape(), keys1.shape(), keys2.shape());
    assert!(
        k1s.len() == 2 && k1s == k2s && k1s[1] > 0,
        "product_key_topk: sub-key tables must both be [n, dh > 0], got {k1s:?} and {k2s:?}"
    );
    let (n, dh) = (k1s[0], k1s[1]);
    assert!(
        qs.len() == 2 && qs[1] == 2 * dh,
        "product_key_topk: query must be [R, 2·dh] = [R, {}], got {qs:?}",
        2 * dh
    );
    assert!(k >= 1 && k <= n, "product_key_topk: k = {k} must be in 1..={n}");
    assert!(n * n <= u32::MAX as usize, "product_key_topk: n² = {} ids do not fit u32", n * n);
    let op = ProductKeyScores { ids: Vec::new(), dims: Dims { dh, n, k } };
    tape.apply_then(op, &[query, keys1, keys2], |op| op.ids.clone())
}
