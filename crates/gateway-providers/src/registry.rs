//! Building providers from configuration.
//!
//! [`kinds`] lists every provider kind the gateway knows, with its default base URL, whether it
//! needs a key, and which wire-format family implements it. [`build_provider`] turns one
//! [`ProviderSettings`] (a `[[providers]]` entry of the configuration) into an
//! `Arc<dyn Provider>` sharing the given [`HttpClient`].
//!
//! ```
//! use gateway_providers::registry::{build_provider, kind_info, ProviderSettings};
//! use gateway_providers::{HttpClient, HttpConfig};
//!
//! let client = HttpClient::new(&HttpConfig::default()).expect("client");
//! let groq = ProviderSettings::new("fast", "groq");
//! let provider = build_provider(&groq, &client).expect("groq has a default base URL");
//! assert_eq!(provider.kind(), "groq");
//! assert_eq!(kind_info("groq").and_then(|k| k.default_base_url), Some("https://api.groq.com/openai/v1"));
//! assert!(build_provider(&ProviderSettings::new("x", "openai_compatible"), &client).is_err());
//! ```

use std::collections::HashMap;
use std::sync::Arc;

use gateway_core::Provider;
use http::header::{HeaderName, HeaderValue};

use crate::anthropic::{AnthropicConfig, AnthropicProvider};
use crate::azure::{AzureConfig, AzureProvider};
use crate::bedrock::{BedrockConfig, BedrockProvider};
use crate::cohere::{CohereConfig, CohereProvider};
use crate::gemini::{GeminiConfig, GeminiProvider};
use crate::http::{validate_base_url, HttpClient};
use crate::openai::{OpenAiConfig, OpenAiProvider, Quirks};
use crate::vertex::{VertexConfig, VertexProvider};

/// One `[[providers]]` entry of the configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProviderSettings {
    /// The provider's name in the configuration.
    pub name: String,
    /// Its kind (`openai`, `groq`, `azure`, `anthropic`...; see [`kinds`]).
    pub kind: String,
    /// The base URL; the kind's default when `None`. For OpenAI-shaped kinds it includes the
    /// version (`https://api.openai.com/v1`); for Anthropic and Azure it is the host root.
    pub base_url: Option<String>,
    /// Azure `api-version` (default `2024-10-21`).
    pub api_version: Option<String>,
    /// Azure: model name → deployment name (a model without an entry is its own deployment).
    pub deployments: HashMap<String, String>,
    /// AWS region (Bedrock).
    pub region: Option<String>,
    /// Bedrock: Anthropic clients' requests for Claude go to `InvokeModel` as they came.
    pub claude_invoke: bool,
    /// Google Cloud project (Vertex).
    pub project: Option<String>,
    /// Google Cloud location (Vertex).
    pub location: Option<String>,
    /// Extra headers sent on every request (OpenRouter `HTTP-Referer` and `X-Title`, Anthropic
    /// `anthropic-beta`...).
    pub headers: Vec<(String, String)>,
}

impl ProviderSettings {
    /// Settings with a name and a kind, everything else default.
    pub fn new(name: impl Into<String>, kind: impl Into<String>) -> Self {
        ProviderSettings {
            name: name.into(),
            kind: kind.into(),
            ..ProviderSettings::default()
        }
    }

    /// The same settings with a base URL.
    pub fn with_base_url(mut self, base_url: impl Into<String>) -> Self {
        self.base_url = Some(base_url.into());
        self
    }
}

/// What the gateway knows about a provider kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KindInfo {
    /// The kind's name in the configuration.
    pub kind: &'static str,
    /// The base URL used when none is configured (`None`: it must be configured).
    pub default_base_url: Option<&'static str>,
    /// Whether calls need a key (local servers do not).
    pub key_required: bool,
    /// The wire-format family: `openai`, `azure`, `anthropic`, `gemini`, `vertex`, `bedrock` or
    /// `cohere`.
    pub family: &'static str,
    /// Whether the kind serves embeddings (advisory: the call is made anyway).
    pub embeddings: bool,
}

