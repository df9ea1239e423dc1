//! The `Provider` seam: one implementation per upstream wire format.
//!
//! gateway-providers implements it for OpenAI, Anthropic, Gemini, Bedrock and the others; an
//! embedding service implements it for its own model servers. Implementations convert the canonical
//! request into their wire format, call upstream, and classify failures into [`ProviderError`].

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_core::Stream;

use crate::error::ProviderError;
use crate::ratelimit::RateLimitInfo;
use crate::types::{
    ChatChunk, ChatRequest, ChatResponse, EmbeddingRequest, EmbeddingResponse, ModelInfo, Usage,
};

/// A secret string whose `Debug` and `Display` never show the value.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(Arc<str>);

impl Secret {
    /// Wraps a secret.
    pub fn new(value: impl Into<Arc<str>>) -> Self {
        Secret(value.into())
    }

    /// The secret value; call only where it is sent upstream.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether the secret is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// A short, non-reversible fingerprint, used to tell whether a key changed across reloads.
    pub fn fingerprint(&self) -> u64 {
        // FNV-1a: stable across runs, good enough to detect change, reveals nothing usable.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in self.0.as_bytes() {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// The credential a call is made with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// No credential (local servers).
    None,
    /// An API key (bearer token, `x-api-key`, `api-key`, `x-goog-api-key`...).
    ApiKey(Secret),
    /// AWS credentials for SigV4.
    Aws {
        /// Access key id.
        access_key_id: String,
        /// Secret access key.
        secret_access_key: Secret,
        /// Session token for temporary credentials.
        session_token: Option<Secret>,
    },
    /// A Google service-account JSON key (its contents).
    ServiceAccount(Secret),
}

impl Credential {
    /// `text` with every secret of this credential replaced by `***`: upstream error messages
    /// may quote the key they were sent ("Incorrect API key provided: …"), whatever its shape.
    /// Values shorter than 4 characters are left alone (they would match anywhere).
    pub fn redact<'a>(&self, text: &'a str) -> std::borrow::Cow<'a, str> {
        let mut out = std::borrow::Cow::Borrowed(text);
        let mut hide = |secret: &str| {
            if secret.len() >= 4 && out.contains(secret) {
                out = std::borrow::Cow::Owned(out.replace(secret, "***"));
            }
        };
        match self {
            Credential::None | Credential::ServiceAccount(_) => {}
            Credential::ApiKey(key) => hide(key.expose()),
            Credential::Aws {
                access_key_id,
                secret_access_key,
                session_token,
            } => {
                hide(secret_access_key.expose());
                if let Some(t) = session_token {
                    hide(t.expose());
                }
                hide(access_key_id);
            }
        }
        out
    }

    /// The API key, if this is one.
    pub fn api_key(&self) -> Option<&Secret> {
        match self {
            Credential::ApiKey(s) => Some(s),
            _ => None,
        }
    }

    /// A fingerprint of the whole credential.
    pub fn fingerprint(&self) -> u64 {
        match self {
            Credential::None => 0,
            Credential::ApiKey(s) | Credential::ServiceAccount(s) => s.fingerprint(),
            Credential::Aws {
                access_key_id,
                secret_access_key,
                session_token,
            } => {
                Secret::new(access_key_id.as_str()).fingerprint()
                    ^ secret_access_key.fingerprint().rotate_left(7)
                    ^ session_token
                        .as_ref()
                        .map_or(0, |t| t.fingerprint().rotate_left(13))
            }
        }
    }
}

/// Everything a provider needs for one upstream call besides the request itself.
#[derive(Debug, Clone)]
pub struct Call {
    /// The chosen credential.
    pub credential: Arc<Credential>,
    /// The name of the chosen key (for logs; never the secret).
    pub key_name: Arc<str>,
    /// The upstream model id.
    pub model: Arc<str>,
    /// How long this attempt may take.
    pub timeout: Duration,
    /// The gateway's request id, forwarded where the provider accepts one.
    pub request_id: Arc<str>,
    /// W3C `traceparent` to forward upstream, if any.
    pub traceparent: Option<Arc<str>>,
    /// The format the caller writes its answers in, if it honours
    /// [`ChatResponse::raw`](crate::types::ChatResponse::raw) and
    /// [`ChatChunk::raw`](crate::types::ChatChunk::raw): an adapter whose upstream speaks that
    /// format may pass answers and chunks on as they came instead of decoding them fully.
    /// Adapters are free to ignore it.
    pub passthrough: Passthrough,
}

