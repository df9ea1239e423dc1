//! Scrubbing of anything that looks like a credential from free text (error messages, content).
//!
//! Records only carry key *names*, but upstream error bodies sometimes echo a key back
//! ("Incorrect API key provided: sk-proj-abc…"). Every string that reaches a log, a span or the
//! admin API goes through [`scrub`], which keeps the recognisable prefix and replaces the rest with
//! `***`: OpenAI/Anthropic style `sk-…`, AWS access key ids `AKIA…`/`ASIA…`, Google OAuth tokens
//! `ya29.…`, Google API keys `AIza…`, and `Bearer …` tokens.

use std::borrow::Cow;

struct Pattern {
    prefix: &'static str,
    case_insensitive: bool,
    min_tail: usize,
    tail: fn(u8) -> bool,
}

fn token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

fn dotted_token_char(b: u8) -> bool {
    token_char(b) || b == b'.'
}

fn upper_alnum(b: u8) -> bool {
    b.is_ascii_uppercase() || b.is_ascii_digit()
}

const PATTERNS: &[Pattern] = &[
    Pattern {
        prefix: "sk-",
        case_insensitive: false,
        min_tail: 8,
        tail: token_char,
    },
    Pattern {
        prefix: "AKIA",
        case_insensitive: false,
        min_tail: 12,
        tail: upper_alnum,
    },
    Pattern {
        prefix: "ASIA",
        case_insensitive: false,
        min_tail: 12,
        tail: upper_alnum,
    },
    Pattern {
        prefix: "ya29.",
        case_insensitive: false,
        min_tail: 8,
        tail: dotted_token_char,
    },
    Pattern {
        prefix: "AIza",
        case_insensitive: false,
        min_tail: 16,
        tail: token_char,
    },
    Pattern {
        prefix: "bearer ",
        case_insensitive: true,
        min_tail: 8,
        tail: dotted_token_char,
    },
];

fn matches_at(bytes: &[u8], i: usize) -> Option<(&'static Pattern, usize)> {
    if i > 0 && token_char(bytes[i - 1]) {
        return None;
    }
    for p in PATTERNS {
        let end = i + p.prefix.len();
        let Some(head) = bytes.get(i..end) else {
            continue;
        };
        let ok = if p.case_insensitive {
            head.eq_ignore_ascii_case(p.prefix.as_bytes())
        } else {
            head == p.prefix.as_bytes()
        };
        if !ok {
            continue;
        }
        let tail = bytes[end..].iter().take_while(|b| (p.tail)(**b)).count();
        if tail >= p.min_tail {
            return Some((p, end + tail));
        }
    }
    None
}

/// `s` with every credential-looking token replaced by its prefix and `***`.
///
/// ```
/// use gateway_telemetry::scrub::scrub;
/// assert_eq!(
///     scrub("Incorrect API key provided: sk-proj-abcdef123456. See docs"),
///     "Incorrect API key provided: sk-***. See docs"
/// );
/// assert_eq!(scrub("risk-averse tasks"), "risk-averse tasks");
/// ```
pub fn scrub(s: &str) -> Cow<'_, str> {
    let bytes = s.as_bytes();
    let mut out: Option<String> = None;
    let mut copied = 0;
    let mut i = 0;
    while i < bytes.len() {
        if let Some((p, end)) = matches_at(bytes, i) {
            let o = out.get_or_insert_with(|| String::with_capacity(s.len()));
            // Pattern prefixes and tails are ASCII, so these are char boundaries.
            o.push_str(&s[copied..i]);
            o.push_str(&s[i..i + p.prefix.len()]);
            o.push_str("***");
            copied = end;
            i = end;
        } else {
            i += 1;
        }
    }
    match out {
        Some(mut o) => {
            o.push_str(&s[copied..]);
            Cow::Owned(o)
        }
        None => Cow::Borrowed(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_credential_shape_is_scrubbed() {
        let cases = [
            (
                "key sk-ant-api03-AbCdEf_123456789 refused",
                "key sk-*** refused",
            ),
            ("sk-test-openai-1", "sk-***"),
            ("id AKIAIOSFODNN7EXAMPLE x", "id AKIA*** x"),
            ("tok=ya29.a0AfH6SMBx-y.z_123", "tok=ya29.***"),
            ("key=AIzaSyA-1234567890abcdefghij", "key=AIza***"),
            (
                "Authorization: Bearer abc.def-123456",
                "Authorization: Bearer ***",
            ),
            (
                "two: sk-aaaaaaaaaa and sk-bbbbbbbbbb",
                "two: sk-*** and sk-***",
            ),
            ("ünïcödé sk-aaaaaaaaaa ü", "ünïcödé sk-*** ü"),
        ];
        for (input, want) in cases {
            assert_eq!(scrub(input), want, "scrubbing {input:?}");
        }
    }

    #[test]
    fn ordinary_text_is_untouched() {
        for s in [
            "risk-free",
            "task-oriented sk-",
            "desk-12",
            "AKIA",
            "upstream server error 500: boom",
            "",
        ] {
            assert!(matches!(scrub(s), Cow::Borrowed(_)), "{s:?} changed");
        }
    }
}
