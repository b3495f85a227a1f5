//! The data pipeline: real C4 text → byte-level BPE token ids → token shards on disk → training windows.
//!
//! Every stage is a file of its own, and each one only uses the ones above it in this list:
//! - `c4` (feature `c4`): streams documents out of C4's `*.json.gz` / `*.jsonl` shards (one JSON object per line);
//! - [`pretokenize`]: GPT-2's pre-split of text into words, written by hand;
//! - [`bpe`]: the byte-level BPE tokenizer (training, encoding, decoding), saved by [`tokenizer_file`];
//! - [`shard`]: token shards in llm.c's `.bin` format (a 1 KiB header, then little-endian tokens);
//! - [`loader`]: memory-maps shards and cuts them into `seq_len + 1` windows for training and validation.
//!
//! `peerlm prepare` (in `src/cli/prepare.rs`) runs the first four once; training reads through the loader.
//! Nothing here depends on the autograd engine: this module sits beside it, not on top of it.

pub mod atomic_file;
pub mod bpe;
#[cfg(feature = "c4")]
pub mod c4;
pub mod fnv;
pub mod fxhash;
pub mod loader;
pub mod pretokenize;
pub mod shard;
pub mod tokenizer_file;

pub use bpe::Tokenizer;
#[cfg(feature = "c4")]
pub use c4::{Document, DocumentReader, JsonLines};
pub use loader::{Batch, TokenDataset};
pub use shard::{Shard, ShardHeader, ShardWriter};
pub use tokenizer_file::TokenizerId;
