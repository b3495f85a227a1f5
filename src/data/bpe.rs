//! Byte-level BPE (Sennrich et al. 2016; GPT-2's byte-level variant, Radford et al. 2019): training,
//! encoding and decoding.
//!
//! Token ids: `0..256` are the 256 byte values, `256 + r` is the token made by merge number `r`, and the
//! last id is the end-of-text token `<|endoftext|>`. So **vocab size = 256 + merges + 1**; a vocabulary of
//! 4096 has 3839 merges and end-of-text id 4095. Every token stands for a fixed byte string, so decoding
//! concatenates bytes and `decode(encode(s)) == s` for every string.
//!
//! Training counts the pre-split words ([`super::pretokenize`]) of the sample, then repeatedly merges the
//! most frequent adjacent pair. After each merge only the words that contained the pair are updated, and
//! the pair counts they contribute are changed by their difference; a max-heap with lazy deletion finds
//! the next pair. Ties go to the smallest pair `(left id, right id)`, so training is deterministic.
//! Encoding applies merges to each word in rank order (lowest first), as training created them, with a
//! per-thread cache of encoded words. Files: see [`super::tokenizer_file`].

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Mutex;

use crate::kernels::parallel::prelude::*;

use super::fxhash::{FxHashMap, FxHashSet};
use super::pretokenize::pre_split;
use crate::error::{Error, Result};

/// Smallest and largest vocabulary `train` accepts: no merges at all, or ids that still fit in 16 bits.
pub const MIN_VOCAB: usize = 257;
pub const MAX_VOCAB: usize = 65_536;
/// How end-of-text decodes.
pub const END_OF_TEXT: &str = "<|endoftext|>";

/// Words whose encoding is cached per thread, at most (the cache is cleared when full).
const CACHE_CAPACITY: usize = 1 << 18;

type Pair = (u32, u32);

pub struct Tokenizer {
    /// `merges[r]` = the pair that merge `r` joins into token `256 + r`.
    merges: Vec<Pair>,
    /// pair → rank, for encoding.
    ranks: FxHashMap<Pair, u32>,
    /// The bytes each token id stands for (end-of-text excluded).
    token_bytes: Vec<Vec<u8>>,
    /// One word cache per rayon worker (plus one for other threads), so encoding threads never wait.
    caches: Vec<Mutex<FxHashMap<Box<str>, Vec<u32>>>>,
}

impl Clone for Tokenizer {
    fn clone(&self) -> Self {
        Tokenizer::from_merges(self.merges.clone()).expect("merges of a valid tokenizer are valid")
    }
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokenizer {{ vocab_size: {}, merges: {} }}", self.vocab_size(), self.merges.len())
    }
}

impl PartialEq for Tokenizer {
    fn eq(&self, other: &Self) -> bool {
        self.merges == other.merges
    }
}

impl Tokenizer {
    /// Build from a merge list; merge `r` may only use ids below `256 + r` and no pair may appear twice.
    pub fn from_merges(merges: Vec<(u32, u32)>) -> Result<Self> {
        if merges.len() > MAX_VOCAB - MIN_VOCAB {
            return Err(Error::Invalid(format!("{} merges: at most {}", merges.len(), MAX_VOCAB - MIN_VOCAB)));
        }
        let mut token_bytes: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
        let mut ranks = FxHashMap::default();
        for (rank, &(left, right)) in merges.iter().enumerate() {
            let next_id = 256 + rank as u32;
            if left >= next_id || right >= next_id {
                return Err(Error::Invalid(format!(
                    "merge {rank} ({left} {right}) uses a token id not defined before it (ids must be < {next_id})"
                )));
            }
            if ranks.insert((left, right), rank as u32).is_some() {
                return Err(Error::Invalid(format!("merge {rank} ({left} {right}) repeats an earlier merge")));
            }
            let bytes = [token_bytes[left as usize].as_slice(), token_bytes[right as usize].as_slice()].concat();
            token_bytes.push(bytes);
        }
        let caches =
            (0..=crate::kernels::parallel::current_num_threads()).map(|_| Mutex::new(FxHashMap::default())).collect();
        Ok(Tokenizer { merges, ranks, token_bytes, caches })
    }

