//! Who may call the API and what the custody core lets each caller do.
//!
//! Two gates, both default-deny:
//! - the API knows a caller by the Unix uid of its socket peer or by the SHA-256 of its TLS
//!   client certificate, and lets it ask only for the operations listed for it;
//! - the custody core gets one rule per caller and key, derived from those operations
//!   (signing with the authentication key for sealing, KGSS and KeyDepot requests;
//!   decrypting with the ETK keys for unsealing and KGSS answers). Every key use is made
//!   under the caller's own client id, so the core refuses what the rules do not grant
//!   even if the API layer were wrong, and the audit chain names the caller.
//!
//! The appliance itself has a client id too ([`APPLIANCE_CLIENT`]): it signs the TLS
//! handshakes with the platform (client authentication with the key in the HSM).

use crate::config::{ClientConfig, Operation};
use etee_custody::policy::{Budget, Policy, Rule};
use etee_custody::{ClientId, KeyKind};
use etee_hsm::HsmToken;
use std::collections::BTreeSet;
use std::sync::Arc;

/// The custody client id of the appliance's own key uses (TLS client authentication).
pub const APPLIANCE_CLIENT: &str = "etee-appliance";

/// How a caller reached the API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peer {
    /// The Unix socket, with the peer's credentials from the kernel.
    Unix { uid: u32, pid: Option<i32> },
    /// HTTPS, with the SHA-256 of the client certificate when one was presented.
    Tls {
        certificate_sha256: Option<[u8; 32]>,
        addr: std::net::SocketAddr,
    },
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unix { uid, pid } => match pid {
                Some(pid) => write!(f, "unix uid {uid} pid {pid}"),
                None => write!(f, "unix uid {uid}"),
            },
            Self::Tls {
                certificate_sha256: Some(h),
                addr,
                // The whole hash, as `certificate_sha256` takes it: copied from a refusal or a
                // log line into a `[[client]]`, it names that certificate.
            } => write!(f, "tls {addr} certificate_sha256 {}", hex::encode(h)),
            Self::Tls { addr, .. } => write!(f, "tls {addr} without certificate"),
        }
    }
}

/// A caller the configuration knows.
#[derive(Clone, Debug)]
pub struct Client {
    pub name: String,
    pub operations: BTreeSet<Operation>,
    /// Its operations running now: `max_concurrent` permits ([`Self::slot`]).
    slots: Arc<tokio::sync::Semaphore>,
    max_concurrent: usize,
}

/// A slot of a client's `max_concurrent`, held while one of its operations runs.
#[derive(Debug)]
pub struct Slot {
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Client {
    /// Waits up to `wait` for one of this client's slots; `None` when all stayed taken.
    pub async fn slot(&self, wait: std::time::Duration) -> Option<Slot> {
        let acquire = self.slots.clone().acquire_owned();
        match tokio::time::timeout(wait, acquire).await {
            Ok(Ok(permit)) => Some(Slot { _permit: permit }),
            // The semaphore is never closed; a timeout is the only way here.
            _ => None,
        }
    }

    /// The most operations this client may have running at once.
    pub fn max_concurrent(&self) -> usize {
        self.max_concurrent
    }
}

/// Why the API refuses a caller before anything else happens.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refusal {
    #[error("no client is configured for {0}")]
    UnknownCaller(String),
    #[error("client {client:?} may not {operation}")]
    NotAllowed { client: String, operation: String },
}

/// The configured callers.
#[derive(Clone, Debug, Default)]
pub struct Clients {
    clients: Vec<(ClientConfig, Arc<Client>)>,
}

impl Clients {
    pub fn new(configs: &[ClientConfig]) -> Self {
        Self {
            clients: configs
                .iter()
                .map(|c| {
                    (
                        c.clone(),
                        Arc::new(Client {
                            name: c.name.clone(),
                            operations: c.operations.clone(),
                            slots: Arc::new(tokio::sync::Semaphore::new(c.max_concurrent)),
                            max_concurrent: c.max_concurrent,
                        }),
                    )
                })
                .collect(),
        }
    }

    /// The client a peer is, if any.
    pub fn identify(&self, peer: &Peer) -> Result<Arc<Client>, Refusal> {
        self.clients
            .iter()
            .find(|(c, _)| match peer {
                Peer::Unix { uid, .. } => c.unix_uid == Some(*uid),
                Peer::Tls {
                    certificate_sha256: Some(h),
                    ..
                } => c.certificate_sha256.as_ref() == Some(h),
                Peer::Tls { .. } => false,
            })
            .map(|(_, client)| client.clone())
            .ok_or_else(|| Refusal::UnknownCaller(peer.to_string()))
    }

