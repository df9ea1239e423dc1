//! A JSON skimmer: walks a document's structure without building anything, so a pass-through can
//! read the few fields it needs from an answer it forwards as it came.
//!
//! It checks what makes a document JSON (balanced objects and arrays, the separators between
//! members and elements, terminated strings without control characters, valid escapes, number and
//! literal syntax) except UTF-8, which a caller that forwards the bytes checks on the whole
//! document; anything it refuses goes to a real parser. Strings are crossed with `memchr`, so long
//! text costs about a byte per instruction.

use crate::escape::find_special;

/// A cursor over a JSON document. Every method returns `None` on anything unexpected.
#[derive(Debug, Clone)]
pub(crate) struct Skim<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Skim<'a> {
    pub(crate) fn new(b: &'a [u8]) -> Self {
        Skim { b, i: 0 }
    }

    /// A cursor at byte `at` of `b`, for a caller that knows where a skim of the bytes before it
    /// stood (they are a prefix of a document it skimmed before; [`Skim::object_from`]).
    pub(crate) fn resumed(b: &'a [u8], at: usize) -> Self {
        Skim {
            b,
            i: at.min(b.len()),
        }
    }

    fn ws(&mut self) {
        while let Some(c) = self.b.get(self.i) {
            if matches!(c, b' ' | b'\n' | b'\r' | b'\t') {
                self.i += 1;
            } else {
                break;
            }
        }
    }

    /// The next non-space byte, not consumed.
    pub(crate) fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.b.get(self.i).copied()
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        (self.peek()? == c).then(|| self.i += 1)
    }

    /// Whether only whitespace is left.
    pub(crate) fn at_end(&mut self) -> bool {
        self.peek().is_none()
    }

    /// A string: its raw bytes between the quotes and whether it has escapes.
    pub(crate) fn string(&mut self) -> Option<(&'a [u8], bool)> {
        self.eat(b'"')?;
        let start = self.i;
        let mut escaped = false;
        loop {
            let at = self.stop()?;
            if self.b[at] == b'"' {
                self.i = at + 1;
                return Some((&self.b[start..at], escaped));
            }
            if self.b[at] != b'\\' {
                // A raw control character.
                return None;
            }
            escaped = true;
            self.i = at
                + 1
                + match self.b.get(at + 1)? {
                    b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => 1,
                    b'u' if self
                        .b
                        .get(at + 2..at + 6)?
                        .iter()
                        .all(u8::is_ascii_hexdigit) =>
                    {
                        5
                    }
                    _ => return None,
                };
        }
    }

    /// The next quote, backslash or control character from the cursor on. Most strings (keys,
    /// ids) are short: eight bytes at a time ([`find_special`]) finds their end sooner than
    /// setting up `memchr`, which takes over past the first 64 bytes.
    fn stop(&self) -> Option<usize> {
        let head_end = (self.i + 64).min(self.b.len());
        if let Some(k) = find_special(self.b.get(self.i..head_end)?) {
            return Some(self.i + k);
        }
        let from = head_end;
        let at = from + memchr::memchr2(b'"', b'\\', self.b.get(from..)?)?;
        // A fold without an early exit vectorises; control characters are an error anyway.
        let control = self.b[from..at]
            .iter()
            .fold(false, |seen, c| seen | (*c < 0x20));
        if control {
            self.b[from..at]
                .iter()
                .position(|c| *c < 0x20)
                .map(|k| from + k)
        } else {
            Some(at)
        }
    }

    /// A string without escapes, as text.
    pub(crate) fn plain_str(&mut self) -> Option<&'a str> {
        match self.string()? {
            (s, false) => std::str::from_utf8(s).ok(),
            (_, true) => None,
        }
    }

    /// Skips a value and returns its bytes.
    pub(crate) fn span(&mut self) -> Option<&'a [u8]> {
        self.ws();
        let start = self.i;
        self.skip()?;
        self.b.get(start..self.i)
    }

    /// Consumes `null` if it is next.
    pub(crate) fn null(&mut self) -> bool {
        if self.peek() == Some(b'n') && self.b.get(self.i..self.i + 4) == Some(b"null") {
            self.i += 4;
            true
        } else {
            false
        }
    }

    /// A non-negative integer.
    pub(crate) fn u64(&mut self) -> Option<u64> {
        self.ws();
        let start = self.i;
        let mut v: u64 = 0;
        while let Some(c @ b'0'..=b'9') = self.b.get(self.i).copied() {
            v = v.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
            self.i += 1;
        }
        (self.i > start).then_some(v)
    }

    /// Any value.
    pub(crate) fn skip(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => self.string().map(|_| ()),
            b'{' => self.members(true, |s, _| s.skip()),
            b'[' => self.array(|s| s.skip()),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            b'-' | b'0'..=b'9' => self.number(),
            _ => None,
        }
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        (self.b.get(self.i..self.i + word.len())? == word).then(|| self.i += word.len())
    }

    fn digits(&mut self) -> Option<()> {
        let start = self.i;
        while self.b.get(self.i).is_some_and(u8::is_ascii_digit) {
            self.i += 1;
        }
        (self.i > start).then_some(())
    }

    /// `-? (0 | [1-9] digits?) (. digits)? ([eE] [+-]? digits)?`: no leading zeros.
    fn number(&mut self) -> Option<()> {
        if self.b.get(self.i) == Some(&b'-') {
            self.i += 1;
        }
        if self.b.get(self.i) == Some(&b'0') {
            self.i += 1;
            if self.b.get(self.i).is_some_and(u8::is_ascii_digit) {
                return None;
            }
        } else {
            self.digits()?;
        }
        if self.b.get(self.i) == Some(&b'.') {
            self.i += 1;
            self.digits()?;
        }
        if matches!(self.b.get(self.i), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.b.get(self.i), Some(b'+' | b'-')) {
                self.i += 1;
            }
            self.digits()?;
        }
        Some(())
    }

    /// An object: `member` is called with the cursor on each value and the member's key (raw
    /// bytes; a key with escapes is refused, so a caller never misses a key spelled with them)
    /// and must consume the value.
    pub(crate) fn object(
        &mut self,
        member: impl FnMut(&mut Self, &'a [u8]) -> Option<()>,
    ) -> Option<()> {
        self.members(false, member)
    }

    fn members(
        &mut self,
        escaped_keys: bool,
        member: impl FnMut(&mut Self, &'a [u8]) -> Option<()>,
    ) -> Option<()> {
        self.eat(b'{')?;
        if self.eat(b'}').is_some() {
            return Some(());
        }
        let key = self.key(escaped_keys)?;
        self.members_from(key, escaped_keys, member)
    }

    /// A member's key and the `:` after it.
    fn key(&mut self, escaped_keys: bool) -> Option<&'a [u8]> {
        let (key, escaped) = self.string()?;
        if escaped && !escaped_keys {
            return None;
        }
        self.eat(b':')?;
        Some(key)
    }

    /// The rest of an object, from the value of its member `key` on.
    fn members_from(
        &mut self,
        mut key: &'a [u8],
        escaped_keys: bool,
        mut member: impl FnMut(&mut Self, &'a [u8]) -> Option<()>,
    ) -> Option<()> {
        loop {
            member(self, key)?;
            match self.peek()? {
                b',' => {
                    self.i += 1;
                    key = self.key(escaped_keys)?;
                }
                b'}' => {
                    self.i += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// Resumes an object on the value of its member `key`, as [`Skim::object`] would be there
    /// had it read the bytes before the cursor: for a document that shares those bytes with one
    /// already skimmed (see [`Skim::resumed`]).
    pub(crate) fn object_from(
        &mut self,
        key: &'a [u8],
        member: impl FnMut(&mut Self, &'a [u8]) -> Option<()>,
    ) -> Option<()> {
        self.members_from(key, false, member)
    }

    /// Where the cursor is: a byte offset into the document.
    pub(crate) fn pos(&self) -> usize {
        self.i
    }

    /// An array: `element` is called with the cursor on each element and must consume it.
    pub(crate) fn array(&mut self, mut element: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        self.eat(b'[')?;
        if self.eat(b']').is_some() {
            return Some(());
        }
        loop {
            element(self)?;
            match self.peek()? {
                b',' => self.i += 1,
                b']' => {
                    self.i += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }
}

/// For property tests: a JSON string of up to `max` characters that are hard for a skim (quotes,
/// backslashes, a control character, a newline, non-ASCII), either escaped as JSON or put between
/// quotes raw, where those characters break the document.
#[cfg(test)]
pub(crate) fn json_text(max: usize) -> proptest::strategy::BoxedStrategy<String> {
    use proptest::prelude::*;
    let chars =
        proptest::string::string_regex(&format!("[a-z \"\\\\\u{1}\n\u{e9}\u{1f422}]{{0,{max}}}"))
            .expect("a valid pattern");
    (chars, any::<bool>())
        .prop_map(|(t, escape)| {
            if escape {
                serde_json::to_string(&t).unwrap_or_default()
            } else {
                format!("\"{t}\"")
            }
        })
        .boxed()
}

/// For property tests: any JSON value, four levels deep at most, strings and keys of any text.
#[cfg(test)]
pub(crate) fn json_value() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
    use proptest::prelude::*;
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".*".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map(".*", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn skims(doc: &str) -> bool {
        let mut s = Skim::new(doc.as_bytes());
        s.skip().is_some() && s.at_end()
    }

    #[test]
    fn accepts_what_json_accepts_here() {
        for doc in [
            r#"{}"#,
            r#"[]"#,
            r#" { "a" : [1, -2.5e3, true, false, null, "x\"y\\", {"b": {}}] , "c":"\u00e9" } "#,
            r#""just a string""#,
            r#"[0, -0.5, 1E+9, 2e-3, "\/\b\f\n\r\t\u0041"]"#,
        ] {
            assert!(skims(doc), "{doc}");
            assert!(serde_json::from_str::<serde_json::Value>(doc).is_ok());
        }
    }

    #[test]
    fn refuses_broken_structure() {
        for doc in [
            r#"{"a": 1"#,
            r#"{"a" 1}"#,
            r#"{"a": 1,}"#,
            r#"[1 2]"#,
            r#"{"a": "unterminated}"#,
            r#"{"a": "ends in a backslash\"#,
            r#"{a: 1}"#,
            r#"{"a": }"#,
            r#"{"a": 1}}"#,
            "",
            r#"{"a": tru}"#,
            r#"{"a": nulll}"#,
            r#"{"a": 1.}"#,
            r#"{"a": -}"#,
            r#"{"a": 1e}"#,
            r#"{"a": "bad \x escape"}"#,
            r#"{"a": "bad \u12 escape"}"#,
            "{\"a\": \"raw\ncontrol\"}",
        ] {
            assert!(!skims(doc), "{doc}");
        }
    }

    proptest::proptest! {
        /// Every JSON document skims, compact or pretty.
        #[test]
        fn skims_all_json(v in json_value()) {
            let compact = serde_json::to_string(&v).expect("json");
            let pretty = serde_json::to_string_pretty(&v).expect("json");
            for doc in [compact, pretty] {
                let mut s = Skim::new(doc.as_bytes());
                proptest::prop_assert!(s.skip().is_some() && s.at_end(), "{}", doc);
            }
        }

        /// A document damaged by one byte skims only if it is still JSON.
        #[test]
        fn skims_nothing_that_is_not_json(v in json_value(), at in proptest::prelude::any::<proptest::sample::Index>(), byte in proptest::prelude::any::<u8>()) {
            let mut doc = serde_json::to_vec(&v).expect("json");
            let i = at.index(doc.len());
            doc[i] = byte;
            let mut s = Skim::new(&doc);
            if s.skip().is_some() && s.at_end() && std::str::from_utf8(&doc).is_ok() {
                proptest::prop_assert!(
                    serde_json::from_slice::<serde::de::IgnoredAny>(&doc).is_ok(),
                    "skimmed but not JSON: {}", String::from_utf8_lossy(&doc)
                );
            }
        }
    }

    /// Strings of every length up to past the word-at-a-time head, with an escape, a control
    /// character or nothing at every place, end where they end.
    #[test]
    fn strings_end_at_their_quote_whatever_their_length() {
        for len in 0..150 {
            let plain = "x".repeat(len);
            let doc = format!("\"{plain}\"");
            let mut s = Skim::new(doc.as_bytes());
            assert_eq!(s.string(), Some((plain.as_bytes(), false)), "len {len}");
            assert!(s.at_end());
            let unterminated = format!("\"{plain}");
            assert_eq!(Skim::new(unterminated.as_bytes()).string(), None);
            for at in 0..len {
                let mut escaped = plain.clone().into_bytes();
                escaped.splice(at..at + 1, *b"\\n");
                let doc = [&b"\""[..], &escaped, b"\""].concat();
                let mut s = Skim::new(&doc);
                assert_eq!(s.string(), Some((&escaped[..], true)), "len {len} at {at}");
                let mut control = plain.clone().into_bytes();
                control[at] = b'\t';
                let doc = [&b"\""[..], &control, b"\""].concat();
                assert_eq!(Skim::new(&doc).string(), None, "control at {at} of {len}");
            }
        }
    }

    #[test]
    fn numbers_follow_the_json_grammar() {
        for ok in ["0", "-0", "10", "0.5", "-0e1", "1E+2", "123456789012"] {
            let mut s = Skim::new(ok.as_bytes());
            assert!(s.skip().is_some() && s.at_end(), "{ok}");
        }
        for bad in ["00", "-01", "0123", "-", "1.", ".5", "1e", "+1"] {
            let mut s = Skim::new(bad.as_bytes());
            assert!(!(s.skip().is_some() && s.at_end()), "{bad}");
        }
    }

    #[test]
    fn reads_fields_and_refuses_escaped_keys() {
        let mut s = Skim::new(br#"{"id":"c-1","n":42,"u":null,"t":"a\nb"}"#);
        let (mut id, mut n, mut u, mut t) = (None, None, false, None);
        s.object(|s, k| {
            match k {
                b"id" => id = Some(s.plain_str()?),
                b"n" => n = Some(s.u64()?),
                b"u" => u = s.null(),
                b"t" => t = Some(s.string()?),
                _ => s.skip()?,
            }
            Some(())
        })
        .expect("skims");
        assert_eq!((id, n, u), (Some("c-1"), Some(42), true));
        assert_eq!(t, Some((&br"a\nb"[..], true)));
        let mut s = Skim::new(br#"{"us\u0061ge":{}}"#);
        assert!(s.object(|s, _| s.skip()).is_none());
    }
}
