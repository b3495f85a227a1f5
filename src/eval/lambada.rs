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
        let (correct, words) = score_passages(model, chunk, context);
        report.correct += correct;
        report.words.add(&words);
    }
}

/// The passages whose word greedy decoding gets right, and the word's score summed over passages.
fn score_passages(model: &mut Gpt<f32>, passages: Vec<Passage>, context: usize) -> (usize, Score) {
    let jobs: Vec<Job> = passages
        .iter()
        .enumerate()
        .filter_map(|(doc, p)| {
            let end = p.document.tokens.len() - 1;
            let begin = end.saturating_sub(context);
            (p.word_from >= begin).then_some(Job { doc, window: Window { begin, end, scored_from: p.word_from } })
        })
        .collect();
    let documents: Vec<TokenDocument> = passages.into_iter().map(|p| p.document).collect();
    let mut all_greedy = vec![true; documents.len()];
    let mut words = Score::default();
    run_windows(model, &documents, &jobs, |job, target| {
        words.nats += target.nats;
        words.tokens += 1;
        all_greedy[job.doc] &= target.greedy;
    });
    words.bytes = jobs.iter().map(|job| documents[job.doc].bytes).sum();
    (jobs.iter().filter(|job| all_greedy[job.doc]).count(), words)
}

/// Passages per chunk: a few thousand short windows at a time.
const CHUNK_PASSAGES: usize = 2048;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ModelConfig;
    use crate::sample::{generate, SampleConfig};

    /// A word is right exactly when greedy decoding (the sampler at temperature 0, with its own cached
    /// forward passes) produces it, token for token.
    #[test]
    fn correct_means_greedy_decoding_produces_the_word() {
        let mut config =
            ModelConfig { vocab_size: 40, seq_len: 12, d_model: 16, n_layers: 2, n_heads: 2, ..Default::default() };
        config.dense.d_ff = 32;
        config.propagate_d_model();
        let mut model = Gpt::new(&config, 3);
        let greedy = SampleConfig { max_new_tokens: 3, temperature: 0.0, top_k: None, seed: 0, stop_token: None };
        let mut passages = Vec::new();
        for seed in 0..6u32 {
            let context: Vec<u32> = (0..5 + seed).map(|i| (i * 7 + seed * 3) % 39).collect();
            let mut word = generate(&mut model, &context, &greedy, |_| {});
            if seed % 2 == 1 {
                word[2] = (word[2] + 1) % 39; // wrong in its last token only
            }
            let tokens: Vec<u32> = context.iter().chain(&word).copied().collect();
            let document = TokenDocument { tokens, bytes: 1 };
            passages.push(Passage { document, word_from: context.len() - 1 });
        }
        let (correct, words) = score_passages(&mut model, passages, 12);
        assert_eq!((correct, words.tokens), (3, 18));
    }
}
