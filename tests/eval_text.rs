//! Scoring text (`peerlm::eval::text`): the window plan scores every token exactly once with the context it
//! promises, stride = context reproduces the trainer's non-overlapping validation, documents are scored on
//! their own, and the LAMBADA last-word task.
#![cfg(feature = "io")]

use std::path::PathBuf;

use peerlm::data::{shard, TokenDataset, Tokenizer};
use peerlm::eval::lambada::score_lambada;
use peerlm::eval::text::{score_documents, score_token_documents, split_documents, windows, Protocol, TokenDocument};
use peerlm::model::{FfwKind, Gpt, ModelConfig};
use peerlm::Rng;

const VOCAB: usize = 270;
const CONTEXT: usize = 16;

fn model() -> Gpt<f32> {
    let mut config = ModelConfig {
        vocab_size: VOCAB,
        seq_len: CONTEXT,
        d_model: 16,
        n_layers: 2,
        n_heads: 2,
        ffw: FfwKind::Peer,
        ..ModelConfig::default()
    };
    config.dense.d_ff = 32;
    (config.peer.num_experts, config.peer.keys.heads, config.peer.keys.top_k, config.peer.keys.key_dim) = (16, 2, 2, 8);
    config.propagate_d_model();
    config.validate().unwrap();
    Gpt::new(&config, 7)
}

/// `len` random tokens after an end-of-text token (the last id), with no other end-of-text among them.
fn random_document(len: usize, seed: u64) -> TokenDocument {
    let mut rng = Rng::new(seed);
    let eot = VOCAB as u32 - 1;
    let tokens = std::iter::once(eot).chain((0..len).map(|_| rng.below(eot as u64) as u32)).collect();
    TokenDocument { tokens, bytes: len }
}

#[test]
fn every_target_is_scored_once_with_the_promised_context() {
    for targets in [0, 1, 5, 16, 17, 31, 32, 33, 100] {
        for (context, stride) in [(16, 16), (16, 8), (16, 1), (16, 5), (4, 3), (1, 1)] {
            let protocol = Protocol { context, stride };
            let plan = windows(targets, &protocol);
            let mut times_scored = vec![0; targets];
            for (k, w) in plan.iter().enumerate() {
                assert!(w.begin <= w.scored_from && w.scored_from < w.end && w.end - w.begin <= context, "{w:?}");
                for (position, count) in times_scored.iter_mut().enumerate().take(w.end).skip(w.scored_from) {
                    *count += 1;
                    // Inputs begin..=position: the target sees position - begin + 1 tokens.
                    let seen = position - w.begin + 1;
                    assert!(k == 0 || seen > context - stride, "{targets} targets, {protocol:?}: {seen} tokens seen");
                }
            }
            assert!(times_scored.iter().all(|&n| n == 1), "{targets} targets, {protocol:?}: {times_scored:?}");
        }
    }
}

#[test]
fn stride_equal_to_context_matches_the_non_overlapping_validation() {
    // A length that is a multiple of the context: the trainer's validation drops no tail here.
    let document = random_document(4 * CONTEXT, 1);
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("eval_text_stride.bin");
    shard::write_shard(&path, VOCAB as u32, &document.tokens).unwrap();
    let data = TokenDataset::open(&[path], CONTEXT).unwrap();
    let mut model = model();
    let reference = peerlm::eval::evaluate(&mut model, &data, 3, 0, None);
    let protocol = Protocol::non_overlapping(CONTEXT);
    let report = score_token_documents(&mut model, [document], &protocol, false);
    assert_eq!(report.total.tokens, reference.tokens);
    let loss = report.total.loss();
    assert!((loss - reference.loss).abs() < 1e-5 * reference.loss, "{loss} against {}", reference.loss);
}

#[test]
fn a_smaller_stride_scores_each_token_once_and_sees_more_context() {
    let documents: Vec<TokenDocument> = [0, 1, 7, 16, 40, 123].iter().map(|&n| random_document(n, n as u64)).collect();
    let targets: usize = documents.iter().map(|d| d.tokens.len() - 1).sum();
    let mut model = model();
    let mut losses = Vec::new();
    for stride in [CONTEXT, CONTEXT / 2, 3, 1] {
        let report = score_token_documents(&mut model, documents.clone(), &Protocol { context: CONTEXT, stride }, true);
        assert_eq!(report.total.tokens, targets, "stride {stride}");
        assert_eq!(report.documents, documents.len());
        let per_doc: Vec<usize> = report.per_doc.unwrap().iter().map(|s| s.tokens).collect();
        let expected: Vec<usize> = documents.iter().map(|d| d.tokens.len() - 1).collect();
        assert_eq!(per_doc, expected, "stride {stride}");
        losses.push(report.total.nats);
    }
    assert_ne!(losses[0], losses[1], "a sliding window gives later tokens more context, so other figures");
}

#[test]
fn documents_are_scored_on_their_own() {
    let documents = vec![random_document(20, 3), random_document(9, 4), random_document(30, 5)];
    let mut model = model();
    let protocol = Protocol { context: CONTEXT, stride: 4 };
    let together = score_token_documents(&mut model, documents.clone(), &protocol, true);
    for (document, score) in documents.iter().zip(together.per_doc.unwrap()) {
        let alone = score_token_documents(&mut model, [document.clone()], &protocol, false).total;
        assert!((alone.nats - score.nats).abs() < 1e-9 * alone.nats, "batching changed a document's loss");
    }
    // Cutting the concatenated stream at end-of-text tokens gives back the same documents.
    let stream: Vec<u32> = documents.iter().flat_map(|d| d.tokens.iter().copied()).collect();
    assert_eq!(split_documents(&stream, VOCAB as u32 - 1, |_| 1), documents);
}

#[test]
fn text_is_encoded_after_end_of_text_and_bytes_are_the_texts() {
    let texts = ["the cat sat on the mat", "", "a dog, a log and a frog on a bog: all of them together"];
    let tokenizer = Tokenizer::train(&texts, VOCAB).unwrap();
    let mut model = model();
    let protocol = Protocol { context: CONTEXT, stride: 8 };
    let report = score_documents(&mut model, &tokenizer, texts, &protocol, true);
    let documents: Vec<TokenDocument> = texts.iter().map(|t| TokenDocument::encode(&tokenizer, t)).collect();
    let from_tokens = score_token_documents(&mut model, documents, &protocol, true);
    assert_eq!(report, from_tokens);
    assert_eq!(report.total.bytes, texts.iter().map(|t| t.len()).sum::<usize>());
    assert_eq!(report.total.tokens, texts.iter().map(|t| tokenizer.encode(t).len()).sum::<usize>());
    assert_eq!(report.per_doc.unwrap()[1].tokens, 0, "an empty document scores nothing");
}

#[test]
fn lambada_scores_the_last_word_only() {
    let passages = ["he opened the door and saw the cat", "the cat saw the dog", "nospace"];
    let tokenizer = Tokenizer::train(&passages, VOCAB).unwrap();
    let mut model = model();
    let report = score_lambada(&mut model, &tokenizer, passages, CONTEXT);
    assert_eq!(report.passages, 3);
    let word_tokens = tokenizer.encode(" cat").len() + tokenizer.encode(" dog").len();
    assert_eq!((report.words.tokens, report.words.bytes), (word_tokens, 8));
    assert!(report.correct <= 2, "a passage with no space to split at is never right");
}
