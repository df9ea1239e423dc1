//! An exact-match cache of answers (`[cache]` in the configuration).
//!
//! An answer is stored under the SHA-256 of what decides it: the endpoint, the client's body
//! byte for byte, the headers that go upstream with it (`anthropic-beta`) and the scope (the
//! virtual key, unless the cache is global). A later request with the same key within the TTL
//! gets the stored bytes: the same JSON, or for a stream the same events, as the first client
//! got them. Only whole successful answers are stored (a stream that failed or was cut is not),
//! and nothing is stored or read past a client's `cache-control: no-store` (`no-cache`: not
//! read, stored; `max-age=N`: only an answer younger than N seconds).
//!
//! Memory is bounded by `max_bytes`: the oldest entries go first. The lock is a plain mutex
//! held for a map lookup or insert, never across an await.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::HeaderMap;
use sha2::{Digest, Sha256};

use crate::config::{CacheScope, CacheSection};

/// A stored answer.
#[derive(Debug, Clone)]
pub struct Hit {
    /// The bytes the client got: a JSON body, or a stream's events.
    pub body: Bytes,
    /// Whether `body` is a stream's events.
    pub stream: bool,
    /// The route that served it first, if a route.
    pub route: Option<String>,
    /// The provider that served it first.
    pub provider: Arc<str>,
    /// The upstream model that answered.
    pub model: Arc<str>,
}

/// What identifies an answer: a SHA-256 digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CacheKey([u8; 32]);

/// A key being computed: the request's part, before admission names the scope.
#[derive(Debug, Clone)]
pub struct PartialKey(Sha256);

impl PartialKey {
    /// The request's part of a key: its endpoint, the headers that go upstream with its body, and
    /// the body as it came.
    pub fn new(endpoint: &str, native_headers: &[(String, String)], body: &[u8]) -> Self {
        let mut h = Sha256::new();
        let mut field = |b: &[u8]| {
            h.update((b.len() as u64).to_le_bytes());
            h.update(b);
        };
        field(endpoint.as_bytes());
        for (name, value) in native_headers {
            field(name.as_bytes());
            field(value.as_bytes());
        }
        field(body);
        PartialKey(h)
    }
}

/// What a client asked of the cache (`cache-control` on its request).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Control {
    /// A stored answer may serve it.
    pub read: bool,
    /// Its answer may be stored.
    pub write: bool,
    /// Only an answer at most this old may serve it.
    pub max_age: Option<Duration>,
}

impl Control {
    /// From the request's `cache-control` directives (`no-store`, `no-cache`, `max-age=N`).
    pub fn of(headers: &HeaderMap) -> Control {
        let mut c = Control {
            read: true,
            write: true,
            max_age: None,
        };
        for v in headers.get_all(http::header::CACHE_CONTROL) {
            let Ok(v) = v.to_str() else { continue };
            for d in v.split(',').map(str::trim) {
                let (name, arg) = d.split_once('=').unwrap_or((d, ""));
                match name.trim().to_ascii_lowercase().as_str() {
                    "no-store" => {
                        c.read = false;
                        c.write = false;
                    }
                    "no-cache" => c.read = false,
                    "max-age" => {
                        if let Ok(s) = arg.trim().trim_matches('"').parse::<u64>() {
                            c.max_age = Some(Duration::from_secs(s));
                        }
                    }
                    _ => {}
                }
            }
        }
        c
    }

    /// Whether the cache has anything to do for this request.
    pub fn any(self) -> bool {
        self.read || self.write
    }
}

struct Entry {
    hit: Hit,
    stored: Instant,
    /// Which insert of this key it is (the eviction queue may hold older ones).
    generation: u64,
}

#[derive(Default)]
struct Inner {
    map: HashMap<CacheKey, Entry>,
    /// Keys in the order they were stored, with their generation, oldest first.
    order: VecDeque<(CacheKey, u64)>,
    bytes: usize,
    generation: u64,
}

/// The cache. Shared by every request; built from `[cache]` when it is enabled.
pub struct ResponseCache {
    ttl: Duration,
    max_bytes: usize,
    max_entry_bytes: usize,
    global: bool,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for ResponseCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseCache")
            .field("ttl", &self.ttl)
            .field("max_bytes", &self.max_bytes)
            .field("entries", &self.len())
            .finish()
    }
}

