//! `etee platform pki` (alias `etee pki init`): a local ETEE world — the CA, the ETK
//! registration authority, a TLS server certificate for the platform, and institutions
//! with an authentication certificate and an ETK.
//!
//! An institution's keys are either born in an HSM token (`--hsm NAME=CONFIG`: generated
//! in the token, the CA certifies the authentication key, the encryption certificate is
//! signed by that key through the custody core, nothing secret is written) or generated in
//! software and written as an eHealth-style `.p12` for legacy clients.
//!
//! The CA and RA keys stay in DIR (mode 0600) so that a second run adds institutions to the
//! same world. For test rigs, private deployments and the demo: institutions of the real
//! platform get their certificates from eHealth.

use crate::CliError;
use etee_formats::cert::Certificate;
use etee_formats::enc_cert::{self, EncryptionCertSpec};
use etee_formats::etk::Etk;
use etee_formats::keys::{KeyId, PrivateKeyOps};
use etee_formats::keystore::{ehealth_entries, write_pfx, Profile};
use etee_formats::trust::TrustAnchors;
use etee_testpki::{InstitutionSpec, Issued, TestPki};
use openssl::pkey::PKey;
use openssl::x509::X509;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use zeroize::Zeroizing;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Same as `etee platform pki`.
    Init(WorldArgs),
    /// Answer OCSP requests about the world CA's certificates (from its revocation list,
    /// ca.crl), over HTTP on --listen, until stopped.
    Ocsp(super::pki_ocsp::OcspArgs),
    /// Revoke institutions' authentication certificates: (re)issue the world CA's
    /// revocation list, ca.crl (DER) and ca-crl.pem, for `--crl` of seal, unseal and
    /// `etk verify`. Without --name or --cert, the list is issued again with a new
    /// nextUpdate (a list must be reissued before it goes stale).
    Revoke(RevokeArgs),
}

#[derive(clap::Args)]
pub struct RevokeArgs {
    /// The world's directory (made by `etee pki init`).
    dir: PathBuf,
    /// An institution of the world whose authentication certificate (the one in
    /// <NAME>.etk) is revoked (repeatable).
    #[arg(long = "name", value_name = "NAME")]
    names: Vec<String>,
    /// A certificate issued by the world's CA to revoke (repeatable).
    #[arg(long = "cert", value_name = "FILE")]
    certs: Vec<PathBuf>,
    /// How long the list is current: its nextUpdate is this many seconds from now (default
    /// seven days).
    #[arg(long, value_name = "SECONDS", default_value_t = 7 * 24 * 60 * 60)]
    valid_for: u32,
}

#[derive(clap::Args)]
pub struct WorldArgs {
    /// The world's directory; an existing world is extended. It gets: ca.pem, ra.pem (the
    /// CA and the ETK RA); <name>.etk for every institution; for an institution without
    /// --hsm, <name>.p12 (its keystore, encrypted under the password in `password`) and
    /// <name>-etk-cert.pem; with --tls-server, tls-server.pem. In clear, readable by the
    /// owner only (a test PKI only, never for real keys): the private keys ca-key.pem,
    /// ra-key.pem, <name>-etk-key.pem (the ETK key unencrypted, for `openssl cms`
    /// interop; not with --hsm) and tls-server-key.pem, and the keystore password in
    /// `password`.
    dir: PathBuf,
    /// An institution as NAME:TYPE=VALUE[/APPLICATION] (repeatable), e.g.
    /// kgss:CBE=0809394427/KGSS; default (in a new world): alice:NIHII-HOSPITAL=71000436
    /// and bob:NIHII-PHARMACY=27150201.
    #[arg(long = "institution", value_name = "NAME:TYPE=VALUE[/APPLICATION]")]
    institutions: Vec<String>,
    /// Generate institution NAME's keys in the token of this etee HSM configuration
    /// (initialised with `etee hsm init`, holding no authentication key yet) instead of
    /// writing a .p12 (repeatable).
    #[arg(long = "hsm", value_name = "NAME=CONFIG")]
    hsm: Vec<String>,
    /// Also a TLS server certificate for these names (DNS names or IP addresses), for a
    /// local platform: tls-server.pem (chain) and tls-server-key.pem.
    #[arg(long = "tls-server", value_name = "NAME")]
    tls_server: Vec<String>,
    /// Write keystores with the legacy algorithms (3DES/RC2-40) older Java tools expect.
    #[arg(long)]
    legacy_p12: bool,
    /// The new institutions' encryption certificates (ETKs) expire this many seconds from
    /// now (default: two years), e.g. to see ETK expiry handled on a test rig.
    #[arg(long, value_name = "SECONDS")]
    etk_valid_for: Option<u32>,
    /// The new institutions' authentication certificates expire this many seconds from
    /// now (default: two years), e.g. to see the warnings before the end and the refusal
    /// to seal after it on a test rig.
    #[arg(long, value_name = "SECONDS")]
    auth_valid_for: Option<u32>,
    /// The new institutions' authentication certificates name this OCSP responder
    /// (authorityInfoAccess), for `--ocsp auto` / `ocsp = "auto"`: e.g. the address `etee
    /// pki ocsp DIR --listen` will serve.
    #[arg(long, value_name = "http://HOST:PORT", value_parser = http_url)]
    ocsp_url: Option<String>,
    /// The new institutions' authentication certificates name this address as the
    /// distribution point of the CA's revocation list (crlDistributionPoints), for `etee
    /// crl fetch --from-cert`: e.g. where DIR/ca.crl will be served.
    #[arg(long, value_name = "http://HOST[:PORT]/PATH", value_parser = crl_url)]
    crl_url: Option<String>,
    /// Issue institution NAME anew although DIR holds its files (repeatable). Without it
    /// an existing institution is refused: its keys would be lost, and messages sealed
    /// to its ETK could no longer be opened.
    #[arg(long = "replace", value_name = "NAME")]
    replace: Vec<String>,
}

