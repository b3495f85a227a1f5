//! [`Model`]: a trained model and its tokenizer, opened from a file for generating and scoring text.

use std::collections::BTreeMap;
use std::path::Path;

use super::model_file::{ModelFile, Verify};
use crate::data::{fnv, tokenizer_file, Tokenizer};
use crate::error::Error;
use crate::eval::text::{score_documents, Protocol, Score};
use crate::model::{memory, Gpt, ModelConfig};
use crate::nn::Module;
use crate::param::ParamKind;
use crate::sample::{generate, SampleConfig};
use crate::tensor::Tensor;

/// The `format` metadata of a training checkpoint (weights, optimizer state) and of an exported model file
/// (weights only, `peerlm export`); both open.
pub const CHECKPOINT_FORMAT: &str = "peerlm-checkpoint-v1";
pub const MODEL_FORMAT: &str = "peerlm-model-v1";

/// Where the weights live once opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Load {
    /// Borrowed from a memory map of the file: opening copies nothing, and only the table rows that tokens
    /// retrieve are ever read.
    #[default]
    Mapped,
    /// Copied into the heap (what a process that means to write the weights would want).
    Copied,
}

/// How to open a model file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpenOptions {
    pub load: Load,
    pub verify: Verify,
}

/// How to continue a prompt.
#[derive(Clone, Debug, PartialEq)]
pub struct Options {
    /// Tokens to generate at most.
    pub max_new_tokens: usize,
    /// Softmax temperature; 0 picks the most likely token every time.
    pub temperature: f64,
    /// Sample only among the k most likely tokens (`None`: all).
    pub top_k: Option<usize>,
    pub seed: u64,
    /// Stop after the end-of-text token.
    pub stop_at_end_of_text: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options { max_new_tokens: 200, temperature: 0.8, top_k: Some(40), seed: 0, stop_at_end_of_text: true }
    }
}

/// A model opened for inference: no tape records its forward passes and no optimizer state is loaded.
pub struct Model {
    gpt: Gpt<f32>,
    tokenizer: Tokenizer,
}

