//! The one HTTP client every adapter shares.
//!
//! A hyper-util legacy [`Client`] (connection pool, HTTP/1.1 and HTTP/2 chosen by ALPN) over
//! hyper-rustls with the Mozilla (webpki) roots and the `ring` provider. Plain `http://` is allowed
//! for any host, because local and LAN model servers (Ollama, vLLM, LM Studio) speak nothing else.
//!
//! Failures are classified at the source: a connection that cannot be made or breaks is
//! [`ProviderError::Connect`], no answer within the attempt's timeout is [`ProviderError::Timeout`].
//!
//! # Outbound proxy
//! [`HttpConfig::proxy`] takes `http://[user:pass@]host:port`. `https://` destinations go through an
//! HTTP `CONNECT` tunnel (TLS is end to end); `http://` destinations are sent to the proxy in absolute
//! form with `Proxy-Authorization` when credentials are given. Loopback destinations (`localhost`,
//! `127.0.0.0/8`, `::1`) bypass the proxy, and so do those [`HttpConfig::no_proxy`] lists (the
//! `NO_PROXY` convention: `*`, host names matching themselves and their subdomains, IP addresses
//! and CIDR ranges). There is no SOCKS support.
//!
//! ```
//! use gateway_providers::http::join_url;
//! assert_eq!(join_url("https://host/prefix/v1/", "/chat/completions"), "https://host/prefix/v1/chat/completions");
//! ```

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use gateway_core::ProviderError;
use http::header::{
    HeaderName, HeaderValue, ACCEPT, CONTENT_TYPE, HOST, PROXY_AUTHORIZATION, USER_AGENT,
};
use http::{HeaderMap, Method, Request, Response, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The request body type the client sends.
pub type Body = Full<Bytes>;

/// The largest non-streamed response body adapters read by default (32 MiB).
pub const DEFAULT_MAX_BODY: usize = 32 * 1024 * 1024;

/// The `user-agent` sent upstream.
pub const USER_AGENT_VALUE: &str = concat!("ai-gateway/", env!("CARGO_PKG_VERSION"));

type BoxError = Box<dyn StdError + Send + Sync>;

/// Settings of the shared client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpConfig {
    /// Idle connections kept per upstream host.
    pub pool_max_idle_per_host: usize,
    /// How long an idle pooled connection is kept.
    pub pool_idle_timeout: Duration,
    /// Limit on establishing a TCP connection.
    pub connect_timeout: Duration,
    /// An outbound HTTP proxy, `http://[user:pass@]host:port`.
    pub proxy: Option<String>,
    /// Destinations that bypass the proxy: `*` (all), a host name (`example.com` and a leading-dot
    /// `.example.com` both match it and its subdomains), an IP address, or a CIDR range
    /// (`10.0.0.0/8`, `fd00::/8`).
    pub no_proxy: Vec<String>,
    /// Offer HTTP/2 in TLS ALPN. Off by default: the client then keeps one HTTP/2 connection per
    /// host and does not open another when the server's `SETTINGS_MAX_CONCURRENT_STREAMS` is
    /// reached (hyper#3623), so requests past that many in flight (typically 100–256) wait for
    /// a stream to end, which for LLM streams can be minutes. HTTP/1.1 opens a connection per
    /// request in flight and never queues.
    pub http2: bool,
    /// Certificates (DER) trusted for upstream TLS besides the public web roots: a private CA of
    /// an internal endpoint or a TLS-inspecting proxy.
    pub extra_roots: Vec<rustls::pki_types::CertificateDer<'static>>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            pool_max_idle_per_host: 64,
            pool_idle_timeout: Duration::from_secs(90),
            connect_timeout: Duration::from_secs(10),
            proxy: None,
            no_proxy: Vec::new(),
            http2: false,
            extra_roots: Vec::new(),
        }
    }
}

/// Why the client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum HttpConfigError {
    /// The proxy URL is not usable.
    #[error("http.proxy: {0}")]
    Proxy(String),
    /// The TLS configuration could not be built.
    #[error("tls configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// The shared, cheaply clonable HTTP client.