pub fn run(command: Command) -> Result<ExitCode, CliError> {
    match command {
        Command::Init(args) => make_world(args),
        Command::Revoke(args) => revoke(args),
        Command::Ocsp(args) => super::pki_ocsp::run(args),
    }
}

/// Adds the named certificates to the world CA's list and signs it anew (CRL number one
/// higher), keeping what it revoked before.
fn revoke(args: RevokeArgs) -> Result<ExitCode, CliError> {
    if args.valid_for == 0 {
        return Err(CliError::Usage(
            "--valid-for 0: the list would be stale as soon as issued (its nextUpdate is its \
             thisUpdate) and give no status; give at least 1 second (default: 7 days)"
                .into(),
        ));
    }
    let pki = open_ca(&args.dir)?;
    // Held until both files are written: a concurrent revocation would otherwise issue
    // the same CRL number without this one's entries.
    let _lock = crate::output::update_lock(&args.dir.join("ca.crl"))?;
    let mut targets: Vec<(String, X509)> = Vec::new();
    for name in &args.names {
        if !is_file_name(name) {
            return Err(CliError::Usage(format!(
                "--name {name:?}: not an institution name"
            )));
        }
        let file = format!("{name}.etk");
        if !args.dir.join(&file).exists() {
            return Err(CliError::Usage(format!(
                "--name {name}: no institution {name} in {} (no {file} there)",
                args.dir.display()
            )));
        }
        let etk = Etk::parse(&read(&args.dir, &file)?).map_err(|source| CliError::Etk {
            path: file.clone(),
            source,
        })?;
        let x = X509::from_der(etk.authentication_cert().der()).map_err(openssl_err)?;
        targets.push((name.clone(), x));
    }
    for path in &args.certs {
        let x = crate::inputs::certificate(path)?
            .x509()
            .cloned()
            .ok_or_else(|| CliError::Usage(format!("{}: unreadable by OpenSSL", path.display())))?;
        targets.push((path.display().to_string(), x));
    }
    let ca_key = pki.root.cert.public_key().map_err(openssl_err)?;
    for (what, x) in &targets {
        // Self-signed, it passes the test below, but a CA's list cannot revoke the CA.
        if x.public_key().is_ok_and(|k| k.public_eq(&ca_key)) {
            return Err(CliError::Usage(format!(
                "{what}: this is the world CA's own certificate, which its own revocation \
                 list cannot revoke; to stop trusting the world, remove its ca.pem from the \
                 trust anchors (--trust, `trust` in the configurations)"
            )));
        }
        let issued_here =
            etee_formats::cert::same_name(x.issuer_name(), pki.root.cert.subject_name())
                && x.verify(&pki.root.key).unwrap_or(false);
        if !issued_here {
            return Err(CliError::Usage(format!(
                "{what}: its certificate was not issued by this world's CA"
            )));
        }
    }
    let now = etee_platform::unix_now();
    let (mut entries, number, _) = current_list(&args.dir, &pki, true)?;
    for (what, x) in &targets {
        let serial = x.serial_number().to_owned().map_err(openssl_err)?;
        let listed = entries.iter().any(|(s, _)| {
            s.to_bn()
                .ok()
                .zip(serial.to_bn().ok())
                .is_some_and(|(a, b)| a == b)
        });
        let decimal = serial
            .to_bn()
            .and_then(|b| b.to_dec_str().map(|d| d.to_string()))
            .map_err(openssl_err)?;
        if listed {
            outln!("{what}: already revoked (serial {decimal})")?;
        } else {
            outln!("{what}: revoked (serial {decimal})")?;
            entries.push((serial, now));
        }
    }
    let next_update = now + i64::from(args.valid_for);
    let refs: Vec<_> = entries.iter().map(|(s, t)| (s.as_ref(), *t)).collect();
    let crl = pki
        .crl(&refs, number + 1, now, next_update)
        .map_err(|e| CliError::Usage(format!("issuing the revocation list: {e}")))?;
    // ca.crl first: it is the list the next run continues from, so a crash between the
    // two writes leaves at worst a stale PEM copy, never a number issued twice.
    write(&args.dir, "ca.crl", &crl.to_der().map_err(openssl_err)?)?;
    write(&args.dir, "ca-crl.pem", &crl.to_pem().map_err(openssl_err)?)?;
    outln!(
        "ca.crl: number {}, {} revoked, current until {}",
        number + 1,
        entries.len(),
        time::OffsetDateTime::from_unix_timestamp(next_update)
            .ok()
            .and_then(|t| t
                .format(&time::format_description::well_known::Rfc3339)
                .ok())
            .unwrap_or_else(|| next_update.to_string())
    )?;
    Ok(ExitCode::SUCCESS)
}

