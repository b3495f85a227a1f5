//! The C4 reader on the real bundled sample and on malformed files.
#![cfg(feature = "c4")]

use std::io::Write;
use std::path::PathBuf;

use peerlm::data::c4::{list_input_files, DocumentReader};

fn sample(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("datasets/c4").join(name)
}

fn temp_file(name: &str, bytes: &[u8]) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("data_reader");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

#[test]
fn reads_the_real_c4_sample() {
    let reader = DocumentReader::open(&[sample("c4-train.00000-of-00001.json.gz")], false).unwrap();
    let documents: Vec<String> = reader.map(|d| d.unwrap().text).collect();
    assert_eq!(documents.len(), 1500);
    assert!(documents[0].starts_with("Beginners BBQ Class Taking Place in Missoula!"));
    assert!(documents[1].starts_with("Discussion in 'Mac OS X Lion (10.7)'"));
    let text_bytes: usize = documents.iter().map(String::len).sum();
    assert_eq!(text_bytes, 3_279_267);
}

#[test]
fn a_directory_reads_its_files_sorted_by_name() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("datasets/c4");
    let files = list_input_files(&[dir]).unwrap();
    let names: Vec<_> = files.iter().map(|f| f.file_name().unwrap().to_str().unwrap()).collect();
    assert_eq!(names, ["c4-train.00000-of-00001.json.gz", "c4-validation.00000-of-00001.json.gz"]);
    let count = DocumentReader::open(&files, false).unwrap().count();
    assert_eq!(count, 2000);
}

#[test]
fn a_malformed_line_is_an_error_naming_file_and_line() {
    let path = temp_file("bad.jsonl", b"{\"text\":\"one\"}\n{\"text\":\"two\"}\n{\"text\": 3}\n{\"text\":\"four\"}\n");
    let mut reader = DocumentReader::open(std::slice::from_ref(&path), false).unwrap();
    assert_eq!(reader.next().unwrap().unwrap().text, "one");
    assert_eq!(reader.next().unwrap().unwrap().text, "two");
    let message = reader.next().unwrap().unwrap_err().to_string();
    assert!(message.starts_with(&format!("{}:3:", path.display())), "{message}");
}

#[test]
fn skip_mode_counts_bad_lines_across_files() {
    let first = temp_file("skip1.jsonl", b"{\"text\":\"a\"}\nnope\n{\"url\":\"x\"}\n{\"text\":\"b\"}\n");
    let second = temp_file("skip2.json.gz", &gzip(b"{\"text\":\"\xff\"}\n{\"text\":\"c\"}\n"));
    let mut reader = DocumentReader::open(&[first, second], true).unwrap();
    let texts: Vec<String> = reader.by_ref().map(|d| d.unwrap().text).collect();
    assert_eq!(texts, ["a", "b", "c"]);
    assert_eq!(reader.skipped_lines(), 3);
}

#[test]
fn a_truncated_gzip_file_is_an_error_even_when_skipping_bad_lines() {
    let whole = gzip("{\"text\":\"hello\"}\n".repeat(2000).as_bytes());
    let path = temp_file("cut.json.gz", &whole[..whole.len() / 2]);
    for skip_bad_lines in [false, true] {
        let results: Vec<_> = DocumentReader::open(std::slice::from_ref(&path), skip_bad_lines).unwrap().collect();
        let message = results.last().unwrap().as_ref().unwrap_err().to_string();
        assert!(message.starts_with(&path.display().to_string()) && message.contains("read error"), "{message}");
    }
}