#[derive(Clone)]
pub struct HttpClient {
    client: Client<HttpsConnector<Connector>, Body>,
    proxy: Option<Arc<Proxy>>,
}

impl fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpClient")
            .field("proxy", &self.proxy.as_ref().map(|p| &p.display))
            .finish_non_exhaustive()
    }
}

impl HttpClient {
    /// Builds the client. Must be called inside a Tokio runtime only when requests are sent.
    pub fn new(config: &HttpConfig) -> Result<Self, HttpConfigError> {
        let proxy = config
            .proxy
            .as_deref()
            .filter(|p| !p.trim().is_empty())
            .map(|p| Proxy::parse(p, &config.no_proxy))
            .transpose()?
            .map(Arc::new);

        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(config.connect_timeout));
        http.set_keepalive(Some(Duration::from_secs(60)));
        let connector = Connector {
            http,
            proxy: proxy.clone(),
        };
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        for cert in &config.extra_roots {
            roots.add(cert.clone())?;
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1();
        let https = if config.http2 {
            https.enable_http2().wrap_connector(connector)
        } else {
            https.wrap_connector(connector)
        };
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(config.pool_max_idle_per_host)
            .pool_idle_timeout(config.pool_idle_timeout)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(https);
        Ok(HttpClient { client, proxy })
    }

    /// Sends a request and waits for the response head, at most `timeout`.
    ///
    /// Connection failures become [`ProviderError::Connect`]; running out of time becomes
    /// [`ProviderError::Timeout`]. The body is left to the caller (see [`read_body`]).
    pub async fn send(
        &self,
        req: Request<Body>,
        timeout: Duration,
    ) -> Result<Response<Incoming>, ProviderError> {
        within(timeout, self.request(req)).await
    }

    /// Sends a request and waits for the response head, with no deadline of its own: callers
    /// bound it (one timer per operation: every timer registered costs a lock and a wheel entry).
    async fn request(&self, mut req: Request<Body>) -> Result<Response<Incoming>, ProviderError> {
        if let Some(proxy) = &self.proxy {
            if let Some(auth) = &proxy.authorization {
                if req.uri().scheme() == Some(&http::uri::Scheme::HTTP)
                    && !req.uri().host().is_some_and(|h| proxy.bypasses(h))
                {
                    req.headers_mut().insert(PROXY_AUTHORIZATION, auth.clone());
                }
            }
        }
        self.client
            .request(req)
            .await
            .map_err(|e| ProviderError::Connect(error_chain(&e)))
    }

    /// Sends a request and reads the whole body (at most `max_body` bytes), all within `timeout`.
    pub async fn send_buffered(
        &self,
        req: Request<Body>,
        timeout: Duration,
        max_body: usize,
    ) -> Result<Response<Bytes>, ProviderError> {
        within(timeout, async {
            let resp = self.request(req).await?;
            let (parts, body) = resp.into_parts();
            let bytes = read_body(body, max_body).await?;
            Ok(Response::from_parts(parts, bytes))
        })
        .await
    }
}

/// `work`, or [`ProviderError::Timeout`] if it takes longer than `timeout`.
async fn within<T>(
    timeout: Duration,
    work: impl Future<Output = Result<T, ProviderError>>,
) -> Result<T, ProviderError> {
    tokio::time::timeout(timeout, work)
        .await
        .unwrap_or(Err(ProviderError::Timeout))
}

/// Turns a non-success status, its headers and its body into an error
/// ([`classify::classify`](crate::classify::classify) for OpenAI-shaped and Anthropic upstreams).
pub type Classifier = fn(u16, &HeaderMap, &[u8]) -> ProviderError;

