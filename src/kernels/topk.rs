//! Top-k selection along rows, by partial selection rather than a full sort.
//!
//! PEER (He 2024, §2) and product-key memories (Lample et al. 2019) keep the k best of n scores per query,
//! with k ≪ n. Sorting all n would cost O(n log n); instead a [`TopKBuffer`] keeps the k best seen so far,
//! sorted, and an element that does not beat the worst kept one is skipped after a single comparison.
//! Before that, a row of finite numbers is thinned with SIMD: a threshold with at least k elements at or
//! above it is raised by bisection, counting with vector comparisons, until about 2k are left, and only
//! those are offered (see `candidate_threshold`). A row costs O(n) SIMD work plus O(k) insertions
//! typically (O(n·k) in the worst case, e.g. for many equal values).
//!
//! **Ranking rule** (deterministic, shared by every caller and by the brute-force tests):
//! - a larger value ranks first;
//! - equal values: the lower index ranks first;
//! - NaN ranks below every number (even −∞); NaNs among themselves by lower index.

use crate::kernels::parallel::prelude::*;

use super::{Float, Lanes, SimdVec};

/// Whether `x` is NaN, without relying on a `Float::is_nan` (NaN is the only value unequal to itself).
#[inline(always)]
fn is_nan<T: Float>(x: T) -> bool {
    x.partial_cmp(&x).is_none()
}

/// Whether `(value, index)` `a` ranks strictly before `b` under the module's ranking rule.
#[inline(always)]
pub fn ranks_before<T: Float>(a: (T, u32), b: (T, u32)) -> bool {
    match (is_nan(a.0), is_nan(b.0)) {
        (false, true) => true,
        (true, false) => false,
        (true, true) => a.1 < b.1,
        (false, false) => a.0 > b.0 || (a.0 == b.0 && a.1 < b.1),
    }
}

/// The `k` best `(value, index)` pairs offered so far, best first.
#[derive(Clone, Debug)]
pub(crate) struct TopKBuffer<T> {
    k: usize,
    items: Vec<(T, u32)>,
}

impl<T: Float> TopKBuffer<T> {
    pub(crate) fn new(k: usize) -> Self {
        TopKBuffer { k, items: Vec::with_capacity(k + 1) }
    }

    /// Empties the buffer for the next row, keeping its allocation.
    pub(crate) fn clear(&mut self) {
        self.items.clear();
    }

    /// Whether `k` pairs are held: from then on only a pair beating [`TopKBuffer::worst`] gets in.
    pub(crate) fn is_full(&self) -> bool {
        self.items.len() == self.k
    }

    /// The lowest-ranked pair kept, if any.
    pub(crate) fn worst(&self) -> Option<(T, u32)> {
        self.items.last().copied()
    }

    /// Offers one pair; it is kept if it ranks among the best `k` so far.
    #[inline]
    pub(crate) fn offer(&mut self, value: T, index: u32) {
        let item = (value, index);
        if self.is_full() && !self.items.last().is_some_and(|&worst| ranks_before(item, worst)) {
            return; // the common case once full: one comparison and out
        }
        // Insertion into the sorted buffer, scanning from its worst end (k is small).
        let mut pos = self.items.len();
        while pos > 0 && ranks_before(item, self.items[pos - 1]) {
            pos -= 1;
        }
        self.items.insert(pos, item);
        self.items.truncate(self.k);
    }

    /// The kept pairs, best first.
    pub(crate) fn items(&self) -> &[(T, u32)] {
        &self.items
    }
}

/// Writes the top `k` of `row` (values and indices within the row, best first) into `values`/`indices`.
pub(crate) fn topk_row_into<T: Float>(row: &[T], buffer: &mut TopKBuffer<T>, values: &mut [T], indices: &mut [u32]) {
    buffer.clear();
    let body_len = row.len() / T::LANES * T::LANES;
    match candidate_threshold(&row[..body_len], buffer.k) {
        Some(threshold) => {
            offer_at_least(&row[..body_len], threshold, buffer);
            for (i, &x) in row.iter().enumerate().skip(body_len) {
                buffer.offer(x, i as u32);
            }
        }
        None => row.iter().enumerate().for_each(|(i, &x)| buffer.offer(x, i as u32)),
    }
    for ((v, ix), &(value, index)) in values.iter_mut().zip(indices.iter_mut()).zip(buffer.items()) {
        *v = value;
        *ix = index;
    }
}

