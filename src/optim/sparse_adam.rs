//! Lazy AdamW for row-sparse gradients: update only the rows a step touched.
//!
//! A PEER layer reads a few hundred thousand rows of tables with a million rows each per step; its
//! gradient is a [`RowGrad`] (row ids, one gradient row per id, duplicates allowed). Treating the
//! missing rows as zero gradients would be dense Adam: every step would rewrite all of p, m and v
//! (28 bytes of memory traffic per parameter) to decay the moments of rows nobody read. The lazy update
//! instead follows `torch.optim.SparseAdam`:
//!
//! - duplicate ids are summed first, in the order they were appended (exactly the sums of
//!   [`RowGrad::coalesce`], without materialising the coalesced copy);
//! - each distinct touched row gets the full AdamW update of [`super::adamw`]: its m and v decay and
//!   absorb the row's gradient, and the row moves;
//! - untouched rows are left bit-for-bit alone: their p, m **and** v are not decayed, so a row's moments
//!   only change at steps that read it;
//! - bias correction uses the optimizer's global step `t` for every touched row (SparseAdam keeps one
//!   step count per parameter, not per row). A row first read at a late step therefore takes a first step
//!   of about `lr·(1 − β₁)·g/(√(1 − β₂)·|g|)` instead of a sign step of size `lr`: its moments were
//!   never warmed up;
//! - weight decay, where the parameter's kind has any (`Table` has none), shrinks touched rows only.
//!
//! The cost is proportional to the rows touched: one sort of the row ids, then one fused pass over the
//! touched rows of p, m, v and the gradient. Distinct rows are independent, so they run in parallel
//! over rayon, and each row's arithmetic does not depend on the thread count.

use std::ops::Range;

use crate::kernels::parallel::prelude::*;

use super::adamw::{adam_update, AdamCoefficients};
use crate::grad::RowGrad;
use crate::kernels::memory::prefetch_row;

/// Rows per rayon task: a row is only `width` elements, too little work to schedule alone.
const ROWS_PER_TASK: usize = 64;

/// How many touched rows ahead a task prefetches p, m and v: the rows are scattered over tables of up
/// to a gigabyte, so each one is a cache miss that the prefetch starts early.
const PREFETCH_AHEAD: usize = 2;

/// One distinct touched row: its slices of the parameter and the moments, and where its gradient rows
/// are in the sorted position list.
struct TouchedRow<'a> {
    p: &'a mut [f32],
    m: &'a mut [f32],
    v: &'a mut [f32],
    positions: Range<usize>,
}

/// Applies the lazy AdamW update of `grad` to the table `p` (row-major, `grad.width()` per row) and
/// its moments `m`, `v`.
pub(super) fn update_rows(p: &mut [f32], m: &mut [f32], v: &mut [f32], grad: &RowGrad<f32>, c: &AdamCoefficients) {
    let width = grad.width();
    let sorted = sorted_positions(&grad.rows);
    let mut touched = touched_rows(p, m, v, width, &sorted);
    let values = &grad.values;
    let row_grad = |key: u64| {
        let position = (key & u64::from(u32::MAX)) as usize;
        &values[position * width..(position + 1) * width]
    };
    touched.par_chunks_mut(ROWS_PER_TASK).for_each(|rows| {
        let mut sum = vec![0.0f32; width];
        for i in 0..rows.len() {
            if let Some(ahead) = rows.get(i + PREFETCH_AHEAD) {
                prefetch_row(ahead.p);
                prefetch_row(ahead.m);
                prefetch_row(ahead.v);
                prefetch_row(row_grad(sorted[ahead.positions.start]));
            }
            let row = &mut rows[i];
            match &sorted[row.positions.clone()] {
                [only] => adam_update(row.p, row.m, row.v, row_grad(*only), c),
                [first, rest @ ..] => {
                    sum.copy_from_slice(row_grad(*first));
                    for &key in rest {
                        sum.iter_mut().zip(row_grad(key)).for_each(|(s, &g)| *s += g);
                    }
                    adam_update(row.p, row.m, row.v, &sum, c);
                }
                [] => unreachable!("a touched row has at least one gradient row"),
            }
        }
    });
}

/// Keys `row id << 32 | position`, sorted: the gradient rows of one table row become adjacent, in the
/// order they were appended (the order `RowGrad::coalesce` sums them in).
fn sorted_positions(rows: &[u32]) -> Vec<u64> {
    assert!(rows.len() <= u32::MAX as usize, "lazy AdamW: more than 2^32 gradient rows");
    let mut keys: Vec<u64> = rows.iter().enumerate().map(|(i, &row)| (u64::from(row) << 32) | i as u64).collect();
    keys.par_sort_unstable();
    keys
}

/// Splits p, m, v into the rows named by the sorted keys, one entry per distinct row. Walking the rows
/// in increasing order hands out disjoint mutable slices without `unsafe`.
fn touched_rows<'a>(
    p: &'a mut [f32],
    m: &'a mut [f32],
    v: &'a mut [f32],
    width: usize,
    sorted: &[u64],
) -> Vec<TouchedRow<'a>> {
    let num_rows = p.len() / width;
    let mut rows = p.chunks_exact_mut(width).zip(m.chunks_exact_mut(width)).zip(v.chunks_exact_mut(width));
    let mut touched = Vec::new();
    let mut next_row = 0usize; // first row `rows` has not yet handed out
    let mut start = 0;
    while start < sorted.len() {
        let row = (sorted[start] >> 32) as usize;
        let end = start + sorted[start..].iter().take_while(|&&key| (key >> 32) as usize == row).count();
        assert!(row < num_rows, "lazy AdamW: gradient row {row} outside a table of {num_rows} rows");
        let ((p, m), v) = rows.nth(row - next_row).expect("row is in range");
        touched.push(TouchedRow { p, m, v, positions: start..end });
        next_row = row + 1;
        start = end;
    }
    touched
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_group_by_row_in_append_order() {
        let keys = sorted_positions(&[5, 2, 5, 0]);
        let pairs: Vec<(u64, u64)> = keys.iter().map(|k| (k >> 32, k & 0xffff_ffff)).collect();
        assert_eq!(pairs, vec![(0, 3), (2, 1), (5, 0), (5, 2)]);
    }

    #[test]
    fn touched_rows_are_the_distinct_ids() {
        let (mut p, mut m, mut v) = (vec![0.0f32; 12], vec![0.0f32; 12], vec![0.0f32; 12]);
        p.iter_mut().enumerate().for_each(|(i, x)| *x = i as f32);
        let keys = sorted_positions(&[3, 1, 3]);
        let touched = touched_rows(&mut p, &mut m, &mut v, 3, &keys);
        let firsts: Vec<(f32, Range<usize>)> = touched.into_iter().map(|r| (r.p[0], r.positions)).collect();
        assert_eq!(firsts, vec![(3.0, 0..1), (9.0, 1..3)]);
    }

    #[test]
    #[should_panic(expected = "gradient row 4 outside a table of 4 rows")]
    fn out_of_range_rows_are_caught() {
        let (mut p, mut m, mut v) = (vec![0.0f32; 8], vec![0.0f32; 8], vec![0.0f32; 8]);
        touched_rows(&mut p, &mut m, &mut v, 2, &sorted_positions(&[4]));
    }
}
