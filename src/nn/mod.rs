//! Floor 3: the feed-forward layers that the PEER paper compares, built from the ops of floor 2.
//!
//! Every layer here maps token activations `[tokens, d_model]` to `[tokens, d_model]` and is a drop-in for
//! the feed-forward block of a transformer (the model on floor 4 picks one per block from its config):
//! - [`DenseFfw`]: the GPT-2 MLP, the dense baseline;
//! - [`Moe`]: a mixture of a few large dense experts, token-choice (Switch/GShard) or expert-choice routing;
//! - [`Pkm`]: product-key memory (Lample et al. 2019), a huge table of value vectors read by product keys;
//! - [`Peer`]: parameter-efficient expert retrieval (He 2024), product keys over a million single-neuron
//!   experts.
//!
//! PKM and PEER find their keys with the same [`ProductKeyRouter`]. Layers own their [`Param`]s and enter
//! them into the tape on each forward pass; [`Module`] lists them for the optimizer and checkpoints (which
//! key them by their stable `name`). A sparse layer's [`UsageTracker`] counts which experts or memory slots
//! it selects ([`ExpertUsage`]), the paper's measure of how much of the pool is used.

pub mod attention;
pub mod ffw;
pub mod layer_norm;
pub mod linear;
pub mod moe;
pub mod peer;
pub mod pkm;
pub mod product_key_router;
pub mod usage;

pub use ffw::{DenseFfw, DenseFfwConfig};
pub use linear::Linear;
pub use moe::{Moe, MoeConfig, Routing};
pub use peer::{Peer, PeerConfig};
pub use pkm::{Pkm, PkmConfig};
pub use product_key_router::{Gate, ProductKeyConfig, ProductKeyRouter};
pub use usage::{ExpertUsage, UsageTracker};

use crate::kernels::Float;
use crate::ops::BatchNormStats;
use crate::param::Param;
use crate::tape::Var;

/// Anything that owns parameters: the optimizer updates them, checkpoints save them by name.
pub trait Module<T: Float> {
    fn params(&self) -> Vec<&Param<T>>;
    fn params_mut(&mut self) -> Vec<&mut Param<T>>;

    /// Batch-norm running statistics, by layer name: state that is not trained but that evaluation uses,
    /// so checkpoints must keep it. Most layers have none.
    fn batch_norm_stats(&self) -> Vec<(String, &BatchNormStats<T>)> {
        Vec::new()
    }

    fn batch_norm_stats_mut(&mut self) -> Vec<(String, &mut BatchNormStats<T>)> {
        Vec::new()
    }
}

/// What a feed-forward layer returns: its output `[tokens, d_model]` and, for layers trained with an
/// auxiliary objective (token-choice MoE's load balancing), that loss already multiplied by its weight,
/// to be added to the language-model loss.
pub struct FfwOut<T: Float> {
    pub y: Var<T>,
    pub aux_loss: Option<Var<T>>,
}