const fn openai_kind(
    kind: &'static str,
    base: Option<&'static str>,
    key_required: bool,
    embeddings: bool,
) -> KindInfo {
    KindInfo {
        kind,
        default_base_url: base,
        key_required,
        family: "openai",
        embeddings,
    }
}

static KINDS: &[KindInfo] = &[
    openai_kind("openai", Some("https://api.openai.com/v1"), true, true),
    openai_kind("groq", Some("https://api.groq.com/openai/v1"), true, false),
    openai_kind("mistral", Some("https://api.mistral.ai/v1"), true, true),
    openai_kind("together", Some("https://api.together.xyz/v1"), true, true),
    openai_kind(
        "fireworks",
        Some("https://api.fireworks.ai/inference/v1"),
        true,
        true,
    ),
    openai_kind("deepseek", Some("https://api.deepseek.com"), true, false),
    openai_kind("xai", Some("https://api.x.ai/v1"), true, false),
    openai_kind("perplexity", Some("https://api.perplexity.ai"), true, false),
    openai_kind("cerebras", Some("https://api.cerebras.ai/v1"), true, false),
    openai_kind(
        "openrouter",
        Some("https://openrouter.ai/api/v1"),
        true,
        false,
    ),
    openai_kind(
        "deepinfra",
        Some("https://api.deepinfra.com/v1/openai"),
        true,
        true,
    ),
    openai_kind(
        "sambanova",
        Some("https://api.sambanova.ai/v1"),
        true,
        false,
    ),
    openai_kind(
        "nebius",
        Some("https://api.studio.nebius.com/v1"),
        true,
        true,
    ),
    openai_kind(
        "hyperbolic",
        Some("https://api.hyperbolic.xyz/v1"),
        true,
        false,
    ),
    openai_kind(
        "novita",
        Some("https://api.novita.ai/v3/openai"),
        true,
        true,
    ),
    openai_kind("moonshot", Some("https://api.moonshot.ai/v1"), true, false),
    openai_kind(
        "dashscope",
        Some("https://dashscope-intl.aliyuncs.com/compatible-mode/v1"),
        true,
        true,
    ),
    openai_kind(
        "nvidia",
        Some("https://integrate.api.nvidia.com/v1"),
        true,
        true,
    ),
    openai_kind(
        "siliconflow",
        Some("https://api.siliconflow.cn/v1"),
        true,
        true,
    ),
    openai_kind(
        "featherless",
        Some("https://api.featherless.ai/v1"),
        true,
        false,
    ),
    openai_kind("ollama", Some("http://localhost:11434/v1"), false, true),
    openai_kind("vllm", Some("http://localhost:8000/v1"), false, true),
    openai_kind("lmstudio", Some("http://localhost:1234/v1"), false, true),
    openai_kind("openai_compatible", None, false, true),
    KindInfo {
        kind: "azure",
        default_base_url: None,
        key_required: true,
        family: "azure",
        embeddings: true,
    },
    KindInfo {
        kind: "anthropic",
        default_base_url: Some("https://api.anthropic.com"),
        key_required: true,
        family: "anthropic",
        embeddings: false,
    },
    KindInfo {
        kind: "gemini",
        default_base_url: Some(crate::gemini::DEFAULT_BASE_URL),
        key_required: true,
        family: "gemini",
        embeddings: true,
    },
    KindInfo {
        kind: "vertex",
        // For the default location; another `location` gets its own endpoint.
        default_base_url: Some("https://us-central1-aiplatform.googleapis.com"),
        key_required: true,
        family: "vertex",
        embeddings: true,
    },
    KindInfo {
        kind: "bedrock",
        // For the default region; another `region` gets its own endpoint.
        default_base_url: Some("https://bedrock-runtime.us-east-1.amazonaws.com"),
        key_required: true,
        family: "bedrock",
        embeddings: false,
    },
    KindInfo {
        kind: "cohere",
        default_base_url: Some(crate::cohere::DEFAULT_BASE_URL),
        key_required: true,
        family: "cohere",
        embeddings: true,
    },
];

/// Every known provider kind.
pub fn kinds() -> &'static [KindInfo] {
    KINDS
}

