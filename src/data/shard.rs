//! Token shards in llm.c's `.bin` format, with peerlm's vocab size and checksum in two unused header slots.
//!
//! A shard is a header of 256 little-endian `i32`s (1024 bytes) followed by the tokens, little-endian:
//!
//! | slot | meaning |
//! |---|---|
//! | 0 | magic 20240520 (llm.c) |
//! | 1 | version: 1 = `u16` tokens, 2 = `u32` tokens (llm.c's second format, used when vocab > 65,536) |
//! | 2 | token count (llm.c stores it as an `i32`, so at most 2^31 - 1 tokens per shard) |
//! | 3 | peerlm: vocabulary size (every token is below it) |
//! | 4, 5 | peerlm: FNV-1a 64-bit hash of the token bytes as stored, low 32 bits then high 32 bits |
//! | 6..256 | zero |
//!
//! [`Shard::open`] validates everything when the shard is opened, before any training step reads it: the
//! magic, the version, that slots 6.. are zero, the file length against the token count, that every token is
//! below the vocab size, and the checksum. The scan reads the file with ordinary buffered reads (not through
//! the memory map) so the validated pages are not left mapped into the process. [`validate_bytes`] does the
//! same checks on bytes in memory (the fuzzer's entry point). [`ShardWriter`] writes through
//! [`super::atomic_file`]: a shard is either absent or complete. Shards are read by [`super::loader`].

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use memmap2::{Advice, Mmap, UncheckedAdvice};

use super::atomic_file::AtomicFile;
use super::error::{DataError, Result};

pub const MAGIC: i32 = 20_240_520;
pub const HEADER_BYTES: usize = 256 * 4;
/// Largest vocabulary that fits version 1 (`u16` tokens: ids 0..=65,535).
pub const MAX_U16_VOCAB: u32 = 65_536;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a, 64-bit, fed incrementally.
#[derive(Clone, Copy)]
pub(crate) struct Fnv1a(pub(crate) u64);

impl Fnv1a {
    pub(crate) fn new() -> Self {
        Fnv1a(FNV_OFFSET)
    }

    pub(crate) fn update(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0 ^ byte as u64).wrapping_mul(FNV_PRIME);
        }
    }
}

/// The checksum stored in header slots 4 and 5: FNV-1a 64 of the token bytes as stored.
pub fn checksum(token_bytes: &[u8]) -> u64 {
    let mut hash = Fnv1a::new();
    hash.update(token_bytes);
    hash.0
}

/// The decoded header of a shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardHeader {
    pub version: u32,
    pub token_count: u64,
    pub vocab_size: u32,
    pub checksum: u64,
}

impl ShardHeader {
    /// Bytes per token: 2 for version 1, 4 for version 2.
    pub fn token_width(&self) -> usize {
        if self.version == 1 {
            2
        } else {
            4
        }
    }

    /// Expected file length: header plus tokens.
    pub fn file_len(&self) -> u64 {
        HEADER_BYTES as u64 + self.token_count * self.token_width() as u64
    }

    pub fn to_bytes(&self) -> [u8; HEADER_BYTES] {
        let mut slots = [0i32; 256];
        slots[0] = MAGIC;
        slots[1] = self.version as i32;
        slots[2] = self.token_count as i32;
        slots[3] = self.vocab_size as i32;
        slots[4] = self.checksum as u32 as i32;
        slots[5] = (self.checksum >> 32) as u32 as i32;
        let mut bytes = [0u8; HEADER_BYTES];
        for (chunk, slot) in bytes.chunks_exact_mut(4).zip(slots) {
            chunk.copy_from_slice(&slot.to_le_bytes());
        }
        bytes
    }

