//! The window loader: reproducible training windows, disjoint and covering validation windows, windows read
//! correctly after their pages are released, and the resident memory of random reads from a large shard
//! (an ignored test, run by hand).
#![cfg(feature = "io")]

use std::path::PathBuf;

use peerlm::data::shard::write_shard;
use peerlm::data::TokenDataset;

fn temp_path(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("data_loader");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// Shards whose token at position i of shard s is (s * 10_000 + i) mod vocab, so windows can be checked.
fn dataset(lengths: &[usize], seq_len: usize) -> TokenDataset {
    let paths: Vec<PathBuf> = lengths
        .iter()
        .enumerate()
        .map(|(s, &len)| {
            let path = temp_path(&format!("shard_{s}_{len}.bin"));
            let tokens: Vec<u32> = (0..len).map(|i| ((s * 10_000 + i) % 60_000) as u32).collect();
            write_shard(&path, 60_000, &tokens).unwrap();
            path
        })
        .collect();
    TokenDataset::open(&paths, seq_len).unwrap()
}

#[test]
fn training_windows_are_a_function_of_seed_and_step_and_in_range() {
    let data = dataset(&[1000, 20, 5, 3000], 16);
    let again = dataset(&[1000, 20, 5, 3000], 16);
    for step in 0..50 {
        let batch = data.train_batch(7, step, 8);
        assert_eq!(batch, again.train_batch(7, step, 8));
        for b in 0..8 {
            let start = data.train_window(7, step, b as u64);
            assert!(start.offset + 17 <= data.shards()[start.shard].len());
            assert_ne!(start.shard, 2, "a shard shorter than a window is never drawn");
            let first = (start.shard * 10_000 + start.offset) as u32;
            let expected: Vec<u32> = (first..first + 16).collect();
            assert_eq!(&batch.inputs[b * 16..(b + 1) * 16], expected.as_slice());
            let shifted: Vec<u32> = (first + 1..first + 17).collect();
            assert_eq!(&batch.targets[b * 16..(b + 1) * 16], shifted.as_slice());
        }
    }
    assert_ne!(data.train_batch(7, 0, 8), data.train_batch(7, 1, 8));
    assert_ne!(data.train_batch(7, 0, 8), data.train_batch(8, 0, 8));
}

#[test]
fn training_windows_reach_every_shard_and_both_ends() {
    let data = dataset(&[100, 100], 10);
    let starts: Vec<_> = (0..2000).map(|step| data.train_window(1, step, 0)).collect();
    for shard in 0..2 {
        let offsets: Vec<usize> = starts.iter().filter(|s| s.shard == shard).map(|s| s.offset).collect();
        assert!(offsets.contains(&0) && offsets.contains(&89), "shard {shard}");
        assert!(offsets.iter().all(|&o| o <= 89));
    }
}

#[test]
fn validation_windows_are_disjoint_and_cover_each_shard() {
    let lengths = [1000, 20, 5, 33];
    let seq_len = 8;
    let data = dataset(&lengths, seq_len);
    for (shard, &len) in lengths.iter().enumerate() {
        let offsets: Vec<usize> = data.valid_windows().filter(|w| w.shard == shard).map(|w| w.offset).collect();
        // Targets of window k are tokens k*T+1 ..= (k+1)*T: back to back, no overlap, no gap.
        let expected: Vec<usize> = (0..(len - 1) / seq_len).map(|k| k * seq_len).collect();
        assert_eq!(offsets, expected, "shard {shard}");
    }
    let batches: Vec<_> = data.valid_batches(16).collect();
    let windows: usize = batches.iter().map(|b| b.batch_size).sum();
    assert_eq!(windows, data.valid_windows().count());
    let mut targets: Vec<u32> = batches.iter().flat_map(|b| b.targets.clone()).collect();
    let before = targets.len();
    targets.sort_unstable();
    targets.dedup();
    assert_eq!(targets.len(), before, "no target token is predicted twice");
}

#[test]
fn rejects_unusable_shard_sets() {
    let paths = [temp_path("tiny.bin")];
    write_shard(&paths[0], 100, &[1, 2, 3]).unwrap();
    assert!(TokenDataset::open(&paths, 3).is_err());
    assert!(TokenDataset::open(&paths, 2).is_ok());
    assert!(TokenDataset::open(&[], 2).is_err());
}

#[test]
fn windows_are_unchanged_after_their_pages_are_released() {
    let (lengths, seq_len) = ([70_001, 90_001], 1024);
    let data = dataset(&lengths, seq_len);
    // Does `row` hold the tokens of shard `s` from `first` on?
    let matches = |row: &[u32], s: usize, first: usize| {
        row.iter().enumerate().all(|(i, &t)| t == ((s * 10_000 + first + i) % 60_000) as u32)
    };
    for step in 0..20 {
        let batch = data.train_batch(5, step, 4); // releases the pages it read
        for shard in data.shards() {
            shard.release_pages().unwrap();
        }
        assert_eq!(data.train_batch(5, step, 4), batch);
        for b in 0..4 {
            let start = data.train_window(5, step, b as u64);
            assert!(matches(&batch.targets[b * seq_len..(b + 1) * seq_len], start.shard, start.offset + 1));
        }
    }
    let rows: Vec<u32> = data.valid_batches(3).flat_map(|b| b.inputs).collect();
    for (k, start) in data.valid_windows().enumerate() {
        assert!(matches(&rows[k * seq_len..(k + 1) * seq_len], start.shard, start.offset));
    }
    assert_eq!(rows.len(), (lengths[0] / seq_len + lengths[1] / seq_len) * seq_len);
}

/// VmRSS in kB, as /proc/self/status reports it.
fn vm_rss_kb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap_or("");
    line.split_whitespace().nth(1).and_then(|kb| kb.parse().ok()).unwrap_or(0)
}

/// Run alone with `cargo test --release --test data_loader -- --ignored --nocapture` (VmRSS covers the whole
/// process: tests running beside this one would add their own memory). Writes a 1 GiB shard (about 10 s
/// with the validation scan), then draws 1000 batches of 8 random windows of 1025 tokens, and checks that
/// VmRSS, pages mapped from the shard included, stays within 64 MiB of its value before the shard was
/// opened. Without releasing each batch's pages it grew by 0.9 GiB; ignored for the 1 GiB of disk.
#[test]
#[ignore]
fn resident_memory_does_not_grow_with_shard_size() {
    let path = temp_path("big.bin");
    let token_count = 512 << 20; // 2^29 u16 tokens = 1 GiB
    let mut writer = peerlm::data::ShardWriter::create(&path, 50_257).unwrap();
    let chunk: Vec<u32> = (0..1u32 << 20).map(|i| i % 50_257).collect();
    for _ in 0..token_count / chunk.len() {
        writer.write(&chunk).unwrap();
    }
    writer.finish().unwrap();
    let before = vm_rss_kb();
    let data = TokenDataset::open(std::slice::from_ref(&path), 1024).unwrap();
    let mut peak = vm_rss_kb();
    for step in 0..1000 {
        let batch = data.train_batch(42, step, 8);
        assert_eq!(batch.inputs.len(), 8 * 1024);
        if step % 100 == 99 {
            peak = peak.max(vm_rss_kb());
        }
    }
    println!("VmRSS before open {before} kB, peak over 1000 batches {peak} kB");
    std::fs::remove_file(&path).unwrap();
    assert!(peak < before + 64 * 1024, "VmRSS grew from {before} kB to {peak} kB reading a 1 GiB shard");
}
