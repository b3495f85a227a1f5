//! `peerlm export`: a training checkpoint's weights, batch-norm statistics, config and tokenizer as an
//! inference model file, without the optimizer state (two thirds of a training checkpoint).
//!
//! The checkpoint is read through a memory map and checked by streaming reads ([`Verify::All`]), so
//! exporting a model larger than memory works. Expert and value tables may be stored as bf16
//! ([`Dtype::Bf16`]): half the file, at the cost of rounding every table entry to 8 mantissa bits. Opening
//! such a file widens the tables to f32 in memory, so it saves disk, not memory (see README).

use std::collections::BTreeMap;
use std::path::Path;

use super::model::MODEL_FORMAT;
use super::model_file::{ModelFile, Verify};
use super::{Model, OpenOptions};
use crate::checkpoint::{Checkpoint, Dtype};
use crate::error::Error;
use crate::nn::Module;
use crate::param::ParamKind;

/// Metadata a model file keeps from the checkpoint (`format` is replaced, the rest dropped).
const KEPT_METADATA: [&str; 4] = ["config", "tokenizer", "tokenizer_hash", "step"];

/// Writes the model in `checkpoint` to `out` (atomically), its tables stored as `tables`; returns the
/// bytes written.
pub fn export(checkpoint: &Path, out: &Path, tables: Dtype) -> Result<u64, Error> {
    // Opening checks the config, tokenizer and shapes; mapped, it costs nothing.
    let options = OpenOptions { verify: Verify::All, ..OpenOptions::default() };
    let mut model = Model::open_with(checkpoint, &options)?;
    let in_file = |e: &dyn std::fmt::Display| Error::Inference(format!("{}: {e}", checkpoint.display()));
    let file = ModelFile::open(checkpoint).map_err(|e| in_file(&e))?;
    let mut metadata: BTreeMap<String, String> = KEPT_METADATA
        .iter()
        .filter_map(|&key| file.metadata().get(key).map(|value| (key.to_string(), value.clone())))
        .collect();
    metadata.insert("format".into(), MODEL_FORMAT.into());
    let gpt = model.gpt_mut();
    let table_names: Vec<String> =
        gpt.params().iter().filter(|p| p.kind == ParamKind::Table).map(|p| p.name.clone()).collect();
    let mut tensors: Vec<_> = gpt.params().iter().map(|p| (p.name.clone(), p.value.clone())).collect();
    tensors.extend(gpt.buffers());
    let dtype_of = |name: &str| if table_names.iter().any(|t| t == name) { tables } else { Dtype::F32 };
    Checkpoint { tensors, metadata }
        .save_as(out, dtype_of)
        .map_err(|e| Error::Inference(format!("{}: {e}", out.display())))?;
    std::fs::metadata(out).map(|m| m.len()).map_err(|e| Error::Inference(format!("{}: {e}", out.display())))
}
