//! How the engine asks the operating system for memory: large buffers on huge pages, freed buffers kept
//! for the next step.
//!
//! Three facts of Linux, glibc and the memory system shape a training step's speed as much as any
//! arithmetic loop:
//!
//! - **Freed buffers go back to the OS.** A step allocates the same activations and gradients as the step
//!   before and frees them when its tape is cleared. glibc serves a block above its mmap threshold (128 KiB
//!   at first, raised on the fly up to 32 MiB) with a fresh `mmap`, returns it with `munmap`, and trims
//!   the top of its heap whenever more than 128 KiB is free there. The next step then page-faults the same
//!   amount of memory in again, and the kernel zeroes every page. [`retain_freed_buffers`] turns
//!   mmap off for the heap's blocks (even a 32 MiB threshold would leave the largest ones, the logits
//!   and PEER's row gradients, on mmap) and turns trimming off, so a freed block stays in the heap and the
//!   next step reuses it (the measured effect on the tiny GPT is in docs/PERFORMANCE.md). The cost is
//!   that the process keeps its peak heap until it exits, which a training process does anyway.
//! - **Random rows miss the TLB.** PEER reads a few hundred thousand random 1 KiB rows of tables of up
//!   to 1 GiB per step (expert tables, their gradients' moments). With 4 KiB pages nearly every row costs
//!   a page-table walk. [`vec_from_fn`] asks for transparent huge pages (2 MiB) on every buffer of at
//!   least [`HUGE_PAGE_MIN_BYTES`], before anything is written, so the pages are huge from the first
//!   fault. This works when `/sys/kernel/mm/transparent_hugepage/enabled` is `madvise` (most
//!   distributions' default) or `always`; with `never` it is a no-op.
//! - **Zeroing is a pass over memory.** `vec![0.0; n]` writes n zeros, on the calling thread, before the
//!   op writes its values; above cache size that is one more trip to DRAM. [`par_vec_uninit`] lets a
//!   kernel that writes every element of its output skip it.
//!
//! The first two are hints: if the platform lacks them, the engine computes the same numbers, only slower.

use std::mem::MaybeUninit;

use crate::kernels::parallel::prelude::*;

/// Buffers from this size up are advised onto huge pages: below it, a 2 MiB page would mostly hold
/// other allocations' memory.
pub(crate) const HUGE_PAGE_MIN_BYTES: usize = 4 << 20;

/// The size of an x86-64 (and common aarch64) transparent huge page.
const HUGE_PAGE_BYTES: usize = 2 << 20;

/// Tells glibc's allocator to keep freed memory for reuse instead of handing it back to the OS (see the
/// module comment). Call it once at the start of a program that trains; it affects the whole process.
/// Returns whether the allocator accepted the settings (always `false` off Linux/glibc).
pub fn retain_freed_buffers() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes glibc's allocator parameters; it takes two integers, touches no
        // memory of ours and is safe to call at any time from any thread.
        unsafe {
            libc::mallopt(libc::M_MMAP_MAX, 0) == 1 && libc::mallopt(libc::M_TRIM_THRESHOLD, libc::c_int::MAX) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    false
}

/// A vector of `len` elements made by calling `element` in order, whose pages are advised to be huge
/// if it takes at least [`HUGE_PAGE_MIN_BYTES`] (see the module comment).
pub(crate) fn vec_from_fn<T>(len: usize, element: impl FnMut() -> T) -> Vec<T> {
    let mut data = uninit_vec(len);
    data.extend(std::iter::repeat_with(element).take(len));
    data
}

/// A vector of `len` elements written by `fill` chunk by chunk, in parallel, without zeroing the buffer
/// first; with it, what each call of `fill` returned, in chunk order.
///
/// Zeroing a buffer larger than the caches is one more pass over memory, and `calloc` makes it on one
/// core while the op runs on all of them. A layer norm otherwise reads x once and writes y once: without
/// the zeroing its forward ran 1.7–1.9× faster (docs/PERFORMANCE.md).
///
/// The buffer is cut into chunks of `chunk_len` elements (the last may be shorter), and `fill(i, chunk)`
/// gets chunk `i`. At least `min_chunks_per_task` chunks go to each rayon task: `usize::MAX` runs them
/// all on the calling thread, in order. Large buffers are advised onto huge pages, as in [`vec_from_fn`].
///
/// # Safety
/// `fill` must write every element of each chunk it is given (with `MaybeUninit::write`): afterwards the
/// vector's elements are read as initialised values.
pub(crate) unsafe fn par_vec_uninit<T: Send, R: Send>(
    len: usize,
    chunk_len: usize,
    min_chunks_per_task: usize,
    fill: impl Fn(usize, &mut [MaybeUninit<T>]) -> R + Sync,
) -> (Vec<T>, Vec<R>) {
    let mut data = uninit_vec(len);
    let slots = &mut data.spare_capacity_mut()[..len];
    let results = slots
        .par_chunks_mut(chunk_len.max(1))
        .enumerate()
        .with_min_len(min_chunks_per_task)
        .map(|(i, chunk)| fill(i, chunk))
        .collect();
    // SAFETY: the chunks tile the first `len` slots, and the caller guarantees `fill` wrote every slot of
    // every chunk. Had `fill` panicked, the length would still be 0 and nothing uninitialised is read.
    unsafe { data.set_len(len) };
    (data, results)
}

