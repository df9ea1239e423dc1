//! What providers attach to tool calls for the next turn ([`SignatureStore`]).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// How many entries a [`SignatureStore`] keeps before forgetting the oldest.
pub const SIGNATURE_CAPACITY: usize = 10_000;

/// Remembers, by tool-call id, what a provider attached to a model's tool call that must come back
/// with it in the next turn and that the OpenAI format has no place for: Gemini's
/// `thoughtSignature` (by the call id the adapter synthesized), Anthropic's thinking blocks (the
/// JSON array of those that preceded the `tool_use`, signatures included).
///
/// Best effort: bounded to [`SIGNATURE_CAPACITY`] entries (oldest forgotten first) and local to the
/// process. Each adapter says what it does for a call it does not find.
#[derive(Debug, Default)]
pub struct SignatureStore {
    inner: Mutex<SignatureInner>,
}

#[derive(Debug, Default)]
struct SignatureInner {
    map: HashMap<String, String>,
    order: VecDeque<String>,
}

impl SignatureStore {
    /// An empty store.
    pub fn new() -> Self {
        SignatureStore::default()
    }

    /// Remembers `signature` for the call `id`.
    pub fn insert(&self, id: &str, signature: &str) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if inner
            .map
            .insert(id.to_owned(), signature.to_owned())
            .is_none()
        {
            inner.order.push_back(id.to_owned());
        }
        while inner.order.len() > SIGNATURE_CAPACITY {
            if let Some(old) = inner.order.pop_front() {
                inner.map.remove(&old);
            }
        }
    }

    /// The signature of the call `id`, if remembered.
    pub fn get(&self, id: &str) -> Option<String> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.map.get(id).cloned()
    }

    /// Number of remembered signatures.
    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map
            .len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