impl HttpClient {
    /// Sends a request and reads the whole body within `timeout`; a non-2xx answer becomes the
    /// error `classify` makes of it.
    pub async fn fetch(
        &self,
        req: Request<Body>,
        timeout: Duration,
        classify: Classifier,
    ) -> Result<Response<Bytes>, ProviderError> {
        let resp = self.send_buffered(req, timeout, DEFAULT_MAX_BODY).await?;
        if resp.status().is_success() {
            Ok(resp)
        } else {
            Err(classify(
                resp.status().as_u16(),
                resp.headers(),
                resp.body(),
            ))
        }
    }

    /// Sends a request for a streamed answer and waits for the head within `timeout`. A non-2xx
    /// answer is read (at most 1 MiB, within the same timeout) and becomes the error `classify`
    /// makes of it; a 2xx answer is returned with its body unread.
    pub async fn open_stream(
        &self,
        req: Request<Body>,
        timeout: Duration,
        classify: Classifier,
    ) -> Result<Response<Incoming>, ProviderError> {
        let started = tokio::time::Instant::now();
        let resp = self.send(req, timeout).await?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let (parts, body) = resp.into_parts();
        let left = timeout.saturating_sub(started.elapsed());
        let bytes = match tokio::time::timeout(left, read_body(body, 1024 * 1024)).await {
            Ok(Ok(b)) => b,
            // The status alone still classifies.
            Ok(Err(_)) | Err(_) => Bytes::new(),
        };
        Err(classify(parts.status.as_u16(), &parts.headers, &bytes))
    }
}

/// Reads a whole response body, refusing more than `max_bytes`.
pub async fn read_body(body: Incoming, max_bytes: usize) -> Result<Bytes, ProviderError> {
    match Limited::new(body, max_bytes).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) => {
            if e.is::<http_body_util::LengthLimitError>() {
                Err(ProviderError::Protocol(format!(
                    "response body exceeds {max_bytes} bytes"
                )))
            } else {
                Err(ProviderError::Connect(format!(
                    "reading the response body: {}",
                    error_chain(e.as_ref())
                )))
            }
        }
    }
}

/// Joins a base URL and a path, keeping the base's path prefix and avoiding doubled slashes:
/// `https://host/prefix/v1` + `/chat/completions` is `https://host/prefix/v1/chat/completions`.
pub fn join_url(base: &str, path: &str) -> String {
    let base = base.trim_end_matches('/');
    let path = path.trim_start_matches('/');
    let mut out = String::with_capacity(base.len() + path.len() + 1);
    out.push_str(base);
    if !path.is_empty() {
        out.push('/');
        out.push_str(path);
    }
    out
}

/// A base URL without a trailing API version segment among `versions` (`https://host/v1` →
/// `https://host`), for kinds whose paths carry the version themselves: a base copied with the
/// version, as OpenAI-format bases are written, must not become `/v1/v1/messages`.
pub fn without_version<'a>(base: &'a str, versions: &[&str]) -> &'a str {
    let trimmed = base.trim_end_matches('/');
    match trimmed.rsplit_once('/') {
        Some((root, last))
            if versions.contains(&last) && root.contains("://") && !root.ends_with('/') =>
        {
            root
        }
        _ => trimmed,
    }
}

