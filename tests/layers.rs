//! Behaviour of the feed-forward layers beyond their gradients: no leakage between tokens in evaluation,
//! bit-identical results on 1 and 2 threads, expert-usage statistics, the MoE load-balancing loss, and
//! configuration errors that name the bad field.

use peerlm::nn::{
    DenseFfw, DenseFfwConfig, FfwOut, Gate, Module, Moe, MoeConfig, Peer, PeerConfig, Pkm, PkmConfig, ProductKeyConfig,
    Routing,
};
use peerlm::ops::{self, ExpertActivation};
use peerlm::{Error, Grad, Rng, Tape, Tensor, Var};

/// Any of the layers, behind one forward signature.
trait Layer: Module<f32> {
    fn run(&mut self, tape: &mut Tape<f32>, x: &Var<f32>, training: bool) -> FfwOut<f32>;
}

macro_rules! layer {
    ($t:ty) => {
        impl Layer for $t {
            fn run(&mut self, tape: &mut Tape<f32>, x: &Var<f32>, training: bool) -> FfwOut<f32> {
                self.forward(tape, x, training)
            }
        }
    };
}
layer!(DenseFfw<f32>);
layer!(Moe<f32>);
layer!(Pkm<f32>);
layer!(Peer<f32>);

const D: usize = 32;

fn peer_config() -> PeerConfig {
    PeerConfig {
        keys: ProductKeyConfig { d_model: D, heads: 4, top_k: 4, key_dim: 16, query_batch_norm: true },
        num_experts: 256,
        query_bn_per_head: false,
        gate: Gate::Softmax,
        activation: ExpertActivation::Gelu,
    }
}

fn pkm_config() -> PkmConfig {
    PkmConfig {
        keys: ProductKeyConfig { d_model: D, heads: 4, top_k: 4, key_dim: 16, query_batch_norm: true },
        sub_keys: 16,
    }
}

fn moe_config(routing: Routing) -> MoeConfig {
    MoeConfig {
        d_model: D,
        num_experts: 4,
        d_expert: 24,
        top_k: 2,
        routing,
        capacity_factor: 1.0,
        aux_loss_weight: 0.01,
    }
}

/// Every layer, including both MoE routings.
fn all_layers() -> Vec<(&'static str, Box<dyn Layer>)> {
    let rng = Rng::new(42);
    vec![
        ("ffw", Box::new(DenseFfw::new(&DenseFfwConfig { d_model: D, d_ff: 64 }, "ffw", &mut rng.fork(0)))),
        ("moe_tc", Box::new(Moe::new(&moe_config(Routing::TokenChoice), "moe", &mut rng.fork(1)))),
        ("moe_ec", Box::new(Moe::new(&moe_config(Routing::ExpertChoice), "moe", &mut rng.fork(2)))),
        ("pkm", Box::new(Pkm::new(&pkm_config(), "pkm", &mut rng.fork(3)))),
        ("peer", Box::new(Peer::new(&peer_config(), "peer", &mut rng.fork(4)))),
    ]
}

fn input(tokens: usize, seed: u64) -> Tensor<f32> {
    Tensor::randn(&[tokens, D], 1.0, &mut Rng::new(seed))
}

fn eval(layer: &mut dyn Layer, x: &Tensor<f32>) -> Tensor<f32> {
    let mut tape = Tape::no_grad();
    let x = tape.constant(x.clone());
    layer.run(&mut tape, &x, false).y.value().clone()
}

#[test]
fn later_tokens_never_change_earlier_outputs_in_evaluation() {
    let tokens = 6;
    // Expert-choice MoE included: evaluation routes token by token (see `nn::moe`).
    for (name, mut layer) in all_layers() {
        // A training step first, so batch-norm running statistics are not at their initial values.
        let mut tape = Tape::new();
        let warmup = tape.constant(input(64, 1));
        layer.run(&mut tape, &warmup, true);
        let x = input(tokens, 2);
        let y = eval(layer.as_mut(), &x);
        for t in 0..tokens - 1 {
            let mut changed = x.clone();
            changed.data_mut()[(t + 1) * D..(t + 2) * D].iter_mut().for_each(|v| *v = -3.0 * *v + 1.0);
            let y_changed = eval(layer.as_mut(), &changed);
            let (before, after) = (&y.data()[..(t + 1) * D], &y_changed.data()[..(t + 1) * D]);
            if name.starts_with("moe") {
                // An expert's GEMM sees a batch of a different size when a later token's routing changes,
                // which may round differently in the last bits (~1e-9 here); a leak would move these outputs,
                // of size ~1e-3, by about their own size.
                let close = before.iter().zip(after).all(|(a, b)| (a - b).abs() <= 1e-7);
                assert!(close, "{name}: token {} leaks", t + 1);
            } else {
                assert_eq!(before, after, "{name}: token {} leaks", t + 1);
            }
            assert_ne!(y.data()[(t + 1) * D..], y_changed.data()[(t + 1) * D..], "{name}: the change had no effect");
        }
    }
}