    /// 256 bytes + merges + end-of-text.
    pub fn vocab_size(&self) -> usize {
        self.token_bytes.len() + 1
    }

    /// The id of `<|endoftext|>`, the last one.
    pub fn end_of_text(&self) -> u32 {
        self.token_bytes.len() as u32
    }

    pub fn merges(&self) -> &[(u32, u32)] {
        &self.merges
    }

    /// The bytes a token stands for (`<|endoftext|>` for end-of-text), or `None` for an id out of range.
    pub fn token_bytes(&self, id: u32) -> Option<&[u8]> {
        if id == self.end_of_text() {
            return Some(END_OF_TEXT.as_bytes());
        }
        self.token_bytes.get(id as usize).map(Vec::as_slice)
    }

    /// Train on `documents` to `vocab_size` tokens (256 bytes + merges + end-of-text). If the text runs out
    /// of pairs to merge first (a tiny sample), the vocabulary is smaller: check [`Tokenizer::vocab_size`].
    pub fn train<S: AsRef<str> + Sync>(documents: &[S], vocab_size: usize) -> Result<Self> {
        if !(MIN_VOCAB..=MAX_VOCAB).contains(&vocab_size) {
            return Err(Error::Invalid(format!(
                "vocabulary size {vocab_size} out of range {MIN_VOCAB}..={MAX_VOCAB} (256 bytes + merges + end-of-text)"
            )));
        }
        let word_counts = count_words(documents);
        let merges = MergeTrainer::new(&word_counts).run(vocab_size - MIN_VOCAB);
        Tokenizer::from_merges(merges)
    }

    /// Token ids of `text` (no end-of-text added).
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut ids = Vec::with_capacity(text.len() / 3);
        self.encode_into(text, &mut ids);
        ids
    }

    /// Append the ids of `text` to `ids`.
    pub fn encode_into(&self, text: &str, ids: &mut Vec<u32>) {
        let slot = crate::kernels::parallel::current_thread_index()
            .map_or(self.caches.len() - 1, |i| i.min(self.caches.len() - 1));
        let mut cache = self.caches[slot].lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        for word in pre_split(text) {
            if let Some(cached) = cache.get(word) {
                ids.extend_from_slice(cached);
                continue;
            }
            let word_ids = self.encode_word(word.as_bytes());
            ids.extend_from_slice(&word_ids);
            if cache.len() >= CACHE_CAPACITY {
                cache.clear();
            }
            cache.insert(word.into(), word_ids);
        }
    }

    /// Ids of arbitrary bytes: valid UTF-8 runs are pre-split as text, each invalid byte is its own word.
    pub fn encode_bytes(&self, bytes: &[u8]) -> Vec<u32> {
        let mut ids = Vec::with_capacity(bytes.len() / 3);
        for chunk in bytes.utf8_chunks() {
            self.encode_into(chunk.valid(), &mut ids);
            ids.extend(chunk.invalid().iter().map(|&b| b as u32));
        }
        ids
    }

    /// Encode documents in parallel; each document's ids are preceded by end-of-text, as in llm.c's
    /// data scripts, so the model always sees where a document starts.
    pub fn encode_documents<S: AsRef<str> + Sync>(&self, documents: &[S]) -> Vec<u32> {
        let per_document: Vec<Vec<u32>> = documents
            .par_iter()
            .map(|document| {
                let text = document.as_ref();
                let mut ids = Vec::with_capacity(text.len() / 3 + 1);
                ids.push(self.end_of_text());
                self.encode_into(text, &mut ids);
                ids
            })
            .collect();
        per_document.concat()
    }

    /// Merge one word's bytes: repeatedly join the adjacent pair with the lowest merge rank.
    fn encode_word(&self, word: &[u8]) -> Vec<u32> {
        let mut ids: Vec<u32> = word.iter().map(|&b| b as u32).collect();
        while ids.len() > 1 {
            let best = ids.windows(2).filter_map(|w| self.ranks.get(&(w[0], w[1])).copied()).min();
            let Some(rank) = best else { break };
            let (left, right) = self.merges[rank as usize];
            merge_pair(&mut ids, left, right, 256 + rank);
        }
        ids
    }

    /// The bytes of a token sequence (end-of-text renders as `<|endoftext|>`); an id out of range is an error.
    pub fn decode_bytes(&self, ids: &[u32]) -> Result<Vec<u8>> {
        let mut bytes = Vec::with_capacity(ids.len() * 4);
        for (position, &id) in ids.iter().enumerate() {
            let token = self.token_bytes(id).ok_or_else(|| {
                Error::Invalid(format!(
                    "token id {id} at position {position} is not below vocab size {}",
                    self.vocab_size()
                ))
            })?;
            bytes.extend_from_slice(token);
        }
        Ok(bytes)
    }

    /// Decode to text; byte sequences that are not UTF-8 (a cut-off multi-byte char) become U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        Ok(String::from_utf8_lossy(&self.decode_bytes(ids)?).into_owned())
    }
}

