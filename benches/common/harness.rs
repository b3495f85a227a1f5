//! The harness of the benchmarks that report peak memory (`gpt`, `layers`), which include this file by path.
//!
//! Each configuration runs in its own child process, the same binary started with `--config NAME`, so the
//! peak resident set it reports (VmHWM from /proc/self/status) belongs to that configuration alone.
//! `cargo bench --bench NAME -- FILTER` runs only the configurations whose name contains FILTER, and
//! `PEERLM_BENCH_ITERS` overrides each benchmark's number of timed steps.

use std::process::Command;

/// In a child (`--config NAME`), runs `run_one(NAME)`. Otherwise prints `header` and runs each of `names`
/// that contains the filter in a child, one after another.
pub fn run<'a>(names: impl IntoIterator<Item = &'a str>, header: &str, run_one: impl FnOnce(&str)) {
    // As the command-line tool does: freed step buffers stay in the heap (kernels/memory.rs).
    peerlm::kernels::memory::retain_freed_buffers();
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    if let [flag, name] = &args[..] {
        if flag == "--config" {
            run_one(name);
            return;
        }
    }
    let filter = args.first().cloned().unwrap_or_default();
    let exe = std::env::current_exe().expect("own path");
    println!("{header}");
    for name in names.into_iter().filter(|name| name.contains(&filter)) {
        let status = Command::new(&exe).args(["--config", name]).status().expect("spawn benchmark child");
        assert!(status.success(), "{name}: child failed ({status})");
    }
}

/// Timed steps: `PEERLM_BENCH_ITERS` if set, else `default`.
pub fn iterations(default: usize) -> usize {
    std::env::var("PEERLM_BENCH_ITERS").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The median of step times in seconds.
pub fn median(mut times: Vec<f64>) -> f64 {
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// VmHWM, the process's peak resident set, in MB (0 where /proc is unavailable).
pub fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    kb / 1024.0
}
