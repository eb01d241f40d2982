//! `etee custody serve`: the custody core in its own process, behind a Unix socket;
//! `etee custody reset-pin`: the administrator's reset after a PIN lock-out;
//! `etee custody status`: the token's PIN flags and the core's state on the chain.

use crate::CliError;
use clap::{Args as ClapArgs, Subcommand};
use etee_custody::lock::LockState;
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
    /// audit chain, so that restarting does not clear them), recorded on the chain. The PIN
    /// is not tried here: the next login with pin_file is, and counted as usual. Stop the
    /// service first (the chain is locked while the reset is appended).
    ResetPin(ResetPinArgs),
    /// What an operator checks first after a refusal: the token's PIN flags (asked without
    /// logging in), and from the audit chain (read, not locked: the service may run) its
    /// length and head, the wrong PINs at its end (5 lock the core out) and uses whose
    /// outcome it does not show; with `[custody] mode = "process"`, whether the custody
    /// process answers (a Status request). Says which command clears a lock-out. Exit 0
    /// when keys can be used.
    Status(StatusArgs),
}

#[derive(ClapArgs)]
pub struct StatusArgs {
    /// HSM configuration (TOML).
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// Print JSON on standard output.
    #[arg(long)]
    json: bool,
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
        Command::Status(args) => status(args),
        Command::ResetPin(args) => {
            let config = super::hsm::load_config(&args.config)?;
            let cleared = etee_hsm::CustodyKeys::reset_pin_counter(&config.hsm, &config.custody)?;
            let audit = config.custody.audit_file.display();
            if cleared == 0 {
                // Still recorded: an administrator's action belongs on the chain even when
                // it changed nothing.
                outln!(
                    "nothing to clear: no wrong PIN is counted at the end of the audit chain. \
                     The reset is recorded in {audit} all the same"
                )?;
            } else {
                outln!(
                    "wrong-PIN counter reset ({cleared} consecutive failure(s) cleared); recorded \
                     in {audit}. The PIN was not tried: the next login with pin_file is, and a \
                     wrong one counts again"
                )?;
            }
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
    etee_hsm::remote::stop_on_signals(server.stop_handle())?;
    eprintln!("etee: custody core serving on {}", socket.display());
    server.run()?;
    eprintln!("etee: custody core stopped");
    Ok(ExitCode::SUCCESS)
}

/// `etee custody status`. Exit 0 when keys can be used; 1 when the token is missing, has
/// no user PIN or locked it, the core is locked out, or (`mode = "process"`) the custody
/// process does not answer or its core is not unlocked; 2 when the status cannot be read.
fn status(args: StatusArgs) -> Result<ExitCode, CliError> {
    use etee_custody::config::MAX_PIN_ATTEMPTS;
    let config = super::hsm::load_config(&args.config)?;
    let selector = &config.hsm.token;
    // Found as every other command finds it; only its absence is a status to report.
    let mut present_tokens = String::new();
    let token = match etee_hsm::token_summary(&config.hsm) {
        Ok(t) => Some(t),
        Err(etee_hsm::HsmError::TokenNotFound { present, .. }) => {
            present_tokens = present;
            None
        }
        Err(e) => return Err(e.into()),
    };
    let path = &config.custody.audit_file;
    let chain = read_chain(path).map_err(|e| {
        CliError::Usage(format!(
            "{e}. The audit chain cannot be read as a whole chain: keep the file as \
             evidence, run `etee audit verify --config FILE` to see where it breaks, and \
             follow \"A damaged audit chain\" in docs/operations.md"
        ))
    })?;
    let token_locked = token
        .as_ref()
        .is_some_and(|t| t.user_pin_locked || !t.user_pin_initialized);
    let failures = chain.as_ref().map_or(0, |c| c.pin_failures);
    let core_locked_out = failures >= MAX_PIN_ATTEMPTS;
    // With the core in its own process, keys can be used only if that process answers.
    let process = match (config.custody.mode, &config.custody.socket) {
        (etee_hsm::CustodyMode::Process, Some(socket)) => {
            Some((socket, ask_custody_process(&config.custody, socket)))
        }
        _ => None,
    };
    let process_ready = process
        .as_ref()
        .is_none_or(|(_, answer)| matches!(answer, Ok(s) if s.state == LockState::Unlocked));
    let mut advice = Vec::new();
    match &token {
        // A chain for it means the token existed: a mistyped label, or a token gone.
        None if chain.is_some() => advice.push(format!(
            "no token {selector} in {} (present: {present_tokens}), yet its audit chain is \
             there: check token_label / token_serial in the configuration, and that the \
             token (or SOFTHSM2_CONF's token directory) is the one in use",
            config.hsm.module.display()
        )),
        None => advice.push(format!(
            "no token {selector} in {} (present: {present_tokens}): check token_label / \
             token_serial in the configuration; for a new institution, `etee hsm init` \
             creates the token",
            config.hsm.module.display()
        )),
        Some(t) if !t.user_pin_initialized => {
            advice.push("the token has no user PIN: `etee hsm init-pin`".to_string())
        }
        Some(_) if token_locked => advice.push(
            "the token locked its user PIN: its officers set it again with `etee hsm init-pin` \
             (which also clears the core's count)"
                .to_string(),
        ),
        Some(_) => {}
    }
    if core_locked_out && !token_locked {
        advice.push(
            "the custody core is locked out: check pin_file, then `etee custody reset-pin` \
             (with the service stopped)"
                .to_string(),
        );
    }
    match &process {
        // A socket file with nobody behind it refuses connections; one that resets or
        // times out has a server behind it that did not answer.
        Some((socket, Err(_))) if !listening(socket) => advice.push(
            "the custody process does not answer: start it (`etee custody serve --config \
             FILE`, or its service) with the same [custody] socket"
                .to_string(),
        ),
        Some((_, Err(_))) => advice.push(
            "the custody process is there but did not answer: see its log (busy with \
             requests, or every connection working at its limit)"
                .to_string(),
        ),
        Some((_, Ok(s))) if s.state != LockState::Unlocked && !core_locked_out => advice.push(
            "the custody process answers but its core is not unlocked: restart it (its log \
             says why)"
                .to_string(),
        ),
        _ => {}
    }
    if args.json {
        let report = serde_json::json!({
            "token": token,
            "audit": {
                "file": path.display().to_string(),
                "present": chain.is_some(),
                "records": chain.as_ref().map(|c| c.count),
                "head": chain.as_ref().map(|c| hex::encode(c.head.hash)),
                "anchor": chain.as_ref().map(|c| c.head.anchor().to_string()),
                "torn_tail": chain.as_ref().map(|c| c.torn_tail),
                "unconcluded_uses": chain.as_ref().map(|c| c.unconcluded.clone()),
            },
            "process": process.as_ref().map(|(socket, answer)| serde_json::json!({
                "socket": socket.display().to_string(),
                "answers": answer.is_ok(),
                "state": answer.as_ref().ok().map(|s| format!("{:?}", s.state)),
                "pin_tries_left": answer.as_ref().ok().map(|s| s.pin_tries_left),
                "error": answer.as_ref().err(),
            })),
            "wrong_pins": failures,
            "max_wrong_pins": MAX_PIN_ATTEMPTS,
            "core_locked_out": core_locked_out,
            "advice": advice,
        });
        outln!("{report}")?;
    } else {
        match &token {
            Some(t) => {
                let pin = if !t.user_pin_initialized {
                    "not set"
                } else if t.user_pin_locked {
                    "LOCKED by the token"
                } else if t.user_pin_final_try {
                    "one try left (the token's count)"
                } else if t.user_pin_count_low {
                    "set; a wrong one was entered since the last successful login (the token counts it)"
                } else {
                    "ok"
                };
                outln!(
                    "token    {} {} {}: user PIN {pin}",
                    t.name(),
                    t.manufacturer,
                    t.model
                )?;
            }
            None => outln!("token    {selector}: not found")?,
        }
        match &chain {
            Some(c) => {
                outln!(
                    "audit    {}: {} records, anchor {}{}",
                    path.display(),
                    c.count,
                    c.head.anchor(),
                    if c.torn_tail {
                        " (the last record is incomplete: being written, or cut when a core next opens the chain)"
                    } else {
                        ""
                    }
                )?;
                outln!(
                    "core     {failures} wrong PIN(s) at the end of the chain (locks out at {MAX_PIN_ATTEMPTS}){}",
                    if core_locked_out { ": LOCKED OUT" } else { "" }
                )?;
                if !c.unconcluded.is_empty() {
                    outln!(
                        "         {} use(s) without an outcome on the chain (sequences {:?}): the process stopped while the token worked",
                        c.unconcluded.len(),
                        c.unconcluded
                    )?;
                }
            }
            None => outln!(
                "audit    {}: no chain yet (the first key use makes it)",
                path.display()
            )?,
        }
        match &process {
            Some((socket, Ok(s))) => outln!(
                "process  {}: answers, core {}",
                socket.display(),
                match s.state {
                    LockState::Unlocked => "unlocked",
                    LockState::Locked => "LOCKED",
                    LockState::LockedOut => "LOCKED OUT",
                }
            )?,
            Some((socket, Err(e))) => {
                outln!("process  {}: DOES NOT ANSWER ({e})", socket.display())?
            }
            None => {}
        }
        for a in &advice {
            outln!("advice   {a}")?;
        }
    }
    Ok(
        if token.is_none() || token_locked || core_locked_out || !process_ready {
            ExitCode::from(1)
        } else {
            ExitCode::SUCCESS
        },
    )
}

/// The custody process's answer to a `Status` request (read-only, not recorded), or why
/// there is none.
fn ask_custody_process(
    custody: &etee_hsm::CustodyConfig,
    socket: &std::path::Path,
) -> Result<etee_custody::wire::StatusReply, String> {
    let keys = etee_hsm::RemoteCustodyKeys::with_certificates(Vec::new(), custody, socket)
        .map_err(|e| e.to_string())?;
    match keys.request(&etee_custody::Request::Status) {
        Ok(etee_custody::Response::Status(s)) => Ok(s),
        Ok(other) => Err(format!("unexpected answer {:#04x}", other.id())),
        Err(e) => Err(e.to_string()),
    }
}

/// The chain at `path` (its archived segments and the current file), or `None` when there
/// is none yet. Safe while the service writes it: [`etee_custody::file_sink::scan`] does
/// not mistake a segment switch for a break.
fn read_chain(path: &std::path::Path) -> Result<Option<etee_custody::file_sink::Scan>, CliError> {
    use etee_custody::file_sink::{scan, segments};
    let failed = |e: &dyn std::fmt::Display| CliError::Usage(format!("{}: {e}", path.display()));
    if !path.is_file() && segments(path).map_err(|e| failed(&e))?.is_empty() {
        return Ok(None);
    }
    scan(path, |_| {}).map(Some).map_err(|e| failed(&e))
}

/// Whether something accepts connections on `socket` (a server that then fails to answer
/// is still there).
fn listening(socket: &std::path::Path) -> bool {
    std::os::unix::net::UnixStream::connect(socket).is_ok()
}