/// Output and every parameter and input gradient, as bits.
fn forward_backward_bits(layer: &mut dyn Layer, x: &Tensor<f32>) -> Vec<Vec<u32>> {
    let x_param = peerlm::Param::new("x", peerlm::ParamKind::Weight, x.clone());
    let mut tape = Tape::new();
    let xv = tape.param(&x_param);
    let out = layer.run(&mut tape, &xv, true);
    let weights = tape.constant(Tensor::randn(out.y.shape(), 1.0, &mut Rng::new(3)));
    let weighted = ops::mul(&mut tape, &out.y, &weights);
    let mut loss = ops::sum(&mut tape, &weighted);
    if let Some(aux) = &out.aux_loss {
        loss = ops::add(&mut tape, &loss, aux);
    }
    let bits = |t: &Tensor<f32>| t.data().iter().map(|v| v.to_bits()).collect::<Vec<u32>>();
    let mut all = vec![bits(out.y.value())];
    tape.backward(&loss);
    all.push(bits(&tape.grad(&x_param).unwrap().to_dense()));
    for p in layer.params() {
        all.push(tape.grad(p).map(Grad::to_dense).map(|g| bits(&g)).unwrap_or_default());
    }
    all
}

#[test]
fn one_and_two_threads_give_identical_bits() {
    let x = input(300, 5);
    let run_with = |threads: usize| -> Vec<Vec<Vec<u32>>> {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| {
            all_layers().into_iter().map(|(_, mut layer)| forward_backward_bits(layer.as_mut(), &x)).collect()
        })
    };
    let (one, two) = (run_with(1), run_with(2));
    for ((name, _), (a, b)) in all_layers().iter().zip(one.iter().zip(&two)) {
        assert!(a == b, "{name}: results differ between 1 and 2 threads");
    }
}

#[test]
fn layers_count_every_selection() {
    let tokens = 10;
    let x = input(tokens, 6);
    let mut peer = Peer::<f32>::new(&peer_config(), "peer", &mut Rng::new(1));
    assert!(peer.usage.get().is_none());
    peer.usage.switch(true);
    eval(&mut peer, &x);
    let usage = peer.usage.get().unwrap();
    assert_eq!(usage.total(), (tokens * 4 * 4) as u64); // tokens · heads · k
    assert!(usage.fraction_used() > 0.0 && usage.fraction_used() <= (tokens * 16) as f64 / 256.0);
    peer.usage.reset();
    assert_eq!(peer.usage.get().unwrap().total(), 0);
    peer.usage.switch(false);
    assert!(peer.usage.get().is_none());

    let mut pkm = Pkm::<f32>::new(&pkm_config(), "pkm", &mut Rng::new(1));
    pkm.usage.switch(true);
    eval(&mut pkm, &x);
    assert_eq!(pkm.usage.get().unwrap().total(), (tokens * 4 * 4) as u64);

    // Expert choice in training: each of the 4 experts takes exactly c = ⌈1.0 · 10 · 2 / 4⌉ = 5 tokens.
    let mut moe = Moe::<f32>::new(&moe_config(Routing::ExpertChoice), "moe", &mut Rng::new(1));
    moe.usage.switch(true);
    let mut tape = Tape::new();
    let xv = tape.constant(x.clone());
    moe.forward(&mut tape, &xv, true);
    assert_eq!(moe.usage.get().unwrap().counts(), &[5, 5, 5, 5]);
    assert_eq!(moe.usage.get().unwrap().selection_kl_from_uniform(), 0.0);
    // In evaluation each token takes its own round(1.0 · 2) = 2 experts.
    moe.usage.reset();
    eval(&mut moe, &x);
    assert_eq!(moe.usage.get().unwrap().total(), (tokens * 2) as u64);
}

