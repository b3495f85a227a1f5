//! Floor 2: differentiable operations. One file per family, each op's forward beside its backward;
//! each public function records the op on a [`crate::tape::Tape`] and returns the result.

pub mod binary;
pub mod scatter;

pub use binary::{add, div, mul, sub};
pub use scatter::scatter_rows;
