//! JSON string literals, written eight bytes at a time.
//!
//! `serde_json` checks every byte of a string against a table: a 1 KB prompt cost about 12 k
//! instructions (callgrind), the largest single part of encoding an upstream request. [`write_str`]
//! writes the same bytes as `serde_json` (tested against it on arbitrary strings) and passes over
//! runs that need no escaping a 64-bit word at a time.

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// The high bit of every zero byte of `w`. Bits above the lowest one may be false (a borrow
/// carries up), so only "any" and the lowest set bit are exact.
#[inline]
fn zero_bytes(w: u64) -> u64 {
    w.wrapping_sub(ONES) & !w & HIGHS
}

/// The high bit of every byte of `w` (a little-endian load of eight bytes) that is a control
/// character (below 0x20), `"` or `\`, with the same exactness as [`zero_bytes`]: the lowest set
/// bit marks the first such byte, `trailing_zeros() / 8` its index.
#[inline]
pub(crate) fn special_bytes(w: u64) -> u64 {
    // Bytes below 0x20: `x - 0x20` borrows into the high bit only where `x` had it clear.
    let control = w.wrapping_sub(ONES * 0x20) & !w & HIGHS;
    control | zero_bytes(w ^ (ONES * u64::from(b'"'))) | zero_bytes(w ^ (ONES * u64::from(b'\\')))
}

/// Whether any byte of `w` is a control character, `"` or `\`.
#[cfg(test)]
fn needs_escape(w: u64) -> bool {
    special_bytes(w) != 0
}

/// The index of the first control character, `"` or `\` in `b`, eight bytes at a time.
#[inline]
pub(crate) fn find_special(b: &[u8]) -> Option<usize> {
    let words = b.chunks_exact(8);
    let tail = words.remainder();
    for (n, word) in words.enumerate() {
        let mut w = [0u8; 8];
        w.copy_from_slice(word);
        let m = special_bytes(u64::from_le_bytes(w));
        if m != 0 {
            return Some(n * 8 + (m.trailing_zeros() / 8) as usize);
        }
    }
    let at = b.len() - tail.len();
    tail.iter()
        .position(|c| needs_escape_byte(*c))
        .map(|k| at + k)
}

#[inline]
fn needs_escape_byte(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

fn escape_byte(out: &mut Vec<u8>, b: u8) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    match b {
        b'"' => out.extend_from_slice(b"\\\""),
        b'\\' => out.extend_from_slice(b"\\\\"),
        b'\n' => out.extend_from_slice(b"\\n"),
        b'\r' => out.extend_from_slice(b"\\r"),
        b'\t' => out.extend_from_slice(b"\\t"),
        0x08 => out.extend_from_slice(b"\\b"),
        0x0c => out.extend_from_slice(b"\\f"),
        _ => out.extend_from_slice(&[
            b'\\',
            b'u',
            b'0',
            b'0',
            HEX[usize::from(b >> 4)],
            HEX[usize::from(b & 0xf)],
        ]),
    }
}

/// Appends `s` to `out` as a JSON string literal, quotes included, byte for byte as
/// `serde_json` writes it.
pub(crate) fn write_str(out: &mut Vec<u8>, s: &str) {
    let b = s.as_bytes();
    out.reserve(b.len() + 2);
    out.push(b'"');
    let mut run = 0;
    while let Some(k) = find_special(&b[run..]) {
        let at = run + k;
        out.extend_from_slice(&b[run..at]);
        escape_byte(out, b[at]);
        run = at + 1;
    }
    out.extend_from_slice(&b[run..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ours(s: &str) -> Vec<u8> {
        let mut out = Vec::new();
        write_str(&mut out, s);
        out
    }

    #[test]
    fn every_byte_that_needs_escaping_is_escaped_as_serde_json_does() {
        for c in (0u8..0x80).map(char::from) {
            for s in [
                c.to_string(),
                format!("abcdefg{c}"),
                format!("{c}abcdefgh"),
                format!("abc{c}defghijklmnop{c}{c}"),
            ] {
                assert_eq!(
                    ours(&s),
                    serde_json::to_vec(&s).expect("serialises"),
                    "{s:?}"
                );
            }
        }
        assert_eq!(ours(""), b"\"\"");
        assert_eq!(
            ours("żółw 🐢 \u{7f}\u{80}"),
            serde_json::to_vec("żółw 🐢 \u{7f}\u{80}").expect("serialises")
        );
    }

    #[test]
    fn words_without_special_bytes_pass_whole() {
        let word = |b: &[u8; 8]| u64::from_le_bytes(*b);
        assert!(!needs_escape(word(b"plain tx")));
        assert!(!needs_escape(word(b"~}| !#[]")));
        assert!(!needs_escape(word(&[
            0x7f, 0x80, 0xc3, 0xa9, 0xff, 0x20, 0x21, 0x5d
        ])));
        for special in [0u8, 0x01, 0x1f, b'"', b'\\', b'\n'] {
            for at in 0..8 {
                let mut w = *b"abcdefgh";
                w[at] = special;
                assert!(needs_escape(word(&w)), "{special:#x} at {at}");
            }
        }
    }

    proptest! {
        #[test]
        fn find_special_finds_the_first_special_byte(b in proptest::collection::vec(any::<u8>(), 0..40)) {
            prop_assert_eq!(find_special(&b), b.iter().position(|c| needs_escape_byte(*c)));
        }

        #[test]
        fn find_special_in_text(s in "[a-z \"\\\\\n]{0,40}") {
            let b = s.as_bytes();
            prop_assert_eq!(find_special(b), b.iter().position(|c| needs_escape_byte(*c)));
        }

        /// The lowest marked byte is the first special one.
        #[test]
        fn the_lowest_mark_is_the_first_special_byte(w in any::<[u8; 8]>()) {
            let first = w.iter().position(|b| needs_escape_byte(*b));
            let m = special_bytes(u64::from_le_bytes(w));
            prop_assert_eq!(first, (m != 0).then(|| (m.trailing_zeros() / 8) as usize));
        }

        #[test]
        fn writes_what_serde_json_writes(s in any::<String>()) {
            prop_assert_eq!(ours(&s), serde_json::to_vec(&s).expect("serialises"));
        }

        #[test]
        fn writes_what_serde_json_writes_for_text_with_escapes(
            s in "[a-z \"\\\\\n\t\u{0}-\u{1f}é]{0,64}"
        ) {
            prop_assert_eq!(ours(&s), serde_json::to_vec(&s).expect("serialises"));
        }
    }
}
