//! f32 matrix multiplication of our own: `C = A·B (+ C)` with each block of an operand packed once and
//! shared by all threads (issue 16).
//!
//! The loops are the textbook blocked GEMM (Goto and van de Geijn, *Anatomy of high-performance matrix
//! multiplication*, 2008), as in `matrixmultiply`, with the threads shared out differently:
//!
//! ```text
//! for each block of NC columns of B and C
//!   for each span of up to 8 depth blocks (KC rows of B each), in order
//!     pack B[span, NC] into panels of NR columns           (B~: packed by all threads together, shared)
//!     for each block of MC rows of A and C, one task each   (in parallel)
//!       for each depth block of the span, in order
//!         pack A[MC, KC] into panels of MR rows             (A~: the task's own)
//!         for each B panel, for each A panel: C tile (MR×NR) += A panel · B panel
//! ```
//!
//! What differs from `matrixmultiply` (which `gemm.rs` keeps for f64, for CPUs without AVX2 and for the
//! products where this file is not faster, see [`multiply`]) is where packing time goes, the part of a
//! product that does no arithmetic:
//! - B~ is packed once by all threads together, then read by all of them. A split of C into one
//!   `matrixmultiply` call per thread packs the shared operand once per thread.
//! - An operand stored with its depth contiguous (the activations of `x·W`, any `Wᵀ`) is packed with
//!   8×8 register transposes instead of element by element (where the panel is a multiple of 8 wide:
//!   every B panel, and A's with the AVX-512 tile; AVX2's 6-row A panels are packed element by element).
//!
//! Every element of C is a sum over its KC-blocks in order, each block's products accumulated by fused
//! multiply-adds from zero and then added to C: the order of `matrixmultiply`'s kernels, so the two give
//! the same bits where both use FMA, and no element's order depends on how rows are shared out.

use std::cell::RefCell;
use std::ops::Range;
use std::thread::LocalKey;

use super::gemm::split_multiply;
use super::parallel::prelude::*;
use super::MatRef;

/// Depth of a block, as in `matrixmultiply` (its cut decides the order of the sums, kept the same).
const KC: usize = 256;
/// Depth packed into B~ at a time, in whole depth blocks: B~ is at most SPAN·NC floats (8 MiB), and a
/// task runs its rows through all of a span's depth blocks without waiting for the other threads.
const SPAN: usize = 8 * KC;
/// Columns of B per block.
const NC: usize = 1024;
/// Rows of A per task: A~ is MC·KC floats (96 KiB, in L2). A multiple of both MRs.
const MC: usize = 96;
/// Columns of a tile: one vector.
const NR: usize = LANES;
/// Rows of a tile: as many accumulator vectors as the registers hold with room for B and a broadcast
/// (32 AVX-512 registers; with AVX2 a 16-lane vector takes two of the 16 registers).
#[cfg(target_feature = "avx512f")]
const MR: usize = 16;
#[cfg(not(target_feature = "avx512f"))]
const MR: usize = 6;
/// The widest C that [`multiply`] gives to this file's loops (the measured crossover lies between the
/// 256 and the 768 columns of the tiny GPT's products).
const OURS_MAX_COLS: usize = 512;
/// Below this many flops (2·m·n·k) a product runs on the calling thread.
const MIN_PARALLEL_FLOPS: usize = 8 << 20;

type Vector = wide::f32x16;
const LANES: usize = 16;

/// `C = a·b`, or `C += a·b` when `accumulate`, for the row-major m×n `c`; the inner dimension is not 0.
///
/// Ours when A is read with its depth contiguous and C is narrow: packing A is then a transpose, which
/// ours does in registers and `matrixmultiply` element by element, and few columns share the cost of each
/// packed row. `matrixmultiply` in blocks otherwise, where the two were level or ours behind
/// (docs/PERFORMANCE.md, session 11). Both give the same bits.
///
/// # Safety
/// `c` points to m×n floats that nothing else reads or writes meanwhile and that do not overlap `a` or
/// `b`; they must be initialised when `accumulate` is set (otherwise every element is written unread).
pub(crate) unsafe fn multiply(a: MatRef<f32>, b: MatRef<f32>, c: *mut f32, accumulate: bool) {
    let depth_contiguous = a.strides().1 == 1 && a.dims().1 > 1;
    // SAFETY: forwarded from this function's contract, which both share.
    unsafe {
        if depth_contiguous && b.dims().1 <= OURS_MAX_COLS {
            packed_multiply(a, b, c, accumulate)
        } else {
            split_multiply(a, b, c, accumulate)
        }
    }
}

