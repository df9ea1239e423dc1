//! Errors, classified by what failover may do about them.
//!
//! Every adapter turns a provider's status, body and headers into one [`ProviderError`]; the failover
//! engine only looks at [`ProviderError::scope`], never at strings (pingora-error's `RetryType`).

use std::time::Duration;

use crate::ratelimit::RateLimitInfo;

/// Who a rate limit applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateLimitScope {
    /// This key is over its per-minute limit: rest it until the reset and use another key.
    Key,
    /// This key's quota or credit is exhausted for a long time (days): take it out of rotation.
    Quota,
    /// The whole account, project or region is throttled: other keys of the provider will not help.
    Provider,
}

impl RateLimitScope {
    /// How a message says it: `key`, `quota exhausted`, `account`.
    pub fn describe(self) -> &'static str {
        match self {
            RateLimitScope::Key => "key",
            RateLimitScope::Quota => "quota exhausted",
            RateLimitScope::Provider => "account",
        }
    }
}

/// What the failover engine may do after an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailoverScope {
    /// The caller's fault: return it as is, try nothing else.
    Caller,
    /// The key is the problem: try another key of the same provider, then other targets.
    Key,
    /// The provider is the problem but it may pass: another attempt at the same provider (another
    /// key) after a backoff is worth it, then other targets.
    Transient,
    /// The provider is the problem: go to the next target.
    Provider,
    /// Stop without trying anything else (the caller went away).
    Stop,
}

/// An upstream failure, classified.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProviderError {
    /// HTTP 429 or an equivalent throttling signal.
    #[error("rate limited ({}): {message}", scope.describe())]
    RateLimited {
        /// How long the provider asked us to wait.
        retry_after: Option<Duration>,
        /// Remaining requests or tokens reported with the refusal (boxed: errors stay small).
        remaining: Option<Box<RateLimitInfo>>,
        /// Who the limit applies to.
        scope: RateLimitScope,
        /// The provider's message.
        message: String,
    },
    /// The provider is out of capacity (Anthropic 529, 503 overloaded).
    #[error("provider overloaded: {message}")]
    Overloaded {
        /// How long to wait, if said.
        retry_after: Option<Duration>,
        /// The provider's message.
        message: String,
    },
    /// A 5xx answer.
    #[error("upstream server error {status}: {message}")]
    Server {
        /// The HTTP status.
        status: u16,
        /// The provider's message.
        message: String,
    },
    /// No answer in time.
    #[error("upstream timed out")]
    Timeout,
    /// The connection could not be made or broke.
    #[error("upstream connection failed: {0}")]
    Connect(String),
    /// The key was refused (401, 403): take it out of rotation.
    #[error("upstream refused the credential ({status}): {message}")]
    Auth {
        /// The HTTP status.
        status: u16,
        /// The provider's message.
        message: String,
    },
    /// The model or deployment does not exist at this provider: route elsewhere.
    #[error("model not found upstream: {message}")]
    NotFound {
        /// The provider's message.
        message: String,
    },
    /// The request is invalid: the caller's fault.
    #[error("{message}")]
    BadRequest {
        /// The HTTP status (400, 413, 422).
        status: u16,
        /// The provider's message.
        message: String,
        /// The offending parameter, if known.
        param: Option<String>,
        /// The provider's error code, if any.
        code: Option<String>,
    },
    /// The prompt does not fit the model's context window: the caller's fault.
    #[error("{message}")]
    ContextLengthExceeded {
        /// The provider's message.
        message: String,
    },
    /// The content was blocked by a policy: the caller's fault.
    #[error("{message}")]
    ContentFiltered {
        /// The provider's message.
        message: String,
    },
    /// The request asks for something this provider's API cannot do (`n` above 1 on an API
    /// with one answer per request, say): another target may, so failover moves on; nothing was
    /// sent, and the provider's health is untouched.
    #[error("{message}")]
    Unsupported {
        /// What is not supported, and by whom.
        message: String,
        /// The request field that asks for it.
        param: Option<String>,
    },
    /// The upstream sent something that is not its documented format.
    #[error("upstream sent an invalid response: {0}")]
    Protocol(String),
    /// The request was cancelled (client went away).
    #[error("request cancelled")]
    Cancelled,
}

impl ProviderError {
    /// The error with every secret of `credential` taken out of its messages (see
    /// [`Credential::redact`]).
    ///
    /// [`Credential::redact`]: crate::provider::Credential::redact
    pub fn redacted(mut self, credential: &crate::provider::Credential) -> ProviderError {
        let clean = |m: &mut String| {
            if let std::borrow::Cow::Owned(r) = credential.redact(m) {
                *m = r;
            }
        };
        match &mut self {
            ProviderError::RateLimited { message, .. }
            | ProviderError::Overloaded { message, .. }
            | ProviderError::Server { message, .. }
            | ProviderError::Auth { message, .. }
            | ProviderError::NotFound { message }
            | ProviderError::BadRequest { message, .. }
            | ProviderError::ContextLengthExceeded { message }
            | ProviderError::ContentFiltered { message }
            | ProviderError::Unsupported { message, .. }
            | ProviderError::Connect(message)
            | ProviderError::Protocol(message) => clean(message),
            ProviderError::Timeout | ProviderError::Cancelled => {}
        }
        self
    }

