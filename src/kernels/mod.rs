//! Floor 0: loops over plain slices, with no knowledge of tensors or the tape.
//!
//! `float` defines the element type and its SIMD vector; `gemm` multiplies matrices; `vector` holds the
//! elementwise, reduction and softmax-row loops and the single-row helpers (dot, axpy, fixed-order partial
//! sums) the other kernels share; `gelu` is the activation, written once for ops and kernels; `topk` selects the best entries of rows; `row_groups`
//! groups sparse table reads by row; `peer` runs the fused PEER expert loops; `flop_count` tallies the
//! arithmetic they all execute; `parallel` is rayon, or its sequential stand-in without feature `parallel`.

pub mod float;
pub mod flop_count;
pub(crate) mod gelu;
pub mod gemm;
pub mod memory;
pub mod parallel;
pub mod peer;
pub mod peer_reference;
pub mod row_groups;
pub mod topk;
pub mod vector;

pub use float::{Arith, Float, Lanes, SimdVec};
pub use gemm::{gemm, gemm_batched, product, MatRef};
pub use peer::ExpertActivation;
pub use row_groups::RowGroups;
pub use topk::topk_rows;
