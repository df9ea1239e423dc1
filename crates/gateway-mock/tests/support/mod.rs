//! Test helpers: a raw hyper client, an SSE splitter, an eventstream decoder with CRC checks,
//! a SigV4 signer (aws-sigv4) and a service-account JWT maker.

#![allow(dead_code)]

use std::collections::HashMap;
use std::time::SystemTime;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::HeaderMap;
use hyper::Request;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A response, read to the end (or to the point where the connection failed).
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    /// Set when the body ended with an error (connection dropped mid-stream).
    pub body_error: Option<String>,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

pub async fn send(
    client: &HttpClient,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Resp {
    let mut b = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = b
        .body(Full::new(Bytes::copy_from_slice(body)))
        .expect("request builds");
    let resp = client.request(req).await.expect("request is answered");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let mut body = resp.into_body();
    let mut data = Vec::new();
    let mut body_error = None;
    loop {
        match body.frame().await {
            Some(Ok(f)) => {
                if let Ok(d) = f.into_data() {
                    data.extend_from_slice(&d);
                }
            }
            Some(Err(e)) => {
                body_error = Some(e.to_string());
                break;
            }
            None => break,
        }
    }
    Resp {
        status,
        headers,
        body: data,
        body_error,
    }
}

pub async fn post_json(
    client: &HttpClient,
    url: &str,
    headers: &[(&str, &str)],
    body: &Value,
) -> Resp {
    let mut h = vec![("content-type", "application/json")];
    h.extend_from_slice(headers);
    send(client, "POST", url, &h, body.to_string().as_bytes()).await
}

/// SSE events as (event name or "", data); accepts `\r\n` and joins multi-line data.
pub fn sse(text: &str) -> Vec<(String, String)> {
    let text = text.replace("\r\n", "\n");
    text.split("\n\n")
        .filter(|b| !b.trim().is_empty())
        .map(|block| {
            let mut event = String::new();
            let mut data: Vec<&str> = Vec::new();
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    event = v.trim().to_owned();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push(v.strip_prefix(' ').unwrap_or(v));
                }
            }
            (event, data.join("\n"))
        })
        .collect()
}

/// One decoded eventstream frame.
#[derive(Debug)]
pub struct Frame {
    pub headers: HashMap<String, String>,
    pub payload: Vec<u8>,
}

impl Frame {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.payload).expect("frame payload is JSON")
    }
}

/// Decodes eventstream frames, asserting both CRCs and the declared lengths.
pub fn frames(mut b: &[u8]) -> Vec<Frame> {
    let be32 = |s: &[u8]| u32::from_be_bytes([s[0], s[1], s[2], s[3]]);
    let mut out = Vec::new();
    while !b.is_empty() {
        assert!(b.len() >= 16, "truncated frame");
        let total = be32(&b[0..4]) as usize;
        let hlen = be32(&b[4..8]) as usize;
        assert!(total <= b.len(), "frame longer than the data");
        assert_eq!(be32(&b[8..12]), crc32fast::hash(&b[..8]), "prelude crc");
        assert_eq!(
            be32(&b[total - 4..total]),
            crc32fast::hash(&b[..total - 4]),
            "message crc"
        );
        let mut h = &b[12..12 + hlen];
        let mut headers = HashMap::new();
        while !h.is_empty() {
            let nlen = h[0] as usize;
            let name = String::from_utf8(h[1..1 + nlen].to_vec()).expect("utf8 name");
            assert_eq!(h[1 + nlen], 7, "string header type");
            let vlen = u16::from_be_bytes([h[2 + nlen], h[3 + nlen]]) as usize;
            let value =
                String::from_utf8(h[4 + nlen..4 + nlen + vlen].to_vec()).expect("utf8 value");
            headers.insert(name, value);
            h = &h[4 + nlen + vlen..];
        }
        out.push(Frame {
            headers,
            payload: b[12 + hlen..total - 4].to_vec(),
        });
        b = &b[total..];
    }
    out
}

/// Signs a Bedrock request with aws-sigv4 and returns the headers to send.
pub fn sigv4_headers(
    url: &str,
    body: &[u8],
    access_key_id: &str,
    secret: &str,
) -> Vec<(String, String)> {
    use aws_credential_types::Credentials;
    use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
    use aws_sigv4::sign::v4;

    let identity = Credentials::new(access_key_id, secret, None, None, "test").into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region("us-east-1")
        .name("bedrock")
        .time(SystemTime::now())
        .settings(SigningSettings::default())
        .build()
        .expect("signing params")
        .into();
    let headers = [("content-type", "application/json")];
    let req = SignableRequest::new(
        "POST",
        url,
        headers.iter().copied(),
        SignableBody::Bytes(body),
    )
    .expect("signable request");
    let (instructions, _) = sign(req, &params).expect("signs").into_parts();
    let mut out: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    for (k, v) in instructions.headers() {
        out.push((k.to_owned(), v.to_owned()));
    }
    out
}

/// A service-account JWT assertion signed with the key in `sa_json`.
pub fn jwt_assertion(sa_json: &str, lifetime_secs: i64) -> String {
    let sa: Value = serde_json::from_str(sa_json).expect("service account json");
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = sa["private_key_id"].as_str().map(str::to_owned);
    let claims = serde_json::json!({
        "iss": sa["client_email"],
        "scope": "https://www.googleapis.com/auth/cloud-platform",
        "aud": "https://oauth2.googleapis.com/token",
        "iat": now,
        "exp": now + lifetime_secs,
    });
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(
        sa["private_key"].as_str().expect("private_key").as_bytes(),
    )
    .expect("pem key");
    jsonwebtoken::encode(&header, &claims, &key).expect("jwt")
}
