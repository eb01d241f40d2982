//! `etee crl fetch`: downloads CAs' revocation lists into the file that the appliance and
//! the platform follow (`crl = [...]`), for a timer to run (`hsm-config/systemd/`).
//!
//! Each list must be signed by one of the `--issuer` certificates of its name and be no
//! older than the list of that CA the file holds; the file is replaced atomically, and
//! only when a list is new or newer, so the services re-read it only when it changed.
//!
//! Exit codes: 0 every URL gave lists that were taken; 1 a URL failed or its lists were
//! refused (the others are taken all the same, and the file keeps that CA's previous
//! list); 2 usage or I/O problems, and a `--out` file that does not hold lists.

use crate::CliError;
use etee_formats::cert::Certificate;
use etee_formats::revocation::Freshness;
use etee_services::crl_fetch::{fetch_lists, HttpGet, Outcome};
use serde_json::json;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Download revocation lists (CRLs) from their CAs' distribution points into the
    /// file the services follow (`crl = [...]`); replaced only when a list is newer.
    Fetch(FetchArgs),
}

#[derive(clap::Args)]
pub struct FetchArgs {
    /// A distribution point: the http:// URL of a CA's list (DER or PEM). Repeat it for
    /// each CA.
    #[arg(long, value_name = "URL", required = true)]
    url: Vec<String>,
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

pub fn run(command: Command) -> Result<ExitCode, CliError> {
    let Command::Fetch(args) = command;
    if !(1..=3600).contains(&args.timeout_seconds) {
        return Err(CliError::Usage("--timeout-seconds: 1 to 3600".into()));
    }
    let issuers = issuer_certificates(&args.issuer)?;
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
    let report = fetch_lists(&args.url, &issuers, held.as_deref(), |url| {
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
        print_json(&args.out, &report, &stale)?;
    } else {
        print_text(&args.out, &report, &stale)?;
    }
    Ok(if report.all_taken() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Every certificate of the files: PEM bundles, or one DER or Base64 certificate a file.
fn issuer_certificates(paths: &[PathBuf]) -> Result<Vec<Certificate>, CliError> {
    let mut out = Vec::new();
    for path in paths {
        let bytes = crate::inputs::read_file(path)?;
        let not_cert =
            |e: String| CliError::Usage(format!("{}: not a certificate: {e}", path.display()));
        if bytes
            .windows(27)
            .any(|w| w == b"-----BEGIN CERTIFICATE-----")
        {
            for x in
                openssl::x509::X509::stack_from_pem(&bytes).map_err(|e| not_cert(e.to_string()))?
            {
                let der = x.to_der().map_err(|e| not_cert(e.to_string()))?;
                out.push(Certificate::from_der(&der).map_err(|e| not_cert(e.to_string()))?);
            }
        } else {
            out.push(crate::inputs::certificate(path)?);
        }
    }
    Ok(out)
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
) -> Result<(), CliError> {
    for (url, outcome) in &report.urls {
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
        } else {
            "unchanged"
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
) -> Result<(), CliError> {
    let urls: Vec<_> = report
        .urls
        .iter()
        .map(|(url, outcome)| match outcome {
            Outcome::Taken(lists) => json!({
                "url": url,
                "taken": lists.iter().map(|(l, f)| json!({
                    "issuer": l.issuer,
                    "thisUpdate": l.this_update,
                    "nextUpdate": l.next_update,
                    "revoked": l.entries,
                    "complete": l.complete,
                    "freshness": freshness(*f),
                })).collect::<Vec<_>>(),
            }),
            Outcome::Refused(why) => json!({ "url": url, "refused": why }),
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
        })
    )
}
