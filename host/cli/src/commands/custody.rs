//! `etee custody serve`: the custody core in its own process, behind a Unix socket;
//! `etee custody reset-pin`: the administrator's reset after a PIN lock-out.

use crate::CliError;
use clap::{Args as ClapArgs, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum Command {
    /// Open the token (this process alone reads the PIN and logs in), run the custody core
    /// with the audit file, and serve its frames on a Unix socket (mode 0600; 0660 when
    /// `[custody] allowed_uids` names other users, each checked by uid). SIGTERM or
    /// SIGINT stops it cleanly: requests under way are answered, the core is locked (on
    /// the audit chain) and the socket removed. `etee seal/unseal --config` use it when
    /// the configuration says `[custody] mode = "process"`.
    Serve(ServeArgs),
    /// Clear the core's wrong-PIN counter after a lock-out (5 wrong PINs, counted on the
    /// audit chain, so that restarting does not clear them). Opens the token with the
    /// configured PIN and records the reset on the chain. Stop `etee custody serve` first.
    ResetPin(ResetPinArgs),
}

#[derive(ClapArgs)]
pub struct ResetPinArgs {
    /// HSM configuration (TOML).
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
}

#[derive(ClapArgs)]
pub struct ServeArgs {
    /// HSM configuration (TOML).
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// The socket to listen on (default: `[custody] socket` of the configuration).
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Serve an appliance (`etee serve` with this configuration and `[custody] mode =
    /// "process"`): the core takes the appliance's per-client rules instead of the
    /// default policy.
    #[arg(long, value_name = "FILE")]
    appliance: Option<PathBuf>,
}

pub fn run(command: Command) -> Result<ExitCode, CliError> {
    match command {
        Command::Serve(args) => serve(args),
        Command::ResetPin(args) => {
            let config = super::hsm::load_config(&args.config)?;
            let cleared = etee_hsm::CustodyKeys::reset_pin_counter(&config.hsm, &config.custody)?;
            outln!(
                "wrong-PIN counter reset ({cleared} consecutive failure(s) cleared); recorded in {}",
                config.custody.audit_file.display()
            )?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn serve(args: ServeArgs) -> Result<ExitCode, CliError> {
    let config = super::hsm::load_config(&args.config)?;
    let socket = args
        .socket
        .or_else(|| config.custody.socket.clone())
        .ok_or_else(|| {
            CliError::Usage(
                "give --socket PATH or set [custody] socket in the configuration".into(),
            )
        })?;
    let server = match &args.appliance {
        None => etee_hsm::remote::Server::bind(&config.hsm, &config.custody, &socket)?,
        Some(path) => {
            let appliance = etee_appliance::ApplianceConfig::load(path)
                .map_err(|e| CliError::Usage(format!("{}: {}", path.display(), e.detail())))?;
            let clients = etee_appliance::policy::Clients::new(&appliance.clients);
            let keys = etee_appliance::service::open_custody_core(&config, &clients).map_err(
                |e| match e {
                    etee_appliance::ApplianceError::Hsm(e) => CliError::Hsm(e),
                    e => CliError::Usage(format!("{}: {}", path.display(), e.detail())),
                },
            )?;
            eprintln!(
                "etee: custody rules of the appliance {} ({} client(s))",
                path.display(),
                appliance.clients.len()
            );
            etee_hsm::remote::Server::with_keys(keys, &config.custody, &socket)?
        }
    };
    for w in server.keys().hsm().warnings() {
        eprintln!("etee: warning: {w}");
    }
    etee_hsm::remote::stop_on_signals(server.stop_handle())?;
    eprintln!("etee: custody core serving on {}", socket.display());
    server.run()?;
    eprintln!("etee: custody core stopped");
    Ok(ExitCode::SUCCESS)
}
