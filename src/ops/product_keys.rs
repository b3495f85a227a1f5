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

use rayon::prelude::*;

use crate::grad::Grad;
use crate::kernels::peer::{axpy, dot};
use crate::kernels::topk::{topk_row_into, TopKBuffer};
use crate::kernels::{gemm, Float, MatRef, RowGroups};
use crate::tape::{Op, Tape, Var};
use crate::tensor::Tensor;

/// Query rows scored together by one GEMM and handled by one rayon task.
const ROW_BLOCK: usize = 64;

/// Shapes of one retrieval.
#[derive(Clone, Copy)]
struct Dims {
    /// Width of a query half and of a sub-key.
    dh: usize,
    /// Sub-keys per table.
    n: usize,
    k: usize,
}

/// The k best sums `a[ii] + b[jj]` of two sorted candidate lists, as ids `ia[ii]·n + ib[jj]`.
fn best_sums<T: Float>(a: &[T], ia: &[u32], b: &[T], ib: &[u32], n: usize, buffer: &mut TopKBuffer<T>) {
    buffer.clear();
    for (&ai, &i) in a.iter().zip(ia) {
        for (jj, (&bj, &j)) in b.iter().zip(ib).enumerate() {
            let sum = ai + bj;
            if buffer.is_full() && buffer.worst().is_some_and(|(worst, _)| sum < worst) {
                if jj == 0 {
                    return; // a[ii] + b[0] is the best sum left in this and every later row
                }
                break;
            }
            buffer.offer(sum, i * n as u32 + j);
        }
    }
}

/// Selects the top-k expert ids of every query row, best first; rows in parallel blocks.
fn select<T: Float>(query: &[T], keys1: &[T], keys2: &[T], dims: Dims) -> Vec<u32> {
    let Dims { dh, n, k } = dims;
    let rows = query.len() / (2 * dh);
    let mut ids = vec![0u32; rows * k];
    query.par_chunks(ROW_BLOCK * 2 * dh).zip(ids.par_chunks_mut(ROW_BLOCK * k)).for_each(|(q_block, id_block)| {
        let b = q_block.len() / (2 * dh);
        // The halves as contiguous [b, dh] matrices, so that GEMM can read them.
        let (mut q1, mut q2) = (Vec::with_capacity(b * dh), Vec::with_capacity(b * dh));
        for q in q_block.chunks_exact(2 * dh) {
            q1.extend_from_slice(&q[..dh]);
            q2.extend_from_slice(&q[dh..]);
        }
        let (mut s1, mut s2) = (vec![T::ZERO; b * n], vec![T::ZERO; b * n]);
        gemm(MatRef::new(&q1, b, dh), MatRef::new(keys1, n, dh).t(), &mut s1, false);
        gemm(MatRef::new(&q2, b, dh), MatRef::new(keys2, n, dh).t(), &mut s2, false);
        let mut buffer = TopKBuffer::new(k);
        let (mut a, mut ia, mut c, mut ic) = (vec![T::ZERO; k], vec![0u32; k], vec![T::ZERO; k], vec![0u32; k]);
        for ((s1_row, s2_row), out) in s1.chunks_exact(n).zip(s2.chunks_exact(n)).zip(id_block.chunks_exact_mut(k)) {
            topk_row_into(s1_row, &mut buffer, &mut a, &mut ia);
            topk_row_into(s2_row, &mut buffer, &mut c, &mut ic);
            best_sums(&a, &ia, &c, &ic, n, &mut buffer);
            for (dst, &(_, id)) in out.iter_mut().zip(buffer.items()) {
                *dst = id;
            }
        }
    });
    ids
}

/// The scores of given (query row, expert id) pairs: `s = q1·K1[id / n] + q2·K2[id % n]`.
struct ProductKeyScores {
    ids: Vec<u32>,
    dims: Dims,
}

impl ProductKeyScores {
    /// For selection number `s` (row `s / k`): the sub-key rows it pairs.
    fn halves(&self, s: usize) -> (usize, usize) {
        let id = self.ids[s] as usize;
        (id / self.dims.n, id % self.dims.n)
    }
}

