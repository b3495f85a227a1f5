//! Training and validation windows over memory-mapped token shards.
//!
//! A language model trained on sequences of `seq_len` tokens needs windows of `seq_len + 1` tokens: the
//! first `seq_len` are the inputs, the last `seq_len` (shifted by one) the targets.
//!
//! Training windows are drawn at random, but the position of window `b` of step `step` is a pure function
//! of `(seed, step, b)`: a run resumed from a checkpoint at step `s` sees exactly the batches it would have
//! seen, with no loader state to save. Every window start in every shard is equally likely (a shard is
//! chosen in proportion to its number of window starts).
//!
//! Validation windows go through the shards in order, back to back: window `k` of a shard starts at
//! `k * seq_len`, so the targets of consecutive windows never overlap and together cover every token of
//! the shard after the first, up to the last full window (a tail shorter than `seq_len` is left out).
//!
//! Resident memory does not grow with the shards' size: a batch is copied out of the memory maps, then the
//! pages it mapped into the process are released ([`Shard::release_pages`]; without it, random windows
//! leave most of a shard mapped). At any time at most one batch's pages are mapped. Validation releases the
//! pages of each batch it consumed too; its consecutive windows get no readahead (the maps are advised for
//! random access), which costs one disk read per page not yet cached: a batch of validation windows
//! typically spans a few pages, little next to the forward pass on it.

use std::path::PathBuf;

use super::shard::Shard;
use super::tokenizer_file::TokenizerId;
use crate::error::{Error, Result};
use crate::rng::Rng;

/// `batch_size` windows of `seq_len` inputs and `seq_len` targets, row-major (`[batch_size, seq_len]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub inputs: Vec<u32>,
    pub targets: Vec<u32>,
    pub batch_size: usize,
    pub seq_len: usize,
}

/// Where a window starts: which shard, and the offset of its first token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowStart {
    pub shard: usize,
    pub offset: usize,
}

/// A set of shards cut into windows of `seq_len + 1` tokens.
pub struct TokenDataset {
    shards: Vec<Shard>,
    seq_len: usize,
    /// `cumulative_starts[i]` = number of window starts in shards `0..i` (length `shards.len() + 1`).
    cumulative_starts: Vec<u64>,
}

impl TokenDataset {
    /// Open (and validate) the shards; they must share a vocab size and hold at least one window in total.
    pub fn open(paths: &[PathBuf], seq_len: usize) -> Result<Self> {
        let shards = paths.iter().map(|path| Shard::open(path)).collect::<Result<Vec<_>>>()?;
        Self::from_shards(shards, seq_len)
    }

    /// Open (and validate) the shards, refusing any that `tokenizer` did not write (see [`Shard::open_for`]).
    pub fn open_for(paths: &[PathBuf], seq_len: usize, tokenizer: &TokenizerId) -> Result<Self> {
        let shards = paths.iter().map(|path| Shard::open_for(path, tokenizer)).collect::<Result<Vec<_>>>()?;
        Self::from_shards(shards, seq_len)
    }

    pub fn from_shards(shards: Vec<Shard>, seq_len: usize) -> Result<Self> {
        if seq_len == 0 {
            return Err(Error::Invalid("sequence length must be at least 1".into()));
        }
        let Some(first) = shards.first() else {
            return Err(Error::Invalid("no token shards given".into()));
        };
        let vocab_size = first.vocab_size();
        if let Some(other) = shards.iter().find(|s| s.vocab_size() != vocab_size) {
            return Err(Error::Invalid(format!(
                "{} has vocab size {}, but {} has {vocab_size}",
                other.path().display(),
                other.vocab_size(),
                first.path().display()
            )));
        }
        let mut cumulative_starts = vec![0u64];
        for shard in &shards {
            let starts = shard.len().saturating_sub(seq_len) as u64; // offsets 0 ..= len - seq_len - 1
            cumulative_starts.push(cumulative_starts.last().copied().unwrap_or(0) + starts);
        }
        if cumulative_starts.last() == Some(&0) {
            return Err(Error::Invalid(format!(
                "the shards hold no window of {} tokens (sequence length {seq_len} + 1)",
                seq_len + 1
            )));
        }
        Ok(TokenDataset { shards, seq_len, cumulative_starts })
    }

