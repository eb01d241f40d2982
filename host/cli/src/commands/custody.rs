//! `etee custody serve`: the custody core in its own process, behind a Unix socket.

use crate::CliError;
use clap::{Args as ClapArgs, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum Command {
    /// Open the token (this process alone reads the PIN and logs in), run the custody core
    /// with the audit file, and serve its frames on a Unix socket (mode 0600) until killed.
    /// `etee seal/unseal --config` use it when the configuration says
    /// `[custody] mode = "process"`.
    Serve(ServeArgs),
}

#[derive(ClapArgs)]
pub struct ServeArgs {
    /// HSM configuration (TOML).
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// The socket to listen on (default: `[custody] socket` of the configuration).
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
}

pub fn run(command: Command) -> Result<ExitCode, CliError> {
    let Command::Serve(args) = command;
    let config = super::hsm::load_config(&args.config)?;
    let socket = args
        .socket
        .or_else(|| config.custody.socket.clone())
        .ok_or_else(|| {
            CliError::Usage(
                "give --socket PATH or set [custody] socket in the configuration".into(),
            )
        })?;
    let server = etee_hsm::remote::Server::bind(&config.hsm, &config.custody, &socket)?;
    for w in server.keys().hsm().warnings() {
        eprintln!("etee: warning: {w}");
    }
    eprintln!("etee: custody core serving on {}", socket.display());
    server.run()?;
    Ok(ExitCode::SUCCESS)
}