/// Bisection steps of [`candidate_threshold`] at most; on random rows it stops after ~4.
const MAX_BISECTIONS: usize = 12;

/// A value `t` with at least `k` elements of `body` (a whole number of SIMD vectors) `>= t`, so every
/// element below `t` has k elements ranking before it and cannot be in the top k; raised by bisection
/// until at most 2k elements are left. `None` when some element is not finite (NaN and ±∞ are left to
/// the exact rule element by element) or the body has fewer than `k` elements.
///
/// Why: offering all n elements of a row to the [`TopKBuffer`] costs ~k·ln(n/k) insertions, each a
/// mispredicted branch and a shift; counting against a threshold is branch-free SIMD (timings:
/// docs/PERFORMANCE.md).
fn candidate_threshold<T: Float>(body: &[T], k: usize) -> Option<T> {
    if k == 0 || body.len() < k {
        return None;
    }
    let (neg_inf, inf) = (T::Simd::splat(T::NEG_INFINITY), T::Simd::splat(-T::NEG_INFINITY));
    let all_lanes = u32::MAX >> (32 - T::LANES);
    let (mut max, mut neg_min, mut finite) = (neg_inf, neg_inf, all_lanes);
    for chunk in body.chunks_exact(T::LANES) {
        let v = T::Simd::load(chunk);
        finite &= v.gt_mask(neg_inf) & inf.gt_mask(v);
        max = max.max(v);
        neg_min = neg_min.max(-v);
    }
    if finite != all_lanes {
        return None;
    }
    let (mut lo, mut hi, mut above_lo) = (-neg_min.reduce_max(), max.reduce_max(), body.len());
    for _ in 0..MAX_BISECTIONS {
        let mid = lo * T::from_f64(0.5) + hi * T::from_f64(0.5);
        if above_lo <= 2 * k || !(mid > lo && mid < hi) {
            break;
        }
        let above_mid = count_at_least(body, mid);
        if above_mid >= k {
            (lo, above_lo) = (mid, above_mid);
        } else {
            hi = mid;
        }
    }
    Some(lo)
}

/// How many elements of `body` (finite, a whole number of SIMD vectors) are `>= threshold`.
fn count_at_least<T: Float>(body: &[T], threshold: T) -> usize {
    let (t, all_lanes) = (T::Simd::splat(threshold), u32::MAX >> (32 - T::LANES));
    body.chunks_exact(T::LANES).map(|chunk| (!t.gt_mask(T::Simd::load(chunk)) & all_lanes).count_ones() as usize).sum()
}

/// Offers the elements of `body` (finite, a whole number of SIMD vectors) that are `>= threshold`, in
/// index order.
fn offer_at_least<T: Float>(body: &[T], threshold: T, buffer: &mut TopKBuffer<T>) {
    let (t, all_lanes) = (T::Simd::splat(threshold), u32::MAX >> (32 - T::LANES));
    for (c, chunk) in body.chunks_exact(T::LANES).enumerate() {
        let mut candidates = !t.gt_mask(T::Simd::load(chunk)) & all_lanes;
        while candidates != 0 {
            let lane = candidates.trailing_zeros() as usize;
            buffer.offer(chunk[lane], (c * T::LANES + lane) as u32);
            candidates &= candidates - 1;
        }
    }
}