/// Checks that a configured base URL is an absolute `http(s)://host[...]` URL without query or
/// fragment. Returns a human-readable reason when it is not.
pub fn validate_base_url(base: &str) -> Result<(), String> {
    let uri: Uri = base
        .parse()
        .map_err(|e| format!("`{base}` is not a valid URL: {e}"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(format!("`{base}` must start with http:// or https://")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("`{base}` has no host"));
    }
    if uri.query().is_some() || base.contains('#') {
        return Err(format!("`{base}` must not carry a query or fragment"));
    }
    Ok(())
}

/// Builds a JSON request (`content-type` and `accept: application/json`, the gateway's user agent)
/// with extra headers. A bad URL or header value is a [`ProviderError::Protocol`] (configuration
/// mistakes are caught when providers are built, so this is not expected at run time).
pub fn json_request(
    method: Method,
    url: &str,
    headers: &[(HeaderName, HeaderValue)],
    body: Bytes,
) -> Result<Request<Body>, ProviderError> {
    let mut builder = Request::builder()
        .method(method)
        .uri(url)
        .header(USER_AGENT, HeaderValue::from_static(USER_AGENT_VALUE))
        .header(ACCEPT, HeaderValue::from_static("application/json"));
    if !body.is_empty() {
        builder = builder.header(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    let mut req = builder
        .body(Full::new(body))
        .map_err(|e| ProviderError::Protocol(format!("building request to {url}: {e}")))?;
    if let Some(host) = host_value(req.uri()) {
        req.headers_mut().insert(HOST, host);
    }
    let map = req.headers_mut();
    for (name, value) in headers {
        map.insert(name.clone(), value.clone());
    }
    Ok(req)
}

/// `Authorization: Bearer <key>`, marked sensitive.
pub fn bearer(key: &str) -> Result<HeaderValue, ProviderError> {
    let mut v = Vec::with_capacity(7 + key.len());
    v.extend_from_slice(b"Bearer ");
    v.extend_from_slice(key.as_bytes());
    let mut v = HeaderValue::from_maybe_shared(Bytes::from(v))
        .map_err(|_| ProviderError::Protocol("header value contains invalid characters".into()))?;
    v.set_sensitive(true);
    Ok(v)
}

/// The `Host` header hyper-util's client would add (the URL's host, with its port unless it is
/// the scheme's default), set beforehand so the client does not build it with `format!` on
/// every request.
fn host_value(uri: &Uri) -> Option<HeaderValue> {
    let authority = uri.authority()?;
    let default_port = matches!(
        (uri.scheme_str(), authority.port_u16()),
        (Some("http"), Some(80)) | (Some("https"), Some(443))
    );
    let value = match authority.port_u16() {
        Some(_) if !default_port => authority.as_str().rsplit('@').next()?,
        _ => authority.host(),
    };
    HeaderValue::from_str(value).ok()
}

/// A header value from a string, rejecting control characters; marked sensitive when asked.
pub fn header_value(value: &str, sensitive: bool) -> Result<HeaderValue, ProviderError> {
    let mut v = HeaderValue::from_str(value)
        .map_err(|_| ProviderError::Protocol("header value contains invalid characters".into()))?;
    v.set_sensitive(sensitive);
    Ok(v)
}

/// The error and its sources, joined with `: `.
pub fn error_chain(e: &(dyn StdError + 'static)) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        src = s.source();
    }
    out
}

fn is_loopback_host(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost") || h.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// A parsed outbound proxy.
struct Proxy {
    /// `http://host:port` of the proxy, without credentials.
    uri: Uri,
    /// `Basic ...` from the URL's user info.
    authorization: Option<HeaderValue>,
    /// For logs: the URL without credentials.
    display: String,
    /// Destinations that go direct ([`HttpConfig::no_proxy`]).
    bypass: Vec<Bypass>,
}

/// One [`HttpConfig::no_proxy`] entry.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Bypass {
    All,
    /// A host name, lowercase, without a leading dot: it and its subdomains.
    Domain(String),
    /// An address and the number of leading bits that must match.
    Net(IpAddr, u8),
}

impl Bypass {
    fn parse(entry: &str) -> Result<Option<Self>, HttpConfigError> {
        let e = entry.trim();
        if e.is_empty() {
            return Ok(None);
        }
        if e == "*" {
            return Ok(Some(Bypass::All));
        }
        let bad = || HttpConfigError::Proxy(format!("no_proxy: `{e}` is not a host, IP or CIDR"));
        if let Some((ip, bits)) = e.split_once('/') {
            let ip: IpAddr = ip.parse().map_err(|_| bad())?;
            let bits: u8 = bits.parse().map_err(|_| bad())?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            if bits > max {
                return Err(bad());
            }
            return Ok(Some(Bypass::Net(ip, bits)));
        }
        let bare = e.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = bare.parse::<IpAddr>() {
            let bits = if ip.is_ipv4() { 32 } else { 128 };
            return Ok(Some(Bypass::Net(ip, bits)));
        }
        let domain = e.trim_start_matches("*.").trim_start_matches('.');
        if domain.is_empty() || domain.contains(['/', ' ', ':']) {
            return Err(bad());
        }
        Ok(Some(Bypass::Domain(domain.to_ascii_lowercase())))
    }

    fn matches(&self, host: &str) -> bool {
        match self {
            Bypass::All => true,
            Bypass::Domain(d) => {
                let h = host.trim_end_matches('.');
                h.eq_ignore_ascii_case(d)
                    || (h.len() > d.len()
                        && h.as_bytes()[h.len() - d.len() - 1] == b'.'
                        && h.as_bytes()[h.len() - d.len()..].eq_ignore_ascii_case(d.as_bytes()))
            }
            Bypass::Net(net, bits) => host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<IpAddr>()
                .is_ok_and(|ip| in_net(ip, *net, *bits)),
        }
    }
}

/// Whether `ip` is in `net`/`bits` (an IPv4 address never matches an IPv6 range, or the reverse).
fn in_net(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    fn prefix(a: &[u8], b: &[u8], bits: u8) -> bool {
        let (whole, rest) = (usize::from(bits / 8), bits % 8);
        a[..whole] == b[..whole]
            && (rest == 0 || (a[whole] ^ b[whole]) & (0xffu8 << (8 - rest)) == 0)
    }
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(b)) => prefix(&a.octets(), &b.octets(), bits),
        (IpAddr::V6(a), IpAddr::V6(b)) => prefix(&a.octets(), &b.octets(), bits),
        _ => false,
    }
}

impl Proxy {
    /// Whether a connection to `host` goes direct: loopback, or listed in `no_proxy`.
    fn bypasses(&self, host: &str) -> bool {
        is_loopback_host(host) || self.bypass.iter().any(|b| b.matches(host))
    }

    fn parse(raw: &str, no_proxy: &[String]) -> Result<Self, HttpConfigError> {
        let mut bypass = Vec::new();
        for entry in no_proxy.iter().flat_map(|e| e.split(',')) {
            if let Some(b) = Bypass::parse(entry)? {
                bypass.push(b);
            }
        }
        let uri: Uri = raw
            .trim()
            .parse()
            .map_err(|e| HttpConfigError::Proxy(format!("not a valid URL: {e}")))?;
        if uri.scheme_str() != Some("http") {
            return Err(HttpConfigError::Proxy(
                "only http:// proxies are supported".into(),
            ));
        }
        let authority = uri
            .authority()
            .ok_or_else(|| HttpConfigError::Proxy("missing host".into()))?;
        let host = authority.host();
        let port = authority.port_u16().unwrap_or(80);
        let authorization = match authority.as_str().rsplit_once('@') {
            Some((userinfo, _)) => {
                let decoded = percent_encoding::percent_decode_str(userinfo).decode_utf8_lossy();
                let token = base64::engine::general_purpose::STANDARD.encode(decoded.as_bytes());
                let mut v = HeaderValue::from_str(&format!("Basic {token}"))
                    .map_err(|_| HttpConfigError::Proxy("invalid credentials".into()))?;
                v.set_sensitive(true);
                Some(v)
            }
            None => None,
        };
        let display = format!("http://{host}:{port}");
        let uri: Uri = display
            .parse()
            .map_err(|e| HttpConfigError::Proxy(format!("not a valid URL: {e}")))?;
        Ok(Proxy {
            uri,
            authorization,
            display,
            bypass,
        })
    }
}

/// The TCP connector under TLS: direct, or through the proxy.
#[derive(Clone)]
struct Connector {
    http: HttpConnector,
    proxy: Option<Arc<Proxy>>,
}

type ConnectFuture = Pin<Box<dyn Future<Output = Result<Conn, BoxError>> + Send>>;

impl tower_service::Service<Uri> for Connector {
    type Response = Conn;
    type Error = BoxError;
    type Future = ConnectFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        tower_service::Service::poll_ready(&mut self.http, cx).map_err(Into::into)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let proxy = match &self.proxy {
            Some(p) if !dst.host().is_some_and(|h| p.bypasses(h)) => Arc::clone(p),
            _ => {
                let fut = tower_service::Service::call(&mut self.http, dst);
                return Box::pin(async move {
                    Ok(Conn {
                        io: fut.await?,
                        proxied: false,
                    })
                });
            }
        };
        let fut = tower_service::Service::call(&mut self.http, proxy.uri.clone());
        Box::pin(async move {
            let io = fut.await?;
            if dst.scheme() == Some(&http::uri::Scheme::HTTPS) {
                let stream = tunnel(io.into_inner(), &dst, proxy.authorization.as_ref()).await?;
                Ok(Conn {
                    io: TokioIo::new(stream),
                    proxied: false,
                })
            } else {
                Ok(Conn { io, proxied: true })
            }
        })
    }
}

