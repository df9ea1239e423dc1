//! Azure OpenAI: OpenAI bodies at deployment URLs, with the `api-key` header.
//!
//! Classic URLs are `{base}/openai/deployments/{deployment}/chat/completions?api-version=...` (and
//! `/embeddings`), where `base` is the resource root (`https://{resource}.openai.azure.com`) and the
//! deployment chooses the model. The deployment is looked up in [`AzureConfig::deployments`] by the
//! upstream model id; a model without an entry is its own deployment name.
//!
//! A base URL ending in `/openai/v1` selects the v1 API instead: `{base}/chat/completions` with the
//! deployment as the body's `model`, and `api-version` only when configured. The Responses API
//! (`/openai/v1/responses`) is the v1 API's whichever base URL is configured.
//!
//! Auth is `api-key: <key>`. A key configured as `Bearer <token>` (a Microsoft Entra token) is sent
//! as `Authorization` instead.
//!
//! Bodies, streams and errors are OpenAI's ([`crate::openai`]); Azure's `choices: []` first chunk,
//! `prompt_filter_results`, content-filter 400s and "retry after N seconds" 429s are handled there
//! and in [`crate::classify`].

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use gateway_core::types::{
    ChatRequest, ChatResponse, EmbeddingRequest, EmbeddingResponse, ModelInfo,
};
use gateway_core::{
    Call, Credential, Passthrough, Provider, ProviderError, ProviderResponse, ProviderStream,
};
use http::header::{HeaderName, HeaderValue, AUTHORIZATION};
use http::Method;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use crate::classify::classify;
use crate::headers::rate_limit_info;
use crate::http::{header_value, json_request, HttpClient};
use crate::openai::{
    accept_event_stream, chat_body, embeddings_body, open_chunk_stream, parse_chat_response,
    parse_embeddings, parse_models, pass_chat_response, push_traceparent, unsupported_credential,
    Quirks,
};
use crate::responses;

/// The `api-version` used when none is configured.
pub const DEFAULT_API_VERSION: &str = "2024-10-21";

/// Characters escaped in a deployment path segment.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.');

/// Settings of an Azure OpenAI resource.
#[derive(Debug, Clone, Default)]
pub struct AzureConfig {
    /// The resource root, `https://{resource}.openai.azure.com` (or `.../openai/v1` for the v1 API).
    pub base_url: String,
    /// `api-version`; [`DEFAULT_API_VERSION`] for classic URLs when `None`.
    pub api_version: Option<String>,
    /// Upstream model id → deployment name.
    pub deployments: HashMap<String, String>,
    /// Extra headers sent on every request.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// An Azure OpenAI resource.
#[derive(Debug, Clone)]
pub struct AzureProvider {
    /// Resource root without `/openai` (classic), or the v1 base.
    base: Arc<str>,
    v1: bool,
    api_version: Option<Arc<str>>,
    deployments: Arc<HashMap<String, String>>,
    headers: Arc<[(HeaderName, HeaderValue)]>,
    client: HttpClient,
}

impl AzureProvider {
    /// A provider for `config`, sending through `client`.
    pub fn new(config: AzureConfig, client: HttpClient) -> Self {
        let trimmed = config.base_url.trim_end_matches('/');
        let v1 = trimmed.ends_with("/openai/v1");
        let base = if v1 {
            trimmed
        } else {
            trimmed.strip_suffix("/openai").unwrap_or(trimmed)
        };
        let api_version = match (&config.api_version, v1) {
            (Some(v), _) => Some(v.as_str().into()),
            (None, false) => Some(DEFAULT_API_VERSION.into()),
            (None, true) => None,
        };
        AzureProvider {
            base: base.into(),
            v1,
            api_version,
            deployments: Arc::new(config.deployments),
            headers: config.headers.into(),
            client,
        }
    }

    /// The deployment serving `model`.
    pub fn deployment<'a>(&'a self, model: &'a str) -> &'a str {
        self.deployments.get(model).map_or(model, String::as_str)
    }

    /// The URL of `operation` (`chat/completions`, `embeddings`) for `model`.
    pub fn url(&self, model: &str, operation: &str) -> String {
        let mut url = if self.v1 {
            format!("{}/{operation}", self.base)
        } else {
            let dep = utf8_percent_encode(self.deployment(model), SEGMENT);
            format!("{}/openai/deployments/{dep}/{operation}", self.base)
        };
        if let Some(v) = &self.api_version {
            url.push_str("?api-version=");
            url.extend(utf8_percent_encode(v, SEGMENT));
        }
        url
    }

