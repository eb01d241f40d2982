//! `etee`: seal and unseal eHealth ETEE messages, verify ETKs, keep the keys in an HSM.
//!
//! Exit codes: 0 success; 1 the message or ETK failed a check (fatal or error), `seal`
//! refused a recipient ETK that fails the checks, or the audit chain is broken; 2 usage,
//! input/output, key store or HSM problems; 141 standard output was closed by its reader
//! (`etee keys list | head -1`): the command stopped writing and exited quietly (see
//! [`STDOUT_CLOSED_EXIT`]).

// Standard output goes through `outln!`/`out!` (a closed pipe ends the command quietly).
#![deny(clippy::print_stdout)]

/// `println!` for what a command reports on standard output, as a `Result<(), CliError>`
/// to use with `?`: a reader that went away gives [`CliError::StdoutClosed`] (a quiet exit)
/// where `println!` would panic. Every command prints its standard output through this or
/// through [`output`]; nothing in this crate uses `println!`/`print!`.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::output::print(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `print!` counterpart of [`outln!`].
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::output::print(format_args!($($arg)*))
    };
}

mod commands;
mod hardening;
mod inputs;
mod output;
mod progress;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "etee",
    version,
    about = "Belgian eHealth end-to-end encryption (ETEE): seal, unseal, ETKs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Seal a message: sign, encrypt for the recipients, sign again.
    Seal(commands::seal::Args),
    /// Unseal a message and report the official verdict.
    Unseal(commands::unseal::Args),
    /// ETK (encryption token) operations.
    Etk {
        #[command(subcommand)]
        command: commands::etk::Command,
    },
    /// Test PKI for rigs and demos (`pki init` is `platform pki`).
    Pki {
        #[command(subcommand)]
        command: commands::pki::Command,
    },
    /// The HSM token (PKCS#11).
    Hsm {
        #[command(subcommand)]
        command: commands::hsm::HsmCommand,
    },
    /// The keys in the HSM token.
    Keys {
        #[command(subcommand)]
        command: commands::hsm::KeysCommand,
    },
    /// The custody core: as a separate process, its PIN lock-out and status.
    Custody {
        #[command(subcommand)]
        command: commands::custody::Command,
    },
    /// The custody core's audit chain.
    Audit {
        #[command(subcommand)]
        command: commands::audit::Command,
    },
    /// Signature timestamps (RFC 3161) on sealed messages: what to stamp, and attaching
    /// an authority's answer.
    Timestamp {
        #[command(subcommand)]
        command: commands::timestamp::Command,
    },
    /// Certificate revocation lists: fetching them from their CAs.
    Crl {
        #[command(subcommand)]
        command: commands::crl::Command,
    },
    /// The appliance: the local API for medical software (HTTPS and a Unix socket).
    Serve(commands::serve::Args),
    /// A whole local ETEE world on SoftHSM, end to end: platform, appliances, flows.
    Demo(commands::demo::Args),
    /// The ETEE platform services: ETKDepot, KGSS, KeyDepot.
    Platform {
        #[command(subcommand)]
        command: commands::platform::Command,
    },
}

