//! Model prices in USD per million tokens, and what a request costs.
//!
//! A built-in table covers the major models of every supported provider (prices as published by
//! the providers in 2025; standard tier, short-context rates). `[[pricing]]` entries override or
//! extend it. Lookups are forgiving, in this order:
//!
//! 1. the exact name, lower-cased (so an override may name `azure/my-deployment`);
//! 2. without leading `provider/` segments (`openai/gpt-4o` → `gpt-4o`);
//! 3. without Bedrock's region and vendor prefixes and version suffix
//!    (`us.anthropic.claude-3-5-sonnet-20241022-v2:0` → `claude-3-5-sonnet-20241022`);
//! 4. without a date or version suffix (`-2024-07-18`, `-20241022`, `@20241022`, `-latest`,
//!    `-001`, `-2411`, `-08-2024`, `-preview-05-20`);
//! 5. the longest table entry that is a prefix of the name at a `-` boundary
//!    (`gpt-4o-mini-search-preview` → `gpt-4o-mini`).
//!
//! Cached input tokens are priced at the cached rate (the input rate when the model has none).
//!
//! ```
//! use gateway_core::extend::Pricing;
//! use gateway_core::types::Usage;
//! use gateway_governance::PriceTable;
//!
//! let prices = PriceTable::builtin();
//! let usage = Usage { prompt_tokens: 1_000_000, completion_tokens: 0, total_tokens: 1_000_000, ..Usage::default() };
//! assert_eq!(prices.cost("openai", "gpt-4o-mini-2024-07-18", &usage), 0.15);
//! ```

use std::collections::HashMap;

use gateway_core::extend::Pricing;
use gateway_core::types::Usage;
use serde::Serialize;

use crate::config::PricingSpec;

/// Prices of one model.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Price {
    /// USD per million input tokens.
    pub input_per_mtok: f64,
    /// USD per million output tokens.
    pub output_per_mtok: f64,
    /// USD per million cached input tokens.
    pub cached_input_per_mtok: f64,
}

impl Price {
    /// USD for `input` uncached input, `cached` cached input and `output` output tokens.
    pub fn cost_of(&self, input: u64, cached: u64, output: u64) -> f64 {
        (input as f64 * self.input_per_mtok
            + cached as f64 * self.cached_input_per_mtok
            + output as f64 * self.output_per_mtok)
            / 1_000_000.0
    }
}

