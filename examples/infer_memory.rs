//! Memory and speed of inference from a model file: the memory-mapped path (`peerlm::infer`) against
//! loading everything into the heap (`Checkpoint::load` + `train::load_model`, what `peerlm sample` did
//! before the inference API). Figures for docs/PERFORMANCE.md.
//!
//! ```text
//! # a PEER model with random weights: d=256, h=8, k=16, N experts (one PEER block of four); writes
//! # DIR/checkpoint.safetensors (after one training step: with AdamW moments) and DIR/model.safetensors
//! cargo run --release --example infer_memory -- make 1048576 DIR
//! # one measurement per process (peak RSS is per process): open, 100 tokens, report
//! RAYON_NUM_THREADS=1 cargo run --release --example infer_memory -- run mapped DIR/model.safetensors 100
//! RAYON_NUM_THREADS=2 cargo run --release --example infer_memory -- run loaded DIR/checkpoint.safetensors 100
//! ```
//!
//! `run` first drops the file from the page cache (`posix_fadvise(DONTNEED)`: works without root, for
//! pages no process maps), so it starts cold; `run-warm` skips that. It prints the time to open, the time
//! to the first token (a prompt of 29 tokens), tokens/s over the rest, RSS (and its anonymous part) after
//! 1, 10, 50 and 100 tokens, the peak (VmHWM) and the file pages mapped at the end (RssFile). `loaded`
//! reads training checkpoints only (as `peerlm sample` did); `mapped` opens either.

use std::path::{Path, PathBuf};
use std::time::Instant;

use peerlm::checkpoint::{Checkpoint, Dtype};
use peerlm::data::{tokenizer_file, Batch, DocumentReader, Tokenizer};
use peerlm::infer::{export, Model};
use peerlm::model::{FfwKind, Gpt};
use peerlm::sample::{generate, SampleConfig};
use peerlm::train::{RunConfig, Trainer};

const PROMPT: &str =
    "The history of the city begins in the early years of the nineteenth century, when a small group of";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg =
        |i: usize| args.get(i).unwrap_or_else(|| panic!("usage: make N DIR | run[-warm] mapped|loaded FILE TOKENS"));
    match arg(0).as_str() {
        "make" => make(arg(1).parse().expect("N is a number"), Path::new(arg(2))),
        run @ ("run" | "run-warm") => {
            let path = PathBuf::from(arg(2));
            if run == "run" {
                drop_from_cache(&path);
            }
            measure(arg(1), &path, arg(3).parse().expect("TOKENS is a number"));
        }
        other => panic!("unknown command {other}"),
    }
}

fn make(experts: usize, dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let reader = DocumentReader::open(&[PathBuf::from("datasets/c4/c4-train.00000-of-00001.json.gz")], false).unwrap();
    let docs: Vec<String> = reader.take(400).map(|d| d.unwrap().text).collect();
    let tokenizer = Tokenizer::train(&docs, 4096).unwrap();
    let mut config = RunConfig::default();
    let m = &mut config.model;
    (m.vocab_size, m.seq_len, m.d_model, m.n_layers, m.n_heads, m.ffw) = (4096, 128, 256, 4, 4, FfwKind::Peer);
    m.ffw_blocks = Some(vec![2]);
    m.dense.d_ff = 1024;
    (m.peer.num_experts, m.peer.keys.heads, m.peer.keys.top_k, m.peer.keys.key_dim) = (experts, 8, 16, 128);
    m.propagate_d_model();
    config.train.batch_size = 1;
    config.validate().unwrap();
    let mut trainer = Trainer::new(config).unwrap();
    trainer.set_tokenizer(tokenizer_file::to_text(&tokenizer));
    let ids = tokenizer.encode(&docs[0]);
    let batch = Batch { inputs: ids[..128].to_vec(), targets: ids[1..129].to_vec(), batch_size: 1, seq_len: 128 };
    trainer.train_step(&batch).unwrap();
    let checkpoint = dir.join("checkpoint.safetensors");
    trainer.to_checkpoint().save(&checkpoint).unwrap();
    drop(trainer);
    for (name, tables) in [("model.safetensors", Dtype::F32), ("model-bf16.safetensors", Dtype::Bf16)] {
        let bytes = export(&checkpoint, &dir.join(name), tables).unwrap();
        println!("{name}: {bytes} bytes");
    }
    println!("checkpoint.safetensors: {} bytes", std::fs::metadata(&checkpoint).unwrap().len());
}

fn measure(how: &str, path: &Path, tokens: usize) {
    let rss = |key: &str| -> f64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with(key)).unwrap();
        line.split_whitespace().nth(1).unwrap().parse::<f64>().unwrap() / 1024.0
    };
    let start = Instant::now();
    let (mut mapped, mut loaded);
    let (gpt, tokenizer): (&mut Gpt<f32>, Tokenizer) = match how {
        "mapped" => {
            mapped = Model::open(path).unwrap();
            let (gpt, tokenizer) = mapped.parts();
            (gpt, tokenizer.clone())
        }
        "loaded" => {
            let metadata;
            (loaded, _, metadata) = peerlm::train::load_model(Checkpoint::load(path).unwrap()).unwrap();
            (&mut loaded, tokenizer_file::parse(metadata["tokenizer"].as_bytes(), "tokenizer").unwrap())
        }
        other => panic!("mapped or loaded, not {other}"),
    };
    let opened = start.elapsed().as_secs_f64();
    let rss_open = rss("VmRSS:");
    let prompt = tokenizer.encode(PROMPT);
    let config = SampleConfig { max_new_tokens: tokens, temperature: 0.8, top_k: Some(40), seed: 1, stop_token: None };
    let (mut count, mut first, mut samples) = (0usize, 0.0, Vec::new());
    let begin = Instant::now();
    generate(gpt, &prompt, &config, |_| {
        count += 1;
        if count == 1 {
            first = begin.elapsed().as_secs_f64();
        }
        if [1, 10, 50, 100, 200, 400].contains(&count) {
            samples.push(format!("{count}: {:.0} MiB ({:.0} anon)", rss("VmRSS:"), rss("RssAnon:")));
        }
    });
    let total = begin.elapsed().as_secs_f64();
    let rate = (count - 1) as f64 / (total - first);
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "all".into());
    println!(
        "{how} {} ({} prompt tokens, {count} generated, threads {threads}): open {opened:.3} s (RSS {rss_open:.0} MiB), \
         first token {first:.3} s, {rate:.1} tokens/s after it; RSS after tokens {}; peak RSS {:.0} MiB; \
         file pages mapped at the end {:.0} MiB",
        path.display(),
        prompt.len(),
        samples.join(", "),
        rss("VmHWM:"),
        rss("RssFile:")
    );
}

/// Asks the kernel to drop `path`'s pages from the page cache (unprivileged; pages mapped by a running
/// process stay).
fn drop_from_cache(path: &Path) {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::open(path).unwrap();
    // SAFETY: posix_fadvise reads its integer arguments only.
    let status = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(status, 0, "posix_fadvise failed");
}
