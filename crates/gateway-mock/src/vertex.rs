//! Google service-account OAuth for the Vertex dialect: the `POST /token` endpoint and a test
//! service-account JSON.
//!
//! The endpoint takes the JWT-bearer grant (`grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer
//! &assertion=<jwt>`), checks the JWT has three parts and claims `iss`, `scope`, `aud`, `iat`,
//! `exp` (a lifetime of at most one hour that has not ended), verifies its RS256 signature when
//! the `kid` is the built-in test key's (or always, with a configured public key), and answers
//! `{"access_token":"ya29.mock-<n>","expires_in":3599,"token_type":"Bearer"}`, as
//! `oauth2.googleapis.com/token` does.

use std::sync::atomic::Ordering;
use std::time::Instant;

use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{json, Value};

use crate::format::unix_now;
use crate::keys::TEST_PUBLIC_KEY_PEM;
use crate::state::{lock, Shared};

/// `project_id` of [`test_service_account`].
pub const TEST_PROJECT_ID: &str = "mock-project";
/// `private_key_id` of [`test_service_account`] (the JWT `kid`).
pub const TEST_PRIVATE_KEY_ID: &str = "mock-key-0001";
/// `client_email` of [`test_service_account`].
pub const TEST_CLIENT_EMAIL: &str = "gateway-test@mock-project.iam.gserviceaccount.com";

/// A service-account key JSON for tests: `type`, `project_id`, `private_key_id`, `private_key`
/// (the fixed RSA 2048 test key, [`TEST_PRIVATE_KEY_PEM`](crate::TEST_PRIVATE_KEY_PEM)),
/// `client_email`, `client_id` and `token_uri` (pass [`MockServer::token_uri`](crate::MockServer::token_uri)).
pub fn test_service_account(token_uri: &str) -> String {
    json!({
        "type": "service_account",
        "project_id": TEST_PROJECT_ID,
        "private_key_id": TEST_PRIVATE_KEY_ID,
        "private_key": crate::keys::TEST_PRIVATE_KEY_PEM,
        "client_email": TEST_CLIENT_EMAIL,
        "client_id": "100000000000000000001",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_uri,
        "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
        "universe_domain": "googleapis.com"
    })
    .to_string()
}

const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// Outcome of a token request: status and JSON body.
pub(crate) struct TokenAnswer {
    pub status: u16,
    pub body: String,
}

fn oauth_error(error: &str, description: &str) -> TokenAnswer {
    TokenAnswer {
        status: 400,
        body: json!({ "error": error, "error_description": description }).to_string(),
    }
}

fn decode_segment(seg: &str) -> Option<Value> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(seg.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn form_value(form: &str, name: &str) -> Option<String> {
    form.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        if k != name {
            return None;
        }
        let v = v.replace('+', " ");
        Some(
            percent_encoding::percent_decode_str(&v)
                .decode_utf8_lossy()
                .into_owned(),
        )
    })
}

fn verify_signature(jwt: &str, pem: &str) -> Result<(), String> {
    let key = DecodingKey::from_rsa_pem(pem.as_bytes()).map_err(|e| e.to_string())?;
    let mut validation = Validation::new(Algorithm::RS256);
    validation.validate_exp = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    jsonwebtoken::decode::<Value>(jwt, &key, &validation)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Handles `POST /token` with a form body.
pub(crate) fn issue_token(shared: &Shared, form: &[u8]) -> TokenAnswer {
    let form = String::from_utf8_lossy(form);
    match form_value(&form, "grant_type") {
        Some(g) if g == GRANT_TYPE => {}
        Some(g) => {
            return oauth_error(
                "unsupported_grant_type",
                &format!("Invalid grant_type: {g}"),
            )
        }
        None => return oauth_error("invalid_request", "Missing required parameter: grant_type"),
    }
    let Some(jwt) = form_value(&form, "assertion") else {
        return oauth_error("invalid_request", "Missing required parameter: assertion");
    };
    let parts: Vec<&str> = jwt.split('.').collect();
    if parts.len() != 3 || parts.iter().any(|p| p.is_empty()) {
        return oauth_error("invalid_grant", "Invalid JWT: Token must have three parts.");
    }
    let (Some(header), Some(claims)) = (decode_segment(parts[0]), decode_segment(parts[1])) else {
        return oauth_error(
            "invalid_grant",
            "Invalid JWT: could not decode header or claims.",
        );
    };
    if header["alg"].as_str() != Some("RS256") {
        return oauth_error("invalid_grant", "Invalid JWT: alg must be RS256.");
    }
    for claim in ["iss", "scope", "aud"] {
        if claims[claim].as_str().is_none_or(str::is_empty) {
            return oauth_error(
                "invalid_grant",
                &format!("Invalid JWT: missing claim '{claim}'."),
            );
        }
    }
    let (Some(iat), Some(exp)) = (claims["iat"].as_i64(), claims["exp"].as_i64()) else {
        return oauth_error(
            "invalid_grant",
            "Invalid JWT: 'iat' and 'exp' must be numeric claims.",
        );
    };
    let now = i64::try_from(unix_now()).unwrap_or(i64::MAX);
    if exp <= iat || exp - iat > 3600 || exp < now || iat > now + 300 {
        return oauth_error(
            "invalid_grant",
            "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. Check your iat and exp values in the JWT claim.",
        );
    }
    let kid = header["kid"].as_str();
    let mut keys: Vec<&str> = Vec::new();
    if kid == Some(TEST_PRIVATE_KEY_ID) {
        keys.push(TEST_PUBLIC_KEY_PEM);
    }
    if let Some(pem) = shared.config.jwt_public_key.as_deref() {
        keys.push(pem);
    }
    if !keys.is_empty() && !keys.iter().any(|pem| verify_signature(&jwt, pem).is_ok()) {
        return oauth_error("invalid_grant", "Invalid JWT Signature.");
    }
    let n = shared.tokens.seq.fetch_add(1, Ordering::Relaxed) + 1;
    let token = format!("ya29.mock-{n}");
    let lifetime = shared.config.token_lifetime;
    lock(&shared.tokens.issued).insert(token.clone(), Instant::now() + lifetime);
    shared.tokens.fetches.fetch_add(1, Ordering::Relaxed);
    TokenAnswer {
        status: 200,
        body: json!({
            "access_token": token,
            "expires_in": lifetime.as_secs(),
            "token_type": "Bearer"
        })
        .to_string(),
    }
}

/// Why a Vertex bearer token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenProblem {
    Missing,
    Unknown,
    Expired,
}

/// Checks a Vertex access token.
pub(crate) fn check_token(shared: &Shared, token: Option<&str>) -> Result<(), TokenProblem> {
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        return Err(TokenProblem::Missing);
    };
    match lock(&shared.tokens.issued).get(token) {
        None => Err(TokenProblem::Unknown),
        Some(exp) if *exp <= Instant::now() => Err(TokenProblem::Expired),
        Some(_) => Ok(()),
    }
}
