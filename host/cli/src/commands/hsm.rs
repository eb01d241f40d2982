//! `etee hsm init` and `etee keys import|generate|list`: the token and its keys.

use crate::{inputs, CliError};
use etee_hsm::{Config, Hsm, ImportOptions};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(clap::Subcommand)]
pub enum HsmCommand {
    /// Initialise the configured token (label, SO PIN and user PIN from the PIN files).
    Init {
        /// The TOML configuration (see hsm-config/institution.toml).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
}

#[derive(clap::Subcommand)]
pub enum KeysCommand {
    /// Import the authentication key and every ETK key of an eHealth keystore.
    Import {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// The eHealth keystore (.p12).
        #[arg(long, value_name = "P12")]
        p12: PathBuf,
        /// File holding the keystore password (else ETEE_KEYSTORE_PASSWORD).
        #[arg(long, value_name = "FILE")]
        password_file: Option<PathBuf>,
    },
    /// Generate a key pair in the token following a profile of the configuration.
    Generate {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// `authentication`, `etk`, or a `[hsm.profiles.NAME]` of the configuration.
        #[arg(long, value_name = "NAME")]
        profile: String,
    },
    /// A KeyDepot registration request for a signing key generated in the token: the
    /// public key, its key id (the RFC 5280 SHA-1 key identifier, usable as a CMS
    /// subjectKeyIdentifier), a proof of possession signed by the key and an attestation
    /// (token, non-exportability) signed by the token's authentication key, both through
    /// the custody core. JSON on standard output, for `POST /etee/v1/keydepot/keys`.
    Attest {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// CKA_ID of the key to register (a signing key: a profile with role authentication).
        #[arg(long, value_name = "ID")]
        key: String,
        /// A label for the key in KeyDepot.
        #[arg(long)]
        label: Option<String>,
    },
    /// List the token's keys, certificates and their security attributes.
    List {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Print JSON on standard output.
        #[arg(long)]
        json: bool,
    },
}

pub fn load_config(path: &Path) -> Result<Config, CliError> {
    Ok(Config::load(path)?)
}

fn open(config: &Config) -> Result<Hsm, CliError> {
    let hsm = Hsm::open(&config.hsm)?;
    for w in hsm.warnings() {
        eprintln!("etee: warning: {w}");
    }
    Ok(hsm)
}

fn json_line(value: &impl serde::Serialize) -> Result<(), CliError> {
    let text = serde_json::to_string(value).map_err(|e| CliError::Usage(e.to_string()))?;
    println!("{text}");
    Ok(())
}

pub fn run_hsm(command: HsmCommand) -> Result<ExitCode, CliError> {
    let HsmCommand::Init { config } = command;
    let config = load_config(&config)?;
    let summary = etee_hsm::init_token(&config.hsm)?;
    println!(
        "initialised token {} in slot {} ({} {})",
        summary.name(),
        summary.slot,
        summary.manufacturer,
        summary.model
    );
    Ok(ExitCode::SUCCESS)
}

pub fn run_keys(command: KeysCommand) -> Result<ExitCode, CliError> {
    match command {
        KeysCommand::Import {
            config,
            p12,
            password_file,
        } => {
            let config = load_config(&config)?;
            let password = inputs::password(password_file.as_ref())?;
            let keystore = inputs::keystore(&p12, &password)?;
            let hsm = open(&config)?;
            let report = hsm.import(&keystore, &ImportOptions::default())?;
            for w in &report.warnings {
                eprintln!("etee: warning: {w}");
            }
            for k in &report.keys {
                let state = if k.already_present {
                    "present "
                } else {
                    "imported"
                };
                println!(
                    "{state} {} {:?} ({} bits){}",
                    k.role,
                    k.id,
                    k.bits,
                    k.subject
                        .as_deref()
                        .map(|s| format!(" {s}"))
                        .unwrap_or_default()
                );
            }
            for (alias, why) in &report.skipped {
                eprintln!("etee: skipped {alias:?}: {why}");
            }
            if report.ca_certificates_added > 0 {
                println!("{} CA certificate(s) added", report.ca_certificates_added);
            }
            if report.keys.is_empty() {
                return Err(CliError::Usage(format!(
                    "{}: no key could be imported",
                    p12.display()
                )));
            }
            Ok(ExitCode::SUCCESS)
        }
        KeysCommand::Generate { config, profile } => {
            let config = load_config(&config)?;
            let p = config.hsm.profiles.get(&profile).ok_or_else(|| {
                let names: Vec<&str> = config.hsm.profiles.keys().map(String::as_str).collect();
                CliError::Usage(format!(
                    "no key profile {profile:?} (profiles: {})",
                    names.join(", ")
                ))
            })?;
            let hsm = open(&config)?;
            let key = hsm.generate(p)?;
            json_line(&key)?;
            eprintln!(
                "etee: generated {} key {:?} ({} bits) in the token",
                key.role, key.id, key.bits
            );
            Ok(ExitCode::SUCCESS)
        }
        KeysCommand::Attest { config, key, label } => {
            let config = load_config(&config)?;
            let request = super::attest::registration_request(&config, &key, label)?;
            println!("{}", String::from_utf8_lossy(&request.to_json()));
            Ok(ExitCode::SUCCESS)
        }
        KeysCommand::List { config, json } => {
            let config = load_config(&config)?;
            let hsm = open(&config)?;
            let inventory = hsm.list()?;
            if json {
                json_line(&inventory)?;
                return Ok(ExitCode::SUCCESS);
            }
            let flag = |b: Option<bool>| match b {
                Some(true) => "yes",
                Some(false) => "no",
                None => "?",
            };
            println!("token {}", inventory.token.name());
            for k in &inventory.keys {
                println!(
                    "key  {:?} label {:?} role {} {} {} bits sensitive={} extractable={} mechanisms={}",
                    k.id,
                    k.label,
                    k.role.map_or("?".to_string(), |r| r.to_string()),
                    k.key_type,
                    k.key_bits,
                    flag(k.sensitive),
                    flag(k.extractable),
                    k.allowed_mechanisms.join(",")
                );
                if let Some(c) = &k.certificate {
                    println!("     cert {} (serial {})", c.subject, c.serial);
                }
            }
            for c in &inventory.other_certificates {
                println!("cert {:?} {} (serial {})", c.id, c.subject, c.serial);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