/// An `http://` address (OCSP is requested over plain HTTP, RFC 6960 appendix A).
fn http_url(text: &str) -> Result<String, String> {
    match text.parse::<etee_formats::ocsp::Responder>() {
        Ok(etee_formats::ocsp::Responder::Url(url)) => Ok(url),
        _ => Err(format!("{text:?}: an http:// address")),
    }
}

fn crl_url(text: &str) -> Result<String, String> {
    let url = http_url(text)?;
    if url.contains(',') || !url.chars().all(|c| c.is_ascii_graphic()) {
        return Err(format!(
            "{text:?}: an http:// address without commas, spaces or other characters a \
             certificate's URI cannot hold"
        ));
    }
    Ok(url)
}

/// The CA of an existing world.
pub(crate) fn open_ca(dir: &Path) -> Result<TestPki, CliError> {
    if !dir.join("ca.pem").is_file() {
        return Err(CliError::Usage(format!(
            "{}: not a world (no ca.pem): make one with `etee pki init`",
            dir.display()
        )));
    }
    Ok(open_or_create_ca(dir)?.0)
}

/// The entries, CRL number and nextUpdate of the world's current list (none, 0 and none
/// without one when `missing_ok`, else an error). A list that the CA did not sign is
/// refused rather than replaced.
#[allow(clippy::type_complexity)]
pub(crate) fn current_list(
    dir: &Path,
    pki: &TestPki,
    missing_ok: bool,
) -> Result<(Vec<(openssl::asn1::Asn1Integer, i64)>, u64, Option<i64>), CliError> {
    if missing_ok && !dir.join("ca.crl").is_file() {
        return Ok((Vec::new(), 0, None));
    }
    let bad = |why: &str| CliError::Usage(format!("{}: {why}", dir.join("ca.crl").display()));
    let crl = openssl::x509::X509Crl::from_der(&read(dir, "ca.crl")?)
        .map_err(|_| bad("not a revocation list"))?;
    if !crl.verify(&pki.root.key).unwrap_or(false) {
        return Err(bad("not signed by this world's CA"));
    }
    // The number must rise with every list: one that cannot be read is an error rather
    // than a new count from 1.
    let number = crl
        .extension::<openssl::x509::extension::CrlNumber>()
        .ok()
        .flatten()
        .and_then(|(_, n)| n.to_bn().ok())
        .and_then(|n| n.to_dec_str().ok().and_then(|d| d.parse::<u64>().ok()))
        .ok_or_else(|| bad("no CRL number etee can read (the next list's must be higher)"))?;
    let mut entries = Vec::new();
    for r in crl.get_revoked().into_iter().flatten() {
        let at = etee_formats::revocation::unix(r.revocation_date())
            .ok_or_else(|| bad("a revocation date OpenSSL cannot read"))?;
        entries.push((r.serial_number().to_owned().map_err(openssl_err)?, at));
    }
    let next_update = match crl.next_update() {
        Some(t) => Some(
            etee_formats::revocation::unix(t)
                .ok_or_else(|| bad("a nextUpdate OpenSSL cannot read"))?,
        ),
        None => None,
    };
    Ok((entries, number, next_update))
}

/// One institution to issue.
struct Wanted {
    name: String,
    spec: InstitutionSpec,
    /// Its HSM configuration, when its keys are born in a token.
    hsm: Option<PathBuf>,
}

