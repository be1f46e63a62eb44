//! Go's `strconv.Quote` (the `%q` verb), so that messages read exactly as upstream's.

use std::fmt::Write as _;

/// Whether Go's `unicode.IsPrint` would call `c` printable, for the characters that
/// matter in messages: controls, separators other than the ASCII space, and the
/// invisible format characters are not. (Unassigned and private-use code points, which
/// Go also escapes, are kept as they are: that needs Unicode tables.)
fn is_print(c: char) -> bool {
    if c == ' ' {
        return true;
    }
    if c.is_control() || c.is_whitespace() {
        return false;
    }
    !matches!(c as u32,
        0x00AD
        | 0x0600..=0x0605
        | 0x061C
        | 0x06DD
        | 0x070F
        | 0x180E
        | 0x200B..=0x200F
        | 0x202A..=0x202E
        | 0x2060..=0x2064
        | 0x2066..=0x206F
        | 0xFEFF
        | 0xFFF9..=0xFFFB)
}

/// Quotes `s` as Go's `strconv.Quote`: double quotes, `\"` and `\\`, the short escapes
/// `\a \b \f \n \r \t \v`, `\xNN` for other ASCII controls, `\uNNNN`/`\UNNNNNNNN` for
/// other characters that are not printable; everything else (including non-ASCII
/// letters) verbatim.
pub fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if is_print(c) => out.push(c),
            c if (c as u32) <= 0xffff => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => {
                let _ = write!(out, "\\U{:08x}", c as u32);
            }
        }
    }
    out.push('"');
    out
}

/// Go's `%q` of a `[]string`: each element quoted, space-separated, in brackets
/// (`["a" "b"]`).
pub fn go_quote_list(items: &[String]) -> String {
    let parts: Vec<String> = items.iter().map(|s| go_quote(s)).collect();
    format!("[{}]", parts.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_escaped() {
        assert_eq!(go_quote(""), r#""""#);
        assert_eq!(go_quote("abc"), r#""abc""#);
        assert_eq!(go_quote(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(go_quote("a\nb\tc\r"), r#""a\nb\tc\r""#);
        assert_eq!(go_quote("\u{7}\u{8}\u{c}\u{b}"), r#""\a\b\f\v""#);
        assert_eq!(go_quote("\u{0}\u{1b}\u{7f}"), r#""\x00\x1b\x7f""#);
    }

    #[test]
    fn unicode_printable_kept_invisible_escaped() {
        assert_eq!(go_quote("héllo 世界"), "\"héllo 世界\"");
        assert_eq!(go_quote("a\u{a0}b"), r#""a\u00a0b""#);
        assert_eq!(go_quote("\u{85}"), r#""\u0085""#);
        assert_eq!(go_quote("\u{200b}\u{feff}"), r#""\u200b\ufeff""#);
        assert_eq!(go_quote("\u{2028}"), r#""\u2028""#);
        assert_eq!(go_quote("😀"), "\"😀\"");
    }

    #[test]
    fn lists() {
        assert_eq!(go_quote_list(&[]), "[]");
        assert_eq!(
            go_quote_list(&["a".into(), "b\"c".into()]),
            r#"["a" "b\"c"]"#
        );
    }
}
