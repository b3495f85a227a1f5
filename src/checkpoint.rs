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

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use crate::data::atomic_file::AtomicFile;
use crate::data::fnv::Fnv1a;
use crate::data::shard::checksum;
use crate::kernels::memory;
use crate::tensor::Tensor;

/// Named f32 tensors and string metadata.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Checkpoint {
    pub tensors: Vec<(String, Tensor<f32>)>,
    pub metadata: BTreeMap<String, String>,
}

/// What is wrong with a checkpoint file, and which one.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointError(pub String);

impl fmt::Display for CheckpointError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CheckpointError {}

/// Headers beyond this are refused before allocating (a corrupt length field could ask for exabytes).
const MAX_HEADER_BYTES: u64 = 100 << 20;

/// The metadata key of the per-tensor checksums.
pub const CHECKSUMS_KEY: &str = "tensor_checksums";

impl Checkpoint {
    /// Writes the checkpoint to `path` atomically: a temporary file beside it, fsync, rename.
    pub fn save(&self, path: &Path) -> Result<(), CheckpointError> {
        let err = |e: crate::data::DataError| CheckpointError(format!("saving checkpoint: {e}"));
        let mut file = AtomicFile::create(path).map_err(err)?;
        file.write_all(&self.header()).map_err(err)?;
        let mut bytes = Vec::with_capacity(1 << 16);
        for (_, tensor) in &self.tensors {
            for chunk in tensor.data().chunks(1 << 14) {
                bytes.clear();
                bytes.extend(chunk.iter().flat_map(|x| x.to_le_bytes()));
                file.write_all(&bytes).map_err(err)?;
            }
        }
        file.commit().map_err(err)
    }

    /// The length prefix and the padded JSON header, with the tensors' checksums added to the metadata.
    fn header(&self) -> Vec<u8> {
        let mut entries = serde_json::Map::new();
        let sums: BTreeMap<&str, String> = self
            .tensors
            .iter()
            .map(|(name, tensor)| (name.as_str(), format!("{:016x}", tensor_checksum(tensor))))
            .collect();
        let mut metadata = self.metadata.clone();
        metadata.insert(CHECKSUMS_KEY.into(), serde_json::to_string(&sums).expect("strings serialise"));
        entries.insert("__metadata__".into(), serde_json::to_value(&metadata).expect("strings serialise"));
        let mut offset = 0usize;
        for (name, tensor) in &self.tensors {
            let end = offset + 4 * tensor.numel();
            let entry = serde_json::json!({ "dtype": "F32", "shape": tensor.shape(), "data_offsets": [offset, end] });
            entries.insert(name.clone(), entry);
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
    pub fn load(path: &Path) -> Result<Self, CheckpointError> {
        let bytes = std::fs::read(path).map_err(|e| CheckpointError(format!("{}: {e}", path.display())))?;
        Self::parse(&bytes).map_err(|e| CheckpointError(format!("{}: {e}", path.display())))
    }

    /// Parses a whole safetensors file; every malformation is an error.
    pub fn parse(bytes: &[u8]) -> Result<Self, CheckpointError> {
        let fail = |msg: String| CheckpointError(msg);
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
                let (shape, begin, end) = tensor_entry(&name, &entry)?;
                spans.push((begin, end, name, shape));
            }
        }
        spans.sort();
        let mut covered = 0;
        for (begin, end, name, _) in &spans {
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
        if let Some(sums) = metadata.get(CHECKSUMS_KEY) {
            verify_checksums(sums, &spans, data)?;
        }
        let tensors = spans
            .into_iter()
            .map(|(begin, end, name, shape)| {
                let mut values = data[begin..end].chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]));
                // Through kernels::memory, so a restored expert table lands on huge pages as a fresh one does.
                let values = memory::vec_from_fn((end - begin) / 4, || values.next().expect("span holds whole f32s"));
                (name, Tensor::from_vec(&shape, values))
            })
            .collect();
        Ok(Checkpoint { tensors, metadata })
    }
}

/// The FNV-1a 64 hash of a tensor's little-endian bytes, as [`Checkpoint::save`] writes them.
fn tensor_checksum(tensor: &Tensor<f32>) -> u64 {
    let mut hash = Fnv1a::default();
    for x in tensor.data() {
        hash.update(&x.to_le_bytes());
    }
    hash.value()
}

/// Checks every tensor's bytes against the `tensor_checksums` metadata.
fn verify_checksums(
    sums: &str,
    spans: &[(usize, usize, String, Vec<usize>)],
    data: &[u8],
) -> Result<(), CheckpointError> {
    let sums: BTreeMap<String, String> = serde_json::from_str(sums)
        .map_err(|e| CheckpointError(format!("metadata {CHECKSUMS_KEY} is not a map of strings: {e}")))?;
    for (begin, end, name, _) in spans {
        let stored = sums
            .get(name)
            .ok_or_else(|| CheckpointError(format!("tensor {name}: no entry in metadata {CHECKSUMS_KEY}")))?;
        let actual = format!("{:016x}", checksum(&data[*begin..*end]));
        if *stored != actual {
            return Err(CheckpointError(format!(
                "tensor {name}: checksum mismatch (metadata says {stored}, its bytes hash to {actual}): the file is corrupt"
            )));
        }
    }
    Ok(())
}

/// Shape and byte span of one header entry, checked against each other.
fn tensor_entry(name: &str, entry: &serde_json::Value) -> Result<(Vec<usize>, usize, usize), CheckpointError> {
    let fail = |what: &str| CheckpointError(format!("tensor {name}: {what}"));
    let dtype = entry.get("dtype").and_then(|d| d.as_str()).ok_or_else(|| fail("no dtype"))?;
    if dtype != "F32" {
        return Err(fail(&format!("dtype {dtype} is not F32")));
    }
    let as_usizes = |key: &str| -> Result<Vec<usize>, CheckpointError> {
        let list = entry.get(key).and_then(|v| v.as_array()).ok_or_else(|| fail(&format!("no {key} list")))?;
        list.iter()
            .map(|v| v.as_u64().and_then(|n| usize::try_from(n).ok()).ok_or_else(|| fail(&format!("bad {key} entry"))))
            .collect()
    };
    let shape = as_usizes("shape")?;
    let offsets = as_usizes("data_offsets")?;
    let [begin, end] = offsets[..] else { return Err(fail("data_offsets must hold two numbers")) };
    let bytes = shape.iter().try_fold(4usize, |acc, &d| acc.checked_mul(d)).ok_or_else(|| fail("shape overflows"))?;
    if end < begin || end - begin != bytes {
        return Err(fail(&format!("data_offsets [{begin}, {end}] do not hold shape {shape:?} of f32")));
    }
    Ok((shape, begin, end))
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
        for (from, to) in [("F32", "F16"), ("[2,3]", "[3,3]"), ("\"data_offsets\":[0,", "\"data_offsets\":[4,")] {
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
        let error = Checkpoint::parse(&flipped).unwrap_err().0;
        assert!(error.starts_with("tensor scalar: checksum mismatch"), "{error}");
        let mut huge = bytes.clone();
        huge[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(Checkpoint::parse(&huge).is_err());
    }
}
