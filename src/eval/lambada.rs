//! LAMBADA (Paperno et al. 2016): can the model name the last word of a passage? The test set is built so
//! that the word is guessable only from the broader passage, not from its last sentence.
//!
//! As in GPT-2's evaluation and lm-evaluation-harness's `lambada_openai`: the passage minus its last word
//! (split at the last space) is the context, read after end-of-text; the target is the space and the word.
//! A passage counts as correct when greedy decoding would produce exactly the word's tokens, that is when
//! each of them is the most likely next token given the context and the word's tokens before it. The
//! perplexity is per word: `exp` of the word's mean cross-entropy over passages. The context is the last
//! `context` tokens before the word, as much as the model reads.

use super::text::{run_windows, Job, Score, TokenDocument, Window};
use crate::data::Tokenizer;
use crate::model::Gpt;

/// Last-word accuracy and perplexity.
#[derive(Clone, Debug, PartialEq)]
pub struct LambadaReport {
    pub passages: usize,
    /// Passages whose last word greedy decoding gets right.
    pub correct: usize,
    /// Cross-entropy of the last words (tokens: all their tokens; bytes: their text with the space).
    pub words: Score,
}

impl LambadaReport {
    pub fn accuracy(&self) -> f64 {
        self.correct as f64 / self.passages.max(1) as f64
    }

    /// `exp` of the mean cross-entropy per word (per passage), lm-evaluation-harness's figure.
    pub fn word_perplexity(&self) -> f64 {
        (self.words.nats / self.passages.max(1) as f64).exp()
    }
}

/// A passage ready to score: its tokens, and where the last word's tokens start.
struct Passage {
    document: TokenDocument,
    /// Input position predicting the word's first token.
    word_from: usize,
}

/// Encodes `text` as context and last word; `None` when it has no space to split at.
fn passage(tokenizer: &Tokenizer, text: &str) -> Option<Passage> {
    let text = text.trim_end();
    let split = text.rfind(' ').filter(|&i| i > 0)?;
    let (context, word) = text.split_at(split);
    let mut tokens = vec![tokenizer.end_of_text()];
    tokenizer.encode_into(context, &mut tokens);
    let word_from = tokens.len() - 1;
    tokenizer.encode_into(word, &mut tokens);
    Some(Passage { document: TokenDocument { tokens, bytes: word.len() }, word_from })
}

/// Scores every passage's last word with at most `context` tokens per window (the model's `seq_len` or
/// less). A passage with no space, or whose word alone fills the context, counts as wrong with no loss.
pub fn score_lambada<S: AsRef<str>>(
    model: &mut Gpt<f32>,
    tokenizer: &Tokenizer,
    passages: impl IntoIterator<Item = S>,
    context: usize,
) -> LambadaReport {
    let mut report = LambadaReport { passages: 0, correct: 0, words: Score::default() };
    let mut passages = passages.into_iter();
    loop {
        let texts: Vec<S> = passages.by_ref().take(CHUNK_PASSAGES).collect();
        if texts.is_empty() {
            return report;
        }
        report.passages += texts.len();
        let chunk: Vec<Passage> = texts.iter().filter_map(|text| passage(tokenizer, text.as_ref())).collect();
        let jobs: Vec<Job> = chunk
            .iter()
            .enumerate()
            .filter_map(|(doc, p)| {
                let end = p.document.tokens.len() - 1;
                let begin = end.saturating_sub(context);
                (p.word_from >= begin).then_some(Job { doc, window: Window { begin, end, scored_from: p.word_from } })
            })
            .collect();
        let documents: Vec<TokenDocument> = chunk.into_iter().map(|p| p.document).collect();
        let mut all_greedy = vec![true; documents.len()];
        run_windows(model, &documents, &jobs, |job, target| {
            report.words.nats += target.nats;
            report.words.tokens += 1;
            all_greedy[job.doc] &= target.greedy;
        });
        report.correct += jobs.iter().filter(|job| all_greedy[job.doc]).count();
        report.words.bytes += jobs.iter().map(|job| documents[job.doc].bytes).sum::<usize>();
    }
}

/// Passages per chunk: a few thousand short windows at a time.
const CHUNK_PASSAGES: usize = 2048;
