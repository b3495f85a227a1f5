//! Scoring text: perplexity per token and bits per byte of documents, under a stated protocol.
//!
//! Each document is scored on its own, as GPT-2's evaluations do: its tokens follow one end-of-text token,
//! so its first token is predicted from that token alone, no window crosses into another document, and the
//! end-of-text token itself is never a target. Every token of the document is scored exactly once,
//! including the tail of a document that does not fill a window.
//!
//! A [`Protocol`] says how a long document is cut into windows of at most `context` tokens. Windows start
//! every `stride` tokens; each scores only the targets that no earlier window scored, so a target in any
//! window but the first sees at least `context − stride + 1` tokens (counting the end-of-text token). With
//! `stride = context` the windows do not overlap and the first target of each sees one token; a smaller
//! stride is the sliding window used for published WikiText perplexities (Hugging Face's
//! "Perplexity of fixed-length models"), at `context / stride` times the cost.
//!
//! Bits per byte divide the nats by `ln 2` and by the UTF-8 bytes of the scored text, which do not depend
//! on the tokenizer: the figure compares models with different vocabularies.

use crate::kernels::parallel::prelude::*;

use crate::data::Tokenizer;
use crate::kernels::vector::log_sum_exp;
use crate::model::Gpt;
use crate::tape::Tape;

/// How documents longer than a window are scored (see the module comment).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Protocol {
    /// Tokens per window at most (the model's `seq_len` or less).
    pub context: usize,
    /// Tokens between the starts of consecutive windows, in `1..=context`.
    pub stride: usize,
}

impl Protocol {
    /// Windows side by side: each token is scored once, with 1 to `context` tokens of context.
    pub fn non_overlapping(context: usize) -> Self {
        Protocol { context, stride: context }
    }

    /// Checks the protocol against a model that reads at most `seq_len` tokens.
    pub fn check(&self, seq_len: usize) -> Result<(), String> {
        if self.context == 0 || self.context > seq_len {
            return Err(format!("context {} is not in 1..={seq_len} (the model's seq_len)", self.context));
        }
        if self.stride == 0 || self.stride > self.context {
            return Err(format!("stride {} is not in 1..={} (the context)", self.stride, self.context));
        }
        Ok(())
    }

    /// One line saying how the figures were produced.
    pub fn describe(&self) -> String {
        let how = if self.stride == self.context {
            "non-overlapping windows".to_string()
        } else {
            let least = self.context - self.stride + 1;
            format!("sliding windows, every token after the first window with at least {least} tokens of context")
        };
        format!(
            "each document scored on its own after <|endoftext|>, every token once, tail included; \
             windows of {} tokens, stride {} ({how})",
            self.context, self.stride
        )
    }
}

/// One forward window over a document's tokens `t`: inputs `t[begin..end]`, which predict
/// `t[begin + 1..end + 1]`; only the targets from input position `scored_from` on count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub begin: usize,
    pub end: usize,
    pub scored_from: usize,
}

/// The windows that score `targets` targets (a document of `targets + 1` tokens) under `protocol`.
pub fn windows(targets: usize, protocol: &Protocol) -> Vec<Window> {
    let mut windows = Vec::with_capacity(targets.div_ceil(protocol.stride.max(1)));
    let (mut begin, mut scored) = (0, 0);
    while scored < targets {
        let end = (begin + protocol.context).min(targets);
        windows.push(Window { begin, end, scored_from: scored });
        scored = end;
        begin += protocol.stride;
    }
    windows
}

/// A document as token ids: `tokens[0]` is the token it is read after (end-of-text), every later token is
/// a target; `bytes` is the UTF-8 length of the text the targets stand for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenDocument {
    pub tokens: Vec<u32>,
    pub bytes: usize,
}

impl TokenDocument {
    /// `text` encoded after an end-of-text token.
    pub fn encode(tokenizer: &Tokenizer, text: &str) -> Self {
        let mut tokens = Vec::with_capacity(text.len() / 3 + 1);
        tokens.push(tokenizer.end_of_text());
        tokenizer.encode_into(text, &mut tokens);
        TokenDocument { tokens, bytes: text.len() }
    }