/// [`multiply`] by this file's loops, for any layout of A and B.
///
/// # Safety
/// As [`multiply`].
unsafe fn packed_multiply(a: MatRef<f32>, b: MatRef<f32>, c: *mut f32, accumulate: bool) {
    let ((m, k), (_, n)) = (a.dims(), b.dims());
    debug_assert!(k > 0);
    if m == 0 || n == 0 {
        return;
    }
    let min_len = if 2 * m * n * k >= MIN_PARALLEL_FLOPS { 1 } else { usize::MAX };
    // Row blocks of at most MC rows, an even number of them (when there is more than one) so that two
    // cores share them evenly.
    let blocks = m.div_ceil(MC).next_multiple_of(2);
    let mc = m.div_ceil(blocks).next_multiple_of(MR);
    let out = SharedOut(c);
    with_buffer(&B_PACK, |b_buffer| {
        for col0 in (0..n).step_by(NC) {
            let cols = col0..n.min(col0 + NC);
            for span0 in (0..k).step_by(SPAN) {
                let span = span0..k.min(span0 + SPAN);
                let b_pack = pack_b(b, cols.clone(), span.clone(), b_buffer, min_len);
                (0..m.div_ceil(mc)).into_par_iter().with_min_len(min_len).for_each(|block| {
                    let rows = block * mc..m.min((block + 1) * mc);
                    let block = Block { rows, cols: cols.clone(), ldc: n, accumulate };
                    // SAFETY: the tasks' row ranges are disjoint and inside the m×n `c` the caller gave us.
                    unsafe { block_product(a, b_pack, span.clone(), &block, out.get()) }
                });
            }
        }
    })
}

/// B~ for columns `cols` over depths `span`: one panel of NR columns (the last padded with zeros) after
/// another, each the whole span deep; packed by all threads together.
fn pack_b<'p>(
    b: MatRef<f32>,
    cols: Range<usize>,
    span: Range<usize>,
    buffer: &'p mut Vec<Vector>,
    min_len: usize,
) -> &'p [f32] {
    let b_pack = aligned(buffer, cols.len().next_multiple_of(NR) * span.len());
    b_pack.par_chunks_mut(NR * span.len()).with_min_len(min_len).enumerate().for_each(|(p, panel)| {
        pack_panel::<NR>(b.t(), cols.start + p * NR, cols.end, span.start, panel);
    });
    b_pack
}

/// The part of C one task writes: its rows, and the columns of the current column block.
struct Block {
    rows: Range<usize>,
    cols: Range<usize>,
    /// Row stride of C.
    ldc: usize,
    /// Whether the product adds to C (otherwise its first depth block overwrites C).
    accumulate: bool,
}

/// One task: the block's rows of A through every depth block of `span` in order, each packed into A~
/// and multiplied by the matching rows of every B~ panel.
///
/// # Safety
/// `c` points to a row-major matrix with row stride `block.ldc` that holds the block, which no other
/// thread touches meanwhile.
unsafe fn block_product(a: MatRef<f32>, b_pack: &[f32], span: Range<usize>, block: &Block, c: *mut f32) {
    with_buffer(&A_PACK, |a_buffer| {
        let rows = &block.rows;
        for depth0 in span.clone().step_by(KC) {
            let depth = KC.min(span.end - depth0);
            let a_pack = aligned(a_buffer, rows.len().next_multiple_of(MR) * depth);
            for (p, panel) in a_pack.chunks_mut(MR * depth).enumerate() {
                pack_panel::<MR>(a, rows.start + p * MR, rows.end, depth0, panel);
            }
            let b_rows = (depth0 - span.start) * NR..(depth0 - span.start + depth) * NR;
            let b_panels = b_pack.chunks_exact(NR * span.len()).map(|panel| &panel[b_rows.clone()]);
            let add = block.accumulate || depth0 > 0;
            // SAFETY: forwarded from this function's contract.
            unsafe { depth_block_product(a_pack, b_panels, block, add, c) }
        }
    })
}