    /// [`Self::identify`], then whether the client may ask for `operation`.
    pub fn authorise(&self, peer: &Peer, operation: Operation) -> Result<Arc<Client>, Refusal> {
        let client = self.identify(peer)?;
        if client.operations.contains(&operation) {
            Ok(client)
        } else {
            Err(Refusal::NotAllowed {
                client: client.name.clone(),
                operation: operation.name().into(),
            })
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Client>> {
        self.clients.iter().map(|(_, c)| c)
    }
}

/// Why the custody policy could not be built.
#[derive(Debug, thiserror::Error)]
#[error("custody policy: {0}")]
pub struct PolicyError(String);

/// The custody core's policy for the appliance over the keys of `token`, every rule with
/// `budget` (the token configuration's `[custody]` budget).
pub fn custody_policy(
    token: &HsmToken,
    clients: &Clients,
    budget: Budget,
) -> Result<Policy, PolicyError> {
    let keys: Vec<(&[u8], KeyKind)> = token.keys().collect();
    policy_over(keys.into_iter(), clients, budget)
}

/// The policy over `keys` (CKA_ID and kind): per caller and key, what its operations need
/// (signing with authentication keys, decrypting with ETK keys, nothing else); for the
/// appliance itself, signing with the authentication keys.
pub fn policy_over<'a>(
    keys: impl Iterator<Item = (&'a [u8], KeyKind)> + Clone,
    clients: &Clients,
    budget: Budget,
) -> Result<Policy, PolicyError> {
    let mut policy = Policy::deny_all();
    let mut grants: Vec<(String, bool, bool)> = clients
        .iter()
        .map(|c| {
            let signs = c.operations.iter().any(|o| o.signs());
            let decrypts = c.operations.iter().any(|o| o.decrypts());
            (c.name.clone(), signs, decrypts)
        })
        .collect();
    grants.push((APPLIANCE_CLIENT.to_owned(), true, false));
    for (name, signs, decrypts) in grants {
        let client = ClientId::try_from(name.as_str())
            .map_err(|_| PolicyError(format!("client {name:?}: 1 to 32 bytes")))?;
        for (id, kind) in keys.clone() {
            let Some(key) = etee_custody::KeyId::new(id) else {
                continue;
            };
            let sign = signs && kind == KeyKind::Authentication;
            let decrypt = decrypts && kind == KeyKind::Encryption;
            if !(sign || decrypt) {
                continue;
            }
            policy
                .allow(Rule {
                    client: client.clone(),
                    key,
                    sign,
                    decrypt,
                    wrap: false,
                    unwrap: false,
                    budget,
                })
                .map_err(|e| {
                    PolicyError(format!(
                        "{e:?}: at most {} rules (one per client and key); fewer clients or \
                         keys",
                        etee_custody::config::MAX_POLICY_RULES
                    ))
                })?;
        }
    }
    Ok(policy)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clients() -> Clients {
        Clients::new(&[
            ClientConfig {
                name: "his".into(),
                operations: [Operation::Seal, Operation::Unseal].into(),
                unix_uid: Some(1000),
                certificate_sha256: Some([7; 32]),
                max_concurrent: 2,
            },
            ClientConfig {
                name: "lookup".into(),
                operations: [Operation::Etk].into(),
                unix_uid: Some(1001),
                certificate_sha256: None,
                max_concurrent: 2,
            },
        ])
    }

    fn tls(h: Option<[u8; 32]>) -> Peer {
        Peer::Tls {
            certificate_sha256: h,
            addr: "127.0.0.1:1".parse().unwrap(),
        }
    }

    #[test]
    fn callers_are_known_by_uid_or_certificate_and_nothing_else() {
        let c = clients();
        let unix = |uid| Peer::Unix { uid, pid: None };
        assert_eq!(c.identify(&unix(1000)).unwrap().name, "his");
        assert_eq!(c.identify(&unix(1001)).unwrap().name, "lookup");
        assert_eq!(c.identify(&tls(Some([7; 32]))).unwrap().name, "his");
        for peer in [unix(0), unix(1002), tls(Some([8; 32])), tls(None)] {
            assert!(matches!(c.identify(&peer), Err(Refusal::UnknownCaller(_))));
        }
    }

    /// An unknown HTTPS caller's refusal gives its certificate's whole SHA-256 (it gave 8
    /// bytes), which a `[[client]]`'s `certificate_sha256` accepts as written.
    #[test]
    fn an_unknown_certificate_is_named_in_full() {
        let hash: [u8; 32] = std::array::from_fn(|i| i as u8);
        let Err(refusal) = clients().identify(&tls(Some(hash))) else {
            panic!("unknown");
        };
        let text = refusal.to_string();
        let written = text.split_whitespace().last().expect("the hash, last");
        assert_eq!(written, hex::encode(hash), "{text}");
        assert!(text.contains("certificate_sha256"), "{text}");
        let config = format!(
            "[appliance]\nhsm = \"h.toml\"\ntrust = [\"ca.pem\"]\nsocket = \"a.sock\"\n\
             [platform]\nurl = \"https://127.0.0.1:8443\"\n\
             [[client]]\nname = \"his\"\noperations = [\"seal\"]\ncertificate_sha256 = \"{written}\"\n"
        );
        let config =
            crate::ApplianceConfig::from_toml(&config, std::path::Path::new("/etc/etee")).unwrap();
        let known = Clients::new(&config.clients);
        assert_eq!(known.identify(&tls(Some(hash))).unwrap().name, "his");
    }

    /// What the custody core will grant each caller, whatever the API layer lets through:
    /// signing only with the authentication key and only for callers whose operations
    /// sign; decrypting only with ETK keys and only for unsealing or KGSS; never the
    /// wrapping key; nothing for a lookup-only caller; the appliance itself signs only.
    #[test]
    fn the_custody_rules_follow_the_operations() {
        use etee_custody::policy::KeyUse;
        let keys: Vec<(&[u8], KeyKind)> = vec![
            (b"authentication", KeyKind::Authentication),
            (b"1234567890", KeyKind::Encryption),
            (b"kgss-wrap", KeyKind::Wrapping),
        ];
        let mut configs = vec![
            ClientConfig {
                name: "sealer".into(),
                operations: [Operation::Seal].into(),
                unix_uid: Some(1),
                certificate_sha256: None,
                max_concurrent: 2,
            },
            ClientConfig {
                name: "opener".into(),
                operations: [Operation::Unseal].into(),
                unix_uid: Some(2),
                certificate_sha256: None,
                max_concurrent: 2,
            },
        ];
        configs.extend([ClientConfig {
            name: "lookup".into(),
            operations: [Operation::Etk, Operation::Audit].into(),
            unix_uid: Some(3),
            certificate_sha256: None,
            max_concurrent: 2,
        }]);
        let budget = Budget {
            burst: 2,
            per_second: 1,
        };
        let mut policy = policy_over(
            keys.iter().map(|(k, v)| (*k, *v)),
            &Clients::new(&configs),
            budget,
        )
        .unwrap();
        let can = |client: &str, key: &[u8], usage: KeyUse| {
            policy
                .permit(
                    &ClientId::try_from(client).unwrap(),
                    &etee_custody::KeyId::new(key).unwrap(),
                    usage,
                )
                .is_ok()
        };
        assert!(can("sealer", b"authentication", KeyUse::Sign));
        assert!(!can("sealer", b"1234567890", KeyUse::Decrypt));
        assert!(can("opener", b"1234567890", KeyUse::Decrypt));
        assert!(can("opener", b"authentication", KeyUse::Sign)); // KGSS requests
        assert!(can(APPLIANCE_CLIENT, b"authentication", KeyUse::Sign));
        assert!(!can(APPLIANCE_CLIENT, b"1234567890", KeyUse::Decrypt));
        for client in ["sealer", "opener", "lookup", APPLIANCE_CLIENT, "stranger"] {
            assert!(!can(client, b"kgss-wrap", KeyUse::Wrap), "{client}");
            assert!(!can(client, b"kgss-wrap", KeyUse::Unwrap), "{client}");
            assert!(!can(client, b"1234567890", KeyUse::Sign), "{client}");
        }
        assert!(!can("lookup", b"authentication", KeyUse::Sign));
        assert!(!can("lookup", b"1234567890", KeyUse::Decrypt));
        assert!(!can("stranger", b"authentication", KeyUse::Sign));
        // Every rule has the configured budget: two uses at once, then a refusal.
        let mut spend = || {
            let grant = policy
                .permit(
                    &ClientId::try_from("sealer").unwrap(),
                    &etee_custody::KeyId::new(b"authentication").unwrap(),
                    KeyUse::Sign,
                )
                .unwrap();
            policy.spend(grant, 1_000).is_ok()
        };
        assert!(spend() && spend());
        assert!(!spend(), "a third use at once is over the budget of 2");
    }

    #[test]
    fn too_many_rules_are_a_clear_error() {
        let keys: Vec<(Vec<u8>, KeyKind)> = (0..12)
            .map(|i| (format!("etk-{i}").into_bytes(), KeyKind::Encryption))
            .collect();
        let configs: Vec<ClientConfig> = (0..3)
            .map(|i| ClientConfig {
                name: format!("c{i}"),
                operations: [Operation::Unseal].into(),
                unix_uid: Some(i),
                certificate_sha256: None,
                max_concurrent: 2,
            })
            .collect();
        let e = policy_over(
            keys.iter().map(|(k, v)| (k.as_slice(), *v)),
            &Clients::new(&configs),
            etee_hsm::custody::DEFAULT_BUDGET,
        )
        .unwrap_err();
        assert!(e.to_string().contains("at most 32 rules"), "{e}");
    }

    /// A client's operations beyond its `max_concurrent` wait for a slot and get none
    /// while all stay taken; a slot given back serves the next; other clients have their
    /// own slots.
    #[tokio::test]
    async fn a_client_has_its_own_bounded_slots() {
        let c = clients();
        let his = c
            .identify(&Peer::Unix {
                uid: 1000,
                pid: None,
            })
            .unwrap();
        let lookup = c
            .identify(&Peer::Unix {
                uid: 1001,
                pid: None,
            })
            .unwrap();
        let wait = std::time::Duration::from_millis(50);
        assert_eq!(his.max_concurrent(), 2);
        let first = his.slot(wait).await.expect("a first slot");
        let _second = his.slot(wait).await.expect("a second slot");
        let started = std::time::Instant::now();
        assert!(his.slot(wait).await.is_none(), "a third slot beyond 2");
        assert!(started.elapsed() >= wait, "refused only after waiting");
        assert!(lookup.slot(wait).await.is_some(), "another client's slots");
        // A waiter gets the slot given back while it waits.
        let waiter = tokio::spawn({
            let his = his.clone();
            async move { his.slot(std::time::Duration::from_secs(10)).await.is_some() }
        });
        tokio::time::sleep(wait).await;
        drop(first);
        assert!(waiter.await.unwrap(), "the freed slot");
        // `queue_timeout_ms = 0`: a free slot is taken, none free is refused at once.
        let _again = his
            .slot(std::time::Duration::ZERO)
            .await
            .expect("the free slot");
        assert!(his.slot(std::time::Duration::ZERO).await.is_none());
    }

    #[test]
    fn operations_not_listed_are_refused() {
        let c = clients();
        let lookup = Peer::Unix {
            uid: 1001,
            pid: Some(4),
        };
        assert!(c.authorise(&lookup, Operation::Etk).is_ok());
        assert_eq!(
            c.authorise(&lookup, Operation::Seal).unwrap_err(),
            Refusal::NotAllowed {
                client: "lookup".into(),
                operation: "seal".into()
            }
        );
    }

    #[test]
    fn deletions_are_never_implied() {
        let configs = [ClientConfig {
            name: "keys".into(),
            operations: [Operation::Kgss, Operation::KeyDepot].into(),
            unix_uid: Some(7),
            certificate_sha256: None,
            max_concurrent: 2,
        }];
        let c = Clients::new(&configs);
        let peer = Peer::Unix { uid: 7, pid: None };
        assert!(c.authorise(&peer, Operation::Kgss).is_ok());
        assert!(c.authorise(&peer, Operation::KeyDepot).is_ok());
        for (op, name) in [
            (Operation::KgssDelete, "kgss-delete"),
            (Operation::KeyDepotDelete, "keydepot-delete"),
        ] {
            assert_eq!(
                c.authorise(&peer, op).unwrap_err(),
                Refusal::NotAllowed {
                    client: "keys".into(),
                    operation: name.into()
                }
            );
        }
    }
}