#[test]
fn moe_aux_loss_is_its_weight_under_a_uniform_router() {
    // All router logits 0: P_e = 1/E, and Σ_e f_e = 1, so E · Σ_e f_e P_e = 1 and aux = its weight.
    let mut config = moe_config(Routing::TokenChoice);
    config.aux_loss_weight = 0.25;
    let mut moe = Moe::<f32>::new(&config, "moe", &mut Rng::new(1));
    moe.router.weight.value = Tensor::zeros(moe.router.weight.value.shape());
    let mut tape = Tape::no_grad();
    let x = tape.constant(input(9, 7));
    let aux = moe.forward(&mut tape, &x, true).aux_loss.unwrap().value().item();
    assert!((aux - 0.25).abs() < 1e-6, "aux {aux}");
    // Expert choice has no auxiliary loss.
    let mut moe = Moe::<f32>::new(&moe_config(Routing::ExpertChoice), "moe", &mut Rng::new(1));
    assert!(moe.forward(&mut tape, &x, true).aux_loss.is_none());
}

#[test]
fn parameter_names_are_prefixed_and_unique() {
    for (name, layer) in all_layers() {
        let names: Vec<String> = layer.params().iter().map(|p| p.name.clone()).collect();
        let mut unique = names.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), names.len(), "{name}: duplicate parameter names {names:?}");
        let prefix = &name[..3];
        assert!(names.iter().all(|n| n.starts_with(prefix)), "{name}: {names:?}");
    }
    let peer = Peer::<f32>::new(&peer_config(), "blocks.2.peer", &mut Rng::new(1));
    let names: Vec<&str> = peer.params().iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "blocks.2.peer.query.weight",
            "blocks.2.peer.query_bn.gain",
            "blocks.2.peer.query_bn.bias",
            "blocks.2.peer.keys1",
            "blocks.2.peer.keys2",
            "blocks.2.peer.u",
            "blocks.2.peer.v"
        ]
    );
}

fn error_of(result: Result<(), Error>) -> String {
    result.expect_err("the config should be rejected").to_string()
}

#[test]
fn config_errors_name_the_field() {
    assert!(peer_config().validate().is_ok());
    let peer = |edit: fn(&mut PeerConfig)| {
        let mut c = peer_config();
        edit(&mut c);
        error_of(c.validate())
    };
    assert_eq!(peer(|c| c.num_experts = 1000), "peer.num_experts: 1000 is not a perfect square");
    assert!(peer(|c| c.keys.key_dim = 15).starts_with("peer.key_dim:"));
    assert!(peer(|c| c.keys.top_k = 17).starts_with("peer.top_k:"));
    assert!(peer(|c| c.keys.heads = 0).starts_with("peer.heads:"));
    assert!(peer(|c| c.keys.d_model = 0).starts_with("peer.d_model:"));

    assert!(pkm_config().validate().is_ok());
    let mut pkm = pkm_config();
    pkm.keys.top_k = 17;
    assert!(error_of(pkm.validate()).starts_with("pkm.top_k:"));
    pkm = pkm_config();
    pkm.keys.key_dim = 3;
    assert!(error_of(pkm.validate()).starts_with("pkm.key_dim:"));

    assert!(moe_config(Routing::TokenChoice).validate().is_ok());
    let moe = |edit: fn(&mut MoeConfig)| {
        let mut c = moe_config(Routing::TokenChoice);
        edit(&mut c);
        error_of(c.validate())
    };
    assert!(moe(|c| c.top_k = 5).starts_with("moe.top_k:"));
    assert!(moe(|c| c.capacity_factor = 0.0).starts_with("moe.capacity_factor:"));
    assert!(moe(|c| c.aux_loss_weight = f64::NAN).starts_with("moe.aux_loss_weight:"));
    assert!(moe(|c| c.d_expert = 0).starts_with("moe.d_expert:"));

    assert!(error_of(DenseFfwConfig { d_model: 8, d_ff: 0 }.validate()).starts_with("ffw.d_ff:"));
}

