//! Floor 0: elementwise maps, reductions and softmax rows over plain slices, with SIMD and threads.
//!
//! Every loop here has one shape: a SIMD body taking `T::LANES` elements at a time (16 f32 or 8 f64) and a
//! scalar tail for the last `len % LANES`. The ops on floor 2 (`ops::unary`, `ops::softmax`, ...) say *what*
//! to compute, as a pair of closures (one on SIMD vectors, one on scalars; where the formula is written once
//! over [`Lanes`], both closures call it); the helpers here say *how* to loop: [`update`]/[`zip_map`] for elementwise work, [`reduce`] for sums and
//! maxima, [`for_each_row`] for row-wise work such as a softmax.
//!
//! Two rules make every result reproducible to the bit on any number of threads (bit-exact resume from a
//! checkpoint depends on it):
//! - work is split into chunks of the fixed size [`CHUNK`], never "one piece per thread";
//! - a reduction adds its per-chunk partials in chunk order, and the serial path computes the very same
//!   partials, so serial and parallel agree exactly.
//!
//! Threads start only from [`PARALLEL_MIN`] elements: below that, a rayon fork-join costs more than the
//! loop itself.
//!
//! At the end, the single-row helpers of loops that are already parallel (the PEER experts, the
//! product-key backward): [`row_dot`], [`axpy`], [`scale_into`], [`map_padded`] and [`sum_parts`], the
//! fixed-order total of per-chunk partial sums.

use std::mem::MaybeUninit;

use crate::kernels::parallel::prelude::*;

use super::float::MAX_LANES;
use super::{Float, Lanes, SimdVec};

/// Inputs shorter than this run on the calling thread: a rayon fork-join costs a few microseconds, about
/// the time it takes to stream 32K floats through an elementwise op.
pub(crate) const PARALLEL_MIN: usize = 32 * 1024;

/// Elements per parallel task, and per partial result of a reduction. Fixed, so neither the split nor the
/// order in which partial sums are added depends on the thread count.
pub(crate) const CHUNK: usize = 8 * 1024;

/// `dst[i] = f(dst[i], srcs[0][i], .., srcs[N-1][i])`, given `f` on SIMD vectors and on scalars.
///
/// The in-place form covers accumulation (`dst += g * y`) and scaling; [`zip_map`] ignores the old value.
pub(crate) fn update<T: Float, const N: usize>(
    dst: &mut [T],
    srcs: [&[T]; N],
    simd: impl Fn(T::Simd, [T::Simd; N]) -> T::Simd + Sync,
    scalar: impl Fn(T, [T; N]) -> T + Sync,
) {
    for_each_chunk(dst, srcs, |dst, srcs| {
        let body = dst.len() - dst.len() % T::LANES;
        for i in (0..body).step_by(T::LANES) {
            let old = T::Simd::load(&dst[i..]);
            simd(old, srcs.map(|s| T::Simd::load(&s[i..]))).store(&mut dst[i..]);
        }
        for i in body..dst.len() {
            dst[i] = scalar(dst[i], srcs.map(|s| s[i]));
        }
    });
}

/// `dst[i] = f(srcs[0][i], .., srcs[N-1][i])`, given `f` on SIMD vectors and on scalars.
pub(crate) fn zip_map<T: Float, const N: usize>(
    srcs: [&[T]; N],
    dst: &mut [T],
    simd: impl Fn([T::Simd; N]) -> T::Simd + Sync,
    scalar: impl Fn([T; N]) -> T + Sync,
) {
    update(dst, srcs, |_, v| simd(v), |_, x| scalar(x));
}

/// Runs `run` on matching pieces of `dst` and `srcs`: the whole slices when short, else [`CHUNK`]-sized
/// pieces on rayon's threads.
fn for_each_chunk<T: Float, const N: usize>(dst: &mut [T], srcs: [&[T]; N], run: impl Fn(&mut [T], [&[T]; N]) + Sync) {
    for src in &srcs {
        assert_eq!(src.len(), dst.len(), "vector: input of {} elements for an output of {}", src.len(), dst.len());
    }
    if dst.len() < PARALLEL_MIN {
        run(dst, srcs);
    } else {
        dst.par_chunks_mut(CHUNK).enumerate().for_each(|(chunk, part)| {
            let start = chunk * CHUNK;
            run(part, srcs.map(|s| &s[start..start + part.len()]));
        });
    }
}

