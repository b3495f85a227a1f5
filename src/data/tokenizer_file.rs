//! The tokenizer's file format, `tokenizer.bpe`: small, plain text, readable with `head`.
//!
//! ```text
//! peerlm-bpe v1
//! vocab 4096
//! merges 3839
//! 116 104
//! 32 116
//! ...
//! ```
//!
//! Line 1 is the format and version. Line 2 is the vocabulary size (256 byte tokens + merges + 1
//! end-of-text), line 3 the number of merges; then one merge per line, `left right` in decimal, merge `r`
//! (0-based) creating token `256 + r`. The end-of-text token is the last id, `vocab - 1`. Loading checks
//! every line: the header, that the counts agree, that each merge uses only ids defined before it and
//! appears once, and that nothing follows the last merge. The encoder itself lives in [`super::bpe`].
//!
//! A tokenizer's identity is the FNV-1a 64 hash of this text ([`hash`]): shard headers and checkpoints
//! record it, so that token ids are never read with a tokenizer other than the one that wrote them.

use std::path::Path;

use super::atomic_file;
use super::bpe::Tokenizer;
use super::fnv;
use super::fxhash::FxHashSet;
use crate::error::{Error, Result};

const MAGIC_LINE: &str = "peerlm-bpe v1";

/// The file's text for `tokenizer`.
pub fn to_text(tokenizer: &Tokenizer) -> String {
    let mut text = format!("{MAGIC_LINE}\nvocab {}\nmerges {}\n", tokenizer.vocab_size(), tokenizer.merges().len());
    for (left, right) in tokenizer.merges() {
        text.push_str(&format!("{left} {right}\n"));
    }
    text
}

/// The identity hash of `tokenizer`: FNV-1a 64 of its file's text, so two tokenizers share it exactly
/// when they have the same merges.
pub fn hash(tokenizer: &Tokenizer) -> u64 {
    fnv::hash(to_text(tokenizer).as_bytes())
}

/// What token ids must have been encoded with: a tokenizer's hash and vocabulary size, and the file it
/// came from (named in error messages).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenizerId {
    pub hash: u64,
    pub vocab_size: u32,
    pub source: String,
}

impl TokenizerId {
    /// The identity of `tokenizer`, read from the file `source`.
    pub fn of(tokenizer: &Tokenizer, source: impl Into<String>) -> Self {
        TokenizerId { hash: hash(tokenizer), vocab_size: tokenizer.vocab_size() as u32, source: source.into() }
    }
}

/// Write `tokenizer` to `path` (atomically: a temporary file renamed into place).
pub fn save(tokenizer: &Tokenizer, path: &Path) -> Result<()> {
    atomic_file::write(path, to_text(tokenizer).as_bytes())
}

/// Read and validate the tokenizer file at `path`.
pub fn load(path: &Path) -> Result<Tokenizer> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path.display(), e))?;
    parse(&bytes, &path.display().to_string())
}