thread_local! {
    /// Packing buffers kept by each thread between products, so that a step's hundreds of products do
    /// not allocate and zero them again: B~ of the products the thread starts (at most SPAN·NC floats,
    /// SPAN·OURS_MAX_COLS through [`multiply`]), A~ of the row blocks it runs (MC·KC).
    static B_PACK: RefCell<Vec<Vector>> = const { RefCell::new(Vec::new()) };
    static A_PACK: RefCell<Vec<Vector>> = const { RefCell::new(Vec::new()) };
}

/// `f` with this thread's `buffer`, or with a new one when the thread's is in use: a thread that waits
/// for its product's tasks may run another product's task meanwhile (rayon's work stealing).
fn with_buffer<R>(buffer: &'static LocalKey<RefCell<Vec<Vector>>>, f: impl FnOnce(&mut Vec<Vector>) -> R) -> R {
    buffer.with(|cell| match cell.try_borrow_mut() {
        Ok(mut kept) => f(&mut kept),
        Err(_) => f(&mut Vec::new()),
    })
}

/// The first `len` floats of `buffer`, grown to hold them. Packed panels start on a cache line (a vector
/// is 64-byte aligned), so the kernel's loads of B rows never straddle two lines.
fn aligned(buffer: &mut Vec<Vector>, len: usize) -> &mut [f32] {
    buffer.resize(len.div_ceil(LANES), Vector::ZERO);
    &mut bytemuck::cast_slice_mut(buffer)[..len]
}

/// Every tile of one block at one depth block: `a_pack` holds its rows' panels, `b_panels` the column
/// panels of B~ at that depth; `add` adds the tiles to C instead of overwriting it.
///
/// # Safety
/// As [`block_product`].
unsafe fn depth_block_product<'b>(
    a_pack: &[f32],
    b_panels: impl Iterator<Item = &'b [f32]>,
    block: &Block,
    add: bool,
    c: *mut f32,
) {
    let depth = a_pack.len() / block.rows.len().next_multiple_of(MR);
    for (jp, b_panel) in b_panels.enumerate() {
        let col = block.cols.start + jp * NR;
        let cols = NR.min(block.cols.end - col);
        for (ip, a_panel) in a_pack.chunks_exact(MR * depth).enumerate() {
            let row = block.rows.start + ip * MR;
            let rows = MR.min(block.rows.end - row);
            let tile = tile_product(a_panel, b_panel);
            // SAFETY: rows × cols from (row, col) lie inside the block (both clipped to its edges).
            unsafe { store_tile(&tile, c.add(row * block.ldc + col), block.ldc, rows, cols, add) }
        }
    }
}

/// The MR×NR tile of one A panel times one B panel: for each depth, each row's A value broadcast times
/// the row of B, fused into that row's accumulator.
#[inline(always)]
fn tile_product(a_panel: &[f32], b_panel: &[f32]) -> [Vector; MR] {
    let mut acc = [Vector::ZERO; MR];
    for (a_col, b_row) in a_panel.chunks_exact(MR).zip(b_panel.chunks_exact(NR)) {
        let b_row = Vector::new(b_row.try_into().expect("a B panel row holds NR floats"));
        for (acc_row, &a_value) in acc.iter_mut().zip(a_col) {
            *acc_row = Vector::splat(a_value).mul_add(b_row, *acc_row);
        }
    }
    acc
}

/// Writes (or adds) the top-left `rows` × `cols` of a tile into C at `corner`.
///
/// # Safety
/// `corner` and the `rows` × `cols` elements from it with row stride `ldc` are valid for reads and writes
/// by this thread alone.
unsafe fn store_tile(tile: &[Vector; MR], corner: *mut f32, ldc: usize, rows: usize, cols: usize, add: bool) {
    for (i, acc_row) in tile.iter().enumerate().take(rows) {
        let dst = corner.wrapping_add(i * ldc);
        if cols == NR {
            // SAFETY: NR elements from `dst` are in the tile's row (caller's contract); unaligned access.
            unsafe {
                let dst = dst.cast::<[f32; NR]>();
                let value = if add { Vector::new(dst.read_unaligned()) + *acc_row } else { *acc_row };
                dst.write_unaligned(value.to_array());
            }
        } else {
            let lanes = acc_row.as_array();
            for (j, &value) in lanes.iter().enumerate().take(cols) {
                // SAFETY: j < cols, inside the tile's row.
                unsafe { *dst.add(j) = if add { *dst.add(j) + value } else { value } };
            }
        }
    }
}