/// Which wire format, if any, a caller accepts answers and chunks in as the upstream sent them
/// ([`Call::passthrough`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Passthrough {
    /// Answers and chunks come decoded; `raw` is never set.
    #[default]
    Off,
    /// OpenAI chat completions: the answer's JSON, and each chunk's `data:` value (or a run of
    /// them, see [`ChatChunk::raw`](crate::types::ChatChunk::raw)).
    OpenAiChat,
    /// Anthropic Messages: the message's JSON, and each chunk's whole SSE event text
    /// (`event: …\ndata: …\n\n`).
    AnthropicMessages,
    /// OpenAI Responses ([`ChatRequest::is_responses`]): the response object's JSON, and each
    /// chunk's whole SSE event text, as for Anthropic Messages.
    OpenAiResponses,
    /// OpenAI's legacy Completions: the `text_completion` JSON, and each chunk's whole SSE event
    /// text (`data: …\n\n`, the final `data: [DONE]` included).
    OpenAiCompletions,
}

/// A non-streaming answer plus what the headers said.
#[derive(Debug, Clone)]
pub struct ProviderResponse<T> {
    /// The canonical body.
    pub body: T,
    /// Rate-limit headroom from the headers.
    pub rate_limit: RateLimitInfo,
}

/// A stream of canonical chunks.
pub type ChunkStream = Pin<Box<dyn Stream<Item = Result<ChatChunk, ProviderError>> + Send>>;

/// A streaming answer: the chunks plus what the headers said.
pub struct ProviderStream {
    /// The chunks; the last one carries usage when the provider reports it.
    pub chunks: ChunkStream,
    /// Rate-limit headroom from the headers.
    pub rate_limit: RateLimitInfo,
}

impl fmt::Debug for ProviderStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProviderStream")
            .field("rate_limit", &self.rate_limit)
            .finish_non_exhaustive()
    }
}

/// An upstream LLM API.
///
/// Implementations must be cheap to call concurrently and must not hold locks across awaits.
#[async_trait]
pub trait Provider: Send + Sync + 'static {
    /// The provider kind (`openai`, `anthropic`...), for logs and metrics.
    fn kind(&self) -> &str;

    /// Whether this provider's API can do what `request` asks of `model`, checked before a key
    /// is picked: an [`ProviderError::Unsupported`] moves failover to the next target without
    /// an attempt (nothing is sent, no key or health signal is touched). The default supports
    /// every chat request except an OpenAI Responses one ([`responses_unsupported`]).
    fn supports(&self, model: &str, request: &ChatRequest) -> Result<(), ProviderError> {
        let _ = model;
        responses_unsupported(self.kind(), request)
    }

    /// A chat completion.
    async fn chat(
        &self,
        call: &Call,
        request: &ChatRequest,
    ) -> Result<ProviderResponse<ChatResponse>, ProviderError>;

    /// A streamed chat completion. The returned stream yields canonical chunks; an error item ends it.
    async fn chat_stream(
        &self,
        call: &Call,
        request: &ChatRequest,
    ) -> Result<ProviderStream, ProviderError>;

    /// Embeddings. The default says the provider has none ([`ProviderError::Unsupported`]:
    /// failover moves on to a target that has).
    async fn embed(
        &self,
        call: &Call,
        request: &EmbeddingRequest,
    ) -> Result<ProviderResponse<EmbeddingResponse>, ProviderError> {
        let _ = (call, request);
        Err(ProviderError::Unsupported {
            message: format!(
                "provider kind `{}` does not support embeddings",
                self.kind()
            ),
            param: Some("model".to_owned()),
        })
    }

    /// The input tokens of `request` as the upstream counts them (Anthropic's
    /// `count_tokens`). The default, `None`, says the provider cannot count; the caller then
    /// estimates.
    async fn count_tokens(
        &self,
        call: &Call,
        request: &ChatRequest,
    ) -> Result<Option<u64>, ProviderError> {
        let _ = (call, request);
        Ok(None)
    }

    /// A call about a response the provider stored (OpenAI Responses: retrieve, delete, cancel,
    /// list its input items), answered as it came. The default says the provider stores none.
    async fn stored_response(
        &self,
        call: &Call,
        op: &StoredResponseOp,
    ) -> Result<ProviderResponse<bytes::Bytes>, ProviderError> {
        let _ = (call, op);
        Err(ProviderError::Unsupported {
            message: format!("provider kind `{}` does not store responses", self.kind()),
            param: None,
        })
    }

    /// A call to an OpenAI endpoint the gateway passes on without modelling it (moderations,
    /// image generation, speech; [`ForwardRequest`]): the client's JSON body with `model` set to
    /// the upstream model id, the answer as it came. The default says the provider has none.
    async fn forward(
        &self,
        call: &Call,
        request: &ForwardRequest,
    ) -> Result<ProviderResponse<ForwardAnswer>, ProviderError> {
        let _ = (call, request);
        Err(ProviderError::Unsupported {
            message: format!(
                "provider kind `{}` does not serve `{}`",
                self.kind(),
                request.path
            ),
            param: Some("model".to_owned()),
        })
    }

    /// The models this provider serves. The default is none known.
    async fn list_models(&self, call: &Call) -> Result<Vec<ModelInfo>, ProviderError> {
        let _ = call;
        Ok(Vec::new())
    }
}

