//! gateway-providers: one adapter per upstream wire format, behind gateway-core's `Provider` trait.
//!
//! - [`http`]: the one shared HTTP client (pooling, TLS, HTTP/2, proxy) and body helpers.
//! - [`sse`]: the incremental server-sent-events parser used by every streaming adapter.
//! - [`headers`] and [`classify`]: rate-limit headers into `RateLimitInfo`, failures into
//!   `ProviderError` classes.
//! - One module per wire format, and [`registry`] to build providers from configuration.
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod anthropic;
pub mod azure;
pub mod bedrock;
pub mod classify;
pub mod cohere;
pub mod completions;
mod escape;
pub mod eventstream;
pub mod gemini;
pub mod headers;
pub mod http;
pub mod multipart;
pub mod openai;
pub mod registry;
pub mod responses;
pub mod signatures;
mod skim;
pub mod sse;
pub mod stream;
pub mod vertex;

pub use http::{HttpClient, HttpConfig};
pub use registry::{build_provider, kind_info, kinds, BuildError, KindInfo, ProviderSettings};

/// For APIs that give one answer per request (Anthropic, Bedrock, Cohere, Claude on Vertex): a
/// request for several (`n` above 1) is [`ProviderError::Unsupported`], so the engine passes the
/// target over for one that can (an OpenAI-format or Gemini target), or answers 400 naming `n`,
/// instead of silently answering once. An OpenAI Responses request is unsupported too
/// ([`gateway_core::provider::responses_unsupported`]).
///
/// [`ProviderError::Unsupported`]: gateway_core::error::ProviderError::Unsupported
pub fn one_answer_only(
    kind: &str,
    request: &gateway_core::types::ChatRequest,
) -> Result<(), gateway_core::error::ProviderError> {
    gateway_core::provider::responses_unsupported(kind, request)?;
    match request.n {
        Some(n) if n > 1 => Err(gateway_core::error::ProviderError::Unsupported {
            message: format!(
                "`n` = {n} asks for several answers; the {kind} API gives one per request"
            ),
            param: Some("n".to_owned()),
        }),
        _ => Ok(()),
    }
}

/// Embeds `texts` in batches of at most `max` (a provider's limit per request), one call after
/// another, and joins the answers in input order: indices renumbered, usage summed, the last
/// call's rate-limit reading. OpenAI takes up to 2,048 inputs per request; Gemini 100, Cohere 96,
/// Vertex 250, so a request valid for one must not be a 400 for another.
pub(crate) async fn embed_in_batches<'t, F, Fut>(
    texts: &'t [String],
    max: usize,
    mut call: F,
) -> Result<
    gateway_core::provider::ProviderResponse<gateway_core::types::EmbeddingResponse>,
    gateway_core::error::ProviderError,
>
where
    F: FnMut(&'t [String]) -> Fut,
    Fut: std::future::Future<
        Output = Result<
            gateway_core::provider::ProviderResponse<gateway_core::types::EmbeddingResponse>,
            gateway_core::error::ProviderError,
        >,
    >,
{
    let mut batches = texts.chunks(max.max(1));
    let first = batches.next().unwrap_or_default();
    let mut joined = call(first).await?;
    for batch in batches {
        let offset = u32::try_from(joined.body.data.len()).unwrap_or(u32::MAX);
        let next = call(batch).await?;
        joined
            .body
            .data
            .extend(next.body.data.into_iter().map(|mut e| {
                e.index = e.index.saturating_add(offset);
                e
            }));
        joined.body.usage = match (joined.body.usage, next.body.usage) {
            (Some(a), Some(b)) => Some(gateway_core::types::Usage::new(
                a.prompt_tokens.saturating_add(b.prompt_tokens),
                a.completion_tokens.saturating_add(b.completion_tokens),
                0,
            )),
            (a, b) => a.or(b),
        };
        joined.rate_limit = next.rate_limit;
    }
    Ok(joined)
}

/// FNV-1a of `bytes`: stable across runs and builds, for ids mapped deterministically (a tool
/// call and its result must map alike).
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}
