//! Floor 0: loops over plain slices, with no knowledge of tensors or the tape.
//!
//! `float` defines the element type and its SIMD vector; `gemm` multiplies matrices (`sgemm`: the f32
//! kernel of our own it uses where that is faster than `matrixmultiply`); `vector` holds the
//! elementwise, reduction and softmax-row loops and the single-row helpers (dot, axpy, fixed-order partial
//! sums) the other kernels share; `gelu` is the activation, written once for ops and kernels; `norm` holds
//! the layer-norm and RMS-norm row loops; `topk` selects the best entries of rows; `row_groups` groups sparse
//! table reads by row; `peer` runs the fused PEER expert loops (`peer_reference`: the same sums, token by
//! token); `flop_count` tallies the arithmetic they all execute; `parallel` is rayon, or its sequential
//! stand-in without feature `parallel`.
//!
//! Modules that programs built on the crate use are public (the benches time `gemm` and `vector`, the tests
//! check `topk` and `flop_count`, the command-line tool keeps freed buffers and asks for the thread count);
//! the rest are the crate's own.

pub mod flop_count;
pub mod gemm;
pub mod memory;
pub mod parallel;
pub mod topk;
pub mod vector;

pub(crate) mod float;
pub(crate) mod gelu;
pub(crate) mod norm;
pub(crate) mod peer;
pub(crate) mod row_groups;
// Only where it is used: x86-64 with AVX2 and FMA (see `float.rs`); elsewhere all of GEMM is `matrixmultiply`.
#[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
pub(crate) mod sgemm;

// Equation 3 token by token: reading material, and what `peer`'s tests compare the fast loops against.
#[cfg(test)]
mod peer_reference;

pub use float::{Arith, Float, Lanes, SimdVec};
pub use gemm::{gemm, gemm_batched, product, MatRef};
pub use peer::ExpertActivation;
pub use row_groups::RowGroups;
pub use topk::topk_rows;
