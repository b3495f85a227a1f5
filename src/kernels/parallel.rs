//! Data parallelism: rayon's parallel iterators with the default feature `parallel`, and without it the
//! same methods running sequentially on the calling thread, so a single-threaded build has no thread pool
//! at all and every loop in the engine is written once.
//!
//! The engine splits work by size and combines partial results in a fixed order (docs/ARCHITECTURE.md),
//! so both builds compute the same bits. Only the methods the engine uses are mirrored: `par_chunks`,
//! `par_chunks_mut`, `par_iter`, `into_par_iter`, `par_sort_unstable`, `with_min_len` and `for_each_init`; the adaptors
//! chained on them (`zip`, `enumerate`, `map`, `for_each`, `collect`) are then the standard iterator's.

#[cfg(feature = "parallel")]
pub use rayon::{current_num_threads, current_thread_index, prelude};

/// Threads that run parallel loops: one without the `parallel` feature.
#[cfg(not(feature = "parallel"))]
pub fn current_num_threads() -> usize {
    1
}

/// The index of the calling thread in the pool: none without the `parallel` feature.
#[cfg(not(feature = "parallel"))]
pub fn current_thread_index() -> Option<usize> {
    None
}

#[cfg(not(feature = "parallel"))]
pub mod prelude {
    /// `par_chunks` and `par_iter` of a slice, sequential.
    pub trait ParallelSlice<T> {
        fn par_chunks(&self, size: usize) -> std::slice::Chunks<'_, T>;
        fn par_iter(&self) -> std::slice::Iter<'_, T>;
    }

    impl<T> ParallelSlice<T> for [T] {
        fn par_chunks(&self, size: usize) -> std::slice::Chunks<'_, T> {
            self.chunks(size)
        }

        fn par_iter(&self) -> std::slice::Iter<'_, T> {
            self.iter()
        }
    }

    /// `par_chunks_mut` and `par_sort_unstable` of a slice, sequential.
    pub trait ParallelSliceMut<T> {
        fn par_chunks_mut(&mut self, size: usize) -> std::slice::ChunksMut<'_, T>;
        fn par_sort_unstable(&mut self)
        where
            T: Ord;
    }

    impl<T> ParallelSliceMut<T> for [T] {
        fn par_chunks_mut(&mut self, size: usize) -> std::slice::ChunksMut<'_, T> {
            self.chunks_mut(size)
        }

        fn par_sort_unstable(&mut self)
        where
            T: Ord,
        {
            self.sort_unstable()
        }
    }

    /// `into_par_iter` of anything iterable, sequential.
    pub trait IntoParallelIterator: IntoIterator + Sized {
        fn into_par_iter(self) -> Self::IntoIter {
            self.into_iter()
        }
    }

    impl<I: IntoIterator> IntoParallelIterator for I {}

    /// `with_min_len` and `for_each_init` of an iterator, sequential.
    pub trait ParallelIterator: Iterator + Sized {
        /// A scheduling hint, meaningless on one thread.
        fn with_min_len(self, _min: usize) -> Self {
            self
        }

        /// `for_each` with one scratch state from `init` (rayon makes one per task; here there is one task).
        fn for_each_init<S>(self, init: impl Fn() -> S, mut f: impl FnMut(&mut S, Self::Item)) {
            let mut state = init();
            self.for_each(|item| f(&mut state, item));
        }
    }

    impl<I: Iterator> ParallelIterator for I {}
}

#[cfg(test)]
mod tests {
    use super::prelude::*;

    #[test]
    fn chunked_loops_visit_everything_in_order() {
        let mut out = vec![0u32; 10];
        let input: Vec<u32> = (0..10).collect();
        out.par_chunks_mut(3).zip(input.par_chunks(3)).enumerate().with_min_len(2).for_each(|(i, (o, x))| {
            o.iter_mut().zip(x).for_each(|(o, x)| *o = x * 10 + i as u32);
        });
        assert_eq!(out, [0, 10, 20, 31, 41, 51, 62, 72, 82, 93]);
        let mut seen = vec![0usize; 3];
        seen.par_chunks_mut(1).enumerate().for_each_init(|| 100, |base, (i, o)| o[0] = *base + i);
        assert_eq!(seen, [100, 101, 102]);
        let squares: Vec<u32> = (0..4u32).into_par_iter().map(|x| x * x).collect();
        assert_eq!(squares, [0, 1, 4, 9]);
        let mut keys = vec![3, 1, 2];
        keys.par_sort_unstable();
        assert_eq!(keys.par_iter().sum::<i32>(), 6);
        assert_eq!(keys, [1, 2, 3]);
    }
}
