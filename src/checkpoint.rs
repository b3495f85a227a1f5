//! Checkpoints in the safetensors format, written atomically and validated on load.
//!
//! Safetensors (<https://github.com/huggingface/safetensors>, "Format") is deliberately tiny, so it is
//! written here by hand and Python's `safetensors.numpy.load_file` reads peerlm's checkpoints as they are:
//!
//! ```text
//! [8 bytes]  N, the header length, little-endian u64
//! [N bytes]  JSON: {"__metadata__": {"key": "value", ...},
//!                   "name": {"dtype": "F32", "shape": [rows, cols], "data_offsets": [begin, end]}, ...}
//!            padded with spaces so the data starts 8-byte aligned
//! [rest]     the tensors' little-endian bytes, back to back; offsets count from the start of this part
//! ```
//!
//! A training checkpoint holds the model's parameters, batch-norm running statistics and AdamW moments as
//! tensors, and the step, config and tokenizer as metadata strings (see [`crate::train`]). It is written to
//! a temporary file, synced and renamed over the old one ([`AtomicFile`]), so a crash mid-write leaves the
//! previous checkpoint intact. [`Checkpoint::parse`] checks every offset and size before it copies a byte,
//! so a truncated or corrupt file is an error, never a panic.
//!
//! Offsets cannot see a flipped bit inside the data, and a flipped exponent bit turns a weight into NaN or
//! 1e38 without a word. So [`Checkpoint::save`] adds the metadata key `tensor_checksums`, a JSON object
//! giving each tensor's FNV-1a 64 hash of its bytes as stored (as token shards do), and `parse` checks
//! each one, naming the tensor that does not match. Files written before the key existed still load.
//!
//! Tensors are F32, or BF16 when [`Checkpoint::save_as`] is asked for it (`peerlm export --tables bf16`
//! stores expert tables so); [`Checkpoint::parse`] widens BF16 back to f32. [`Header`] checks a file's
//! header without reading its data, for a loader that memory-maps the tensors instead of copying them
//! (`crate::infer`).

use std::collections::BTreeMap;
use std::path::Path;

use crate::data::atomic_file::AtomicFile;
use crate::data::fnv::Fnv1a;
use crate::error::Error;
use crate::kernels::memory;
use crate::tensor::Tensor;

/// Named f32 tensors and string metadata.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Checkpoint {
    pub tensors: Vec<(String, Tensor<f32>)>,
    pub metadata: BTreeMap<String, String>,
}

/// Headers beyond this are refused before allocating (a corrupt length field could ask for exabytes).
const MAX_HEADER_BYTES: u64 = 100 << 20;

/// The metadata key of the per-tensor checksums.
pub const CHECKSUMS_KEY: &str = "tensor_checksums";

impl Checkpoint {
    /// Writes the checkpoint to `path` atomically: a temporary file beside it, fsync, rename.
    pub fn save(&self, path: &Path) -> Result<(), Error> {
        self.save_as(path, |_| Dtype::F32)
    }

    /// [`Checkpoint::save`], storing each tensor in the type `dtype_of` gives its name. The f32 tensors
    /// come first in the data, so that each starts 4-byte aligned (a memory map can lend them out).
    pub fn save_as(&self, path: &Path, dtype_of: impl Fn(&str) -> Dtype) -> Result<(), Error> {
        let err = |e: Error| Error::BadCheckpoint(format!("saving checkpoint: {e}"));
        let mut stored: Vec<(&str, Dtype, &Tensor<f32>)> =
            self.tensors.iter().map(|(name, tensor)| (name.as_str(), dtype_of(name), tensor)).collect();
        stored.sort_by_key(|&(_, dtype, _)| dtype == Dtype::Bf16);
        let mut file = AtomicFile::create(path).map_err(err)?;
        file.write_all(&self.header(&stored)).map_err(err)?;
        let mut bytes = Vec::with_capacity(1 << 16);
        for (_, dtype, tensor) in &stored {
            for chunk in tensor.data().chunks(1 << 14) {
                bytes.clear();
                dtype.encode(chunk, &mut bytes);
                file.write_all(&bytes).map_err(err)?;
            }
        }
        file.commit().map_err(err)
    }

