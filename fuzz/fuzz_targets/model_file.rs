//! The inference loader on arbitrary files: `peerlm::infer::Model::open` maps the file, checks the
//! safetensors header, the metadata (format, config, tokenizer and its hash), the parameter count against
//! the stored values, every tensor's presence, shape and checksum. Whatever the bytes, it returns a model
//! or an error, never a panic, and never allocates what the file does not hold.
//!
//! Inputs are shaped as in the checkpoint target (the first two bytes choose where the header ends) so
//! that the fuzzer reaches the JSON; seed the corpus with a small exported model to reach the rest.
#![no_main]

#[path = "shared/safetensors_shape.rs"]
mod safetensors_shape;

use std::io::Write;

use libfuzzer_sys::fuzz_target;
use peerlm::infer::{Model, OpenOptions, Verify};

fn check(bytes: &[u8]) {
    let path = std::env::temp_dir().join(format!("peerlm-fuzz-model-{}.safetensors", std::process::id()));
    std::fs::File::create(&path).and_then(|mut f| f.write_all(bytes)).expect("the temporary file is writable");
    for verify in [Verify::Small, Verify::All] {
        if let Ok(mut model) = Model::open_with(&path, &OpenOptions { verify, ..OpenOptions::default() }) {
            // A model that opens can score text: every tensor it reads is in the file.
            model.score("a");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    check(data);
    if let Some(bytes) = safetensors_shape::shaped(data) {
        check(&bytes);
    }
});
