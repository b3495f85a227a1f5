//! Where a training step's time goes, op by op: wall-clock time of every op's forward and backward, summed
//! by op name, plus the phases outside the tape (gradient norm, optimizer) that the trainer adds.
//!
//! Off by default; [`crate::Tape::time_ops`] turns it on for one tape. The cost when on is two clock reads
//! per op call, a few hundred per step, nothing beside kernels of milliseconds; when off, one branch.
//! Ops run their threads inside their own call, so an op's time is the wall-clock time the step spent in
//! it, whatever the thread count. `cargo bench --bench gpt` prints the table with `PEERLM_BENCH_PROFILE=1`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Which part of a step a time belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Pass {
    Forward,
    Backward,
    /// After the backward: gradient norm, optimizer update.
    Update,
}

/// Summed time and call count of each (pass, name).
#[derive(Clone, Debug, Default)]
pub struct OpTimes {
    entries: BTreeMap<(Pass, &'static str), (Duration, usize)>,
}

impl OpTimes {
    /// Runs `f` and adds its wall-clock time to `(pass, name)`.
    pub fn time<R>(&mut self, pass: Pass, name: &'static str, f: impl FnOnce() -> R) -> R {
        let start = Instant::now();
        let result = f();
        self.add(pass, name, start.elapsed());
        result
    }

    pub fn add(&mut self, pass: Pass, name: &'static str, elapsed: Duration) {
        let entry = self.entries.entry((pass, name)).or_default();
        entry.0 += elapsed;
        entry.1 += 1;
    }

    /// `(pass, name, total time, calls)`, the largest total first.
    pub fn largest_first(&self) -> Vec<(Pass, &'static str, Duration, usize)> {
        let mut rows: Vec<_> =
            self.entries.iter().map(|(&(pass, name), &(time, calls))| (pass, name, time, calls)).collect();
        rows.sort_by(|a, b| b.2.cmp(&a.2).then((a.0, a.1).cmp(&(b.0, b.1))));
        rows
    }

    /// The sum of every entry.
    pub fn total(&self) -> Duration {
        self.entries.values().map(|&(time, _)| time).sum()
    }
}

/// Runs `f`, timing it into `times` under `(pass, name)` when timing is on.
pub(crate) fn timed<R>(times: &mut Option<OpTimes>, pass: Pass, name: &'static str, f: impl FnOnce() -> R) -> R {
    match times {
        Some(times) => times.time(pass, name, f),
        None => f(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_add_up_by_pass_and_name_and_sort_largest_first() {
        let mut times = OpTimes::default();
        times.add(Pass::Forward, "linear", Duration::from_millis(3));
        times.add(Pass::Backward, "linear", Duration::from_millis(5));
        times.add(Pass::Forward, "linear", Duration::from_millis(4));
        times.add(Pass::Update, "optimizer", Duration::from_millis(1));
        let rows = times.largest_first();
        assert_eq!(
            rows,
            vec![
                (Pass::Forward, "linear", Duration::from_millis(7), 2),
                (Pass::Backward, "linear", Duration::from_millis(5), 1),
                (Pass::Update, "optimizer", Duration::from_millis(1), 1),
            ]
        );
        assert_eq!(times.total(), Duration::from_millis(13));
    }

    #[test]
    fn time_returns_the_result_and_counts_the_call() {
        let mut times = OpTimes::default();
        let value = times.time(Pass::Update, "grad norm", || {
            std::thread::sleep(Duration::from_millis(2));
            42
        });
        assert_eq!(value, 42);
        let rows = times.largest_first();
        assert_eq!((rows[0].0, rows[0].1, rows[0].3), (Pass::Update, "grad norm", 1));
        assert!(rows[0].2 >= Duration::from_millis(2), "{:?}", rows[0].2);
    }
}