/// [`par_vec_uninit`] for a `fill` that leaves parts of its chunk untouched: each chunk is set to `value`
/// in the task that then fills it, in cache right before `fill` writes it, rather than the whole buffer
/// zeroed in memory beforehand. Safe, since every slot is written before `fill` sees its chunk.
pub(crate) fn par_vec_filled<T: Copy + Send + Sync, R: Send>(
    len: usize,
    chunk_len: usize,
    min_chunks_per_task: usize,
    value: T,
    fill: impl Fn(usize, &mut [T]) -> R + Sync,
) -> (Vec<T>, Vec<R>) {
    // SAFETY: `filled` writes every slot of each chunk before `fill` is called on it.
    unsafe { par_vec_uninit(len, chunk_len, min_chunks_per_task, |i, slots| fill(i, filled(slots, value))) }
}

/// Writes `value` into every slot and returns them as initialised values.
fn filled<T: Copy>(slots: &mut [MaybeUninit<T>], value: T) -> &mut [T] {
    for slot in slots.iter_mut() {
        slot.write(value);
    }
    // SAFETY: the loop wrote every slot, and `MaybeUninit<T>` has the layout of `T`.
    unsafe { &mut *(slots as *mut [MaybeUninit<T>] as *mut [T]) }
}

/// An empty vector with room for `len` elements, its pages advised to be huge if it takes at least
/// [`HUGE_PAGE_MIN_BYTES`]: for a kernel that writes all `len` elements through raw pointers or
/// `spare_capacity_mut` and then sets the length.
pub(crate) fn uninit_vec<T>(len: usize) -> Vec<T> {
    let mut data = Vec::with_capacity(len);
    advise_huge_pages(data.spare_capacity_mut());
    data
}