/// Replace every non-overlapping occurrence of `(left, right)` in `ids`, left to right, by `merged`.
fn merge_pair(ids: &mut Vec<u32>, left: u32, right: u32, merged: u32) {
    let mut read = 0;
    let mut write = 0;
    while read < ids.len() {
        if read + 1 < ids.len() && ids[read] == left && ids[read + 1] == right {
            ids[write] = merged;
            read += 2;
        } else {
            ids[write] = ids[read];
            read += 1;
        }
        write += 1;
    }
    ids.truncate(write);
}

/// Documents per word-counting task: enough to amortise a task's hash map, few enough maps at once.
const COUNT_CHUNK: usize = 1024;

/// How often each pre-split word occurs, counted in parallel over chunks of documents and merged.
fn count_words<S: AsRef<str> + Sync>(documents: &[S]) -> FxHashMap<&str, u64> {
    let partials: Vec<FxHashMap<&str, u64>> = documents
        .par_chunks(COUNT_CHUNK)
        .map(|chunk| {
            let mut counts: FxHashMap<&str, u64> = FxHashMap::default();
            for word in chunk.iter().flat_map(|document| pre_split(document.as_ref())) {
                *counts.entry(word).or_insert(0) += 1;
            }
            counts
        })
        .collect();
    partials.into_iter().fold(FxHashMap::default(), |a, b| {
        let (mut big, small) = if a.len() >= b.len() { (a, b) } else { (b, a) };
        for (word, count) in small {
            *big.entry(word).or_insert(0) += count;
        }
        big
    })
}

/// The state of the merge loop: the distinct words as id sequences, the count of every adjacent pair,
/// which words contain each pair, and a heap of (count, pair) candidates.
struct MergeTrainer {
    words: Vec<Vec<u32>>,
    word_counts: Vec<u64>,
    pair_counts: FxHashMap<Pair, u64>,
    /// Words that contained the pair when it was recorded (may be stale: checked when used).
    pair_words: FxHashMap<Pair, Vec<u32>>,
    /// Max-heap on count, then on the smallest pair; entries whose count is out of date are skipped.
    heap: BinaryHeap<(u64, Reverse<Pair>)>,
}

impl MergeTrainer {
    fn new(word_counts: &FxHashMap<&str, u64>) -> Self {
        // Sort words so that the trainer's state, and so the result, never depends on hash-map order.
        let mut sorted: Vec<(&str, u64)> = word_counts.iter().map(|(w, c)| (*w, *c)).collect();
        sorted.sort_unstable();
        let words: Vec<Vec<u32>> = sorted.iter().map(|(w, _)| w.bytes().map(u32::from).collect()).collect();
        let counts: Vec<u64> = sorted.iter().map(|(_, c)| *c).collect();
        let mut pair_counts: FxHashMap<Pair, u64> = FxHashMap::default();
        let mut pair_words: FxHashMap<Pair, Vec<u32>> = FxHashMap::default();
        for (index, word) in words.iter().enumerate() {
            for pair in word.windows(2) {
                *pair_counts.entry((pair[0], pair[1])).or_insert(0) += counts[index];
                pair_words.entry((pair[0], pair[1])).or_default().push(index as u32);
            }
        }
        let heap = pair_counts.iter().map(|(&pair, &count)| (count, Reverse(pair))).collect();
        MergeTrainer { words, word_counts: counts, pair_counts, pair_words, heap }
    }

