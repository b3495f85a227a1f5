//! Matrix multiplication: `C = A·B (+ C)` on row-major buffers, either operand optionally transposed,
//! spread over the cores with rayon.
//!
//! [`gemm`], [`product`] and [`gemm_batched`] check shapes and hand the product to the element type's
//! [`Float::multiply`]: for f32 on a CPU with AVX2 and FMA that is the crate's own kernel where it is
//! faster (`sgemm.rs`, when A's depth is contiguous), and everywhere else `matrixmultiply` in blocks, as
//! below. The two give the same bits.
//!
//! A transposed operand costs nothing: `matrixmultiply` takes a row stride and a column stride for each
//! matrix, and a transpose is the same buffer with the two strides swapped.
//!
//! Threads, on the `matrixmultiply` path: `matrixmultiply` itself runs single-threaded; [`gemm`] (into a
//! given C) and [`product`] (into a new one) cut C into a few blocks of rows (or of columns, when C is
//! wider than tall) and rayon runs one `matrixmultiply` call per block. Every element of C is computed by exactly one call, and the blocks
//! depend only on the shape, never on the thread count, so results are bit-identical on any number of
//! threads. Products too small to pay for a task run on the calling thread without touching rayon. The
//! split follows the longer side of C because `matrixmultiply` packs the operand that is not split once per
//! block: a row split re-packs B in every block, a column split re-packs A, and the longer side gives the
//! cheaper re-pack.

use std::ops::Range;

use crate::kernels::parallel::prelude::*;

use super::{flop_count, memory, Float};

/// Below this many flops (2·m·n·k) a block is not worth a rayon task (~0.03 ms of one core).
const MIN_TASK_FLOPS: usize = 4 << 20;
/// At most this many blocks per product: one per core of a 2-core machine. More blocks are slower
/// (docs/PERFORMANCE.md): every extra block re-packs the shared operand and shrinks the panels
/// matrixmultiply's kernel streams through.
const MAX_BLOCKS: usize = 2;
/// Block edges fall on multiples of this, so blocks hold whole micro-kernel tiles.
const BLOCK_ALIGN: usize = 32;

/// One operand: a row-major buffer and whether to read it transposed.
#[derive(Clone, Copy)]
pub struct MatRef<'a, T> {
    data: &'a [T],
    /// Rows and columns as stored.
    rows: usize,
    cols: usize,
    transposed: bool,
}

impl<'a, T: Float> MatRef<'a, T> {
    /// A row-major `rows`×`cols` matrix over `data` (panics if the length disagrees). The fields are
    /// private, so every `MatRef` went through this check, which the raw-pointer GEMM relies on.
    pub fn new(data: &'a [T], rows: usize, cols: usize) -> Self {
        let len = rows.checked_mul(cols);
        assert!(len == Some(data.len()), "MatRef: buffer of {} for {rows}x{cols}", data.len());
        MatRef { data, rows, cols, transposed: false }
    }

    /// The same buffer read transposed (strides swapped, nothing copied).
    pub fn t(self) -> Self {
        MatRef { transposed: !self.transposed, ..self }
    }

    /// Logical (rows, cols) after the optional transpose.
    pub fn dims(&self) -> (usize, usize) {
        if self.transposed {
            (self.cols, self.rows)
        } else {
            (self.rows, self.cols)
        }
    }

    /// Logical (row stride, column stride) in elements.
    pub(super) fn strides(&self) -> (isize, isize) {
        if self.transposed {
            (1, self.cols as isize)
        } else {
            (self.cols as isize, 1)
        }
    }

    /// The buffer as stored.
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
    pub(super) fn data(&self) -> &'a [T] {
        self.data
    }

    /// Pointer to logical element (row, col); in bounds for row < rows and col < cols (logical).
    fn ptr_at(&self, row: usize, col: usize) -> *const T {
        let (rs, cs) = self.strides();
        self.data.as_ptr().wrapping_offset(row as isize * rs + col as isize * cs)
    }
}

/// A raw pointer that rayon tasks may share; each task writes a disjoint block through it.
#[derive(Clone, Copy)]
struct SharedOut<T>(*mut T);
// SAFETY: the pointer is only dereferenced by `block_product`, whose callers give every task a disjoint
// block of C, so no element is written by two threads and none is read while another thread writes it.
unsafe impl<T: Send> Send for SharedOut<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Sync for SharedOut<T> {}