    pub fn seq_len(&self) -> usize {
        self.seq_len
    }

    pub fn vocab_size(&self) -> u32 {
        self.shards[0].vocab_size()
    }

    pub fn shards(&self) -> &[Shard] {
        &self.shards
    }

    /// What could not be checked when the shards were opened, one line each ([`Shard::warnings`]).
    pub fn warnings(&self) -> Vec<String> {
        self.shards.iter().flat_map(|s| s.warnings().iter().cloned()).collect()
    }

    /// Total tokens over all shards.
    pub fn token_count(&self) -> u64 {
        self.shards.iter().map(|s| s.len() as u64).sum()
    }

    /// Where window `b` of training step `step` starts: uniform over all window starts, a pure function
    /// of `(seed, step, b)`.
    pub fn train_window(&self, seed: u64, step: u64, b: u64) -> WindowStart {
        let total = *self.cumulative_starts.last().expect("at least one shard");
        let position = Rng::new(seed).fork(step).fork(b).below(total);
        // The shard whose range of global start positions contains `position`.
        let shard = self.cumulative_starts.partition_point(|&c| c <= position) - 1;
        WindowStart { shard, offset: (position - self.cumulative_starts[shard]) as usize }
    }

    /// The training batch of `step`: windows `0..batch_size` from [`TokenDataset::train_window`].
    pub fn train_batch(&self, seed: u64, step: u64, batch_size: usize) -> Batch {
        let starts: Vec<WindowStart> = (0..batch_size as u64).map(|b| self.train_window(seed, step, b)).collect();
        self.batch_at(&starts)
    }

    /// All validation windows, in order (see the module comment).
    pub fn valid_windows(&self) -> impl Iterator<Item = WindowStart> + '_ {
        let seq_len = self.seq_len;
        self.shards.iter().enumerate().flat_map(move |(shard, s)| {
            let windows = s.len().saturating_sub(1) / seq_len;
            (0..windows).map(move |k| WindowStart { shard, offset: k * seq_len })
        })
    }

    /// Validation windows grouped into batches of `batch_size` (the last batch may be smaller).
    pub fn valid_batches(&self, batch_size: usize) -> impl Iterator<Item = Batch> + '_ {
        let starts: Vec<WindowStart> = self.valid_windows().collect();
        let batch_size = batch_size.max(1);
        (0..starts.len().div_ceil(batch_size)).map(move |i| {
            let end = ((i + 1) * batch_size).min(starts.len());
            self.batch_at(&starts[i * batch_size..end])
        })
    }

    /// Copy the windows starting at `starts` into a batch.
    pub fn batch_at(&self, starts: &[WindowStart]) -> Batch {
        let seq_len = self.seq_len;
        let mut inputs = vec![0u32; starts.len() * seq_len];
        let mut targets = vec![0u32; starts.len() * seq_len];
        let mut window = vec![0u32; seq_len + 1];
        for (row, start) in starts.iter().enumerate() {
            self.shards[start.shard].read_tokens(start.offset, &mut window);
            inputs[row * seq_len..(row + 1) * seq_len].copy_from_slice(&window[..seq_len]);
            targets[row * seq_len..(row + 1) * seq_len].copy_from_slice(&window[1..]);
        }
        self.release_pages(starts);
        Batch { inputs, targets, batch_size: starts.len(), seq_len }
    }

    /// Release the pages the windows at `starts` mapped (see the module comment). It costs a small fraction
    /// of a training step (docs/PERFORMANCE.md, "Figures moved out of code comments").
    fn release_pages(&self, starts: &[WindowStart]) {
        let mut shards: Vec<usize> = starts.iter().map(|s| s.shard).collect();
        shards.sort_unstable();
        shards.dedup();
        for shard in shards {
            // Failure only leaves pages mapped (counted as resident, still reclaimable): not worth failing a batch.
            let _ = self.shards[shard].release_pages();
        }
    }
}
