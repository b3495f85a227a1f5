//! Token shards in llm.c's `.bin` formats, with peerlm's vocab size, checksum and tokenizer hash in header
//! slots llm.c leaves at zero.
//!
//! A shard is a header of 256 little-endian `i32`s (1024 bytes) followed by the tokens, little-endian:
//!
//! | slot | meaning |
//! |---|---|
//! | 0, 1 | magic and version: 20240520 and 1 = `u16` tokens (llm.c's GPT-2 format), 20240801 and 7 = `u32` tokens (llm.c's Llama 3 format); 20240520 and 2 = `u32` tokens is read too (peerlm's own `u32` format before it wrote llm.c's) |
//! | 2 | token count (llm.c stores it as an `i32`, so at most 2^31 - 1 tokens per shard) |
//! | 3 | peerlm: vocabulary size (every token is below it) |
//! | 4, 5 | peerlm: FNV-1a 64-bit hash of the token bytes as stored, low 32 bits then high 32 bits |
//! | 6, 7 | peerlm: the tokenizer's identity hash ([`super::tokenizer_file::hash`]), low then high 32 bits |
//! | 8..256 | zero |
//!
//! llm.c's `write_datafile` (`dev/data/data_common.py`) fills slots 0-2 only, and its loaders
//! (`llmc/dataloader.h`, `train_llama3.py`) read only those, so each reads the other's shards. A plain
//! llm.c shard (slots 3..256 zero) has no vocabulary size, checksum or tokenizer hash: it opens only
//! against a tokenizer ([`Shard::open_for`]), whose vocabulary bounds the tokens, with a warning. A peerlm
//! shard written before the tokenizer hash existed (slots 6 and 7 zero) opens with a warning too.
//!
//! [`Shard::open`] validates everything when the shard is opened, before any training step reads it: the
//! magic, the version, the reserved slots, the file length against the token count, that every token is
//! below the vocab size, and the checksum; [`Shard::open_for`] also checks the tokenizer. The scan reads the
//! file with ordinary buffered reads (not through the memory map) so the validated pages are not left
//! mapped into the process. [`validate_bytes`] does the same checks on bytes in memory (the fuzzer's entry
//! point). [`ShardWriter`] writes through [`super::atomic_file`]: a shard is either absent or complete.
//! Shards are read by [`super::loader`].

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use memmap2::{Advice, Mmap, UncheckedAdvice};

use super::atomic_file::AtomicFile;
use super::fnv::{self, Fnv1a};
use super::tokenizer_file::TokenizerId;
use crate::error::{Error, Result};

/// llm.c's magic number of `u16` shards (version 1), and of peerlm's earlier `u32` shards (version 2).
pub const MAGIC: i32 = 20_240_520;
/// llm.c's magic number of `u32` shards (version 7).
pub const MAGIC_U32: i32 = 20_240_801;
pub const HEADER_BYTES: usize = 256 * 4;
/// Largest vocabulary that fits version 1 (`u16` tokens: ids 0..=65,535).
pub const MAX_U16_VOCAB: u32 = 65_536;

/// The checksum stored in header slots 4 and 5: FNV-1a 64 of the token bytes as stored.
pub fn checksum(token_bytes: &[u8]) -> u64 {
    fnv::hash(token_bytes)
}

/// The decoded header of a shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardHeader {
    /// 1 (`u16` tokens), 7 (`u32`, llm.c) or 2 (`u32`, peerlm's earlier format); the magic follows from it.
    pub version: u32,
    pub token_count: u64,
    /// peerlm's fields: `None` in a plain llm.c shard.
    pub vocab: Option<VocabAndChecksum>,
    /// The tokenizer's identity hash: `None` in llm.c shards and in peerlm's before it was recorded.
    pub tokenizer_hash: Option<u64>,
}

/// Header slots 3-5, which peerlm always writes together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VocabAndChecksum {
    pub vocab_size: u32,
    pub checksum: u64,
}