    /// The Responses API's URL: it lives in the v1 API only (`{resource}/openai/v1/responses`,
    /// the deployment as the body's `model`), whichever form the base URL has.
    fn responses_url(&self) -> String {
        let mut url = if self.v1 {
            format!("{}/responses", self.base)
        } else {
            format!("{}/openai/v1/responses", self.base)
        };
        if let (true, Some(v)) = (self.v1, &self.api_version) {
            url.push_str("?api-version=");
            url.extend(utf8_percent_encode(v, SEGMENT));
        }
        url
    }

    fn request_headers(
        &self,
        call: &Call,
    ) -> Result<Vec<(HeaderName, HeaderValue)>, ProviderError> {
        let mut headers = self.headers.to_vec();
        match call.credential.as_ref() {
            Credential::ApiKey(key) => {
                let key = key.expose();
                if key.starts_with("Bearer ") {
                    headers.push((AUTHORIZATION, header_value(key, true)?));
                } else if !key.is_empty() {
                    headers.push((HeaderName::from_static("api-key"), header_value(key, true)?));
                }
            }
            Credential::None => {}
            other => return Err(unsupported_credential("azure", other)),
        }
        push_traceparent(&mut headers, call)?;
        Ok(headers)
    }
}

#[async_trait]
impl Provider for AzureProvider {
    fn kind(&self) -> &str {
        "azure"
    }

    /// Everything, the Responses API included (v1 API), but the legacy Completions API.
    fn supports(&self, _model: &str, request: &ChatRequest) -> Result<(), ProviderError> {
        if request.openai_only() == Some(gateway_core::types::NativeApi::OpenAiCompletions) {
            return gateway_core::provider::responses_unsupported("azure", request);
        }
        Ok(())
    }

    async fn chat(
        &self,
        call: &Call,
        request: &ChatRequest,
    ) -> Result<ProviderResponse<ChatResponse>, ProviderError> {
        if request.is_responses() {
            let headers = self.request_headers(call)?;
            return responses::fetch(
                &self.client,
                &self.responses_url(),
                &headers,
                request,
                self.deployment(&call.model),
                call.timeout,
            )
            .await;
        }
        let body = chat_body(
            request,
            self.deployment(&call.model),
            false,
            Quirks::for_kind("azure"),
        )?;
        let url = self.url(&call.model, "chat/completions");
        let req = json_request(Method::POST, &url, &self.request_headers(call)?, body)?;
        let resp = self.client.fetch(req, call.timeout, classify).await?;
        Ok(ProviderResponse {
            body: if call.passthrough == Passthrough::OpenAiChat {
                pass_chat_response(resp.body())?
            } else {
                parse_chat_response(resp.body())?
            },
            rate_limit: rate_limit_info(resp.headers()),
        })
    }

    async fn chat_stream(
        &self,
        call: &Call,
        request: &ChatRequest,
    ) -> Result<ProviderStream, ProviderError> {
        if request.is_responses() {
            let headers = self.request_headers(call)?;
            return responses::open_stream(
                &self.client,
                &self.responses_url(),
                &headers,
                request,
                self.deployment(&call.model),
                call.timeout,
            )
            .await;
        }
        let body = chat_body(
            request,
            self.deployment(&call.model),
            true,
            Quirks::for_kind("azure"),
        )?;
        let url = self.url(&call.model, "chat/completions");
        let mut req = json_request(Method::POST, &url, &self.request_headers(call)?, body)?;
        accept_event_stream(&mut req);
        open_chunk_stream(
            &self.client,
            req,
            call.timeout,
            call.passthrough == Passthrough::OpenAiChat,
        )
        .await
    }

    async fn embed(
        &self,
        call: &Call,
        request: &EmbeddingRequest,
    ) -> Result<ProviderResponse<EmbeddingResponse>, ProviderError> {
        let body = embeddings_body(request, self.deployment(&call.model))?;
        let url = self.url(&call.model, "embeddings");
        let req = json_request(Method::POST, &url, &self.request_headers(call)?, body)?;
        let resp = self.client.fetch(req, call.timeout, classify).await?;
        Ok(ProviderResponse {
            body: parse_embeddings(resp.body())?,
            rate_limit: rate_limit_info(resp.headers()),
        })
    }

