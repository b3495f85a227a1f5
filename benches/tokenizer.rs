//! Tokenizer encoding throughput on the bundled real C4 sample (3.3 MB of text), vocab 4096.
//!
//! Compare with Hugging Face `tokenizers` on the same text and vocabulary: `python3 benches/hf_tokenizers.py`.
//! Threads: rayon's default (all cores); `RAYON_NUM_THREADS=1 cargo bench --bench tokenizer` for one.
//! "warm" reuses the tokenizer and so its word cache across iterations (the steady state of a long
//! `prepare`); "cold" starts every iteration from a fresh tokenizer with empty caches.

use std::hint::black_box;
use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use peerlm::data::c4::DocumentReader;
use peerlm::data::Tokenizer;

fn documents() -> Vec<String> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("datasets/c4/c4-train.00000-of-00001.json.gz");
    DocumentReader::open(&[path], false).expect("bundled sample").map(|d| d.expect("valid line").text).collect()
}

fn encode(c: &mut Criterion) {
    let documents = documents();
    let bytes: usize = documents.iter().map(String::len).sum();
    let tokenizer = Tokenizer::train(&documents, 4096).expect("training");
    let mut group =
        c.benchmark_group(format!("encode c4 sample, vocab 4096, {} threads", rayon::current_num_threads()));
    group.throughput(Throughput::Bytes(bytes as u64)).sample_size(10);
    group.bench_function("warm", |b| b.iter(|| black_box(tokenizer.encode_documents(&documents))));
    group.bench_function("cold", |b| {
        b.iter_batched(
            || tokenizer.clone(),
            |fresh| black_box(fresh.encode_documents(&documents)),
            BatchSize::PerIteration,
        )
    });
    group.finish();
    c.bench_function("train vocab 4096 on c4 sample", |b| b.iter(|| black_box(Tokenizer::train(&documents, 4096))));
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10);
    targets = encode
}
criterion_main!(benches);
