//! Layer norm throughput in GB/s: forward alone (reads x, writes y: 8 bytes per f32 element) and forward
//! plus backward (backward also reads x and dy and writes dx: 20 bytes per element in all), on the
//! activation shapes of a training step.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use peerlm::{ops, Param, ParamKind, Rng, Tape, Tensor};

fn bench_layer_norm(c: &mut Criterion) {
    let mut rng = Rng::new(1);
    let mut group = c.benchmark_group("layer_norm_f32");
    group.sample_size(10);
    for rows in [4096, 16384] {
        let d = 1024;
        let x = Param::new("x", ParamKind::Weight, Tensor::<f32>::randn(&[rows, d], 1.0, &mut rng));
        let gain = Param::new("gain", ParamKind::NoDecay, Tensor::full(&[d], 1.0));
        let bias = Param::new("bias", ParamKind::NoDecay, Tensor::zeros(&[d]));
        // loss = y · w summed, through a [1, n]·[n, 1] product so that dy = w.
        let w = Tensor::<f32>::randn(&[rows * d, 1], 1.0, &mut rng);
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
        group.throughput(Throughput::Bytes(20 * elements));
        group.bench_function(BenchmarkId::new("forward_backward", &name), |b| {
            b.iter(|| {
                let mut tape = Tape::new();
                let (xv, gv, bv) = (tape.param(&x), tape.param(&gain), tape.param(&bias));
                let y = ops::layer_norm(&mut tape, &xv, &gv, &bv, 1e-5);
                let flat = ops::reshape(&mut tape, &y, &[1, rows * d]);
                let wv = tape.constant(w.clone());
                let loss = ops::matmul(&mut tape, &flat, &wv);
                let loss = ops::reshape(&mut tape, &loss, &[]);
                tape.backward(&loss);
                tape.clear();
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_layer_norm);
criterion_main!(benches);