/// (name, input, output, cached input) in USD per million tokens.
const BUILTIN: &[(&str, f64, f64, Option<f64>)] = &[
    // OpenAI
    ("gpt-4o", 2.50, 10.00, Some(1.25)),
    ("gpt-4o-mini", 0.15, 0.60, Some(0.075)),
    ("chatgpt-4o", 5.00, 15.00, None),
    ("gpt-4.1", 2.00, 8.00, Some(0.50)),
    ("gpt-4.1-mini", 0.40, 1.60, Some(0.10)),
    ("gpt-4.1-nano", 0.10, 0.40, Some(0.025)),
    ("gpt-4.5-preview", 75.00, 150.00, Some(37.50)),
    ("gpt-5", 1.25, 10.00, Some(0.125)),
    ("gpt-5-mini", 0.25, 2.00, Some(0.025)),
    ("gpt-5-nano", 0.05, 0.40, Some(0.005)),
    ("gpt-4-turbo", 10.00, 30.00, None),
    ("gpt-4", 30.00, 60.00, None),
    ("gpt-3.5-turbo", 0.50, 1.50, None),
    ("o1", 15.00, 60.00, Some(7.50)),
    ("o1-mini", 1.10, 4.40, Some(0.55)),
    ("o1-pro", 150.00, 600.00, None),
    ("o3", 2.00, 8.00, Some(0.50)),
    ("o3-mini", 1.10, 4.40, Some(0.55)),
    ("o3-pro", 20.00, 80.00, None),
    ("o4-mini", 1.10, 4.40, Some(0.275)),
    ("gpt-oss-120b", 0.15, 0.75, None),
    ("gpt-oss-20b", 0.10, 0.50, None),
    ("text-embedding-3-small", 0.02, 0.0, None),
    ("text-embedding-3-large", 0.13, 0.0, None),
    ("text-embedding-ada-002", 0.10, 0.0, None),
    // Anthropic (also on Bedrock and Vertex at the same rates); cached = cache reads
    ("claude-3-haiku", 0.25, 1.25, Some(0.03)),
    ("claude-3-sonnet", 3.00, 15.00, Some(0.30)),
    ("claude-3-opus", 15.00, 75.00, Some(1.50)),
    ("claude-3-5-haiku", 0.80, 4.00, Some(0.08)),
    ("claude-3-5-sonnet", 3.00, 15.00, Some(0.30)),
    ("claude-3-7-sonnet", 3.00, 15.00, Some(0.30)),
    ("claude-sonnet-4", 3.00, 15.00, Some(0.30)),
    ("claude-4-sonnet", 3.00, 15.00, Some(0.30)),
    ("claude-sonnet-4-5", 3.00, 15.00, Some(0.30)),
    ("claude-opus-4", 15.00, 75.00, Some(1.50)),
    ("claude-4-opus", 15.00, 75.00, Some(1.50)),
    ("claude-opus-4-1", 15.00, 75.00, Some(1.50)),
    ("claude-opus-4-5", 5.00, 25.00, Some(0.50)),
    ("claude-haiku-4-5", 1.00, 5.00, Some(0.10)),
    // Google Gemini (Gemini API and Vertex), prompts up to 128k/200k tokens
    ("gemini-1.5-flash", 0.075, 0.30, Some(0.01875)),
    ("gemini-1.5-flash-8b", 0.0375, 0.15, Some(0.01)),
    ("gemini-1.5-pro", 1.25, 5.00, Some(0.3125)),
    ("gemini-2.0-flash", 0.10, 0.40, Some(0.025)),
    ("gemini-2.0-flash-lite", 0.075, 0.30, None),
    ("gemini-2.5-flash", 0.30, 2.50, Some(0.075)),
    ("gemini-2.5-flash-lite", 0.10, 0.40, Some(0.025)),
    ("gemini-2.5-pro", 1.25, 10.00, Some(0.31)),
    ("text-embedding-004", 0.0, 0.0, None),
    ("gemini-embedding-001", 0.15, 0.0, None),
    // Amazon Bedrock (after stripping `us.`/`eu.`, `meta.`/`amazon.`... and `-v1:0`)
    ("llama3-8b-instruct", 0.30, 0.60, None),
    ("llama3-70b-instruct", 2.65, 3.50, None),
    ("llama3-1-8b-instruct", 0.22, 0.22, None),
    ("llama3-1-70b-instruct", 0.72, 0.72, None),
    ("llama3-1-405b-instruct", 2.40, 2.40, None),
    ("llama3-2-1b-instruct", 0.10, 0.10, None),
    ("llama3-2-3b-instruct", 0.15, 0.15, None),
    ("llama3-2-11b-instruct", 0.16, 0.16, None),
    ("llama3-2-90b-instruct", 0.72, 0.72, None),
    ("llama3-3-70b-instruct", 0.72, 0.72, None),
    ("llama4-scout-17b-instruct", 0.17, 0.66, None),
    ("llama4-maverick-17b-instruct", 0.24, 0.97, None),
    ("nova-micro", 0.035, 0.14, Some(0.00875)),
    ("nova-lite", 0.06, 0.24, Some(0.015)),
    ("nova-pro", 0.80, 3.20, Some(0.20)),
    ("nova-premier", 2.50, 12.50, Some(0.625)),
    ("titan-embed-text", 0.02, 0.0, None),
    ("titan-embed-image", 0.80, 0.0, None),
    // Cohere Embed on Bedrock (`cohere.embed-english-v3`, `cohere.embed-v4:0`).
    ("embed-english", 0.10, 0.0, None),
    ("embed-multilingual", 0.10, 0.0, None),
    ("embed", 0.12, 0.0, None),
    // Mistral
    ("mistral-large", 2.00, 6.00, None),
    ("mistral-medium", 0.40, 2.00, None),
    ("mistral-small", 0.10, 0.30, None),
    ("codestral", 0.30, 0.90, None),
    ("pixtral-large", 2.00, 6.00, None),
    ("open-mistral-nemo", 0.15, 0.15, None),
    ("ministral-8b", 0.10, 0.10, None),
    ("ministral-3b", 0.04, 0.04, None),
    ("mistral-embed", 0.10, 0.0, None),
    // Groq
    ("llama-3.3-70b-versatile", 0.59, 0.79, None),
    ("llama-3.1-8b-instant", 0.05, 0.08, None),
    ("llama-4-scout-17b-16e-instruct", 0.11, 0.34, None),
    ("llama-4-maverick-17b-128e-instruct", 0.20, 0.60, None),
    ("gemma2-9b-it", 0.20, 0.20, None),
    ("mixtral-8x7b-32768", 0.24, 0.24, None),
    // Cohere
    ("command-r", 0.15, 0.60, None),
    ("command-r-plus", 2.50, 10.00, None),
    ("command-r7b", 0.0375, 0.15, None),
    ("command-a", 2.50, 10.00, None),
    ("embed-english-v3.0", 0.10, 0.0, None),
    ("embed-multilingual-v3.0", 0.10, 0.0, None),
    ("embed-v4.0", 0.12, 0.0, None),
    // DeepSeek
    ("deepseek-chat", 0.27, 1.10, Some(0.07)),
    ("deepseek-reasoner", 0.55, 2.19, Some(0.14)),
    // xAI
    ("grok-3", 3.00, 15.00, Some(0.75)),
    ("grok-3-mini", 0.30, 0.50, Some(0.075)),
    ("grok-4", 3.00, 15.00, Some(0.75)),
];