/// Folds zipped slices into one value: `acc = step(acc, srcs[..][i])` from `identity`, with SIMD lanes
/// and chunk partials merged by `combine` (which must be the operation `step` folds with: `+` for a sum,
/// `max` for a maximum). Threaded above [`PARALLEL_MIN`], with bit-identical results either way.
pub(crate) fn reduce<T: Float, const N: usize>(
    srcs: [&[T]; N],
    identity: T,
    simd_step: impl Fn(T::Simd, [T::Simd; N]) -> T::Simd + Sync,
    scalar_step: impl Fn(T, [T; N]) -> T + Sync,
    combine: impl Fn(T, T) -> T + Sync,
) -> T {
    let len = srcs.first().map_or(0, |s| s.len());
    reduce_chunks(len >= PARALLEL_MIN, srcs, identity, simd_step, scalar_step, combine)
}

/// [`reduce`] with the choice of threads made by the caller (the tests compare both paths).
fn reduce_chunks<T: Float, const N: usize>(
    parallel: bool,
    srcs: [&[T]; N],
    identity: T,
    simd_step: impl Fn(T::Simd, [T::Simd; N]) -> T::Simd + Sync,
    scalar_step: impl Fn(T, [T; N]) -> T + Sync,
    combine: impl Fn(T, T) -> T + Sync,
) -> T {
    let len = srcs.first().map_or(0, |s| s.len());
    for src in &srcs {
        assert_eq!(src.len(), len, "vector::reduce: inputs of {} and {len} elements", src.len());
    }
    let chunk_partial = |chunk: usize| {
        let range = chunk * CHUNK..len.min((chunk + 1) * CHUNK);
        let part = srcs.map(|s| &s[range.clone()]);
        let body = range.len() - range.len() % T::LANES;
        let mut acc = T::Simd::splat(identity);
        for i in (0..body).step_by(T::LANES) {
            acc = simd_step(acc, part.map(|s| T::Simd::load(&s[i..])));
        }
        let mut lanes = [T::ZERO; MAX_LANES];
        acc.store(&mut lanes);
        let mut total = lanes[..T::LANES].iter().fold(identity, |a, &b| combine(a, b));
        for i in body..range.len() {
            total = scalar_step(total, part.map(|s| s[i]));
        }
        total
    };
    let chunks = len.div_ceil(CHUNK);
    if parallel {
        let partials: Vec<T> = (0..chunks).into_par_iter().map(chunk_partial).collect();
        partials.into_iter().fold(identity, &combine)
    } else {
        (0..chunks).map(chunk_partial).fold(identity, &combine)
    }
}

/// Runs `f(row_index, dst_row)` for every `dst_width`-wide row of `dst`. Each row costs about
/// `work_per_row` element operations; when all rows together reach [`PARALLEL_MIN`], groups of rows
/// (about [`CHUNK`] work each, a fixed number of rows) run on rayon's threads. Rows are independent, so the
/// split cannot change any result.
pub(crate) fn for_each_row<D: Send>(
    dst: &mut [D],
    dst_width: usize,
    work_per_row: usize,
    f: impl Fn(usize, &mut [D]) + Sync,
) {
    if dst_width == 0 {
        return;
    }
    let rows = dst.len() / dst_width;
    if rows * work_per_row < PARALLEL_MIN {
        dst.chunks_mut(dst_width).enumerate().for_each(|(row, out)| f(row, out));
    } else {
        let rows_per_task = CHUNK.div_ceil(work_per_row.max(1));
        dst.par_chunks_mut(dst_width * rows_per_task).enumerate().for_each(|(task, block)| {
            for (i, out) in block.chunks_mut(dst_width).enumerate() {
                f(task * rows_per_task + i, out);
            }
        });
    }
}

