//! `etee hsm init` and `etee keys import|generate|list`: the token and its keys.

use crate::{inputs, CliError};
use etee_hsm::{Config, Hsm, ImportOptions};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(clap::Subcommand)]
pub enum HsmCommand {
    /// Initialise the configured token (label, SO PIN and user PIN from the PIN files, or
    /// a new SO PIN kept only as M-of-N share files with --so-pin-shares).
    Init {
        /// The TOML configuration (see hsm-config/institution.toml).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Instead of so_pin_file: make a random SO PIN and keep it only as N share files,
        /// any M of which rebuild it (e.g. `2/3`), for `hsm init-pin --so-pin-share`.
        #[arg(long, value_name = "M/N", requires = "shares_dir")]
        so_pin_shares: Option<String>,
        /// Where the share files are written (new files, mode 0600; the directory is made,
        /// mode 0700, if missing); hand each to a different officer and remove them from
        /// this machine.
        #[arg(long, value_name = "DIR", requires = "so_pin_shares")]
        shares_dir: Option<PathBuf>,
    },
    /// The security officer sets the token's user PIN to the one of pin_file (after a
    /// lock-out, CKR_PIN_LOCKED, or to change it); the keys are untouched. The SO PIN comes
    /// from so_pin_file, or from share files given with --so-pin-share.
    InitPin {
        /// The TOML configuration (see hsm-config/institution.toml).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// A share file of the SO PIN (repeat: as many as the quorum needs).
        #[arg(long = "so-pin-share", value_name = "FILE")]
        so_pin_shares: Vec<PathBuf>,
    },
}

