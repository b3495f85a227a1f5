//! peerlm: PEER ("Mixture of A Million Experts", He 2024) from scratch on a CPU.
//!
//! The crate is built in floors, each importing only the ones below it:
//! - `kernels`: SIMD and threaded loops over slices (GEMM, vector math), no autograd;
//! - `tensor`, `grad`, `param`, `tape`: the tensor, dense and row-sparse gradients, parameters and the
//!   reverse-mode tape; `op_times`: the tape's optional per-op timing;
//! - `ops`: differentiable operations, each forward beside its backward;
//! - `nn`: layers built from ops (linear, layer norm, attention, dense FFW, MoE, PKM, PEER), each owning its
//!   parameters; `optim`: AdamW (dense and lazy row-sparse), schedule, clipping;
//! - `model`: the GPT decoder, its config and FLOP counter;
//! - `gradcheck`: the f64 finite-difference check of an op's backward, for the engine's ops and yours;
//! - `rng`: the seeded random numbers of initialisation, dropout and sampling;
//! - `error`: [`Error`], the one error type of every fallible call (its variant says what kind of failure,
//!   its message what and where);
//! - `sample`: next-token sampling from logits;
//! - `train`, `eval` (feature `io`): drive a model over data; `checkpoint` saves it; `run_dir`
//!   owns a run's output directory; `sweep` runs grids of training runs (the paper's isoFLOP comparison and
//!   ablations); `study` turns their summaries into the report's numbers (seed means and spreads, best size
//!   per budget);
//! - `infer` (feature `infer`): a model opened from a memory-mapped file, generating and scoring text
//!   without a tape or an optimizer; its C ABI (`include/peerlm.h`);
//! - `data` (feature `io`): C4 reader (feature `c4`), BPE tokenizer, token shards and the training-window
//!   loader, beside the engine rather than on top of it.
//!
//! See `docs/ARCHITECTURE.md` for the map of the whole project and `docs/TOUR.md` for a guided reading.

#![deny(clippy::undocumented_unsafe_blocks, unsafe_op_in_unsafe_fn)]

#[cfg(feature = "io")]
pub mod checkpoint;
#[cfg(feature = "io")]
pub mod data;
pub mod error;
#[cfg(feature = "io")]
pub mod eval;
#[cfg(feature = "infer")]
pub mod ffi;
pub mod grad;
pub mod gradcheck;
#[cfg(feature = "infer")]
pub mod infer;
pub mod kernels;
pub mod model;
pub mod nn;
pub mod op_times;
pub mod ops;
pub mod optim;
pub mod param;
pub mod rng;
#[cfg(feature = "io")]
pub mod run_dir;
pub mod sample;
#[cfg(feature = "io")]
pub mod study;
#[cfg(feature = "io")]
pub mod sweep;
pub mod tape;
pub mod tensor;
#[cfg(feature = "io")]
pub mod train;

pub use error::{Error, Result};
pub use grad::{Grad, RowGrad};
pub use kernels::Float;
pub use param::{Param, ParamId, ParamKind};
pub use rng::Rng;
pub use tape::{Op, Tape, Var};
pub use tensor::Tensor;
