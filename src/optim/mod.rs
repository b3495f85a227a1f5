//! Floor 3: the optimizer, its learning-rate schedule and gradient clipping.
//!
//! A training step reads the parameter gradients that [`crate::tape::Tape::backward`] left on the tape:
//! [`grad_norm`] first measures their global norm and [`clip_factor`] turns it into the factor that
//! bounds it, then [`AdamW::step`] updates every parameter in place, scaling each gradient by that factor
//! as it reads it, with the learning rate times [`CosineSchedule::lr_scale`] of the step. Dense gradients
//! get the fused AdamW update of `adamw`; row-sparse ones (PEER's expert tables) get the lazy update of
//! `sparse_adam`, which costs time in proportion to the rows a step touched, not the size of the table.

pub mod adamw;
pub mod clip;
pub mod schedule;
pub mod sparse_adam;

pub use adamw::{AdamW, AdamWConfig};
pub use clip::{clip_factor, grad_norm};
pub use schedule::CosineSchedule;