    /// The length prefix and the padded JSON header, with the tensors' checksums added to the metadata.
    fn header(&self, stored: &[(&str, Dtype, &Tensor<f32>)]) -> Vec<u8> {
        let mut entries = serde_json::Map::new();
        let sums: BTreeMap<&str, String> = stored
            .iter()
            .map(|&(name, dtype, tensor)| (name, format!("{:016x}", tensor_checksum(tensor, dtype))))
            .collect();
        let mut metadata = self.metadata.clone();
        metadata.insert(CHECKSUMS_KEY.into(), serde_json::to_string(&sums).expect("strings serialise"));
        entries.insert("__metadata__".into(), serde_json::to_value(&metadata).expect("strings serialise"));
        let mut offset = 0usize;
        for &(name, dtype, tensor) in stored {
            let end = offset + dtype.size() * tensor.numel();
            let entry =
                serde_json::json!({ "dtype": dtype.name(), "shape": tensor.shape(), "data_offsets": [offset, end] });
            entries.insert(name.to_string(), entry);
            offset = end;
        }
        let mut json = serde_json::to_vec(&entries).expect("a JSON map serialises");
        while (8 + json.len()) % 8 != 0 {
            json.push(b' ');
        }
        let mut header = (json.len() as u64).to_le_bytes().to_vec();
        header.extend_from_slice(&json);
        header
    }

    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let bytes = std::fs::read(path).map_err(|e| Error::BadCheckpoint(format!("{}: {e}", path.display())))?;
        Self::parse(&bytes).map_err(|e| Error::BadCheckpoint(format!("{}: {e}", path.display())))
    }

    /// Parses a whole safetensors file; every malformation is an error. Bf16 tensors are widened to f32.
    pub fn parse(bytes: &[u8]) -> Result<Self, Error> {
        let header = Header::parse(bytes)?;
        let data = &bytes[header.data_start..];
        if let Some(sums) = header.checksums()? {
            for entry in &header.entries {
                entry.verify(&sums, &data[entry.begin..entry.end])?;
            }
        }
        let tensors = header
            .entries
            .into_iter()
            .map(|entry| {
                let values = entry.decode(&data[entry.begin..entry.end]);
                (entry.name, Tensor::from_vec(&entry.shape, values))
            })
            .collect();
        Ok(Checkpoint { tensors, metadata: header.metadata })
    }
}

/// How a tensor's elements are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    F32,
    /// bfloat16: the top half of an f32 (8 exponent bits, 7 mantissa bits), rounded to nearest even.
    Bf16,
}

impl Dtype {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::Bf16 => 2,
        }
    }

    /// The safetensors name.
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "F32",
            Dtype::Bf16 => "BF16",
        }
    }

    /// Appends the little-endian bytes of `values` stored in this type.
    fn encode(self, values: &[f32], out: &mut Vec<u8>) {
        match self {
            Dtype::F32 => out.extend(values.iter().flat_map(|x| x.to_le_bytes())),
            Dtype::Bf16 => out.extend(values.iter().flat_map(|&x| to_bf16(x).to_le_bytes())),
        }
    }
}

/// Rounds an f32 to the nearest bfloat16 (ties to even); NaN stays NaN.
pub fn to_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    if x.is_nan() {
        return ((bits >> 16) | 0x40) as u16;
    }
    let rounding = 0x7FFF + ((bits >> 16) & 1);
    (bits.wrapping_add(rounding) >> 16) as u16
}

/// The f32 a bfloat16 stands for (exact).
pub fn from_bf16(bits: u16) -> f32 {
    f32::from_bits(u32::from(bits) << 16)
}

/// A file's checked header: its metadata and its tensors in data order, which tile the data part exactly.
#[derive(Clone, Debug)]
pub struct Header {
    pub metadata: BTreeMap<String, String>,
    pub entries: Vec<Entry>,
    /// Where the data part starts in the file (its offsets count from here).
    pub data_start: usize,
}

/// One tensor of a header.
#[derive(Clone, Debug)]
pub struct Entry {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    /// Byte span within the data part.
    pub begin: usize,
    pub end: usize,
}

