//! Reading C4's shard format: one JSON object per line with a `text` field, optionally gzip-compressed.
//!
//! A C4 shard (`en/c4-train.00000-of-01024.json.gz` on the Hugging Face hub) is a gzip stream of lines like
//! `{"text":"Beginners BBQ Class...","timestamp":"2019-04-25T12:57:54Z","url":"https://..."}`. Only `text`
//! matters here; other fields are ignored. Files are streamed line by line, so memory holds one line at a
//! time however large the file is. [`JsonLines`] reads one stream (any `BufRead`, which is what the fuzzer
//! drives); [`DocumentReader`] chains it over many files. The documents go on to [`super::bpe`].
//!
//! Other JSON-lines corpora keep their text under another key ([`JsonLines::with_field`]); a plain text
//! file (`*.txt`, `*.raw`, such as WikiText's `wiki.valid.raw` or a book) is one document, read whole.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;
use serde::Deserialize;

use crate::error::{Error, Result};

/// One C4 document: the `text` of one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    pub text: String,
}

/// The only field we read; serde skips the others (`timestamp`, `url`).
#[derive(Deserialize)]
struct Line {
    text: String,
}

/// The documents of one JSON-lines stream, in order. Each item is a document or the error of one line.
pub struct JsonLines<R> {
    reader: R,
    name: String,
    /// The key holding the text: `text` (C4's), unless set by [`JsonLines::with_field`].
    field: String,
    line_number: u64,
    skip_bad_lines: bool,
    skipped: u64,
    line: Vec<u8>,
    finished: bool,
}

/// Wrap raw bytes (plain or gzip) as a buffered reader; `gzip` selects the decoder.
pub fn open_stream<'a, R: Read + 'a>(raw: R, gzip: bool) -> Box<dyn BufRead + 'a> {
    if gzip {
        // Multi-member: a `.gz` file may be several gzip streams concatenated, which is still one file.
        Box::new(BufReader::with_capacity(1 << 16, MultiGzDecoder::new(raw)))
    } else {
        Box::new(BufReader::with_capacity(1 << 16, raw))
    }
}

impl<R: BufRead> JsonLines<R> {
    /// `name` appears in error messages (a file path, or e.g. `<memory>`). With `skip_bad_lines`, a bad
    /// line is counted (see [`JsonLines::skipped`]) instead of returned as an error.
    pub fn new(reader: R, name: impl Into<String>, skip_bad_lines: bool) -> Self {
        JsonLines {
            reader,
            name: name.into(),
            field: "text".into(),
            line_number: 0,
            skip_bad_lines,
            skipped: 0,
            line: Vec::new(),
            finished: false,
        }
    }

    /// Read the text from `field` instead of `text`.
    pub fn with_field(mut self, field: &str) -> Self {
        self.field = field.to_string();
        self
    }

    /// How many bad lines were skipped so far (always 0 without `skip_bad_lines`).
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    fn bad_line(&self, reason: String) -> Error {
        Error::BadLine { path: self.name.clone(), line: self.line_number, reason }
    }

    /// Parse the current line; `Ok(None)` for a blank line (e.g. a trailing newline at the end of a file).
    fn parse_line(&self) -> Result<Option<Document>> {
        let mut bytes = self.line.as_slice();
        if let Some(rest) = bytes.strip_suffix(b"\n") {
            bytes = rest.strip_suffix(b"\r").unwrap_or(rest);
        }
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        let text = std::str::from_utf8(bytes)
            .map_err(|e| self.bad_line(format!("invalid UTF-8 at byte offset {} of the line", e.valid_up_to())))?;
        let bad = |e: &dyn std::fmt::Display| {
            self.bad_line(format!("not a JSON object with a string {:?} field: {e}", self.field))
        };
        if self.field == "text" {
            let line: Line = serde_json::from_str(text).map_err(|e| bad(&e))?;
            return Ok(Some(Document { text: line.text }));
        }
        let mut object: serde_json::Map<String, serde_json::Value> = serde_json::from_str(text).map_err(|e| bad(&e))?;
        match object.remove(&self.field) {
            Some(serde_json::Value::String(text)) => Ok(Some(Document { text })),
            Some(_) => Err(bad(&"the field is not a string")),
            None => Err(bad(&"no such field")),
        }
    }
}

impl<R: BufRead> Iterator for JsonLines<R> {
    type Item = Result<Document>;

    fn next(&mut self) -> Option<Result<Document>> {
        while !self.finished {
            self.line.clear();
            self.line_number += 1;
            match self.reader.read_until(b'\n', &mut self.line) {
                Ok(0) => self.finished = true,
                Ok(_) => match self.parse_line() {
                    Ok(Some(document)) => return Some(Ok(document)),
                    Ok(None) => {}
                    Err(_) if self.skip_bad_lines => self.skipped += 1,
                    Err(error) => return Some(Err(error)),
                },
                Err(error) => {
                    // A read error (a truncated or corrupt gzip stream) ends this stream: nothing after it
                    // can be trusted. It is an error even in skip mode: the file is damaged, not one line,
                    // and counting the lost rest of the file as "1 bad line" would hide how much is gone.
                    self.finished = true;
                    return Some(Err(self.bad_line(format!(
                        "read error: {error} (the file is truncated or corrupt from here on; --skip-bad-lines \
                         skips malformed lines, not a damaged file)"
                    ))));
                }
            }
        }
        None
    }
}

/// Is this file one the reader takes when given its directory?
fn is_c4_file(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    name.ends_with(".json.gz") || name.ends_with(".jsonl.gz") || name.ends_with(".json") || name.ends_with(".jsonl")
}

