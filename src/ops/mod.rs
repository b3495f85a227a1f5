//! Floor 2: differentiable operations. One file per family, each op's forward beside its backward;
//! each public function records the op on a [`crate::tape::Tape`] and returns the result.

pub mod attention;
pub mod binary;
pub mod matmul;
pub mod norm;
pub mod shape;

pub use attention::causal_attention;
pub use binary::{add, div, mul, sub};
pub use matmul::{bmm, matmul};
pub use norm::{layer_norm, rms_norm};
pub use shape::{concat, narrow, reshape, split, transpose};