impl<T> SharedOut<T> {
    fn get(self) -> *mut T {
        self.0
    }
}

/// `c = a·b`, or `c += a·b` when `accumulate`; `c` is row-major m×n. Runs on several threads when the
/// product is large enough; the result does not depend on the number of threads.
pub fn gemm<T: Float>(a: MatRef<T>, b: MatRef<T>, c: &mut [T], accumulate: bool) {
    checked_gemm(a, b, c, accumulate, T::multiply);
}

/// [`gemm`] by `matrixmultiply` alone, whatever the element type and CPU: the portable path, public so
/// that `benches/gemm.rs` can hold the crate's own f32 GEMM against it.
pub fn gemm_with_matrixmultiply<T: Float>(a: MatRef<T>, b: MatRef<T>, c: &mut [T], accumulate: bool) {
    checked_gemm(a, b, c, accumulate, split_multiply);
}

/// [`gemm`]'s checks and its empty sum, then `multiply` (a function with [`split_multiply`]'s contract).
fn checked_gemm<T: Float>(
    a: MatRef<T>,
    b: MatRef<T>,
    c: &mut [T],
    accumulate: bool,
    multiply: unsafe fn(MatRef<T>, MatRef<T>, *mut T, bool),
) {
    let (m, n) = product_dims(a, b);
    assert_eq!(c.len(), m * n, "gemm: output buffer of {} for {m}x{n}", c.len());
    if a.dims().1 == 0 {
        // An empty sum: C is 0, or unchanged when accumulating.
        if !accumulate {
            c.fill(T::ZERO);
        }
        return;
    }
    flop_count::record(2 * m * n * a.dims().1);
    // SAFETY: `c` is an exclusive borrow of m×n initialised elements, distinct from `a` and `b`.
    unsafe { multiply(a, b, c.as_mut_ptr(), accumulate) }
}

/// `a·b` as a new row-major m×n vector. Unlike `gemm` into a zeroed buffer, it does not write the
/// buffer twice: when not accumulating, both GEMMs write every element of C without reading it
/// (`matrixmultiply`: "If β is zero, then C does not need to be initialized"; `sgemm.rs`: the first depth
/// block overwrites its tiles), so the buffer is never zeroed (see
/// [`super::memory::par_vec_uninit`] on what zeroing costs).
pub fn product<T: Float>(a: MatRef<T>, b: MatRef<T>) -> Vec<T> {
    let (m, n) = product_dims(a, b);
    if a.dims().1 == 0 {
        return vec![T::ZERO; m * n];
    }
    let mut c = memory::uninit_vec(m * n);
    flop_count::record(2 * m * n * a.dims().1);
    // SAFETY: `a` and `b` cover their buffers (checked by `MatRef::new`); the new buffer holds m×n
    // elements, distinct from both; not accumulating, `T::multiply` writes every element and reads none
    // (its contract), so all m×n elements are initialised when the length is set.
    unsafe {
        T::multiply(a, b, c.as_mut_ptr(), false);
        c.set_len(m * n);
    }
    c
}

/// (m, n) of `a·b`; panics, naming both shapes, if the inner dimensions differ or m·n overflows.
fn product_dims<T: Float>(a: MatRef<T>, b: MatRef<T>) -> (usize, usize) {
    let ((m, k), (k2, n)) = (a.dims(), b.dims());
    assert_eq!(k, k2, "gemm: inner dimensions differ ({m}x{k} · {k2}x{n})");
    assert!(m.checked_mul(n).is_some(), "gemm: a {m}x{n} product does not fit in memory");
    (m, n)
}

/// `C = a·b`, or `C += a·b` when `accumulate`, for the row-major m×n matrix at `c`: `matrixmultiply`
/// in blocks spread over the cores (f64; f32 where the crate's own GEMM does not run).
///
/// # Safety
/// `a` and `b` cover their buffers (every `MatRef` does); `c` points to m×n elements that nothing else
/// reads or writes meanwhile and that do not overlap `a` or `b`; they must be initialised when
/// `accumulate` is set. The inner dimension k is not 0 (callers handle the empty sum themselves).
pub(super) unsafe fn split_multiply<T: Float>(a: MatRef<T>, b: MatRef<T>, c: *mut T, accumulate: bool) {
    let beta = if accumulate { T::ONE } else { T::ZERO };
    let ((m, k), (_, n)) = (a.dims(), b.dims());
    if m == 0 || n == 0 {
        return;
    }
    let split_rows = m >= n;
    let blocks = blocks_along(if split_rows { m } else { n }, 2 * m * n * k);
    let out = SharedOut(c);
    let run = |block: Range<usize>| {
        let (rows, cols) = if split_rows { (block, 0..n) } else { (0..m, block) };
        // SAFETY: `rows` and `cols` lie inside m×n (from `blocks_along`), the blocks are disjoint, and
        // the caller hands us m×n elements of our own.
        unsafe { block_product(a, b, rows, cols, out.get(), n, beta) }
    };
    if blocks.len() == 1 {
        run(blocks[0].clone());
    } else {
        blocks.into_par_iter().for_each(run);
    }
}