impl ShardHeader {
    /// Bytes per token: 2 for version 1, 4 otherwise.
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
        slots[0] = if self.version == 7 { MAGIC_U32 } else { MAGIC };
        slots[1] = self.version as i32;
        slots[2] = self.token_count as i32;
        if let Some(vocab) = self.vocab {
            slots[3] = vocab.vocab_size as i32;
            (slots[4], slots[5]) = split(vocab.checksum);
        }
        if let Some(hash) = self.tokenizer_hash {
            (slots[6], slots[7]) = split(hash);
        }
        let mut bytes = [0u8; HEADER_BYTES];
        for (chunk, slot) in bytes.chunks_exact_mut(4).zip(slots) {
            chunk.copy_from_slice(&slot.to_le_bytes());
        }
        bytes
    }

    /// Decode and check a header from the first bytes of a shard; `name` appears in errors.
    pub fn parse(bytes: &[u8], name: &str) -> Result<Self> {
        if bytes.len() < HEADER_BYTES {
            return Err(Error::shard(name, format!("{} bytes, shorter than the 1024-byte header", bytes.len())));
        }
        let slot = |i: usize| i32::from_le_bytes(bytes[4 * i..4 * i + 4].try_into().expect("4 bytes"));
        let version = parse_version(slot(0), slot(1), name)?;
        let token_count = slot(2);
        if token_count < 0 {
            return Err(Error::shard(name, format!("negative token count {token_count}")));
        }
        let vocab = parse_vocab(version, slot(3), join(slot(4), slot(5)), name)?;
        let tokenizer_hash = Some(join(slot(6), slot(7))).filter(|&hash| hash != 0);
        if vocab.is_none() && tokenizer_hash.is_some() {
            return Err(Error::shard(name, "a tokenizer hash (header slots 6-7) without a vocab size (slot 3)"));
        }
        if let Some(slot_index) = (8..256).find(|&i| slot(i) != 0) {
            return Err(Error::shard(
                name,
                format!("header slot {slot_index} is {} (slots 8..256 must be 0)", slot(slot_index)),
            ));
        }
        Ok(ShardHeader { version, token_count: token_count as u64, vocab, tokenizer_hash })
    }
}

/// The version of a known magic and version pair.
fn parse_version(magic: i32, version: i32, name: &str) -> Result<u32> {
    match (magic, version) {
        (MAGIC, 1 | 2) | (MAGIC_U32, 7) => Ok(version as u32),
        (MAGIC | MAGIC_U32, _) => Err(Error::shard(
            name,
            format!("version {version} of magic {magic} is not one of 1 or 2 (magic {MAGIC}) or 7 (magic {MAGIC_U32})"),
        )),
        _ => Err(Error::shard(
            name,
            format!("magic number {magic} is not {MAGIC} or {MAGIC_U32} (not an llm.c token file)"),
        )),
    }
}

/// Slots 3-5: all zero in a plain llm.c shard, else a vocabulary size that fits the token width.
fn parse_vocab(version: u32, vocab_size: i32, checksum: u64, name: &str) -> Result<Option<VocabAndChecksum>> {
    if vocab_size == 0 && checksum == 0 {
        return Ok(None);
    }
    if vocab_size <= 0 || (version == 1 && vocab_size as u32 > MAX_U16_VOCAB) {
        return Err(Error::shard(
            name,
            format!("vocab size {vocab_size} (header slot 3) is not in 1..={MAX_U16_VOCAB} for u16 tokens or positive for u32 tokens"),
        ));
    }
    Ok(Some(VocabAndChecksum { vocab_size: vocab_size as u32, checksum }))
}

/// A 64-bit value as two `i32` header slots, low half first.
fn split(value: u64) -> (i32, i32) {
    (value as u32 as i32, (value >> 32) as u32 as i32)
}

fn join(low: i32, high: i32) -> u64 {
    low as u32 as u64 | (high as u32 as u64) << 32
}

/// Running checks over a shard's token bytes: every token below the vocabulary, and the checksum if any.
struct TokenScan {
    width: usize,
    vocab_size: u32,
    checksum: Option<u64>,
    hash: Fnv1a,
    tokens_seen: u64,
}

impl TokenScan {
    fn new(header: &ShardHeader, vocab_size: u32) -> Self {
        TokenScan {
            width: header.token_width(),
            vocab_size,
            checksum: header.vocab.map(|v| v.checksum),
            hash: Fnv1a::default(),
            tokens_seen: 0,
        }
    }

    /// `bytes` holds whole tokens.
    fn update(&mut self, bytes: &[u8], name: &str) -> Result<()> {
        self.hash.update(bytes);
        let width = self.width;
        let out_of_range = bytes.chunks_exact(width).position(|token| decode_token(token) >= self.vocab_size);
        if let Some(position) = out_of_range {
            let index = self.tokens_seen + position as u64;
            let token = decode_token(&bytes[position * width..(position + 1) * width]);
            return Err(Error::shard(
                name,
                format!(
                    "token {token} at index {index} (byte offset {}) is not below vocab size {}",
                    HEADER_BYTES as u64 + index * width as u64,
                    self.vocab_size
                ),
            ));
        }
        self.tokens_seen += (bytes.len() / width) as u64;
        Ok(())
    }

    fn finish(self, name: &str) -> Result<()> {
        match self.checksum {
            Some(expected) if expected != self.hash.value() => Err(Error::shard(
                name,
                format!(
                    "checksum mismatch: header says {expected:016x}, tokens hash to {:016x} (file corrupted)",
                    self.hash.value()
                ),
            )),
            _ => Ok(()),
        }
    }
}

