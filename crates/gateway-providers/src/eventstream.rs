//! AWS `application/vnd.amazon.eventstream` framing, as Bedrock's ConverseStream sends it.
//!
//! A frame is, big-endian: `total_len u32 | headers_len u32 | prelude_crc u32 | headers | payload |
//! message_crc u32`. `prelude_crc` is the CRC32 (IEEE, as zlib computes it) of the first 8 bytes and
//! `message_crc` the CRC32 of every byte before it, so `total_len = 16 + headers_len + payload_len`.
//! Each header is `name_len u8 | name | type u8 | value`, with the value types of
//! [`HeaderValue`]. Bedrock only sends strings (type 7).
//!
//! [`FrameDecoder`] is incremental: feed it whatever a read returned, then take whole frames out;
//! a frame split across reads at any byte is reassembled. Source: the AWS eventstream
//! specification as implemented by `aws-smithy-eventstream` and botocore's `eventstream.py`.
//!
//! ```
//! use gateway_providers::eventstream::{encode_frame, FrameDecoder, HeaderValue};
//!
//! let bytes = encode_frame(
//!     &[(":event-type".to_owned(), HeaderValue::String("messageStop".to_owned()))],
//!     br#"{"stopReason":"end_turn"}"#,
//! );
//! let mut decoder = FrameDecoder::new();
//! decoder.push(&bytes[..5]);
//! assert!(decoder.next_frame()?.is_none(), "half a prelude is not a frame yet");
//! decoder.push(&bytes[5..]);
//! let frame = decoder.next_frame()?.expect("one whole frame");
//! assert_eq!(frame.header_str(":event-type"), Some("messageStop"));
//! # Ok::<(), gateway_core::ProviderError>(())
//! ```

use bytes::{Buf, Bytes, BytesMut};
use gateway_core::ProviderError;

/// Bytes of `total_len`, `headers_len` and `prelude_crc`.
const PRELUDE_LEN: usize = 12;
/// Prelude plus the trailing message CRC: the smallest possible frame.
const MIN_FRAME_LEN: usize = PRELUDE_LEN + 4;
/// Frames larger than this are refused rather than buffered (AWS caps messages at 16 MiB).
pub const MAX_FRAME_LEN: usize = 16 * 1024 * 1024;

/// A typed header value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderValue {
    /// Types 0 (true) and 1 (false): no value bytes.
    Bool(bool),
    /// Type 2: one signed byte.
    Byte(i8),
    /// Type 3.
    Int16(i16),
    /// Type 4.
    Int32(i32),
    /// Type 5.
    Int64(i64),
    /// Type 6: `u16` length, then the bytes.
    Bytes(Bytes),
    /// Type 7: `u16` length, then UTF-8.
    String(String),
    /// Type 8: milliseconds since the Unix epoch.
    Timestamp(i64),
    /// Type 9: 16 bytes.
    Uuid([u8; 16]),
}

impl HeaderValue {
    /// The string, if this is a string header.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            HeaderValue::String(s) => Some(s),
            _ => None,
        }
    }
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Headers in wire order.
    pub headers: Vec<(String, HeaderValue)>,
    /// The payload (JSON for Bedrock).
    pub payload: Bytes,
}

impl Frame {
    /// The value of a string header, e.g. `:event-type`.
    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.as_str())
    }
}

/// Encodes one frame. Names longer than 255 bytes and byte or string values longer than 65535 bytes
/// are truncated (they cannot be represented).
pub fn encode_frame(headers: &[(String, HeaderValue)], payload: &[u8]) -> Vec<u8> {
    let mut hbuf = Vec::with_capacity(headers.len() * 32);
    for (name, value) in headers {
        let name = &name.as_bytes()[..name.len().min(usize::from(u8::MAX))];
        hbuf.push(u8::try_from(name.len()).unwrap_or(u8::MAX));
        hbuf.extend_from_slice(name);
        match value {
            HeaderValue::Bool(true) => hbuf.push(0),
            HeaderValue::Bool(false) => hbuf.push(1),
            HeaderValue::Byte(b) => {
                hbuf.push(2);
                hbuf.extend_from_slice(&b.to_be_bytes());
            }
            HeaderValue::Int16(v) => {
                hbuf.push(3);
                hbuf.extend_from_slice(&v.to_be_bytes());
            }
            HeaderValue::Int32(v) => {
                hbuf.push(4);
                hbuf.extend_from_slice(&v.to_be_bytes());
            }
            HeaderValue::Int64(v) => {
                hbuf.push(5);
                hbuf.extend_from_slice(&v.to_be_bytes());
            }
            HeaderValue::Bytes(b) => {
                hbuf.push(6);
                push_short_bytes(&mut hbuf, b);
            }
            HeaderValue::String(s) => {
                hbuf.push(7);
                push_short_bytes(&mut hbuf, s.as_bytes());
            }
            HeaderValue::Timestamp(v) => {
                hbuf.push(8);
                hbuf.extend_from_slice(&v.to_be_bytes());
            }
            HeaderValue::Uuid(u) => {
                hbuf.push(9);
                hbuf.extend_from_slice(u);
            }
        }
    }
    let total = MIN_FRAME_LEN + hbuf.len() + payload.len();
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&u32::try_from(total).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(&u32::try_from(hbuf.len()).unwrap_or(u32::MAX).to_be_bytes());
    let prelude_crc = crc32fast::hash(&out[..8]);
    out.extend_from_slice(&prelude_crc.to_be_bytes());
    out.extend_from_slice(&hbuf);
    out.extend_from_slice(payload);
    let message_crc = crc32fast::hash(&out);
    out.extend_from_slice(&message_crc.to_be_bytes());
    out
}

