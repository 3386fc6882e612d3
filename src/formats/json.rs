//! JSON string literals: the one escaper, for the JSON log format, `doctor --json` and any
//! other JSON mtpx writes. Pure.
//!
//! Escapes `"` and `\`, `\n`, `\r`, `\t` by name, every other control character (C0, DEL, C1)
//! and U+2028/U+2029 (line separators to JavaScript) as `\uXXXX` UTF-16 units; everything else
//! is copied as is (the output is UTF-8).

use std::fmt::Write as _;

/// Appends `value`'s characters, escaped for the inside of a JSON string, to `out`.
pub fn escape_into(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() || c == '\u{2028}' || c == '\u{2029}' => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
}

/// Appends `value` as a JSON string literal (quotes included) to `out`.
pub fn string_into(out: &mut String, value: &str) {
    out.push('"');
    escape_into(out, value);
    out.push('"');
}

/// `value` as a JSON string literal (quotes included).
pub fn string(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    string_into(&mut out, value);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_quotes_backslashes_controls_and_separators() {
        assert_eq!(
            string("a\"b\\c\n\r\t\u{1}é"),
            "\"a\\\"b\\\\c\\n\\r\\t\\u0001é\""
        );
        assert_eq!(
            string("\u{7f}\u{85}\u{2028}\u{2029}"),
            "\"\\u007f\\u0085\\u2028\\u2029\""
        );
        assert_eq!(string(""), "\"\"");
        let mut out = String::from("x");
        escape_into(&mut out, "\"");
        assert_eq!(out, "x\\\"");
    }
}
