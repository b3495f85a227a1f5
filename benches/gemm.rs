//! GEMM throughput in GFLOP/s (criterion's "elem/s" counts flops, 2·m·n·k per product) on 1 and 2 threads,
//! for square sizes and the language model's shapes (tokens × d_model · d_model × d_ff and back, and the
//! output projection of a 4096-token batch).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use peerlm::kernels::{gemm, MatRef};
use peerlm::{Rng, Tensor};

fn shapes() -> Vec<(usize, usize, usize)> {
    let square = [64, 128, 256, 512, 1024].map(|s| (s, s, s));
    let lm = [(2048, 256, 1024), (2048, 1024, 256), (4096, 256, 4096)];
    square.into_iter().chain(lm).collect()
}

fn bench_gemm(c: &mut Criterion) {
    let mut rng = Rng::new(1);
    for threads in [1, 2] {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        let mut group = c.benchmark_group(format!("gemm_f32_{threads}t"));
        group.sample_size(10);
        for (m, k, n) in shapes() {
            let a = Tensor::<f32>::randn(&[m, k], 1.0, &mut rng);
            let b = Tensor::<f32>::randn(&[k, n], 1.0, &mut rng);
            let mut out = vec![0.0f32; m * n];
            group.throughput(Throughput::Elements((2 * m * n * k) as u64));
            group.bench_function(BenchmarkId::from_parameter(format!("{m}x{k}x{n}")), |bench| {
                pool.install(|| {
                    bench.iter(|| gemm(MatRef::new(a.data(), m, k), MatRef::new(b.data(), k, n), &mut out, false))
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, bench_gemm);
criterion_main!(benches);
