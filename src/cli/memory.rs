//! Refusing a model that does not fit: the estimate of `model::memory` against the memory the machine
//! (or the container's cgroup) has available, before anything is allocated.

use std::error::Error;
use std::path::Path;

use peerlm::model::memory::MemoryEstimate;

const GIB: f64 = (1u64 << 30) as f64;

/// Bytes available to this process: `MemAvailable` of `/proc/meminfo`, lowered to the cgroup's limit
/// minus its usage when there is one. `None` where neither can be read (not Linux).
fn available_bytes() -> Option<f64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: f64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    let mut available = kib * 1024.0;
    let read = |name: &str| -> Option<f64> {
        std::fs::read_to_string(Path::new("/sys/fs/cgroup").join(name)).ok()?.trim().parse().ok()
    };
    if let (Some(limit), Some(used)) = (read("memory.max"), read("memory.current")) {
        available = available.min((limit - used).max(0.0));
    }
    Some(available)
}

/// A one-line summary: "0.31 GiB (weights 0.02, optimizer 0.07, activations 0.22)".
pub fn describe(estimate: &MemoryEstimate) -> String {
    let parts = if estimate.optimizer_bytes > 0.0 {
        format!(
            "weights {:.2}, optimizer state {:.2}, activations {:.2}",
            estimate.param_bytes / GIB,
            estimate.optimizer_bytes / GIB,
            estimate.activation_bytes / GIB
        )
    } else {
        format!("weights {:.2}, activations {:.2}", estimate.param_bytes / GIB, estimate.activation_bytes / GIB)
    };
    format!("about {:.2} GiB ({parts})", estimate.total_bytes() / GIB)
}

/// Refuses `what` if its estimate exceeds the available memory, unless `unchecked`.
pub fn check(what: &str, estimate: &MemoryEstimate, unchecked: bool) -> Result<(), Box<dyn Error>> {
    let Some(available) = available_bytes().filter(|_| !unchecked) else { return Ok(()) };
    if estimate.total_bytes() > available {
        return Err(format!(
            "{what} needs {} for {:.2}M parameters, but only {:.2} GiB is available; use a smaller model or \
             batch, or --no-memory-check to try anyway",
            describe(estimate),
            estimate.params / 1e6,
            available / GIB
        )
        .into());
    }
    Ok(())
}
