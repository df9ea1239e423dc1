//! Just enough of `multipart/form-data` (RFC 7578) to pass an upload on with one field
//! changed: OpenAI's audio transcriptions and translations carry their `model` as a form field
//! beside the file, and a gateway that resolves `provider/model` names must rewrite it without
//! touching the file's bytes.

use std::ops::Range;

use bytes::Bytes;

/// The boundary of a `multipart/form-data` content type (`None` for any other type).
pub fn boundary(content_type: &str) -> Option<&str> {
    let (kind, params) = content_type.split_once(';')?;
    if !kind.trim().eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    params.split(';').find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("boundary")
            .then(|| v.trim().trim_matches('"'))
            .filter(|b| !b.is_empty())
    })
}

/// Where the value of the form field `name` lies in `body` (the first such field).
pub fn field(body: &[u8], boundary: &str, name: &str) -> Option<Range<usize>> {
    let delimiter = format!("--{boundary}");
    let finder = memchr::memmem::Finder::new(delimiter.as_bytes());
    let wanted = format!("name=\"{name}\"");
    let mut at = finder.find(body)?;
    loop {
        let start = at + delimiter.len();
        // The closing delimiter (`--boundary--`) ends the body.
        if body.get(start..start + 2) == Some(b"--") {
            return None;
        }
        let next = start + finder.find(&body[start..])?;
        let part = &body[start..next];
        let head_end = memchr::memmem::find(part, b"\r\n\r\n")?;
        let head = &part[..head_end];
        let disposition = head
            .split(|b| *b == b'\n')
            .find(|l| l.to_ascii_lowercase().starts_with(b"content-disposition:"));
        if disposition.is_some_and(|d| memchr::memmem::find(d, wanted.as_bytes()).is_some()) {
            let value_start = start + head_end + 4;
            // The value ends before the CRLF that precedes the next delimiter.
            let value_end = next.saturating_sub(2).max(value_start);
            return Some(value_start..value_end);
        }
        at = next;
    }
}

/// `body` with the bytes of `range` replaced by `value`.
pub fn replace(body: &[u8], range: Range<usize>, value: &str) -> Bytes {
    let mut out = Vec::with_capacity(body.len() + value.len());
    out.extend_from_slice(&body[..range.start]);
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(&body[range.end..]);
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &[u8] = b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.mp3\"\r\nContent-Type: audio/mpeg\r\n\r\nID3\x00model\r\n--XyZ\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\noai/whisper-1\r\n--XyZ\r\nContent-Disposition: form-data; name=\"language\"\r\n\r\nen\r\n--XyZ--\r\n";

    #[test]
    fn a_field_is_found_and_replaced_without_touching_the_file() {
        assert_eq!(boundary("multipart/form-data; boundary=XyZ"), Some("XyZ"));
        assert_eq!(
            boundary("multipart/form-data; charset=utf-8; boundary=\"XyZ\""),
            Some("XyZ")
        );
        assert_eq!(boundary("application/json"), None);
        let r = field(BODY, "XyZ", "model").unwrap();
        assert_eq!(&BODY[r.clone()], b"oai/whisper-1");
        let out = replace(BODY, r, "whisper-1");
        let again = field(&out, "XyZ", "model").unwrap();
        assert_eq!(&out[again], b"whisper-1");
        assert!(out.starts_with(&BODY[..BODY.len() - 100]));
        assert_eq!(&out[field(&out, "XyZ", "language").unwrap()], b"en");
        assert_eq!(field(BODY, "XyZ", "prompt"), None);
    }
}
