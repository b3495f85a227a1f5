//! Inference from a model file: open it memory-mapped, generate text with a key/value cache, score text.
//!
//! ```no_run
//! use peerlm::infer::{Model, Options};
//! let mut model = Model::open("model.safetensors")?;
//! let options = Options { max_new_tokens: 50, ..Options::default() };
//! model.generate("The", &options, |_, bytes| print!("{}", String::from_utf8_lossy(bytes)))?;
//! let nats_per_token = model.score("Some text.").loss();
//! # Ok::<(), peerlm::Error>(())
//! ```
//!
//! A model file is a safetensors file of weights, batch-norm statistics, config and tokenizer, written by
//! `peerlm export` ([`export`]); a training checkpoint opens too (its optimizer state is mapped but never
//! read). Opening maps the file and copies nothing but bf16 tensors: the weights are tensors borrowing the
//! map ([`crate::tensor`]), so a PEER layer's million-expert tables stay in the page cache and a token
//! reads only the rows it retrieves. Nothing records a tape and no optimizer exists. [`crate::ffi`] puts a
//! C ABI over this module (`include/peerlm.h`).

pub mod export;
pub mod model;
pub mod model_file;

pub use crate::eval::text::Score;
pub use export::export;
pub use model::{Load, Model, OpenOptions, Options};
pub use model_file::Verify;
