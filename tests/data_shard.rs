//! Token shards: write/open round trip, and one clear error per kind of corruption.
#![cfg(feature = "io")]

use std::path::PathBuf;

use peerlm::data::shard::{validate_bytes, write_shard, Shard, HEADER_BYTES};

fn temp_path(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("data_shard");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[test]
fn round_trip_u16_and_u32() {
    for (vocab, version) in [(50_257u32, 1u32), (65_536, 1), (70_000, 2)] {
        let path = temp_path(&format!("round_trip_{vocab}.bin"));
        let tokens: Vec<u32> = (0..10_000u32).map(|i| (i * 7919) % vocab).chain([vocab - 1]).collect();
        let header = write_shard(&path, vocab, &tokens).unwrap();
        assert_eq!(header.version, version);
        let shard = Shard::open(&path).unwrap();
        assert_eq!((shard.len(), shard.vocab_size(), *shard.header()), (tokens.len(), vocab, header));
        let mut read = vec![0; tokens.len()];
        shard.read_tokens(0, &mut read);
        assert_eq!(read, tokens);
        let mut middle = vec![0; 5];
        shard.read_tokens(100, &mut middle);
        assert_eq!(middle, &tokens[100..105]);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), header.file_len());
    }
}

#[test]
fn header_matches_llm_c_layout() {
    let path = temp_path("layout.bin");
    write_shard(&path, 300, &[1, 2, 299]).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let slot = |i: usize| i32::from_le_bytes(bytes[4 * i..4 * i + 4].try_into().unwrap());
    assert_eq!((slot(0), slot(1), slot(2), slot(3)), (20240520, 1, 3, 300));
    assert_eq!(&bytes[HEADER_BYTES..], &[1, 0, 2, 0, 43, 1]);
}

/// Write a good shard, corrupt its bytes with `corrupt`, and return the error message of opening it.
fn open_error(name: &str, corrupt: impl Fn(&mut Vec<u8>)) -> String {
    let path = temp_path(name);
    write_shard(&path, 1000, &(0..500).collect::<Vec<u32>>()).unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    corrupt(&mut bytes);
    std::fs::write(&path, &bytes).unwrap();
    let message = Shard::open(&path).err().expect("corrupt shard opened").to_string();
    let in_memory = validate_bytes(&bytes, &path.display().to_string()).unwrap_err().to_string();
    assert_eq!(message, in_memory, "file and in-memory validation agree");
    assert!(message.starts_with(&path.display().to_string()), "{message}");
    message
}

#[test]
fn each_corruption_has_its_own_error() {
    let magic = open_error("bad_magic.bin", |b| b[0] ^= 1);
    assert!(magic.contains("magic number"), "{magic}");
    let version = open_error("bad_version.bin", |b| b[4] = 7);
    assert!(version.contains("version 7"), "{version}");
    let truncated = open_error("truncated.bin", |b| b.truncate(b.len() - 3));
    assert!(truncated.contains("truncated"), "{truncated}");
    let short = open_error("short.bin", |b| b.truncate(100));
    assert!(short.contains("shorter than the 1024-byte header"), "{short}");
    let token = open_error("bad_token.bin", |b| {
        b[HEADER_BYTES + 20..HEADER_BYTES + 22].copy_from_slice(&1000u16.to_le_bytes())
    });
    assert!(token.contains("token 1000 at index 10") && token.contains("vocab size 1000"), "{token}");
    let checksum = open_error("bad_checksum.bin", |b| b[HEADER_BYTES + 20] ^= 1);
    assert!(checksum.contains("checksum mismatch"), "{checksum}");
    let slot = open_error("bad_slot.bin", |b| b[4 * 100] = 1);
    assert!(slot.contains("header slot 100"), "{slot}");
}

#[test]
fn writer_refuses_tokens_outside_the_vocabulary() {
    let path = temp_path("refused.bin");
    assert!(write_shard(&path, 10, &[3, 10]).is_err());
    assert!(!path.exists(), "a failed write leaves no file");
}
