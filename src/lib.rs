//! peerlm: PEER ("Mixture of A Million Experts", He 2024) from scratch on a CPU.
//!
//! The crate is built in floors, each importing only the ones below it:
//! - `kernels`: SIMD and threaded loops over slices (GEMM, vector math), no autograd;
//! - `tensor`, `grad`, `param`, `tape`: the tensor, dense and row-sparse gradients, parameters and the
//!   reverse-mode tape;
//! - `ops`: differentiable operations, each forward beside its backward;
//! - `optim`: AdamW (dense and lazy row-sparse), the learning-rate schedule, gradient clipping.
//!
//! See `docs/ARCHITECTURE.md` for the map of the whole project.

pub mod grad;
pub mod kernels;
pub mod ops;
pub mod optim;
pub mod param;
pub mod rng;
pub mod tape;
pub mod tensor;

pub use grad::{Grad, RowGrad};
pub use kernels::Float;
pub use param::{Param, ParamId, ParamKind};
pub use rng::Rng;
pub use tape::{Op, Tape, Var};
pub use tensor::Tensor;
