//! Turning Cloud Map strings into DNS labels.
//!
//! Instance ids, attribute keys and attribute values may hold characters a label cannot (`.`, `/`,
//! `:`, `@`, spaces) or be longer than 63 bytes. Such a string is mapped, stably, to
//! `<sanitised prefix>-<hash>`: every byte outside `[A-Za-z0-9_-]` becomes `-`, the result is cut to
//! 50 bytes, and `-` plus 8 hex digits of the string's FNV-1a hash are appended, so two different
//! strings cannot share a label by sanitising alike. Strings that are valid labels are used as
//! they are. Labels are compared ignoring ASCII case. `_cloudmap` TXT shows every mapping in use.

use std::borrow::Cow;

fn is_label_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

/// Whether `s` can stand as a DNS label as it is.
pub fn is_plain_label(s: &str) -> bool {
    !s.is_empty() && s.len() <= 63 && s.bytes().all(is_label_byte)
}

fn fnv1a(s: &str) -> u32 {
    let mut h: u32 = 0x811c9dc5;
    for b in s.bytes() {
        h ^= b as u32;
        h = h.wrapping_mul(0x01000193);
    }
    h
}

/// The label `s` is answered under (lower-cased for matching; see the module docs).
pub fn to_label(s: &str) -> Cow<'_, str> {
    if is_plain_label(s) {
        return Cow::Borrowed(s);
    }
    let mut out: String =
        s.bytes().take(50).map(|b| if is_label_byte(b) { b as char } else { '-' }).collect();
    if out.is_empty() {
        out.push('x');
    }
    out.push_str(&format!("-{:08x}", fnv1a(s)));
    Cow::Owned(out)
}

/// Lower-cased label for matching.
pub fn match_label(s: &str) -> String {
    to_label(s).to_ascii_lowercase()
}

/// Whether `s` is answered under `label` (lower-case), as `match_label(s) == label` but without
/// building the label when `s` is one already.
pub fn is_label_of(s: &str, label: &str) -> bool {
    if is_plain_label(s) {
        s.len() == label.len() && s.bytes().zip(label.bytes()).all(|(a, b)| a.to_ascii_lowercase() == b)
    } else {
        match_label(s) == label
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_label_of_agrees_with_match_label() {
        let strings = ["web-1", "Web-1", "WEB-1", "10.0.0.1:8080", "v2", "V2", "", "a b", &"x".repeat(70)];
        for s in strings {
            for l in strings.iter().map(|t| match_label(t)).chain(["Web-1".into(), "web".into()]) {
                assert_eq!(is_label_of(s, &l), match_label(s) == l, "{s:?} under {l:?}");
            }
        }
    }

    #[test]
    fn plain_labels_pass_through() {
        assert_eq!(to_label("web-1"), "web-1");
        assert_eq!(to_label("i_0abc"), "i_0abc");
    }

    #[test]
    fn other_strings_map_stably_and_distinctly() {
        let a = to_label("10.0.0.1:8080");
        assert!(a.starts_with("10-0-0-1-8080-") && a.len() == 14 + 8, "{a}");
        assert_eq!(a, to_label("10.0.0.1:8080"), "stable");
        assert_eq!(to_label("10.0.0.7:8080"), "10-0-0-7-8080-b32571f3", "the README's example");
        assert_ne!(to_label("a.b"), to_label("a/b"), "distinct despite sanitising alike");
        let long = "x".repeat(64);
        let l = to_label(&long);
        assert!(l.len() <= 63 && is_plain_label(&l), "{l}");
        assert!(is_plain_label(&to_label("")));
        assert!(is_plain_label(&to_label("arn:aws:ec2:us-east-1:123:instance/i-1")));
    }
}