/// Bytes an entry is counted for beyond its body (key, map slot, names).
const ENTRY_OVERHEAD: usize = 128;

impl ResponseCache {
    /// A cache with `section`'s limits.
    pub fn new(section: &CacheSection) -> Self {
        ResponseCache {
            ttl: Duration::from_millis(section.ttl_ms),
            max_bytes: section.max_bytes,
            max_entry_bytes: section.max_entry_bytes.min(section.max_bytes),
            global: section.scope == CacheScope::Global,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// The largest answer stored; a stream longer than this is not kept.
    pub fn max_entry_bytes(&self) -> usize {
        self.max_entry_bytes
    }

    /// The whole key: the request's part and the scope (`virtual_key`, unless global).
    pub fn key(&self, partial: PartialKey, virtual_key: Option<&str>) -> CacheKey {
        let mut h = partial.0;
        if !self.global {
            let vk = virtual_key.unwrap_or("").as_bytes();
            h.update((vk.len() as u64).to_le_bytes());
            h.update(vk);
        }
        CacheKey(h.finalize().into())
    }

    /// The answer stored under `key`, if it is younger than the TTL and `max_age`.
    pub fn get(&self, key: &CacheKey, max_age: Option<Duration>) -> Option<Hit> {
        let limit = max_age.map_or(self.ttl, |m| m.min(self.ttl));
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let entry = inner.map.get(key)?;
        let age = entry.stored.elapsed();
        if age < limit {
            return Some(entry.hit.clone());
        }
        if age >= self.ttl {
            // Expired for everyone: its bytes go now (its queue slot goes when it comes up).
            if let Some(e) = inner.map.remove(key) {
                inner.bytes -= cost(&e.hit);
            }
        }
        None
    }

    /// Stores `hit` under `key` (replacing an older answer), evicting the oldest entries until
    /// it fits. An answer larger than `max_entry_bytes` is not stored.
    pub fn put(&self, key: CacheKey, hit: Hit) {
        let size = cost(&hit);
        if size > self.max_entry_bytes || self.ttl.is_zero() {
            return;
        }
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let inner = &mut *inner;
        if let Some(old) = inner.map.remove(&key) {
            inner.bytes -= cost(&old.hit);
        }
        while inner.bytes + size > self.max_bytes {
            let Some((k, generation)) = inner.order.pop_front() else {
                break;
            };
            if inner
                .map
                .get(&k)
                .is_some_and(|e| e.generation == generation)
            {
                if let Some(e) = inner.map.remove(&k) {
                    inner.bytes -= cost(&e.hit);
                }
            }
        }
        inner.generation += 1;
        let generation = inner.generation;
        inner.order.push_back((key, generation));
        inner.bytes += size;
        inner.map.insert(
            key,
            Entry {
                hit,
                stored: Instant::now(),
                generation,
            },
        );
        // Slots of replaced or expired entries: dropped once they outnumber the live ones.
        if inner.order.len() > 2 * inner.map.len() + 64 {
            let map = &inner.map;
            inner
                .order
                .retain(|(k, g)| map.get(k).is_some_and(|e| e.generation == *g));
        }
    }

    /// Drops every answer; returns how many there were.
    pub fn clear(&self) -> usize {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let n = inner.map.len();
        *inner = Inner {
            generation: inner.generation,
            ..Inner::default()
        };
        n
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.inner.lock().map_or(0, |i| i.map.len())
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held (bodies and a fixed overhead per entry).
    pub fn bytes(&self) -> usize {
        self.inner.lock().map_or(0, |i| i.bytes)
    }
}

fn cost(hit: &Hit) -> usize {
    hit.body.len() + hit.provider.len() + hit.model.len() + ENTRY_OVERHEAD
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(ttl_ms: u64, max_bytes: usize, scope: CacheScope) -> ResponseCache {
        ResponseCache::new(&CacheSection {
            enabled: true,
            ttl_ms,
            max_bytes,
            max_entry_bytes: 4096,
            scope,
        })
    }

    fn hit(body: &'static str) -> Hit {
        Hit {
            body: Bytes::from_static(body.as_bytes()),
            stream: false,
            route: None,
            provider: Arc::from("p"),
            model: Arc::from("m"),
        }
    }

    fn key(c: &ResponseCache, body: &str, vk: Option<&str>) -> CacheKey {
        c.key(PartialKey::new("chat", &[], body.as_bytes()), vk)
    }

    #[test]
    fn the_same_request_finds_its_answer_and_another_does_not() {
        let c = cache(60_000, 1 << 20, CacheScope::VirtualKey);
        c.put(key(&c, "{\"a\":1}", Some("team-a")), hit("answer"));
        let found = c.get(&key(&c, "{\"a\":1}", Some("team-a")), None);
        assert_eq!(found.map(|h| h.body), Some(Bytes::from_static(b"answer")));
        assert!(c.get(&key(&c, "{\"a\":2}", Some("team-a")), None).is_none());
        // Another virtual key does not see team-a's answers.
        assert!(c.get(&key(&c, "{\"a\":1}", Some("team-b")), None).is_none());
        // Nor does another endpoint, or the same body with other upstream headers.
        let other = c.key(
            PartialKey::new("messages", &[], b"{\"a\":1}"),
            Some("team-a"),
        );
        assert!(c.get(&other, None).is_none());
        let beta = [("anthropic-beta".to_owned(), "x".to_owned())];
        let other = c.key(PartialKey::new("chat", &beta, b"{\"a\":1}"), Some("team-a"));
        assert!(c.get(&other, None).is_none());
    }

    #[test]
    fn a_global_cache_is_shared_by_every_key() {
        let c = cache(60_000, 1 << 20, CacheScope::Global);
        c.put(key(&c, "b", Some("team-a")), hit("answer"));
        assert!(c.get(&key(&c, "b", Some("team-b")), None).is_some());
        assert!(c.get(&key(&c, "b", None), None).is_some());
    }

    #[test]
    fn answers_expire_after_the_ttl_and_max_age_asks_for_younger() {
        let c = cache(40, 1 << 20, CacheScope::Global);
        let k = key(&c, "b", None);
        c.put(k, hit("answer"));
        assert!(c.get(&k, Some(Duration::from_secs(10))).is_some());
        std::thread::sleep(Duration::from_millis(15));
        // Younger than the TTL, older than the client accepts.
        assert!(c.get(&k, Some(Duration::from_millis(10))).is_none());
        assert_eq!(c.len(), 1, "still valid for others");
        std::thread::sleep(Duration::from_millis(40));
        assert!(c.get(&k, None).is_none());
        assert_eq!((c.len(), c.bytes()), (0, 0), "an expired entry is freed");
    }

    #[test]
    fn the_oldest_answers_go_when_the_bytes_run_out() {
        let each = cost(&hit("0123456789"));
        let c = cache(60_000, 3 * each, CacheScope::Global);
        for body in ["1", "2", "3", "4"] {
            c.put(key(&c, body, None), hit("0123456789"));
        }
        assert_eq!(c.len(), 3);
        assert!(
            c.get(&key(&c, "1", None), None).is_none(),
            "the oldest went"
        );
        for body in ["2", "3", "4"] {
            assert!(c.get(&key(&c, body, None), None).is_some());
        }
        assert!(c.bytes() <= 3 * each);
        // Storing a key again replaces it: its bytes are counted once.
        c.put(key(&c, "4", None), hit("0123456789"));
        assert_eq!((c.len(), c.bytes()), (3, 3 * each));
        // A replaced entry's old queue slot does not evict the new one.
        c.put(key(&c, "5", None), hit("0123456789"));
        c.put(key(&c, "6", None), hit("0123456789"));
        assert!(c.get(&key(&c, "4", None), None).is_some());
    }

    #[test]
    fn an_answer_larger_than_an_entry_may_be_is_not_stored() {
        let c = cache(60_000, 1 << 20, CacheScope::Global);
        let big: &'static str = Box::leak("x".repeat(5000).into_boxed_str());
        c.put(key(&c, "b", None), hit(big));
        assert!(c.is_empty());
    }

    #[test]
    fn cache_control_directives() {
        let of = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(http::header::CACHE_CONTROL, v.parse().unwrap());
            Control::of(&h)
        };
        assert_eq!(
            Control::of(&HeaderMap::new()),
            Control {
                read: true,
                write: true,
                max_age: None
            }
        );
        let c = of("no-store");
        assert!(!c.read && !c.write && !c.any());
        let c = of("No-Cache");
        assert!(!c.read && c.write);
        let c = of("max-age=30, no-cache");
        assert_eq!((c.read, c.max_age), (false, Some(Duration::from_secs(30))));
        assert_eq!(of("max-age=abc").max_age, None);
    }
}
