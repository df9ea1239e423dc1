//! Accepting connections: HTTP/1.1 and HTTP/2 (prior knowledge or ALPN over TLS), graceful
//! shutdown that drains in-flight requests and streams, and reload on SIGHUP.

use std::future::Future;
use std::io::BufReader;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::app::Gateway;

/// Why serving failed.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// TLS material could not be loaded.
    #[error("tls: {0}")]
    Tls(String),
    /// Accepting failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// Loads a rustls acceptor from PEM files.
pub fn tls_acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, ServeError> {
    let certs = pem_certificates(cert)?;
    let key = rustls_pemfile::private_key(&mut BufReader::new(
        std::fs::File::open(key).map_err(|e| ServeError::Tls(format!("{}: {e}", key.display())))?,
    ))
    .map_err(|e| ServeError::Tls(format!("{}: {e}", key.display())))?
    .ok_or_else(|| ServeError::Tls(format!("{}: no private key found", key.display())))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| ServeError::Tls(e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| ServeError::Tls(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Reads the certificates of a PEM file; none found is an error.
pub fn pem_certificates(
    path: &Path,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, ServeError> {
    let fail = |e: &dyn std::fmt::Display| ServeError::Tls(format!("{}: {e}", path.display()));
    let certs = rustls_pemfile::certs(&mut BufReader::new(
        std::fs::File::open(path).map_err(|e| fail(&e))?,
    ))
    .collect::<Result<Vec<_>, _>>()
    .map_err(|e| fail(&e))?;
    if certs.is_empty() {
        return Err(fail(&"no certificate found"));
    }
    Ok(certs)
}

/// Serves `gateway` on `listener` until `shutdown` resolves, then drains for at most `grace`.
pub async fn serve(
    gateway: Arc<Gateway>,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) -> Result<(), ServeError> {
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // A client that trickles its head (slowloris) or holds an idle connection forever is cut
    // off: hyper's header-read timeout needs a timer to run.
    let header_timeout = gateway.header_read_timeout();
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    // The connection tasks, so that those the grace period cuts end (their requests logged and
    // settled by their drops) before `serve` returns and the services flush.
    let mut conns = tokio::task::JoinSet::new();
    let _anchor = AbortOnDrop(tokio::spawn(keep_timer_armed()));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _peer) = match accepted {
                    Ok(s) => s,
                    Err(e) => {
                        // Out of file descriptors and similar: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let gw = Arc::clone(&gateway);
                let service = service_fn(move |req| {
                    let gw = Arc::clone(&gw);
                    async move { Ok::<_, std::convert::Infallible>(gw.handle(req).await) }
                });
                // A connection that sends nothing is closed after the header-read timeout too
                // (before its first byte, hyper has not yet told HTTP/1 from HTTP/2).
                let first_byte = header_timeout;
                let silent = async move |stream: &tokio::net::TcpStream| match first_byte {
                    // `peek` waits for a byte (or the end); readiness alone may be reported at once.
                    Some(t) => !matches!(
                        tokio::time::timeout(t, stream.peek(&mut [0u8; 1])).await,
                        Ok(Ok(n)) if n > 0
                    ),
                    None => false,
                };
                match &tls {
                    None => {
                        let builder = builder.clone();
                        let watcher = graceful.watcher();
                        conns.spawn(async move {
                            if silent(&stream).await {
                                return;
                            }
                            let conn = builder.serve_connection(TokioIo::new(stream), service).into_owned();
                            if let Err(e) = watcher.watch(conn).await {
                                tracing::debug!(error = %e, "connection ended with an error");
                            }
                        });
                    }
                    Some(acceptor) => {
                        let acceptor = acceptor.clone();
                        let builder = builder.clone();
                        let watcher = graceful.watcher();
                        conns.spawn(async move {
                            if silent(&stream).await {
                                return;
                            }
                            let tls_stream = match acceptor.accept(stream).await {
                                Ok(s) => s,
                                Err(e) => {
                                    tracing::debug!(error = %e, "tls handshake failed");
                                    return;
                                }
                            };
                            let conn = builder.serve_connection(TokioIo::new(tls_stream), service).into_owned();
                            if let Err(e) = watcher.watch(conn).await {
                                tracing::debug!(error = %e, "connection ended with an error");
                            }
                        });
                    }
                }
            }
            // Finished connections are reaped as they end.
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            () = &mut shutdown => {
                tracing::info!("shutting down: no new connections, draining in-flight requests");
                break;
            }
        }
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections drained"),
        () = tokio::time::sleep(grace) => {
            tracing::warn!(connections = conns.len(), "grace period over; closing remaining connections");
        }
    }
    // What is left (connections the grace period cuts, and any still waiting for a first byte)
    // ends here: a request cut short is logged and settled by its drop before the caller
    // flushes the services (a stream under way as cut by the shutdown, 503).
    if !conns.is_empty() {
        gateway.mark_cut();
    }
    conns.abort_all();
    while conns.join_next().await.is_some() {}
    Ok(())
}

/// Aborts a task when dropped: the timer anchor ends with `serve`, even when `serve` is.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How far away the timer [`keep_timer_armed`] keeps pending is, at most.
pub const TIMER_ANCHOR_PERIOD: Duration = Duration::from_secs(1);

/// Keeps one timer always pending, due within [`TIMER_ANCHOR_PERIOD`].
///
/// tokio's timer wakes its I/O driver (an eventfd write, then one more round of `epoll_wait`)
/// whenever a timer is registered that is due before the earliest one the driver knew of when it
/// last parked, or when it knew of none, even from the very thread that runs the driver. Each
/// request registers its attempt's timeout (seconds away), and between requests the wheel is often
/// empty, so every request paid that wake-up: three eventfd writes per request at 500 RPS under
/// `strace`, before the HTTP client's nested timers were merged. With a timer always due within a
/// second, a request's timeout is never the earliest, and registering it is a wheel insert alone;
/// the price is one wake-up a second.
pub async fn keep_timer_armed() {
    loop {
        tokio::time::sleep(TIMER_ANCHOR_PERIOD).await;
    }
}

/// Resolves on SIGTERM or SIGINT; reloads the configuration on every SIGHUP meanwhile.
pub async fn signals(gateway: Arc<Gateway>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
        ) else {
            let _ = tokio::signal::ctrl_c().await;
            return;
        };
        loop {
            tokio::select! {
                _ = term.recv() => return,
                _ = int.recv() => return,
                _ = hup.recv() => match gateway.reload().await {
                    Ok(()) => tracing::info!("configuration reloaded on SIGHUP"),
                    Err(e) => tracing::error!(error = %e, "reload refused; the running configuration stays"),
                },
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = gateway;
        let _ = tokio::signal::ctrl_c().await;
    }
}
