//! `etee serve`: the appliance, the local API for medical software (see
//! `docs/appliance.md`).

use crate::CliError;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// The appliance configuration (TOML; see docs/appliance.md).
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
}

/// Structured logs on standard error (`tracing`): warnings and refused or failed requests
/// by default, and the revocation lists read again; RUST_LOG overrides
/// (`etee_appliance=debug` logs every request). Neither
/// content nor keys are ever logged.
pub fn init_logs(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

pub fn run(args: Args) -> Result<ExitCode, CliError> {
    init_logs("warn,etee_appliance=info,etee_services::revocation=info");
    let config = etee_appliance::ApplianceConfig::load(&args.config)
        .map_err(|e| CliError::Usage(e.to_string()))?;
    etee_appliance::server::run(config).map_err(|e| CliError::Usage(e.to_string()))?;
    Ok(ExitCode::SUCCESS)
}
