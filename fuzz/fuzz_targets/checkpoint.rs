//! Checkpoint parsing on arbitrary bytes: the safetensors header length, the JSON header, each tensor's
//! dtype, shape and byte span, and the spans' tiling of the data.
//!
//! Each input is also tried "shaped" (`shared/safetensors_shape.rs`), so that the fuzzer reaches the JSON
//! and span checks.
#![no_main]

#[path = "shared/safetensors_shape.rs"]
mod safetensors_shape;

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

fuzz_target!(|data: &[u8]| {
    check(data);
    if let Some(bytes) = safetensors_shape::shaped(data) {
        check(&bytes);
    }
});