    /// What failover may do.
    pub fn scope(&self) -> FailoverScope {
        match self {
            ProviderError::RateLimited { scope, .. } => match scope {
                RateLimitScope::Key | RateLimitScope::Quota => FailoverScope::Key,
                RateLimitScope::Provider => FailoverScope::Provider,
            },
            ProviderError::Auth { .. } => FailoverScope::Key,
            ProviderError::Overloaded { .. }
            | ProviderError::NotFound { .. }
            | ProviderError::Unsupported { .. } => FailoverScope::Provider,
            ProviderError::Server { .. }
            | ProviderError::Timeout
            | ProviderError::Connect(_)
            | ProviderError::Protocol(_) => FailoverScope::Transient,
            ProviderError::BadRequest { .. }
            | ProviderError::ContextLengthExceeded { .. }
            | ProviderError::ContentFiltered { .. } => FailoverScope::Caller,
            ProviderError::Cancelled => FailoverScope::Stop,
        }
    }

    /// The wait hint carried by the error, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ProviderError::RateLimited { retry_after, .. }
            | ProviderError::Overloaded { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// A short stable name of the class, used in metrics and logs.
    pub fn outcome(&self) -> &'static str {
        match self {
            ProviderError::RateLimited { .. } => "rate_limited",
            ProviderError::Overloaded { .. } => "overloaded",
            ProviderError::Server { .. } | ProviderError::Protocol(_) => "server_error",
            ProviderError::Timeout => "timeout",
            ProviderError::Connect(_) => "connect_error",
            ProviderError::Auth { .. } => "auth_error",
            ProviderError::NotFound { .. }
            | ProviderError::Unsupported { .. }
            | ProviderError::BadRequest { .. }
            | ProviderError::ContextLengthExceeded { .. }
            | ProviderError::ContentFiltered { .. } => "client_error",
            ProviderError::Cancelled => "cancelled",
        }
    }

    /// Whether this error says the provider is unhealthy (counts towards ejection).
    pub fn is_provider_failure(&self) -> bool {
        matches!(
            self.scope(),
            FailoverScope::Transient | FailoverScope::Provider
        ) && !matches!(
            self,
            ProviderError::NotFound { .. } | ProviderError::Unsupported { .. }
        )
    }
}

/// Why the engine could not serve a request.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    /// No route, provider or key serves this model.
    #[error("model `{0}` is not served by this gateway")]
    UnknownModel(String),
    /// The request is invalid before any provider is called.
    #[error("{0}")]
    InvalidRequest(String),
    /// Every candidate is resting after rate limits.
    #[error("all keys are rate limited; retry after {retry_after:?}")]
    AllRateLimited {
        /// The earliest time one comes back.
        retry_after: Duration,
    },
    /// Every candidate is out of service (ejected after failures, or disabled: a refused
    /// credential, an exhausted quota), none merely resting.
    #[error("every upstream key for this model is out of service; one returns in {retry_after:?}")]
    Unavailable {
        /// When the earliest one may be tried again.
        retry_after: Duration,
    },
    /// The caller's own error, as the provider reported it (never retried).
    #[error(transparent)]
    Caller(ProviderError),
    /// Every attempt failed; carries the last upstream reason.
    #[error("all {attempts} upstream attempts failed; last error: {last}")]
    Exhausted {
        /// How many attempts were made.
        attempts: u32,
        /// The last upstream error.
        last: ProviderError,
    },
    /// The overall deadline passed.
    #[error("request deadline exceeded after {attempts} attempts")]
    DeadlineExceeded {
        /// How many attempts were made.
        attempts: u32,
    },
    /// The caller went away.
    #[error("request cancelled")]
    Cancelled,
}

impl EngineError {
    /// The HTTP status a server should answer with.
    pub fn http_status(&self) -> u16 {
        match self {
            EngineError::UnknownModel(_) => 404,
            EngineError::InvalidRequest(_) => 400,
            // Every candidate failed or rests: the gateway is out of capacity for this model,
            // a 503 (429 is kept for the caller's own limits, which admission enforces).
            EngineError::AllRateLimited { .. } => 503,
            EngineError::Unavailable { .. } => 503,
            EngineError::Caller(e) => match e {
                ProviderError::BadRequest { status, .. } => *status,
                _ => 400,
            },
            EngineError::Exhausted { last, .. } => match last {
                ProviderError::Timeout => 504,
                ProviderError::RateLimited { .. } | ProviderError::Overloaded { .. } => 503,
                ProviderError::NotFound { .. } => 404,
                ProviderError::Unsupported { .. } => 400,
                _ => 502,
            },
            EngineError::DeadlineExceeded { .. } => 504,
            EngineError::Cancelled => 499,
        }
    }

    /// Whether the request failed because every candidate was rate limited (resting, or its
    /// last attempt answered 429).
    pub fn is_rate_limited(&self) -> bool {
        matches!(
            self,
            EngineError::AllRateLimited { .. }
                | EngineError::Exhausted {
                    last: ProviderError::RateLimited { .. },
                    ..
                }
        )
    }

    /// Wait hint for a `retry-after` header.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            EngineError::AllRateLimited { retry_after }
            | EngineError::Unavailable { retry_after } => Some(*retry_after),
            EngineError::Exhausted { last, .. } => last.retry_after(),
            _ => None,
        }
    }
}
