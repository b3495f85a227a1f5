//! Memory stays flat over a long training loop: the tape keeps its capacity between steps instead of
//! growing, and no step leaks. A counting global allocator tracks the bytes alive between steps.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use peerlm::model::{FfwKind, Gpt, ModelConfig};
use peerlm::nn::Module;
use peerlm::optim::{AdamW, AdamWConfig};
use peerlm::Tape;

struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged; it only counts the bytes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same layout contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: `ptr` came from `alloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

#[test]
fn ten_thousand_steps_keep_memory_flat() {
    let mut config = ModelConfig {
        vocab_size: 50,
        seq_len: 8,
        d_model: 8,
        n_layers: 2,
        n_heads: 2,
        ffw: FfwKind::Peer,
        ..ModelConfig::default()
    };
    config.dense.d_ff = 16;
    (config.peer.num_experts, config.peer.heads, config.peer.top_k, config.peer.key_dim) = (16, 2, 2, 4);
    config.propagate_d_model();
    config.validate().unwrap();
    let mut model = Gpt::<f32>::new(&config, 1);
    let mut optimizer = AdamW::new(AdamWConfig::default());
    let mut tape = Tape::new();
    let inputs: Vec<u32> = (0..16).map(|i| i * 3 % 50).collect();
    let targets: Vec<u32> = (0..16).map(|i| i * 7 % 50).collect();
    let mut capacity_after_warmup = 0;
    let mut bytes_after_warmup = 0;
    for step in 0..10_000 {
        tape.clear();
        let (loss, _) = model.loss(&mut tape, &inputs, &targets, 2, true);
        let nodes = tape.len();
        tape.backward(&loss);
        drop(loss);
        optimizer.step(&mut model.params_mut(), &tape, 1.0, 1.0);
        tape.clear();
        if step == 10 {
            capacity_after_warmup = tape.capacity();
            bytes_after_warmup = LIVE_BYTES.load(Ordering::Relaxed);
            assert!(nodes > 10 && capacity_after_warmup >= nodes);
        }
        if step > 10 {
            assert_eq!(tape.capacity(), capacity_after_warmup, "the tape grew at step {step}");
        }
    }
    let growth = LIVE_BYTES.load(Ordering::Relaxed) - bytes_after_warmup;
    // The optimizer's moments and every buffer exist after warm-up; later steps must not add to them.
    assert!(growth <= 0, "{growth} bytes more alive after 10,000 steps than after 10");
}
