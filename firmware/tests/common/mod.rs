//! Shared set-up: an insecure in-memory token with one authentication key, two ETK keys and
//! a wrapping key, and a policy for two clients.
#![allow(dead_code)] // each test file uses a different part

use etee_custody::audit::AuditHead;
use etee_custody::config::{MAX_REQUEST_FRAME, MAX_RESPONSE_FRAME};
use etee_custody::insecure::{Call, InsecureMemoryAuditSink, InsecureMemoryToken};
use etee_custody::policy::{Budget, Policy, Rule};
use etee_custody::wire::{self, Request, Response};
use etee_custody::{ClientId, Custody, KeyId, KeyKind};

pub const PIN: &[u8] = b"correct horse";
pub const WRONG_PIN: &[u8] = b"battery staple";

pub type Core = Custody<InsecureMemoryToken, InsecureMemoryAuditSink<256>>;

pub fn key(name: &str) -> KeyId {
    KeyId::try_from(name).unwrap()
}

pub fn client(name: &str) -> ClientId {
    ClientId::try_from(name).unwrap()
}

/// The institution's authentication key (sign only).
pub fn auth() -> KeyId {
    key("auth")
}
/// The current ETK key (decrypt only).
pub fn etk() -> KeyId {
    key("etk-2024")
}
/// An old ETK key, still kept to read old messages.
pub fn etk_old() -> KeyId {
    key("etk-2019")
}
/// The KGSS wrapping key (wrap and unwrap only).
pub fn kgss() -> KeyId {
    key("kgss-wrap")
}
/// The sealing application: may sign with `auth` and decrypt with `etk`.
pub fn app() -> ClientId {
    client("seal-app")
}
/// Another application: may decrypt with `etk_old` only.
pub fn other() -> ClientId {
    client("archive-app")
}

pub const GENEROUS: Budget = Budget {
    burst: 1000,
    per_second: 1000,
};

pub fn rule(client: ClientId, key: KeyId, sign: bool, decrypt: bool, budget: Budget) -> Rule {
    Rule {
        client,
        key,
        sign,
        decrypt,
        wrap: false,
        unwrap: false,
        budget,
    }
}

/// A rule for wrapping and/or unwrapping only.
pub fn wrap_rule(client: ClientId, key: KeyId, wrap: bool, unwrap: bool, budget: Budget) -> Rule {
    Rule {
        wrap,
        unwrap,
        ..rule(client, key, false, false, budget)
    }
}

/// A rule for everything (only the key kind stands between the client and a misuse).
pub fn any_rule(client: ClientId, key: KeyId, budget: Budget) -> Rule {
    Rule {
        client,
        key,
        sign: true,
        decrypt: true,
        wrap: true,
        unwrap: true,
        budget,
    }
}

pub fn token() -> InsecureMemoryToken {
    InsecureMemoryToken::new(PIN)
        .unwrap()
        .with_key(&auth(), KeyKind::Authentication, b"auth")
        .with_key(&etk(), KeyKind::Encryption, b"etk-2024")
        .with_key(&etk_old(), KeyKind::Encryption, b"etk-2019")
        .with_key(&kgss(), KeyKind::Wrapping, b"kgss-wrap")
}

pub fn policy() -> Policy {
    let mut p = Policy::deny_all();
    p.allow(rule(app(), auth(), true, false, GENEROUS)).unwrap();
    p.allow(rule(app(), etk(), false, true, GENEROUS)).unwrap();
    p.allow(rule(other(), etk_old(), false, true, GENEROUS))
        .unwrap();
    p.allow(wrap_rule(app(), kgss(), true, true, GENEROUS))
        .unwrap();
    p
}

pub fn core_with(policy: Policy) -> Core {
    Custody::new(
        token(),
        InsecureMemoryAuditSink::new(),
        policy,
        AuditHead::GENESIS,
    )
}

/// A locked core with the standard policy.
pub fn core() -> Core {
    core_with(policy())
}

/// An unlocked core with the standard policy (its first audit record is the unlock).
pub fn unlocked() -> Core {
    unlocked_with(policy())
}

pub fn unlocked_with(policy: Policy) -> Core {
    let mut c = core_with(policy);
    assert_eq!(call(&mut c, &unlock(PIN), 0), Response::Unlocked);
    c
}

pub fn unlock(pin: &[u8]) -> Request {
    Request::Unlock {
        pin: wire::Pin::from_slice(pin).unwrap(),
    }
}

pub fn sign(client: ClientId, key: KeyId, digest: [u8; 32]) -> Request {
    Request::SignPssSha256 {
        client,
        key,
        digest,
    }
}

pub fn decrypt(client: ClientId, key: KeyId, blob: &[u8]) -> Request {
    Request::DecryptPkcs1v15 {
        client,
        key,
        blob: wire::Blob::from_slice(blob).unwrap(),
    }
}

pub fn wrap(client: ClientId, key: KeyId, secret: &[u8]) -> Request {
    Request::WrapSecret {
        client,
        key,
        secret: wire::WrapSecret::from_slice(secret).unwrap(),
    }
}

pub fn unwrap(client: ClientId, key: KeyId, wrapped: &[u8]) -> Request {
    Request::UnwrapSecret {
        client,
        key,
        wrapped: wire::Wrapped::from_slice(wrapped).unwrap(),
    }
}

/// A wrapped secret that `key` of the standard token unwraps to `secret`.
pub fn wrapped_for(key: &KeyId, secret: &[u8]) -> std::vec::Vec<u8> {
    let mut out = [0u8; 40];
    let n = token().fake_wrap(key, secret, &mut out).unwrap();
    out[..n].to_vec()
}

/// A blob that `key` of the standard token decrypts to `plaintext`.
pub fn blob_for(key: &KeyId, plaintext: &[u8]) -> std::vec::Vec<u8> {
    let mut out = [0u8; 512];
    let n = token().fake_encrypt(key, plaintext, &mut out).unwrap();
    out[..n].to_vec()
}

/// Sends `request` through the frame interface, as the host does.
pub fn call(core: &mut Core, request: &Request, now_ms: u64) -> Response {
    wire::decode_response(&call_raw(core, &encode(request), now_ms)).unwrap()
}

/// Sends raw bytes; returns the raw response frame.
pub fn call_raw(core: &mut Core, frame: &[u8], now_ms: u64) -> std::vec::Vec<u8> {
    let mut out = [0u8; MAX_RESPONSE_FRAME];
    let n = core.handle(frame, now_ms, &mut out);
    assert!(n > 0, "no response frame");
    out[..n].to_vec()
}

pub fn encode(request: &Request) -> std::vec::Vec<u8> {
    let mut buf = [0u8; MAX_REQUEST_FRAME];
    wire::encode_request(request, &mut buf).unwrap().to_vec()
}

/// Key uses (sign, decrypt, wrap, unwrap) that reached the token.
pub fn key_uses(core: &Core) -> std::vec::Vec<Call> {
    core.token()
        .calls()
        .iter()
        .filter(|c| c.is_key_use())
        .cloned()
        .collect()
}

/// A tiny deterministic generator for robustness tests.
pub struct XorShift(pub u64);

impl XorShift {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    pub fn byte(&mut self) -> u8 {
        self.next() as u8
    }
}