/// What the gateway knows about `kind`.
pub fn kind_info(kind: &str) -> Option<&'static KindInfo> {
    KINDS.iter().find(|k| k.kind == kind)
}

/// Why a provider could not be built from its settings. Messages name the configuration field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    /// The kind is not one of [`kinds`].
    #[error("providers.kind: unknown kind `{kind}` (provider `{provider}`); known kinds: {known}")]
    UnknownKind {
        /// The provider's name.
        provider: String,
        /// The unknown kind.
        kind: String,
        /// The known kinds, comma-separated.
        known: String,
    },
    /// A field the kind needs is missing.
    #[error("providers.{field}: required for kind `{kind}` (provider `{provider}`)")]
    Missing {
        /// The provider's name.
        provider: String,
        /// The kind.
        kind: String,
        /// The missing field.
        field: &'static str,
    },
    /// A field has an unusable value.
    #[error("providers.{field}: {reason} (provider `{provider}`)")]
    Invalid {
        /// The provider's name.
        provider: String,
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The kind is known but this build has no adapter for its family yet.
    #[error(
        "providers.kind: kind `{kind}` is not supported by this build (provider `{provider}`)"
    )]
    Unsupported {
        /// The provider's name.
        provider: String,
        /// The kind.
        kind: String,
    },
}

