//! Checkpoint parsing on arbitrary bytes: the safetensors header length, the JSON header, each tensor's
//! dtype, shape and byte span, and the spans' tiling of the data.
//!
//! Random bytes almost never start with a plausible 8-byte header length, so each input is also tried as
//! a "shaped" file: the first two bytes choose where the header ends, the correct length prefix is
//! written in front of it, and the rest follows as tensor data. That lets the fuzzer reach the JSON and
//! span checks.
#![no_main]

use libfuzzer_sys::fuzz_target;
use peerlm::checkpoint::{Checkpoint, Header};

fn check(bytes: &[u8]) {
    if let Ok(checkpoint) = Checkpoint::parse(bytes) {
        // A parsed file is its length prefix, its header, and tensors that fill the data exactly:
        // 4 bytes per F32 element, 2 per BF16 one, nothing left over.
        let header = Header::parse(bytes).expect("a parsed file has a valid header");
        let stored: usize = header.entries.iter().map(|e| e.dtype.size() * e.shape.iter().product::<usize>()).sum();
        let elements: usize = checkpoint.tensors.iter().map(|(_, t)| t.numel()).sum();
        assert_eq!(elements, header.entries.iter().map(|e| e.shape.iter().product::<usize>()).sum::<usize>());
        assert_eq!(header.data_start + stored, bytes.len());
    }
}

fn shaped(data: &[u8]) -> Option<Vec<u8>> {
    let (split, rest) = data.split_first_chunk::<2>()?;
    let header_len = usize::from(u16::from_le_bytes(*split)).min(rest.len());
    let mut bytes = (header_len as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(rest);
    Some(bytes)
}

fuzz_target!(|data: &[u8]| {
    check(data);
    if let Some(bytes) = shaped(data) {
        check(&bytes);
    }
});
