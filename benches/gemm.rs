//! GEMM throughput in GFLOP/s (criterion's "elem/s" counts flops, 2·m·n·k per product) on 1 and 2 threads,
//! for square sizes and the language model's shapes (tokens × d_model · d_model × d_ff and back, and the
//! output projection of a 4096-token batch); then, on 2 threads, every product of the tiny GPT's dense
//! step (`benches/gpt.rs`) in the layout the step runs it, by `gemm` and by `gemm_with_matrixmultiply`
//! alternately (f32 `gemm` runs the crate's own kernel where A's depth is contiguous, `kernels/sgemm.rs`).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use peerlm::kernels::gemm::gemm_with_matrixmultiply;
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

/// (m, k, n, A stored transposed, B stored transposed) of each product of the dense step: for each linear
/// map x·W (2048 tokens), its forward, dX = dY·Wᵀ and dW = Xᵀ·dY; the head's weight is stored [vocab, d].
const STEP_PRODUCTS: [(usize, usize, usize, bool, bool); 15] = [
    (2048, 256, 768, false, false),
    (2048, 768, 256, false, true),
    (256, 2048, 768, true, false),
    (2048, 256, 256, false, false),
    (2048, 256, 256, false, true),
    (256, 2048, 256, true, false),
    (2048, 256, 1024, false, false),
    (2048, 1024, 256, false, true),
    (256, 2048, 1024, true, false),
    (2048, 1024, 256, false, false),
    (2048, 256, 1024, false, true),
    (1024, 2048, 256, true, false),
    (2048, 256, 4096, false, true),
    (2048, 4096, 256, false, false),
    (4096, 2048, 256, true, false),
];

fn bench_step_products(c: &mut Criterion) {
    let mut rng = Rng::new(2);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    let mut group = c.benchmark_group("step_products_2t");
    group.sample_size(10);
    for (m, k, n, ta, tb) in STEP_PRODUCTS {
        let a = Tensor::<f32>::randn(&[m, k], 1.0, &mut rng);
        let b = Tensor::<f32>::randn(&[k, n], 1.0, &mut rng);
        let am = if ta { MatRef::new(a.data(), k, m).t() } else { MatRef::new(a.data(), m, k) };
        let bm = if tb { MatRef::new(b.data(), n, k).t() } else { MatRef::new(b.data(), k, n) };
        let mut out = vec![0.0f32; m * n];
        group.throughput(Throughput::Elements((2 * m * n * k) as u64));
        let name = format!("{m}x{k}x{n}{}{}", if ta { " At" } else { "" }, if tb { " Bt" } else { "" });
        for (path, run) in [("gemm", gemm as fn(_, _, &mut [f32], bool)), ("matrixmultiply", gemm_with_matrixmultiply)]
        {
            group.bench_function(BenchmarkId::new(path, &name), |bench| {
                pool.install(|| bench.iter(|| run(am, bm, &mut out, false)))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench_gemm, bench_step_products);
criterion_main!(benches);
