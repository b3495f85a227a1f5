//! GPT-2's pre-split of text into "words", written by hand instead of with a regex engine.
//!
//! BPE merges never cross a word boundary, so the split decides which tokens can exist: a word is a
//! letter run, a digit run or a punctuation run with at most one leading space, an English contraction,
//! or whitespace. GPT-2 (Radford et al. 2019, `encoder.py`) writes this as the regex
//!
//! ```text
//! 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
//! ```
//!
//! [`pre_split`] follows it alternative by alternative. Letters are `char::is_alphabetic`, digits
//! `char::is_numeric` and space `char::is_whitespace` (Unicode properties close to, not identical with,
//! the regex classes `\p{L}`, `\p{N}`, `\s`; a char that is both alphabetic and numeric counts as a
//! letter). The words always concatenate back to the input, which is what makes decoding exact.

#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    Letter,
    Digit,
    Space,
    Other,
}

fn class_of(c: char) -> Class {
    if c.is_alphabetic() {
        Class::Letter
    } else if c.is_numeric() {
        Class::Digit
    } else if c.is_whitespace() {
        Class::Space
    } else {
        Class::Other
    }
}

/// The words of `text`, in order; their concatenation is `text`.
pub fn pre_split(text: &str) -> PreSplit<'_> {
    PreSplit { text, position: 0 }
}

/// Iterator over the words of a text (see the module comment for the rules).
pub struct PreSplit<'a> {
    text: &'a str,
    position: usize,
}

/// Byte length of the contraction (`'s 't 'm 'd 're 've 'll`) at the start of `rest`, if any.
fn contraction_len(rest: &str) -> Option<usize> {
    let bytes = rest.as_bytes();
    if bytes.first() != Some(&b'\'') {
        return None;
    }
    match bytes.get(1..3) {
        Some(b"re") | Some(b"ve") | Some(b"ll") => Some(3),
        _ => match bytes.get(1) {
            Some(b's') | Some(b't') | Some(b'm') | Some(b'd') => Some(2),
            _ => None,
        },
    }
}

/// Byte length of the run of chars of class `class` at the start of `rest`.
fn run_len(rest: &str, class: Class) -> usize {
    rest.char_indices().find(|&(_, c)| class_of(c) != class).map_or(rest.len(), |(i, _)| i)
}

impl<'a> PreSplit<'a> {
    /// Length of the word at the start of `rest` (non-empty).
    fn word_len(rest: &str) -> usize {
        if let Some(len) = contraction_len(rest) {
            return len;
        }
        let mut chars = rest.chars();
        let first = chars.next().expect("word_len on empty text");
        // ` ?\p{L}+`, ` ?\p{N}+`, ` ?[^\s\p{L}\p{N}]+`: one plain space may lead a non-space run.
        let (lead, class) = match (first, chars.next()) {
            (' ', Some(second)) if class_of(second) != Class::Space => (1, class_of(second)),
            _ => (0, class_of(first)),
        };
        if class != Class::Space {
            return lead + run_len(&rest[lead..], class);
        }
        // Whitespace: `\s+(?!\S)` takes the run but leaves its last char when a non-space follows, so that
        // the last space can lead the next word; a lone whitespace char before a word is `\s+` on its own.
        let run = run_len(rest, Class::Space);
        if run == rest.len() {
            return run;
        }
        let last_char_len = rest[..run].chars().next_back().map_or(0, char::len_utf8);
        if run > last_char_len {
            run - last_char_len
        } else {
            run
        }
    }
}

impl<'a> Iterator for PreSplit<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let rest = &self.text[self.position..];
        if rest.is_empty() {
            return None;
        }
        let len = Self::word_len(rest);
        self.position += len;
        Some(&rest[..len])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &str) -> Vec<&str> {
        pre_split(text).collect()
    }

    #[test]
    fn splits_like_gpt2() {
        assert_eq!(words("Hello world"), ["Hello", " world"]);
        assert_eq!(words("I'm don't they'll"), ["I", "'m", " don", "'t", " they", "'ll"]);
        assert_eq!(words("abc   def"), ["abc", "  ", " def"]);
        assert_eq!(words("abc\n\ndef"), ["abc", "\n", "\n", "def"]);
        assert_eq!(words("x  \n"), ["x", "  \n"]);
        assert_eq!(words("price: $42.50!"), ["price", ":", " $", "42", ".", "50", "!"]);
        assert_eq!(words(" 's"), [" '", "s"]);
        assert_eq!(words("naïve café 2019"), ["naïve", " café", " 2019"]);
        assert_eq!(words("\t\tword"), ["\t", "\t", "word"]);
        assert_eq!(words(""), Vec::<&str>::new());
    }

    #[test]
    fn words_concatenate_to_the_text() {
        for text in ["a 'b  ''re\n\n x", "日本語 テキスト", "  ", "'", "1 2  3\u{a0}x"] {
            assert_eq!(words(text).concat(), text);
        }
    }
}