/// A new vector whose row r is `values[r]` repeated `width` times: the backward of a sum over rows.
/// Written once, without zeroing first (see [`super::memory::par_vec_uninit`]), in tasks of whole rows.
pub(crate) fn broadcast_rows<T: Float>(values: &[T], width: usize) -> Vec<T> {
    let len = values.len() * width;
    if len == 0 {
        return Vec::new();
    }
    let rows_per_task = CHUNK.div_ceil(width);
    let min_tasks = if len < PARALLEL_MIN { usize::MAX } else { 1 };
    // SAFETY: a task's chunk holds whole rows (its length is a multiple of `width`, as is `len`), and
    // `values` has a value for each of them (len = values.len()·width), so the loop writes every slot.
    let (data, _) = unsafe {
        super::memory::par_vec_uninit(len, rows_per_task * width, min_tasks, |task, slots| {
            let rows = slots.chunks_mut(width).zip(&values[task * rows_per_task..]);
            for (row, &value) in rows {
                row.iter_mut().for_each(|slot| {
                    slot.write(value);
                });
            }
        })
    };
    data
}

/// Columns per task of [`column_sums`]: a multiple of every lane count, so a task's stripe is whole vectors.
const COLUMN_BLOCK: usize = 128;

/// `Σ_r x[r, j]` for every column j of the row-major `x` `[rows, width]` (the gradient of a bias that was
/// added to every row). Each column is added in row order, as a plain loop over the rows would; threads
/// split the columns, never the rows, so the order and the result are the same on any number of threads.
pub(crate) fn column_sums<T: Float>(x: &[T], width: usize) -> Vec<T> {
    let mut sums = vec![T::ZERO; width];
    if width == 0 {
        return sums;
    }
    assert_eq!(x.len() % width, 0, "column_sums: {} elements are not rows of {width}", x.len());
    let add_rows = |first_column: usize, acc: &mut [T]| {
        for row in x.chunks_exact(width) {
            let stripe = &row[first_column..first_column + acc.len()];
            update(acc, [stripe], |a, [v]| a + v, |a, [v]| a + v);
        }
    };
    if x.len() < PARALLEL_MIN {
        add_rows(0, &mut sums);
    } else {
        sums.par_chunks_mut(COLUMN_BLOCK).enumerate().for_each(|(block, acc)| add_rows(block * COLUMN_BLOCK, acc));
    }
    sums
}

/// `x[r, :] += row` for every row of the row-major `x` `[rows, row.len()]`, in place (a bias added to a
/// product the caller owns).
pub(crate) fn add_to_rows<T: Float>(x: &mut [T], row: &[T]) {
    let width = row.len();
    let whole_rows = if width == 0 { x.is_empty() } else { x.len() % width == 0 };
    assert!(whole_rows, "add_to_rows: {} elements are not rows of {width}", x.len());
    for_each_row(x, width, width, |_, y| update(y, [row], |a, [b]| a + b, |a, [b]| a + b));
}

/// `a + b` elementwise into `dst`.
pub fn add<T: Float>(a: &[T], b: &[T], dst: &mut [T]) {
    zip_map([a, b], dst, |[p, q]| p + q, |[p, q]| p + q);
}

/// `a * b` elementwise into `dst`.
pub fn mul<T: Float>(a: &[T], b: &[T], dst: &mut [T]) {
    zip_map([a, b], dst, |[p, q]| p * q, |[p, q]| p * q);
}

/// `x *= c` in place.
pub(crate) fn scale<T: Float>(x: &mut [T], c: T) {
    let cv = T::Simd::splat(c);
    update(x, [], |v, []| v * cv, |v, []| v * c);
}

/// `exp(x)` elementwise into `dst`.
pub fn exp<T: Float>(x: &[T], dst: &mut [T]) {
    zip_map([x], dst, |[v]| v.exp(), |[v]| v.exp());
}