/// A price table: built-in prices plus `[[pricing]]` overrides. Implements
/// [`gateway_core::extend::Pricing`].
#[derive(Debug, Clone, Default)]
pub struct PriceTable {
    prices: HashMap<String, Price>,
}

impl PriceTable {
    /// The built-in table.
    pub fn builtin() -> PriceTable {
        let prices = BUILTIN
            .iter()
            .map(|&(name, input, output, cached)| {
                (
                    name.to_string(),
                    Price {
                        input_per_mtok: input,
                        output_per_mtok: output,
                        cached_input_per_mtok: cached.unwrap_or(input),
                    },
                )
            })
            .collect();
        PriceTable { prices }
    }

    /// The built-in table with `overrides` applied (an entry replaces a built-in one of the same
    /// name or adds a model).
    pub fn with_overrides(overrides: &[PricingSpec]) -> PriceTable {
        let mut table = PriceTable::builtin();
        for o in overrides {
            table.prices.insert(
                o.model.trim().to_ascii_lowercase(),
                Price {
                    input_per_mtok: o.input_per_mtok,
                    output_per_mtok: o.output_per_mtok,
                    cached_input_per_mtok: o.cached_input_per_mtok.unwrap_or(o.input_per_mtok),
                },
            );
        }
        table
    }

    /// The price of `model`, with the forgiving lookups the module describes.
    pub fn lookup(&self, model: &str) -> Option<Price> {
        let lower = model.trim().to_ascii_lowercase();
        if let Some(p) = self.prices.get(&lower) {
            return Some(*p);
        }
        // Every suffix after a '/', longest first: `openrouter/meta-llama/x` → `meta-llama/x` → `x`.
        let mut candidates: Vec<&str> = vec![lower.as_str()];
        let mut rest = lower.as_str();
        while let Some((_, tail)) = rest.split_once('/') {
            candidates.push(tail);
            rest = tail;
        }
        for c in &candidates {
            if let Some(p) = self.prices.get(*c) {
                return Some(*p);
            }
        }
        let base = strip_versions(&strip_bedrock(rest));
        if let Some(p) = self.prices.get(&base) {
            return Some(*p);
        }
        // Longest entry that is a prefix at a '-' boundary.
        let mut cut = base.as_str();
        while let Some(pos) = cut.rfind('-') {
            cut = &cut[..pos];
            if let Some(p) = self.prices.get(cut) {
                return Some(*p);
            }
        }
        None
    }