/// Cuts `0..len` into aligned, nearly equal ranges, as many as the work pays for (at most [`MAX_BLOCKS`]).
fn blocks_along(len: usize, flops: usize) -> Vec<Range<usize>> {
    let by_work = flops / MIN_TASK_FLOPS;
    let by_size = len.div_ceil(BLOCK_ALIGN);
    let wanted = MAX_BLOCKS.min(by_work).min(by_size).max(1);
    let step = len.div_ceil(wanted).next_multiple_of(BLOCK_ALIGN).min(len);
    (0..len).step_by(step).map(|start| start..(start + step).min(len)).collect()
}

/// `C[rows, cols] = A[rows, :]·B[:, cols] + beta·C[rows, cols]` on one thread.
///
/// # Safety
/// `rows` ⊆ 0..m and `cols` ⊆ 0..n for `a`: m×k, `b`: k×n; `c` points to a row-major m×n buffer with row
/// stride `ldc` = n that does not alias `a` or `b`, and no other thread touches this block meanwhile.
unsafe fn block_product<T: Float>(
    a: MatRef<T>,
    b: MatRef<T>,
    rows: Range<usize>,
    cols: Range<usize>,
    c: *mut T,
    ldc: usize,
    beta: T,
) {
    let (_, k) = a.dims();
    let c_block = c.wrapping_add(rows.start * ldc + cols.start);
    // SAFETY: offsets stay inside each buffer by the caller's contract on `rows` and `cols`; strides are
    // those of the full matrices, so the sub-blocks address only their own elements.
    unsafe {
        T::gemm_raw(
            rows.len(),
            k,
            cols.len(),
            T::ONE,
            a.ptr_at(rows.start, 0),
            a.strides(),
            b.ptr_at(0, cols.start),
            b.strides(),
            beta,
            c_block,
            (ldc as isize, 1),
        );
    }
}

