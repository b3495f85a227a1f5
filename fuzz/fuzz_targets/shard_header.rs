//! Shard validation on arbitrary bytes (header, length, token range, checksum).
//!
//! Raw bytes rarely start with the 1024-byte header's magic, so each input is also tried as a "shaped"
//! shard: the magic (unless the first byte is odd), slots 1..=3 from the next 12 bytes, the true checksum
//! (unless the first byte's second bit is set), zero slots, then the remaining bytes as tokens. That lets the
//! fuzzer reach the length, token-range and checksum checks.
#![no_main]

use libfuzzer_sys::fuzz_target;
use peerlm::data::shard::{checksum, validate_bytes, ShardHeader, HEADER_BYTES, MAGIC};

fn check(bytes: &[u8]) {
    if let Ok(header) = validate_bytes(bytes, "<fuzz>") {
        assert_eq!(header.file_len(), bytes.len() as u64);
        assert_eq!(ShardHeader::parse(&header.to_bytes(), "<fuzz>").ok(), Some(header));
    }
}

fn shaped(data: &[u8]) -> Option<Vec<u8>> {
    let (&flags, rest) = data.split_first()?;
    let (slots, tokens) = rest.split_at_checked(12)?;
    let mut bytes = vec![0u8; HEADER_BYTES];
    if flags & 1 == 0 {
        bytes[..4].copy_from_slice(&MAGIC.to_le_bytes());
    }
    bytes[4..16].copy_from_slice(slots);
    if flags & 2 == 0 {
        let hash = checksum(tokens);
        bytes[16..24].copy_from_slice(&hash.to_le_bytes());
    }
    bytes.extend_from_slice(tokens);
    Some(bytes)
}

fuzz_target!(|data: &[u8]| {
    check(data);
    if let Some(bytes) = shaped(data) {
        check(&bytes);
    }
});
