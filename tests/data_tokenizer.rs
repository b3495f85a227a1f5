//! The BPE tokenizer: exact round trips (proptest), deterministic training, file round trip.
#![cfg(feature = "c4")]

use std::path::PathBuf;
use std::sync::OnceLock;

use peerlm::data::c4::DocumentReader;
use peerlm::data::pretokenize::pre_split;
use peerlm::data::{tokenizer_file, Tokenizer};
use proptest::prelude::*;

/// About 200 KB of real C4 text: enough for a 1024-token vocabulary, quick to train on.
fn small_corpus() -> &'static Vec<String> {
    static CORPUS: OnceLock<Vec<String>> = OnceLock::new();
    CORPUS.get_or_init(|| {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("datasets/c4/c4-train.00000-of-00001.json.gz");
        let mut total = 0;
        DocumentReader::open(&[path], false)
            .unwrap()
            .map(|d| d.unwrap().text)
            .take_while(|text| {
                total += text.len();
                total < 200_000
            })
            .collect()
    })
}

fn tokenizer() -> &'static Tokenizer {
    static TOKENIZER: OnceLock<Tokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(|| Tokenizer::train(small_corpus(), 1024).unwrap())
}

#[test]
fn trains_to_the_requested_vocabulary() {
    let tokenizer = tokenizer();
    assert_eq!(tokenizer.vocab_size(), 1024);
    assert_eq!(tokenizer.merges().len(), 1024 - 257);
    assert_eq!(tokenizer.end_of_text(), 1023);
    let text = &small_corpus()[0];
    let ids = tokenizer.encode(text);
    assert!(ids.len() * 2 < text.len(), "{} tokens for {} bytes", ids.len(), text.len());
    assert_eq!(&tokenizer.decode(&ids).unwrap(), text);
}

#[test]
fn training_is_deterministic_whatever_the_thread_count() {
    let one_thread = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    let three_threads = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
    let a = one_thread.install(|| Tokenizer::train(small_corpus(), 600).unwrap());
    let b = three_threads.install(|| Tokenizer::train(small_corpus(), 600).unwrap());
    assert_eq!(a.merges(), b.merges());
    assert_eq!(a.merges(), &tokenizer().merges()[..600 - 257], "a smaller vocab is a prefix of a larger one");
}

#[test]
fn documents_are_separated_by_end_of_text() {
    let tokenizer = tokenizer();
    let documents = ["first doc", "second"];
    let ids = tokenizer.encode_documents(&documents);
    let eot = tokenizer.end_of_text();
    assert_eq!(ids[0], eot);
    assert_eq!(ids.iter().filter(|&&id| id == eot).count(), 2);
    assert_eq!(tokenizer.decode(&ids).unwrap(), "<|endoftext|>first doc<|endoftext|>second");
}

#[test]
fn file_round_trip() {
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("tokenizer_round_trip.bpe");
    tokenizer_file::save(tokenizer(), &path).unwrap();
    assert_eq!(&tokenizer_file::load(&path).unwrap(), tokenizer());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn decode_inverts_encode_on_any_string(text in any::<String>()) {
        let ids = tokenizer().encode(&text);
        prop_assert_eq!(tokenizer().decode(&ids).unwrap(), text);
    }

    #[test]
    fn decode_inverts_encode_on_unicode_text(text in "[a-zA-Z0-9 '\\n\\t.,!é日本語\u{1F600}\u{a0}\u{2028}-]{0,80}") {
        let ids = tokenizer().encode(&text);
        prop_assert_eq!(pre_split(&text).collect::<String>(), text.clone());
        prop_assert_eq!(tokenizer().decode(&ids).unwrap(), text);
    }

    #[test]
    fn decode_bytes_inverts_encode_bytes_on_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let ids = tokenizer().encode_bytes(&bytes);
        prop_assert_eq!(tokenizer().decode_bytes(&ids).unwrap(), bytes);
    }
}