fn push_short_bytes(out: &mut Vec<u8>, b: &[u8]) {
    let b = &b[..b.len().min(usize::from(u16::MAX))];
    out.extend_from_slice(&u16::try_from(b.len()).unwrap_or(u16::MAX).to_be_bytes());
    out.extend_from_slice(b);
}

/// Reassembles frames from arbitrary reads.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: BytesMut,
}

impl FrameDecoder {
    /// An empty decoder.
    pub fn new() -> Self {
        FrameDecoder::default()
    }

    /// Appends the bytes of one read.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Bytes buffered but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next whole frame, `Ok(None)` if more bytes are needed, or an error for a corrupt frame
    /// (bad CRC, impossible lengths, malformed headers). After an error the stream cannot be
    /// resynchronised and the caller should stop.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, ProviderError> {
        if self.buf.len() < PRELUDE_LEN {
            return Ok(None);
        }
        let total = be_u32(&self.buf[0..4]) as usize;
        let headers_len = be_u32(&self.buf[4..8]) as usize;
        let prelude_crc = be_u32(&self.buf[8..12]);
        if crc32fast::hash(&self.buf[..8]) != prelude_crc {
            return Err(protocol("eventstream prelude checksum mismatch"));
        }
        if !(MIN_FRAME_LEN..=MAX_FRAME_LEN).contains(&total) || headers_len > total - MIN_FRAME_LEN
        {
            return Err(protocol(format!(
                "eventstream frame lengths are invalid (total {total}, headers {headers_len})"
            )));
        }
        if self.buf.len() < total {
            return Ok(None);
        }
        let frame = self.buf.split_to(total).freeze();
        let message_crc = be_u32(&frame[total - 4..]);
        if crc32fast::hash(&frame[..total - 4]) != message_crc {
            return Err(protocol("eventstream message checksum mismatch"));
        }
        let headers = decode_headers(frame.slice(PRELUDE_LEN..PRELUDE_LEN + headers_len))?;
        let payload = frame.slice(PRELUDE_LEN + headers_len..total - 4);
        Ok(Some(Frame { headers, payload }))
    }
}

fn be_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_be_bytes(a)
}

fn protocol(msg: impl Into<String>) -> ProviderError {
    ProviderError::Protocol(msg.into())
}