    /// Decode and check a header from the first bytes of a shard; `name` appears in errors.
    pub fn parse(bytes: &[u8], name: &str) -> Result<Self> {
        if bytes.len() < HEADER_BYTES {
            return Err(DataError::shard(name, format!("{} bytes, shorter than the 1024-byte header", bytes.len())));
        }
        let slot = |i: usize| i32::from_le_bytes(bytes[4 * i..4 * i + 4].try_into().expect("4 bytes"));
        if slot(0) != MAGIC {
            return Err(DataError::shard(
                name,
                format!("magic number {} is not {MAGIC} (not an llm.c token file)", slot(0)),
            ));
        }
        let version = slot(1);
        if version != 1 && version != 2 {
            return Err(DataError::shard(name, format!("version {version} is not 1 (u16 tokens) or 2 (u32 tokens)")));
        }
        let (token_count, vocab_size) = (slot(2), slot(3));
        if token_count < 0 {
            return Err(DataError::shard(name, format!("negative token count {token_count}")));
        }
        if vocab_size <= 0 || (version == 1 && vocab_size as u32 > MAX_U16_VOCAB) {
            return Err(DataError::shard(
                name,
                format!("vocab size {vocab_size} (header slot 3) is not in 1..={MAX_U16_VOCAB} for version 1 or positive for version 2"),
            ));
        }
        if let Some(slot_index) = (6..256).find(|&i| slot(i) != 0) {
            return Err(DataError::shard(
                name,
                format!("header slot {slot_index} is {} (slots 6..256 must be 0)", slot(slot_index)),
            ));
        }
        let checksum = slot(4) as u32 as u64 | (slot(5) as u32 as u64) << 32;
        Ok(ShardHeader {
            version: version as u32,
            token_count: token_count as u64,
            vocab_size: vocab_size as u32,
            checksum,
        })
    }
}

/// Running checks over a shard's token bytes: every token below vocab, and the checksum.
struct TokenScan {
    header: ShardHeader,
    hash: Fnv1a,
    tokens_seen: u64,
}

impl TokenScan {
    fn new(header: ShardHeader) -> Self {
        TokenScan { header, hash: Fnv1a::new(), tokens_seen: 0 }
    }

    /// `bytes` holds whole tokens.
    fn update(&mut self, bytes: &[u8], name: &str) -> Result<()> {
        self.hash.update(bytes);
        let width = self.header.token_width();
        let out_of_range = bytes.chunks_exact(width).position(|token| decode_token(token) >= self.header.vocab_size);
        if let Some(position) = out_of_range {
            let index = self.tokens_seen + position as u64;
            let token = decode_token(&bytes[position * width..(position + 1) * width]);
            return Err(DataError::shard(
                name,
                format!(
                    "token {token} at index {index} (byte offset {}) is not below vocab size {}",
                    HEADER_BYTES as u64 + index * width as u64,
                    self.header.vocab_size
                ),
            ));
        }
        self.tokens_seen += (bytes.len() / width) as u64;
        Ok(())
    }

    fn finish(self, name: &str) -> Result<()> {
        if self.hash.0 != self.header.checksum {
            return Err(DataError::shard(
                name,
                format!(
                    "checksum mismatch: header says {:016x}, tokens hash to {:016x} (file corrupted)",
                    self.header.checksum, self.hash.0
                ),
            ));
        }
        Ok(())
    }
}

/// A little-endian token of 2 or 4 bytes.
fn decode_token(bytes: &[u8]) -> u32 {
    match *bytes {
        [a, b] => u16::from_le_bytes([a, b]) as u32,
        [a, b, c, d] => u32::from_le_bytes([a, b, c, d]),
        _ => unreachable!("tokens are 2 or 4 bytes"),
    }
}

fn check_length(header: &ShardHeader, actual: u64, name: &str) -> Result<()> {
    if actual != header.file_len() {
        return Err(DataError::shard(
            name,
            format!(
                "{actual} bytes, but the header's {} tokens of {} bytes need {} (truncated or padded)",
                header.token_count,
                header.token_width(),
                header.file_len()
            ),
        ));
    }
    Ok(())
}

/// Validate a whole shard held in memory, exactly as [`Shard::open`] does a file. Never panics.
pub fn validate_bytes(bytes: &[u8], name: &str) -> Result<ShardHeader> {
    let header = ShardHeader::parse(bytes, name)?;
    check_length(&header, bytes.len() as u64, name)?;
    let mut scan = TokenScan::new(header);
    scan.update(&bytes[HEADER_BYTES..], name)?;
    scan.finish(name)?;
    Ok(header)
}