    fn targets(&self) -> usize {
        self.tokens.len().saturating_sub(1)
    }
}

/// Cuts a stream of token ids into documents at each end-of-text token (where `prepare` put one before
/// every document). Tokens before the first end-of-text token form a document whose first token is only
/// context. `token_bytes` gives the UTF-8 length of a token.
pub fn split_documents(stream: &[u32], end_of_text: u32, token_bytes: impl Fn(u32) -> usize) -> Vec<TokenDocument> {
    let mut documents = Vec::new();
    let mut start = 0;
    for end in (1..=stream.len()).filter(|&i| i == stream.len() || stream[i] == end_of_text) {
        let tokens = stream[start..end].to_vec();
        let bytes = tokens[1..].iter().map(|&t| token_bytes(t)).sum();
        documents.push(TokenDocument { tokens, bytes });
        start = end;
    }
    documents
}

/// Scored tokens, their bytes of text and their summed cross-entropy.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Score {
    pub tokens: usize,
    pub bytes: usize,
    /// Total cross-entropy, in nats.
    pub nats: f64,
}

impl Score {
    /// Mean cross-entropy in nats per token.
    pub fn loss(&self) -> f64 {
        self.nats / self.tokens.max(1) as f64
    }

    pub fn perplexity(&self) -> f64 {
        self.loss().exp()
    }

    pub fn bits_per_byte(&self) -> f64 {
        self.nats / std::f64::consts::LN_2 / self.bytes.max(1) as f64
    }

    /// Adds another set of scored tokens to this one.
    pub fn add(&mut self, other: &Score) {
        self.tokens += other.tokens;
        self.bytes += other.bytes;
        self.nats += other.nats;
    }
}

/// The figures of a set of documents.
#[derive(Clone, Debug, PartialEq)]
pub struct TextReport {
    pub protocol: Protocol,
    pub documents: usize,
    pub total: Score,
    /// One score per document, in order, when asked for.
    pub per_doc: Option<Vec<Score>>,
}

/// Scores `documents` (texts) with `tokenizer`, which must be the model's own, under `protocol` (checked
/// against the model by the caller: [`Protocol::check`]).
pub fn score_documents<S: AsRef<str> + Send>(
    model: &mut Gpt<f32>,
    tokenizer: &Tokenizer,
    documents: impl IntoIterator<Item = S>,
    protocol: &Protocol,
    per_doc: bool,
) -> TextReport {
    let mut texts = documents.into_iter();
    let encoded = std::iter::from_fn(move || {
        // Encode a few documents at a time in parallel; the scorer's batches do not depend on this.
        let batch: Vec<S> = texts.by_ref().take(64).collect();
        (!batch.is_empty())
            .then(|| batch.into_par_iter().map(|text| TokenDocument::encode(tokenizer, text.as_ref())).collect())
    });
    score_token_documents(model, encoded.flat_map(Vec::into_iter), protocol, per_doc)
}

/// Scores documents already encoded (see [`TokenDocument`]) under `protocol`.
pub fn score_token_documents(
    model: &mut Gpt<f32>,
    documents: impl IntoIterator<Item = TokenDocument>,
    protocol: &Protocol,
    per_doc: bool,
) -> TextReport {
    let mut report = TextReport { protocol: *protocol, documents: 0, total: Score::default(), per_doc: None };
    let mut scores = Vec::new();
    let mut documents = documents.into_iter().peekable();
    while documents.peek().is_some() {
        // Chunks of whole documents of about CHUNK_WINDOWS windows bound memory on any input.
        let mut chunk = Vec::new();
        let mut windows_in_chunk = 0;
        while let Some(document) = documents.next_if(|_| windows_in_chunk < CHUNK_WINDOWS) {
            windows_in_chunk += document.targets().div_ceil(protocol.stride).max(1);
            chunk.push(document);
        }
        report.documents += chunk.len();
        let jobs: Vec<Job> = chunk
            .iter()
            .enumerate()
            .flat_map(|(doc, d)| windows(d.targets(), protocol).into_iter().map(move |window| Job { doc, window }))
            .collect();
        let mut chunk_scores: Vec<Score> =
            chunk.iter().map(|d| Score { tokens: 0, bytes: d.bytes, nats: 0.0 }).collect();
        run_windows(model, &chunk, &jobs, |job, target| {
            let score = &mut chunk_scores[job.doc];
            score.tokens += 1;
            score.nats += target.nats;
        });
        for score in &chunk_scores {
            report.total.add(score);
        }
        if per_doc {
            scores.extend(chunk_scores);
        }
    }
    report.per_doc = per_doc.then_some(scores);
    report
}

