//! The tokenizer-file loader on arbitrary bytes; whatever it accepts must save back to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use peerlm::data::tokenizer_file;

fuzz_target!(|data: &[u8]| {
    if let Ok(tokenizer) = tokenizer_file::parse(data, "<fuzz>") {
        assert_eq!(tokenizer_file::to_text(&tokenizer).as_bytes(), data);
    }
});
