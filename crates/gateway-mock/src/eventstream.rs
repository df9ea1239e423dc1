//! AWS `application/vnd.amazon.eventstream` framing (Bedrock ConverseStream).
//!
//! Layout, big-endian: `total_len u32 | headers_len u32 | prelude_crc u32 | headers | payload |
//! message_crc u32`, where `prelude_crc` is the CRC32 (IEEE) of the first 8 bytes and
//! `message_crc` the CRC32 of every byte before it. Each header is `name_len u8 | name | 7 |
//! value_len u16 | value` (type 7 = string, the only type Bedrock sends).

/// Header value type tag for strings.
const STRING_TYPE: u8 = 7;

/// Encodes one eventstream frame with string headers and the given payload.
///
/// Names longer than 255 bytes and values longer than 65535 bytes are truncated (Bedrock never
/// sends such headers).
///
/// ```
/// let frame = gateway_mock::encode_event_frame(
///     &[(":message-type", "event"), (":event-type", "messageStop"), (":content-type", "application/json")],
///     br#"{"stopReason":"end_turn"}"#,
/// );
/// let total = u32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize;
/// assert_eq!(total, frame.len());
/// ```
pub fn encode_event_frame(headers: &[(&str, &str)], payload: &[u8]) -> Vec<u8> {
    let mut hbuf = Vec::with_capacity(headers.len() * 32);
    for (name, value) in headers {
        let name = name.as_bytes();
        let name = &name[..name.len().min(usize::from(u8::MAX))];
        let value = value.as_bytes();
        let value = &value[..value.len().min(usize::from(u16::MAX))];
        hbuf.push(u8::try_from(name.len()).unwrap_or(u8::MAX));
        hbuf.extend_from_slice(name);
        hbuf.push(STRING_TYPE);
        hbuf.extend_from_slice(&u16::try_from(value.len()).unwrap_or(u16::MAX).to_be_bytes());
        hbuf.extend_from_slice(value);
    }
    let total = 16 + hbuf.len() + payload.len();
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

/// A Bedrock `:message-type=event` frame with a JSON payload.
pub(crate) fn event(event_type: &str, payload: &str) -> Vec<u8> {
    encode_event_frame(
        &[
            (":event-type", event_type),
            (":content-type", "application/json"),
            (":message-type", "event"),
        ],
        payload.as_bytes(),
    )
}

/// A Bedrock `:message-type=exception` frame with a `{"message"}` payload.
pub(crate) fn exception(exception_type: &str, payload: &str) -> Vec<u8> {
    encode_event_frame(
        &[
            (":exception-type", exception_type),
            (":content-type", "application/json"),
            (":message-type", "exception"),
        ],
        payload.as_bytes(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_has_valid_prelude_and_message_crcs() {
        let f = encode_event_frame(&[(":event-type", "messageStart")], b"{}");
        let total = u32::from_be_bytes([f[0], f[1], f[2], f[3]]) as usize;
        let hlen = u32::from_be_bytes([f[4], f[5], f[6], f[7]]) as usize;
        assert_eq!(total, f.len(), "total_len covers the whole frame");
        assert_eq!(hlen, 1 + 11 + 1 + 2 + 12, "header block length");
        let prelude_crc = u32::from_be_bytes([f[8], f[9], f[10], f[11]]);
        assert_eq!(prelude_crc, crc32fast::hash(&f[..8]), "prelude crc");
        let msg_crc = u32::from_be_bytes([f[total - 4], f[total - 3], f[total - 2], f[total - 1]]);
        assert_eq!(msg_crc, crc32fast::hash(&f[..total - 4]), "message crc");
        assert_eq!(&f[12 + hlen..total - 4], b"{}", "payload");
    }
}