/// Windows per chunk of documents: enough for full batches, few enough to hold their tokens cheaply.
const CHUNK_WINDOWS: usize = 2048;
/// Logits per forward pass at most (64 MB of `f32`), unless one window alone holds more.
const BATCH_LOGITS: usize = 1 << 24;

/// Windows of `len` tokens scored in one forward pass by a model of `vocab` tokens.
pub fn windows_per_batch(vocab: usize, len: usize) -> usize {
    (BATCH_LOGITS / (vocab * len).max(1)).max(1)
}

/// One window of one document of a chunk.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Job {
    pub doc: usize,
    pub window: Window,
}

/// What the model made of one scored target.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Target {
    /// Cross-entropy of the target token, in nats.
    pub nats: f64,
    /// Whether the target is the model's most likely next token (greedy decoding would pick it).
    pub greedy: bool,
}

/// Runs every job's window through the model and calls `visit` for each scored target, in job order and
/// position order within a job. Windows of equal length share forward passes (no padding, so nothing but
/// the window's own tokens ever reaches the model, and expert-usage counts see only real tokens).
pub(crate) fn run_windows(
    model: &mut Gpt<f32>,
    documents: &[TokenDocument],
    jobs: &[Job],
    mut visit: impl FnMut(&Job, &Target),
) {
    let mut results: Vec<Vec<Target>> = vec![Vec::new(); jobs.len()];
    let mut order: Vec<usize> = (0..jobs.len()).collect();
    order.sort_by_key(|&j| std::cmp::Reverse(jobs[j].window.end - jobs[j].window.begin));
    let vocab = model.config().vocab_size;
    for group in order.chunk_by(|&a, &b| length(&jobs[a]) == length(&jobs[b])) {
        let len = length(&jobs[group[0]]);
        let rows = windows_per_batch(vocab, len);
        for batch in group.chunks(rows) {
            let targets = forward_batch(model, documents, jobs, batch, len);
            for (&j, row) in batch.iter().zip(targets) {
                results[j] = row;
            }
        }
    }
    for (job, targets) in jobs.iter().zip(&results) {
        targets.iter().for_each(|target| visit(job, target));
    }
}

fn length(job: &Job) -> usize {
    job.window.end - job.window.begin
}

/// One forward pass over the windows `batch` (indices into `jobs`), all `len` tokens long; the scored
/// targets of each.
fn forward_batch(
    model: &mut Gpt<f32>,
    documents: &[TokenDocument],
    jobs: &[Job],
    batch: &[usize],
    len: usize,
) -> Vec<Vec<Target>> {
    let inputs: Vec<u32> = batch
        .iter()
        .flat_map(|&j| {
            let Window { begin, end, .. } = jobs[j].window;
            documents[jobs[j].doc].tokens[begin..end].iter().copied()
        })
        .collect();
    let mut tape = Tape::no_grad();
    let out = model.forward(&mut tape, &inputs, batch.len(), false);
    let logits = out.logits.value().data();
    let vocab = model.config().vocab_size;
    batch
        .par_iter()
        .enumerate()
        .map(|(row, &j)| {
            let Window { begin, scored_from, end } = jobs[j].window;
            let tokens = &documents[jobs[j].doc].tokens;
            (scored_from..end)
                .map(|position| {
                    let row_logits = &logits[(row * len + position - begin) * vocab..][..vocab];
                    let target = tokens[position + 1] as usize;
                    let nats = f64::from(log_sum_exp(row_logits) - row_logits[target]);
                    let greedy = row_logits.iter().all(|&x| x <= row_logits[target]);
                    Target { nats, greedy }
                })
                .collect()
        })
        .collect()
}
