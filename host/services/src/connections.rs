//! Connections a service holds per peer.
//!
//! A listener bounds the connections it serves at once (`max_connections`); without a
//! bound per peer, one peer that stalls its connections (never finishing the TLS
//! handshake, sending headers slowly) takes every slot and nobody else is served until its
//! connections time out. [`PerPeer`] counts the connections of each peer (an IP address, a
//! uid: whatever the listener knows it by) and refuses one more above the bound.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use crate::log::Throttle;

/// The peer an address counts as: an IPv4 address (also when mapped into IPv6), or an
/// IPv6 address's /64 (what one host or site is usually given: a peer could otherwise
/// take a new address for each connection).
pub fn address_peer(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip.to_canonical() {
        std::net::IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            std::net::IpAddr::V6(prefix.into())
        }
        v4 => v4,
    }
}

/// The connections each peer holds, at most `max` each.
#[derive(Debug)]
pub struct PerPeer<K: Hash + Eq + Clone> {
    held: Arc<Mutex<HashMap<K, usize>>>,
    max: usize,
}

impl<K: Hash + Eq + Clone> Clone for PerPeer<K> {
    fn clone(&self) -> Self {
        Self {
            held: self.held.clone(),
            max: self.max,
        }
    }
}

/// One connection counted for its peer until dropped.
#[derive(Debug)]
pub struct PeerSlot<K: Hash + Eq + Clone> {
    connections: PerPeer<K>,
    key: K,
}

impl<K: Hash + Eq + Clone> PerPeer<K> {
    pub fn new(max: usize) -> Self {
        Self {
            held: Arc::default(),
            max,
        }
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// A slot for one more connection of `key`; `None` when it holds `max` already (the
    /// refusal is logged, at most one line a second, naming `who`).
    pub fn take(&self, key: K, who: &dyn std::fmt::Display) -> Option<PeerSlot<K>> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let n = held.entry(key.clone()).or_insert(0);
        if *n >= self.max {
            drop(held);
            static REFUSED: Throttle = Throttle::new();
            if let Some(held_back) = REFUSED.allow(etee_formats::unix_now()) {
                tracing::warn!(
                    held_back,
                    "{who} already holds {} connections (max_connections_per_peer): one \
                     more closed at once",
                    self.max
                );
            }
            return None;
        }
        *n += 1;
        Some(PeerSlot {
            connections: self.clone(),
            key,
        })
    }

    /// Connections `key` holds now.
    pub fn held(&self, key: &K) -> usize {
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        held.get(key).copied().unwrap_or(0)
    }
}

impl<K: Hash + Eq + Clone> Drop for PeerSlot<K> {
    fn drop(&mut self) {
        let mut held = self
            .connections
            .held
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = held.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_count_as_their_host_or_64() {
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        assert_eq!(address_peer(ip("192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(address_peer(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(
            address_peer(ip("2001:db8:1:2:aaaa:bbbb:cccc:dddd")),
            ip("2001:db8:1:2::")
        );
        assert_eq!(
            address_peer(ip("2001:db8:1:2::1")),
            address_peer(ip("2001:db8:1:2:ffff::9"))
        );
        assert_ne!(
            address_peer(ip("2001:db8:1:2::1")),
            address_peer(ip("2001:db8:1:3::1"))
        );
    }

    #[test]
    fn slots_are_counted_per_peer_and_given_back() {
        let held = PerPeer::new(2);
        let a1 = held.take("a", &"a").unwrap();
        let _a2 = held.take("a", &"a").unwrap();
        assert!(held.take("a", &"a").is_none());
        assert_eq!(held.held(&"a"), 2);
        let _b1 = held.take("b", &"b").unwrap();
        drop(a1);
        assert_eq!(held.held(&"a"), 1);
        assert!(held.take("a", &"a").is_some());
    }
}
