//! `etee crl fetch`: downloads CAs' revocation lists into the file that the appliance and
//! the platform follow (`crl = [...]`), for a timer to run (`hsm-config/systemd/`).
//!
//! Where: the `--url`s, and the distribution points (crlDistributionPoints) of the
//! `--from-cert` certificates, each URL once. Each list must be signed by one of the
//! `--issuer` certificates of its name and be no older than the list of that CA the file
//! holds: a certificate only says where to look, never whom to trust. The file is replaced
//! atomically, and only when a list is new or newer, so the services re-read it only when
//! it changed.
//!
//! Exit codes: 0 every URL gave lists that were taken (and every `--from-cert` certificate
//! named an http:// point, or is issued under its own name and names none); 1 a URL failed
//! or its lists were refused, or a certificate gave no http:// point (the others are taken
//! all the same, and the file keeps that CA's previous list); 2 usage or I/O problems (a
//! certificate whose crlDistributionPoints cannot be read, no URL at all), and a `--out`
//! file that does not hold lists.

use crate::CliError;
use etee_formats::cert::Certificate;
use etee_formats::revocation::Freshness;
use etee_services::crl_fetch::{fetch_lists, Discovery, HttpGet, Outcome, Source};
use serde_json::json;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Download revocation lists (CRLs) from their CAs' distribution points (given, or read
    /// from certificates) into the file the services follow (`crl = [...]`); replaced only
    /// when a list is newer.
    Fetch(FetchArgs),
}

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("where").required(true).multiple(true).args(["url", "from_cert"])))]
pub struct FetchArgs {
    /// A distribution point: the http:// URL of a CA's list (DER or PEM). Repeat it for
    /// each CA.
    #[arg(long, value_name = "URL")]
    url: Vec<String>,
    /// A certificate whose distribution points (its crlDistributionPoints extension: where
    /// its issuer publishes its list) are fetched: their http:// URLs, each once with the
    /// --url ones (PEM, several in a file, or DER; repeatable). Which lists are taken is
    /// still decided by --issuer alone.
    #[arg(long, value_name = "FILE")]
    from_cert: Vec<PathBuf>,
    /// A certificate of a CA whose list is fetched (PEM, several in a file, or DER):
    /// every list must be signed by one of them of its issuer's name. Repeatable.
    #[arg(long, value_name = "FILE", required = true)]
    issuer: Vec<PathBuf>,
    /// The lists file to update (PEM, one list per CA; other CAs' lists in it are kept).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// The longest a download may take, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    timeout_seconds: u64,
    /// The largest list downloaded, in bytes (national CAs' lists run to tens of MB).
    #[arg(long, value_name = "BYTES", default_value_t = 256 << 20)]
    max_bytes: u64,
    /// Print the result as one JSON line on standard output.
    #[arg(long)]
    json: bool,
}

/// A certificate given with --from-cert: its file, its place in it (1-based) and how many
/// the file holds.
struct Given {
    file: PathBuf,
    position: usize,
    of: usize,
    cert: Certificate,
}

impl Given {
    /// `auth.pem`, or `chain.pem#2` for the second certificate of a file of several.
    fn label(&self) -> String {
        if self.of > 1 {
            format!("{}#{}", self.file.display(), self.position)
        } else {
            self.file.display().to_string()
        }
    }
}

