//! Floor 2: differentiable operations. One file per family, each op's forward beside its backward;
//! each public function records the op on a [`crate::tape::Tape`] and returns the result.
//!
//! The sparse retrieval ops of PEER: `gather` (embedding, PKM's weighted read), `topk`, `product_keys`
//! (product-key top-k), `batch_norm` (of the queries) and `peer_experts` (the fused expert mixture).
//!
//! Ops are safe code only: the loops that write uninitialised memory or use raw pointers live in `kernels/`,
//! each unsafe block there with its SAFETY argument.

#![forbid(unsafe_code)]

pub mod attention;
pub mod batch_norm;
pub mod binary;
pub mod cross_entropy;
pub mod dropout;
pub mod gather;
pub mod linear;
pub mod matmul;
pub mod norm;
pub mod peer_experts;
pub mod product_keys;
pub mod reduce;
pub mod rotary;
pub mod scatter;
pub mod shape;
pub mod softmax;
pub mod topk;
pub mod unary;

pub use crate::kernels::ExpertActivation;
pub use attention::{causal_attention, causal_self_attention};
pub use batch_norm::{batch_norm, BatchNormStats};
pub use binary::{add, div, mul, sub};
pub use cross_entropy::cross_entropy;
pub use dropout::dropout;
pub use gather::{embedding, weighted_gather};
pub use linear::linear;
pub use matmul::{bmm, matmul};
pub use norm::{layer_norm, rms_norm};
pub use peer_experts::peer_experts;
pub use product_keys::product_key_topk;
pub use reduce::{max_last, mean, mean_last, sum, sum_last};
pub use rotary::rotary;
pub use scatter::scatter_rows;
pub use shape::{concat, narrow, reshape, split, transpose};
pub use softmax::{log_softmax, softmax};
pub use topk::{gather_last, topk};
pub use unary::{add_scalar, exp, gelu, log, mul_scalar, neg, relu, sigmoid, sqrt, tanh, Gelu};
