//! AWS Signature Version 4 verification for the Bedrock dialect.
//!
//! The canonical request is rebuilt from what arrived on the wire: method, the raw path with every
//! segment URI-encoded a second time (so `%3A` is signed as `%253A`, as for every service except
//! S3), the sorted canonical query, the headers named in `SignedHeaders`, and the payload hash
//! (`x-amz-content-sha256` when present, else the SHA-256 of the body). The signature is then
//! recomputed with the secret registered for the access key id and compared.

use hmac::{Hmac, Mac};
use hyper::HeaderMap;
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use sha2::{Digest, Sha256};

use crate::format::parse_amz_date;

/// Everything but the RFC 3986 unreserved characters is encoded.
const SIGV4_SET: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Allowed clock skew between the signer and the mock.
const MAX_SKEW_SECS: i64 = 300;

/// The parsed `Authorization: AWS4-HMAC-SHA256 ...` header.
#[derive(Debug)]
pub(crate) struct SigV4Auth {
    pub access_key_id: String,
    date: String,
    region: String,
    service: String,
    signed_headers: String,
    signature: String,
}

/// Why a signature was refused; each maps to one Bedrock 403/400 exception.
#[derive(Debug)]
pub(crate) enum SigV4Error {
    /// `InvalidSignatureException` with this message.
    Invalid(String),
    /// `IncompleteSignatureException` with this message (malformed header).
    Incomplete(String),
}

/// Parses `AWS4-HMAC-SHA256 Credential=AKID/date/region/service/aws4_request, SignedHeaders=a;b, Signature=hex`.
pub(crate) fn parse_authorization(value: &str) -> Result<SigV4Auth, SigV4Error> {
    let rest = value
        .strip_prefix("AWS4-HMAC-SHA256")
        .ok_or_else(|| SigV4Error::Incomplete("Unsupported authorization type".to_owned()))?;
    let (mut credential, mut signed_headers, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let part = part.trim();
        if let Some(v) = part.strip_prefix("Credential=") {
            credential = Some(v);
        } else if let Some(v) = part.strip_prefix("SignedHeaders=") {
            signed_headers = Some(v);
        } else if let Some(v) = part.strip_prefix("Signature=") {
            signature = Some(v);
        }
    }
    let incomplete = |what: &str| {
        SigV4Error::Incomplete(format!(
            "Authorization header requires '{what}' parameter. Authorization={value}"
        ))
    };
    let credential = credential.ok_or_else(|| incomplete("Credential"))?;
    let signed_headers = signed_headers.ok_or_else(|| incomplete("SignedHeaders"))?;
    let signature = signature.ok_or_else(|| incomplete("Signature"))?;
    let scope: Vec<&str> = credential.split('/').collect();
    if scope.len() != 5 || scope[4] != "aws4_request" {
        return Err(SigV4Error::Incomplete(format!(
            "Credential should be scoped to a valid region. Credential={credential}"
        )));
    }
    Ok(SigV4Auth {
        access_key_id: scope[0].to_owned(),
        date: scope[1].to_owned(),
        region: scope[2].to_owned(),
        service: scope[3].to_owned(),
        signed_headers: signed_headers.to_owned(),
        signature: signature.to_owned(),
    })
}

/// The parts of the request the signature covers.
pub(crate) struct SignedRequest<'a> {
    pub method: &'a str,
    /// The path exactly as received (still percent-encoded once).
    pub raw_path: &'a str,
    pub raw_query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    /// The URI authority, used for `host` when no Host header came (HTTP/2).
    pub authority: Option<&'a str>,
    pub body: &'a [u8],
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    match <Hmac<Sha256> as Mac>::new_from_slice(key) {
        Ok(mut m) => {
            m.update(data);
            m.finalize().into_bytes().to_vec()
        }
        Err(_) => Vec::new(),
    }
}

fn canonical_uri(raw_path: &str) -> String {
    if raw_path.is_empty() {
        return "/".to_owned();
    }
    raw_path
        .split('/')
        .map(|seg| utf8_percent_encode(seg, SIGV4_SET).to_string())
        .collect::<Vec<_>>()
        .join("/")
}

fn canonical_query(raw_query: Option<&str>) -> String {
    let Some(q) = raw_query else {
        return String::new();
    };
    let mut pairs: Vec<(String, String)> = q
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let enc = |s: &str| {
                let decoded = percent_decode_str(s).decode_utf8_lossy();
                utf8_percent_encode(&decoded, SIGV4_SET).to_string()
            };
            (enc(k), enc(v))
        })
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