/// A failure that is not a verdict: bad usage, unreadable files, key store trouble.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Usage(String),
    #[error("{path}: {source}")]
    File {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("keystore {path}: {source}")]
    Keystore {
        path: String,
        source: etee_formats::keystore::KeystoreError,
    },
    #[error("ETK {path}: {source}")]
    Etk {
        path: String,
        source: etee_formats::etk::EtkError,
    },
    #[error("sealing failed: {0}")]
    Seal(#[from] etee_formats::cms::SealError),
    #[error("{0}")]
    Unseal(#[from] etee_formats::cms::UnsealError),
    #[error("HSM: {0}")]
    Hsm(#[from] etee_hsm::HsmError),
    /// A refusal that is a check's outcome, not a usage problem (exit 1): `seal` and a
    /// recipient ETK that fails the official checks.
    #[error("{0}")]
    Refused(String),
    /// Standard output was closed by its reader (`etee keys list | head -1`, a consumer
    /// that crashed). Not reported: the reader chose to stop, as with any Unix filter.
    #[error("standard output closed")]
    StdoutClosed,
}

/// The exit code of a command whose standard output was closed: 141 = 128 + SIGPIPE, what
/// a shell reports for a writer killed by SIGPIPE (the default for `cat`, `ls`, ...), so
/// `set -o pipefail` scripts see the same as with those tools, and it cannot be taken for
/// "everything was written" (0) or a verdict (1). The process does not die of SIGPIPE:
/// Rust ignores the signal, and it must stay ignored in this binary, which also runs the
/// network servers (`etee serve`, `etee platform serve`, `etee custody serve`), where a
/// peer closing a connection would kill the process. Writes to a closed pipe fail with
/// `EPIPE` instead, turned into [`CliError::StdoutClosed`] by [`output::print`] and the
/// other writers of [`output`].
const STDOUT_CLOSED_EXIT: u8 = 141;

fn main() -> ExitCode {
    // Before anything secret is read: no core file, no same-user debugger.
    if let Err(e) =
        hardening::keep_memory_private(std::env::var_os(hardening::ALLOW_ENV).as_deref())
    {
        eprintln!("etee: warning: {e}");
    }
    // A script that asked for JSON gets its failure as JSON too (beside the message on
    // standard error), so that it never has to parse an empty standard output.
    let json = std::env::args_os().skip(1).any(|a| a == "--json");
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // Arguments refused (not --help or --version, which are answers): exit 2, the
            // usage on standard error, and with --json the JSON failure too.
            if json && e.use_stderr() {
                let _ = outln!(
                    "{}",
                    serde_json::json!({ "error": usage_error_line(&e), "exit": e.exit_code() })
                );
            }
            e.exit()
        }
    };
    let result = match cli.command {
        Command::Seal(args) => commands::seal::run(args),
        Command::Unseal(args) => commands::unseal::run(args),
        Command::Etk { command } => commands::etk::run(command),
        Command::Pki { command } => commands::pki::run(command),
        Command::Hsm { command } => commands::hsm::run_hsm(command),
        Command::Keys { command } => commands::hsm::run_keys(command),
        Command::Custody { command } => commands::custody::run(command),
        Command::Audit { command } => commands::audit::run(command),
        Command::Crl { command } => commands::crl::run(command),
        Command::Timestamp { command } => commands::timestamp::run(command),
        Command::Platform { command } => commands::platform::run(command),
        Command::Serve(args) => commands::serve::run(args),
        Command::Demo(args) => commands::demo::run(args),
    };
    let (e, code) = match result {
        Ok(code) => return code,
        Err(CliError::StdoutClosed) => return ExitCode::from(STDOUT_CLOSED_EXIT),
        Err(e @ CliError::Refused(_)) => (e, 1),
        Err(e) => (e, 2),
    };
    eprintln!("etee: {e}");
    if json {
        // Standard output may be gone as well: the exit code still says it.
        let _ = outln!(
            "{}",
            serde_json::json!({ "error": e.to_string(), "exit": code })
        );
    }
    ExitCode::from(code)
}

/// clap's message for refused arguments on one line, without its `error: ` prefix: its
/// first paragraph (what follows is usage, for a reader).
fn usage_error_line(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let first: Vec<&str> = text
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect();
    let line = first.join(" ");
    line.strip_prefix("error: ").unwrap_or(&line).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn refused_arguments_are_named_in_one_line() {
        let Err(e) = Cli::try_parse_from(["etee", "keys", "list", "--json"]) else {
            panic!("accepted without --config");
        };
        let line = usage_error_line(&e);
        assert!(line.contains("--config"), "{line}");
        assert!(
            !line.contains('\n') && !line.starts_with("error:"),
            "{line}"
        );
        assert_eq!(e.exit_code(), 2);
        let Err(help) = Cli::try_parse_from(["etee", "--help"]) else {
            panic!("--help parsed as a command");
        };
        assert!(!help.use_stderr(), "help is an answer, not a failure");
    }

    fn ocsp_help(path: &[&str]) -> String {
        let mut cmd = Cli::command();
        for name in path {
            cmd = cmd.find_subcommand(name).expect("a subcommand").clone();
        }
        let arg = cmd
            .get_arguments()
            .find(|a| a.get_id() == "ocsp")
            .expect("--ocsp");
        arg.get_help().expect("a help text").to_string()
    }

    /// `--ocsp` is shared, but each command says what it asks OCSP about: only `seal`
    /// embeds an answer.
    #[test]
    fn each_command_says_what_ocsp_is_asked_about() {
        let seal = ocsp_help(&["seal"]);
        assert!(seal.contains("embedded in the message"), "{seal}");
        let unseal = ocsp_help(&["unseal"]);
        assert!(unseal.contains("signer certificates"), "{unseal}");
        let etk = ocsp_help(&["etk", "verify"]);
        assert!(etk.contains("ETK's authentication certificate"), "{etk}");
        assert!(!etk.contains("seal"), "{etk}");
        assert!(!unseal.contains("sender's own"), "{unseal}");
    }
}
