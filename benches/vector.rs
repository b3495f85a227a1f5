//! Throughput of the vector kernels (`kernels::vector`) and of the softmax op, in bytes moved per second.
//!
//! Bytes count every element read and written once (add: two inputs and one output), so the figure is
//! comparable with the machine's memory bandwidth: a large elementwise op that reaches it cannot go faster.
//! Run with `cargo bench --bench vector`; `-- --quick` for a short run.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use peerlm::kernels::vector;
use peerlm::{ops, Rng, Tape, Tensor};

const F32: u64 = std::mem::size_of::<f32>() as u64;

fn random(n: usize, seed: u64) -> Vec<f32> {
    Tensor::<f32>::randn(&[n], 1.0, &mut Rng::new(seed)).into_vec()
}

fn elementwise(c: &mut Criterion) {
    let mut group = c.benchmark_group("elementwise");
    for n in [4 << 10, 256 << 10, 16 << 20] {
        let (a, b) = (random(n, 1), random(n, 2));
        let mut out = vec![0.0f32; n];
        group.throughput(Throughput::Bytes(3 * n as u64 * F32));
        group.bench_with_input(BenchmarkId::new("add", n), &n, |bench, _| {
            bench.iter(|| vector::add(black_box(&a), black_box(&b), &mut out))
        });
        group.bench_with_input(BenchmarkId::new("mul", n), &n, |bench, _| {
            bench.iter(|| vector::mul(black_box(&a), black_box(&b), &mut out))
        });
        group.throughput(Throughput::Bytes(2 * n as u64 * F32));
        group.bench_with_input(BenchmarkId::new("exp", n), &n, |bench, _| {
            bench.iter(|| vector::exp(black_box(&a), &mut out))
        });
        group.throughput(Throughput::Bytes(n as u64 * F32));
        group.bench_with_input(BenchmarkId::new("sum", n), &n, |bench, _| bench.iter(|| vector::sum(black_box(&a))));
    }
    group.finish();
}

fn softmax_rows(c: &mut Criterion) {
    let mut group = c.benchmark_group("softmax");
    for (rows, width) in [(4096, 1024), (2048, 4096)] {
        let mut tape = Tape::<f32>::no_grad();
        let x = tape.constant(Tensor::randn(&[rows, width], 2.0, &mut Rng::new(3)));
        group.throughput(Throughput::Bytes(2 * (rows * width) as u64 * F32));
        group.bench_function(BenchmarkId::new("rows", format!("{rows}x{width}")), |bench| {
            bench.iter(|| ops::softmax(&mut tape, black_box(&x)))
        });
    }
    group.finish();
}

criterion_group!(benches, elementwise, softmax_rows);
criterion_main!(benches);