/// Is this a plain text file, read as one document?
pub fn is_plain_text(path: &Path) -> bool {
    path.extension().is_some_and(|ext| ext == "txt" || ext == "raw")
}

/// The whole of a plain text file as one document; invalid UTF-8 is an error naming its byte offset.
fn read_plain_text(path: &Path) -> Result<Document> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path.display(), e))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        Error::Invalid(format!("{}: invalid UTF-8 at byte offset {}", path.display(), e.utf8_error().valid_up_to()))
    })?;
    Ok(Document { text })
}

/// Expand the inputs: a file stays itself; a directory becomes its C4 files (`*.json.gz`, `*.jsonl.gz`,
/// `*.json`, `*.jsonl`, not recursive) sorted by name, so that the order, and everything trained from it,
/// does not depend on the filesystem.
pub fn list_input_files(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for input in inputs {
        let metadata = std::fs::metadata(input).map_err(|e| Error::io(input.display(), e))?;
        if metadata.is_dir() {
            let entries = std::fs::read_dir(input).map_err(|e| Error::io(input.display(), e))?;
            let mut found = Vec::new();
            for entry in entries {
                let path = entry.map_err(|e| Error::io(input.display(), e))?.path();
                if path.is_file() && is_c4_file(&path) {
                    found.push(path);
                }
            }
            if found.is_empty() {
                return Err(Error::Invalid(format!(
                    "{}: directory has no *.json.gz, *.jsonl.gz, *.json or *.jsonl files",
                    input.display()
                )));
            }
            found.sort();
            files.extend(found);
        } else {
            files.push(input.clone());
        }
    }
    Ok(files)
}

/// The documents of many files, one after another; gzip is chosen by the `.gz` extension, and a `.txt` or
/// `.raw` file is one plain text document.
pub struct DocumentReader {
    files: Vec<PathBuf>,
    next_file: usize,
    current: Option<JsonLines<Box<dyn BufRead>>>,
    /// The document of a plain text file, until it is handed out.
    plain: Option<Document>,
    field: String,
    skip_bad_lines: bool,
    skipped_before_current: u64,
}

impl DocumentReader {
    /// Read `inputs` (files or directories, see [`list_input_files`]) in order.
    pub fn open(inputs: &[PathBuf], skip_bad_lines: bool) -> Result<Self> {
        let files = list_input_files(inputs)?;
        if files.is_empty() {
            return Err(Error::Invalid("no input files".into()));
        }
        Ok(DocumentReader {
            files,
            next_file: 0,
            current: None,
            plain: None,
            field: "text".into(),
            skip_bad_lines,
            skipped_before_current: 0,
        })
    }

    /// Read the text of JSON lines from `field` instead of `text`.
    pub fn with_field(mut self, field: &str) -> Self {
        self.field = field.to_string();
        self
    }

    /// The files this reader goes through, in order.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// Bad lines skipped so far over all files (only with `skip_bad_lines`).
    pub fn skipped_lines(&self) -> u64 {
        self.skipped_before_current + self.current.as_ref().map_or(0, |lines| lines.skipped())
    }

    fn open_next_file(&mut self) -> Result<()> {
        if let Some(done) = self.current.take() {
            self.skipped_before_current += done.skipped();
        }
        let path = &self.files[self.next_file];
        self.next_file += 1;
        if is_plain_text(path) {
            self.plain = Some(read_plain_text(path)?);
            return Ok(());
        }
        let file = File::open(path).map_err(|e| Error::io(path.display(), e))?;
        let gzip = path.extension().is_some_and(|ext| ext == "gz");
        let lines = JsonLines::new(open_stream(file, gzip), path.display().to_string(), self.skip_bad_lines);
        self.current = Some(lines.with_field(&self.field));
        Ok(())
    }
}

impl Iterator for DocumentReader {
    type Item = Result<Document>;

    fn next(&mut self) -> Option<Result<Document>> {
        loop {
            if let Some(document) = self.plain.take() {
                return Some(Ok(document));
            }
            if let Some(item) = self.current.as_mut().and_then(Iterator::next) {
                return Some(item);
            }
            if self.next_file == self.files.len() {
                if let Some(done) = self.current.take() {
                    self.skipped_before_current += done.skipped();
                }
                return None;
            }
            if let Err(error) = self.open_next_file() {
                return Some(Err(error));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(bytes: &[u8], skip: bool) -> (Vec<Result<Document>>, u64) {
        let mut lines = JsonLines::new(bytes, "<memory>", skip);
        let items: Vec<_> = lines.by_ref().collect();
        (items, lines.skipped())
    }

    #[test]
    fn reads_text_and_ignores_other_fields() {
        let input = b"{\"text\":\"a\\nb\",\"url\":\"x\"}\r\n\n{\"timestamp\":1,\"text\":\"\xc3\xa9\"}";
        let (items, skipped) = read_all(input, false);
        let texts: Vec<String> = items.into_iter().map(|d| d.unwrap().text).collect();
        assert_eq!(texts, vec!["a\nb".to_string(), "é".to_string()]);
        assert_eq!(skipped, 0);
    }

    #[test]
    fn bad_lines_name_the_line_or_are_counted() {
        let input = b"{\"text\":\"ok\"}\n{\"txt\":\"no\"}\n{\"text\":\"\xff\"}\nnot json\n{\"text\":\"ok\"}\n";
        let (items, _) = read_all(input, false);
        let error = items[1].as_ref().unwrap_err().to_string();
        assert!(error.starts_with("<memory>:2:"), "{error}");
        let (items, skipped) = read_all(input, true);
        assert_eq!(items.len(), 2);
        assert_eq!(skipped, 3);
    }
}