/// The vocabulary that bounds a shard's tokens, checked against the tokenizer when one is given, and what
/// could not be checked (warnings).
fn check_tokenizer(header: &ShardHeader, tokenizer: Option<&TokenizerId>, name: &str) -> Result<(u32, Vec<String>)> {
    let Some(tokenizer) = tokenizer else {
        let vocab = header.vocab.ok_or_else(|| {
            Error::shard(name, "a plain llm.c shard (no vocab size in header slot 3) needs its tokenizer to be read")
        })?;
        return Ok((vocab.vocab_size, Vec::new()));
    };
    let Some(vocab) = header.vocab else {
        let warning = format!(
            "{name}: a plain llm.c shard, with no vocab size, checksum or tokenizer hash: only checked against the {} tokens of {}'s tokenizer",
            tokenizer.vocab_size, tokenizer.source
        );
        return Ok((tokenizer.vocab_size, vec![warning]));
    };
    let mut warnings = Vec::new();
    match header.tokenizer_hash {
        Some(hash) if hash != tokenizer.hash => {
            return Err(Error::Invalid(format!(
                "{name} was encoded by tokenizer {hash:016x} (header slots 6-7), but {} holds tokenizer {:016x}: \
                 encode the text again with that tokenizer (`peerlm prepare --tokenizer` or `--from-checkpoint`)",
                tokenizer.source, tokenizer.hash
            )))
        }
        Some(_) => {}
        None => warnings.push(format!(
            "{name}: no tokenizer hash (written before peerlm recorded one): cannot check that {}'s tokenizer wrote it",
            tokenizer.source
        )),
    }
    if vocab.vocab_size != tokenizer.vocab_size {
        return Err(Error::Invalid(format!(
            "{name} holds tokens of a {}-token vocabulary (header slot 3), but {}'s tokenizer has {} tokens",
            vocab.vocab_size, tokenizer.source, tokenizer.vocab_size
        )));
    }
    Ok((vocab.vocab_size, warnings))
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
        return Err(Error::shard(
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
    let (vocab_size, _) = check_tokenizer(&header, None, name)?;
    let mut scan = TokenScan::new(&header, vocab_size);
    scan.update(&bytes[HEADER_BYTES..], name)?;
    scan.finish(name)?;
    Ok(header)
}

/// An open, validated, memory-mapped shard.
pub struct Shard {
    path: PathBuf,
    header: ShardHeader,
    vocab_size: u32,
    warnings: Vec<String>,
    map: Mmap,
}

impl Shard {
    /// Open and validate the shard at `path` (reads the whole file once; see the module comment). A plain
    /// llm.c shard needs its tokenizer: see [`Shard::open_for`].
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_checked(path, None)
    }

    /// Open and validate the shard at `path`, and refuse it unless `tokenizer` wrote it (a shard that
    /// cannot say, see the module comment, opens with a warning: [`Shard::warnings`]).
    pub fn open_for(path: &Path, tokenizer: &TokenizerId) -> Result<Self> {
        Self::open_checked(path, Some(tokenizer))
    }

    fn open_checked(path: &Path, tokenizer: Option<&TokenizerId>) -> Result<Self> {
        let name = path.display().to_string();
        let mut file = File::open(path).map_err(|e| Error::io(&name, e))?;
        let actual_len = file.metadata().map_err(|e| Error::io(&name, e))?.len();
        let mut header_bytes = vec![0u8; HEADER_BYTES.min(actual_len as usize)];
        file.read_exact(&mut header_bytes).map_err(|e| Error::io(&name, e))?;
        let header = ShardHeader::parse(&header_bytes, &name)?;
        check_length(&header, actual_len, &name)?;
        let (vocab_size, warnings) = check_tokenizer(&header, tokenizer, &name)?;

        let mut scan = TokenScan::new(&header, vocab_size);
        let mut buffer = vec![0u8; 1 << 20]; // a multiple of both token widths
        loop {
            let filled = read_full(&mut file, &mut buffer).map_err(|e| Error::io(&name, e))?;
            if filled == 0 {
                break;
            }
            scan.update(&buffer[..filled - filled % header.token_width()], &name)?;
        }
        scan.finish(&name)?;

        // SAFETY: the map is read-only and lives as long as `Shard`. The one hazard of a file map is another
        // process truncating or rewriting the file while it is mapped; shards are written once to a temporary
        // name and renamed into place (see `ShardWriter`), never modified afterwards.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(&name, e))?;
        check_length(&header, map.len() as u64, &name)?;
        // Training reads small windows at random places: without this advice, a window whose pages are not
        // cached makes the kernel read ahead around it, reading from disk far more than the windows hold
        // (docs/PERFORMANCE.md, "Figures moved out of code comments"). It does not stop a fault from mapping
        // a whole cached folio: see `release_pages`. An advice, so failure is harmless.
        let _ = map.advise(Advice::Random);
        Ok(Shard { path: path.to_path_buf(), header, vocab_size, warnings, map })
    }

    /// What could not be checked when the shard was opened (no checksum or tokenizer hash in its header).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
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

    /// The vocabulary bounding the tokens: the header's, or for a plain llm.c shard the tokenizer's.
    pub fn vocab_size(&self) -> u32 {
        self.vocab_size
    }

    /// Unmap the shard's pages from this process (`MADV_DONTNEED`); they stay in the page cache, so reading
    /// them again costs a page fault, not a disk read.
    ///
    /// Why: a read fault on a file map maps not just the page but the cached pages around it, up to the whole
    /// large folio holding it, even with [`Advice::Random`], and mapped pages stay counted in the process's
    /// resident memory: random windows leave most of a shard mapped. Releasing only each window's own pages
    /// keeps the rest of its folio mapped, hence the whole map, which is cheap: the kernel skips page tables
    /// with nothing mapped. The figures are in docs/PERFORMANCE.md ("Figures moved out of code comments").
    pub fn release_pages(&self) -> Result<()> {
        // SAFETY: `Mmap::map` maps the file read-only and shared, and the file is never modified (see `open`).
        // DONTNEED only removes page-table entries: the next read faults the same bytes back in from the page
        // cache or the file, so no slice borrowed from the map can see its contents change.
        unsafe { self.map.unchecked_advise(UncheckedAdvice::DontNeed) }.map_err(|e| Error::io(self.path.display(), e))
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
    tokenizer_hash: Option<u64>,
    version: u32,
    token_count: u64,
    hash: Fnv1a,
    encoded: Vec<u8>,
}

impl ShardWriter {
    /// Start a shard at `path` for the tokens of `tokenizer`, whose hash goes into the header.
    pub fn create_for(path: &Path, tokenizer: &TokenizerId) -> Result<Self> {
        let mut writer = Self::create(path, tokenizer.vocab_size)?;
        writer.tokenizer_hash = Some(tokenizer.hash);
        Ok(writer)
    }

    /// Start a shard at `path` for tokens below `vocab_size`, with no tokenizer hash: version 1 (`u16`) if
    /// they fit in 16 bits, else llm.c's `u32` format (version 7).
    pub fn create(path: &Path, vocab_size: u32) -> Result<Self> {
        if vocab_size == 0 || vocab_size > i32::MAX as u32 {
            return Err(Error::Invalid(format!("{}: vocab size {vocab_size} cannot be stored", path.display())));
        }
        let mut file = AtomicFile::create(path)?;
        file.write_all(&[0u8; HEADER_BYTES])?;
        let version = if vocab_size <= MAX_U16_VOCAB { 1 } else { 7 };
        Ok(ShardWriter {
            file,
            path: path.to_path_buf(),
            vocab_size,
            tokenizer_hash: None,
            version,
            token_count: 0,
            hash: Fnv1a::default(),
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
            return Err(Error::Invalid(format!(
                "{}: token {} is not below vocab size {}",
                self.path.display(),
                tokens[position],
                self.vocab_size
            )));
        }
        if self.token_count + tokens.len() as u64 > i32::MAX as u64 {
            return Err(Error::Invalid(format!("{}: more than 2^31 - 1 tokens in one shard", self.path.display())));
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
            vocab: Some(VocabAndChecksum { vocab_size: self.vocab_size, checksum: self.hash.value() }),
            tokenizer_hash: self.tokenizer_hash,
        };
        self.file.write_at(0, &header.to_bytes())?;
        self.file.commit()?;
        Ok(header)
    }
}

/// Write `tokens` as one shard, with no tokenizer hash.
pub fn write_shard(path: &Path, vocab_size: u32, tokens: &[u32]) -> Result<ShardHeader> {
    let mut writer = ShardWriter::create(path, vocab_size)?;
    writer.write(tokens)?;
    writer.finish()
}

/// Write `tokens` of `tokenizer` as one shard.
pub fn write_shard_for(path: &Path, tokenizer: &TokenizerId, tokens: &[u32]) -> Result<ShardHeader> {
    let mut writer = ShardWriter::create_for(path, tokenizer)?;
    writer.write(tokens)?;
    writer.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips() {
        let vocab = Some(VocabAndChecksum { vocab_size: 70_000, checksum: checksum(&[]) });
        for tokenizer_hash in [None, Some(u64::MAX - 5)] {
            let header = ShardHeader { version: 7, token_count: 0, vocab, tokenizer_hash };
            let bytes = header.to_bytes();
            assert_eq!(ShardHeader::parse(&bytes, "h").unwrap(), header);
            assert_eq!(validate_bytes(&bytes, "h").unwrap(), header);
        }
    }
}
