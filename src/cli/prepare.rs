//! `peerlm prepare`: text → `tokenizer.bpe` + `train_000.bin`... + `valid_000.bin`...
//!
//! Two streaming passes over the training input. Pass 1 reads documents until `--train-sample-bytes` of
//! text and trains the tokenizer on them. Pass 2 reads everything again, encodes it in parallel a batch of
//! documents at a time, and writes shards of at most `--shard-tokens` tokens. Held-out documents come from
//! `--valid` files or are the last `--valid-docs` documents of the input (kept back by a queue of that
//! length, in both passes, so the tokenizer never sees them either). Memory holds the tokenizer sample,
//! one batch and the held-out queue, never the whole input.
//!
//! With `--tokenizer` or `--from-checkpoint` there is no pass 1: an existing tokenizer encodes the text,
//! so held-out text can be encoded for a trained model with `--valid` alone. Every shard records its
//! tokenizer's hash, and the tokenizer is copied beside the shards.
//!
//! `prepare` owns its output directory: it refuses one that already holds a prepared data set unless
//! given `--overwrite`, and then removes the old shards it did not rewrite, which training would
//! otherwise mix in.

use std::collections::VecDeque;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Args;
use peerlm::data::atomic_file::sweep_stale_temps;
use peerlm::data::bpe::{MAX_VOCAB, MIN_VOCAB};
use peerlm::data::c4::DocumentReader;
use peerlm::data::shard::ShardWriter;
use peerlm::data::{tokenizer_file, Tokenizer, TokenizerId};
use peerlm::Error;

#[derive(Args)]
pub struct PrepareArgs {
    /// Training text: C4-style JSON lines (*.json.gz, *.jsonl, *.json) or plain *.txt/*.raw files (one
    /// document each), or directories of JSON lines, read in the order given. Optional with an existing
    /// tokenizer.
    #[arg(long, num_args = 1.., required_unless_present_any = ["tokenizer", "from_checkpoint"])]
    input: Vec<PathBuf>,
    /// Output directory (created if missing).
    #[arg(long)]
    out: PathBuf,
    /// Vocabulary size of the tokenizer to train: 256 byte tokens + merges + 1 end-of-text (257..=65536).
    #[arg(long, required_unless_present_any = ["tokenizer", "from_checkpoint"], conflicts_with_all = ["tokenizer", "from_checkpoint"])]
    vocab: Option<usize>,
    /// Encode with this tokenizer file (a `tokenizer.bpe`) instead of training one.
    #[arg(long, conflicts_with = "from_checkpoint")]
    tokenizer: Option<PathBuf>,
    /// Encode with the tokenizer stored in this checkpoint instead of training one.
    #[arg(long)]
    from_checkpoint: Option<PathBuf>,
    /// Held-out files, encoded into valid_*.bin.
    #[arg(long, num_args = 1.., conflicts_with = "valid_docs")]
    valid: Vec<PathBuf>,
    /// Hold out the last N documents of the input instead of reading --valid files.
    #[arg(long)]
    valid_docs: Option<usize>,
    /// The JSON field holding a document's text.
    #[arg(long, default_value = "text")]
    field: String,
    /// Count malformed lines and go on, instead of stopping at the first one.
    #[arg(long)]
    skip_bad_lines: bool,
    /// Bytes of text the tokenizer is trained on (the first documents of the input).
    #[arg(long, default_value_t = 256 << 20)]
    train_sample_bytes: u64,
    /// Tokens per shard at most; larger outputs are split into train_000.bin, train_001.bin, ...
    #[arg(long, default_value_t = 100_000_000)]
    shard_tokens: u64,
    /// Replace the data set already in --out (its shards that are not rewritten are removed).
    #[arg(long)]
    overwrite: bool,
}

impl PrepareArgs {
    /// The defaults of the command line for `input` files held out against `valid` files.
    pub fn new(input: Vec<PathBuf>, valid: Vec<PathBuf>, out: PathBuf, vocab: usize) -> Self {
        PrepareArgs {
            input,
            out,
            vocab: Some(vocab),
            tokenizer: None,
            from_checkpoint: None,
            valid,
            valid_docs: None,
            field: "text".into(),
            skip_bad_lines: false,
            train_sample_bytes: 256 << 20,
            shard_tokens: 100_000_000,
            overwrite: false,
        }
    }