/// Top `k` of every row of `values` (rows of `row_len`), best first, by the module's ranking rule.
/// Returns `rows·k` values and their indices within their row. Rows run in parallel; each row's result
/// depends only on that row, so the output does not depend on the thread count.
pub fn topk_rows<T: Float>(values: &[T], row_len: usize, k: usize) -> (Vec<T>, Vec<u32>) {
    assert!(row_len > 0, "topk_rows: rows of length 0");
    assert_eq!(values.len() % row_len, 0, "topk_rows: {} values are not rows of {row_len}", values.len());
    assert!(k <= row_len, "topk_rows: k = {k} exceeds the row length {row_len}");
    assert!(row_len <= u32::MAX as usize, "topk_rows: row length {row_len} does not fit u32 indices");
    let rows = values.len() / row_len;
    let mut top_values = vec![T::ZERO; rows * k];
    let mut top_indices = vec![0u32; rows * k];
    if k == 0 {
        return (top_values, top_indices);
    }
    values
        .par_chunks(row_len)
        .zip(top_values.par_chunks_mut(k))
        .zip(top_indices.par_chunks_mut(k))
        .for_each_init(|| TopKBuffer::new(k), |buffer, ((row, vals), ids)| topk_row_into(row, buffer, vals, ids));
    (top_values, top_indices)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference: a full sort under the same ranking rule.
    fn by_sorting(row: &[f64], k: usize) -> Vec<(f64, u32)> {
        let mut all: Vec<(f64, u32)> = row.iter().enumerate().map(|(i, &x)| (x, i as u32)).collect();
        all.sort_by(|&a, &b| if ranks_before(a, b) { std::cmp::Ordering::Less } else { std::cmp::Ordering::Greater });
        all.truncate(k);
        all
    }

    /// The rule itself, pair by pair: the other tests compare against a sort that uses `ranks_before`, so
    /// they cannot see a wrong rule, only a selection that disagrees with it.
    #[test]
    fn ranks_before_is_the_documented_strict_order() {
        let nan = f64::NAN;
        assert!(ranks_before((2.0, 9), (1.0, 0)) && !ranks_before((1.0, 0), (2.0, 9)));
        assert!(ranks_before((1.0, 0), (1.0, 1)) && !ranks_before((1.0, 1), (1.0, 0)));
        assert!(!ranks_before((1.0, 3), (1.0, 3)));
        assert!(ranks_before((f64::NEG_INFINITY, 5), (nan, 0)) && !ranks_before((nan, 0), (f64::NEG_INFINITY, 5)));
        assert!(ranks_before((nan, 2), (nan, 5)) && !ranks_before((nan, 5), (nan, 2)));
        assert!(!ranks_before((nan, 2), (nan, 2)));
    }

    /// `topk_rows` reuses one buffer per task across rows: each row must be ranked on its own. Earlier rows
    /// hold larger values, so anything a row kept from the one before would win a place.
    #[test]
    fn every_row_of_a_batch_is_ranked_on_its_own() {
        let (rows, len, k) = (50, 40, 5);
        let values: Vec<f64> =
            (0..rows * len).map(|i| (rows - i / len) as f64 * 100.0 + ((i * 37) % 41) as f64).collect();
        let (vals, ids) = topk_rows(&values, len, k);
        for (r, row) in values.chunks(len).enumerate() {
            let want = by_sorting(row, k);
            let got: Vec<(f64, u32)> =
                vals[r * k..(r + 1) * k].iter().copied().zip(ids[r * k..(r + 1) * k].iter().copied()).collect();
            assert_eq!(got, want, "row {r}");
        }
    }

    #[test]
    fn ties_rank_lower_index_first() {
        let (vals, ids) = topk_rows(&[1.0, 3.0, 3.0, 2.0, 3.0], 5, 3);
        assert_eq!(vals, vec![3.0, 3.0, 3.0]);
        assert_eq!(ids, vec![1, 2, 4]);
    }

    #[test]
    fn nan_ranks_below_negative_infinity() {
        let row = [f64::NAN, f64::NEG_INFINITY, 0.5, f64::NAN, -1.0];
        let (vals, ids) = topk_rows(&row, 5, 5);
        assert_eq!(ids, vec![2, 4, 1, 0, 3]);
        assert_eq!(&vals[..3], &[0.5, -1.0, f64::NEG_INFINITY]);
        assert!(vals[3].is_nan() && vals[4].is_nan());
    }

    #[test]
    fn matches_sorting_on_rows_with_repeats() {
        let row: Vec<f64> = (0..97).map(|i| ((i * 37) % 11) as f64 - 5.0).collect();
        for k in [0, 1, 5, 11, 97] {
            let (vals, ids) = topk_rows(&row, 97, k);
            let got: Vec<(f64, u32)> = vals.into_iter().zip(ids).collect();
            assert_eq!(got, by_sorting(&row, k), "k = {k}");
        }
    }

    /// `topk_row_into` against sorting, on rows of `len` drawn by `draw`, for several k.
    fn check_rows(draw: &mut dyn FnMut() -> f64, rows_per_case: usize) {
        for len in [1, 15, 16, 17, 40, 100, 512, 515] {
            for k in [1, 2, 16, 33] {
                let k = k.min(len);
                for _ in 0..rows_per_case {
                    // Values exact in f32 too, so both widths (8 and 16 SIMD lanes) have the same answer.
                    let row: Vec<f64> = (0..len).map(|_| draw() as f32 as f64).collect();
                    let want: Vec<u32> = by_sorting(&row, k).iter().map(|p| p.1).collect();
                    let (mut vals, mut ids) = (vec![0.0; k], vec![0u32; k]);
                    topk_row_into(&row, &mut TopKBuffer::new(k), &mut vals, &mut ids);
                    assert_eq!(ids, want, "f64, len {len}, k {k}, row {row:?}");
                    let row32: Vec<f32> = row.iter().map(|&x| x as f32).collect();
                    let mut vals32 = vec![0.0f32; k];
                    topk_row_into(&row32, &mut TopKBuffer::new(k), &mut vals32, &mut ids);
                    assert_eq!(ids, want, "f32, len {len}, k {k}, row {row:?}");
                }
            }
        }
    }

    /// The threshold's own contract: at least k elements at or above it (so it never cuts the top k), at
    /// most 2k on rows of distinct random values (what makes it worth computing), counted as a plain
    /// loop counts; no threshold for a row with a non-finite element. The selection tests cannot see the
    /// second half: a lower threshold only offers more candidates to the same exact buffer.
    #[test]
    fn the_threshold_keeps_between_k_and_2k_candidates() {
        let mut rng = crate::rng::Rng::new(9);
        for (len, k) in [(512, 16), (256, 1), (1024, 33), (64, 8)] {
            for _ in 0..20 {
                let row: Vec<f32> = (0..len).map(|_| rng.normal() as f32).collect();
                let threshold = candidate_threshold(&row, k).expect("a finite row longer than k has one");
                let left = row.iter().filter(|&&x| x >= threshold).count();
                assert_eq!(count_at_least(&row, threshold), left);
                assert!((k..=2 * k).contains(&left), "len {len}, k {k}: {left} candidates");
            }
        }
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut row = vec![0.5f32; 64];
            row[37] = bad;
            assert_eq!(candidate_threshold(&row, 4), None, "a row holding {bad}");
        }
        assert_eq!(candidate_threshold(&[1.0f32; 16], 0), None);
    }

    #[test]
    fn threshold_filter_matches_sorting_with_ties() {
        // Finite rows (the SIMD threshold path) with few distinct values, so ties sit at the threshold.
        let mut rng = crate::rng::Rng::new(3);
        check_rows(&mut || rng.below(7) as f64 * 0.5 - 1.0, 5);
        let mut rng = crate::rng::Rng::new(4);
        check_rows(&mut || rng.normal(), 5);
    }

    #[test]
    fn rows_with_nans_and_infinities_match_sorting() {
        let mut rng = crate::rng::Rng::new(5);
        check_rows(
            &mut || match rng.below(40) {
                0 => f64::NAN,
                1 => f64::NEG_INFINITY,
                2 => f64::INFINITY,
                r => (r % 7) as f64,
            },
            3,
        );
        // All NaN but a few numbers late in the row.
        let mut row = vec![f64::NAN; 64];
        row[40] = -3.0;
        row[63] = 2.0;
        let (vals, ids) = topk_rows(&row, 64, 4);
        assert_eq!(ids, vec![63, 40, 0, 1]);
        assert_eq!(&vals[..2], &[2.0, -3.0]);
    }

    #[test]
    #[should_panic(expected = "exceeds the row length")]
    fn k_larger_than_row_panics() {
        topk_rows(&[1.0f32, 2.0], 2, 3);
    }
}
