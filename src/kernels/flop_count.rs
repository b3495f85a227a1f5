//! A running tally of the floating-point operations the kernels execute, so that the analytical FLOP
//! counter (`model::flops`) can be checked against what a training step really does.
//!
//! Each kernel adds what it computed as it finishes a call or a block of rows: a GEMM its `2·m·n·k`, the
//! PEER expert loops `2·d` per dot product or axpy, and so on. One relaxed atomic add per call or block
//! costs nothing next to the arithmetic it records. The tally is process-wide: a test that reads it runs
//! alone in its own test binary (`tests/flop_count.rs`), so no other test adds to it meanwhile.

use std::sync::atomic::{AtomicU64, Ordering};

static FLOPS: AtomicU64 = AtomicU64::new(0);

/// Adds `flops` to the tally.
pub(crate) fn record(flops: usize) {
    FLOPS.fetch_add(flops as u64, Ordering::Relaxed);
}

/// The FLOPs recorded since the last call, and a fresh start.
pub fn take() -> u64 {
    FLOPS.swap(0, Ordering::Relaxed)
}