    fn reader(&self, files: &[PathBuf]) -> Result<DocumentReader, Error> {
        Ok(DocumentReader::open(files, self.skip_bad_lines)?.with_field(&self.field))
    }
}

/// Text encoded per parallel batch in pass 2.
const BATCH_BYTES: usize = 8 << 20;

pub fn run(args: &PrepareArgs) -> Result<(), Box<dyn std::error::Error>> {
    check_args(args)?;
    std::fs::create_dir_all(&args.out).map_err(|e| Error::io(args.out.display(), e))?;
    for temp in sweep_stale_temps(&args.out)? {
        eprintln!("removed {}, left by a writer that was killed", temp.display());
    }
    let old_outputs = prepared_outputs(&args.out)?;
    if !old_outputs.is_empty() && !args.overwrite {
        return Err(format!(
            "{} already holds a prepared data set ({} files: tokenizer.bpe, shards); pass --overwrite to replace it",
            args.out.display(),
            old_outputs.len()
        )
        .into());
    }
    let started = Instant::now();
    let hold_back = args.valid_docs.unwrap_or(0);
    let tokenizer = match (&args.tokenizer, &args.from_checkpoint) {
        (Some(path), _) => tokenizer_file::load(path)?,
        (None, Some(checkpoint)) => peerlm::train::load_model_and_tokenizer(checkpoint)?.2,
        (None, None) => train_tokenizer(args, hold_back)?,
    };
    let tokenizer_path = args.out.join("tokenizer.bpe");
    tokenizer_file::save(&tokenizer, &tokenizer_path)?;
    let id = TokenizerId::of(&tokenizer, tokenizer_path.display().to_string());

    let mut held: VecDeque<String> = VecDeque::with_capacity(hold_back);
    let mut written = Vec::new();
    if !args.input.is_empty() {
        let (train_stats, skipped) = encode_input(args, &tokenizer, &id, &mut held)?;
        train_stats.print("train");
        print_skipped(args, "the input", skipped);
        written.extend(train_stats.shards);
    }
    if !args.valid.is_empty() || args.valid_docs.is_some() {
        let (valid_stats, skipped) = encode_held_out(args, &tokenizer, &id, held)?;
        valid_stats.print("valid");
        print_skipped(args, "--valid files", skipped);
        written.extend(valid_stats.shards);
    }
    remove_stale_shards(&old_outputs, &written)?;
    let threads = peerlm::kernels::parallel::current_num_threads();
    println!("time: {:.1} s on {threads} threads, output in {}", started.elapsed().as_secs_f64(), args.out.display());
    Ok(())
}

fn check_args(args: &PrepareArgs) -> Result<(), String> {
    let given_tokenizer = args.tokenizer.is_some() || args.from_checkpoint.is_some();
    if !given_tokenizer && args.valid.is_empty() && args.valid_docs.is_none() {
        return Err("give held-out data: --valid <files> or --valid-docs <N>".into());
    }
    if args.input.is_empty() && (args.valid.is_empty() || args.valid_docs.is_some()) {
        return Err("nothing to encode: give --input files, or --valid files".into());
    }
    if let Some(vocab) = args.vocab.filter(|v| !(MIN_VOCAB..=MAX_VOCAB).contains(v)) {
        return Err(format!("--vocab {vocab} is not in {MIN_VOCAB}..={MAX_VOCAB} (256 bytes + merges + end-of-text)"));
    }
    if args.shard_tokens == 0 || args.shard_tokens > i32::MAX as u64 {
        return Err(format!("--shard-tokens {} is not in 1..={}", args.shard_tokens, i32::MAX));
    }
    Ok(())
}

/// Pass 1: a tokenizer of `--vocab` tokens trained on the first documents of the input.
fn train_tokenizer(args: &PrepareArgs, hold_back: usize) -> Result<Tokenizer, Box<dyn std::error::Error>> {
    let vocab = args.vocab.ok_or("--vocab: the size of the tokenizer to train")?;
    let (sample, sample_bytes) = read_tokenizer_sample(args, hold_back)?;
    let training = Instant::now();
    let tokenizer = Tokenizer::train(&sample, vocab)?;
    println!(
        "tokenizer: vocab {} = 256 bytes + {} merges + <|endoftext|> (id {}), trained on {:.1} MB in {:.1} s{}",
        tokenizer.vocab_size(),
        tokenizer.merges().len(),
        tokenizer.end_of_text(),
        sample_bytes as f64 / 1e6,
        training.elapsed().as_secs_f64(),
        if tokenizer.vocab_size() < vocab { " (the sample ran out of pairs to merge)" } else { "" }
    );
    Ok(tokenizer)
}