    /// Image generation and speech at the deployment's own paths (Azure has no moderations
    /// endpoint: its content filters run on every call); `model` is the deployment.
    async fn forward(
        &self,
        call: &Call,
        request: &gateway_core::ForwardRequest,
    ) -> Result<ProviderResponse<gateway_core::ForwardAnswer>, ProviderError> {
        if request.path == "/moderations" {
            return Err(ProviderError::Unsupported {
                message:
                    "azure has no moderations endpoint (its content filters run on every call)"
                        .to_owned(),
                param: Some("model".to_owned()),
            });
        }
        let url = self.url(&call.model, request.path.trim_start_matches('/'));
        let headers = self.request_headers(call)?;
        crate::openai::forward_json(
            &self.client,
            &url,
            &headers,
            self.deployment(&call.model),
            request,
            call.timeout,
        )
        .await
    }

    async fn stored_response(
        &self,
        call: &Call,
        op: &gateway_core::StoredResponseOp,
    ) -> Result<ProviderResponse<Bytes>, ProviderError> {
        let headers = self.request_headers(call)?;
        responses::stored(
            &self.client,
            &self.responses_url(),
            &headers,
            op,
            call.timeout,
        )
        .await
    }

    /// The configured deployments' model names; when none are configured, the resource's
    /// `/openai/models` list.
    async fn list_models(&self, call: &Call) -> Result<Vec<ModelInfo>, ProviderError> {
        if !self.deployments.is_empty() {
            let mut models: Vec<ModelInfo> = self
                .deployments
                .keys()
                .map(|id| ModelInfo {
                    id: id.clone(),
                    owned_by: "azure".into(),
                    created: 0,
                })
                .collect();
            models.sort_by(|a, b| a.id.cmp(&b.id));
            return Ok(models);
        }
        let url = if self.v1 {
            self.url("", "models")
        } else {
            let mut u = format!("{}/openai/models", self.base);
            if let Some(v) = &self.api_version {
                u.push_str("?api-version=");
                u.extend(utf8_percent_encode(v, SEGMENT));
            }
            u
        };
        let req = json_request(
            Method::GET,
            &url,
            &self.request_headers(call)?,
            Bytes::new(),
        )?;
        let resp = self.client.fetch(req, call.timeout, classify).await?;
        parse_models(resp.body())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::HttpConfig;

    fn provider(base: &str, version: Option<&str>) -> AzureProvider {
        let mut deployments = HashMap::new();
        deployments.insert("gpt-4o".to_owned(), "prod gpt4o".to_owned());
        AzureProvider::new(
            AzureConfig {
                base_url: base.into(),
                api_version: version.map(str::to_owned),
                deployments,
                headers: Vec::new(),
            },
            HttpClient::new(&HttpConfig::default()).expect("client"),
        )
    }

    #[test]
    fn url_shapes() {
        let p = provider("https://res.openai.azure.com/", None);
        assert_eq!(
            p.url("gpt-4o", "chat/completions"),
            "https://res.openai.azure.com/openai/deployments/prod%20gpt4o/chat/completions?api-version=2024-10-21"
        );
        assert_eq!(
            p.url("text-embedding-3-small", "embeddings"),
            "https://res.openai.azure.com/openai/deployments/text-embedding-3-small/embeddings?api-version=2024-10-21",
            "a model without a mapping is its own deployment"
        );
        let p = provider(
            "https://res.openai.azure.com/openai",
            Some("2025-01-01-preview"),
        );
        assert_eq!(
            p.url("m", "chat/completions"),
            "https://res.openai.azure.com/openai/deployments/m/chat/completions?api-version=2025-01-01-preview",
            "a base ending in /openai is not doubled"
        );
        let p = provider("https://res.openai.azure.com/openai/v1", None);
        assert_eq!(
            p.url("gpt-4o", "chat/completions"),
            "https://res.openai.azure.com/openai/v1/chat/completions",
            "v1 API: no deployment in the path, no default api-version"
        );
        assert_eq!(p.deployment("gpt-4o"), "prod gpt4o");
    }
}