impl Header {
    /// Reads and checks the header of the file `bytes` (the whole file: the data part must hold exactly
    /// the bytes the tensors need); reads none of the tensor data.
    pub fn parse(bytes: &[u8]) -> Result<Self, Error> {
        let fail = |msg: String| Error::BadCheckpoint(msg);
        let prefix: [u8; 8] = bytes
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| fail(format!("file of {} bytes is shorter than the 8-byte header length", bytes.len())))?;
        let header_len = u64::from_le_bytes(prefix);
        if header_len > MAX_HEADER_BYTES || header_len > (bytes.len() - 8) as u64 {
            return Err(fail(format!("header length {header_len} runs past the end of the {}-byte file", bytes.len())));
        }
        let (header, data) = bytes[8..].split_at(header_len as usize);
        let entries: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(header).map_err(|e| fail(format!("header is not a JSON object: {e}")))?;
        let mut metadata: BTreeMap<String, String> = BTreeMap::new();
        let mut spans = Vec::new();
        for (name, entry) in entries {
            if name == "__metadata__" {
                metadata = serde_json::from_value(entry)
                    .map_err(|e| fail(format!("__metadata__ is not a map of strings: {e}")))?;
            } else {
                spans.push(tensor_entry(name, &entry)?);
            }
        }
        spans.sort_by_key(|entry| (entry.begin, entry.end));
        let mut covered = 0;
        for Entry { begin, end, name, .. } in &spans {
            if *begin != covered {
                return Err(fail(format!("tensor {name} starts at byte {begin}, expected {covered} (gap or overlap)")));
            }
            covered = *end;
        }
        if covered != data.len() {
            return Err(fail(format!(
                "the tensors need {covered} bytes of data but the file holds {} (truncated or padded)",
                data.len()
            )));
        }
        Ok(Header { metadata, entries: spans, data_start: 8 + header_len as usize })
    }

    /// The stored checksum of each tensor, if the file has them (files written before they existed do not).
    pub fn checksums(&self) -> Result<Option<BTreeMap<String, String>>, Error> {
        let Some(sums) = self.metadata.get(CHECKSUMS_KEY) else { return Ok(None) };
        let sums = serde_json::from_str(sums)
            .map_err(|e| Error::BadCheckpoint(format!("metadata {CHECKSUMS_KEY} is not a map of strings: {e}")))?;
        Ok(Some(sums))
    }
}

impl Entry {
    /// Checks this tensor's bytes against its entry in `sums`.
    pub fn verify(&self, sums: &BTreeMap<String, String>, bytes: &[u8]) -> Result<(), Error> {
        let mut hash = Fnv1a::default();
        hash.update(bytes);
        self.check_hash(sums, hash.value())
    }

    /// Compares `hash`, the FNV-1a 64 hash of this tensor's bytes (computed however the caller read
    /// them), with its entry in `sums`.
    pub fn check_hash(&self, sums: &BTreeMap<String, String>, hash: u64) -> Result<(), Error> {
        let name = &self.name;
        let stored = sums
            .get(name)
            .ok_or_else(|| Error::BadCheckpoint(format!("tensor {name}: no entry in metadata {CHECKSUMS_KEY}")))?;
        let actual = format!("{hash:016x}");
        if *stored != actual {
            return Err(Error::BadCheckpoint(format!(
                "tensor {name}: checksum mismatch (metadata says {stored}, its bytes hash to {actual}): the file is corrupt"
            )));
        }
        Ok(())
    }

    /// The tensor's values from its stored bytes, widened to f32.
    pub fn decode(&self, bytes: &[u8]) -> Vec<f32> {
        // Through kernels::memory, so a restored expert table lands on huge pages as a fresh one does.
        match self.dtype {
            Dtype::F32 => {
                let mut values = bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]));
                memory::vec_from_fn(bytes.len() / 4, || values.next().expect("span holds whole f32s"))
            }
            Dtype::Bf16 => {
                let mut values = bytes.chunks_exact(2).map(|b| from_bf16(u16::from_le_bytes([b[0], b[1]])));
                memory::vec_from_fn(bytes.len() / 2, || values.next().expect("span holds whole bf16s"))
            }
        }
    }
}

/// The FNV-1a 64 hash of a tensor's little-endian bytes stored as `dtype`, as [`Checkpoint::save_as`]
/// writes them.
fn tensor_checksum(tensor: &Tensor<f32>, dtype: Dtype) -> u64 {
    let mut hash = Fnv1a::default();
    let mut bytes = Vec::with_capacity(1 << 16);
    for chunk in tensor.data().chunks(1 << 14) {
        bytes.clear();
        dtype.encode(chunk, &mut bytes);
        hash.update(&bytes);
    }
    hash.value()
}

