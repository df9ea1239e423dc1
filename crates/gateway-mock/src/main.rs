//! `gateway-mock`: the mock upstream as a standalone server for benchmarks.
//!
//! ```text
//! gateway-mock [--port N] [--latency-ms N] [--ttft-ms N] [--chunk-delay-ms N]
//!              [--stream-chunks N] [--reply-bytes N] [--key K]...
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use gateway_mock::MockUpstream;

const USAGE: &str = "usage: gateway-mock [--port N] [--latency-ms N] [--ttft-ms N] [--chunk-delay-ms N] [--stream-chunks N] [--reply-bytes N] [--key K]...";

/// A reply of about `n` bytes made of words (so word-wise streaming still works).
fn reply_of(n: usize) -> String {
    const WORDS: &[&str] = &[
        "lorem",
        "ipsum",
        "dolor",
        "sit",
        "amet",
        "consectetur",
        "adipiscing",
        "elit",
        "sed",
        "do",
        "eiusmod",
        "tempor",
        "incididunt",
        "ut",
        "labore",
        "et",
        "dolore",
        "magna",
        "aliqua",
    ];
    let mut s = String::with_capacity(n + 16);
    for w in WORDS.iter().cycle() {
        if s.len() >= n {
            break;
        }
        if !s.is_empty() {
            s.push(' ');
        }
        s.push_str(w);
    }
    s.truncate(n.max(1));
    s
}

fn parse(args: &[String]) -> Result<(u16, MockUpstream), String> {
    let mut port = 8089u16;
    let mut mock = MockUpstream::new();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            return Err(USAGE.to_owned());
        }
        let value = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        let num = || {
            value
                .parse::<u64>()
                .map_err(|e| format!("{flag} {value}: {e}"))
        };
        match flag.as_str() {
            "--port" => port = u16::try_from(num()?).map_err(|e| e.to_string())?,
            "--latency-ms" => mock = mock.latency(Duration::from_millis(num()?)),
            "--ttft-ms" => mock = mock.ttft(Duration::from_millis(num()?)),
            "--chunk-delay-ms" => mock = mock.chunk_delay(Duration::from_millis(num()?)),
            "--stream-chunks" => {
                mock = mock.stream_chunks(usize::try_from(num()?).map_err(|e| e.to_string())?)
            }
            "--reply-bytes" => {
                mock = mock.reply(reply_of(
                    usize::try_from(num()?).map_err(|e| e.to_string())?,
                ))
            }
            "--key" => mock = mock.key(value),
            other => return Err(format!("unknown flag {other}\n{USAGE}")),
        }
    }
    Ok((port, mock))
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (port, mock) = match parse(&args) {
        Ok(v) => v,
        Err(msg) => {
            eprintln!("{msg}");
            return ExitCode::from(2);
        }
    };
    let server = match mock
        .start_on(SocketAddr::from(([127, 0, 0, 1], port)))
        .await
    {
        Ok(s) => s,
        Err(e) => {
            eprintln!("gateway-mock: cannot listen on 127.0.0.1:{port}: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("gateway-mock listening on {}", server.url());
    if let Err(e) = tokio::signal::ctrl_c().await {
        eprintln!("gateway-mock: cannot wait for Ctrl-C: {e}");
    }
    server.shutdown().await;
    ExitCode::SUCCESS
}