pub fn run(command: Command) -> Result<ExitCode, CliError> {
    let Command::Fetch(args) = command;
    if !(1..=3600).contains(&args.timeout_seconds) {
        return Err(CliError::Usage("--timeout-seconds: 1 to 3600".into()));
    }
    let mut issuers = Vec::new();
    for path in &args.issuer {
        issuers.extend(certificates_of(path)?);
    }
    let mut given = Vec::new();
    for path in &args.from_cert {
        let certs = certificates_of(path)?;
        let of = certs.len();
        given.extend(certs.into_iter().enumerate().map(|(i, cert)| Given {
            file: path.clone(),
            position: i + 1,
            of,
            cert,
        }));
    }
    let certs: Vec<Certificate> = given.iter().map(|g| g.cert.clone()).collect();
    let discovery = Discovery::new(&args.url, &certs).map_err(|(i, e)| {
        let g = &given[i];
        CliError::Usage(format!("{} ({}): {e}", g.label(), g.cert.subject_string()))
    })?;
    if !args.json || discovery.urls.is_empty() {
        print_notes(&given, &discovery);
    }
    if discovery.urls.is_empty() {
        return Err(CliError::Usage(
            "no http:// distribution point to fetch: the certificates name none (see the \
             notes above); give --url"
                .into(),
        ));
    }
    // Held until the merged list is written: a concurrent fetch to the same file would
    // otherwise replace it with a merge of an older reading.
    let _lock = crate::output::update_lock(&args.out)?;
    let held = match std::fs::read(&args.out) {
        Ok(bytes) => Some(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(source) => {
            return Err(CliError::File {
                path: args.out.display().to_string(),
                source,
            })
        }
    };
    let http = HttpGet {
        timeout: Duration::from_secs(args.timeout_seconds),
        max_bytes: args.max_bytes,
    };
    let progress = std::io::stderr().is_terminal();
    let report = fetch_lists(&discovery.url_list(), &issuers, held.as_deref(), |url| {
        if progress {
            eprintln!("fetching {url}");
        }
        http.get(url)
    })
    .map_err(|e| CliError::Usage(format!("{}: {e}", args.out.display())))?;
    if let Some(pem) = &report.write {
        crate::output::write_file(&args.out, pem, false)?;
    }
    let now = etee_formats::unix_now();
    let stale: Vec<&str> = report
        .lists
        .iter()
        .filter(|l| l.next_update.is_some_and(|n| n < now))
        .map(|l| l.issuer.as_str())
        .collect();
    if args.json {
        print_json(&args.out, &report, &stale, &given, &discovery)?;
    } else {
        print_text(&args.out, &report, &stale, &given, &discovery)?;
    }
    Ok(if report.all_taken() && !discovery.any_missing() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Every certificate of a file: a PEM bundle, or one DER or Base64 certificate.
fn certificates_of(path: &Path) -> Result<Vec<Certificate>, CliError> {
    let bytes = crate::inputs::read_file(path)?;
    let not_cert =
        |e: String| CliError::Usage(format!("{}: not a certificate: {e}", path.display()));
    if !bytes
        .windows(27)
        .any(|w| w == b"-----BEGIN CERTIFICATE-----")
    {
        return Ok(vec![crate::inputs::certificate(path)?]);
    }
    let mut out = Vec::new();
    for x in openssl::x509::X509::stack_from_pem(&bytes).map_err(|e| not_cert(e.to_string()))? {
        let der = x.to_der().map_err(|e| not_cert(e.to_string()))?;
        out.push(Certificate::from_der(&der).map_err(|e| not_cert(e.to_string()))?);
    }
    Ok(out)
}

/// Where a URL came from, for the text output: `--url`, and the certificates' labels.
fn sources_text(sources: &[Source], given: &[Given]) -> String {
    sources
        .iter()
        .map(|s| match s {
            Source::Given => "--url".to_string(),
            Source::Certificate(i) => given[*i].label(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// On standard error: what each certificate gave, what was not fetched, and why.
fn print_notes(given: &[Given], discovery: &Discovery) {
    for (g, points) in given.iter().zip(&discovery.certificates) {
        let level = if points.missing() { "warning" } else { "note" };
        let who = format!("{} ({})", g.label(), g.cert.subject_string());
        if points.urls.is_empty() && !points.missing() {
            eprintln!(
                "etee: note: {who}: issued under its own name (a root CA, or an encryption \
                 certificate) and naming no distribution point: no list to fetch for it"
            );
            continue;
        }
        for skipped in &points.skipped {
            eprintln!("etee: {level}: {who}: {skipped}");
        }
        if points.missing() {
            eprintln!(
                "etee: warning: {who}: no http:// distribution point: its issuer's list is not \
                 fetched from it (give its URL with --url)"
            );
        }
    }
}

fn freshness(f: Freshness) -> &'static str {
    match f {
        Freshness::New => "new",
        Freshness::Newer => "newer",
        Freshness::Same => "unchanged",
        Freshness::Older => "older",
    }
}

fn time(t: Option<i64>) -> String {
    t.map_or_else(|| "none".into(), crate::inputs::rfc3339)
}

fn print_text(
    out: &Path,
    report: &etee_services::crl_fetch::Report,
    stale: &[&str],
    given: &[Given],
    discovery: &Discovery,
) -> Result<(), CliError> {
    for ((url, outcome), (_, sources)) in report.urls.iter().zip(&discovery.urls) {
        // A URL named by certificates says which: `URL (from auth.pem)`.
        let url = if sources == &[Source::Given] {
            url.clone()
        } else {
            format!("{url} (from {})", sources_text(sources, given))
        };
        match outcome {
            Outcome::Taken(lists) => {
                for (l, f) in lists {
                    outln!(
                        "{url}: {} — {}: thisUpdate {}, nextUpdate {}, {} revoked{}",
                        freshness(*f),
                        l.issuer,
                        time(Some(l.this_update)),
                        time(l.next_update),
                        l.entries,
                        if l.complete { "" } else { " (a partial list)" }
                    )?;
                }
            }
            Outcome::Refused(why) => outln!("{url}: refused — {why}")?,
        }
    }
    outln!(
        "{}: {}, {} list(s)",
        out.display(),
        if report.write.is_some() {
            "written"
        } else if out.exists() {
            "unchanged"
        } else {
            "not written (no list taken)"
        },
        report.lists.len()
    )?;
    for issuer in stale {
        eprintln!(
            "etee: warning: the list of {issuer} in {} is past its nextUpdate: it gives no \
             status until a newer one is fetched",
            out.display()
        );
    }
    Ok(())
}

fn print_json(
    out: &Path,
    report: &etee_services::crl_fetch::Report,
    stale: &[&str],
    given: &[Given],
    discovery: &Discovery,
) -> Result<(), CliError> {
    let certificate = |g: &Given| {
        json!({
            "file": g.file.display().to_string(),
            "position": g.position,
            "subject": g.cert.subject_string(),
        })
    };
    let urls: Vec<_> = report
        .urls
        .iter()
        .zip(&discovery.urls)
        .map(|((url, outcome), (_, sources))| {
            let mut entry = json!({
                "url": url,
                "given": sources.contains(&Source::Given),
                "from": sources.iter().filter_map(|s| match s {
                    Source::Given => None,
                    Source::Certificate(i) => Some(certificate(&given[*i])),
                }).collect::<Vec<_>>(),
            });
            let result = match outcome {
                Outcome::Taken(lists) => json!({
                    "taken": lists.iter().map(|(l, f)| json!({
                        "issuer": l.issuer,
                        "thisUpdate": l.this_update,
                        "nextUpdate": l.next_update,
                        "revoked": l.entries,
                        "complete": l.complete,
                        "freshness": freshness(*f),
                    })).collect::<Vec<_>>(),
                }),
                Outcome::Refused(why) => json!({ "refused": why }),
            };
            if let (Some(entry), serde_json::Value::Object(result)) =
                (entry.as_object_mut(), result)
            {
                entry.extend(result);
            }
            entry
        })
        .collect();
    let certificates: Vec<_> = given
        .iter()
        .zip(&discovery.certificates)
        .map(|(g, points)| {
            let mut entry = certificate(g);
            entry["urls"] = json!(points.urls);
            entry["skipped"] = points
                .skipped
                .iter()
                .map(|s| json!({ "kind": s.kind(), "why": s.to_string() }))
                .collect();
            entry["missing"] = json!(points.missing());
            entry
        })
        .collect();
    outln!(
        "{}",
        json!({
            "file": out.display().to_string(),
            "written": report.write.is_some(),
            "lists": report.lists.len(),
            "stale": stale,
            "urls": urls,
            "certificates": certificates,
        })
    )
}
