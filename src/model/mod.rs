//! Floor 4: the language model. `config` describes it, `gpt` builds and runs it, `flops` counts its cost,
//! `memory` what it needs before it is built.

pub mod config;
pub mod flops;
pub mod gpt;
pub mod memory;

pub use config::{FfwKind, ModelConfig, Positions};
pub use gpt::Gpt;