/// Packs rows `first..first + R` of `x` (rows past `end` as zeros), depth `depth0..depth0 + d`, into
/// `panel` (d·R floats): `panel[p·R + i] = x[first + i, depth0 + p]`.
///
/// `x` is A (rows of C) or Bᵀ (columns of C). When its rows are contiguous the panel is R-float copies;
/// when its depth is contiguous, 8×8 blocks are transposed in registers.
fn pack_panel<const R: usize>(x: MatRef<f32>, first: usize, end: usize, depth0: usize, panel: &mut [f32]) {
    let valid = R.min(end - first);
    let depth = panel.len() / R;
    let (rs, cs) = x.strides();
    let data = x.data();
    if rs == 1 {
        // Column p of the panel is `valid` contiguous floats of x's storage.
        for (p, dst) in panel.chunks_exact_mut(R).enumerate() {
            let start = (depth0 + p) * cs as usize + first;
            if valid == R {
                // A copy of constant length: a few vector moves, not a call to `memcpy`.
                let src: &[f32; R] = data[start..start + R].try_into().expect("R floats");
                dst.copy_from_slice(src);
            } else {
                dst[..valid].copy_from_slice(&data[start..start + valid]);
                dst[valid..].fill(0.0);
            }
        }
        return;
    }
    let row_len = rs as usize;
    let row = |i: usize| &data[(first + i) * row_len + depth0..][..depth];
    let whole = if R % 8 == 0 { valid / 8 * 8 } else { 0 };
    let whole_depth = depth / 8 * 8;
    for i0 in (0..whole).step_by(8) {
        for p0 in (0..whole_depth).step_by(8) {
            let block = std::array::from_fn(|i| load8(&row(i0 + i)[p0..]));
            for (p, column) in wide::u32x8::transpose(block).iter().enumerate() {
                let dst = &mut panel[(p0 + p) * R + i0..][..8];
                dst.copy_from_slice(bytemuck::cast_slice(column.as_array()));
            }
        }
    }
    // What the 8×8 blocks left: the last depths of whole rows, then the rows past the last whole 8.
    for i in 0..whole {
        for p in whole_depth..depth {
            panel[p * R + i] = row(i)[p];
        }
    }
    for i in whole..R {
        for p in 0..depth {
            panel[p * R + i] = if i < valid { row(i)[p] } else { 0.0 };
        }
    }
}

/// The first 8 floats of `src`, as bits.
#[inline(always)]
fn load8(src: &[f32]) -> wide::u32x8 {
    let bits: &[u32] = bytemuck::cast_slice(&src[..8]);
    wide::u32x8::new(bits.try_into().expect("8 floats"))
}

/// A raw pointer that rayon tasks may share; each task writes a disjoint block of rows through it.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);
// SAFETY: only `block_product` dereferences it, and `multiply` gives every task disjoint rows of C.
unsafe impl Send for SharedOut {}
// SAFETY: as above.
unsafe impl Sync for SharedOut {}

impl SharedOut {
    fn get(self) -> *mut f32 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn random(len: usize, seed: u64) -> Vec<f32> {
        let mut rng = Rng::new(seed);
        (0..len).map(|_| rng.normal() as f32).collect()
    }