/// Advises the kernel to back the 2 MiB-aligned part of `buffer` with huge pages. Only whole aligned
/// huge pages inside the buffer are named, so the advice never reaches memory that is not ours.
fn advise_huge_pages<T>(buffer: &mut [T]) {
    let Some(range) = huge_page_range(buffer.as_ptr() as usize, std::mem::size_of_val(buffer)) else { return };
    #[cfg(target_os = "linux")]
    // SAFETY: `range` lies inside `buffer`, which we borrow mutably, and is page-aligned as madvise
    // requires (`huge_page_range`, tested). MADV_HUGEPAGE changes how the range is backed, never its
    // contents; an error (for example THP compiled out of the kernel) only leaves it on small pages.
    unsafe {
        libc::madvise(range.start as *mut libc::c_void, range.len(), libc::MADV_HUGEPAGE);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = range;
}

/// The whole huge pages inside the `bytes` bytes at address `start`, if the buffer is at least
/// [`HUGE_PAGE_MIN_BYTES`] and holds one.
fn huge_page_range(start: usize, bytes: usize) -> Option<std::ops::Range<usize>> {
    if bytes < HUGE_PAGE_MIN_BYTES {
        return None;
    }
    let first = start.next_multiple_of(HUGE_PAGE_BYTES);
    let end = (start + bytes) / HUGE_PAGE_BYTES * HUGE_PAGE_BYTES;
    (first < end).then_some(first..end)
}

/// Hints the CPU to start loading every cache line of `row`, which the caller will read soon: a loop
/// over random table rows issues this a few rows ahead, so the memory latency of the next rows overlaps
/// with the arithmetic on the current one. A no-op off x86-64.
#[inline(always)]
pub(crate) fn prefetch_row<T>(row: &[T]) {
    #[cfg(target_arch = "x86_64")]
    {
        use core::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let base = row.as_ptr() as *const i8;
        for offset in (0..std::mem::size_of_val(row)).step_by(64) {
            // SAFETY: prefetch is only a hint, it never faults, and `base + offset` stays inside `row`.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(base.add(offset)) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = row;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_page_advice_names_only_whole_aligned_pages_inside_the_buffer() {
        let (page, min) = (HUGE_PAGE_BYTES, HUGE_PAGE_MIN_BYTES);
        // Too small to advise, even when it spans an aligned page.
        assert_eq!(huge_page_range(4 * page, min - 1), None);
        // Aligned at both ends: all of it. Exactly the minimum counts.
        assert_eq!(huge_page_range(4 * page, min), Some(4 * page..4 * page + min));
        // Unaligned at both ends: the aligned pages strictly inside.
        let start = 4 * page + 100;
        assert_eq!(huge_page_range(start, 3 * page), Some(5 * page..7 * page));
        for (start, bytes) in [(start, min), (start, min + page - 1), (page - 1, min + 3)] {
            let range = huge_page_range(start, bytes).expect("a buffer of the minimum holds a huge page");
            assert!(start <= range.start && range.end <= start + bytes, "{range:?} outside {start}+{bytes}");
            assert!(range.start % page == 0 && range.end % page == 0 && !range.is_empty(), "{range:?}");
        }
        // The minimum is two pages, so the advice can only come up empty below it, never inside it.
        assert!(min >= 2 * page);
    }

    #[test]
    fn vec_from_fn_fills_in_order_at_every_size() {
        for len in [0, 1, 1000, HUGE_PAGE_MIN_BYTES / 4 + 3] {
            let mut next = 0u32;
            let data = vec_from_fn(len, || {
                next += 1;
                next
            });
            assert_eq!(data.len(), len);
            assert!(data.iter().enumerate().all(|(i, &x)| x as usize == i + 1));
        }
    }

    #[test]
    fn par_vec_uninit_holds_what_fill_wrote_in_chunk_order() {
        let cases = [(0, 4, 1), (1, 4, 1), (10, 3, 1), (1000, 7, 2), (1000, 64, usize::MAX)];
        for (len, chunk_len, min_chunks) in cases {
            // The allocator most likely hands this freed buffer out next: a slot `par_vec_uninit` did not
            // have written would hold its sentinel, not the expected index.
            drop(vec![usize::MAX; len]);
            // SAFETY: the closure writes every slot of its chunk.
            let (data, firsts) = unsafe {
                par_vec_uninit(len, chunk_len, min_chunks, |chunk, slots: &mut [MaybeUninit<usize>]| {
                    for (j, slot) in slots.iter_mut().enumerate() {
                        slot.write(chunk * chunk_len + j);
                    }
                    chunk * chunk_len
                })
            };
            assert_eq!(data, (0..len).collect::<Vec<_>>());
            assert_eq!(firsts, (0..len.div_ceil(chunk_len)).map(|c| c * chunk_len).collect::<Vec<_>>());
        }
    }

    #[test]
    fn par_vec_filled_sets_what_fill_leaves() {
        for (len, chunk) in [(0, 4), (1, 4), (17, 4), (1000, 64)] {
            let (data, firsts) = par_vec_filled(len, chunk, 1, 0.5f32, |i, c| {
                c[0] = i as f32;
                c.len()
            });
            assert_eq!(firsts.iter().sum::<usize>(), len);
            for (i, c) in data.chunks(chunk).enumerate() {
                assert_eq!(c[0], i as f32);
                assert!(c[1..].iter().all(|&x| x == 0.5), "chunk {i}: {c:?}");
            }
        }
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn glibc_accepts_the_settings() {
        assert!(retain_freed_buffers());
        // Memory freed after the change is still usable and correct when allocated again.
        let first = vec_from_fn(HUGE_PAGE_MIN_BYTES, || 7u8);
        drop(first);
        let second = vec_from_fn(HUGE_PAGE_MIN_BYTES, || 9u8);
        assert!(second.iter().all(|&x| x == 9));
    }

    /// The `VmFlags` line of the mapping in `/proc/self/smaps` that holds `address`.
    #[cfg(target_os = "linux")]
    fn vm_flags_of(address: usize) -> Option<String> {
        let maps = std::fs::read_to_string("/proc/self/smaps").ok()?;
        let mut inside = false;
        for line in maps.lines() {
            let range = line.split(' ').next().and_then(|r| r.split_once('-'));
            if let Some((Ok(lo), Ok(hi))) =
                range.map(|(lo, hi)| (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16)))
            {
                inside = lo <= address && address < hi;
            } else if let Some(flags) = line.strip_prefix("VmFlags:").filter(|_| inside) {
                return Some(flags.to_string());
            }
        }
        None
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn large_buffers_are_advised_huge() {
        let large = vec_from_fn(4 * HUGE_PAGE_MIN_BYTES, || 1u8);
        let flags = vm_flags_of(large.as_ptr() as usize + HUGE_PAGE_MIN_BYTES).expect("the buffer is mapped");
        assert!(flags.split_whitespace().any(|f| f == "hg"), "no MADV_HUGEPAGE flag (`hg`) in {flags:?}");
    }
}
