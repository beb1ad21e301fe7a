//! What error messages repeat of a client's input: a bounded prefix, so an error costs no
//! more than its message whatever the client sent (a 1 MB `model` once got a 1 MB error).

use std::borrow::Cow;

/// Most characters of a client's own input that an error message repeats.
const ECHOED_CHARS: usize = 128;

/// `input` as an error message may repeat it: at most `ECHOED_CHARS` characters, so an
/// error costs no more than its message whatever the client sent.
pub fn clip(input: &str) -> Cow<'_, str> {
    clip_to(input, ECHOED_CHARS)
}

/// `text` cut after `chars` characters, saying how long it was.
pub fn clip_to(text: &str, chars: usize) -> Cow<'_, str> {
    match text.char_indices().nth(chars) {
        None => Cow::Borrowed(text),
        Some((end, _)) => Cow::Owned(format!("{}... ({} bytes in all)", &text[..end], text.len())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echoed_input_is_clipped() {
        assert_eq!(clip("short"), "short");
        let long = "é".repeat(1_000_000);
        let clipped = clip(&long);
        assert!(clipped.len() < 400, "{}", clipped.len());
        assert!(clipped.ends_with("(2000000 bytes in all)"));
    }
}
