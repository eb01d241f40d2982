//! Each caller's share of the platform: at most `max_requests_per_caller` requests of one
//! caller answered at once. A caller is its client certificate (the SHA-256 of its DER)
//! or, without one, the address it connects from (an IPv6 address's /64, as the connection
//! limit per peer counts it: a host is usually given a /64 and could otherwise take a new
//! address, and a new share, for each request): ETK lookups and KGSS requests need no
//! client certificate, so without this one busy caller could take every turn of work
//! ([`crate::work`]) and make all the others retry.
//!
//! A caller's further requests wait up to `queue_timeout_ms` for one of its own to end,
//! then are refused as busy (REST 503 with `Retry-After`, SOAP `SOA-02001`). Callers are
//! remembered only while they have requests under way.

use etee_services::connections::address_peer;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Who a request is counted against (a request extension set per connection).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum CallerKey {
    /// The SHA-256 of the client certificate's DER.
    Certificate([u8; 32]),
    /// The peer's address, for a client without a certificate: an IPv4 address (also
    /// mapped into IPv6) or an IPv6 address's /64 ([`address_peer`]).
    Address(IpAddr),
}

impl CallerKey {
    /// The key of a connection: its client certificate if it presented one, else its
    /// address as a peer ([`address_peer`]).
    pub fn of(certificate: Option<&[u8]>, address: IpAddr) -> Self {
        match certificate {
            Some(der) => Self::Certificate(openssl::sha::sha256(der)),
            None => Self::Address(address_peer(address)),
        }
    }
}

/// The callers' shares.
#[derive(Debug)]
pub struct Shares {
    per_caller: usize,
    wait: Duration,
    callers: Mutex<HashMap<CallerKey, Arc<Semaphore>>>,
    refused: AtomicU64,
}

/// One request's place in its caller's share; given back when dropped.
#[derive(Debug)]
pub struct Share {
    shares: Arc<Shares>,
    key: CallerKey,
    permit: Option<OwnedSemaphorePermit>,
}

impl Shares {
    pub fn new(per_caller: usize, wait: Duration) -> Arc<Self> {
        Arc::new(Self {
            per_caller,
            wait,
            callers: Mutex::default(),
            refused: AtomicU64::new(0),
        })
    }

