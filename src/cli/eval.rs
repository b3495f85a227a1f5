//! `peerlm eval`: perplexity, bits per byte and expert usage of a checkpoint on held-out text (raw files,
//! encoded with the checkpoint's own tokenizer) or prepared shards (refused unless that tokenizer wrote
//! them), and optionally LAMBADA last-word accuracy.

use std::error::Error;
use std::path::{Path, PathBuf};

use clap::Args;
use peerlm::data::{tokenizer_file, DocumentReader, Tokenizer, TokenizerId};
use peerlm::eval::lambada::score_lambada;
use peerlm::eval::text::{
    score_documents, score_token_documents, split_documents, windows_per_batch, Protocol, Score, TextReport,
};
use peerlm::eval::{layer_usage, LayerUsage};
use peerlm::model::{Gpt, ModelConfig};

use super::{open_model, open_shards};

#[derive(Args)]
pub struct EvalArgs {
    /// A model file written by `peerlm export`, or a checkpoint written by `peerlm train` (memory-mapped);
    /// its own tokenizer encodes --text files.
    #[arg(long)]
    checkpoint: PathBuf,
    /// Raw text to score: plain .txt/.raw files (one document each) or JSON lines (.jsonl, .json,
    /// .json.gz; one document per line). One figure per file, then the total.
    #[arg(long, num_args = 1.., required_unless_present = "data", conflicts_with = "data")]
    text: Vec<PathBuf>,
    /// Prepared data directories (from `peerlm prepare`); each one's valid_*.bin shards are scored.
    #[arg(long, num_args = 1..)]
    data: Vec<PathBuf>,
    /// The JSON field holding a document's text.
    #[arg(long, default_value = "text")]
    field: String,
    /// Also print a figure for every document.
    #[arg(long)]
    per_doc: bool,
    /// Tokens between window starts. The default, the model's context, scores non-overlapping windows
    /// (every token once, with 1 to context tokens of context); a smaller stride slides the window so
    /// that every token after a document's first window sees at least context - stride + 1 tokens (the
    /// protocol of published WikiText perplexities; costs context/stride times more).
    #[arg(long)]
    stride: Option<usize>,
    /// Also score each --text file as LAMBADA passages: last-word accuracy (greedy) and per-word perplexity.
    #[arg(long, requires = "text")]
    lambada: bool,
    /// Load the model even if its estimated memory exceeds what is available.
    #[arg(long)]
    no_memory_check: bool,
    /// Also check the expert and value tables against the file's checksums (streaming reads; the other
    /// tensors are always checked).
    #[arg(long)]
    verify_tables: bool,
}

pub fn run(args: &EvalArgs) -> Result<(), Box<dyn Error>> {
    let batch = |m: &ModelConfig| windows_per_batch(m.vocab_size, m.seq_len);
    let mut opened = open_model(&args.checkpoint, batch, args.no_memory_check, args.verify_tables)?;
    let (model, tokenizer) = opened.parts();
    let context = model.config().seq_len;
    let protocol = Protocol { context, stride: args.stride.unwrap_or(context) };
    protocol.check(context).map_err(|e| format!("--stride: {e}"))?;
    println!("protocol: {}", protocol.describe());
    let mut total = Score::default();
    if args.data.is_empty() {
        for path in &args.text {
            let report = score_file(model, tokenizer, path, args, &protocol)?;
            total.add(&report.total);
            if args.lambada {
                print_lambada(model, tokenizer, path, &args.field, context)?;
            }
        }
    } else {
        let id = TokenizerId::of(tokenizer, args.checkpoint.display().to_string());
        for dir in &args.data {
            let report = score_data_dir(model, tokenizer, &id, dir, args.per_doc, &protocol)?;
            total.add(&report.total);
        }
    }
    if args.text.len() + args.data.len() > 1 {
        println!("total: {}", figures(&total));
    }
    Ok(())
}

/// The documents of one text file.
fn score_file(
    model: &mut Gpt<f32>,
    tokenizer: &Tokenizer,
    path: &Path,
    args: &EvalArgs,
    protocol: &Protocol,
) -> Result<TextReport, Box<dyn Error>> {
    let documents = read_documents(path, &args.field)?;
    let (report, usage) =
        tracking_usage(model, |model| score_documents(model, tokenizer, &documents, protocol, args.per_doc));
    print_report(&path.display().to_string(), &report, &usage);
    Ok(report)
}