fn decode_headers(mut b: Bytes) -> Result<Vec<(String, HeaderValue)>, ProviderError> {
    fn need(b: &Bytes, n: usize) -> Result<(), ProviderError> {
        if b.remaining() < n {
            Err(protocol("eventstream header block is truncated"))
        } else {
            Ok(())
        }
    }
    let mut out = Vec::new();
    while b.has_remaining() {
        let name_len = usize::from(b.get_u8());
        need(&b, name_len + 1)?;
        let name = String::from_utf8(b.split_to(name_len).to_vec())
            .map_err(|_| protocol("eventstream header name is not UTF-8"))?;
        let value = match b.get_u8() {
            0 => HeaderValue::Bool(true),
            1 => HeaderValue::Bool(false),
            2 => {
                need(&b, 1)?;
                HeaderValue::Byte(b.get_i8())
            }
            3 => {
                need(&b, 2)?;
                HeaderValue::Int16(b.get_i16())
            }
            4 => {
                need(&b, 4)?;
                HeaderValue::Int32(b.get_i32())
            }
            5 => {
                need(&b, 8)?;
                HeaderValue::Int64(b.get_i64())
            }
            t @ (6 | 7) => {
                need(&b, 2)?;
                let len = usize::from(b.get_u16());
                need(&b, len)?;
                let raw = b.split_to(len);
                if t == 6 {
                    HeaderValue::Bytes(raw)
                } else {
                    HeaderValue::String(
                        String::from_utf8(raw.to_vec())
                            .map_err(|_| protocol("eventstream string header is not UTF-8"))?,
                    )
                }
            }
            8 => {
                need(&b, 8)?;
                HeaderValue::Timestamp(b.get_i64())
            }
            9 => {
                need(&b, 16)?;
                let mut u = [0u8; 16];
                b.copy_to_slice(&mut u);
                HeaderValue::Uuid(u)
            }
            t => return Err(protocol(format!("eventstream header type {t} is unknown"))),
        };
        out.push((name, value));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_types() -> Vec<(String, HeaderValue)> {
        vec![
            ("t".into(), HeaderValue::Bool(true)),
            ("f".into(), HeaderValue::Bool(false)),
            ("byte".into(), HeaderValue::Byte(-3)),
            ("i16".into(), HeaderValue::Int16(-300)),
            ("i32".into(), HeaderValue::Int32(70_000)),
            ("i64".into(), HeaderValue::Int64(-5_000_000_000)),
            (
                "bytes".into(),
                HeaderValue::Bytes(Bytes::from_static(b"\x00\xff")),
            ),
            (
                ":event-type".into(),
                HeaderValue::String("contentBlockDelta".into()),
            ),
            ("ts".into(), HeaderValue::Timestamp(1_730_000_000_000)),
            ("uuid".into(), HeaderValue::Uuid([7; 16])),
        ]
    }

    #[test]
    fn round_trip_every_header_type() {
        let payload = br#"{"contentBlockIndex":0,"delta":{"text":"Hi"},"p":"abc"}"#;
        let bytes = encode_frame(&all_types(), payload);
        let mut d = FrameDecoder::new();
        d.push(&bytes);
        let frame = d.next_frame().unwrap().expect("a whole frame");
        assert_eq!(frame.headers, all_types(), "headers survive the round trip");
        assert_eq!(
            &frame.payload[..],
            payload,
            "payload survives the round trip"
        );
        assert_eq!(d.buffered(), 0, "nothing left over");
        assert!(d.next_frame().unwrap().is_none());
    }

    #[test]
    fn layout_matches_the_specification() {
        let f = encode_frame(
            &[(
                ":event-type".into(),
                HeaderValue::String("messageStart".into()),
            )],
            b"{}",
        );
        let total = be_u32(&f[0..4]) as usize;
        let hlen = be_u32(&f[4..8]) as usize;
        assert_eq!(total, f.len(), "total_len covers the whole frame");
        assert_eq!(
            hlen,
            1 + 11 + 1 + 2 + 12,
            "name_len, name, type, value_len, value"
        );
        assert_eq!(be_u32(&f[8..12]), crc32fast::hash(&f[..8]), "prelude crc");
        assert_eq!(
            be_u32(&f[total - 4..]),
            crc32fast::hash(&f[..total - 4]),
            "message crc"
        );
        assert_eq!(&f[12..13], &[11u8], "name length");
        assert_eq!(f[12 + 1 + 11], 7, "string type tag");
        assert_eq!(&f[12 + hlen..total - 4], b"{}", "payload");
    }

    #[test]
    fn frames_split_at_every_byte_boundary() {
        let mut stream = Vec::new();
        let frames: Vec<Vec<u8>> = (0..3)
            .map(|i| {
                encode_frame(
                    &[(":event-type".into(), HeaderValue::String(format!("e{i}")))],
                    format!("{{\"n\":{i}}}").as_bytes(),
                )
            })
            .collect();
        for f in &frames {
            stream.extend_from_slice(f);
        }
        for split in 0..=stream.len() {
            let mut d = FrameDecoder::new();
            let mut got = Vec::new();
            for part in [&stream[..split], &stream[split..]] {
                d.push(part);
                while let Some(f) = d.next_frame().unwrap() {
                    got.push(f.header_str(":event-type").unwrap_or_default().to_owned());
                }
            }
            assert_eq!(got, ["e0", "e1", "e2"], "split at byte {split}");
        }
        // One byte per read.
        let mut d = FrameDecoder::new();
        let mut n = 0;
        for b in &stream {
            d.push(std::slice::from_ref(b));
            while d.next_frame().unwrap().is_some() {
                n += 1;
            }
        }
        assert_eq!(n, 3, "byte-by-byte reads yield every frame");
    }

    #[test]
    fn corrupted_checksums_are_rejected() {
        let good = encode_frame(&all_types(), b"{}");
        // Flip a payload byte: the message CRC no longer matches.
        let mut bad = good.clone();
        let i = bad.len() - 5;
        bad[i] ^= 0x01;
        let mut d = FrameDecoder::new();
        d.push(&bad);
        let err = d.next_frame().unwrap_err();
        assert!(err.to_string().contains("message checksum"), "{err}");
        // Flip a length byte: the prelude CRC no longer matches.
        let mut bad = good.clone();
        bad[3] ^= 0x01;
        let mut d = FrameDecoder::new();
        d.push(&bad);
        let err = d.next_frame().unwrap_err();
        assert!(err.to_string().contains("prelude checksum"), "{err}");
        // Flip the stored message CRC itself.
        let mut bad = good;
        let last = bad.len() - 1;
        bad[last] ^= 0x80;
        let mut d = FrameDecoder::new();
        d.push(&bad);
        assert!(d.next_frame().is_err(), "a wrong trailing CRC is rejected");
    }

    #[test]
    fn impossible_lengths_are_rejected() {
        let mut prelude = Vec::new();
        prelude.extend_from_slice(&(u32::MAX).to_be_bytes());
        prelude.extend_from_slice(&0u32.to_be_bytes());
        let crc = crc32fast::hash(&prelude);
        prelude.extend_from_slice(&crc.to_be_bytes());
        let mut d = FrameDecoder::new();
        d.push(&prelude);
        let err = d.next_frame().unwrap_err();
        assert!(err.to_string().contains("lengths are invalid"), "{err}");
    }
}