/// The sum of `x` (0 for an empty slice).
pub fn sum<T: Float>(x: &[T]) -> T {
    reduce([x], T::ZERO, |acc, [v]| acc + v, |acc, [v]| acc + v, |a, b| a + b)
}

/// The largest element of `x` (−∞ for an empty slice).
pub(crate) fn max<T: Float>(x: &[T]) -> T {
    reduce([x], T::NEG_INFINITY, |acc, [v]| acc.max(v), |acc, [v]| acc.max(v), T::max)
}

/// `Σ a[i]·b[i]` of two long vectors: threaded above [`PARALLEL_MIN`], the chunks' partials added in
/// order. For one short row inside a loop that is already parallel, [`row_dot`].
/// Not merged with [`row_dot`]: the two add in different orders, and the softmax backward's bits (hence
/// committed runs) depend on this one's.
pub(crate) fn dot<T: Float>(a: &[T], b: &[T]) -> T {
    reduce([a, b], T::ZERO, |acc, [p, q]| p.mul_add(q, acc), |acc, [p, q]| acc + p * q, |a, b| a + b)
}

/// The index of the first largest element: ties go to the lowest index. Panics on an empty slice.
pub(crate) fn argmax<T: Float>(x: &[T]) -> usize {
    let top = max(x);
    x.iter().position(|&v| v == top).expect("vector::argmax of an empty slice (or one holding NaN)")
}

/// `Σ exp(x[i] − shift)`: a softmax normaliser; with `shift` = max(x) every term is at most 1, so it
/// cannot overflow however large the logits.
pub(crate) fn sum_exp<T: Float>(x: &[T], shift: T) -> T {
    let sv = T::Simd::splat(shift);
    reduce([x], T::ZERO, |acc, [v]| acc + (v - sv).exp(), |acc, [v]| acc + (v - shift).exp(), |a, b| a + b)
}

/// `ln Σ exp(x[i])`, computed stably as `m + ln Σ exp(x[i] − m)` with `m = max(x)`.
pub(crate) fn log_sum_exp<T: Float>(x: &[T]) -> T {
    let m = max(x);
    if m == T::NEG_INFINITY {
        return m;
    }
    m + sum_exp(x, m).ln()
}

/// One softmax row: `y = exp(x − max x) / Σ exp(x − max x)`.
pub(crate) fn softmax_row<T: Float>(x: &[T], y: &mut [T]) {
    let m = max(x);
    let mv = T::Simd::splat(m);
    zip_map([x], y, |[v]| (v - mv).exp(), |[v]| (v - m).exp());
    let total = sum(y);
    scale(y, T::ONE / total);
}

/// The backward of one softmax row: given its output `y` and the gradient `g` of the loss by `y`, writes
/// the gradient by the row's input, `dx = y ⊙ (g − Σ g⊙y)` (the Jacobian is `diag(y) − y yᵀ`).
pub(crate) fn softmax_backward_row<T: Float>(y: &[T], g: &[T], dx: &mut [T]) {
    let inner = dot(g, y);
    let iv = T::Simd::splat(inner);
    zip_map([y, g], dx, |[y, g]| y * (g - iv), |[y, g]| y * (g - inner));
}

/// One log-softmax row: `y = x − log_sum_exp(x)`.
pub(crate) fn log_softmax_row<T: Float>(x: &[T], y: &mut [T]) {
    let lse = log_sum_exp(x);
    let lv = T::Simd::splat(lse);
    zip_map([x], y, |[v]| v - lv, |[v]| v - lse);
}

// Single rows, for loops that are already parallel (the PEER experts, the product-key backward): no
// threads, no chunking, inlined into the caller's loop.

