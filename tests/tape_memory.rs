//! Memory stays flat over a long training loop: the tape keeps its capacity between steps instead of
//! growing, and no step leaks. A counting global allocator tracks the bytes alive between steps.
//!
//! A leak is growth that scales with the steps: it shows in both halves of a long run. A single
//! allocation that lives on (the thread pool growing a queue when the machine is loaded, once) shows in
//! one half only, and is not a leak; counting it as one made this test fail now and then.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::Mutex;

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

/// The tests of this file share the one byte counter: they run one at a time.
static COUNTER_IN_USE: Mutex<()> = Mutex::new(());

/// Steps after which every buffer and the optimizer's moments exist.
const WARMUP: usize = 10;

/// Bytes alive after `WARMUP` steps, after `WARMUP + half` and after `WARMUP + 2·half`; `after_step`
/// runs after every step (to inject allocations).
fn live_bytes_over_two_halves(half: usize, mut after_step: impl FnMut(usize)) -> [isize; 3] {
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
    (config.peer.num_experts, config.peer.keys.heads, config.peer.keys.top_k, config.peer.keys.key_dim) = (16, 2, 2, 4);
    config.propagate_d_model();
    config.validate().unwrap();
    let mut model = Gpt::<f32>::new(&config, 1);
    let mut optimizer = AdamW::new(AdamWConfig::default());
    let mut tape = Tape::new();
    let inputs: Vec<u32> = (0..16).map(|i| i * 3 % 50).collect();
    let targets: Vec<u32> = (0..16).map(|i| i * 7 % 50).collect();
    let mut capacity_after_warmup = 0;
    let mut samples = [0; 3];
    for step in 1..=WARMUP + 2 * half {
        tape.clear();
        let (loss, _) = model.loss(&mut tape, &inputs, &targets, 2, true);
        let nodes = tape.len();
        tape.backward(&loss);
        drop(loss);
        optimizer.step(&mut model.params_mut(), &tape, 1.0, 1.0);
        tape.clear();
        after_step(step);
        if step == WARMUP {
            capacity_after_warmup = tape.capacity();
            assert!(nodes > 10 && capacity_after_warmup >= nodes);
        }
        if step > WARMUP {
            assert_eq!(tape.capacity(), capacity_after_warmup, "the tape grew at step {step}");
        }
        if (step - WARMUP) % half == 0 {
            samples[(step - WARMUP) / half] = LIVE_BYTES.load(Ordering::Relaxed);
        }
    }
    samples
}

/// Bytes leaked per step: the smaller growth of the two halves, per step (growth in one half only is a
/// one-time allocation).
fn leak_per_step(samples: [isize; 3], half: usize) -> f64 {
    let growth = (samples[1] - samples[0]).min(samples[2] - samples[1]);
    growth as f64 / half as f64
}

#[test]
fn ten_thousand_steps_leak_nothing() {
    let _counter = COUNTER_IN_USE.lock().unwrap_or_else(|e| e.into_inner());
    let samples = live_bytes_over_two_halves(5_000, |_| {});
    // Any leak is at least a byte per step; rounding the smaller half's growth down to whole bytes.
    assert!(leak_per_step(samples, 5_000) < 1.0, "bytes alive after 10, 5,010 and 10,010 steps: {samples:?}");
}

#[test]
fn a_leak_of_a_few_bytes_a_step_is_caught_and_one_late_allocation_is_not() {
    let _counter = COUNTER_IN_USE.lock().unwrap_or_else(|e| e.into_inner());
    let half = 500;
    let leaking = live_bytes_over_two_halves(half, |_| {
        Box::leak(Box::new(0u64));
    });
    assert!(leak_per_step(leaking, half) >= 1.0, "an 8-byte leak per step went unseen: {leaking:?}");
    // The size of the allocation that once failed the old check (growth <= 0), made late in the run.
    let late = live_bytes_over_two_halves(half, |step| {
        if step == WARMUP + 3 * half / 2 {
            Box::leak(vec![0u8; 3728].into_boxed_slice());
        }
    });
    assert!(late[2] > late[1], "the allocation was made: {late:?}");
    assert!(leak_per_step(late, half) < 1.0, "a one-time allocation was called a leak: {late:?}");
}