fn canonical_header_value(v: &str) -> String {
    v.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Builds the canonical request the signer must have built.
fn canonical_request(req: &SignedRequest<'_>, signed_headers: &str) -> String {
    let mut headers = String::new();
    for name in signed_headers.split(';') {
        let values: Vec<String> = req
            .headers
            .get_all(name)
            .iter()
            .map(|v| canonical_header_value(&String::from_utf8_lossy(v.as_bytes())))
            .collect();
        let value = if values.is_empty() && name == "host" {
            req.authority.unwrap_or_default().to_owned()
        } else {
            values.join(",")
        };
        headers.push_str(name);
        headers.push(':');
        headers.push_str(&value);
        headers.push('\n');
    }
    let payload_hash = req
        .headers
        .get("x-amz-content-sha256")
        .and_then(|v| v.to_str().ok())
        .map_or_else(|| sha256_hex(req.body), str::to_owned);
    format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        req.method,
        canonical_uri(req.raw_path),
        canonical_query(req.raw_query),
        headers,
        signed_headers,
        payload_hash
    )
}

/// Verifies the request's signature with `secret`. `now_unix` is the mock's clock.
pub(crate) fn verify(
    req: &SignedRequest<'_>,
    auth: &SigV4Auth,
    secret: &str,
    now_unix: i64,
) -> Result<(), SigV4Error> {
    if auth.service != "bedrock" {
        return Err(SigV4Error::Invalid(format!(
            "Credential should be scoped to correct service: 'bedrock'. Credential={}/{}/{}/{}/aws4_request",
            auth.access_key_id, auth.date, auth.region, auth.service
        )));
    }
    let signed: Vec<&str> = auth.signed_headers.split(';').collect();
    if !signed.contains(&"host") {
        return Err(SigV4Error::Invalid(
            "'Host' must be a 'SignedHeader' in the AWS Authorization.".to_owned(),
        ));
    }
    let amz_date = req
        .headers
        .get("x-amz-date")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            SigV4Error::Incomplete(
                "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header."
                    .to_owned(),
            )
        })?;
    let signed_at = parse_amz_date(amz_date)
        .ok_or_else(|| SigV4Error::Incomplete(format!("Invalid X-Amz-Date: {amz_date}")))?;
    if (now_unix - signed_at).abs() > MAX_SKEW_SECS {
        return Err(SigV4Error::Invalid(format!(
            "Signature expired: {amz_date} is now earlier than the allowed 5 min window."
        )));
    }
    if !amz_date.starts_with(&auth.date) {
        return Err(SigV4Error::Invalid(format!(
            "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: '{}' != '{}'",
            auth.date,
            amz_date.get(..8).unwrap_or(amz_date)
        )));
    }
    let canonical = canonical_request(req, &auth.signed_headers);
    let scope = format!(
        "{}/{}/{}/aws4_request",
        auth.date, auth.region, auth.service
    );
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        sha256_hex(canonical.as_bytes())
    );
    let k_date = hmac(format!("AWS4{secret}").as_bytes(), auth.date.as_bytes());
    let k_region = hmac(&k_date, auth.region.as_bytes());
    let k_service = hmac(&k_region, auth.service.as_bytes());
    let k_signing = hmac(&k_service, b"aws4_request");
    let expected = hex::encode(hmac(&k_signing, string_to_sign.as_bytes()));
    if expected != auth.signature.to_ascii_lowercase() {
        return Err(SigV4Error::Invalid(
            "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details."
                .to_owned(),
        ));
    }
    if let Some(claimed) = req
        .headers
        .get("x-amz-content-sha256")
        .and_then(|v| v.to_str().ok())
    {
        if claimed != "UNSIGNED-PAYLOAD" && claimed != sha256_hex(req.body) {
            return Err(SigV4Error::Invalid(
                "The provided 'x-amz-content-sha256' header does not match what was computed."
                    .to_owned(),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_are_encoded_a_second_time() {
        assert_eq!(
            canonical_uri("/model/anthropic.claude-3-5-haiku-20241022-v1%3A0/converse"),
            "/model/anthropic.claude-3-5-haiku-20241022-v1%253A0/converse"
        );
        assert_eq!(canonical_uri(""), "/");
    }

    #[test]
    fn query_is_sorted_and_encoded() {
        assert_eq!(canonical_query(Some("b=2&a=x%20y&a=1")), "a=1&a=x%20y&b=2");
        assert_eq!(canonical_query(None), "");
    }

    #[test]
    fn authorization_header_parses() {
        let a = parse_authorization(
            "AWS4-HMAC-SHA256 Credential=AKID/20250101/us-east-1/bedrock/aws4_request, SignedHeaders=host;x-amz-date, Signature=abc",
        )
        .expect("valid header");
        assert_eq!(a.access_key_id, "AKID");
        assert_eq!(a.region, "us-east-1");
        assert_eq!(a.signed_headers, "host;x-amz-date");
        assert!(parse_authorization("Bearer x").is_err());
    }
}