#[cfg(feature = "io")]
#[test]
fn configs_read_from_json_with_defaults_and_reject_unknown_fields() {
    let json = r#"{"d_model": 32, "num_experts": 256, "heads": 4, "top_k": 4, "key_dim": 16}"#;
    let config: PeerConfig = serde_json::from_str(json).unwrap();
    assert_eq!(config, peer_config());
    let bad = r#"{"d_model": 32, "num_experts": 256, "heads": 4, "top_k": 4, "key_dim": 16, "topk": 3}"#;
    assert!(serde_json::from_str::<PeerConfig>(bad).unwrap_err().to_string().contains("topk"));
    let moe: MoeConfig =
        serde_json::from_str(r#"{"d_model": 32, "num_experts": 4, "d_expert": 24, "top_k": 2}"#).unwrap();
    assert_eq!((moe.routing, moe.capacity_factor, moe.aux_loss_weight), (Routing::ExpertChoice, 1.0, 0.01));
    let relu = PeerConfig { activation: ExpertActivation::Relu, gate: Gate::Sigmoid, ..peer_config() };
    let text = serde_json::to_string(&relu).unwrap();
    assert!(text.contains(r#""activation":"relu""#) && text.contains(r#""router":"sigmoid""#), "{text}");
    assert_eq!(serde_json::from_str::<PeerConfig>(&text).unwrap(), relu);
}

/// After a training forward, PEER's query batch-norm running statistics are exactly the momentum update
/// toward the batch statistics of the queries, which the test computes itself from the query weights
/// (plain loops): mean, and the unbiased variance (as PyTorch keeps it). Pooled over heads (PEER's
/// default, 4 rows per token) and per head (PKM's way).
#[test]
fn a_training_forward_moves_the_query_running_statistics_by_the_momentum_update() {
    let tokens = 80; // pooled: 320 rows of the norm, past its 256-row chunks
    for per_head in [false, true] {
        let config = PeerConfig { query_bn_per_head: per_head, ..peer_config() };
        let (heads, key_dim) = (config.keys.heads, config.keys.key_dim);
        let mut layer = Peer::<f64>::new(&config, "peer", &mut Rng::new(5));
        let stats = |layer: &Peer<f64>| layer.batch_norm_stats()[0].1.clone();
        assert_eq!(stats(&layer).momentum, 0.1, "PyTorch's default momentum");
        // Two forwards: the second starts from running statistics that are neither 0 nor 1.
        for seed in [1, 2] {
            let x = Tensor::<f64>::randn(&[tokens, D], 1.0, &mut Rng::new(seed)).into_vec();
            let old = stats(&layer);
            let mut tape = Tape::no_grad();
            let xv = tape.constant(Tensor::from_vec(&[tokens, D], x.clone()));
            layer.forward(&mut tape, &xv, true);

            let w = layer.router.query.weight.value.data(); // [D, heads·key_dim]
            let out = heads * key_dim;
            let mut queries = vec![0.0; tokens * out];
            for t in 0..tokens {
                for o in 0..out {
                    for i in 0..D {
                        queries[t * out + o] += x[t * D + i] * w[i * out + o];
                    }
                }
            }
            // The norm's channels: all h·key_dim per token, or key_dim per (token, head).
            let width = if per_head { out } else { key_dim };
            let rows = queries.len() / width;
            let new = stats(&layer);
            for c in 0..width {
                let column: Vec<f64> = (0..rows).map(|r| queries[r * width + c]).collect();
                let mean = column.iter().sum::<f64>() / rows as f64;
                let var = column.iter().map(|q| (q - mean) * (q - mean)).sum::<f64>() / (rows - 1) as f64;
                let want_mean = 0.9 * old.mean[c] + 0.1 * mean;
                let want_var = 0.9 * old.var[c] + 0.1 * var;
                let what = format!("per_head {per_head}, forward {seed}, channel {c}");
                assert!((new.mean[c] - want_mean).abs() <= 1e-12, "{what}: mean {} vs {want_mean}", new.mean[c]);
                assert!((new.var[c] - want_var).abs() <= 1e-12 * want_var, "{what}: var {} vs {want_var}", new.var[c]);
            }
        }
    }
}