/// Entry `i` of a stack of `batch` equal matrices stored one after another in `m.data`.
fn batch_entry<T: Float>(m: MatRef<'_, T>, batch: usize, i: usize) -> MatRef<'_, T> {
    assert_eq!(m.rows % batch, 0, "gemm_batched: {} stored rows do not split into {batch} entries", m.rows);
    let rows = m.rows / batch;
    let size = rows * m.cols;
    MatRef { data: &m.data[i * size..(i + 1) * size], rows, cols: m.cols, transposed: m.transposed }
}

/// `batch` independent products `c[i] = a[i]·b[i]` (or `+=`), for `[B, m, k]·[B, k, n] → [B, m, n]`.
///
/// `a` and `b` describe the whole stacks: `MatRef::new(data, batch * rows, cols)`, with `.t()` meaning
/// "each entry read transposed". When one entry is too small to be worth splitting, groups of entries run
/// as rayon tasks; otherwise entries run in order and each [`gemm`] splits itself. Either way each entry
/// is one single-threaded product per block, so results do not depend on the thread count.
pub fn gemm_batched<T: Float>(batch: usize, a: MatRef<T>, b: MatRef<T>, c: &mut [T], accumulate: bool) {
    if batch == 0 {
        return;
    }
    let (m, k) = batch_entry(a, batch, 0).dims();
    let (_, n) = batch_entry(b, batch, 0).dims();
    assert_eq!(c.len(), batch * m * n, "gemm_batched: output of {} for {batch}x{m}x{n}", c.len());
    let one =
        |i: usize, c_entry: &mut [T]| gemm(batch_entry(a, batch, i), batch_entry(b, batch, i), c_entry, accumulate);
    let entry_flops = (2 * m * n * k).max(1);
    let per_task = MIN_TASK_FLOPS.div_ceil(entry_flops).max(1);
    if m * n == 0 || entry_flops >= MIN_TASK_FLOPS || per_task >= batch {
        c.chunks_mut((m * n).max(1)).enumerate().for_each(|(i, ce)| one(i, ce));
        return;
    }
    c.par_chunks_mut(per_task * m * n).enumerate().for_each(|(task, group)| {
        for (j, c_entry) in group.chunks_mut(m * n).enumerate() {
            one(task * per_task + j, c_entry);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn naive(a: &[f64], b: &[f64], m: usize, k: usize, n: usize) -> Vec<f64> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
            }
        }
        c
    }

    fn transpose(x: &[f64], rows: usize, cols: usize) -> Vec<f64> {
        (0..cols).flat_map(|j| (0..rows).map(move |i| x[i * cols + j])).collect()
    }

    fn random(len: usize, seed: u64) -> Vec<f64> {
        let mut rng = Rng::new(seed);
        (0..len).map(|_| rng.normal()).collect()
    }

    /// `multiply(a, b)` against the naive product, for all four transpose combinations.
    fn check_product(m: usize, k: usize, n: usize, multiply: impl Fn(MatRef<f64>, MatRef<f64>) -> Vec<f64>) {
        let a = random(m * k, 1);
        let b = random(k * n, 2);
        let want = naive(&a, &b, m, k, n);
        let (at, bt) = (transpose(&a, m, k), transpose(&b, k, n));
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            let am = if ta { MatRef::new(&at, k, m).t() } else { MatRef::new(&a, m, k) };
            let bm = if tb { MatRef::new(&bt, n, k).t() } else { MatRef::new(&b, k, n) };
            let got = multiply(am, bm);
            assert_eq!(got.len(), m * n);
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() < 1e-10 * (1.0 + k as f64), "{m}x{k}x{n} ta={ta} tb={tb}: {g} vs {w}");
            }
        }
    }

    /// `c = 1 + a·b` through `gemm`'s accumulate path.
    fn check_shape(m: usize, k: usize, n: usize) {
        check_product(m, k, n, |a, b| {
            let mut c = vec![1.0; m * n];
            gemm(a, b, &mut c, true);
            c.iter().map(|x| x - 1.0).collect()
        });
    }

    #[test]
    fn product_writes_every_element() {
        for &(m, k, n) in &[(5, 7, 3), (0, 3, 4), (3, 0, 4), (1, 33, 130), (401, 129, 297), (297, 129, 401)] {
            check_product(m, k, n, |a, b| {
                // The allocator most likely hands this freed NaN buffer to `product`, so an element it
                // left unwritten would hold NaN or other stale bits, not the product.
                drop(vec![f64::NAN; m * n]);
                product(a, b)
            });
        }
    }

    #[test]
    fn odd_shapes_and_transposes_match_naive() {
        for &(m, k, n) in &[(5, 7, 3), (1, 1, 1), (1, 33, 130), (130, 7, 1), (33, 130, 7), (130, 130, 33)] {
            check_shape(m, k, n);
        }
    }

    #[test]
    fn split_products_match_naive() {
        // Large enough to be cut into blocks along rows (m ≥ n) and along columns (n > m).
        check_shape(401, 129, 297);
        check_shape(297, 129, 401);
        assert!(blocks_along(401, 2 * 401 * 129 * 297).len() > 1);
    }

    #[test]
    fn blocks_cover_exactly_once() {
        for len in [1, 31, 32, 33, 100, 1000, 4097] {
            for flops in [0, MIN_TASK_FLOPS, 100 * MIN_TASK_FLOPS] {
                let blocks = blocks_along(len, flops);
                assert!(blocks.len() <= MAX_BLOCKS);
                assert_eq!(blocks[0].start, 0);
                assert_eq!(blocks.last().unwrap().end, len);
                assert!(blocks.windows(2).all(|w| w[0].end == w[1].start && w[0].start < w[0].end));
            }
        }
    }

    #[test]
    fn an_empty_sum_zeroes_c_or_leaves_it() {
        for accumulate in [false, true] {
            let mut c = vec![5.0f64; 6];
            gemm(MatRef::new(&[], 2, 0), MatRef::new(&[], 0, 3), &mut c, accumulate);
            assert_eq!(c, vec![if accumulate { 5.0 } else { 0.0 }; 6], "accumulate {accumulate}");
        }
    }

    #[test]
    fn a_product_too_small_for_a_task_is_one_block() {
        assert_eq!(blocks_along(4096, MIN_TASK_FLOPS - 1).len(), 1);
        assert_eq!(blocks_along(4096, 2 * MIN_TASK_FLOPS).len(), 2);
    }

    #[test]
    fn the_matrixmultiply_path_matches_naive_and_gives_gemms_bits() {
        check_product(33, 130, 7, |a, b| {
            let mut c = vec![f64::NAN; 33 * 7];
            gemm_with_matrixmultiply(a, b, &mut c, false);
            c
        });
        // In f32 `gemm` may take the crate's own kernel, which sums in matrixmultiply's order.
        let (m, k, n) = (64, 300, 48);
        let a: Vec<f32> = random(m * k, 5).iter().map(|&x| x as f32).collect();
        let b: Vec<f32> = random(k * n, 6).iter().map(|&x| x as f32).collect();
        let (mut ours, mut theirs) = (vec![0.5f32; m * n], vec![0.5f32; m * n]);
        gemm(MatRef::new(&a, m, k), MatRef::new(&b, k, n), &mut ours, true);
        gemm_with_matrixmultiply(MatRef::new(&a, m, k), MatRef::new(&b, k, n), &mut theirs, true);
        assert!(ours.iter().zip(&theirs).all(|(x, y)| x.to_bits() == y.to_bits()));
    }

    #[test]
    fn overwrite_ignores_old_contents() {
        let a = random(6, 3);
        let b = random(6, 4);
        let mut c = vec![f64::NAN; 4];
        gemm(MatRef::new(&a, 2, 3), MatRef::new(&b, 3, 2), &mut c, false);
        assert_eq!(c, naive(&a, &b, 2, 3, 2));
    }

    #[cfg(feature = "parallel")]
    fn on_threads<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
        rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap().install(f)
    }

    /// Without the `parallel` feature there is no pool: `f` runs on the calling thread.
    #[cfg(not(feature = "parallel"))]
    fn on_threads<R>(_threads: usize, f: impl FnOnce() -> R) -> R {
        f()
    }

    #[test]
    fn bit_identical_on_one_and_two_threads() {
        for &(m, k, n) in &[(300, 200, 150), (64, 300, 400)] {
            let a: Vec<f32> = random(m * k, 5).iter().map(|&x| x as f32).collect();
            let b: Vec<f32> = random(k * n, 6).iter().map(|&x| x as f32).collect();
            let product = || {
                let mut c = vec![0.0f32; m * n];
                gemm(MatRef::new(&a, m, k), MatRef::new(&b, k, n), &mut c, false);
                c
            };
            let one = on_threads(1, product);
            let two = on_threads(2, product);
            assert!(one.iter().zip(&two).all(|(x, y)| x.to_bits() == y.to_bits()));
        }
    }

    #[test]
    fn batched_matches_per_entry_and_threads() {
        // The last case has entries small enough to be grouped into tasks, and more of them than one group.
        assert!(MIN_TASK_FLOPS.div_ceil(2 * 64 * 64 * 32) < 40);
        for &(batch, m, k, n) in &[(3, 5, 7, 3), (40, 33, 17, 9), (2, 130, 130, 70), (40, 64, 64, 32)] {
            let a = random(batch * m * k, 7);
            let b = random(batch * n * k, 8);
            for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                let am = if ta { MatRef::new(&a, batch * k, m).t() } else { MatRef::new(&a, batch * m, k) };
                let bm = if tb { MatRef::new(&b, batch * n, k).t() } else { MatRef::new(&b, batch * k, n) };
                let run = || {
                    let mut c = vec![0.0; batch * m * n];
                    gemm_batched(batch, am, bm, &mut c, false);
                    c
                };
                let (one, two) = (on_threads(1, run), on_threads(2, run));
                assert!(one.iter().zip(&two).all(|(x, y)| x.to_bits() == y.to_bits()));
                for i in 0..batch {
                    let ea = batch_entry(am, batch, i);
                    let eb = batch_entry(bm, batch, i);
                    let dense_a = if ta { transpose(ea.data, k, m) } else { ea.data.to_vec() };
                    let dense_b = if tb { transpose(eb.data, n, k) } else { eb.data.to_vec() };
                    let want = naive(&dense_a, &dense_b, m, k, n);
                    for (got, w) in one[i * m * n..(i + 1) * m * n].iter().zip(&want) {
                        assert!((got - w).abs() < 1e-10 * (1.0 + k as f64));
                    }
                }
            }
        }
    }
}
