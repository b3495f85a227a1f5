//! The C4 reader on arbitrary bytes, read as plain JSON lines and as a gzip stream, strict and skipping.
#![no_main]

use libfuzzer_sys::fuzz_target;
use peerlm::data::c4::{open_stream, JsonLines};

fuzz_target!(|data: &[u8]| {
    for gzip in [false, true] {
        for skip_bad_lines in [false, true] {
            let lines = JsonLines::new(open_stream(data, gzip), "<fuzz>", skip_bad_lines);
            for document in lines.take(100_000) {
                // Skip mode skips malformed lines; only a damaged stream (a read error) is still an error.
                if let (true, Err(error)) = (skip_bad_lines, &document) {
                    assert!(error.to_string().contains("read error"), "skip mode returned a line error: {error}");
                }
            }
        }
    }
});
