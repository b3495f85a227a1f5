//! Model configuration: the decoder's shape and which feed-forward layer each block uses.
//!
//! A config is a JSON file (see `configs/`); every field has a documented default, so a file names only
//! what it changes. [`ModelConfig::validate`] refuses an impossible config with a message naming the
//! field, before any memory is allocated.
//!
//! The paper's PEER models replace the feed-forward layer of the middle block only (He 2024, §3); that
//! is the default here when `ffw` is a retrieval layer and `ffw_blocks` is not given.

use crate::error::Error;
use crate::kernels::peer::ExpertActivation;
use crate::nn::ffw::DenseFfwConfig;
use crate::nn::moe::{MoeConfig, Routing};
use crate::nn::peer::PeerConfig;
use crate::nn::pkm::PkmConfig;
use crate::nn::product_key_router::{Gate, ProductKeyConfig};

/// Most blocks a config may ask for.
pub const MAX_LAYERS: usize = 1 << 16;

/// The feed-forward layer of a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "io", derive(serde::Serialize, serde::Deserialize), serde(rename_all = "lowercase"))]
pub enum FfwKind {
    Dense,
    Moe,
    Pkm,
    Peer,
}

/// How positions enter the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "io", derive(serde::Serialize, serde::Deserialize), serde(rename_all = "lowercase"))]
pub enum Positions {
    /// A learned `[seq_len, d_model]` table added to the token embeddings (GPT-2).
    Learned,
    /// Rotary embeddings (RoFormer) turn each head's queries and keys by position-dependent angles;
    /// nothing is learned. Needs an even head width `d_model / n_heads`.
    Rotary,
}

#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "io", derive(serde::Serialize, serde::Deserialize), serde(deny_unknown_fields, default))]
pub struct ModelConfig {
    /// Tokens in the vocabulary, including the end-of-text token (default 4096).
    pub vocab_size: usize,
    /// Longest context in tokens (default 256).
    pub seq_len: usize,
    /// Width of the residual stream (default 256).
    pub d_model: usize,
    /// Transformer blocks (default 4).
    pub n_layers: usize,
    /// Attention heads; must divide `d_model` (default 4).
    pub n_heads: usize,
    /// Use the token embedding as the output head (default true).
    pub tie_embeddings: bool,
    /// Position encoding: `"learned"` (default) or `"rotary"`.
    pub positions: Positions,
    /// Layer-norm epsilon (default 1e-5).
    pub norm_eps: f64,
    /// The feed-forward layer of the blocks listed in `ffw_blocks` (default dense); other blocks are dense.
    pub ffw: FfwKind,
    /// Which blocks use `ffw` (default: all for dense, the middle block `n_layers / 2` otherwise).
    pub ffw_blocks: Option<Vec<usize>>,
    /// Settings of each layer kind; `d_model` inside them is taken from the model.
    pub dense: DenseFfwConfig,
    pub moe: MoeConfig,
    pub pkm: PkmConfig,
    pub peer: PeerConfig,
}

impl Default for ModelConfig {
    fn default() -> Self {
        let d_model = 256;
        ModelConfig {
            vocab_size: 4096,
            seq_len: 256,
            d_model,
            n_layers: 4,
            n_heads: 4,
            tie_embeddings: true,
            positions: Positions::Learned,
            norm_eps: 1e-5,
            ffw: FfwKind::Dense,
            ffw_blocks: None,
            dense: DenseFfwConfig { d_model, d_ff: 4 * d_model },
            moe: MoeConfig {
                d_model,
                num_experts: 8,
                d_expert: 4 * d_model,
                top_k: 2,
                routing: Routing::ExpertChoice,
                capacity_factor: 1.0,
                aux_loss_weight: 0.01,
            },
            pkm: PkmConfig {
                keys: ProductKeyConfig { d_model, heads: 4, top_k: 32, key_dim: 256, query_batch_norm: true },
                sub_keys: 512,
            },
            peer: PeerConfig {
                keys: ProductKeyConfig { d_model, heads: 8, top_k: 16, key_dim: 256, query_batch_norm: true },
                num_experts: 512 * 512,
                query_bn_per_head: false,
                gate: Gate::Softmax,
                activation: ExpertActivation::Gelu,
            },
        }
    }
}

