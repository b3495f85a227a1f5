//! The small PEER decoder the training, evaluation and inference tests share: 2 blocks of width 32, PEER
//! (N = 16², 2 heads, top-4, key dim 16) in block 1, dense elsewhere.

use peerlm::model::FfwKind;
use peerlm::train::RunConfig;

/// The model over `vocab` tokens and a context of `seq_len`, with default training settings.
pub fn config(vocab: usize, seq_len: usize) -> RunConfig {
    let mut config = RunConfig::default();
    let m = &mut config.model;
    (m.vocab_size, m.seq_len, m.d_model, m.n_layers, m.n_heads, m.ffw) = (vocab, seq_len, 32, 2, 2, FfwKind::Peer);
    m.ffw_blocks = Some(vec![1]);
    m.dense.d_ff = 64;
    (m.peer.num_experts, m.peer.keys.heads, m.peer.keys.top_k, m.peer.keys.key_dim) = (256, 2, 4, 16);
    m.propagate_d_model();
    config
}
