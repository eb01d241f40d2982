//! The etee custody core: the only code that asks the HSM to use a private or wrapping key.
//!
//! It sits between the host (`etee serve`: HTTP, TLS, XML, CMS — everything that parses
//! untrusted input) and the token, and takes small typed requests over a [`wire`] protocol:
//! "sign this 32-byte digest with key K for client C", "decrypt this key-transport blob with
//! ETK key K", "wrap (or unwrap) this AES key with wrapping key K". For each it checks the [`lock`] state and the [`policy`], appends a record to
//! the [`audit`] hash chain before the token is asked and another with the outcome, and
//! only then releases the result (see [`custody`] for the exact
//! order). It runs inside the `etee` process, or as a separate process that alone holds the
//! PIN and the PKCS#11 session, with the same frames.
//!
//! Sans-I/O and `no_std`, without allocation: the HSM is the [`token::Token`] trait (the host
//! implements it over PKCS#11), the audit store is the [`audit::AuditSink`] trait, time is a
//! `now_ms` argument, and every size is bounded in [`config`].
//!
//! | module      | what                                                               |
//! |-------------|--------------------------------------------------------------------|
//! | [`config`]  | every bound and the derived frame sizes                            |
//! | [`wire`]    | request/response frames, ids, the error type                       |
//! | [`custody`] | [`Custody`]: the dispatcher                                        |
//! | [`policy`]  | client × key × operation rules with rate budgets                   |
//! | [`audit`]   | the hash chain, the sink trait and the verifier                    |
//! | [`lock`]    | lock state and the wrong-PIN counter                               |
//! | [`token`]   | the HSM trait and PKCS#11 error codes                              |
//! | [`id`], [`secret`] | bounded key/client ids; wiped, unprintable secrets          |
//! | [`shares`]  | M-of-N secret sharing (the security officer's PIN)                 |
//! | `insecure`  | (feature `insecure`) an in-memory token and sink, **tests only**   |
//! | `file_sink` | (feature `std`) the fsynced, crash-safe audit file of the host      |
//!
//! ```
//! # // The insecure token needs the `insecure` feature, which the crate's tests enable.
//! use etee_custody::audit::{verify_chain_to, AuditHead};
//! use etee_custody::config::MAX_RESPONSE_FRAME;
//! use etee_custody::insecure::{InsecureMemoryAuditSink, InsecureMemoryToken};
//! use etee_custody::policy::{Budget, Policy, Rule};
//! use etee_custody::wire::{self, Pin, Request, Response};
//! use etee_custody::{ClientId, Custody, KeyId, KeyKind};
//!
//! let auth = KeyId::try_from("auth").unwrap();
//! let app = ClientId::try_from("seal-app").unwrap();
//! let token = InsecureMemoryToken::new(b"1234").unwrap()
//!     .with_key(&auth, KeyKind::Authentication, b"seed");
//! let mut policy = Policy::deny_all();
//! let budget = Budget { burst: 10, per_second: 5 };
//! let rule = Rule {
//!     client: app.clone(), key: auth.clone(), sign: true, decrypt: false, wrap: false,
//!     unwrap: false, budget,
//! };
//! policy.allow(rule).unwrap();
//! let sink = InsecureMemoryAuditSink::<16>::new();
//! let mut core = Custody::new(token, sink, policy, AuditHead::GENESIS);
//!
//! // The host sends frames and reads frames.
//! let mut send = |core: &mut Custody<_, _>, request: &Request, now_ms| {
//!     let (mut req, mut resp) = ([0u8; 600], [0u8; MAX_RESPONSE_FRAME]);
//!     let frame = wire::encode_request(request, &mut req).unwrap();
//!     let n = core.handle(frame, now_ms, &mut resp);
//!     wire::decode_response(&resp[..n]).unwrap()
//! };
//! let unlock = Request::Unlock { pin: Pin::from_slice(b"1234").unwrap() };
//! assert_eq!(send(&mut core, &unlock, 0), Response::Unlocked);
//! let sign = Request::SignPssSha256 { client: app, key: auth, digest: [0x42; 32] };
//! assert!(matches!(send(&mut core, &sign, 1), Response::Signature(_)));
//!
//! // Both requests are on record, each as its try (recorded before the token is asked)
//! // then its outcome, and the chain ends where the core says it does.
//! assert_eq!(verify_chain_to(core.audit_sink().records(), &core.audit_head()), Ok(4));
//! ```
#![no_std]
#![forbid(unsafe_code)]

pub mod audit;
pub mod config;
pub mod custody;
#[cfg(feature = "std")]
pub mod file_sink;
pub mod id;
#[cfg(feature = "insecure")]
pub mod insecure;
pub mod lock;
pub mod policy;
pub mod secret;
pub mod shares;
pub mod token;
pub mod wire;

pub use audit::{AuditHead, AuditRecord, AuditSink};
pub use custody::{Custody, DestroyError};
pub use id::{ClientId, KeyId};
pub use token::{KeyFacts, KeyKind, Token, TokenError, TokenFunction};
pub use wire::{Error, Request, Response};