    /// The most frequent pair (ties: smallest), skipping heap entries made stale by earlier merges.
    fn pop_best(&mut self) -> Option<Pair> {
        while let Some((count, Reverse(pair))) = self.heap.pop() {
            if count > 0 && self.pair_counts.get(&pair) == Some(&count) {
                return Some(pair);
            }
        }
        None
    }

    fn run(mut self, merge_count: usize) -> Vec<Pair> {
        let mut merges = Vec::with_capacity(merge_count);
        while merges.len() < merge_count {
            let Some(pair) = self.pop_best() else { break };
            self.apply_merge(pair, 256 + merges.len() as u32);
            merges.push(pair);
        }
        merges
    }

    /// Merge `pair` into `new_id` in every word that has it, updating pair counts by difference.
    fn apply_merge(&mut self, pair: Pair, new_id: u32) {
        let mut word_indices = self.pair_words.remove(&pair).unwrap_or_default();
        word_indices.sort_unstable();
        word_indices.dedup();
        let mut changed: FxHashSet<Pair> = FxHashSet::default();
        for &index in &word_indices {
            let word = &mut self.words[index as usize];
            if !word.windows(2).any(|w| (w[0], w[1]) == pair) {
                continue; // stale entry: an earlier merge already consumed the pair here
            }
            let count = self.word_counts[index as usize];
            for w in word.windows(2) {
                let old = self.pair_counts.get_mut(&(w[0], w[1])).expect("pair of a word is counted");
                *old -= count;
                changed.insert((w[0], w[1]));
            }
            merge_pair(word, pair.0, pair.1, new_id);
            for w in word.windows(2) {
                *self.pair_counts.entry((w[0], w[1])).or_insert(0) += count;
                changed.insert((w[0], w[1]));
                if w[0] == new_id || w[1] == new_id {
                    self.pair_words.entry((w[0], w[1])).or_default().push(index);
                }
            }
        }
        let mut changed: Vec<Pair> = changed.into_iter().collect();
        changed.sort_unstable();
        for changed_pair in changed {
            let count = self.pair_counts[&changed_pair];
            if count == 0 {
                self.pair_counts.remove(&changed_pair);
            } else {
                self.heap.push((count, Reverse(changed_pair)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_most_frequent_pair_first_with_smallest_pair_on_ties() {
        // Words "ab" x3, "cd" x3 and ","s: (a, b) and (c, d) tie at 3 → (a, b) first since it is smaller.
        let tokenizer = Tokenizer::train(&["ab,ab,ab,cd,cd,cd"], 258).unwrap();
        assert_eq!(tokenizer.merges(), &[(b'a' as u32, b'b' as u32)]);
        assert_eq!(tokenizer.vocab_size(), 258);
        assert_eq!(tokenizer.end_of_text(), 257);
    }

    #[test]
    fn encodes_with_merges_and_round_trips() {
        let text = "the cat the hat the bat, the end";
        let tokenizer = Tokenizer::train(&[text], 300).unwrap();
        let ids = tokenizer.encode(text);
        assert!(ids.len() < text.len());
        assert_eq!(tokenizer.decode(&ids).unwrap(), text);
    }

    #[test]
    fn rejects_bad_merges_and_vocab_sizes() {
        assert!(Tokenizer::from_merges(vec![(256, 1)]).is_err());
        assert!(Tokenizer::from_merges(vec![(1, 2), (1, 2)]).is_err());
        assert!(Tokenizer::train(&["x"], 256).is_err());
        assert!(Tokenizer::train(&["x"], 65_537).is_err());
        assert!(Tokenizer::from_merges(vec![]).unwrap().decode_bytes(&[257]).is_err());
    }
}