/// Parse and validate a tokenizer file's bytes; `name` appears in errors. Never panics on any input.
pub fn parse(bytes: &[u8], name: &str) -> Result<Tokenizer> {
    let error = |line: usize, reason: String| Error::BadTokenizer { path: name.to_string(), line, reason };
    let text = std::str::from_utf8(bytes)
        .map_err(|e| error(0, format!("not UTF-8 text (byte offset {})", e.valid_up_to())))?;
    let body = text.strip_suffix('\n').ok_or_else(|| error(0, "file does not end with a newline".into()))?;
    let mut lines = body.split('\n').enumerate().map(|(i, line)| (i + 1, line));

    let (number, magic) = lines.next().unwrap_or((1, ""));
    if magic != MAGIC_LINE {
        return Err(error(number, format!("expected the header {MAGIC_LINE:?}, found {:?}", truncate(magic))));
    }
    let vocab = parse_field(lines.next(), "vocab", name)?;
    let merge_count = parse_field(lines.next(), "merges", name)?;
    if vocab != 256 + merge_count + 1 {
        return Err(error(2, format!("vocab {vocab} is not 256 bytes + {merge_count} merges + 1 end-of-text")));
    }
    if merge_count > super::bpe::MAX_VOCAB - super::bpe::MIN_VOCAB {
        return Err(error(
            3,
            format!("{merge_count} merges: at most {}", super::bpe::MAX_VOCAB - super::bpe::MIN_VOCAB),
        ));
    }

    let mut merges = Vec::with_capacity(merge_count);
    let mut seen = FxHashSet::default();
    for (number, line) in lines {
        if merges.len() == merge_count {
            return Err(error(number, format!("unexpected line after the {merge_count} merges")));
        }
        let rank = merges.len() as u64;
        let ids: Vec<&str> = line.split(' ').collect();
        let [left, right] = ids.as_slice() else {
            return Err(error(number, format!("expected two token ids \"left right\", found {:?}", truncate(line))));
        };
        let parse_id = |field: &str| -> Result<u32> {
            let id: u64 = parse_decimal(field)
                .ok_or_else(|| error(number, format!("{:?} is not a token id", truncate(field))))?;
            if id >= 256 + rank {
                return Err(error(number, format!("merge {rank} uses token {id}, which is not defined before it")));
            }
            Ok(id as u32)
        };
        let pair = (parse_id(left)?, parse_id(right)?);
        if !seen.insert(pair) {
            return Err(error(number, format!("merge {rank} ({line}) repeats an earlier merge")));
        }
        merges.push(pair);
    }
    if merges.len() != merge_count {
        return Err(error(3 + merges.len(), format!("file ends after {} of {merge_count} merges", merges.len())));
    }
    Tokenizer::from_merges(merges).map_err(|e| error(0, e.to_string()))
}

/// `key value` on the given line, with value a decimal number.
fn parse_field(line: Option<(usize, &str)>, key: &str, name: &str) -> Result<usize> {
    let (number, line) = line.ok_or_else(|| Error::BadTokenizer {
        path: name.to_string(),
        line: 0,
        reason: format!("file ends before the {key:?} line"),
    })?;
    line.strip_prefix(key)
        .and_then(|rest| rest.strip_prefix(' '))
        .and_then(parse_decimal)
        .filter(|&value| value <= u32::MAX as u64)
        .map(|value| value as usize)
        .ok_or_else(|| Error::BadTokenizer {
            path: name.to_string(),
            line: number,
            reason: format!("expected \"{key} <number>\", found {:?}", truncate(line)),
        })
}

/// A plain decimal number: digits only, no sign, no leading zero, at most 10 digits (so one number has
/// exactly one spelling and a file that loads saves back byte for byte).
fn parse_decimal(field: &str) -> Option<u64> {
    let leading_zero = field.len() > 1 && field.starts_with('0');
    if field.is_empty() || leading_zero || field.len() > 10 || !field.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    field.parse().ok()
}

/// The start of a long line, for an error message.
fn truncate(line: &str) -> String {
    line.chars().take(40).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_corruption() {
        let tokenizer = Tokenizer::from_merges(vec![(97, 98), (256, 99)]).unwrap();
        let text = to_text(&tokenizer);
        assert_eq!(text, "peerlm-bpe v1\nvocab 259\nmerges 2\n97 98\n256 99\n");
        assert_eq!(parse(text.as_bytes(), "t").unwrap(), tokenizer);
        let cases = [
            ("peerlm-bpe v2\nvocab 259\nmerges 2\n97 98\n256 99\n", "t:1:"),
            ("peerlm-bpe v1\nvocab 260\nmerges 2\n97 98\n256 99\n", "t:2:"),
            ("peerlm-bpe v1\nvocab 259\nmerges 2\n97 98\n257 99\n", "t:5:"),
            ("peerlm-bpe v1\nvocab 259\nmerges 2\n97 98\n", "t:4:"),
            ("peerlm-bpe v1\nvocab 259\nmerges 2\n97 98\n256 99\n1 2\n", "t:6:"),
            ("peerlm-bpe v1\nvocab 259\nmerges 2\n97 98\n256 -9\n", "t:5:"),
            ("peerlm-bpe v1\nvocab 259\nmerges 2\n97 98\n97 98\n", "t:5:"),
        ];
        for (bad, location) in cases {
            let message = parse(bad.as_bytes(), "t").unwrap_err().to_string();
            assert!(message.starts_with(location), "{bad:?} gave {message}");
        }
    }
}
