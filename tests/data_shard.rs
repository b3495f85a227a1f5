//! Token shards: write/open round trip, one clear error per kind of corruption, the tokenizer check, and
//! llm.c's own shards both ways.
#![cfg(feature = "io")]

use std::path::PathBuf;

use peerlm::data::shard::{validate_bytes, write_shard, write_shard_for, Shard, HEADER_BYTES};
use peerlm::data::TokenizerId;

fn temp_path(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("data_shard");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[test]
fn round_trip_u16_and_u32() {
    for (vocab, version) in [(50_257u32, 1u32), (65_536, 1), (70_000, 7)] {
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

fn tokenizer_id(hash: u64, vocab_size: u32) -> TokenizerId {
    TokenizerId { hash, vocab_size, source: "model.safetensors".into() }
}

#[test]
fn shards_record_their_tokenizer_and_refuse_another() {
    let path = temp_path("hashed.bin");
    let ours = tokenizer_id(0x0123_4567_89ab_cdef, 300);
    let header = write_shard_for(&path, &ours, &[1, 2, 299]).unwrap();
    assert_eq!(header.tokenizer_hash, Some(ours.hash));
    let shard = Shard::open_for(&path, &ours).unwrap();
    assert!(shard.warnings().is_empty(), "{:?}", shard.warnings());

    let theirs = tokenizer_id(0xfedc_ba98_7654_3210, 300);
    let message = Shard::open_for(&path, &theirs).err().expect("another tokenizer's shard opened").to_string();
    for part in [&path.display().to_string(), "model.safetensors", "0123456789abcdef", "fedcba9876543210"] {
        assert!(message.contains(part), "{part} missing from: {message}");
    }
    let smaller = tokenizer_id(ours.hash, 299);
    assert!(Shard::open_for(&path, &smaller).is_err(), "a vocabulary that does not match is refused");
}

#[test]
fn shards_from_before_the_tokenizer_hash_open_with_a_warning() {
    let path = temp_path("unhashed.bin");
    write_shard(&path, 300, &[1, 2, 299]).unwrap();
    let shard = Shard::open_for(&path, &tokenizer_id(42, 300)).unwrap();
    assert_eq!(shard.warnings().len(), 1);
    assert!(shard.warnings()[0].contains("no tokenizer hash"), "{:?}", shard.warnings());
}

/// A shard as llm.c's `write_datafile` (dev/data/data_common.py) writes it: 256 `int32`s of which only
/// magic, version and token count are set, then the tokens as `uint16` ("gpt-2") or `uint32` ("llama-3").
fn llm_c_shard(tokens: &[u32], wide: bool) -> Vec<u8> {
    let mut header = [0i32; 256];
    header[..3].copy_from_slice(&[
        if wide { 20240801 } else { 20240520 },
        if wide { 7 } else { 1 },
        tokens.len() as i32,
    ]);
    let mut bytes: Vec<u8> = header.iter().flat_map(|slot| slot.to_le_bytes()).collect();
    for &token in tokens {
        if wide {
            bytes.extend_from_slice(&token.to_le_bytes());
        } else {
            bytes.extend_from_slice(&(token as u16).to_le_bytes());
        }
    }
    bytes
}

#[test]
fn plain_llm_c_shards_are_read_with_the_tokenizer_vocabulary() {
    for (wide, vocab) in [(false, 50_257u32), (true, 128_256)] {
        let tokens = [50_256, 3, vocab - 1, 0];
        let path = temp_path(&format!("llm_c_{wide}.bin"));
        std::fs::write(&path, llm_c_shard(&tokens, wide)).unwrap();
        let shard = Shard::open_for(&path, &tokenizer_id(7, vocab)).unwrap();
        let mut read = vec![0; tokens.len()];
        shard.read_tokens(0, &mut read);
        assert_eq!((read.as_slice(), shard.vocab_size()), (&tokens[..], vocab));
        assert!(shard.warnings()[0].contains("plain llm.c shard"), "{:?}", shard.warnings());

        let without = Shard::open(&path).err().expect("opened with no vocabulary known").to_string();
        assert!(without.contains("needs its tokenizer"), "{without}");
        let small = Shard::open_for(&path, &tokenizer_id(7, vocab - 1)).err().expect("token above the vocabulary");
        assert!(small.to_string().contains("is not below vocab size"), "{small}");
    }
}

#[test]
fn peerlm_shards_are_llm_c_shards_plus_header_slots_3_to_7() {
    for (wide, vocab) in [(false, 50_257u32), (true, 128_256)] {
        let tokens = [50_256, 3, vocab - 1, 0, 258];
        let path = temp_path(&format!("as_llm_c_{wide}.bin"));
        write_shard_for(&path, &tokenizer_id(u64::MAX, vocab), &tokens).unwrap();
        let mut ours = std::fs::read(&path).unwrap();
        let slots_3_to_7 = 4 * 3..4 * 8;
        assert!(ours[slots_3_to_7.clone()].iter().any(|&b| b != 0));
        ours[slots_3_to_7].fill(0);
        assert_eq!(ours, llm_c_shard(&tokens, wide), "u{}", if wide { 32 } else { 16 });
    }
}
