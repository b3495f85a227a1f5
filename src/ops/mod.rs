//! Floor 2: differentiable operations. One file per family, each op's forward beside its backward;
//! each public function records the op on a [`crate::tape::Tape`] and returns the result.

pub mod binary;
pub mod cross_entropy;
pub mod dropout;
pub mod reduce;
pub mod scatter;
pub mod softmax;
pub mod unary;

pub use binary::{add, div, mul, sub};
pub use cross_entropy::cross_entropy;
pub use dropout::dropout;
pub use reduce::{max_last, mean, mean_last, sum, sum_last};
pub use scatter::scatter_rows;
pub use softmax::{log_softmax, softmax};
pub use unary::{add_scalar, exp, gelu, log, mul_scalar, neg, relu, sigmoid, sqrt, tanh, Gelu};
