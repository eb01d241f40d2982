//! `etee`: seal and unseal eHealth ETEE messages, verify ETKs, keep the keys in an HSM.
//!
//! Exit codes: 0 success; 1 the message or ETK failed a check (fatal or error), or the
//! audit chain is broken; 2 usage, input/output, key store or HSM problems.

mod commands;
mod inputs;
mod output;

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
    /// The custody core as a separate process.
    Custody {
        #[command(subcommand)]
        command: commands::custody::Command,
    },
    /// The custody core's audit chain.
    Audit {
        #[command(subcommand)]
        command: commands::audit::Command,
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Seal(args) => commands::seal::run(args),
        Command::Unseal(args) => commands::unseal::run(args),
        Command::Etk { command } => commands::etk::run(command),
        Command::Pki { command } => commands::pki::run(command),
        Command::Hsm { command } => commands::hsm::run_hsm(command),
        Command::Keys { command } => commands::hsm::run_keys(command),
        Command::Custody { command } => commands::custody::run(command),
        Command::Audit { command } => commands::audit::run(command),
        Command::Platform { command } => commands::platform::run(command),
        Command::Serve(args) => commands::serve::run(args),
        Command::Demo(args) => commands::demo::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("etee: {e}");
            ExitCode::from(2)
        }
    }
}
