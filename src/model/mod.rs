//! Floor 4: the language model. `config` describes it, `gpt` builds and runs it, `flops` counts its cost.

pub mod config;
pub mod flops;
pub mod gpt;

pub use config::{FfwKind, ModelConfig, Positions};
pub use gpt::Gpt;