/// `a · b` of two rows, with two SIMD accumulators (to hide the FMA latency) and a scalar loop for the
/// tail. Not merged with [`dot`]: the two add in different orders, and the PEER experts' and PKM's bits
/// (hence committed runs) depend on this one's.
#[inline]
pub(crate) fn row_dot<T: Float>(a: &[T], b: &[T]) -> T {
    debug_assert_eq!(a.len(), b.len());
    let lanes = T::LANES;
    let body = a.len() / (2 * lanes) * (2 * lanes);
    let (mut acc0, mut acc1) = (T::Simd::splat(T::ZERO), T::Simd::splat(T::ZERO));
    for (ca, cb) in a[..body].chunks_exact(2 * lanes).zip(b[..body].chunks_exact(2 * lanes)) {
        acc0 = T::Simd::load(&ca[..lanes]).mul_add(T::Simd::load(&cb[..lanes]), acc0);
        acc1 = T::Simd::load(&ca[lanes..]).mul_add(T::Simd::load(&cb[lanes..]), acc1);
    }
    let mut sum = (acc0 + acc1).reduce_add();
    for (&x, &y) in a[body..].iter().zip(&b[body..]) {
        sum += x * y;
    }
    sum
}

/// `y += alpha · x`.
#[inline]
pub(crate) fn axpy<T: Float>(alpha: T, x: &[T], y: &mut [T]) {
    debug_assert_eq!(x.len(), y.len());
    let lanes = T::LANES;
    let body = x.len() / lanes * lanes;
    let va = T::Simd::splat(alpha);
    for (cy, cx) in y[..body].chunks_exact_mut(lanes).zip(x[..body].chunks_exact(lanes)) {
        T::Simd::load(cx).mul_add(va, T::Simd::load(cy)).store(cy);
    }
    for (yi, &xi) in y[body..].iter_mut().zip(&x[body..]) {
        *yi += alpha * xi;
    }
}

/// `y = alpha · x`, never reading `y`. For a freshly allocated `y`, the first touch of each page is then a
/// write: one page fault, where `y += …` would first fault the shared zero page in for the read and then
/// fault again to copy it for the write.
#[inline]
pub(crate) fn scale_into<T: Float>(alpha: T, x: &[T], y: &mut [T]) {
    debug_assert_eq!(x.len(), y.len());
    let lanes = T::LANES;
    let body = x.len() / lanes * lanes;
    let va = T::Simd::splat(alpha);
    for (cy, cx) in y[..body].chunks_exact_mut(lanes).zip(x[..body].chunks_exact(lanes)) {
        (T::Simd::load(cx) * va).store(cy);
    }
    for (yi, &xi) in y[body..].iter_mut().zip(&x[body..]) {
        *yi = alpha * xi;
    }
}

/// `y = alpha · x` into a row that was never initialised, returned as initialised values: the first
/// write of a gradient row, in a buffer the caller does not zero first.
pub(crate) fn scale_into_uninit<'a, T: Float>(alpha: T, x: &[T], y: &'a mut [MaybeUninit<T>]) -> &'a mut [T] {
    assert_eq!(x.len(), y.len(), "scale_into_uninit: rows of different lengths");
    for (yi, &xi) in y.iter_mut().zip(x) {
        yi.write(alpha * xi);
    }
    // SAFETY: the loop wrote all `y.len()` elements (x is as long), and `MaybeUninit<T>` has the layout
    // of `T`.
    unsafe { &mut *(y as *mut [MaybeUninit<T>] as *mut [T]) }
}

/// `out[i] = f(x[i])`, `T::LANES` values at a time; the last vector is padded, so that every value goes
/// through the same SIMD code. For values whose order depends on the whole batch (the PEER experts hand
/// theirs over in expert order): with a scalar tail, a token's result could change in the last bit with
/// the other tokens' choices, and the layer would no longer be exactly causal.
pub(crate) fn map_padded<T: Float>(x: &[T], out: &mut [T], f: impl Fn(T::Simd) -> T::Simd) {
    debug_assert_eq!(x.len(), out.len());
    for (x, out) in x.chunks(T::LANES).zip(out.chunks_mut(T::LANES)) {
        if x.len() == T::LANES {
            f(T::Simd::load(x)).store(out);
        } else {
            let (mut padded, mut result) = ([T::ZERO; MAX_LANES], [T::ZERO; MAX_LANES]);
            padded[..x.len()].copy_from_slice(x);
            f(T::Simd::load(&padded)).store(&mut result);
            out.copy_from_slice(&result[..out.len()]);
        }
    }
}