impl ModelConfig {
    /// The feed-forward kind of block `block`.
    pub fn ffw_of(&self, block: usize) -> FfwKind {
        let chosen = match &self.ffw_blocks {
            Some(blocks) => blocks.contains(&block),
            None => self.ffw == FfwKind::Dense || block == self.n_layers / 2,
        };
        if chosen {
            self.ffw
        } else {
            FfwKind::Dense
        }
    }

    /// Copies `d_model` into the layer sections, so a config file states it once.
    pub fn propagate_d_model(&mut self) {
        self.dense.d_model = self.d_model;
        self.moe.d_model = self.d_model;
        self.pkm.keys.d_model = self.d_model;
        self.peer.keys.d_model = self.d_model;
    }

    /// Checks that the config describes a model that can be built; the error names the field.
    pub fn validate(&self) -> Result<(), Error> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("seq_len", self.seq_len),
            ("d_model", self.d_model),
            ("n_layers", self.n_layers),
            ("n_heads", self.n_heads),
        ];
        for (field, value) in positive {
            if value == 0 {
                return Err(Error::Invalid(format!("{field}: must be at least 1")));
            }
        }
        // Every per-block loop (validation, FLOP and memory counts) runs this many times.
        if self.n_layers > MAX_LAYERS {
            return Err(Error::Invalid(format!("n_layers: {} is more than {MAX_LAYERS}", self.n_layers)));
        }
        if self.vocab_size > u32::MAX as usize {
            return Err(Error::Invalid(format!("vocab_size: {} does not fit token ids of 32 bits", self.vocab_size)));
        }
        if self.d_model % self.n_heads != 0 {
            return Err(Error::Invalid(format!(
                "n_heads: {} does not divide d_model = {}",
                self.n_heads, self.d_model
            )));
        }
        let head_width = self.d_model / self.n_heads;
        if self.positions == Positions::Rotary && head_width % 2 != 0 {
            return Err(Error::Invalid(format!(
                "positions: rotary turns pairs of columns, but each head is {head_width} wide (d_model / n_heads)"
            )));
        }
        if !(self.norm_eps.is_finite() && self.norm_eps > 0.0) {
            return Err(Error::Invalid(format!("norm_eps: {} must be positive", self.norm_eps)));
        }
        if let Some(blocks) = &self.ffw_blocks {
            if let Some(bad) = blocks.iter().find(|&&b| b >= self.n_layers) {
                return Err(Error::Invalid(format!(
                    "ffw_blocks: block {bad} does not exist (n_layers = {})",
                    self.n_layers
                )));
            }
            if let Some(twice) = blocks.iter().enumerate().find(|&(i, b)| blocks[..i].contains(b)) {
                return Err(Error::Invalid(format!("ffw_blocks: block {} is listed twice", twice.1)));
            }
            if blocks.is_empty() && self.ffw != FfwKind::Dense {
                return Err(Error::Invalid(format!(
                    "ffw_blocks: empty, so no block would use ffw = {:?}; list blocks, or leave ffw_blocks out for the middle one",
                    format!("{:?}", self.ffw).to_lowercase()
                )));
            }
        }
        let used = |kind| (0..self.n_layers).any(|b| self.ffw_of(b) == kind);
        if used(FfwKind::Dense) {
            self.dense.validate()?;
        }
        if used(FfwKind::Moe) {
            self.moe.validate()?;
        }
        if used(FfwKind::Pkm) {
            self.pkm.validate()?;
        }
        if used(FfwKind::Peer) {
            self.peer.validate()?;
        }
        Ok(())
    }
}