/// Pass 2: the input into train shards, keeping its last `--valid-docs` documents back in `held`; returns
/// the counts and the bad lines skipped.
fn encode_input(
    args: &PrepareArgs,
    tokenizer: &Tokenizer,
    id: &TokenizerId,
    held: &mut VecDeque<String>,
) -> Result<(Stats, u64), Box<dyn std::error::Error>> {
    let hold_back = args.valid_docs.unwrap_or(0);
    let mut train = ShardSet::new(&args.out, "train", id, args.shard_tokens);
    let mut reader = args.reader(&args.input)?;
    let mut batch = Vec::new();
    let mut batch_bytes = 0;
    let mut progress = Progress::new("encoding train");
    for document in reader.by_ref() {
        held.push_back(document?.text);
        if held.len() > hold_back {
            let text = held.pop_front().expect("queue is longer than hold_back");
            batch_bytes += text.len();
            batch.push(text);
            if batch_bytes >= BATCH_BYTES {
                train.add_documents(tokenizer, &batch)?;
                progress.show(train.stats.documents, train.stats.bytes);
                batch.clear();
                batch_bytes = 0;
            }
        }
    }
    train.add_documents(tokenizer, &batch)?;
    progress.done();
    if train.stats.documents == 0 {
        return Err(format!(
            "no training documents left (the input has {} and --valid-docs holds back {hold_back})",
            held.len()
        )
        .into());
    }
    Ok((train.finish()?, reader.skipped_lines()))
}

/// The held-out documents (`held`, or the `--valid` files) into valid shards; returns the counts and the
/// bad lines skipped.
fn encode_held_out(
    args: &PrepareArgs,
    tokenizer: &Tokenizer,
    id: &TokenizerId,
    mut held: VecDeque<String>,
) -> Result<(Stats, u64), Box<dyn std::error::Error>> {
    let mut valid = ShardSet::new(&args.out, "valid", id, args.shard_tokens);
    if args.valid.is_empty() {
        valid.add_documents(tokenizer, held.make_contiguous())?;
        return Ok((valid.finish()?, 0));
    }
    let mut reader = args.reader(&args.valid)?;
    let mut batch = Vec::new();
    for document in reader.by_ref() {
        batch.push(document?.text);
        if batch.len() >= 4096 {
            valid.add_documents(tokenizer, &batch)?;
            batch.clear();
        }
    }
    valid.add_documents(tokenizer, &batch)?;
    Ok((valid.finish()?, reader.skipped_lines()))
}

fn print_skipped(args: &PrepareArgs, source: &str, skipped: u64) {
    if args.skip_bad_lines {
        println!("skipped bad lines: {skipped} in {source}");
    }
}

/// Removes the shards of a replaced data set that this run did not rewrite, which training would
/// otherwise mix in.
fn remove_stale_shards(old_outputs: &[PathBuf], written: &[PathBuf]) -> Result<(), Error> {
    for stale in old_outputs.iter().filter(|p| !written.contains(p)) {
        if stale.extension().is_some_and(|e| e == "bin") {
            std::fs::remove_file(stale).map_err(|e| Error::io(stale.display(), e))?;
            println!("removed {}, a shard of the replaced data set", stale.display());
        }
    }
    Ok(())
}

/// The files of a prepared data set already in `dir`: `tokenizer.bpe` and `train_*.bin`/`valid_*.bin`.
fn prepared_outputs(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir.display(), e))? {
        let path = entry.map_err(|e| Error::io(dir.display(), e))?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let shard = (name.starts_with("train_") || name.starts_with("valid_")) && name.ends_with(".bin");
        if shard || name == "tokenizer.bpe" {
            found.push(path);
        }
    }
    Ok(found)
}

/// Pass 1: the texts of the first documents (minus the held-out tail) up to the sample size.
fn read_tokenizer_sample(args: &PrepareArgs, hold_back: usize) -> Result<(Vec<String>, u64), Error> {
    let mut reader = args.reader(&args.input)?;
    let mut held: VecDeque<String> = VecDeque::with_capacity(hold_back);
    let mut sample = Vec::new();
    let mut sample_bytes = 0u64;
    let mut progress = Progress::new("reading tokenizer sample");
    for document in reader.by_ref() {
        held.push_back(document?.text);
        if held.len() > hold_back {
            let text = held.pop_front().expect("queue is longer than hold_back");
            sample_bytes += text.len() as u64;
            sample.push(text);
            progress.show(sample.len() as u64, sample_bytes);
            if sample_bytes >= args.train_sample_bytes {
                break;
            }
        }
    }
    progress.done();
    Ok((sample, sample_bytes))
}