/// Builds the provider `settings` describe, sending through `client`.
pub fn build_provider(
    settings: &ProviderSettings,
    client: &HttpClient,
) -> Result<Arc<dyn Provider>, BuildError> {
    let info = kind_info(&settings.kind).ok_or_else(|| BuildError::UnknownKind {
        provider: settings.name.clone(),
        kind: settings.kind.clone(),
        known: KINDS.iter().map(|k| k.kind).collect::<Vec<_>>().join(", "),
    })?;
    let invalid = |field: &'static str, reason: String| BuildError::Invalid {
        provider: settings.name.clone(),
        field,
        reason,
    };
    let headers = settings
        .headers
        .iter()
        .map(|(k, v)| {
            let name = HeaderName::from_bytes(k.trim().as_bytes())
                .map_err(|_| invalid("headers", format!("`{k}` is not a valid header name")))?;
            let value = HeaderValue::from_str(v.trim())
                .map_err(|_| invalid("headers", format!("the value of `{k}` is not valid")))?;
            Ok((name, value))
        })
        .collect::<Result<Vec<_>, BuildError>>()?;
    let base_url = || -> Result<String, BuildError> {
        let base = settings
            .base_url
            .as_deref()
            .map(str::trim)
            .filter(|b| !b.is_empty())
            .or(info.default_base_url)
            .ok_or_else(|| BuildError::Missing {
                provider: settings.name.clone(),
                kind: settings.kind.clone(),
                field: "base_url",
            })?;
        validate_base_url(base).map_err(|r| invalid("base_url", r))?;
        Ok(base.trim_end_matches('/').to_owned())
    };

    // A configured base URL, validated; `None` when the endpoint follows from other settings.
    let explicit_base_url = || -> Result<Option<String>, BuildError> {
        match settings
            .base_url
            .as_deref()
            .map(str::trim)
            .filter(|b| !b.is_empty())
        {
            Some(base) => {
                validate_base_url(base).map_err(|r| invalid("base_url", r))?;
                Ok(Some(base.trim_end_matches('/').to_owned()))
            }
            None => Ok(None),
        }
    };

    let provider: Arc<dyn Provider> = match info.family {
        "openai" => Arc::new(OpenAiProvider::new(
            OpenAiConfig {
                kind: info.kind.to_owned(),
                base_url: base_url()?,
                headers,
                quirks: Quirks::for_kind(info.kind),
            },
            client.clone(),
        )),
        "azure" => {
            let api_version = settings.api_version.clone();
            if api_version.as_deref().is_some_and(|v| v.trim().is_empty()) {
                return Err(invalid("api_version", "must not be empty".into()));
            }
            Arc::new(AzureProvider::new(
                AzureConfig {
                    base_url: base_url()?,
                    api_version,
                    deployments: settings.deployments.clone(),
                    headers,
                },
                client.clone(),
            ))
        }
        "anthropic" => Arc::new(AnthropicProvider::new(
            AnthropicConfig {
                base_url: base_url()?,
                headers,
            },
            client.clone(),
        )),
        "gemini" => Arc::new(GeminiProvider::new(
            &GeminiConfig {
                base_url: Some(base_url()?),
            },
            client.clone(),
        )),
        "cohere" => Arc::new(CohereProvider::new(
            &CohereConfig {
                base_url: Some(base_url()?),
            },
            client.clone(),
        )),
        // Vertex and Bedrock derive their endpoint from the location or region unless one is set.
        "vertex" => {
            let location = settings
                .location
                .as_deref()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .unwrap_or(crate::vertex::DEFAULT_LOCATION)
                .to_owned();
            Arc::new(VertexProvider::new(
                &VertexConfig {
                    project: settings.project.clone(),
                    base_url: explicit_base_url()?,
                    location,
                },
                client.clone(),
            ))
        }
        "bedrock" => {
            let base = explicit_base_url()?;
            let region = settings
                .region
                .as_deref()
                .map(str::trim)
                .filter(|r| !r.is_empty())
                .map(str::to_owned)
                .or_else(|| base.as_deref().and_then(crate::bedrock::region_from_url))
                .unwrap_or_else(|| crate::bedrock::DEFAULT_REGION.to_owned());
            Arc::new(BedrockProvider::new(
                &BedrockConfig {
                    region,
                    base_url: base,
                    claude_invoke: settings.claude_invoke,
                },
                client.clone(),
            ))
        }
        _ => {
            return Err(BuildError::Unsupported {
                provider: settings.name.clone(),
                kind: settings.kind.clone(),
            })
        }
    };
    Ok(provider)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::HttpConfig;

    fn client() -> HttpClient {
        HttpClient::new(&HttpConfig::default()).expect("client builds")
    }

    #[test]
    fn every_kind_builds_with_its_defaults_or_a_base_url() {
        let client = client();
        for info in kinds() {
            let mut s = ProviderSettings::new("p", info.kind);
            if info.default_base_url.is_none() {
                assert!(
                    matches!(
                        build_provider(&s, &client),
                        Err(BuildError::Missing {
                            field: "base_url",
                            ..
                        })
                    ),
                    "kind {} without a default must ask for base_url",
                    info.kind
                );
                s.base_url = Some("http://127.0.0.1:9/prefix/v1".into());
            }
            let p = build_provider(&s, &client)
                .unwrap_or_else(|e| panic!("kind {} should build: {e}", info.kind));
            assert_eq!(p.kind(), info.kind, "provider reports its kind");
        }
    }

    #[test]
    fn kind_names_are_unique_and_defaults_valid() {
        let mut seen = std::collections::HashSet::new();
        for k in kinds() {
            assert!(seen.insert(k.kind), "duplicate kind {}", k.kind);
            if let Some(base) = k.default_base_url {
                assert!(validate_base_url(base).is_ok(), "{base}");
            }
        }
    }

    #[test]
    fn errors_name_the_field() {
        let client = client();
        let err = |s: ProviderSettings| match build_provider(&s, &client) {
            Err(e) => e.to_string(),
            Ok(_) => "built".into(),
        };
        assert_eq!(
            err(ProviderSettings::new("local", "openai_compatible")),
            "providers.base_url: required for kind `openai_compatible` (provider `local`)"
        );
        assert_eq!(
            err(ProviderSettings::new("x", "openai").with_base_url("api.openai.com")),
            "providers.base_url: `api.openai.com` must start with http:// or https:// (provider `x`)"
        );
        let mut bad_header = ProviderSettings::new("o", "openrouter");
        bad_header.headers.push(("X Title".into(), "gw".into()));
        assert_eq!(
            err(bad_header),
            "providers.headers: `X Title` is not a valid header name (provider `o`)"
        );
        assert!(err(ProviderSettings::new("n", "nope"))
            .starts_with("providers.kind: unknown kind `nope`"));
    }
}