/// [`ProviderError::Unsupported`] for a request only OpenAI-format providers serve (legacy
/// Completions, and a Responses request the server could not read as chat messages;
/// [`ChatRequest::openai_only`]): what [`Provider::supports`] answers for it by default.
/// Providers that speak those APIs accept it in their own `supports`.
pub fn responses_unsupported(kind: &str, request: &ChatRequest) -> Result<(), ProviderError> {
    let api = match request.openai_only() {
        // Translated into chat messages by the server: any provider can serve it.
        Some(crate::types::NativeApi::OpenAiResponses) if !request.messages.is_empty() => {
            return Ok(())
        }
        Some(crate::types::NativeApi::OpenAiResponses) => "this OpenAI Responses request",
        Some(_) => "OpenAI's legacy Completions API",
        None => return Ok(()),
    };
    Err(ProviderError::Unsupported {
        message: format!("provider kind `{kind}` does not serve {api}"),
        param: Some("model".to_owned()),
    })
}

/// A request to an OpenAI endpoint the gateway passes on as it came ([`Provider::forward`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardRequest {
    /// The endpoint's path under the API version, as OpenAI spells it (`/moderations`,
    /// `/images/generations`, `/audio/speech`).
    pub path: &'static str,
    /// The public model name (the body's `model`, or the endpoint's default).
    pub model: String,
    /// The client's body, as it came: JSON, or with [`ForwardRequest::content_type`] a
    /// `multipart/form-data` upload.
    pub body: bytes::Bytes,
    /// The content type of a body that is not JSON (an upload: `multipart/form-data` with its
    /// boundary, whose `model` field is rewritten); `None` for JSON.
    pub content_type: Option<String>,
}

/// The answer to a [`ForwardRequest`], as the upstream sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardAnswer {
    /// Its content type (`application/json`, `audio/mpeg`...).
    pub content_type: String,
    /// Its bytes.
    pub body: bytes::Bytes,
    /// Usage, when the answer reports some (image generation by token-priced models).
    pub usage: Option<Usage>,
}

/// What [`Provider::stored_response`] is asked to do with the response `id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResponseOp {
    /// The response's id (`resp_...`).
    pub id: String,
    /// The operation.
    pub kind: StoredResponseKind,
    /// The client's query string, without `?` (empty when none): passed on.
    pub query: String,
}

/// The operations on a stored response (OpenAI: `/v1/responses/{id}...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredResponseKind {
    /// `GET /responses/{id}`.
    Retrieve,
    /// `DELETE /responses/{id}`.
    Delete,
    /// `POST /responses/{id}/cancel` (a background response).
    Cancel,
    /// `GET /responses/{id}/input_items`.
    InputItems,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_hides_every_secret_of_a_credential() {
        let key = Credential::ApiKey(Secret::new("test-key-1"));
        assert_eq!(key.redact("bad test-key-1, test-key-1"), "bad ***, ***");
        assert!(matches!(
            key.redact("nothing here"),
            std::borrow::Cow::Borrowed(_)
        ));
        let aws = Credential::Aws {
            access_key_id: "AKIDEXAMPLE".to_owned(),
            secret_access_key: Secret::new("wJalrXUtnFEMI"),
            session_token: Some(Secret::new("FwoGZXIvYXdz")),
        };
        assert_eq!(
            aws.redact("id AKIDEXAMPLE secret wJalrXUtnFEMI token FwoGZXIvYXdz"),
            "id *** secret *** token ***"
        );
        let short = Credential::ApiKey(Secret::new("abc"));
        assert_eq!(
            short.redact("abc abc"),
            "abc abc",
            "too short to hide safely"
        );
        let err = ProviderError::Auth {
            status: 401,
            message: "key test-key-1 refused".to_owned(),
        }
        .redacted(&key);
        assert_eq!(
            err.to_string(),
            "upstream refused the credential (401): key *** refused"
        );
    }
}
