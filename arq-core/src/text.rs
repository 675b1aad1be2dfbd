//! Small text helpers for error messages.

/// Quotes `input` for an error message, cut to at most `max_chars` characters so that
/// attacker-sized input never ends up whole in a message or a log line.
pub(crate) fn quoted_excerpt(input: &str, max_chars: usize) -> String {
    let mut chars = input.chars();
    let head: String = chars.by_ref().take(max_chars).collect();
    if chars.next().is_some() {
        format!("{:?}… ({} bytes)", head, input.len())
    } else {
        format!("{head:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_input_is_quoted_whole() {
        assert_eq!(quoted_excerpt("abc", 10), "\"abc\"");
    }

    #[test]
    fn long_input_is_cut_on_a_char_boundary() {
        let s = "é".repeat(20);
        let q = quoted_excerpt(&s, 5);
        assert!(q.starts_with("\"ééééé\"…"));
        assert!(q.contains("40 bytes"));
    }
}