/// Opens an HTTP `CONNECT` tunnel to `dst` over a connection to the proxy.
async fn tunnel(
    mut stream: TcpStream,
    dst: &Uri,
    auth: Option<&HeaderValue>,
) -> Result<TcpStream, BoxError> {
    let host = dst.host().ok_or("destination has no host")?;
    let port = dst.port_u16().unwrap_or(443);
    let mut head = format!("CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n");
    if let Some(auth) = auth {
        head.push_str("Proxy-Authorization: ");
        head.push_str(auth.to_str().map_err(|_| "invalid proxy credentials")?);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await?;
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 512];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err("proxy closed the connection during CONNECT".into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
        if buf.len() > 8192 {
            return Err("proxy CONNECT response headers too long".into());
        }
    }
    let status_line = buf.split(|b| *b == b'\n').next().unwrap_or_default();
    let status_line = String::from_utf8_lossy(status_line);
    let mut parts = status_line.split_whitespace();
    let _version = parts.next();
    match parts.next() {
        Some(code) if code.starts_with('2') => Ok(stream),
        Some("407") => Err("proxy authentication required".into()),
        _ => Err(format!("proxy refused CONNECT: {}", status_line.trim()).into()),
    }
}

/// A TCP connection that may be marked as going through a forwarding proxy, so that hyper sends
/// absolute-form request targets.
struct Conn {
    io: TokioIo<TcpStream>,
    proxied: bool,
}

