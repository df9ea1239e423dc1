//! Small seams the server offers to governance and telemetry: pricing and extra admin routes.

use async_trait::async_trait;

use crate::types::Usage;

/// Computes what a request cost.
pub trait Pricing: Send + Sync + 'static {
    /// USD for `usage` of `model` (the upstream model id) at `provider` (its configured name).
    fn cost(&self, provider: &str, model: &str, usage: &Usage) -> f64;
}

/// Prices nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct Free;

impl Pricing for Free {
    fn cost(&self, _provider: &str, _model: &str, _usage: &Usage) -> f64 {
        0.0
    }
}

/// Admin routes contributed by other crates (virtual keys, logs, stats). The server checks the
/// admin token before calling them.
#[async_trait]
pub trait AdminRoutes: Send + Sync + 'static {
    /// Answers a request under `/admin/`, or `None` if the path is not one of this one's.
    /// `method` is upper-case (`GET`, `POST`...), `query` has no leading `?`.
    async fn handle(
        &self,
        method: &str,
        path: &str,
        query: &str,
        body: &[u8],
    ) -> Option<(u16, serde_json::Value)>;
}
