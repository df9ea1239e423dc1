//! Which key served a stored OpenAI response, so that a request continuing it
//! (`previous_response_id`) goes to the same key.
//!
//! OpenAI keeps a stored response in the account (project) of the key that made it; keys of
//! different projects cannot see each other's, so a gateway balancing over them would break a
//! conversation whenever the next turn went to another key. The last [`ResponseAffinity::new`]
//! capacity response ids are remembered in memory (per gateway instance; a restart forgets
//! them, and so does another instance).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use gateway_core::PinnedKey;

/// Response id → the provider and key that served it, the oldest forgotten first.
#[derive(Debug)]
pub struct ResponseAffinity {
    capacity: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    by_id: HashMap<Box<str>, Made>,
    order: VecDeque<Box<str>>,
}

/// Who made a response: the key, and the virtual key that asked for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Made {
    /// The provider key that made it.
    pub key: PinnedKey,
    /// The virtual key of the request, if virtual keys were in force.
    pub owner: Option<Arc<str>>,
}

impl ResponseAffinity {
    /// Remembers up to `capacity` responses.
    pub fn new(capacity: usize) -> Self {
        ResponseAffinity {
            capacity,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Records that `provider`'s key `key` made response `id`, asked for by `owner`.
    pub fn remember(&self, id: &str, provider: &Arc<str>, key: &Arc<str>, owner: Option<&str>) {
        if id.is_empty() || self.capacity == 0 {
            return;
        }
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        let made = Made {
            key: PinnedKey {
                provider: Arc::clone(provider),
                key: Arc::clone(key),
            },
            owner: owner.map(Arc::from),
        };
        if inner.by_id.insert(id.into(), made).is_none() {
            inner.order.push_back(id.into());
        }
        while inner.order.len() > self.capacity {
            if let Some(old) = inner.order.pop_front() {
                inner.by_id.remove(&old);
            }
        }
    }

    /// The key that made response `id`, if remembered.
    pub fn lookup(&self, id: &str) -> Option<PinnedKey> {
        self.made(id).map(|m| m.key)
    }

    /// Who made response `id`, if remembered.
    pub fn made(&self, id: &str) -> Option<Made> {
        self.inner.lock().ok()?.by_id.get(id).cloned()
    }

    /// Forgets response `id` (it was deleted).
    pub fn forget(&self, id: &str) {
        if let Ok(mut inner) = self.inner.lock() {
            if inner.by_id.remove(id).is_some() {
                inner.order.retain(|o| &**o != id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_the_newest_and_forgets_the_oldest() {
        let a = ResponseAffinity::new(2);
        let (p, k1, k2) = (Arc::from("oai"), Arc::from("k1"), Arc::from("k2"));
        a.remember("resp_1", &p, &k1, None);
        a.remember("resp_2", &p, &k2, Some("team-a"));
        a.remember("resp_2", &p, &k2, Some("team-a"));
        assert_eq!(a.lookup("resp_1").map(|k| k.key), Some(Arc::clone(&k1)));
        assert_eq!(
            a.made("resp_2").and_then(|m| m.owner).as_deref(),
            Some("team-a")
        );
        a.remember("resp_3", &p, &k1, None);
        assert_eq!(a.lookup("resp_1"), None, "the oldest went");
        assert_eq!(a.lookup("resp_2").map(|k| k.key), Some(k2));
        assert_eq!(a.lookup("resp_3").map(|k| k.provider), Some(Arc::clone(&p)));
        a.remember("", &Arc::from("x"), &Arc::from("y"), None);
        assert_eq!(a.lookup(""), None);
        a.forget("resp_3");
        assert_eq!(a.lookup("resp_3"), None);
        a.remember("resp_4", &p, &k1, None);
        assert!(
            a.lookup("resp_2").is_some(),
            "a forgotten id frees its place"
        );
    }
}