impl<T: Float> Op<T> for ProductKeyScores {
    fn name(&self) -> &'static str {
        "product_key_scores"
    }

    fn forward(&mut self, x: &[&Tensor<T>]) -> Tensor<T> {
        let (query, keys1, keys2) = (x[0].data(), x[1].data(), x[2].data());
        let Dims { dh, k, .. } = self.dims;
        let rows = query.len() / (2 * dh);
        let mut scores = vec![T::ZERO; rows * k];
        scores.par_chunks_mut(k).enumerate().for_each(|(r, out)| {
            let q = &query[r * 2 * dh..(r + 1) * 2 * dh];
            for (s, score) in out.iter_mut().enumerate() {
                let (i, j) = self.halves(r * k + s);
                *score = dot(&q[..dh], &keys1[i * dh..(i + 1) * dh]) + dot(&q[dh..], &keys2[j * dh..(j + 1) * dh]);
            }
        });
        Tensor::from_vec(&[rows, k], scores)
    }

    fn backward(&self, x: &[&Tensor<T>], _: &Tensor<T>, g: &Tensor<T>, needs: &[bool]) -> Vec<Option<Grad<T>>> {
        let (query, keys1, keys2) = (x[0].data(), x[1].data(), x[2].data());
        let Dims { dh, n, k } = self.dims;
        let ds = g.data();
        // dq1[r] = Σ_s ds[r,s]·K1[i_s], dq2[r] = Σ_s ds[r,s]·K2[j_s]
        let d_query = needs[0].then(|| {
            let mut dq = vec![T::ZERO; query.len()];
            dq.par_chunks_mut(2 * dh).enumerate().for_each(|(r, dq_r)| {
                let (dq1, dq2) = dq_r.split_at_mut(dh);
                for (s, &ds_s) in (r * k..).zip(&ds[r * k..(r + 1) * k]) {
                    let (i, j) = self.halves(s);
                    axpy(ds_s, &keys1[i * dh..(i + 1) * dh], dq1);
                    axpy(ds_s, &keys2[j * dh..(j + 1) * dh], dq2);
                }
            });
            Grad::Dense(Tensor::from_vec(x[0].shape(), dq))
        });
        // dK1[i] = Σ over selections using i of ds·q1[r]; likewise dK2 with q2. Grouped by sub-key row so
        // each row is summed by one thread in a fixed order.
        let d_keys = |half: usize| {
            let sub_ids: Vec<u32> = (0..self.ids.len())
                .map(|s| {
                    let (i, j) = self.halves(s);
                    if half == 0 {
                        i as u32
                    } else {
                        j as u32
                    }
                })
                .collect();
            let groups = RowGroups::new(&sub_ids);
            let mut rows = vec![T::ZERO; groups.len() * dh];
            rows.par_chunks_mut(dh).enumerate().for_each(|(gi, dst)| {
                for &s in groups.group(gi) {
                    let r = s as usize / k;
                    let q_half = &query[r * 2 * dh + half * dh..r * 2 * dh + (half + 1) * dh];
                    axpy(ds[s as usize], q_half, dst);
                }
            });
            let mut dense = vec![T::ZERO; n * dh];
            for (&row, values) in groups.rows.iter().zip(rows.chunks_exact(dh)) {
                dense[row as usize * dh..(row as usize + 1) * dh].copy_from_slice(values);
            }
            Grad::Dense(Tensor::from_vec(&[n, dh], dense))
        };
        vec![d_query, needs[1].then(|| d_keys(0)), needs[2].then(|| d_keys(1))]
    }
}

/// Product-key top-k: for `query` `[R, 2·dh]` and sub-key tables `keys1`, `keys2` `[n, dh]`, returns the
/// scores `[R, k]` (descending; differentiable in all three inputs) and the `R·k` expert ids `i·n + j`
/// in `0..n²`, equal to the exhaustive top-k of `q1·K1[i] + q2·K2[j]` over all n² pairs under the ranking
/// rule of [`crate::kernels::topk`] (ties to the lower id). The one exception is a tie *created by
/// rounding* (`s1[i′] > s1[i]` but the rounded sums with the same `s2[j]` are equal), which has probability
/// ~0 on real-valued data. Panics unless `1 ≤ k ≤ n` and the shapes fit.
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
    let dims = Dims { dh, n, k };
    let ids = select(query.value().data(), keys1.value().data(), keys2.value().data(), dims);
    let scores = tape.apply(ProductKeyScores { ids: ids.clone(), dims }, &[query, keys1, keys2]);
    (scores, ids)
}
