//! `etee platform`: the ETEE platform services (ETKDepot, KGSS, KeyDepot) and their
//! administration (registering ETKs, the attribute registry).

use crate::inputs;
use crate::CliError;
use clap::{Args as ClapArgs, Subcommand};
use etee_platform::PlatformConfig;
use etee_services::kgss::vocabulary;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum Command {
    /// Serve the platform (HTTPS, SOAP and REST) until SIGTERM or SIGINT.
    Serve(ConfigArg),
    /// The platform's audit chain (in its store): KGSS key creations, reads and
    /// deletions, KeyDepot registrations, added information and deletions, and the
    /// administrative commands (ETK registrations, attribute changes). Walk and verify
    /// it, show the last events (those matching the filters, when any is given: e.g.
    /// every read of one KGSS key, `--subject ID --action kgss.read --tail 100000`).
    Audit {
        #[command(flatten)]
        config: ConfigArg,
        /// Show the last N events (default 10; 0 for none).
        #[arg(long, default_value_t = 10, value_name = "N")]
        tail: usize,
        #[command(flatten)]
        filter: EventFilterArgs,
        /// One JSON document on standard output.
        #[arg(long)]
        json: bool,
    },
    /// Create or extend a local world: the CA, the ETK registration authority, a TLS
    /// server certificate, and institutions with keys born in an HSM token (--hsm) or in
    /// a .p12.
    Pki(super::pki::WorldArgs),
    /// ETKDepot administration.
    Etk {
        #[command(subcommand)]
        command: EtkCommand,
    },
    /// The attribute registry: certified attributes of holders (recognised pharmacy,
    /// doctor, ...) that KGSS evaluates reader conditions against.
    Attributes {
        #[command(subcommand)]
        command: AttributesCommand,
    },
    /// What KGSS holds: the stored keys' ids, creators, times and reader conditions
    /// (never the keys, which stay wrapped by the HSM).
    Kgss {
        #[command(subcommand)]
        command: KgssCommand,
    },
}

#[derive(Subcommand)]
pub enum KgssCommand {
    /// Every stored KGSS key, in id order: id (hex, as in the audit chain), creation time
    /// and creator, reader conditions (allowed and excluded), deletion strategy. Pages
    /// through the store, so any number of keys is fine; on an embedded store, stop the
    /// platform first (a PostgreSQL store can be read while it runs).
    List {
        #[command(flatten)]
        config: ConfigArg,
        /// Only the keys created by this holder, TYPE=VALUE (e.g. NIHII-HOSPITAL=71000436;
        /// zero-padded as the platform stores it), whatever their application id.
        #[arg(long, value_name = "TYPE=VALUE")]
        creator: Option<String>,
        /// One JSON array on standard output (with `keyId` in Base64, as KGSS clients
        /// see it).
        #[arg(long)]
        json: bool,
    },
}

#[derive(ClapArgs)]
pub struct ConfigArg {
    /// Platform configuration (TOML, see docs/platform.md).
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
}

