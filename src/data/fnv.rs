//! FNV-1a, 64-bit (Fowler, Noll, Vo): the checksum of a shard's tokens and the identity hash of a tokenizer.
//!
//! Both hashes are stored in files (shard headers, checkpoints) and compared across runs and machines, so the
//! function must never change: FNV-1a is tiny, fully specified, and has published test vectors.

const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a, 64-bit, fed incrementally.
#[derive(Clone, Copy, Debug)]
pub struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Fnv1a(OFFSET)
    }
}

impl Fnv1a {
    pub fn update(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0 ^ byte as u64).wrapping_mul(PRIME);
        }
    }

    pub fn value(&self) -> u64 {
        self.0
    }
}

/// The FNV-1a 64 hash of `bytes`.
pub fn hash(bytes: &[u8]) -> u64 {
    let mut hasher = Fnv1a::default();
    hasher.update(bytes);
    hasher.value()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_reference_values() {
        assert_eq!(hash(b""), 0xcbf29ce484222325);
        assert_eq!(hash(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(hash(b"foobar"), 0x85944171f73967e8);
    }
}
