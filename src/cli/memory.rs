//! Refusing a model that does not fit: the estimate of `model::memory` against the memory the machine
//! (or the container's cgroup) has available, before anything is allocated.

use std::error::Error;
use std::path::Path;

use peerlm::model::memory::MemoryEstimate;

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

/// `bytes` in the largest binary unit that keeps it at 1 or more: "325.4 MiB", "1.50 TiB".
fn size(bytes: f64) -> String {
    let units = ["bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut value = bytes;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < units.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", units[unit])
}

/// A one-line summary: "about 310.2 MiB (weights 22.5 MiB, optimizer state 67.5 MiB, activations 220.2 MiB)".
pub fn describe(estimate: &MemoryEstimate) -> String {
    let optimizer = if estimate.optimizer_bytes > 0.0 {
        format!(", optimizer state {}", size(estimate.optimizer_bytes))
    } else {
        String::new()
    };
    format!(
        "about {} (weights {}{optimizer}, activations {})",
        size(estimate.total_bytes()),
        size(estimate.param_bytes),
        size(estimate.activation_bytes)
    )
}

/// Refuses `what` if its estimate exceeds the available memory, unless `unchecked`.
pub fn check(what: &str, estimate: &MemoryEstimate, unchecked: bool) -> Result<(), Box<dyn Error>> {
    let Some(available) = available_bytes().filter(|_| !unchecked) else { return Ok(()) };
    if estimate.total_bytes() > available {
        return Err(format!(
            "{what} needs {} for {:.3e} parameters, but only {} is available; use a smaller model or batch, \
             or --no-memory-check to try anyway",
            describe(estimate),
            estimate.params,
            size(available)
        )
        .into());
    }
    Ok(())
}