#[derive(Subcommand)]
pub enum EtkCommand {
    /// Check ETKs as the official checker does (against the platform's CA) and publish them
    /// under every identifier of their holder's DN (and, with --also, under a doctor's
    /// NIHII or NIHII11 number too).
    Register {
        #[command(flatten)]
        config: ConfigArg,
        /// Publish the ETK under this identifier too (repeatable), as the real depot answers
        /// a doctor's NIHII with the doctor's own ETK (spec §4.1). Only for a natural
        /// person's ETK (its holder SSIN=…), and only NIHII or NIHII11 (the queries for
        /// which etee's client accepts an ETK naming an SSIN; the official connector, NIHII
        /// only). Register a renewal with the same --also. The value is zero-padded (or
        /// cut to its first digits) as lookups format it, and takes the ETK's application
        /// id if it has one. A number that already finds another holder's ETK is refused.
        #[arg(long, value_name = "TYPE=VALUE")]
        also: Vec<String>,
        /// ETK files (DER or base64).
        #[arg(required = true, value_name = "ETK")]
        etks: Vec<PathBuf>,
    },
    /// Unpublish ETKs (a compromised key, a holder gone, identifiers to change): lookups
    /// stop answering them at once (a platform on the same PostgreSQL store reads it at each
    /// request; the embedded store needs the platform stopped). Given
    /// by file or by SHA-256 (the subject of their `etkdepot.register` event, shown by
    /// `etk find`); each removal is an `etkdepot.remove` event on the audit chain. Exit 1
    /// when one of them was not published (the others are removed).
    Remove {
        #[command(flatten)]
        config: ConfigArg,
        /// An ETK's SHA-256, hex (repeatable).
        #[arg(long = "digest", value_name = "HEX")]
        digests: Vec<String>,
        /// ETK files (DER or base64).
        #[arg(value_name = "ETK", required_unless_present = "digests")]
        etks: Vec<PathBuf>,
    },
    /// The ETKs published under an identifier, valid or not: SHA-256, identifiers,
    /// validity and registration time (lookups answer only the valid ones).
    Find {
        #[command(flatten)]
        config: ConfigArg,
        /// TYPE=VALUE, e.g. NIHII-PHARMACY=27150201 (zero-padded as lookups do).
        #[arg(long, value_name = "TYPE=VALUE")]
        identifier: String,
        /// Only the ETKs of this application id (empty: only those without one).
        #[arg(long, value_name = "ID")]
        application_id: Option<String>,
        /// One JSON document on standard output.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum AttributesCommand {
    /// Give a holder an attribute (replacing its value if the holder has it).
    Set {
        #[command(flatten)]
        config: ConfigArg,
        #[command(flatten)]
        holder: HolderArg,
        /// The holder is a recognised pharmacy.
        #[arg(long, conflicts_with_all = ["doctor", "attribute"])]
        recognised_pharmacy: bool,
        /// The holder is a doctor whose NIHII11 number is NIHII11 (11 digits once
        /// zero-padded): the attribute's value. Without a value only for a holder
        /// NIHII11=…, whose own number it is; a doctor known by its SSIN (a natural
        /// person) needs the number.
        #[arg(
            long,
            conflicts_with = "attribute",
            num_args = 0..=1,
            value_name = "NIHII11"
        )]
        doctor: Option<Option<String>>,
        /// Any attribute: namespace, name, value.
        #[arg(long, num_args = 3, value_names = ["NAMESPACE", "NAME", "VALUE"])]
        attribute: Option<Vec<String>>,
    },
    /// Take an attribute away from a holder.
    Remove {
        #[command(flatten)]
        config: ConfigArg,
        #[command(flatten)]
        holder: HolderArg,
        #[arg(long)]
        namespace: String,
        #[arg(long)]
        name: String,
    },
    /// Every holder with attributes.
    List {
        #[command(flatten)]
        config: ConfigArg,
        /// One JSON document on standard output.
        #[arg(long)]
        json: bool,
    },
}

#[derive(ClapArgs)]
pub struct HolderArg {
    /// The holder, as TYPE=VALUE (e.g. NIHII-PHARMACY=27150201); the value is zero-padded
    /// as its type requires.
    #[arg(long, value_name = "TYPE=VALUE")]
    holder: String,
}

impl HolderArg {
    fn parse(&self) -> Result<(String, String), CliError> {
        let (t, v) = self.holder.split_once('=').ok_or_else(|| {
            CliError::Usage(format!("--holder {:?}: expected TYPE=VALUE", self.holder))
        })?;
        // Stored as the platform stores identities: canonical type (`HUB` is `EHP`),
        // zero-padded value.
        let t = etee_formats::identity::canonical_type(t.trim()).ok_or_else(|| {
            CliError::Usage(format!(
                "--holder {:?}: unknown identifier type",
                self.holder
            ))
        })?;
        let v = etee_formats::identity::normalize_value(t, v.trim())
            .map_err(|e| CliError::Usage(format!("--holder {:?}: {e}", self.holder)))?;
        Ok((t.to_owned(), v))
    }
}

fn load(c: &ConfigArg) -> Result<PlatformConfig, CliError> {
    PlatformConfig::load(&c.config).map_err(platform_error)
}

fn platform_error(e: etee_platform::PlatformError) -> CliError {
    CliError::Usage(e.to_string())
}

pub(super) fn store(
    config: &PlatformConfig,
) -> Result<std::sync::Arc<dyn etee_store::Store>, CliError> {
    etee_store::open(&config.store).map_err(|e| store_error(config, e))
}