/// Counts for the summary.
#[derive(Default)]
struct Stats {
    documents: u64,
    bytes: u64,
    tokens: u64,
    shards: Vec<PathBuf>,
}

impl Stats {
    fn print(&self, split: &str) {
        let names: Vec<String> =
            self.shards.iter().filter_map(|p| p.file_name()).map(|n| n.to_string_lossy().into_owned()).collect();
        println!(
            "{split}: {} documents, {} bytes, {} tokens, {:.3} bytes/token -> {}",
            self.documents,
            self.bytes,
            self.tokens,
            self.bytes as f64 / self.tokens.max(1) as f64,
            names.join(", ")
        );
    }
}

/// `<split>_000.bin`, `<split>_001.bin`, ...: a new shard whenever one reaches `shard_tokens`.
struct ShardSet {
    dir: PathBuf,
    split: &'static str,
    tokenizer: TokenizerId,
    shard_tokens: u64,
    current: Option<ShardWriter>,
    stats: Stats,
}

impl ShardSet {
    fn new(dir: &Path, split: &'static str, tokenizer: &TokenizerId, shard_tokens: u64) -> Self {
        let tokenizer = tokenizer.clone();
        ShardSet { dir: dir.to_path_buf(), split, tokenizer, shard_tokens, current: None, stats: Stats::default() }
    }

    fn add_documents(&mut self, tokenizer: &Tokenizer, documents: &[String]) -> Result<(), Error> {
        let tokens = tokenizer.encode_documents(documents);
        self.stats.documents += documents.len() as u64;
        self.stats.bytes += documents.iter().map(|d| d.len() as u64).sum::<u64>();
        self.stats.tokens += tokens.len() as u64;
        let mut rest = tokens.as_slice();
        while !rest.is_empty() {
            if self.current.is_none() {
                let writer = self.new_shard()?;
                self.current = Some(writer);
            }
            let writer = self.current.as_mut().expect("a shard is open");
            let room = (self.shard_tokens - writer.len()) as usize;
            let (now, later) = rest.split_at(room.min(rest.len()));
            writer.write(now)?;
            rest = later;
            if writer.len() == self.shard_tokens {
                self.current.take().expect("a shard is open").finish()?;
            }
        }
        Ok(())
    }

    fn new_shard(&mut self) -> Result<ShardWriter, Error> {
        let path = self.dir.join(format!("{}_{:03}.bin", self.split, self.stats.shards.len()));
        let writer = ShardWriter::create_for(&path, &self.tokenizer)?;
        self.stats.shards.push(path);
        Ok(writer)
    }

    /// Finish the open shard; with no tokens at all, still write an empty `<split>_000.bin`.
    fn finish(mut self) -> Result<Stats, Error> {
        if self.current.is_none() && self.stats.shards.is_empty() {
            self.current = Some(self.new_shard()?);
        }
        if let Some(writer) = self.current.take() {
            writer.finish()?;
        }
        Ok(self.stats)
    }
}

/// A one-line progress report on stderr, rewritten in place (`\r`) at most four times a second, and only
/// when stderr is a terminal.
struct Progress {
    label: &'static str,
    started: Instant,
    last_shown: Option<Instant>,
    enabled: bool,
}

impl Progress {
    fn new(label: &'static str) -> Self {
        Progress { label, started: Instant::now(), last_shown: None, enabled: std::io::stderr().is_terminal() }
    }

    fn show(&mut self, documents: u64, bytes: u64) {
        if !self.enabled || self.last_shown.is_some_and(|t| t.elapsed().as_millis() < 250) {
            return;
        }
        self.last_shown = Some(Instant::now());
        let seconds = self.started.elapsed().as_secs_f64().max(1e-9);
        eprint!(
            "\r{}: {documents} documents, {:.1} MB, {:.1} MB/s   ",
            self.label,
            bytes as f64 / 1e6,
            bytes as f64 / 1e6 / seconds
        );
        let _ = std::io::stderr().flush();
    }

    fn done(&self) {
        if self.enabled && self.last_shown.is_some() {
            eprintln!();
        }
    }
}