    /// All entries, sorted by name.
    pub fn entries(&self) -> Vec<(String, Price)> {
        let mut v: Vec<_> = self.prices.iter().map(|(k, p)| (k.clone(), *p)).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// USD for `usage` of `model`, or `None` when the model has no price.
    pub fn cost_of(&self, model: &str, usage: &Usage) -> Option<f64> {
        let price = self.lookup(model)?;
        let cached = usage
            .prompt_tokens_details
            .map(|d| d.cached_tokens)
            .unwrap_or(0)
            .min(usage.prompt_tokens);
        Some(price.cost_of(
            usage.prompt_tokens - cached,
            cached,
            usage.completion_tokens,
        ))
    }
}

impl Pricing for PriceTable {
    fn cost(&self, provider: &str, model: &str, usage: &Usage) -> f64 {
        // `provider/model`, lowercased, built in a reused buffer: this runs on every request.
        thread_local! {
            static SCOPED: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
        }
        let scoped = SCOPED.with(|k| {
            let mut k = k.borrow_mut();
            k.clear();
            k.extend(provider.chars().map(|c| c.to_ascii_lowercase()));
            k.push('/');
            k.extend(model.chars().map(|c| c.to_ascii_lowercase()));
            self.prices.get(k.as_str()).copied()
        });
        if let Some(p) = scoped {
            let cached = usage
                .prompt_tokens_details
                .map(|d| d.cached_tokens)
                .unwrap_or(0)
                .min(usage.prompt_tokens);
            return p.cost_of(
                usage.prompt_tokens - cached,
                cached,
                usage.completion_tokens,
            );
        }
        self.cost_of(model, usage).unwrap_or(0.0)
    }
}

/// `us.anthropic.claude-3-5-sonnet-20241022-v2:0` → `claude-3-5-sonnet-20241022`.
fn strip_bedrock(name: &str) -> String {
    let mut s = name;
    for region in ["us.", "eu.", "apac.", "us-gov.", "global.", "jp.", "au."] {
        if let Some(rest) = s.strip_prefix(region) {
            s = rest;
            break;
        }
    }
    for vendor in [
        "anthropic.",
        "meta.",
        "amazon.",
        "mistral.",
        "cohere.",
        "ai21.",
        "deepseek.",
        "openai.",
    ] {
        if let Some(rest) = s.strip_prefix(vendor) {
            s = rest;
            break;
        }
    }
    // `-v2:0`, `-v1:0:200k`, `:0`
    let s = match s.find(':') {
        Some(i) => &s[..i],
        None => s,
    };
    let s = match s.rfind("-v") {
        Some(i) if !s[i + 2..].is_empty() && s[i + 2..].chars().all(|c| c.is_ascii_digit()) => {
            &s[..i]
        }
        _ => s,
    };
    s.to_string()
}

/// Removes date and version suffixes, repeatedly.
fn strip_versions(name: &str) -> String {
    let mut s = name.to_string();
    if let Some(i) = s.find('@') {
        s.truncate(i);
    }
    loop {
        let before = s.len();
        for suffix in ["-latest", "-exp"] {
            if let Some(rest) = s.strip_suffix(suffix) {
                s = rest.to_string();
            }
        }
        let parts: Vec<&str> = s.split('-').collect();
        let n = parts.len();
        let digits = |p: &str, len: usize| p.len() == len && p.chars().all(|c| c.is_ascii_digit());
        let date =
            n >= 4 && digits(parts[n - 3], 4) && digits(parts[n - 2], 2) && digits(parts[n - 1], 2);
        let preview_date = n >= 3
            && parts[n - 3] == "preview"
            && digits(parts[n - 2], 2)
            && digits(parts[n - 1], 2);
        let version = n >= 2
            && (digits(parts[n - 1], 8)
                || digits(parts[n - 1], 4)
                || digits(parts[n - 1], 3)
                || parts[n - 1] == "preview");
        let cut = if date || preview_date {
            3 // -2024-07-18, -preview-05-20
        } else if n >= 3 && digits(parts[n - 2], 2) && digits(parts[n - 1], 4) {
            2 // -08-2024
        } else if version {
            1 // -20241022, -2411, -001, -preview
        } else {
            0
        };
        if cut > 0 {
            s = parts[..n - cut].join("-");
        }
        if s.len() == before {
            return s;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gateway_core::types::PromptTokensDetails;

    fn price(name: &str) -> Option<(f64, f64)> {
        PriceTable::builtin()
            .lookup(name)
            .map(|p| (p.input_per_mtok, p.output_per_mtok))
    }

    #[test]
    fn lookups_tolerate_prefixes_and_suffixes() {
        let cases = [
            ("gpt-4o", (2.50, 10.00)),
            ("GPT-4o-mini", (0.15, 0.60)),
            ("gpt-4o-mini-2024-07-18", (0.15, 0.60)),
            ("openai/gpt-4o-2024-08-06", (2.50, 10.00)),
            ("gpt-4.1-nano-2025-04-14", (0.10, 0.40)),
            ("o3-mini-2025-01-31", (1.10, 4.40)),
            ("claude-3-5-sonnet-20241022", (3.00, 15.00)),
            ("claude-3-5-haiku-latest", (0.80, 4.00)),
            ("anthropic/claude-sonnet-4-20250514", (3.00, 15.00)),
            ("claude-opus-4-1-20250805", (15.00, 75.00)),
            (
                "us.anthropic.claude-3-7-sonnet-20250219-v1:0",
                (3.00, 15.00),
            ),
            ("anthropic.claude-3-haiku-20240307-v1:0", (0.25, 1.25)),
            ("claude-3-5-sonnet-v2@20241022", (3.00, 15.00)),
            ("meta.llama3-1-70b-instruct-v1:0", (0.72, 0.72)),
            ("us.amazon.nova-pro-v1:0", (0.80, 3.20)),
            ("gemini-1.5-pro-002", (1.25, 5.00)),
            ("gemini-2.0-flash-001", (0.10, 0.40)),
            ("gemini/gemini-2.5-flash-preview-05-20", (0.30, 2.50)),
            ("gemini-2.5-pro", (1.25, 10.00)),
            ("mistral-large-2411", (2.00, 6.00)),
            ("mistral-small-latest", (0.10, 0.30)),
            (
                "groq/meta-llama/llama-4-scout-17b-16e-instruct",
                (0.11, 0.34),
            ),
            ("llama-3.3-70b-versatile", (0.59, 0.79)),
            ("command-r-08-2024", (0.15, 0.60)),
            ("command-a-03-2025", (2.50, 10.00)),
            ("deepseek/deepseek-chat", (0.27, 1.10)),
            ("gpt-4o-mini-search-preview", (0.15, 0.60)),
            ("text-embedding-3-small", (0.02, 0.0)),
            ("amazon.titan-embed-text-v2:0", (0.02, 0.0)),
            ("cohere.embed-english-v3", (0.10, 0.0)),
            ("cohere.embed-multilingual-v3", (0.10, 0.0)),
            ("cohere.embed-v4:0", (0.12, 0.0)),
            ("embed-english-v3.0", (0.10, 0.0)),
        ];
        for (name, want) in cases {
            assert_eq!(price(name), Some(want), "price of {name}");
        }
        assert_eq!(price("my-finetune"), None, "unknown models have no price");
        assert_eq!(price("fast"), None);
    }

    #[test]
    fn cached_tokens_are_priced_at_the_cached_rate() {
        let t = PriceTable::builtin();
        let usage = Usage {
            prompt_tokens: 1_000_000,
            completion_tokens: 1_000_000,
            total_tokens: 2_000_000,
            prompt_tokens_details: Some(PromptTokensDetails {
                cached_tokens: 400_000,
            }),
            completion_tokens_details: None,
        };
        // 600k * 2.50 + 400k * 1.25 + 1M * 10.00 per million
        let cost = t.cost("openai", "gpt-4o", &usage);
        assert!((cost - (1.5 + 0.5 + 10.0)).abs() < 1e-9, "cost was {cost}");
        assert_eq!(t.cost("openai", "unknown-model", &usage), 0.0);
    }

    #[test]
    fn overrides_replace_and_extend() {
        let t = PriceTable::with_overrides(&[
            PricingSpec {
                model: "gpt-4o".into(),
                input_per_mtok: 1.0,
                output_per_mtok: 2.0,
                cached_input_per_mtok: None,
            },
            PricingSpec {
                model: "azure/prod-gpt".into(),
                input_per_mtok: 3.0,
                output_per_mtok: 4.0,
                cached_input_per_mtok: Some(0.5),
            },
        ]);
        assert_eq!(
            t.lookup("gpt-4o-2024-08-06").map(|p| p.input_per_mtok),
            Some(1.0)
        );
        let usage = Usage {
            prompt_tokens: 1_000_000,
            completion_tokens: 0,
            total_tokens: 1_000_000,
            ..Usage::default()
        };
        assert_eq!(
            t.cost("azure", "prod-gpt", &usage),
            3.0,
            "provider-scoped override"
        );
        assert_eq!(t.cost("other", "prod-gpt", &usage), 0.0);
    }
}