/// Shape, type and byte span of one header entry, checked against each other.
fn tensor_entry(name: String, entry: &serde_json::Value) -> Result<Entry, Error> {
    let fail = |what: &str| Error::BadCheckpoint(format!("tensor {name}: {what}"));
    let dtype = match entry.get("dtype").and_then(|d| d.as_str()).ok_or_else(|| fail("no dtype"))? {
        "F32" => Dtype::F32,
        "BF16" => Dtype::Bf16,
        other => return Err(fail(&format!("dtype {other} is neither F32 nor BF16"))),
    };
    let as_usizes = |key: &str| -> Result<Vec<usize>, Error> {
        let list = entry.get(key).and_then(|v| v.as_array()).ok_or_else(|| fail(&format!("no {key} list")))?;
        list.iter()
            .map(|v| v.as_u64().and_then(|n| usize::try_from(n).ok()).ok_or_else(|| fail(&format!("bad {key} entry"))))
            .collect()
    };
    let shape = as_usizes("shape")?;
    let offsets = as_usizes("data_offsets")?;
    let [begin, end] = offsets[..] else { return Err(fail("data_offsets must hold two numbers")) };
    let bytes =
        shape.iter().try_fold(dtype.size(), |acc, &d| acc.checked_mul(d)).ok_or_else(|| fail("shape overflows"))?;
    if end < begin || end - begin != bytes {
        return Err(fail(&format!("data_offsets [{begin}, {end}] do not hold shape {shape:?} of {}", dtype.name())));
    }
    Ok(Entry { name, dtype, shape, begin, end })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Checkpoint {
        let mut metadata = BTreeMap::new();
        metadata.insert("step".to_string(), "7".to_string());
        Checkpoint {
            tensors: vec![
                ("b".into(), Tensor::from_vec(&[2, 3], vec![1., -2., 3.5, f32::MIN_POSITIVE, 0., -0.])),
                ("a".into(), Tensor::from_vec(&[1], vec![42.])),
                ("scalar".into(), Tensor::scalar(0.25)),
            ],
            metadata,
        }
    }

    fn bytes_of(checkpoint: &Checkpoint) -> Vec<u8> {
        let dir = std::env::temp_dir().join(format!("peerlm-ckpt-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.safetensors");
        checkpoint.save(&path).unwrap();
        std::fs::read(&path).unwrap()
    }

    #[test]
    fn round_trip_is_exact_and_aligned() {
        let bytes = bytes_of(&sample());
        let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap());
        assert_eq!((8 + header_len) % 8, 0);
        let back = Checkpoint::parse(&bytes).unwrap();
        let mut metadata = back.metadata.clone();
        assert!(metadata.remove(CHECKSUMS_KEY).is_some(), "save adds the checksums");
        assert_eq!(metadata, sample().metadata);
        assert_eq!(back.tensors, sample().tensors); // data order is the written order
    }

    #[test]
    fn bf16_tensors_round_to_nearest_and_come_back_as_f32() {
        assert_eq!(from_bf16(to_bf16(1.0 + 1.0 / 256.0)), 1.0); // a tie rounds to even
        assert_eq!(from_bf16(to_bf16(1.0 + 3.0 / 256.0)), 1.0 + 4.0 / 256.0);
        assert!(from_bf16(to_bf16(f32::NAN)).is_nan());
        assert_eq!(from_bf16(to_bf16(f32::INFINITY)), f32::INFINITY);
        let dir = std::env::temp_dir().join(format!("peerlm-ckpt-bf16-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.safetensors");
        sample().save_as(&path, |name| if name == "b" { Dtype::Bf16 } else { Dtype::F32 }).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let header = Header::parse(&bytes).unwrap();
        let order: Vec<(&str, Dtype)> = header.entries.iter().map(|e| (e.name.as_str(), e.dtype)).collect();
        assert_eq!(order, [("a", Dtype::F32), ("scalar", Dtype::F32), ("b", Dtype::Bf16)]);
        let back = Checkpoint::parse(&bytes).unwrap();
        let b = &back.tensors.iter().find(|(name, _)| name == "b").unwrap().1;
        assert_eq!(b.data(), [1., -2., 3.5, f32::MIN_POSITIVE, 0., -0.]); // all exact in bf16
        let mut flipped = bytes.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0x80;
        assert!(Checkpoint::parse(&flipped).unwrap_err().to_string().starts_with("tensor b: checksum mismatch"));
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = bytes_of(&sample());
        for cut in 0..bytes.len() {
            assert!(Checkpoint::parse(&bytes[..cut]).is_err(), "a file cut at {cut} bytes was accepted");
        }
    }

    #[test]
    fn corrupt_headers_are_errors() {
        let bytes = bytes_of(&sample());
        let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let header = String::from_utf8(bytes[8..8 + header_len].to_vec()).unwrap();
        for (from, to) in
            [("F32", "F16"), ("F32", "BF16"), ("[2,3]", "[3,3]"), ("\"data_offsets\":[0,", "\"data_offsets\":[4,")]
        {
            let bad = header.replacen(from, to, 1);
            assert_ne!(bad, header, "{from} not in the header");
            let mut file = (bad.len() as u64).to_le_bytes().to_vec();
            file.extend_from_slice(bad.as_bytes());
            file.extend_from_slice(&bytes[8 + header_len..]);
            assert!(Checkpoint::parse(&file).is_err(), "accepted a header with {to}");
        }
        let mut flipped = bytes.clone();
        let last = flipped.len() - 1; // the sign bit of the last value of the last tensor in data order
        flipped[last] ^= 0x80;
        let error = Checkpoint::parse(&flipped).unwrap_err().to_string();
        assert!(error.starts_with("tensor scalar: checksum mismatch"), "{error}");
        let mut huge = bytes.clone();
        huge[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(Checkpoint::parse(&huge).is_err());
    }
}