#[derive(clap::Subcommand)]
pub enum KeysCommand {
    /// Import the authentication key and every ETK key of an eHealth keystore.
    Import {
        /// The TOML configuration (see hsm-config/institution.toml).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// The eHealth keystore (.p12).
        #[arg(long, value_name = "P12")]
        p12: PathBuf,
        /// File holding the keystore password (else ETEE_KEYSTORE_PASSWORD).
        #[arg(long, value_name = "FILE")]
        password_file: Option<PathBuf>,
        /// A renewed keystore: when the token holds another authentication key, retire it
        /// (renamed `authentication-retired-<serial>`, no longer allowed to sign, kept)
        /// and import this keystore's. Restart what uses the token afterwards.
        #[arg(long)]
        replace_authentication: bool,
        /// Import although the keystore's certificates name another holder than the
        /// token's authentication certificate (refused by default: a token holds the keys
        /// of one holder). For keystores of one holder issued under different names.
        #[arg(long)]
        allow_other_holder: bool,
    },
    /// Generate a key pair in the token following a profile of the configuration.
    Generate {
        /// The TOML configuration (see hsm-config/institution.toml).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// `authentication`, `etk`, `kgss-wrap`, or a `[hsm.profiles.NAME]` of the
        /// configuration.
        #[arg(long, value_name = "NAME")]
        profile: String,
        /// Print the key (id, label, role, bits, public key in hex) as one JSON line.
        #[arg(long)]
        json: bool,
    },
    /// A certificate signing request (PKCS#10, PEM) for a signing key generated in the
    /// token, signed with the key through the custody core (RSASSA-PSS SHA-256, on the
    /// audit chain; in `etee custody serve` with `[custody] mode = "process"`): what the CA
    /// (eHealth's, for an authentication certificate) needs. ETK keys cannot sign: they
    /// have no CSR.
    Csr {
        /// The TOML configuration (see hsm-config/institution.toml).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// CKA_ID of the key (e.g. `authentication`).
        #[arg(long, value_name = "ID")]
        key: String,
        /// The subject, `ATTR=VALUE` pairs separated by commas, most significant first
        /// (`\,` for a comma inside a value), e.g.
        /// `C=BE,O=Federal Government,OU=eHealth-platform Belgium,CN=...`.
        #[arg(long)]
        subject: String,
        /// Write the CSR here instead of standard output.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Install the certificate a CA issued for a key generated in the token (and the
    /// certificates of its chain). An ETK key is renamed to its certificate's decimal
    /// serial, as eHealth keystores name them.
    InstallCert {
        /// The TOML configuration (see hsm-config/institution.toml).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// CKA_ID of the key (`authentication`, or the `etk-pending-…` id `keys generate`
        /// printed).
        #[arg(long, value_name = "ID")]
        key: String,
        /// The certificate (PEM, DER or Base64).
        #[arg(long, value_name = "FILE")]
        cert: PathBuf,
        /// A CA certificate of its chain (repeatable), stored beside it.
        #[arg(long, value_name = "FILE")]
        chain: Vec<PathBuf>,
    },
    /// A KeyDepot registration request for a signing key generated in the token: the
    /// public key, its key id (the RFC 5280 SHA-1 key identifier, usable as a CMS
    /// subjectKeyIdentifier), a proof of possession signed by the key and an attestation
    /// (token, non-exportability) signed by the token's authentication key, both through
    /// the custody core. JSON on standard output, for `POST /etee/v1/keydepot/keys`.
    Attest {
        /// The TOML configuration (see hsm-config/institution.toml).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// CKA_ID of the key to register (a signing key: a profile with role authentication).
        #[arg(long, value_name = "ID")]
        key: String,
        /// A label for the key in KeyDepot.
        #[arg(long)]
        label: Option<String>,
    },
    /// Destroy a key and the token's other objects with its id (public key, certificate),
    /// on the audit chain. Not the active authentication key, not a wrapping key; an ETK
    /// key only knowing that messages sealed for it can no longer be opened. Run with the
    /// service stopped (the audit chain is locked while it runs).
    Destroy {
        /// The TOML configuration (see hsm-config/institution.toml).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// CKA_ID of the key (as `keys list` shows it).
        #[arg(long, value_name = "ID")]
        key: String,
        /// Destroy it; without this flag, only say what would be destroyed.
        #[arg(long)]
        yes: bool,
    },
    /// List the token's keys, certificates and their security attributes.
    List {
        /// The TOML configuration (see hsm-config/institution.toml).
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

/// The token, logged in with the user PIN under the custody core's rule (refused without
/// asking the token once the audit chain ends locked out; the login recorded, a wrong PIN
/// counted), for the commands that use the token without the core.
fn open(config: &Config) -> Result<Hsm, CliError> {
    Ok(etee_hsm::CustodyKeys::open_token(
        &config.hsm,
        &config.custody,
    )?)
}

/// `keys generate`'s answer for a reader: what was made, and the public key a
/// registration or a certificate request needs.
fn print_generated(key: &etee_hsm::GeneratedKey) -> Result<(), CliError> {
    let kind = if key.public_key_hex.is_empty() {
        format!("AES {} bits", key.bits)
    } else {
        format!("RSA {} bits", key.bits)
    };
    outln!(
        "generated {} key {:?} (label {:?}, {kind}) in the token",
        key.role,
        key.id,
        key.label
    )?;
    if !key.public_key_hex.is_empty() {
        outln!(
            "public key (SubjectPublicKeyInfo DER, hex): {}",
            key.public_key_hex
        )?;
    }
    Ok(())
}

fn json_line(value: &impl serde::Serialize) -> Result<(), CliError> {
    let text = serde_json::to_string(value).map_err(|e| CliError::Usage(e.to_string()))?;
    outln!("{text}")?;
    Ok(())
}

/// After a command that may have added files to the token or the audit chain (also when
/// it failed half-way): what root left where the service's user cannot read it.
fn warn_root_owned(config: &Path) {
    if let Ok(config) = Config::load(config) {
        for w in etee_hsm::ownership::root_owned_warnings(&config) {
            eprintln!("etee: warning: {w}");
        }
    }
}

impl HsmCommand {
    fn config(&self) -> &Path {
        match self {
            Self::Init { config, .. } | Self::InitPin { config, .. } => config,
        }
    }
}

impl KeysCommand {
    fn config(&self) -> &Path {
        match self {
            Self::Import { config, .. }
            | Self::Generate { config, .. }
            | Self::Csr { config, .. }
            | Self::InstallCert { config, .. }
            | Self::Attest { config, .. }
            | Self::Destroy { config, .. }
            | Self::List { config, .. } => config,
        }
    }
}

pub fn run_hsm(command: HsmCommand) -> Result<ExitCode, CliError> {
    let config = command.config().to_owned();
    let result = hsm_command(command);
    warn_root_owned(&config);
    result
}

fn hsm_command(command: HsmCommand) -> Result<ExitCode, CliError> {
    match command {
        HsmCommand::Init {
            config,
            so_pin_shares: Some(quorum),
            shares_dir: Some(dir),
        } => init_with_shares(&config, &quorum, &dir),
        HsmCommand::Init { config, .. } => {
            let config = load_config(&config)?;
            let so_pin = config.hsm.so_pin()?;
            let summary = etee_hsm::init_token_reporting(&config.hsm, &so_pin).map_err(|e| {
                if e.token_initialised {
                    // A new run would refuse the token: say what state it is in.
                    CliError::Usage(format!(
                        "HSM: {}. The token was initialised (label and SO PIN set), so a \
                         new `hsm init` refuses it, but its user PIN may not be set: see \
                         `etee custody status --config FILE`; `etee hsm init-pin --config \
                         FILE` sets it",
                        e.error
                    ))
                } else {
                    e.error.into()
                }
            })?;
            print_initialised(&summary)?;
            Ok(ExitCode::SUCCESS)
        }
        HsmCommand::InitPin {
            config,
            so_pin_shares,
        } => {
            let config = load_config(&config)?;
            let so_pin = if so_pin_shares.is_empty() {
                if config.hsm.so_pin.is_none() {
                    return Err(CliError::Usage(
                        "the SO PIN is needed: so_pin_file in [hsm], or --so-pin-share FILE \
                         for each share of a quorum"
                            .into(),
                    ));
                }
                config.hsm.so_pin()?
            } else {
                etee_hsm::so_shares::so_pin_from_share_files(&so_pin_shares)?
            };
            // The audit chain is opened (locked, verified) before the PIN changes, so that
            // the change cannot happen unrecorded.
            let summary =
                etee_hsm::CustodyKeys::set_user_pin(&config.hsm, &config.custody, &so_pin)
                    .map_err(|e| match (&e, &config.hsm.so_pin) {
                        (etee_hsm::HsmError::WrongPin { .. }, Some(source))
                            if so_pin_shares.is_empty() =>
                        {
                            match source.whitespace_hint() {
                                Some(hint) => CliError::Usage(format!("HSM: {e}. Note: {hint}")),
                                None => e.into(),
                            }
                        }
                        _ => e.into(),
                    })?;
            drop(so_pin);
            outln!(
                "the user PIN of token {} is now the one of pin_file; recorded on the audit \
                 chain, and the custody core's wrong-PIN count is cleared",
                summary.name()
            )?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The line `hsm init` prints for the token it initialised.
fn print_initialised(summary: &etee_hsm::TokenSummary) -> Result<(), CliError> {
    outln!(
        "initialised token {} in slot {} ({} {})",
        summary.name(),
        summary.slot,
        summary.manufacturer,
        summary.model
    )?;
    Ok(())
}

/// `hsm init --so-pin-shares M/N --shares-dir DIR`: everything that can refuse without
/// touching the token (a token with the label already initialised, no free token, PIN
/// lengths) is checked before any share file is written; the share files are then written
/// (and synced) before the token is initialised, so that no token is ever left with an SO
/// PIN nobody has; they are removed again if the initialisation fails before
/// `C_InitToken` did anything.
fn init_with_shares(config: &Path, quorum: &str, dir: &Path) -> Result<ExitCode, CliError> {
    let (threshold, count) = etee_hsm::so_shares::parse_quorum(quorum)?;
    let config = load_config(config)?;
    if config.hsm.so_pin.is_some() {
        return Err(CliError::Usage(
            "--so-pin-shares makes a new SO PIN: remove so_pin_file (or so_pin_credential) \
             from [hsm], so that the configuration does not name a PIN the token does not have"
                .into(),
        ));
    }
    let label = config.hsm.token.label.clone().ok_or_else(|| {
        CliError::Usage("[hsm] token_label is needed to initialise a token".into())
    })?;
    let (so_pin, shares) = etee_hsm::so_shares::new_so_pin(threshold, count)?;
    etee_hsm::check_init(&config.hsm, &so_pin)?;
    if !dir.exists() {
        // A new directory only its owner can enter: the shares are secrets.
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        // The new directory's entry, durable like the files in it: the shares are the
        // only copy of the SO PIN.
        builder
            .create(dir)
            .and_then(|()| etee_custody::file_sink::sync_dir(dir))
            .map_err(|source| CliError::File {
                path: dir.display().to_string(),
                source,
            })?;
    }
    // The label names the files: anything but a plain name character becomes `_`.
    let file_label: String = label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let paths: Vec<PathBuf> = (1..=count)
        .map(|i| dir.join(format!("{file_label}-so-pin-share-{i}-of-{count}.txt")))
        .collect();
    if let Some(existing) = paths.iter().find(|p| p.exists()) {
        return Err(CliError::Usage(format!(
            "{} exists (the share of an earlier split?): refusing to overwrite a share file; \
             choose another --shares-dir",
            existing.display()
        )));
    }
    let mut written = Vec::new();
    let remove_written = |written: &[PathBuf]| {
        for path in written {
            let _ = std::fs::remove_file(path);
        }
    };
    for (share, path) in shares.iter().zip(&paths) {
        let wrote = etee_hsm::so_shares::share_file_text(share, &label)
            .map_err(CliError::from)
            .and_then(|text| crate::output::write_file(path, text.as_bytes(), true));
        if let Err(e) = wrote {
            remove_written(&written);
            return Err(e);
        }
        written.push(path.clone());
    }
    let kept = |e: &etee_hsm::HsmError, why: &str| {
        CliError::Usage(format!(
            "{e}\n{why}: its share files are kept ({}); with {threshold} of them, `etee hsm \
             init-pin` sets the user PIN",
            dir.display()
        ))
    };
    let summary = match etee_hsm::init_token_reporting(&config.hsm, &so_pin) {
        Ok(s) => s,
        Err(e) if e.token_initialised => {
            return Err(kept(
                &e.error,
                &format!(
                    "the token {label:?} was initialised with the new SO PIN before this failure"
                ),
            ));
        }
        // It was not there before (checked above): a failed `C_InitToken` may have made it.
        Err(e) if labelled_token_exists(&config.hsm, &label) => {
            return Err(kept(
                &e.error,
                &format!(
                    "a token {label:?} is listed now (or the list could not be read), which was \
                     not before: it may have the new SO PIN"
                ),
            ));
        }
        Err(e) => {
            remove_written(&written);
            return Err(e.error.into());
        }
    };
    print_initialised(&summary)?;
    outln!("its SO PIN exists only as {count} shares, any {threshold} of which rebuild it:")?;
    for path in &paths {
        outln!("  {}", path.display())?;
    }
    outln!(
        "give each to a different officer and remove them from this machine; \
         `etee hsm init-pin --config FILE --so-pin-share FILE ...` uses {threshold} of them"
    )?;
    Ok(ExitCode::SUCCESS)
}

pub fn run_keys(command: KeysCommand) -> Result<ExitCode, CliError> {
    let config = command.config().to_owned();
    let result = keys_command(command);
    warn_root_owned(&config);
    result
}

fn keys_command(command: KeysCommand) -> Result<ExitCode, CliError> {
    match command {
        KeysCommand::Import {
            config,
            p12,
            password_file,
            replace_authentication,
            allow_other_holder,
        } => {
            let config = load_config(&config)?;
            let password = inputs::password(password_file.as_ref())?;
            let keystore = inputs::keystore(&p12, &password)?;
            let hsm = open(&config)?;
            let options = ImportOptions {
                replace_authentication,
                allow_other_holder,
                ..ImportOptions::default()
            };
            let report = hsm.import(&keystore, &options)?;
            if let Some(retired) = &report.retired_authentication {
                outln!(
                    "retired  the previous authentication key as {retired:?} (can no longer sign)"
                )?;
            }
            for w in &report.warnings {
                eprintln!("etee: warning: {w}");
            }
            for k in &report.keys {
                let state = if k.already_present {
                    "present "
                } else {
                    "imported"
                };
                outln!(
                    "{state} {} {:?} ({} bits){}",
                    k.role,
                    k.id,
                    k.bits,
                    k.subject
                        .as_deref()
                        .map(|s| format!(" {s}"))
                        .unwrap_or_default()
                )?;
            }
            for (alias, why) in &report.skipped {
                eprintln!("etee: skipped {alias:?}: {why}");
                if why.contains("\"authentication\"") {
                    eprintln!(
                        "etee: (a renewed keystore? --replace-authentication retires the token's \
                         authentication key and imports this one)"
                    );
                }
            }
            if report.ca_certificates_added > 0 {
                outln!("{} CA certificate(s) added", report.ca_certificates_added)?;
            }
            if report.keys.is_empty() {
                return Err(CliError::Usage(format!(
                    "{}: no key could be imported",
                    p12.display()
                )));
            }
            Ok(ExitCode::SUCCESS)
        }
        KeysCommand::Generate {
            config,
            profile,
            json,
        } => {
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
            if json {
                json_line(&key)?;
            } else {
                print_generated(&key)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        KeysCommand::Csr {
            config,
            key,
            subject,
            out,
        } => {
            let config = load_config(&config)?;
            let pem = csr_through_custody(&config, &key, &subject)?;
            match out {
                Some(path) => {
                    crate::output::write_file(&path, &pem, false)?;
                    eprintln!("etee: CSR for key {key:?} written to {}", path.display());
                }
                None => out!("{}", String::from_utf8_lossy(&pem))?,
            }
            Ok(ExitCode::SUCCESS)
        }
        KeysCommand::InstallCert {
            config,
            key,
            cert,
            chain,
        } => {
            let config = load_config(&config)?;
            let certificate = inputs::certificate(&cert)?;
            let chain = inputs::certificates(&chain)?;
            let hsm = open(&config)?;
            let id = hsm.install_certificate(&key, &certificate, &chain)?;
            outln!(
                "installed {} for key {id:?}{}",
                certificate.subject_string(),
                if id == key {
                    String::new()
                } else {
                    format!(" (renamed from {key:?})")
                }
            )?;
            Ok(ExitCode::SUCCESS)
        }
        KeysCommand::Attest { config, key, label } => {
            let config = load_config(&config)?;
            let request = super::attest::registration_request(&config, &key, label)?;
            outln!("{}", String::from_utf8_lossy(&request.to_json()))?;
            Ok(ExitCode::SUCCESS)
        }
        KeysCommand::Destroy { config, key, yes } => destroy(&config, &key, yes),
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
            outln!("token {}", inventory.token.name())?;
            let now = etee_formats::unix_now();
            for k in &inventory.keys {
                outln!(
                    "key  {:?} label {:?} role {} {} {} bits sensitive={} extractable={} mechanisms={}",
                    k.id,
                    k.label,
                    k.role_text(),
                    k.key_type,
                    k.key_bits,
                    flag(k.sensitive),
                    flag(k.extractable),
                    k.allowed_mechanisms.join(",")
                )?;
                if let Some(c) = &k.certificate {
                    outln!(
                        "     cert {} (serial {}), {}",
                        c.subject,
                        c.serial,
                        validity_text(c.not_after, now)
                    )?;
                }
            }
            for c in &inventory.other_certificates {
                outln!(
                    "cert {:?} {} (serial {}), {}",
                    c.id,
                    c.subject,
                    c.serial,
                    validity_text(c.not_after, now)
                )?;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// How long a listed certificate lasts, as `keys list` says it (pure): `valid until T`,
/// `ends T, in N days` within [`etee_services::lifetime::WARN_DAYS`] of its end (renewal
/// time), `ended T` after it (normal for an old ETK kept to read old messages).
fn validity_text(not_after: i64, now: i64) -> String {
    let end = crate::inputs::rfc3339(not_after);
    if now > not_after {
        return format!("ended {end}");
    }
    match etee_services::lifetime::ends_soon(not_after, now) {
        Some(left) => format!("ends {end}, {left}"),
        None => format!("valid until {end}"),
    }
}

/// A PEM CSR for `key`, its signature made through the custody core (so it is on the
/// audit chain like every other use of the key), where the configuration says it runs: in
/// this process, or in `etee custody serve` (`[custody] mode = "process"`).
fn csr_through_custody(config: &Config, key: &str, subject: &str) -> Result<Vec<u8>, CliError> {
    use etee_formats::keys::{KeyError, PrivateKeyOps};
    let pairs = subject_pairs(subject)?;
    let pairs: Vec<(&str, &str)> = pairs
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let subject = etee_hsm::keys::subject_der(&pairs)
        .map_err(|e| CliError::Usage(format!("--subject: {e}")))?;
    let custody = etee_hsm::CustodyHandle::open(config)?;
    let spki = custody.public_key_der(key)?;
    let info = etee_hsm::keys::csr_info(&subject, &spki);
    let signature = custody
        .sign_pss_sha256(
            &etee_formats::keys::KeyId(key.to_string()),
            &openssl::sha::sha256(&info),
        )
        .map_err(|e| match e {
            KeyError::Refused(_) => not_a_signing_key(&custody, config, key),
            e => CliError::Usage(format!("signing the CSR with key {key:?}: {e}")),
        })?;
    let der = etee_hsm::keys::csr_with_signature(&info, &signature);
    let request = openssl::x509::X509Req::from_der(&der)
        .and_then(|r| r.to_pem())
        .map_err(|e| CliError::Usage(format!("the CSR: {e}")))?;
    Ok(request)
}

/// Why the core refused to sign a CSR with `key`: asked of the core itself (the key's kind
/// is what the token says, and the question is recorded like the refusal).
fn not_a_signing_key(custody: &etee_hsm::CustodyHandle, config: &Config, key: &str) -> CliError {
    use etee_custody::KeyKind;
    let what = match custody.describe_key(key).map(|facts| facts.kind) {
        Ok(KeyKind::Encryption) => "an ETK (decryption) key",
        Ok(KeyKind::Wrapping) => "a wrapping (AES) key",
        _ => {
            return CliError::Usage(format!(
                "the custody core refused to sign the CSR with key {key:?}: its policy gives \
                 client {:?} no signing with that key",
                config.custody.client
            ))
        }
    };
    CliError::Usage(format!(
        "key {key:?} is {what}, which cannot sign: a CSR is signed by the key it certifies, \
         so CSRs are for authentication (signing) keys. An ETK key's certificate is issued \
         for its public key (`keys generate` prints it) and installed with `keys install-cert`"
    ))
}

/// `C=BE,O=Federal Government,CN=x` → `[("C","BE"), …]`; `\,` is a comma in a value.
fn subject_pairs(text: &str) -> Result<Vec<(String, String)>, CliError> {
    let mut parts = vec![String::new()];
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(next) => parts.last_mut().expect("one part").push(next),
                None => return Err(CliError::Usage("--subject ends with a lone \\".into())),
            },
            ',' => parts.push(String::new()),
            c => parts.last_mut().expect("one part").push(c),
        }
    }
    parts
        .into_iter()
        .map(|part| {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| CliError::Usage(format!("--subject: {part:?} is not ATTR=VALUE")))?;
            let (k, v) = (k.trim(), v.trim());
            if k.is_empty() || v.is_empty() {
                return Err(CliError::Usage(format!(
                    "--subject: {part:?} is not ATTR=VALUE"
                )));
            }
            Ok((k.to_string(), v.to_string()))
        })
        .collect()
}

/// Whether the module has a token labelled `label` (an error counts as yes: the caller
/// then keeps what it would otherwise throw away).
fn labelled_token_exists(hsm: &etee_hsm::HsmConfig, label: &str) -> bool {
    etee_hsm::Module::load(&hsm.module)
        .and_then(|m| m.tokens())
        .map_or(true, |tokens| tokens.iter().any(|t| t.label == label))
}

/// `keys destroy`: the plan (what goes, what the operator must know), then, with `--yes`,
/// the destruction through the custody core.
fn destroy(config: &Path, key: &str, yes: bool) -> Result<ExitCode, CliError> {
    let config = load_config(config)?;
    let custody = etee_hsm::CustodyKeys::open(&config.hsm, &config.custody)?;
    let plan = etee_hsm::destroy_plan(&custody.hsm().list()?, key)?;
    let what = match &plan.key.certificate {
        Some(c) => format!(
            "key {:?} ({}) with its public key and its certificate (serial {}, {})",
            plan.id, plan.key.key_type, c.serial, c.subject
        ),
        None => format!(
            "key {:?} ({}) with its public key",
            plan.id, plan.key.key_type
        ),
    };
    if let Some(w) = &plan.warning {
        eprintln!("etee: warning: {w}");
    }
    if !yes {
        outln!("would destroy {what}; run again with --yes to destroy it")?;
        return Ok(ExitCode::from(2));
    }
    let objects = custody.destroy_key(&plan)?;
    outln!("destroyed {what}: {objects} object(s), recorded on the audit chain")?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::{subject_pairs, validity_text};

    #[test]
    fn a_listed_certificate_says_how_long_it_lasts() {
        let now = 1_800_000_000;
        let day = 86_400;
        assert!(validity_text(now + 400 * day, now).starts_with("valid until 20"));
        assert_eq!(
            validity_text(now + 30 * day, now),
            format!(
                "ends {}, in 30 days",
                crate::inputs::rfc3339(now + 30 * day)
            )
        );
        assert!(validity_text(now + day + 1, now).ends_with(", in 1 day"));
        assert!(validity_text(now, now).ends_with(", in less than a day"));
        assert!(validity_text(now - 1, now).starts_with("ended 20"));
    }

    #[test]
    fn subjects_split_on_unescaped_commas() {
        let pairs = subject_pairs(r"C=BE, O=Federal Government\, FPS ,CN=a=b").unwrap();
        let pairs: Vec<(&str, &str)> = pairs
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            pairs,
            [("C", "BE"), ("O", "Federal Government, FPS"), ("CN", "a=b")]
        );
        for bad in ["", "C=BE,", "CN", "=x", "C=", r"C=BE\"] {
            assert!(subject_pairs(bad).is_err(), "{bad:?}");
        }
    }
}
