//! Floor 0: loops over plain slices, with no knowledge of tensors or the tape.
//!
//! `float` defines the element type and its SIMD vector; `gemm` multiplies matrices.

pub mod float;
pub mod gemm;

pub use float::{Float, SimdVec};
pub use gemm::{gemm, gemm_batched, MatRef};
