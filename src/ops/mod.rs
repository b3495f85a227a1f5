//! Floor 2: differentiable operations. One file per family, each op's forward beside its backward;
//! each public function records the op on a [`crate::tape::Tape`] and returns the result.
//!
//! The sparse retrieval ops of PEER: `gather` (embedding, PKM's weighted read), `topk`, `product_keys`
//! (product-key top-k), `batch_norm` (of the queries) and `peer_experts` (the fused expert mixture).

pub mod batch_norm;
pub mod binary;
pub mod gather;
pub mod peer_experts;
pub mod product_keys;
pub mod topk;

pub use crate::kernels::ExpertActivation;
pub use batch_norm::{batch_norm, BatchNormStats};
pub use binary::{add, div, mul, sub};
pub use gather::{embedding, weighted_gather};
pub use peer_experts::peer_experts;
pub use product_keys::product_key_topk;
pub use topk::{gather_last, topk};
