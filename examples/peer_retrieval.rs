//! What a PEER layer retrieves for a sentence: for each character, the experts its heads chose and their
//! gates. The layer is freshly initialised (nothing learned), so the choice shows the mechanism, not
//! meaning: the same character always reaches the same experts, and the gates of a head sum to 1.
//!
//! Run: `cargo run --release --example peer_retrieval -- "any sentence"`.

use peerlm::model::ModelConfig;
use peerlm::nn::{Peer, PeerConfig, ProductKeyConfig};
use peerlm::{ops, Rng, Tape, Tensor};

fn main() {
    let sentence = std::env::args().nth(1).unwrap_or_else(|| "the cat sat on the mat".to_string());
    // N = 64² experts, h = 2 heads, k = 4 experts per head, d = 32.
    let defaults = ModelConfig::default().peer;
    let keys = ProductKeyConfig { d_model: 32, heads: 2, top_k: 4, key_dim: 16, ..defaults.keys };
    let config = PeerConfig { keys, num_experts: 64 * 64, ..defaults };
    let mut rng = Rng::new(1);
    let mut layer = Peer::<f32>::new(&config, "peer", &mut rng);
    // One random embedding per byte stands in for a model's token embedding.
    let embeddings = Tensor::<f32>::randn(&[256, config.keys.d_model], 1.0, &mut rng);
    let bytes: Vec<u32> = sentence.bytes().map(u32::from).collect();

    let mut tape = Tape::no_grad();
    let table = tape.constant(embeddings);
    let x = ops::embedding(&mut tape, &table, &bytes); // [T, d]
    let (gates, ids) = layer.router.forward(&mut tape, &x, false); // [T, h·k], [T·h·k]
    let m = config.keys.heads * config.keys.top_k;
    let n = config.sub_keys();
    for (t, &byte) in bytes.iter().enumerate() {
        print!("{:?}:", byte as u8 as char);
        for head in 0..config.keys.heads {
            print!("  head {head}:");
            for j in head * config.keys.top_k..(head + 1) * config.keys.top_k {
                let (id, gate) = (ids[t * m + j], gates.value().data()[t * m + j]);
                // Expert id = i·n + j': sub-key i of the first half, j' of the second.
                print!(" {id} ({},{}) {gate:.2}", id as usize / n, id as usize % n);
            }
        }
        println!();
    }
}
