//! Floor 0: loops over plain slices, with no knowledge of tensors or the tape.
//!
//! `float` defines the element type and its SIMD vector; `gemm` multiplies matrices; `vector` holds the
//! elementwise, reduction and softmax-row loops.

pub mod float;
pub mod gemm;
pub mod vector;

pub use float::{Float, SimdVec};
pub use gemm::{gemm, MatRef};