    /// The four ways to hold a·b: each operand stored as it is read, or stored transposed.
    fn operands<'a>(
        a: &'a [f32],
        at: &'a [f32],
        b: &'a [f32],
        bt: &'a [f32],
        (m, k, n): (usize, usize, usize),
    ) -> [(MatRef<'a, f32>, MatRef<'a, f32>); 4] {
        let (a, at) = (MatRef::new(a, m, k), MatRef::new(at, k, m).t());
        let (b, bt) = (MatRef::new(b, k, n), MatRef::new(bt, n, k).t());
        [(a, b), (at, b), (a, bt), (at, bt)]
    }

    fn transpose(x: &[f32], rows: usize, cols: usize) -> Vec<f32> {
        (0..cols).flat_map(|j| (0..rows).map(move |i| x[i * cols + j])).collect()
    }

    /// `c0 + a·b` (or `a·b` over a NaN-filled C when not accumulating) by `run`.
    fn run_product(
        run: unsafe fn(MatRef<f32>, MatRef<f32>, *mut f32, bool),
        (a, b): (MatRef<f32>, MatRef<f32>),
        c0: &[f32],
        accumulate: bool,
    ) -> Vec<f32> {
        let mut c = if accumulate { c0.to_vec() } else { vec![f32::NAN; c0.len()] };
        // SAFETY: `c` is our own m×n buffer, initialised.
        unsafe { run(a, b, c.as_mut_ptr(), accumulate) };
        c
    }

    /// Shapes that cut into several depth, column and row blocks, with ragged edges everywhere.
    const SHAPES: [(usize, usize, usize); 8] = [
        (1, 1, 1),
        (5, 7, 3),
        (17, 9, 33),
        (200, 300, 70),
        (97, 513, 1041),
        (300, 40, 17),
        (2, 600, 1100),
        (33, 2100, 40),
    ];

    #[test]
    fn matches_an_f64_product_for_every_layout() {
        for (s, &(m, k, n)) in SHAPES.iter().enumerate() {
            let (a, b, c0) = (random(m * k, 1 + s as u64), random(k * n, 20 + s as u64), random(m * n, 40));
            let (at, bt) = (transpose(&a, m, k), transpose(&b, k, n));
            for (layout, pair) in operands(&a, &at, &b, &bt, (m, k, n)).into_iter().enumerate() {
                for accumulate in [false, true] {
                    let got = run_product(packed_multiply, pair, &c0, accumulate);
                    for i in 0..m {
                        for j in 0..n {
                            let dot: f64 = (0..k).map(|p| a[i * k + p] as f64 * b[p * n + j] as f64).sum();
                            let want = dot + if accumulate { c0[i * n + j] as f64 } else { 0.0 };
                            let scale: f64 = (0..k).map(|p| (a[i * k + p] * b[p * n + j]).abs() as f64).sum();
                            let err = (got[i * n + j] as f64 - want).abs();
                            assert!(
                                err <= 1e-6 * (scale + 1.0),
                                "{m}x{k}x{n} layout {layout} accumulate {accumulate} at ({i}, {j}): {} vs {want}",
                                got[i * n + j]
                            );
                        }
                    }
                }
            }
        }
    }

    /// Summed in the order of `matrixmultiply`'s FMA kernels: the same bits, so switching between the two
    /// changes no result (the study's runs were trained on `matrixmultiply`).
    #[test]
    fn same_bits_as_matrixmultiply() {
        for (s, &(m, k, n)) in SHAPES.iter().enumerate() {
            let (a, b, c0) = (random(m * k, 60 + s as u64), random(k * n, 80 + s as u64), random(m * n, 99));
            let (at, bt) = (transpose(&a, m, k), transpose(&b, k, n));
            for pair in operands(&a, &at, &b, &bt, (m, k, n)) {
                for accumulate in [false, true] {
                    let ours = run_product(packed_multiply, pair, &c0, accumulate);
                    let theirs = run_product(split_multiply, pair, &c0, accumulate);
                    assert!(ours.iter().zip(&theirs).all(|(x, y)| x.to_bits() == y.to_bits()), "{m}x{k}x{n}");
                }
            }
        }
    }

    #[cfg(feature = "parallel")]
    #[test]
    fn bit_identical_on_one_and_two_threads() {
        let (m, k, n) = (400, 300, 1100);
        let (a, b) = (random(m * k, 7), random(k * n, 8));
        let pair = (MatRef::new(&a, m, k), MatRef::new(&b, k, n));
        let on = |threads| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| run_product(packed_multiply, pair, &vec![0.0; m * n], false))
        };
        let (one, two) = (on(1), on(2));
        assert!(2 * m * n * k >= MIN_PARALLEL_FLOPS);
        assert!(one.iter().zip(&two).all(|(x, y)| x.to_bits() == y.to_bits()));
    }
}
