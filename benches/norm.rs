//! Layer norm throughput in GB/s on the activation shapes of a training step: the forward alone (reads x,
//! writes y: 8 bytes per f32 element) and forward plus backward through a summed loss. The second counts
//! the bytes the step must move, 28 per element: the forward's 8, the loss reading y (4) and its backward
//! writing dy (4), and the norm's backward reading x and dy and writing dx (12). Like STREAM's counts,
//! these leave out the cache's read of each output line before it is written. The loss sums each row
//! first, so its passes run on both cores like the norm's. The backward does the same arithmetic
//! whatever dy holds, so a constant dy measures it fairly.
//!
//! Freed buffers are kept by the allocator, as in the CLI (`retain_freed_buffers`): otherwise each
//! iteration would page-fault its fresh 16–64 MiB outputs in again and measure the kernel, not the norm.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use peerlm::{ops, Param, ParamKind, Rng, Tape, Tensor};

fn bench_layer_norm(c: &mut Criterion) {
    peerlm::kernels::memory::retain_freed_buffers();
    let mut rng = Rng::new(1);
    let mut group = c.benchmark_group("layer_norm_f32");
    group.sample_size(10);
    for rows in [4096, 16384] {
        let d = 1024;
        let x = Param::new("x", ParamKind::Weight, Tensor::<f32>::randn(&[rows, d], 1.0, &mut rng));
        let gain = Param::new("gain", ParamKind::NoDecay, Tensor::full(&[d], 1.0));
        let bias = Param::new("bias", ParamKind::NoDecay, Tensor::zeros(&[d]));
        let elements = (rows * d) as u64;
        let name = format!("{rows}x{d}");
        group.throughput(Throughput::Bytes(8 * elements));
        group.bench_function(BenchmarkId::new("forward", &name), |b| {
            b.iter(|| {
                let mut tape = Tape::no_grad();
                let (xv, gv, bv) = (tape.param(&x), tape.param(&gain), tape.param(&bias));
                ops::layer_norm(&mut tape, &xv, &gv, &bv, 1e-5)
            })
        });
        group.throughput(Throughput::Bytes(28 * elements));
        group.bench_function(BenchmarkId::new("forward_backward", &name), |b| {
            b.iter(|| {
                let mut tape = Tape::new();
                let (xv, gv, bv) = (tape.param(&x), tape.param(&gain), tape.param(&bias));
                let y = ops::layer_norm(&mut tape, &xv, &gv, &bv, 1e-5);
                let row_sums = ops::sum_last(&mut tape, &y);
                let loss = ops::sum(&mut tape, &row_sums);
                tape.backward(&loss);
                tape.clear();
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_layer_norm);
criterion_main!(benches);
