//! A model file opened by memory-mapping it: the header is parsed and checked, the tensors are borrowed
//! from the map where they are f32 and aligned (copied and widened where they are bf16), and nothing else
//! is read.
//!
//! Integrity: a file's `tensor_checksums` ([`crate::checkpoint`]) would make every byte resident if it were
//! checked through the map. [`Verify::Small`] (the default) checks through the map only the tensors the
//! caller names as read whole anyway (every weight but the expert and value tables); [`Verify::All`] also
//! checks the rest (the tables; a training checkpoint's optimizer moments) with streaming reads of the
//! file, 1 MiB at a time, each chunk then dropped from the page cache (`posix_fadvise(DONTNEED)`), so that
//! neither the process nor the page cache keeps them.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::Arc;

use memmap2::{Advice, Mmap};

use crate::checkpoint::{Dtype, Entry, Header};
use crate::data::fnv::Fnv1a;
use crate::tensor::{MappedBytes, Tensor};

/// Which tensors `open` checks against the file's checksums.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Verify {
    /// The tensors read whole anyway (`read_whole`), through the map.
    #[default]
    Small,
    /// Also every other tensor (the tables), by streaming reads that leave nothing resident.
    All,
}

/// A read-only memory map of a whole model file.
struct MappedFile(Mmap);

// SAFETY: a map stays at its address until dropped, and it is read-only: nothing in this process writes
// it (see `ModelFile::open` on other processes).
unsafe impl MappedBytes for MappedFile {
    fn bytes(&self) -> &[u8] {
        &self.0
    }
}

/// A mapped model file whose header has been checked; its tensors are read on demand.
pub struct ModelFile {
    file: File,
    map: Arc<MappedFile>,
    header: Header,
}

impl ModelFile {
    /// Maps `path` and checks its header (every offset and size); reads no tensor data.
    pub fn open(path: &Path) -> Result<Self, String> {
        let file = File::open(path).map_err(|e| e.to_string())?;
        // SAFETY: the map is read-only. Another process truncating or rewriting the file in place while it
        // is mapped would change what we read (or raise SIGBUS), which no safe Rust can prevent; peerlm
        // writes model files atomically (a new file renamed over the old one), so its own writers never do
        // that: a mapped file keeps its old contents.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| format!("cannot map the file: {e}"))?;
        // A token reads a few hundred scattered rows: read-ahead would only fill memory with neighbours.
        // Advice is a hint, so a platform without it changes nothing.
        let _ = map.advise(Advice::Random);
        let header = Header::parse(&map).map_err(|e| e.to_string())?;
        Ok(ModelFile { file, map: Arc::new(MappedFile(map)), header })
    }

    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.header.metadata
    }

    /// How many values the file's tensors hold together.
    pub fn stored_values(&self) -> f64 {
        self.header.entries.iter().map(|e| e.shape.iter().product::<usize>() as f64).sum()
    }

    /// Checks the tensors against the file's checksums, if it has them: those `read_whole` names through the
    /// map, and with [`Verify::All`] all others by streaming reads.
    pub fn verify(&self, verify: Verify, read_whole: impl Fn(&str) -> bool) -> Result<(), String> {
        let Some(sums) = self.header.checksums().map_err(|e| e.to_string())? else { return Ok(()) };
        for entry in self.header.entries.iter().filter(|e| read_whole(&e.name)) {
            entry.verify(&sums, span(self.map.bytes(), &self.header, entry)).map_err(|e| e.to_string())?;
        }
        if verify == Verify::All {
            stream_verify(&self.file, &self.header, &sums, |name| !read_whole(name))?;
        }
        Ok(())
    }

    /// The tensor `name`: borrowed from the map if it is f32 and aligned, else copied (and widened from
    /// bf16). `None` if the file has no such tensor.
    pub fn tensor(&self, name: &str) -> Option<Tensor<f32>> {
        let entry = self.header.entries.iter().find(|e| e.name == name)?;
        let offset = self.header.data_start + entry.begin;
        let mapped = match entry.dtype {
            Dtype::F32 => Tensor::from_mapped(&entry.shape, Arc::clone(&self.map) as Arc<dyn MappedBytes>, offset).ok(),
            Dtype::Bf16 => None,
        };
        Some(mapped.unwrap_or_else(|| {
            Tensor::from_vec(&entry.shape, entry.decode(span(self.map.bytes(), &self.header, entry)))
        }))
    }
}

/// The stored bytes of `entry` (in bounds: `Header::parse` checked that the entries tile the data part).
fn span<'a>(bytes: &'a [u8], header: &Header, entry: &Entry) -> &'a [u8] {
    &bytes[header.data_start + entry.begin..header.data_start + entry.end]
}

/// Checks the checksums of the tensors `wanted` names, reading the file through a 1 MiB buffer and telling
/// the kernel to drop each chunk from the page cache once hashed.
fn stream_verify(
    file: &File,
    header: &Header,
    sums: &BTreeMap<String, String>,
    wanted: impl Fn(&str) -> bool,
) -> Result<(), String> {
    let mut reader = file;
    let mut buffer = vec![0u8; 1 << 20];
    for entry in header.entries.iter().filter(|e| wanted(&e.name)) {
        let mut offset = (header.data_start + entry.begin) as u64;
        let fail = |e: std::io::Error| format!("tensor {}: reading it: {e}", entry.name);
        reader.seek(SeekFrom::Start(offset)).map_err(fail)?;
        let mut hash = Fnv1a::default();
        let mut left = entry.end - entry.begin;
        while left > 0 {
            let chunk = &mut buffer[..left.min(1 << 20)];
            reader.read_exact(chunk).map_err(fail)?;
            hash.update(chunk);
            drop_from_cache(file, offset, chunk.len());
            offset += chunk.len() as u64;
            left -= chunk.len();
        }
        entry.check_hash(sums, hash.value()).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Asks the kernel to drop a span of `file` from the page cache (a hint: nothing happens off Linux).
fn drop_from_cache(file: &File, offset: u64, len: usize) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: posix_fadvise reads its integer arguments only; a bad range or descriptor is an error
        // code, which is ignored because the advice is only a hint.
        unsafe {
            libc::posix_fadvise(file.as_raw_fd(), offset as libc::off_t, len as libc::off_t, libc::POSIX_FADV_DONTNEED);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, offset, len);
}