fn read_documents(path: &Path, field: &str) -> Result<Vec<String>, Box<dyn Error>> {
    let reader = DocumentReader::open(&[path.to_path_buf()], false)?.with_field(field);
    Ok(reader.map(|document| document.map(|d| d.text)).collect::<Result<_, _>>()?)
}

/// The valid shards of a prepared directory, cut back into documents at each end-of-text token. The
/// directory's tokenizer file, if any, must be the checkpoint's (shards too old to carry a tokenizer hash
/// are caught by it).
fn score_data_dir(
    model: &mut Gpt<f32>,
    tokenizer: &Tokenizer,
    id: &TokenizerId,
    dir: &Path,
    per_doc: bool,
    protocol: &Protocol,
) -> Result<TextReport, Box<dyn Error>> {
    let tokenizer_path = dir.join("tokenizer.bpe");
    if tokenizer_path.exists() {
        let theirs = tokenizer_file::hash(&tokenizer_file::load(&tokenizer_path)?);
        if theirs != id.hash {
            return Err(format!(
                "{} holds tokenizer {theirs:016x}, but {} holds tokenizer {:016x}: its shards are another \
                 tokenizer's ids (encode the text again with `peerlm prepare --from-checkpoint`)",
                tokenizer_path.display(),
                id.source,
                id.hash
            )
            .into());
        }
    }
    let data = open_shards(dir, "valid", protocol.context, id)?;
    let mut stream = Vec::new();
    for shard in data.shards() {
        let start = stream.len();
        stream.resize(start + shard.len(), 0);
        shard.read_tokens(0, &mut stream[start..]);
    }
    let token_len =
        |t: u32| if t == tokenizer.end_of_text() { 0 } else { tokenizer.token_bytes(t).map_or(0, <[u8]>::len) };
    let documents = split_documents(&stream, tokenizer.end_of_text(), token_len);
    let (report, usage) = tracking_usage(model, |model| score_token_documents(model, documents, protocol, per_doc));
    print_report(&dir.display().to_string(), &report, &usage);
    Ok(report)
}

/// Runs `score` with expert usage counted.
fn tracking_usage(
    model: &mut Gpt<f32>,
    score: impl FnOnce(&mut Gpt<f32>) -> TextReport,
) -> (TextReport, Vec<LayerUsage>) {
    model.track_usage(true);
    let report = score(model);
    let usage = layer_usage(model);
    model.track_usage(false);
    (report, usage)
}

fn print_report(name: &str, report: &TextReport, usage: &[LayerUsage]) {
    let documents = if report.documents == 1 { "1 document".into() } else { format!("{} documents", report.documents) };
    println!("{name}: {documents}, {}", figures(&report.total));
    for layer in usage {
        println!(
            "  block {}: expert usage {:.2}%, KL from uniform {:.4} nats (gate-weighted; selection counts {:.4})",
            layer.block,
            100.0 * layer.fraction_used,
            layer.kl_from_uniform,
            layer.selection_kl_from_uniform
        );
    }
    for (index, score) in report.per_doc.iter().flatten().enumerate() {
        println!("  document {index}: {}", figures(score));
    }
}

fn figures(score: &Score) -> String {
    format!(
        "{} tokens, {} bytes: loss {:.4} nats/token, perplexity {:.2} per token, {:.4} bits per byte",
        score.tokens,
        score.bytes,
        score.loss(),
        score.perplexity(),
        score.bits_per_byte()
    )
}

fn print_lambada(
    model: &mut Gpt<f32>,
    tokenizer: &Tokenizer,
    path: &Path,
    field: &str,
    context: usize,
) -> Result<(), Box<dyn Error>> {
    let passages = read_documents(path, field)?;
    let report = score_lambada(model, tokenizer, &passages, context);
    println!(
        "{} (LAMBADA): last-word accuracy {:.2}% ({} of {} passages, greedy), word perplexity {:.2}",
        path.display(),
        100.0 * report.accuracy(),
        report.correct,
        report.passages,
        report.word_perplexity()
    );
    Ok(())
}
