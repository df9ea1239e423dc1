//! `xtask bare-proxy`: the least an HTTP proxy can do, as a floor for the gateway's overhead.
//!
//! A hyper HTTP/1.1 server that forwards every request, headers and body as they are, to one
//! upstream over a pooled hyper-util client, and streams the answer back untouched: no JSON, no
//! routing, no logs, no metrics. It runs on the same kind of runtime as `gateway-server` (tokio's
//! multi-thread scheduler; `bench overhead` gives it as many workers as the gateway) with the
//! same socket options, so
//! `cargo xtask bench overhead --bare-proxy` measures, in the same run, what any proxy costs on
//! this machine (two more loopback hops and two more wake-ups per request) next to what the
//! gateway adds on top of that.

use std::convert::Infallible;
use std::net::SocketAddr;

use anyhow::{bail, Context, Result};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};

type Body = UnsyncBoxBody<Bytes, hyper::Error>;

const HELP: &str = "xtask bare-proxy --port PORT --upstream URL [--workers N]

A minimal forwarding HTTP/1.1 proxy on 127.0.0.1:PORT to URL (http://host:port), the floor that
`cargo xtask bench overhead --bare-proxy` compares the gateway with. --workers sets the runtime's
worker threads (default: one per core).
";

/// Runs the proxy until killed.
pub fn main(args: &[String]) -> Result<()> {
    let mut port: Option<u16> = None;
    let mut upstream: Option<String> = None;
    let mut workers: Option<usize> = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--port" => port = Some(it.next().context("--port needs a value")?.parse()?),
            "--upstream" => upstream = it.next().cloned(),
            "--workers" => workers = Some(it.next().context("--workers needs a value")?.parse()?),
            "-h" | "--help" => {
                print!("{HELP}");
                return Ok(());
            }
            other => bail!("unknown option `{other}`\n\n{HELP}"),
        }
    }
    let (Some(port), Some(upstream)) = (port, upstream) else {
        bail!("--port and --upstream are required\n\n{HELP}");
    };
    let upstream: Uri = upstream.trim_end_matches('/').parse()?;
    let authority = upstream
        .authority()
        .context("--upstream needs host:port")?
        .clone();
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = workers {
        rt.worker_threads(n);
    }
    let rt = rt.enable_all().build()?;
    rt.block_on(async move {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client: Client<HttpConnector, Incoming> =
            Client::builder(TokioExecutor::new()).build(connector);
        let listener =
            tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))).await?;
        println!("bare-proxy listening on 127.0.0.1:{port}, forwarding to {upstream}");
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            let client = client.clone();
            let authority = authority.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let client = client.clone();
                    let authority = authority.clone();
                    async move { Ok::<_, Infallible>(forward(&client, &authority, req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

async fn forward(
    client: &Client<HttpConnector, Incoming>,
    authority: &hyper::http::uri::Authority,
    req: Request<Incoming>,
) -> Response<Body> {
    let (mut parts, body) = req.into_parts();
    let mut uri = hyper::http::uri::Parts::default();
    uri.scheme = Some(hyper::http::uri::Scheme::HTTP);
    uri.authority = Some(authority.clone());
    uri.path_and_query = parts.uri.path_and_query().cloned();
    match Uri::from_parts(uri) {
        Ok(u) => parts.uri = u,
        Err(_) => return bad_gateway(),
    }
    parts.headers.remove(hyper::header::HOST);
    match client.request(Request::from_parts(parts, body)).await {
        Ok(resp) => resp.map(|b| b.boxed_unsync()),
        Err(_) => bad_gateway(),
    }
}

fn bad_gateway() -> Response<Body> {
    let mut r = Response::new(
        Full::new(Bytes::from_static(b"bad gateway"))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *r.status_mut() = hyper::StatusCode::BAD_GATEWAY;
    r
}