impl Connection for Conn {
    fn connected(&self) -> Connected {
        let c = self.io.connected();
        if self.proxied {
            c.proxy(true)
        } else {
            c
        }
    }
}

impl Read for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl Write for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_header_is_the_host_and_any_port_but_the_default() {
        let host = |url: &str| {
            let req = json_request(Method::POST, url, &[], Bytes::new()).unwrap();
            req.headers()[HOST].to_str().unwrap().to_owned()
        };
        assert_eq!(host("http://127.0.0.1:8080/v1/chat"), "127.0.0.1:8080");
        assert_eq!(host("https://api.openai.com/v1/chat"), "api.openai.com");
        assert_eq!(host("https://api.openai.com:443/v1"), "api.openai.com");
        assert_eq!(host("http://h:80/v1"), "h");
        assert_eq!(host("http://h:443/v1"), "h:443");
        assert_eq!(host("http://[::1]:9000/v1"), "[::1]:9000");
        assert_eq!(host("http://user:pw@h:81/v1"), "h:81");
    }

    #[test]
    fn a_bearer_value_is_sensitive_and_refuses_control_characters() {
        let v = bearer("sk-abc").unwrap();
        assert_eq!(v.to_str().unwrap(), "Bearer sk-abc");
        assert!(v.is_sensitive());
        assert!(bearer("sk\nx").is_err());
    }

    #[test]
    fn join_keeps_prefix() {
        assert_eq!(
            join_url("https://api.groq.com/openai/v1", "/chat/completions"),
            "https://api.groq.com/openai/v1/chat/completions"
        );
        assert_eq!(
            join_url("http://127.0.0.1:8080/", "v1/messages"),
            "http://127.0.0.1:8080/v1/messages"
        );
        assert_eq!(join_url("http://h/x//", ""), "http://h/x");
        assert_eq!(
            without_version("https://api.anthropic.com/v1/", &["v1"]),
            "https://api.anthropic.com"
        );
        assert_eq!(
            without_version("http://127.0.0.1:9/proxy/v1", &["v1"]),
            "http://127.0.0.1:9/proxy"
        );
        assert_eq!(
            without_version("http://127.0.0.1:9", &["v1"]),
            "http://127.0.0.1:9"
        );
        assert_eq!(
            without_version("http://h/v1beta", &["v1"]),
            "http://h/v1beta"
        );
    }

    #[test]
    fn base_url_validation() {
        assert!(validate_base_url("https://api.openai.com/v1").is_ok());
        assert!(validate_base_url("http://127.0.0.1:1234").is_ok());
        assert!(
            validate_base_url("ftp://x").is_err(),
            "scheme must be http(s)"
        );
        assert!(
            validate_base_url("api.openai.com/v1").is_err(),
            "scheme required"
        );
        assert!(validate_base_url("https://h/v1?x=1").is_err(), "no query");
    }

    #[test]
    fn proxy_parsing() {
        let p = Proxy::parse("http://user:p%40ss@proxy.local:3128", &[]).expect("valid proxy");
        assert_eq!(p.display, "http://proxy.local:3128");
        let auth = p
            .authorization
            .expect("credentials give an authorization header");
        let expected = base64::engine::general_purpose::STANDARD.encode("user:p@ss");
        assert_eq!(
            auth.to_str().ok(),
            Some(format!("Basic {expected}").as_str())
        );
        assert!(Proxy::parse("socks5://h:1", &[]).is_err());
        assert!(
            is_loopback_host("localhost")
                && is_loopback_host("[::1]")
                && is_loopback_host("127.0.0.9")
        );
        assert!(!is_loopback_host("example.com"));
    }

    /// `no_proxy`: hosts and their subdomains (not lookalikes), IPs, CIDR ranges of both
    /// families, `*`, comma-separated entries; loopback always goes direct; bad entries are
    /// refused at start.
    #[test]
    fn no_proxy_entries() {
        let p = Proxy::parse(
            "http://proxy.local:3128",
            &[
                ".corp.example, models.internal".to_owned(),
                "10.0.0.0/8".to_owned(),
                "192.168.1.7".to_owned(),
                "fd00::/8".to_owned(),
            ],
        )
        .expect("valid");
        for direct in [
            "corp.example",
            "api.corp.example",
            "A.CORP.EXAMPLE.",
            "models.internal",
            "10.1.2.3",
            "192.168.1.7",
            "[fd12::1]",
            "localhost",
            "127.0.0.1",
        ] {
            assert!(p.bypasses(direct), "{direct}");
        }
        for proxied in [
            "notcorp.example",
            "corp.example.com",
            "api.openai.com",
            "11.0.0.1",
            "192.168.1.8",
            "[fe80::1]",
            "héllo.corp",
        ] {
            assert!(!p.bypasses(proxied), "{proxied}");
        }
        let all = Proxy::parse("http://p:1", &["*".to_owned()]).expect("valid");
        assert!(all.bypasses("api.anthropic.com"));
        assert!(Proxy::parse("http://p:1", &["10.0.0.0/33".to_owned()]).is_err());
        assert!(Proxy::parse("http://p:1", &["http://x/y".to_owned()]).is_err());
        assert!(in_net(
            "10.255.0.1".parse().unwrap(),
            "10.0.0.0".parse().unwrap(),
            8
        ));
        assert!(!in_net(
            "10.255.0.1".parse().unwrap(),
            "10.0.0.0".parse().unwrap(),
            9
        ));
        assert!(in_net(
            "1.2.3.4".parse().unwrap(),
            "0.0.0.0".parse().unwrap(),
            0
        ));
    }
}