impl Model {
    /// Opens a model file or training checkpoint, memory-mapped, checking what [`Verify::Small`] checks.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, Error> {
        Self::open_with(path, &OpenOptions::default())
    }

    pub fn open_with(path: impl AsRef<Path>, options: &OpenOptions) -> Result<Self, Error> {
        let path = path.as_ref();
        let in_file = |e: &dyn std::fmt::Display| Error::Inference(format!("{}: {e}", path.display()));
        let file = ModelFile::open(path).map_err(|e| in_file(&e))?;
        let metadata = file.metadata();
        let config = model_config(metadata).map_err(|e| in_file(&e))?;
        // A corrupt or crafted config could ask for any amount of memory: refuse one that describes more
        // parameters than the file holds before building anything.
        let (params, stored) = (memory::param_count(&config), file.stored_values());
        if params > stored {
            return Err(in_file(&format_args!(
                "its config describes {params:.0} parameters, but the file holds only {stored:.0} values"
            )));
        }
        let tokenizer = tokenizer(metadata, &config).map_err(|e| in_file(&e))?;
        let mut gpt = Gpt::placeholder(&config);
        let tables: Vec<String> =
            gpt.params().iter().filter(|p| p.kind == ParamKind::Table).map(|p| p.name.clone()).collect();
        let read_whole: Vec<String> = gpt
            .params()
            .iter()
            .map(|p| p.name.clone())
            .chain(gpt.buffers().into_iter().map(|(name, _)| name))
            .filter(|name| !tables.contains(name))
            .collect();
        file.verify(options.verify, |name| read_whole.iter().any(|n| n == name)).map_err(|e| in_file(&e))?;
        let load = |name: &str| -> Result<Tensor<f32>, Error> {
            let tensor = file.tensor(name).ok_or_else(|| in_file(&format_args!("no tensor {name}")))?;
            Ok(match options.load {
                Load::Mapped => tensor,
                Load::Copied => {
                    let shape = tensor.shape().to_vec();
                    Tensor::from_vec(&shape, tensor.into_vec())
                }
            })
        };
        for param in gpt.params_mut() {
            let value = load(&param.name)?;
            if value.shape() != param.value.shape() {
                return Err(in_file(&format_args!(
                    "{} has shape {:?}, the model expects {:?}",
                    param.name,
                    value.shape(),
                    param.value.shape()
                )));
            }
            param.value = value;
        }
        let mut buffers = BTreeMap::new();
        for (name, _) in gpt.buffers() {
            let tensor = load(&name)?;
            buffers.insert(name, tensor);
        }
        gpt.load_buffers(&mut buffers).map_err(|e| in_file(&e))?;
        Ok(Model { gpt, tokenizer })
    }

    pub fn config(&self) -> &ModelConfig {
        self.gpt.config()
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The network itself, for scorers that drive it directly.
    pub fn gpt_mut(&mut self) -> &mut Gpt<f32> {
        &mut self.gpt
    }

    /// The network and its tokenizer at once (`peerlm eval` scores with both).
    pub fn parts(&mut self) -> (&mut Gpt<f32>, &Tokenizer) {
        (&mut self.gpt, &self.tokenizer)
    }

    /// Continues `prompt` with a key/value cache; `on_token` sees each new token's id and bytes as it is
    /// drawn (a token may end inside a UTF-8 character). Returns the new tokens.
    pub fn generate(
        &mut self,
        prompt: &str,
        options: &Options,
        mut on_token: impl FnMut(u32, &[u8]),
    ) -> Result<Vec<u32>, Error> {
        if !(options.temperature.is_finite() && options.temperature >= 0.0) {
            return Err(Error::Inference(format!(
                "temperature {}: must be a number >= 0 (0 picks the likeliest token)",
                options.temperature
            )));
        }
        let prompt_ids = self.tokenizer.encode(prompt);
        if prompt_ids.is_empty() {
            return Err(Error::Inference("the prompt is empty".into()));
        }
        let config = SampleConfig {
            max_new_tokens: options.max_new_tokens,
            temperature: options.temperature,
            top_k: options.top_k,
            seed: options.seed,
            stop_token: options.stop_at_end_of_text.then(|| self.tokenizer.end_of_text()),
        };
        let tokenizer = &self.tokenizer;
        Ok(generate(&mut self.gpt, &prompt_ids, &config, |token| {
            on_token(token, tokenizer.token_bytes(token).unwrap_or_default())
        }))
    }

    /// The log-likelihood of `text` under the model: its tokens scored in non-overlapping windows of the
    /// model's context, the first token of the text given the end-of-text token (as `peerlm eval` does).
    pub fn score(&mut self, text: &str) -> Score {
        let context = self.config().seq_len;
        let protocol = Protocol { context, stride: context };
        score_documents(&mut self.gpt, &self.tokenizer, [text], &protocol, false).total
    }
}

/// The model section of the file's `config` metadata, validated.
fn model_config(metadata: &BTreeMap<String, String>) -> Result<ModelConfig, String> {
    let format = metadata.get("format").ok_or("metadata has no \"format\"")?;
    if format != MODEL_FORMAT && format != CHECKPOINT_FORMAT {
        return Err(format!("unknown format {format:?} (expected {MODEL_FORMAT:?} or {CHECKPOINT_FORMAT:?})"));
    }
    let text = metadata.get("config").ok_or("metadata has no \"config\"")?;
    let run: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("metadata \"config\": {e}"))?;
    let model = run.get("model").ok_or("metadata \"config\" has no \"model\" section")?;
    let config: ModelConfig =
        serde_json::from_value(model.clone()).map_err(|e| format!("metadata \"config\": model: {e}"))?;
    config.validate().map_err(|e| format!("config: model.{e}"))?;
    Ok(config)
}

/// The tokenizer stored in the metadata, checked against its recorded hash and the model's vocabulary.
fn tokenizer(metadata: &BTreeMap<String, String>, config: &ModelConfig) -> Result<Tokenizer, String> {
    let text = metadata.get("tokenizer").ok_or("the file holds no tokenizer")?;
    if let Some(recorded) = metadata.get("tokenizer_hash") {
        let actual = format!("{:016x}", fnv::hash(text.as_bytes()));
        if &actual != recorded {
            return Err(format!(
                "its tokenizer hashes to {actual}, but its metadata \"tokenizer_hash\" records {recorded} \
                 (the tokenizer was replaced after training)"
            ));
        }
    }
    let tokenizer = tokenizer_file::parse(text.as_bytes(), "tokenizer").map_err(|e| e.to_string())?;
    if tokenizer.vocab_size() > config.vocab_size {
        return Err(format!(
            "its tokenizer has {} tokens, more than the model's vocab_size {}",
            tokenizer.vocab_size(),
            config.vocab_size
        ));
    }
    Ok(tokenizer)
}