/// An open, validated, memory-mapped shard.
pub struct Shard {
    path: PathBuf,
    header: ShardHeader,
    map: Mmap,
}

impl Shard {
    /// Open and validate the shard at `path` (reads the whole file once; see the module comment).
    pub fn open(path: &Path) -> Result<Self> {
        let name = path.display().to_string();
        let mut file = File::open(path).map_err(|e| DataError::io(&name, e))?;
        let actual_len = file.metadata().map_err(|e| DataError::io(&name, e))?.len();
        let mut header_bytes = vec![0u8; HEADER_BYTES.min(actual_len as usize)];
        file.read_exact(&mut header_bytes).map_err(|e| DataError::io(&name, e))?;
        let header = ShardHeader::parse(&header_bytes, &name)?;
        check_length(&header, actual_len, &name)?;

        let mut scan = TokenScan::new(header);
        let mut buffer = vec![0u8; 1 << 20]; // a multiple of both token widths
        loop {
            let filled = read_full(&mut file, &mut buffer).map_err(|e| DataError::io(&name, e))?;
            if filled == 0 {
                break;
            }
            scan.update(&buffer[..filled - filled % header.token_width()], &name)?;
        }
        scan.finish(&name)?;

        // SAFETY: the map is read-only and lives as long as `Shard`. The one hazard of a file map is another
        // process truncating or rewriting the file while it is mapped; shards are written once to a temporary
        // name and renamed into place (see `ShardWriter`), never modified afterwards.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| DataError::io(&name, e))?;
        check_length(&header, map.len() as u64, &name)?;
        // Training reads small windows at random places: without this advice, a window whose pages are not
        // cached makes the kernel read ahead around it (measured, 1 GiB shard, cold cache: 2,000 windows read
        // 1 GiB from disk at 840 µs each; with it, 11 MiB at 70 µs). It does not stop a fault from mapping a
        // whole cached folio: see `release_pages`. An advice, so failure is harmless.
        let _ = map.advise(Advice::Random);
        Ok(Shard { path: path.to_path_buf(), header, map })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn header(&self) -> &ShardHeader {
        &self.header
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.header.token_count as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn vocab_size(&self) -> u32 {
        self.header.vocab_size
    }

    /// Unmap the shard's pages from this process (`MADV_DONTNEED`); they stay in the page cache, so reading
    /// them again costs a page fault, not a disk read.
    ///
    /// Why: a read fault on a file map maps not just the page but the cached pages around it, up to the whole
    /// large folio holding it (measured on kernel 6.18, ext4: about 1 MiB per fault), even with
    /// [`Advice::Random`], and mapped pages stay counted in the process's resident memory. Measured on a 1 GiB shard: 8,000 random windows left 0.4-0.9 GiB mapped. Releasing only each
    /// window's own pages keeps the rest of its folio mapped (still 0.36-0.9 GiB), hence the whole map: the
    /// kernel skips page tables with nothing mapped, about 8 µs per GiB of shard.
    pub fn release_pages(&self) -> Result<()> {
        // SAFETY: `Mmap::map` maps the file read-only and shared, and the file is never modified (see `open`).
        // DONTNEED only removes page-table entries: the next read faults the same bytes back in from the page
        // cache or the file, so no slice borrowed from the map can see its contents change.
        unsafe { self.map.unchecked_advise(UncheckedAdvice::DontNeed) }
            .map_err(|e| DataError::io(self.path.display(), e))
    }

    /// Copy tokens `start .. start + out.len()` into `out`. Panics if the range is outside the shard
    /// (callers compute ranges from [`Shard::len`]; a bad range is a bug, not bad input).
    pub fn read_tokens(&self, start: usize, out: &mut [u32]) {
        assert!(
            start + out.len() <= self.len(),
            "tokens {start}..{} outside shard of {}",
            start + out.len(),
            self.len()
        );
        let width = self.header.token_width();
        let bytes = &self.map[HEADER_BYTES + start * width..HEADER_BYTES + (start + out.len()) * width];
        for (token, raw) in out.iter_mut().zip(bytes.chunks_exact(width)) {
            *token = decode_token(raw);
        }
    }
}

/// Read until `buffer` is full or the file ends; returns the bytes read.
fn read_full(file: &mut File, buffer: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match file.read(&mut buffer[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Writes a shard: tokens are appended, the header is filled in by [`ShardWriter::finish`].
pub struct ShardWriter {
    file: AtomicFile,
    path: PathBuf,
    vocab_size: u32,
    version: u32,
    token_count: u64,
    hash: Fnv1a,
    encoded: Vec<u8>,
}

impl ShardWriter {
    /// Start a shard at `path` for tokens below `vocab_size` (version 1 if it fits in 16 bits, else 2).
    pub fn create(path: &Path, vocab_size: u32) -> Result<Self> {
        if vocab_size == 0 || vocab_size > i32::MAX as u32 {
            return Err(DataError::Invalid(format!("{}: vocab size {vocab_size} cannot be stored", path.display())));
        }
        let mut file = AtomicFile::create(path)?;
        file.write_all(&[0u8; HEADER_BYTES])?;
        let version = if vocab_size <= MAX_U16_VOCAB { 1 } else { 2 };
        Ok(ShardWriter {
            file,
            path: path.to_path_buf(),
            vocab_size,
            version,
            token_count: 0,
            hash: Fnv1a::new(),
            encoded: Vec::new(),
        })
    }

    /// Tokens written so far.
    pub fn len(&self) -> u64 {
        self.token_count
    }

    pub fn is_empty(&self) -> bool {
        self.token_count == 0
    }

    /// Append tokens; each must be below the vocab size, and a shard holds at most 2^31 - 1 tokens.
    pub fn write(&mut self, tokens: &[u32]) -> Result<()> {
        if let Some(position) = tokens.iter().position(|&t| t >= self.vocab_size) {
            return Err(DataError::Invalid(format!(
                "{}: token {} is not below vocab size {}",
                self.path.display(),
                tokens[position],
                self.vocab_size
            )));
        }
        if self.token_count + tokens.len() as u64 > i32::MAX as u64 {
            return Err(DataError::Invalid(format!("{}: more than 2^31 - 1 tokens in one shard", self.path.display())));
        }
        self.encoded.clear();
        for &token in tokens {
            if self.version == 1 {
                self.encoded.extend_from_slice(&(token as u16).to_le_bytes());
            } else {
                self.encoded.extend_from_slice(&token.to_le_bytes());
            }
        }
        self.hash.update(&self.encoded);
        self.token_count += tokens.len() as u64;
        self.file.write_all(&self.encoded)
    }

    /// Fill in the header, fsync, and rename into place.
    pub fn finish(mut self) -> Result<ShardHeader> {
        let header = ShardHeader {
            version: self.version,
            token_count: self.token_count,
            vocab_size: self.vocab_size,
            checksum: self.hash.0,
        };
        self.file.write_at(0, &header.to_bytes())?;
        self.file.commit()?;
        Ok(header)
    }
}

/// Write `tokens` as one shard.
pub fn write_shard(path: &Path, vocab_size: u32, tokens: &[u32]) -> Result<ShardHeader> {
    let mut writer = ShardWriter::create(path, vocab_size)?;
    writer.write(tokens)?;
    writer.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_reference_values() {
        let mut hash = Fnv1a::new();
        assert_eq!(hash.0, 0xcbf29ce484222325);
        hash.update(b"a");
        assert_eq!(hash.0, 0xaf63dc4c8601ec8c);
    }

    #[test]
    fn header_round_trips() {
        let header = ShardHeader { version: 2, token_count: 0, vocab_size: 70_000, checksum: FNV_OFFSET };
        let bytes = header.to_bytes();
        assert_eq!(ShardHeader::parse(&bytes, "h").unwrap(), header);
        assert_eq!(validate_bytes(&bytes, "h").unwrap(), header);
    }
}
