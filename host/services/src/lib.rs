//! The messages of the ETEE platform services (ETKDepot, KGSS, KeyDepot): SOAP/XML and
//! REST/JSON, parsed and written without I/O, for both the services (parse requests, write
//! responses) and their clients (write requests, parse responses).
//!
//! Modules, bottom up:
//! - [`xml`]: a safe XML reader (no DTD, limits, namespace-aware) building a small
//!   [`xml::Element`] tree, and an escaping writer;
//! - [`soap`]: SOAP 1.1 envelopes, SOA platform faults and codes (spec §7);
//! - [`etkdepot`]: `GetEtk` (§4.1), the REST `Etk`/`Problem` JSON and JWK Sets (§4.2);
//! - [`kgss`]: outer and inner (sealed) KGSS messages and access-condition evaluation (§5.1);
//! - [`keydepot`]: KeyDepot JSON, proof of possession and HSM attestation (§6; etee's design);
//! - [`error`]: the single [`Error`], mapped to SOA codes and HTTP statuses;
//! - [`secret`]: zeroizing key bytes; [`json`]: JSON helpers.
//! - shared by the servers: [`connections`] (per-peer bounds), [`tls_files`] (their TLS
//!   configuration from PEM files), [`log`], [`metrics`].
//!
//! Sealing and unsealing the KGSS contents is `etee_formats::cms`'s job, not this crate's.
//!
//! A server answers a request, or a fault when the request does not parse:
//!
//! ```
//! use etee_services::etkdepot::{GetEtkRequest, GetEtkResponse, Identifier};
//! use etee_services::soap::Fault;
//!
//! let wire = GetEtkRequest { identifiers: vec![Identifier::new("CBE", "0809394427", Some("KGSS"))] }
//!     .to_xml();
//! let answer = match GetEtkRequest::parse(&wire) {
//!     Ok(req) => GetEtkResponse::found(req.identifiers, vec![0x30, 0x80, 0, 0]).to_xml(),
//!     Err(e) => Fault::from_error(&e, None).to_xml(),
//! };
//! assert!(GetEtkResponse::parse(&answer).unwrap().status.is_ok());
//!
//! let fault = Fault::parse(&match GetEtkRequest::parse(b"<!DOCTYPE x []><x/>") {
//!     Err(e) => Fault::from_error(&e, None).to_xml(),
//!     Ok(_) => unreachable!(),
//! }).unwrap();
//! assert_eq!(fault.detail.unwrap().code, "SOA-03001");
//! ```
#![forbid(unsafe_code)]

pub mod body;
pub mod connections;
pub mod crl_fetch;
pub mod error;
pub mod etkdepot;
pub mod http_client;
pub mod json;
pub mod keydepot;
pub mod kgss;
pub mod lifetime;
pub mod log;
pub mod metrics;
pub mod revocation;
pub mod secret;
pub mod soap;
pub mod tls_files;
pub mod xml;

pub use error::Error;
pub use secret::SecretBytes;