    /// Waits up to the queue timeout for a place in `key`'s share; `None` when the caller
    /// kept all its places that long.
    pub async fn enter(self: &Arc<Self>, key: CallerKey) -> Option<Share> {
        // Declared first, dropped last: on every way out — a place, a refusal, or this
        // future dropped while it waits (its request abandoned) — after the semaphore's
        // reference held by the wait, the entry is forgotten if nobody else needs it.
        let mut forget = ForgetIfIdle {
            shares: self,
            key: Some(key.clone()),
        };
        let semaphore = self
            .lock()
            .entry(key.clone())
            .or_insert_with(|| Arc::new(Semaphore::new(self.per_caller)))
            .clone();
        let acquired = tokio::time::timeout(self.wait, semaphore.acquire_owned()).await;
        match acquired {
            Ok(Ok(permit)) => {
                // Its permit keeps the entry: nothing to forget (and no second lock).
                forget.key = None;
                Some(Share {
                    shares: self.clone(),
                    key,
                    permit: Some(permit),
                })
            }
            _ => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// The most requests of one caller at once.
    pub fn per_caller(&self) -> usize {
        self.per_caller
    }

    /// Requests refused because their caller's share stayed full, since the start.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Callers with requests under way (or waiting) now.
    pub fn callers(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<CallerKey, Arc<Semaphore>>> {
        self.callers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Drops `key`'s entry when nobody holds or waits for a place in it.
    fn forget_if_idle(&self, key: &CallerKey) {
        let mut callers = self.lock();
        let idle = callers.get(key).is_some_and(|s| {
            // The map's own reference only: no holder, no waiter.
            Arc::strong_count(s) == 1 && s.available_permits() == self.per_caller
        });
        if idle {
            callers.remove(key);
        }
    }
}

tokio::task_local! {
    /// The share of the request this task answers ([`scope`]).
    static CURRENT: Arc<Share>;
}

/// Runs `request` (a request's answer) holding `share`, reachable through [`current`] by
/// the work it starts.
pub async fn scope<F: std::future::Future>(share: Share, request: F) -> F::Output {
    CURRENT.scope(Arc::new(share), request).await
}

/// The share of the request the current task answers, if any: blocking work holds it too
/// ([`crate::work::WorkLimit::run`]), so that work left running after its request was
/// abandoned still counts against its caller.
pub fn current() -> Option<Arc<Share>> {
    CURRENT.try_with(Arc::clone).ok()
}

/// Forgets its caller, if idle, when dropped ([`Shares::enter`]).
struct ForgetIfIdle<'a> {
    shares: &'a Shares,
    /// `None` once the caller got its place.
    key: Option<CallerKey>,
}

impl Drop for ForgetIfIdle<'_> {
    fn drop(&mut self) {
        if let Some(key) = &self.key {
            self.shares.forget_if_idle(key);
        }
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        // The permit first, so that the entry is seen idle.
        drop(self.permit.take());
        self.shares.forget_if_idle(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A caller without a certificate is keyed as the connection limit keys its peer: one
    /// IPv6 /64 is one caller (else each new address of the /64 would bring a new share),
    /// an IPv4 address is itself, mapped into IPv6 or not.
    #[test]
    fn an_address_is_keyed_as_its_peer() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let key = |s: &str| CallerKey::of(None, ip(s));
        assert_eq!(
            key("2001:db8:1:2::1"),
            key("2001:db8:1:2:ffff:1234:5678:9abc")
        );
        assert_eq!(
            key("2001:db8:1:2::1"),
            CallerKey::Address(ip("2001:db8:1:2::"))
        );
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("192.0.2.7"), key("::ffff:192.0.2.7"));
        assert_ne!(key("192.0.2.7"), key("192.0.2.8"));
        // A certificate is the caller, wherever it connects from.
        let cert = |s: &str| CallerKey::of(Some(b"a certificate"), ip(s));
        assert_eq!(cert("192.0.2.7"), cert("2001:db8::1"));
    }

    #[tokio::test]
    async fn a_caller_is_bounded_by_its_own_share_only() {
        let shares = Shares::new(2, Duration::from_millis(30));
        let alice = CallerKey::of(Some(b"alice's certificate"), [127, 0, 0, 1].into());
        let anonymous = CallerKey::of(None, [127, 0, 0, 1].into());
        assert_ne!(alice, anonymous);
        let a1 = shares.enter(alice.clone()).await.expect("a place");
        let _a2 = shares.enter(alice.clone()).await.expect("a second place");
        assert!(shares.enter(alice.clone()).await.is_none(), "a third one");
        assert!(
            shares.enter(anonymous.clone()).await.is_some(),
            "another caller"
        );
        drop(a1);
        assert!(
            shares.enter(alice.clone()).await.is_some(),
            "a place given back"
        );
    }

    #[tokio::test]
    async fn callers_are_forgotten_when_idle() {
        let shares = Shares::new(1, Duration::from_millis(10));
        let key = |i: u8| CallerKey::of(None, [10, 0, 0, i].into());
        let mut held = Vec::new();
        for i in 0..5 {
            held.push(shares.enter(key(i)).await.expect("a place"));
        }
        assert_eq!(shares.callers(), 5);
        assert!(shares.enter(key(0)).await.is_none());
        assert_eq!(shares.refused(), 1);
        assert_eq!(
            shares.callers(),
            5,
            "a refused caller with a place under way stays"
        );
        drop(held);
        assert_eq!(shares.callers(), 0, "nothing kept once every request ended");
    }

    /// A waiter whose request is abandoned (its future dropped) after the place it waited
    /// for was handed to it, but before it ran again, leaves nothing behind.
    #[tokio::test]
    async fn an_abandoned_waiter_is_forgotten_too() {
        let shares = Shares::new(1, Duration::from_secs(10));
        let key = CallerKey::of(None, [10, 0, 0, 9].into());
        let held = shares.enter(key.clone()).await.unwrap();
        let mut waiter = Box::pin(shares.enter(key.clone()));
        // Polled once: it now waits in the semaphore's queue.
        assert!(futures_poll_once(&mut waiter).await.is_none());
        drop(held); // the place goes to the waiter
        drop(waiter); // which is abandoned before it runs again
        assert_eq!(shares.callers(), 0);
    }

    /// Polls `f` once; `Some` if it was ready.
    async fn futures_poll_once<F: std::future::Future + Unpin>(f: &mut F) -> Option<F::Output> {
        std::future::poll_fn(|cx| {
            std::task::Poll::Ready(match std::pin::Pin::new(&mut *f).poll(cx) {
                std::task::Poll::Ready(v) => Some(v),
                std::task::Poll::Pending => None,
            })
        })
        .await
    }
}