/// Elements per parallel work item of [`sum_parts`].
const SUM_BLOCK: usize = 1 << 16;

/// `parts[0] + parts[1] + …` element by element, added in that order (so the result does not depend on
/// the thread count), in parallel over blocks of elements: the total of per-chunk partial results, each
/// chunk computed on its own thread. Every part is `len` long; no parts give zeros.
pub(crate) fn sum_parts<T: Float>(mut parts: Vec<Vec<T>>, len: usize) -> Vec<T> {
    if parts.is_empty() {
        return vec![T::ZERO; len];
    }
    let mut total = parts.remove(0);
    total.par_chunks_mut(SUM_BLOCK).enumerate().for_each(|(b, dst)| {
        for part in &parts {
            let src = &part[b * SUM_BLOCK..b * SUM_BLOCK + dst.len()];
            dst.iter_mut().zip(src).for_each(|(y, &x)| *y += x);
        }
    });
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values in roughly [-3, 3], different for every index and length.
    fn values<T: Float>(n: usize, salt: usize) -> Vec<T> {
        (0..n).map(|i| T::from_f64((((i * 7 + salt * 13) % 23) as f64 - 11.0) * 0.27)).collect()
    }

    #[test]
    fn broadcast_rows_repeats_each_value_across_its_row() {
        // Small and large (parallel) sizes, rows narrower and wider than a task.
        for (rows, width) in [(0, 5), (3, 0), (1, 1), (7, 3), (5000, 13), (3, 20_000)] {
            let row_values: Vec<f32> = values(rows, 1);
            let want: Vec<f32> = row_values.iter().flat_map(|&v| std::iter::repeat_n(v, width)).collect();
            assert_eq!(broadcast_rows(&row_values, width), want, "{rows}x{width}");
        }
    }

    #[test]
    fn column_sums_add_each_column_in_row_order_on_any_thread_count() {
        // Serial and parallel sizes; widths below, at and across the column block, with a SIMD tail.
        for (rows, width) in [(0, 4), (3, 0), (1, 1), (7, 3), (700, 300), (40, 1000), (2048, 17)] {
            let x: Vec<f32> = values(rows * width, 3);
            let mut want = vec![0.0f32; width];
            for row in x.chunks_exact(width.max(1)) {
                want.iter_mut().zip(row).for_each(|(w, &v)| *w += v);
            }
            assert_eq!(column_sums(&x, width), want, "{rows}x{width}");
            #[cfg(feature = "parallel")]
            for threads in [1, 2] {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                let got = pool.install(|| column_sums(&x, width));
                assert_eq!(got, want, "{rows}x{width} on {threads} threads");
            }
        }
    }

    #[test]
    fn add_to_rows_adds_the_row_to_every_row() {
        for (rows, width) in [(0, 4), (1, 1), (7, 3), (700, 300)] {
            let (mut x, row): (Vec<f64>, Vec<f64>) = (values(rows * width, 4), values(width, 5));
            let want: Vec<f64> = x.iter().enumerate().map(|(i, &v)| v + row[i % width]).collect();
            add_to_rows(&mut x, &row);
            assert_eq!(x, want, "{rows}x{width}");
        }
    }

    fn close<T: Float>(got: T, want: f64, what: &str, n: usize) {
        let err = (got.to_f64() - want).abs() / (1.0 + want.abs());
        let tol = if T::LANES == 16 { 1e-5 } else { 1e-12 };
        assert!(err < tol, "{what} ({}, n = {n}): got {got}, want {want}", T::NAME);
    }

    fn elementwise_matches_scalar<T: Float>() {
        for n in 0..=70 {
            let (a, b) = (values::<T>(n, 1), values::<T>(n, 2));
            let mut out = vec![T::ZERO; n];
            add(&a, &b, &mut out);
            (0..n).for_each(|i| assert_eq!(out[i], a[i] + b[i]));
            mul(&a, &b, &mut out);
            (0..n).for_each(|i| assert_eq!(out[i], a[i] * b[i]));
            exp(&a, &mut out);
            (0..n).for_each(|i| close(out[i], a[i].to_f64().exp(), "exp", n));
            scale(&mut out, T::from_f64(0.5));
            (0..n).for_each(|i| close(out[i], 0.5 * a[i].to_f64().exp(), "scale", n));
            let mut y = b.clone();
            axpy(T::from_f64(-1.5), &a, &mut y);
            (0..n).for_each(|i| close(y[i], b[i].to_f64() - 1.5 * a[i].to_f64(), "axpy", n));
            let mut z = vec![T::from_f64(7.0); n];
            scale_into(T::from_f64(-1.5), &a, &mut z);
            (0..n).for_each(|i| assert_eq!(z[i], T::from_f64(-1.5) * a[i], "scale_into, n = {n}"));
        }
    }

    fn reductions_match_scalar<T: Float>() {
        for n in 0..=70 {
            let (a, b) = (values::<T>(n, 3), values::<T>(n, 4));
            let (a64, b64): (Vec<f64>, Vec<f64>) =
                (a.iter().map(|x| x.to_f64()).collect(), b.iter().map(|x| x.to_f64()).collect());
            close(sum(&a), a64.iter().sum(), "sum", n);
            close(dot(&a, &b), a64.iter().zip(&b64).map(|(p, q)| p * q).sum(), "dot", n);
            assert_eq!(max(&a).to_f64(), a64.iter().copied().fold(f64::NEG_INFINITY, f64::max));
            if n > 0 {
                let m = a64.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                assert_eq!(argmax(&a), a64.iter().position(|&v| v == m).unwrap());
                let lse = m + a64.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
                close(log_sum_exp(&a), lse, "log_sum_exp", n);
                let mut y = vec![T::ZERO; n];
                softmax_row(&a, &mut y);
                (0..n).for_each(|i| close(y[i], (a64[i] - lse).exp(), "softmax", n));
                // Its backward with b as the upstream gradient, in f64 from the same y (every tail length).
                let mut dx = vec![T::ZERO; n];
                softmax_backward_row(&y, &b, &mut dx);
                let inner: f64 = y.iter().zip(&b64).map(|(y, g)| y.to_f64() * g).sum();
                (0..n).for_each(|i| close(dx[i], y[i].to_f64() * (b64[i] - inner), "softmax backward", n));
                log_softmax_row(&a, &mut y);
                (0..n).for_each(|i| close(y[i], a64[i] - lse, "log_softmax", n));
            }
        }
    }

    #[test]
    fn kernels_match_scalar_reference_for_every_tail() {
        elementwise_matches_scalar::<f32>();
        elementwise_matches_scalar::<f64>();
        reductions_match_scalar::<f32>();
        reductions_match_scalar::<f64>();
    }

    #[test]
    fn argmax_takes_the_first_of_tied_maxima() {
        assert_eq!(argmax(&[1.0f32, 3.0, -2.0, 3.0]), 1);
        assert_eq!(log_sum_exp::<f64>(&[]), f64::NEG_INFINITY);
    }

    #[test]
    fn softmax_of_huge_logits_is_finite() {
        let x = [1e4f32, 0.0, -1e4, 1e4];
        let mut y = [0.0f32; 4];
        softmax_row(&x, &mut y);
        assert_eq!(y, [0.5, 0.0, 0.0, 0.5]);
    }

    fn serial_and_parallel_agree<T: Float>() {
        // Not a multiple of CHUNK or LANES, so the last chunk and the scalar tail are both exercised.
        let n = 5 * CHUNK + 77;
        let (a, b) = (values::<T>(n, 5), values::<T>(n, 6));
        let steps = |parallel| {
            (
                reduce_chunks(parallel, [&a[..]], T::ZERO, |acc, [v]| acc + v, |acc, [v]| acc + v, |p, q| p + q),
                reduce_chunks(
                    parallel,
                    [&a[..], &b[..]],
                    T::ZERO,
                    |acc, [p, q]| p.mul_add(q, acc),
                    |acc, [p, q]| acc + p * q,
                    |p, q| p + q,
                ),
            )
        };
        let (serial, parallel) = (steps(false), steps(true));
        assert_eq!(serial.0.to_f64().to_bits(), parallel.0.to_f64().to_bits());
        assert_eq!(serial.1.to_f64().to_bits(), parallel.1.to_f64().to_bits());
        // And on a one-thread pool, where rayon runs every task in turn.
        #[cfg(feature = "parallel")]
        {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
            let one_thread = pool.install(|| steps(true));
            assert_eq!(serial.0.to_f64().to_bits(), one_thread.0.to_f64().to_bits());
        }
        // Elementwise maps above the threshold equal the same map done piecewise below it.
        let big = 2 * PARALLEL_MIN + 5;
        let (x, y) = (values::<T>(big, 7), values::<T>(big, 8));
        let mut whole = vec![T::ZERO; big];
        mul(&x, &y, &mut whole);
        for (i, piece) in whole.chunks(1000).enumerate() {
            let mut small = vec![T::ZERO; piece.len()];
            let range = i * 1000..i * 1000 + piece.len();
            mul(&x[range.clone()], &y[range], &mut small);
            assert_eq!(piece, &small[..]);
        }
    }

    /// The two paths against the true total (the test above only compares them with each other).
    #[test]
    fn a_reduction_over_many_chunks_counts_every_element_once() {
        // Small integers: every partial sum is exact in f32, so any order of adding gives the exact total.
        let n = 5 * CHUNK + 77;
        let x: Vec<f32> = (0..n).map(|i| (i % 7) as f32).collect();
        let want: f64 = x.iter().map(|&v| f64::from(v)).sum();
        for parallel in [false, true] {
            let sum = reduce_chunks(parallel, [&x[..]], 0.0, |acc, [v]| acc + v, |acc, [v]| acc + v, |p, q| p + q);
            assert_eq!(f64::from(sum), want, "parallel: {parallel}");
        }
    }

    #[test]
    fn parallel_results_are_bit_identical_to_serial() {
        serial_and_parallel_agree::<f32>();
        serial_and_parallel_agree::<f64>();
    }

    #[test]
    fn rows_are_visited_once_each_in_both_paths() {
        for (rows, width) in [(3, 5), (PARALLEL_MIN / 4, 8)] {
            let mut seen = vec![0usize; rows * width];
            for_each_row(&mut seen, width, width, |row, out| out.iter_mut().for_each(|s| *s += row + 1));
            assert!(seen.chunks(width).enumerate().all(|(row, out)| out.iter().all(|&s| s == row + 1)));
        }
    }

    #[test]
    fn dot_and_axpy_match_scalar_loops_with_tails() {
        for n in [0, 1, 7, 8, 16, 17, 33, 64, 100] {
            let a: Vec<f64> = (0..n).map(|i| (i as f64 * 0.37).sin()).collect();
            let b: Vec<f64> = (0..n).map(|i| (i as f64 * 0.11).cos()).collect();
            let want: f64 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            assert!((row_dot(&a, &b) - want).abs() < 1e-12, "row_dot, n = {n}");
            let mut y = b.clone();
            axpy(0.5, &a, &mut y);
            for ((yi, ai), bi) in y.iter().zip(&a).zip(&b) {
                assert!((yi - (bi + 0.5 * ai)).abs() < 1e-15, "axpy, n = {n}");
            }
        }
    }

    #[test]
    fn scale_into_uninit_writes_the_whole_row() {
        for n in [0, 1, 17, 256] {
            let x: Vec<f32> = (0..n).map(|i| i as f32 - 3.0).collect();
            let mut slots = vec![MaybeUninit::new(f32::NAN); n];
            let row = scale_into_uninit(2.0, &x, &mut slots);
            assert_eq!(row.to_vec(), x.iter().map(|v| 2.0 * v).collect::<Vec<_>>());
        }
    }
}
