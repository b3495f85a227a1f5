//! Random bytes almost never start with a plausible 8-byte safetensors header length, so the
//! safetensors targets also try each input "shaped": the first two bytes choose where the header ends,
//! the correct length prefix is written in front of it, and the rest follows as tensor data. That lets
//! the fuzzer reach the JSON header and what follows.

/// `data` shaped as above, or `None` if it is shorter than its two choosing bytes.
pub fn shaped(data: &[u8]) -> Option<Vec<u8>> {
    let (split, rest) = data.split_first_chunk::<2>()?;
    let header_len = usize::from(u16::from_le_bytes(*split)).min(rest.len());
    let mut bytes = (header_len as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(rest);
    Some(bytes)
}