pub fn run(command: Command) -> Result<ExitCode, CliError> {
    match command {
        Command::Serve(c) => {
            // Structured logs on standard error: warnings and the `etee::audit` events of
            // KGSS (creations, reads, deletions) and the revocation lists read again by
            // default; RUST_LOG overrides.
            super::serve::init_logs("warn,etee::audit=info,etee_services::revocation=info");
            etee_platform::server::run(load(&c)?).map_err(platform_error)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Etk {
            command: EtkCommand::Register { config, also, etks },
        } => {
            let also = also
                .iter()
                .map(|a| {
                    a.split_once('=')
                        .map(|(t, v)| (t.trim().to_owned(), v.trim().to_owned()))
                        .ok_or_else(|| {
                            CliError::Usage(format!("--also {a:?}: expected TYPE=VALUE"))
                        })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let config = load(&config)?;
            // The platform's revocation lists too: a revoked holder's ETK is not taken.
            let anchors = config
                .revocation
                .load(etee_platform::anchors(&config.client_ca).map_err(platform_error)?)
                .map_err(|e| CliError::Usage(e.to_string()))?;
            if anchors.is_empty() {
                return Err(CliError::Usage(
                    "the configuration names no client_ca: ETKs cannot be checked".into(),
                ));
            }
            let store = store(&config)?;
            let mut failed = false;
            for path in etks {
                let bytes = crate::inputs::read_file(&path)?;
                // A new registration and its audit event in one transaction.
                match etee_platform::etkdepot::register_audited(
                    store.as_ref(),
                    &bytes,
                    &anchors,
                    etee_platform::unix_now(),
                    &also,
                    &admin_actor(),
                ) {
                    Ok(registered) => {
                        let record = &registered.record;
                        let own: Vec<_> = record
                            .identifiers
                            .iter()
                            .filter(|i| !registered.extra.contains(i))
                            .cloned()
                            .collect();
                        let ids =
                            etee_platform::etkdepot::registration_detail(&own, &registered.extra);
                        if !registered.new {
                            // Nothing changed: no event.
                            outln!("already registered {}: {ids}", path.display())?;
                            continue;
                        }
                        outln!("registered {}: {ids}", path.display())?;
                    }
                    Err(e) => {
                        eprintln!("etee: {}: {e}", path.display());
                        if let etee_platform::etkdepot::RegisterError::Invalid(names) = &e {
                            let names: Vec<&str> = names.split(", ").collect();
                            for hint in inputs::etk_hints(
                                &names,
                                "client_ca (in the platform's configuration) names",
                            ) {
                                eprintln!("  - {hint}");
                            }
                        }
                        failed = true;
                    }
                }
            }
            Ok(if failed {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Etk {
            command:
                EtkCommand::Remove {
                    config,
                    digests,
                    etks,
                },
        } => etk_remove(&load(&config)?, &digests, &etks),
        Command::Etk {
            command:
                EtkCommand::Find {
                    config,
                    identifier,
                    application_id,
                    json,
                },
        } => etk_find(
            &load(&config)?,
            &identifier,
            application_id.as_deref(),
            json,
        ),
        Command::Attributes { command } => attributes(command),
        Command::Kgss {
            command:
                KgssCommand::List {
                    config,
                    creator,
                    json,
                },
        } => super::platform_kgss::list(&load(&config)?, creator.as_deref(), json),
        Command::Pki(args) => super::pki::make_world(args),
        Command::Audit {
            config,
            tail,
            filter,
            json,
        } => audit(&load(&config)?, tail, &EventFilter::try_from(filter)?, json),
    }
}

/// `etee platform audit`'s filters: an event is shown when it matches every one given.
#[derive(clap::Args, Default)]
pub struct EventFilterArgs {
    /// Events at or after this time (RFC 3339).
    #[arg(long, value_name = "RFC3339")]
    since: Option<String>,
    /// Events before this time (RFC 3339).
    #[arg(long, value_name = "RFC3339")]
    until: Option<String>,
    /// Events of this action (`kgss.read`), or of every action under it (`kgss`).
    #[arg(long, value_name = "ACTION")]
    action: Option<String>,
    /// Events whose actor (the caller, `TYPE=VALUE (APPLICATION)`, or `admin uid N`)
    /// contains this text (e.g. a NIHII number).
    #[arg(long, value_name = "TEXT")]
    actor: Option<String>,
    /// Events about this subject (a KGSS or KeyDepot key id in hex, an identifier...).
    #[arg(long, value_name = "SUBJECT")]
    subject: Option<String>,
    /// Events with this outcome (`granted`, `denied`, `created`, `deleted`, ...).
    #[arg(long, value_name = "OUTCOME")]
    outcome: Option<String>,
}

/// What an event must be to be shown (see [`EventFilterArgs`]).
#[derive(Debug, Default)]
struct EventFilter {
    /// Unix seconds, inclusive.
    since: Option<i64>,
    /// Unix seconds, exclusive.
    until: Option<i64>,
    action: Option<String>,
    actor: Option<String>,
    subject: Option<String>,
    outcome: Option<String>,
}

impl TryFrom<EventFilterArgs> for EventFilter {
    type Error = CliError;

    fn try_from(a: EventFilterArgs) -> Result<Self, CliError> {
        let time = |flag: &str, text: Option<&str>| {
            text.map(|t| {
                time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
                    .map(|t| t.unix_timestamp())
                    .map_err(|e| {
                        CliError::Usage(format!("{flag} {t:?}: not an RFC 3339 time ({e})"))
                    })
            })
            .transpose()
        };
        let filter = EventFilter {
            since: time("--since", a.since.as_deref())?,
            until: time("--until", a.until.as_deref())?,
            action: a.action,
            actor: a.actor,
            subject: a.subject,
            outcome: a.outcome,
        };
        if let (Some(since), Some(until)) = (filter.since, filter.until) {
            if until <= since {
                return Err(CliError::Usage(
                    "--until is not after --since: no event could match".into(),
                ));
            }
        }
        Ok(filter)
    }
}

impl EventFilter {
    fn matches(&self, e: &etee_store::audit::AuditEvent) -> bool {
        self.since.is_none_or(|t| e.at >= t)
            && self.until.is_none_or(|t| e.at < t)
            && self.action.as_deref().is_none_or(|a| {
                e.action == a
                    || e.action
                        .strip_prefix(a)
                        .is_some_and(|rest| rest.starts_with('.'))
            })
            && self.actor.as_deref().is_none_or(|a| e.actor.contains(a))
            // Key ids are hex: either case.
            && self
                .subject
                .as_deref()
                .is_none_or(|s| e.subject.eq_ignore_ascii_case(s))
            && self.outcome.as_deref().is_none_or(|o| e.outcome == o)
    }

    fn is_empty(&self) -> bool {
        self.since.is_none()
            && self.until.is_none()
            && self.action.is_none()
            && self.actor.is_none()
            && self.subject.is_none()
            && self.outcome.is_none()
    }
}

/// Walks the whole chain page by page (constant memory), keeping the last `tail` events
/// that `filter` lets through.
fn audit(
    config: &PlatformConfig,
    tail: usize,
    filter: &EventFilter,
    json: bool,
) -> Result<ExitCode, CliError> {
    use etee_store::audit::{self, GENESIS};
    const PAGE: usize = 1000;
    let store = store(config)?;
    let (mut seq, mut hash) = (0u64, GENESIS);
    let mut last = std::collections::VecDeque::with_capacity(tail);
    let mut broken = None;
    let mut matched = 0u64;
    let mut progress = super::audit::Progress::unsegmented(
        "events",
        std::io::IsTerminal::is_terminal(&std::io::stderr()),
    );
    loop {
        let page = store
            .events(seq, PAGE)
            .map_err(|e| CliError::Usage(format!("store: {e}")))?;
        if page.is_empty() {
            break;
        }
        match audit::verify(seq, hash, &page) {
            Ok(head) => {
                (seq, hash) = head;
                progress.tick(seq, seq);
            }
            Err(e) => {
                broken = Some(e.to_string());
                break;
            }
        }
        for e in page.into_iter().filter(|e| filter.matches(&e.event)) {
            matched += 1;
            if tail > 0 {
                if last.len() == tail {
                    last.pop_front();
                }
                last.push_back(e);
            }
        }
    }
    progress.finish();
    if json {
        let events: Vec<_> = last
            .iter()
            .map(|e| {
                serde_json::json!({
                    "sequence": e.sequence, "at": e.event.at, "action": e.event.action,
                    "actor": e.event.actor, "subject": e.event.subject,
                    "outcome": e.event.outcome, "detail": e.event.detail,
                })
            })
            .collect();
        outln!(
            "{}",
            serde_json::json!({
                "intact": broken.is_none(), "events": seq, "head": hex::encode(hash),
                "break": broken, "matched": matched, "tail": events,
            })
        )?;
    } else {
        match &broken {
            None => outln!("OK      {seq} events, head {}", hex::encode(hash))?,
            Some(b) => outln!("BROKEN  after event {seq}: {b}")?,
        }
        if !filter.is_empty() {
            outln!("        {matched} matching event(s) among the {seq} verified")?;
        }
        for e in &last {
            outln!(
                "  #{} {} {:<12} {:<9} {} {}{}",
                e.sequence,
                crate::inputs::rfc3339(e.event.at),
                e.event.action,
                e.event.outcome,
                e.event.subject,
                e.event.actor,
                e.event
                    .detail
                    .as_deref()
                    .map(|d| format!(" [{d}]"))
                    .unwrap_or_default()
            )?;
        }
    }
    Ok(if broken.is_none() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn attributes(command: AttributesCommand) -> Result<ExitCode, CliError> {
    match command {
        AttributesCommand::Set {
            config,
            holder,
            recognised_pharmacy,
            doctor,
            attribute,
        } => {
            let config = load(&config)?;
            let (t, v) = holder.parse()?;
            let attribute = if recognised_pharmacy {
                etee_store::Attribute {
                    namespace: vocabulary::CERTIFIED_NS.into(),
                    name: vocabulary::RECOGNISED_PHARMACY.into(),
                    value: "true".into(),
                }
            } else if let Some(number) = doctor {
                etee_store::Attribute {
                    namespace: vocabulary::CERTIFIED_NS.into(),
                    name: vocabulary::DOCTOR_NIHII11.into(),
                    value: doctor_nihii11(&t, &v, number.as_deref())?,
                }
            } else if let Some(a) = attribute {
                // A number of the vocabulary (an SSIN, a NIHII11) is stored in the 11-digit
                // form conditions are compared in; one that has none is refused here
                // rather than matched by a "no value" condition and missed by an exclusion.
                let value = match vocabulary::value_type(&a[0], &a[1]) {
                    Some(t) => etee_formats::identity::normalize_value(t, &a[2]).map_err(|e| {
                        CliError::Usage(format!(
                            "--attribute {} {} {:?}: not a {t} number: {e}",
                            a[0], a[1], a[2]
                        ))
                    })?,
                    None => a[2].clone(),
                };
                etee_store::Attribute {
                    namespace: a[0].clone(),
                    name: a[1].clone(),
                    value,
                }
            } else {
                return Err(CliError::Usage(
                    "give --recognised-pharmacy, --doctor or --attribute NAMESPACE NAME VALUE"
                        .into(),
                ));
            };
            let store = store(&config)?;
            // The change and its event in one transaction: the chain shows it exactly when
            // it happened, and in the order of other changes and of the decisions made on it.
            let changed = admin_change(
                store.as_ref(),
                etee_store::Change::SetAttribute {
                    id_type: &t,
                    value: &v,
                    attribute: &attribute,
                },
                "attributes.set",
                format!("{t}={v}"),
                Some(format!(
                    "{} {} = {}",
                    attribute.namespace, attribute.name, attribute.value
                )),
            )?;
            if !changed {
                outln!(
                    "{t}={v}: {} {} = {} already (nothing changed, no event added)",
                    attribute.namespace,
                    attribute.name,
                    attribute.value
                )?;
                return Ok(ExitCode::SUCCESS);
            }
            outln!(
                "{t}={v}: {} {} = {}",
                attribute.namespace,
                attribute.name,
                attribute.value
            )?;
            Ok(ExitCode::SUCCESS)
        }
        AttributesCommand::Remove {
            config,
            holder,
            namespace,
            name,
        } => {
            let config = load(&config)?;
            let (t, v) = holder.parse()?;
            let store = store(&config)?;
            let removed = admin_change(
                store.as_ref(),
                etee_store::Change::RemoveAttribute {
                    id_type: &t,
                    value: &v,
                    namespace: &namespace,
                    name: &name,
                },
                "attributes.remove",
                format!("{t}={v}"),
                Some(format!("{namespace} {name}")),
            )?;
            if removed {
                outln!("{t}={v}: removed {namespace} {name}")?;
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!("etee: {t}={v} has no attribute {namespace} {name}");
                Ok(ExitCode::from(1))
            }
        }
        AttributesCommand::List { config, json } => {
            let config = load(&config)?;
            let holders = store(&config)?
                .list_attribute_holders()
                .map_err(|e| CliError::Usage(format!("store: {e}")))?;
            if json {
                let list: Vec<_> = holders
                    .iter()
                    .map(|(t, v, attrs)| {
                        serde_json::json!({
                            "type": t, "value": v,
                            "attributes": attrs.iter().map(|a| serde_json::json!({
                                "namespace": a.namespace, "name": a.name, "value": a.value
                            })).collect::<Vec<_>>(),
                        })
                    })
                    .collect();
                outln!("{}", serde_json::Value::Array(list))?;
            } else {
                for (t, v, attrs) in &holders {
                    for a in attrs {
                        outln!("{t}={v}\t{} {} = {}", a.namespace, a.name, a.value)?;
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The NIHII11 number `--doctor [NIHII11]` gives a holder `(holder_type, holder_value)`
/// (already normalised): the number given, zero-padded to 11 digits; without one, the
/// holder's own value when the holder is `NIHII11=…`. A holder known otherwise (an SSIN:
/// doctors are persons) must be given the number, and a NIHII11 holder cannot be given
/// another number than its own.
fn doctor_nihii11(
    holder_type: &str,
    holder_value: &str,
    number: Option<&str>,
) -> Result<String, CliError> {
    let nihii11 = match number {
        Some(n) => etee_formats::identity::normalize_value("NIHII11", n.trim())
            .map_err(|e| CliError::Usage(format!("--doctor {n:?}: {e}")))?,
        None if holder_type == "NIHII11" => return Ok(holder_value.to_owned()),
        None => {
            return Err(CliError::Usage(format!(
                "--doctor needs the doctor's NIHII11 number for the holder \
                 {holder_type}={holder_value} (e.g. --doctor 10203040506); only a holder \
                 NIHII11=… is its own number"
            )))
        }
    };
    if holder_type == "NIHII11" && nihii11 != holder_value {
        return Err(CliError::Usage(format!(
            "--doctor {nihii11}: the holder NIHII11={holder_value} is a doctor whose \
             NIHII11 number is {holder_value}"
        )));
    }
    Ok(nihii11)
}

/// A store error, naming the store (a PostgreSQL URL's password hidden).
pub(super) fn store_error(config: &PlatformConfig, e: etee_store::Error) -> CliError {
    CliError::Usage(format!(
        "store {}: {e}",
        etee_platform::config::redacted_store(&config.store)
    ))
}

/// `etk remove`: each ETK by digest or file, unpublished and recorded.
fn etk_remove(
    config: &PlatformConfig,
    digests: &[String],
    files: &[PathBuf],
) -> Result<ExitCode, CliError> {
    // Everything is read and checked before anything is removed.
    let mut wanted: Vec<([u8; 32], String)> = Vec::new();
    for hex_digest in digests {
        let digest = hex::decode(hex_digest.trim())
            .ok()
            .and_then(|d| <[u8; 32]>::try_from(d).ok())
            .ok_or_else(|| {
                CliError::Usage(format!(
                    "--digest {hex_digest:?}: expected a SHA-256 in hex (64 digits)"
                ))
            })?;
        wanted.push((digest, hex_digest.trim().to_ascii_lowercase()));
    }
    for path in files {
        let bytes = crate::inputs::read_file(path)?;
        let etk = etee_formats::etk::Etk::parse(&bytes)
            .map_err(|e| CliError::Usage(format!("{}: not an ETK: {e}", path.display())))?;
        wanted.push((openssl::sha::sha256(etk.der()), path.display().to_string()));
    }
    let store = store(config)?;
    let mut missing = false;
    for (digest, name) in wanted {
        // The removal and its audit event in one transaction.
        let removed = etee_platform::etkdepot::remove_audited(
            store.as_ref(),
            &digest,
            etee_platform::unix_now(),
            &admin_actor(),
        )
        .map_err(|e| store_error(config, e))?;
        if let Some(record) = removed {
            // Every identifier it was published under (`--also` ones too).
            let ids = etee_platform::etkdepot::describe(&record.identifiers);
            outln!("removed {name} ({}): {ids}", hex::encode(digest))?;
        } else {
            eprintln!(
                "etee: {name}: not published (SHA-256 {})",
                hex::encode(digest)
            );
            missing = true;
        }
    }
    Ok(if missing {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// `etk find`: what the store holds under an identifier, whatever its validity.
fn etk_find(
    config: &PlatformConfig,
    identifier: &str,
    application_id: Option<&str>,
    json: bool,
) -> Result<ExitCode, CliError> {
    let (id_type, value) = identifier.split_once('=').ok_or_else(|| {
        CliError::Usage(format!("--identifier {identifier:?}: expected TYPE=VALUE"))
    })?;
    let wanted = etee_services::etkdepot::Identifier::new(id_type, value, application_id)
        .normalized()
        .map_err(|e| CliError::Usage(format!("--identifier {identifier:?}: {e}")))?;
    let store = store(config)?;
    let found = store
        .find_etks(
            &wanted.id_type,
            &wanted.value,
            wanted.application_id.as_deref(),
        )
        .map_err(|e| store_error(config, e))?;
    let now = etee_platform::unix_now();
    let time = crate::inputs::rfc3339;
    // The window lookups answer each in (both its certificates'), not the record's dates
    // (the encryption certificate's alone); an unreadable ETK is never answered.
    let shown: Vec<_> = found
        .iter()
        .map(|r| (r, etee_platform::etkdepot::answered_window(r)))
        .collect();
    if json {
        let list: Vec<_> = shown
            .iter()
            .map(|(r, window)| {
                let (not_before, not_after) = window.unwrap_or((r.not_before, r.not_after));
                serde_json::json!({
                    "sha256": hex::encode(r.digest),
                    "identifiers": etee_platform::etkdepot::describe(&r.identifiers),
                    "not_before": time(not_before),
                    "not_after": time(not_after),
                    "valid_now": window.is_some_and(|(b, a)| b <= now && now < a),
                    "readable": window.is_some(),
                    "registered_at": time(r.registered_at),
                })
            })
            .collect();
        outln!("{}", serde_json::Value::Array(list))?;
    } else if found.is_empty() {
        outln!("no ETK published under {identifier}")?;
    } else {
        for (r, window) in &shown {
            let (not_before, not_after) = window.unwrap_or((r.not_before, r.not_after));
            let validity = match window {
                None => "unreadable: never answered",
                Some(_) if now < not_before => "not yet valid",
                Some(_) if now >= not_after => "expired",
                Some(_) => "valid",
            };
            outln!(
                "{}  {}  {} to {} ({validity}), registered {}",
                hex::encode(r.digest),
                etee_platform::etkdepot::describe(&r.identifiers),
                time(not_before),
                time(not_after),
                time(r.registered_at)
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Makes `change` and appends its admin event in one transaction (nothing when the change
/// finds nothing to act on): whether it changed something.
fn admin_change(
    store: &dyn etee_store::Store,
    change: etee_store::Change<'_>,
    action: &str,
    subject: String,
    detail: Option<String>,
) -> Result<bool, CliError> {
    let event = etee_platform::audit::event(
        etee_platform::unix_now(),
        action,
        &admin_actor(),
        subject,
        "done",
        detail,
    );
    match store.apply_with_event(change, &event) {
        Ok(Some(sequence)) => {
            etee_platform::audit::log(sequence, &event);
            Ok(true)
        }
        Ok(None) => Ok(false),
        Err(e) => Err(CliError::Usage(format!("store: {e}"))),
    }
}

/// Who runs an administrative command, as its audit events name it.
fn admin_actor() -> String {
    format!("admin uid {}", nix::unistd::getuid().as_raw())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_doctor_number_is_given_or_the_holders_own() {
        // A NIHII11 holder: its own number, given or not.
        assert_eq!(
            doctor_nihii11("NIHII11", "10203040506", None).unwrap(),
            "10203040506"
        );
        assert_eq!(
            doctor_nihii11("NIHII11", "10203040506", Some("10203040506")).unwrap(),
            "10203040506"
        );
        assert!(doctor_nihii11("NIHII11", "10203040506", Some("10203040507")).is_err());
        // A person: the number is needed, zero-padded to 11 digits; the SSIN is never it.
        let e = doctor_nihii11("SSIN", "85010112345", None).unwrap_err();
        assert!(e.to_string().contains("NIHII11 number"), "{e}");
        assert_eq!(
            doctor_nihii11("SSIN", "85010112345", Some("1020304050")).unwrap(),
            "01020304050"
        );
        for bad in ["102030405067", "1020304050x", ""] {
            assert!(
                doctor_nihii11("SSIN", "85010112345", Some(bad)).is_err(),
                "{bad}"
            );
        }
    }

    /// `--doctor` parses with and without a value.
    #[test]
    fn doctor_takes_an_optional_value() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(subcommand)]
            command: Command,
        }
        let parse = |args: &[&str]| {
            let mut all = vec!["etee", "attributes", "set", "--config", "p.toml"];
            all.extend_from_slice(args);
            match Cli::try_parse_from(all).map(|c| c.command) {
                Ok(Command::Attributes {
                    command: AttributesCommand::Set { doctor, .. },
                }) => Ok(doctor),
                Ok(_) => panic!("another command"),
                Err(e) => Err(e.to_string()),
            }
        };
        assert_eq!(
            parse(&["--holder", "NIHII11=10203040506", "--doctor"]),
            Ok(Some(None))
        );
        assert_eq!(
            parse(&["--doctor", "--holder", "NIHII11=10203040506"]),
            Ok(Some(None))
        );
        assert_eq!(
            parse(&["--holder", "SSIN=85010112345", "--doctor", "10203040506"]),
            Ok(Some(Some("10203040506".into())))
        );
        assert_eq!(parse(&["--holder", "SSIN=85010112345"]), Ok(None));
    }

    #[test]
    fn audit_events_are_shown_when_every_filter_matches() {
        let event = etee_store::audit::AuditEvent {
            at: 1_000,
            action: "kgss.read".into(),
            actor: "NIHII-PHARMACY=27150201".into(),
            subject: "00ff".into(),
            outcome: "granted".into(),
            detail: None,
        };
        let with = |edit: &dyn Fn(&mut EventFilterArgs)| {
            let mut a = EventFilterArgs::default();
            edit(&mut a);
            EventFilter::try_from(a).unwrap().matches(&event)
        };
        assert!(with(&|_| {}));
        assert!(with(&|a| a.action = Some("kgss.read".into())));
        assert!(
            with(&|a| a.action = Some("kgss".into())),
            "every kgss.* action"
        );
        assert!(
            !with(&|a| a.action = Some("kgs".into())),
            "not a part of a name"
        );
        assert!(!with(&|a| a.action = Some("kgss.delete".into())));
        assert!(with(&|a| a.actor = Some("27150201".into())));
        assert!(!with(&|a| a.actor = Some("27150202".into())));
        assert!(
            with(&|a| a.subject = Some("00FF".into())),
            "hex in either case"
        );
        assert!(!with(&|a| a.subject = Some("00f".into())));
        assert!(with(&|a| a.outcome = Some("granted".into())));
        assert!(!with(&|a| a.outcome = Some("denied".into())));
        assert!(
            with(&|a| a.since = Some("1970-01-01T00:16:40Z".into())),
            "since: inclusive"
        );
        assert!(!with(&|a| a.since = Some("1970-01-01T00:16:41Z".into())));
        assert!(
            !with(&|a| a.until = Some("1970-01-01T00:16:40Z".into())),
            "until: exclusive"
        );
        assert!(with(&|a| a.until = Some("1970-01-01T00:16:41Z".into())));
        assert!(!with(&|a| {
            a.action = Some("kgss".into());
            a.outcome = Some("denied".into());
        }));
        let empty_range = EventFilterArgs {
            since: Some("2026-01-02T00:00:00Z".into()),
            until: Some("2026-01-01T00:00:00Z".into()),
            ..EventFilterArgs::default()
        };
        assert!(EventFilter::try_from(empty_range).is_err());
        let bad = EventFilterArgs {
            since: Some("last week".into()),
            ..EventFilterArgs::default()
        };
        assert!(EventFilter::try_from(bad).is_err());
    }
}