pub fn make_world(args: WorldArgs) -> Result<ExitCode, CliError> {
    if args.dir.exists() && !args.dir.is_dir() {
        return Err(CliError::Usage(format!(
            "{}: not a directory (the world's directory is made if it does not exist)",
            args.dir.display()
        )));
    }
    let new_dir = !args.dir.exists();
    std::fs::create_dir_all(&args.dir)
        // A new directory's name must survive a power cut too.
        .and_then(|()| match new_dir {
            true => etee_custody::file_sink::sync_dir(&args.dir),
            false => Ok(()),
        })
        .map_err(|source| CliError::File {
            path: args.dir.display().to_string(),
            source,
        })?;
    // One run at a time on a world: two making it at once would mix one's CA with the
    // other's keys.
    let _lock = crate::output::update_lock(&args.dir.join("world"))?;
    let unfinished = args.dir.join(UNFINISHED);
    if unfinished.exists() {
        return Err(CliError::Usage(format!(
            "{}: the run that made this world did not finish (it was killed or failed; {} \
             says when it started): its CA or its first institutions may be missing or \
             half written. Empty the directory and make the world again",
            args.dir.display(),
            unfinished.display()
        )));
    }
    // The instant the certificates are issued at: their validity starts from it, and the
    // check below is made at it (a certificate asked to last one second may be over by
    // the time its keys are generated).
    let issued_at = etee_platform::unix_now();
    // What was asked is checked before anything is written (a world with ca.pem exists).
    let wanted = wanted(&args, !args.dir.join("ca.pem").exists(), issued_at)?;
    if !wanted.is_empty() || !args.tls_server.is_empty() {
        refuse_existing(&args, &wanted)?;
    }
    let mut half_issued = refuse_unfinished_issue(&args.dir, &wanted, &args.dir.join(ISSUING))?;
    let (pki, created) = open_or_create_ca(&args.dir)?;
    let anchors = TrustAnchors::new(vec![certificate(&pki.root.cert)?]);
    if wanted.is_empty() && args.tls_server.is_empty() {
        eprintln!(
            "etee: {}: the world exists and nothing was asked of it: give --institution \
             NAME:TYPE=VALUE to add one (or --tls-server NAME)",
            args.dir.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let profile = if args.legacy_p12 {
        Profile::Legacy
    } else {
        Profile::Modern
    };
    let mut password = None;
    for w in &wanted {
        let (etk, mut files) = match &w.hsm {
            Some(config) => (hsm_institution(&pki, w, config)?, Vec::new()),
            None => {
                let password = match &password {
                    Some(p) => p,
                    None => password.insert(keystore_password(&args.dir)?),
                };
                software_institution(&pki, w, password, profile)?
            }
        };
        // What the depot and every sender will check (spec §3.2): refuse to hand out an
        // ETK that fails it.
        let parsed = Etk::parse(&etk).map_err(|source| CliError::Etk {
            path: format!("{}.etk", w.name),
            source,
        })?;
        let problems = parsed.validate(&anchors, issued_at);
        if !problems.is_empty() {
            return Err(CliError::Usage(format!(
                "the ETK issued for {} fails the ETK checks: {problems:?}",
                w.name
            )));
        }
        files.push((format!("{}.etk", w.name), Zeroizing::new(etk.clone())));
        write_institution(&args.dir, &w.name, &files, &mut half_issued)?;
        // The form tools parse: "NAME: SUBJECT (ETK serial N)".
        outln!(
            "{}: {} (ETK serial {})",
            w.name,
            parsed.authentication_cert().subject_string(),
            parsed.key_alias()
        )?;
    }
    if !args.tls_server.is_empty() {
        let names: Vec<&str> = args.tls_server.iter().map(String::as_str).collect();
        let server = pki
            .tls_server(&names)
            .map_err(|e| CliError::Usage(format!("issuing the TLS server certificate: {e}")))?;
        let mut chain = server.cert.to_pem().map_err(openssl_err)?;
        chain.extend(pki.root.cert.to_pem().map_err(openssl_err)?);
        write(&args.dir, "tls-server.pem", &chain)?;
        write(
            &args.dir,
            "tls-server-key.pem",
            &server.key.private_key_to_pem_pkcs8().map_err(openssl_err)?,
        )?;
        outln!("TLS server: {}", names.join(", "))?;
    }
    if created {
        // The new world is whole: every file above is durable, named and synced.
        std::fs::remove_file(&unfinished)
            .and_then(|()| etee_custody::file_sink::sync_dir(&unfinished))
            .map_err(|source| CliError::File {
                path: unfinished.display().to_string(),
                source,
            })?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Present while an institution's files are written, naming it: left behind, the run
/// was cut short between them and they may not belong together.
const ISSUING: &str = "institutions-unfinished";

/// Refuses to run while a run cut short left institutions half issued ([`ISSUING`]),
/// unless this run issues every one of them anew (`--replace NAME`, or the first time);
/// else the names the marker holds, which stay in it until issued.
fn refuse_unfinished_issue(
    dir: &Path,
    wanted: &[Wanted],
    issuing: &Path,
) -> Result<BTreeSet<String>, CliError> {
    let Ok(text) = std::fs::read_to_string(issuing) else {
        return Ok(BTreeSet::new());
    };
    let named: BTreeSet<String> = text
        .lines()
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .map(str::to_owned)
        .collect();
    let again: Vec<&str> = named
        .iter()
        .map(String::as_str)
        .filter(|name| !wanted.iter().any(|w| w.name == *name))
        .collect();
    if again.is_empty() {
        return Ok(named);
    }
    Err(CliError::Usage(format!(
        "{}: a run issuing {} did not finish (killed or failed): their keystores, keys and \
         ETKs may not belong together. Issue them again: --institution NAME:TYPE=VALUE \
         --replace NAME for each",
        dir.display(),
        again.join(", ")
    )))
}

/// Present in a world's directory from before its CA is written until the run that made
/// it has issued everything it was asked for: a world left with it was cut short.
const UNFINISHED: &str = "world-unfinished";

/// The institutions of the command line, with their `--hsm` configurations.
fn wanted(args: &WorldArgs, new_world: bool, now: i64) -> Result<Vec<Wanted>, CliError> {
    let mut hsm: BTreeMap<&str, PathBuf> = BTreeMap::new();
    for h in &args.hsm {
        let (name, config) = h
            .split_once('=')
            .ok_or_else(|| CliError::Usage(format!("--hsm {h:?}: expected NAME=CONFIG")))?;
        if hsm.insert(name, PathBuf::from(config)).is_some() {
            return Err(CliError::Usage(format!("--hsm {name}: given twice")));
        }
    }
    let defaults = [
        "alice:NIHII-HOSPITAL=71000436".to_string(),
        "bob:NIHII-PHARMACY=27150201".to_string(),
    ];
    let specs: &[String] = if args.institutions.is_empty() && new_world {
        &defaults
    } else {
        &args.institutions
    };
    let mut out = Vec::new();
    for spec in specs {
        let (name, id) = spec
            .split_once(':')
            .and_then(|(n, id)| id.split_once('=').map(|(t, v)| (n, (t, v))))
            .filter(|(n, _)| is_file_name(n))
            .ok_or_else(|| {
                CliError::Usage(format!(
                    "--institution {spec:?}: expected NAME:TYPE=VALUE[/APPLICATION] (NAME: \
                     letters, digits, '-' and '_')"
                ))
            })?;
        let (value, application) = match id.1.split_once('/') {
            Some((v, app)) => (v, Some(app)),
            None => (id.1, None),
        };
        // An identifier ETKDepot would not take (an unknown type, a value that is not its
        // digits) makes an ETK nobody can look up.
        etee_formats::identity::lookup_identifier(id.0, value)
            .map_err(|e| CliError::Usage(format!("--institution {spec:?}: {e}")))?;
        let mut inst = InstitutionSpec::new(id.0, value, name);
        if let Some(app) = application {
            inst = inst.with_application_id(app);
        }
        if let Some(url) = &args.ocsp_url {
            inst = inst.with_ocsp_url(url);
        }
        if let Some(url) = &args.crl_url {
            inst = inst.with_crl_url(url);
        }
        // Valid from a day ago, as the test PKI's certificates are.
        let ending_in = |seconds: u32| etee_testpki::Validity {
            not_before: now - 24 * 60 * 60,
            not_after: now + i64::from(seconds),
        };
        if let Some(seconds) = args.etk_valid_for {
            inst = inst.with_etk_validity(ending_in(seconds));
        }
        if let Some(seconds) = args.auth_valid_for {
            inst = inst.with_auth_validity(ending_in(seconds));
        }
        if out.iter().any(|w: &Wanted| w.name == name) {
            return Err(CliError::Usage(format!(
                "--institution {name}: given twice"
            )));
        }
        out.push(Wanted {
            name: name.to_string(),
            spec: inst,
            hsm: hsm.remove(name),
        });
    }
    if let Some(name) = hsm.keys().next() {
        return Err(CliError::Usage(format!(
            "--hsm {name}=...: no --institution {name}:TYPE=VALUE"
        )));
    }
    Ok(out)
}

/// The files of institution `name` in a world.
fn institution_files(name: &str) -> [String; 4] {
    [
        format!("{name}.etk"),
        format!("{name}.p12"),
        format!("{name}-etk-key.pem"),
        format!("{name}-etk-cert.pem"),
    ]
}

/// Refuses, before anything is written, to issue again an institution whose files are in
/// the world, unless `--replace NAME` asks for it (and `--replace` for one not asked for).
fn refuse_existing(args: &WorldArgs, wanted: &[Wanted]) -> Result<(), CliError> {
    if let Some(name) = args
        .replace
        .iter()
        .find(|r| !wanted.iter().any(|w| &w.name == *r))
    {
        return Err(CliError::Usage(format!(
            "--replace {name}: no --institution {name}:TYPE=VALUE"
        )));
    }
    for w in wanted.iter().filter(|w| !args.replace.contains(&w.name)) {
        let present: Vec<String> = institution_files(&w.name)
            .into_iter()
            .filter(|f| args.dir.join(f).exists())
            .collect();
        if !present.is_empty() {
            return Err(CliError::Usage(format!(
                "institution {} is already in {} ({}): issuing it again would replace its \
                 keys, and messages sealed to its ETK could no longer be opened; choose \
                 another name, or give --replace {} to issue it anew",
                w.name,
                args.dir.display(),
                present.join(", "),
                w.name
            )));
        }
    }
    Ok(())
}

fn is_file_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// The world's CA and RA: read from DIR when it has them, else generated and written.
fn open_or_create_ca(dir: &Path) -> Result<(TestPki, bool), CliError> {
    let files = ["ca.pem", "ca-key.pem", "ra.pem", "ra-key.pem"];
    let present = files.iter().filter(|f| dir.join(f).is_file()).count();
    if present == files.len() {
        let issued = |cert: &str, key: &str| -> Result<Issued, CliError> {
            let cert = X509::from_pem(&read(dir, cert)?)
                .map_err(|e| CliError::Usage(format!("{cert}: {e}")))?;
            let key = PKey::private_key_from_pem(&read(dir, key)?)
                .map_err(|e| CliError::Usage(format!("{key}: {e}")))?;
            Ok(Issued { cert, key })
        };
        let pki = TestPki {
            root: issued("ca.pem", "ca-key.pem")?,
            ra: issued("ra.pem", "ra-key.pem")?,
        };
        return Ok((pki, false));
    }
    if present > 0 {
        return Err(CliError::Usage(format!(
            "{}: has only some of {} — restore the others or use an empty directory",
            dir.display(),
            files.join(", ")
        )));
    }
    let pki = TestPki::generate("etee test world")
        .map_err(|e| CliError::Usage(format!("generating the test CA: {e}")))?;
    let pem = |i: &Issued| -> Result<(Vec<u8>, Vec<u8>), CliError> {
        Ok((
            i.cert.to_pem().map_err(openssl_err)?,
            i.key.private_key_to_pem_pkcs8().map_err(openssl_err)?,
        ))
    };
    let (ra, ra_key) = pem(&pki.ra)?;
    let (ca, ca_key) = pem(&pki.root)?;
    // Before anything of the world: removed once the run has issued all it was asked.
    write(
        dir,
        UNFINISHED,
        format!(
            "etee pki init started making this world at {}\n",
            etee_formats::rfc3339(etee_platform::unix_now())
        )
        .as_bytes(),
    )?;
    // Keys first: a world with ca.pem is complete.
    write(dir, "ra-key.pem", &ra_key)?;
    write(dir, "ra.pem", &ra)?;
    write(dir, "ca-key.pem", &ca_key)?;
    write(dir, "ca.pem", &ca)?;
    Ok((pki, true))
}

/// The keystore password of the world (file `password`), made on first use.
fn keystore_password(dir: &Path) -> Result<Zeroizing<String>, CliError> {
    if dir.join("password").is_file() {
        let bytes = Zeroizing::new(read(dir, "password")?);
        let text = std::str::from_utf8(&bytes)
            .map_err(|_| CliError::Usage("password: not UTF-8".into()))?;
        let p = Zeroizing::new(text.trim_end_matches('\n').to_string());
        if p.is_empty() {
            // Keystores under an empty password would protect nothing.
            return Err(CliError::Usage(format!(
                "{}: the keystore password is empty",
                dir.join("password").display()
            )));
        }
        return Ok(p);
    }
    let mut b = Zeroizing::new([0u8; 12]);
    openssl::rand::rand_bytes(b.as_mut()).map_err(openssl_err)?;
    let p = Zeroizing::new(hex::encode(b.as_ref()));
    write(dir, "password", p.as_bytes())?;
    Ok(p)
}

/// Keys generated in software, written as `<name>.p12` (aliases `authentication` and the
/// ETK serial), plus the ETK key and certificate as PEM for independent checks with
/// `openssl cms`. Returns the ETK.
fn software_institution(
    pki: &TestPki,
    w: &Wanted,
    password: &str,
    profile: Profile,
) -> Result<(Vec<u8>, Vec<WorldFile>), CliError> {
    let inst = pki
        .institution(&w.spec)
        .map_err(|e| CliError::Usage(format!("issuing {}: {e}", w.name)))?;
    let keystore_error = |source| CliError::Keystore {
        path: format!("{}.p12", w.name),
        source,
    };
    let entries = ehealth_entries(
        inst.auth.key.clone(),
        vec![inst.auth.cert.clone(), pki.root.cert.clone()],
        inst.etk_key.clone(),
        inst.etk_cert.clone(),
    )
    .map_err(keystore_error)?;
    let p12 = write_pfx(&entries, password, profile).map_err(keystore_error)?;
    let files = vec![
        (format!("{}.p12", w.name), Zeroizing::new(p12)),
        (
            format!("{}-etk-cert.pem", w.name),
            Zeroizing::new(inst.etk_cert.to_pem().map_err(openssl_err)?),
        ),
        (
            format!("{}-etk-key.pem", w.name),
            Zeroizing::new(
                inst.etk_key
                    .private_key_to_pem_pkcs8()
                    .map_err(openssl_err)?,
            ),
        ),
    ];
    Ok((inst.etk, files))
}

/// A file of the world to write: its name and bytes (a key or keystore among them).
type WorldFile = (String, Zeroizing<Vec<u8>>);

/// Writes an institution's files (its ETK last), named in [`ISSUING`] while they are
/// written, beside the institutions a run cut short left half issued (`half_issued`,
/// which loses this one once its files are written): a run cut short between two files
/// leaves the marker, and the world refuses other work until they are issued again.
fn write_institution(
    dir: &Path,
    name: &str,
    files: &[WorldFile],
    half_issued: &mut BTreeSet<String>,
) -> Result<(), CliError> {
    let marker_with =
        |names: &BTreeSet<String>| names.iter().fold(String::new(), |text, n| text + n + "\n");
    half_issued.insert(name.to_owned());
    write(dir, ISSUING, marker_with(half_issued).as_bytes())?;
    for (file, bytes) in files {
        write(dir, file, bytes)?;
    }
    half_issued.remove(name);
    if !half_issued.is_empty() {
        return write(dir, ISSUING, marker_with(half_issued).as_bytes());
    }
    let marker = dir.join(ISSUING);
    std::fs::remove_file(&marker)
        .and_then(|()| etee_custody::file_sink::sync_dir(&marker))
        .map_err(|source| CliError::File {
            path: marker.display().to_string(),
            source,
        })
}

/// Keys born in the token of `config`: an authentication key certified by the CA, and an
/// ETK key whose encryption certificate the authentication key signs through the custody
/// core (so the signature is on the token's audit chain). Returns the ETK.
fn hsm_institution(pki: &TestPki, w: &Wanted, config: &Path) -> Result<Vec<u8>, CliError> {
    let config = super::hsm::load_config(config)?;
    let auth_profile = config.hsm.profile("authentication")?.clone();
    let etk_profile = config.hsm.profile("etk")?.clone();
    // The login follows the custody core's lock-out rule and is on its chain.
    let hsm = etee_hsm::CustodyKeys::open_token(&config.hsm, &config.custody)?;
    let auth_key_id = auth_profile.id.as_deref().unwrap_or("authentication");
    if hsm.list()?.keys.iter().any(|k| k.id == auth_key_id) {
        return Err(CliError::Usage(format!(
            "{}: the token {} already holds an authentication key ({:?}); new keys go \
             into a token without one (`etee hsm init` a new token, or import existing \
             keys with `etee keys import`)",
            w.name,
            config_name(&config),
            auth_key_id
        )));
    }
    let auth = hsm.generate(&auth_profile)?;
    // The authentication key is in the token from here on: a failure must say so, since
    // a new run refuses a token that holds one.
    let mut etk_id = None;
    let mut rest = || -> Result<(X509, etee_hsm::GeneratedKey), CliError> {
        let etk = hsm.generate(&etk_profile)?;
        etk_id = Some(etk.id.clone());
        let auth_public = PKey::public_key_from_der(&auth.public_key_der())
            .map_err(|e| failed("the generated authentication key", &e))?;
        let auth_cert = pki
            .authentication_certificate(&w.spec, &auth_public)
            .map_err(|e| failed("certifying the authentication key", &e))?;
        hsm.install_certificate(
            &auth.id,
            &certificate(&auth_cert)?,
            &[certificate(&pki.root.cert)?],
        )?;
        Ok((auth_cert, etk))
    };
    let first = rest();
    // The token's first session closes here; the custody core opens its own.
    drop(hsm);
    let result = first.and_then(|(auth_cert, etk)| {
        complete_hsm_institution(pki, w, &config, &auth.id, &auth_cert, &etk)
    });
    result.map_err(|e| {
        let etk = etk_id
            .map(|id| format!(", ETK key {id:?}"))
            .unwrap_or_default();
        CliError::Usage(format!(
            "{name}: keys were generated in token {token} (authentication key {auth:?}{etk}), \
             but the institution could not be completed: {e}. The token now holds an \
             authentication key, so `platform pki` refuses it: give {name} a new token \
             (`etee hsm init` with another label; SoftHSM: `softhsm2-util --delete-token \
             --token LABEL` removes this one)",
            name = w.name,
            token = config_name(&config),
            auth = auth.id,
        ))
    })
}

/// A step of an HSM institution that failed: `what`, and why.
fn failed(what: &str, e: &dyn std::fmt::Display) -> CliError {
    CliError::Usage(format!("{what}: {e}"))
}

/// The second half of [`hsm_institution`], through the custody core: the encryption
/// certificate signed by the authentication key, installed beside the ETK key; the ETK.
fn complete_hsm_institution(
    pki: &TestPki,
    w: &Wanted,
    config: &etee_hsm::Config,
    auth_id: &str,
    auth_cert: &X509,
    etk: &etee_hsm::GeneratedKey,
) -> Result<Vec<u8>, CliError> {
    let etk_spki = etk.public_key_der();
    let custody = etee_hsm::CustodyKeys::open(&config.hsm, &config.custody)?;
    let mut serial = [0u8; 16];
    openssl::rand::rand_bytes(&mut serial).map_err(openssl_err)?;
    serial[0] = (serial[0] & 0x7f) | 0x40; // positive, 16 significant bytes
    let holder_name = auth_cert.subject_name().to_der().map_err(openssl_err)?;
    let validity = w.spec.etk_validity;
    let tbs = enc_cert::tbs_certificate(&EncryptionCertSpec {
        holder_name: &holder_name,
        spki: &etk_spki,
        serial: &serial,
        not_before: validity.not_before,
        not_after: validity.not_after,
    })
    .map_err(|e| failed("the encryption certificate", &e))?;
    let signature = custody
        .sign_pss_sha256(&KeyId(auth_id.to_owned()), &openssl::sha::sha256(&tbs))
        .map_err(|e| failed("signing the encryption certificate in the HSM", &e))?;
    let enc_der = enc_cert::certificate(&tbs, &signature);
    let enc_cert =
        X509::from_der(&enc_der).map_err(|e| failed("the encryption certificate", &e))?;
    let installed = custody
        .hsm()
        .install_certificate(&etk.id, &certificate(&enc_cert)?, &[])?;
    eprintln!(
        "etee: {}: keys generated in token {}: \"authentication\" and ETK key {installed:?}",
        w.name,
        config_name(config)
    );
    pki.sign_etk(&enc_cert, auth_cert)
        .map_err(|e| failed("signing the ETK", &e))
}

fn config_name(config: &etee_hsm::Config) -> String {
    config.hsm.token.to_string()
}

fn certificate(x: &X509) -> Result<Certificate, CliError> {
    Certificate::from_der(&x.to_der().map_err(openssl_err)?)
        .map_err(|e| CliError::Usage(format!("certificate: {e}")))
}

fn openssl_err(e: openssl::error::ErrorStack) -> CliError {
    CliError::Usage(format!("openssl: {e}"))
}

fn read(dir: &Path, name: &str) -> Result<Vec<u8>, CliError> {
    crate::inputs::read_file(&dir.join(name))
}

/// Writes a file of the world atomically; private keys, keystores and the password are
/// created readable by the owner only (see [`crate::output::write_file`]).
fn write(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), CliError> {
    let secret = name.ends_with(".pem") && name.contains("key")
        || name == "password"
        || name.ends_with(".p12");
    crate::output::write_file(&dir.join(name), bytes, secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// While an institution's files are written the marker names it, beside those a run
    /// cut short left half issued; they stay named until their own files are written.
    #[test]
    fn a_half_issued_institution_stays_named_until_issued() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join(ISSUING);
        let file = |name: &str| vec![(format!("{name}.etk"), Zeroizing::new(b"etk".to_vec()))];
        let mut half_issued = BTreeSet::from(["carol".to_owned()]);
        write_institution(dir.path(), "erin", &file("erin"), &mut half_issued).unwrap();
        assert_eq!(std::fs::read_to_string(&marker).unwrap(), "carol\n");
        assert!(dir.path().join("erin.etk").exists());
        write_institution(dir.path(), "carol", &file("carol"), &mut half_issued).unwrap();
        assert!(!marker.exists());
        assert!(half_issued.is_empty());
    }
}
