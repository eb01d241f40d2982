//! `etee demo`: a whole local ETEE world on SoftHSM, end to end, in one command.
//!
//! It provisions SoftHSM tokens for a hospital (Alice), a pharmacy (Bob), a doctor and
//! the platform's KGSS (keys born in the tokens), starts `etee platform serve` and one
//! `etee serve` appliance per institution on loopback (real processes of this binary, real
//! sockets), then plays the flows through the appliances' API, as medical software would:
//!
//! 1. Alice seals a message for the pharmacy by its NIHII (ETKDepot lookup); Bob opens it;
//! 2. Alice seals a prescription for "any recognised pharmacy" (a KGSS key); Bob opens it;
//! 3. the doctor's appliance is refused the prescription's key by KGSS;
//! 4. a tampered copy of the first message is rejected with the official notification;
//! 5. the world's CA revokes the doctor: Bob's appliance refuses the doctor's message (it
//!    follows the CA's list), and the doctor's appliance no longer seals (the CA's list,
//!    or its OCSP responder, `etee pki ocsp`, says its certificate is revoked; every seal
//!    embeds the responder's answer for the sender, as the official library does);
//!
//! and prints each verdict, the tail of the audit chains (Bob's custody core, the
//! platform's), stops everything and removes the world (unless `--keep DIR`). Exit 0 only
//! when every step went as it should.
//!
//! Interrupted (SIGINT, SIGTERM), it stops its processes, removes the world (unless
//! `--keep`) and exits 128 + the signal's number. Its processes die with it however it
//! ends, a SIGKILL included (`PR_SET_PDEATHSIG`).

use crate::CliError;
use etee_appliance::client::{Answer, UnixClient};
use nix::sys::signal::{kill, SigSet, Signal};
use nix::unistd::Pid;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Output, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct Args {
    /// Build the world in DIR and keep it (default: a temporary directory, removed).
    #[arg(long, value_name = "DIR")]
    keep: Option<PathBuf>,
    /// Speak REST to ETKDepot and KGSS (default: SOAP, as the official connector).
    #[arg(long)]
    rest: bool,
    /// Only provision the world (tokens, PKI, configurations) in the `--keep` directory,
    /// and say how to start it; start nothing.
    #[arg(long, requires = "keep")]
    setup_only: bool,
}

const SOFTHSM_TEMPLATE: &str = include_str!("../../../../hsm-config/softhsm2.conf.template");
const PHARMACY: &str = "27150201";
const STEPS: usize = 11;

/// The institutions of the world: (name, identity, token label).
const INSTITUTIONS: [(&str, &str); 4] = [
    ("alice", "NIHII-HOSPITAL=71000436"),
    ("bob", "NIHII-PHARMACY=27150201"),
    ("doctor", "NIHII11=10203040506"),
    ("kgss", "CBE=0809394427/KGSS"),
];

/// The appliances (one per institution but KGSS).
const APPLIANCES: [&str; 3] = ["alice", "bob", "doctor"];

/// How long the signal watcher lets the demo stop on its own before it kills the demo's
/// processes, removes the world and exits itself.
const STOP_GRACE: Duration = Duration::from_secs(30);

/// What the signal watcher shares with the demo: the processes running, and the signal
/// that interrupted the demo (none is started after it).
#[derive(Default)]
struct Watch {
    pids: Vec<Pid>,
    interrupted: Option<Signal>,
    /// The demo has stopped its processes and removed its world: nothing left to do.
    done: bool,
    /// The world's directory when it is temporary (removed by the watcher if need be).
    temporary: Option<PathBuf>,
}

type Shared = Arc<Mutex<Watch>>;

fn lock(watch: &Shared) -> MutexGuard<'_, Watch> {
    watch.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Starts `cmd`, unless the demo was interrupted; its pid is recorded under the same lock,
/// so a signal either finds it or keeps it from starting.
fn start(watch: &Shared, cmd: &mut Command) -> Result<Child, CliError> {
    let mut w = lock(watch);
    if let Some(signal) = w.interrupted {
        return Err(CliError::Usage(format!("interrupted ({signal})")));
    }
    let child = cmd.spawn()?;
    w.pids.push(Pid::from_raw(child.id() as i32));
    Ok(child)
}

/// Forgets a process that was waited for (its pid may be reused).
fn forget(watch: &Shared, child: &Child) {
    lock(watch).pids.retain(|p| p.as_raw() != child.id() as i32);
}

/// Takes SIGINT and SIGTERM from now on: the demo is marked interrupted and its processes
/// are sent SIGTERM. The demo, whose every wait is on one of them, then stops them, removes
/// its world and says so; should it not within [`STOP_GRACE`], the watcher kills them,
/// removes the temporary world itself and exits.
fn watch_signals(watch: &Shared) -> Result<(), CliError> {
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    // Blocked before any other thread exists, so that every thread inherits the mask and
    // only the watcher takes them; children unblock them (`Demo::command`).
    signals.thread_block().map_err(|e| CliError::Io(e.into()))?;
    let watch = watch.clone();
    std::thread::Builder::new()
        .name("demo-signals".into())
        .spawn(move || {
            let Ok(signal) = signals.wait() else { return };
            let pids = {
                let mut w = lock(&watch);
                w.interrupted = Some(signal);
                w.pids.clone()
            };
            eprintln!("etee demo: {signal} received: stopping");
            for pid in pids {
                let _ = kill(pid, Signal::SIGTERM);
            }
            let started = Instant::now();
            while started.elapsed() < STOP_GRACE {
                if lock(&watch).done {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            // Held to the end: nothing else starts.
            let w = lock(&watch);
            for pid in &w.pids {
                let _ = kill(*pid, Signal::SIGKILL);
            }
            if let Some(dir) = &w.temporary {
                let _ = std::fs::remove_dir_all(dir);
            }
            eprintln!(
                "etee demo: interrupted ({signal}); it did not stop within {} s: its processes \
                 were killed{}",
                STOP_GRACE.as_secs(),
                if w.temporary.is_some() {
                    " and the world removed"
                } else {
                    ""
                }
            );
            std::process::exit(128 + signal as i32);
        })?;
    Ok(())
}

/// Children stopped (SIGTERM, then SIGKILL) when the demo ends, however it ends.
struct Children(Vec<(String, Child)>, Shared);

impl Children {
    fn stop(&mut self) {
        for (_, child) in &mut self.0 {
            let pid = Pid::from_raw(child.id() as i32);
            let _ = kill(pid, Signal::SIGTERM);
        }
        for (name, child) in &mut self.0 {
            let started = Instant::now();
            loop {
                match child.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if started.elapsed() < Duration::from_secs(10) => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    _ => {
                        eprintln!("   {name} did not stop in 10 s: killed");
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                }
            }
            forget(&self.1, child);
        }
        self.0.clear();
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Demo {
    dir: PathBuf,
    conf: PathBuf,
    started: Instant,
    step: usize,
    failures: Vec<String>,
    watch: Shared,
}

fn exe() -> Result<PathBuf, CliError> {
    std::env::current_exe().map_err(CliError::Io)
}

fn random_hex(bytes: usize) -> Result<String, CliError> {
    let mut b = vec![0u8; bytes];
    openssl::rand::rand_bytes(&mut b).map_err(|e| CliError::Usage(e.to_string()))?;
    Ok(hex::encode(b))
}

fn write_secret(path: &Path, text: &str) -> Result<(), CliError> {
    crate::output::write_file(path, format!("{text}\n").as_bytes(), true)
}

fn write(path: &Path, text: &str) -> Result<(), CliError> {
    crate::output::write_file(path, text.as_bytes(), false)
}

impl Demo {
    /// Stops the flows once a signal came: what fails after it fails because of it.
    fn go_on(&self) -> Result<(), CliError> {
        match lock(&self.watch).interrupted {
            Some(signal) => Err(CliError::Usage(format!("interrupted ({signal})"))),
            None => Ok(()),
        }
    }

    fn progress(&mut self, what: &str) -> Result<(), CliError> {
        self.go_on()?;
        self.step += 1;
        outln!(
            "[{}/{STEPS}] {what} ({:.1} s)",
            self.step,
            self.started.elapsed().as_secs_f64()
        )
    }

    fn check(&mut self, ok: bool, what: &str) -> Result<(), CliError> {
        self.go_on()?;
        if ok {
            outln!("      ok: {what}")
        } else {
            self.failures.push(what.to_owned());
            outln!("      FAILED: {what}")
        }
    }

    /// `etee ARGS` with the world's SoftHSM, from the world's directory, that dies
    /// (SIGKILL) if the demo dies without stopping it.
    fn command(&self, args: &[&str]) -> Result<Command, CliError> {
        let mut cmd = Command::new(exe()?);
        cmd.args(args)
            .current_dir(&self.dir)
            .env("SOFTHSM2_CONF", &self.conf)
            .stdin(Stdio::null());
        let demo = nix::unistd::getpid();
        // The kernel signals the child when the thread that started it ends: the demo's
        // main thread, which starts them all (the flows run on a current-thread runtime).
        // SAFETY: between fork and exec only system calls (sigprocmask, prctl, getppid), no
        // allocation.
        unsafe {
            cmd.pre_exec(move || {
                // The demo blocks SIGINT and SIGTERM for its watcher; the mask is inherited.
                nix::sys::signal::sigprocmask(
                    nix::sys::signal::SigmaskHow::SIG_SETMASK,
                    Some(&SigSet::empty()),
                    None,
                )?;
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
                // Ended before the line above, the demo would never signal this child.
                if nix::unistd::getppid() != demo {
                    return Err(nix::errno::Errno::ESRCH.into());
                }
                Ok(())
            });
        }
        Ok(cmd)
    }

    /// Runs `cmd` to its end, known to the signal watcher meanwhile.
    fn run_to_end(&self, cmd: &mut Command) -> Result<Output, CliError> {
        let child = start(&self.watch, cmd)?;
        let pid = child.id() as i32;
        let out = child.wait_with_output();
        lock(&self.watch).pids.retain(|p| p.as_raw() != pid);
        Ok(out?)
    }

    /// `etee ARGS` (see [`Demo::command`]); its output goes to `setup.log`, shown when it
    /// fails.
    fn etee(&self, args: &[&str]) -> Result<(), CliError> {
        let log = self.dir.join("setup.log");
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let status = self
            .run_to_end(self.command(args)?.stdout(out.try_clone()?).stderr(out))?
            .status;
        if !status.success() {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            return Err(CliError::Usage(format!(
                "`etee {}` failed ({status}):\n{}",
                args.join(" "),
                tail(&text, 15)
            )));
        }
        Ok(())
    }

    /// Starts `etee ARGS` in the background, its output in `NAME.log`.
    fn spawn(&self, name: &str, args: &[&str]) -> Result<Child, CliError> {
        let log = std::fs::File::create(self.dir.join(format!("{name}.log")))?;
        start(
            &self.watch,
            self.command(args)?
                .env(
                    "RUST_LOG",
                    "warn,etee_appliance=info,etee::audit=info,etee_services::revocation=info",
                )
                .stdout(log.try_clone()?)
                .stderr(log),
        )
    }

    /// Waits until `ready` holds, failing early if `child` exits.
    fn wait_for(
        &self,
        name: &str,
        child: &mut Child,
        ready: impl Fn() -> bool,
    ) -> Result<(), CliError> {
        let started = Instant::now();
        while !ready() {
            if let Some(status) = child.try_wait()? {
                let log = std::fs::read_to_string(self.dir.join(format!("{name}.log")))
                    .unwrap_or_default();
                return Err(CliError::Usage(format!(
                    "{name} exited ({status}):\n{}",
                    tail(&log, 15)
                )));
            }
            if started.elapsed() > Duration::from_secs(30) {
                return Err(CliError::Usage(format!("{name} not ready after 30 s")));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

/// A refusal as `HTTP status TITLE — detail`.
fn problem_line(answer: &Answer) -> String {
    let v = answer.json();
    format!(
        "HTTP {} {} — {}",
        answer.status,
        v["title"].as_str().unwrap_or(""),
        v["detail"].as_str().unwrap_or("")
    )
}

/// Whether a sealed message carries a revocationValues attribute (its DER OID).
fn carries_ocsp_answer(sealed: &[u8]) -> bool {
    let oid = etee_formats::oid::der(etee_formats::ocsp::ATTR_REVOCATION_VALUES);
    sealed.windows(oid.len()).any(|w| w == oid.as_slice())
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn free_port() -> Result<u16, CliError> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

pub fn run(args: Args) -> Result<ExitCode, CliError> {
    let module = std::env::var_os("SOFTHSM2_MODULE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(etee_hsm::config::DEFAULT_MODULE));
    if !module.exists() {
        return Err(CliError::Usage(format!(
            "SoftHSM2 is not installed ({} is missing): run hsm-config/setup.sh, or \
             ./scripts/demo which does",
            module.display()
        )));
    }
    // Before the world exists, so that a signal never leaves it behind.
    let watch = Shared::default();
    watch_signals(&watch)?;
    let mut temporary = None;
    let dir = match &args.keep {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            if std::fs::read_dir(d)?.next().is_some() {
                return Err(CliError::Usage(format!(
                    "--keep {}: the directory is not empty",
                    d.display()
                )));
            }
            std::fs::canonicalize(d)?
        }
        None => {
            let t = tempfile::Builder::new().prefix("etee-demo-").tempdir()?;
            let path = t.path().to_path_buf();
            temporary = Some(t);
            lock(&watch).temporary = Some(path.clone());
            path
        }
    };
    // Tokens, PIN files and audit chains: for this user only.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    }
    outln!("etee demo: a local ETEE world in {}", dir.display())?;
    let tokens = dir.join("tokens");
    std::fs::create_dir_all(&tokens)?;
    let conf = dir.join("softhsm2.conf");
    write(
        &conf,
        &SOFTHSM_TEMPLATE.replace("@TOKENDIR@", &tokens.display().to_string()),
    )?;
    let mut demo = Demo {
        dir: dir.clone(),
        conf,
        started: Instant::now(),
        step: 0,
        failures: Vec::new(),
        watch: watch.clone(),
    };
    let mut children = Children(Vec::new(), watch.clone());
    let result = world(&mut demo, &module, &mut children, &args);
    children.stop();
    let interrupted = lock(&watch).interrupted;
    if let Some(signal) = interrupted {
        // What failed after the signal failed because of it: not reported.
        let removed = temporary.take().map(|t| t.close());
        lock(&watch).done = true;
        eprintln!(
            "etee demo: interrupted ({signal}): its processes are stopped; {}",
            match (&args.keep, removed) {
                (Some(d), _) => format!("the world is kept, unfinished, in {}", d.display()),
                (None, Some(Err(e))) => format!("removing the world {} failed: {e}", dir.display()),
                (None, _) => "the world is removed".into(),
            }
        );
        return Ok(ExitCode::from(128 + signal as u8));
    }
    match result {
        Ok(()) if demo.failures.is_empty() => {
            outln!(
                "etee demo: every step went as it should ({:.1} s){}",
                demo.started.elapsed().as_secs_f64(),
                match &args.keep {
                    Some(d) => format!("; the world is kept in {}", d.display()),
                    None => "; the world is removed".into(),
                }
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Ok(()) => {
            eprintln!(
                "etee demo: {} step(s) failed: {}; logs in {}",
                demo.failures.len(),
                demo.failures.join("; "),
                if args.keep.is_some() {
                    dir.display().to_string()
                } else {
                    "the removed world (rerun with --keep DIR)".into()
                }
            );
            Ok(ExitCode::from(1))
        }
        Err(e) => Err(e),
    }
}

fn world(
    demo: &mut Demo,
    module: &Path,
    children: &mut Children,
    args: &Args,
) -> Result<(), CliError> {
    demo.progress("SoftHSM tokens for Alice (hospital), Bob (pharmacy), a doctor and KGSS")?;
    for (name, _) in INSTITUTIONS {
        write_secret(&demo.dir.join(format!("{name}-user.pin")), &random_hex(8)?)?;
        write_secret(&demo.dir.join(format!("{name}-so.pin")), &random_hex(8)?)?;
        write(
            &demo.dir.join(format!("{name}-hsm.toml")),
            &format!(
                "[hsm]\nmodule = {:?}\ntoken_label = \"demo-{name}\"\n\
                 pin_file = \"{name}-user.pin\"\nso_pin_file = \"{name}-so.pin\"\n\n\
                 [custody]\naudit_file = \"{name}-audit.log\"\n",
                module.display().to_string()
            ),
        )?;
        demo.etee(&["hsm", "init", "--config", &format!("{name}-hsm.toml")])?;
    }

    demo.progress("the world's CA, ETK registration authority, and keys born in the tokens")?;
    let mut pki: Vec<String> = vec!["platform".into(), "pki".into(), "world".into()];
    for (name, identity) in INSTITUTIONS {
        pki.extend([
            "--institution".into(),
            format!("{name}:{identity}"),
            "--hsm".into(),
            format!("{name}={name}-hsm.toml"),
        ]);
    }
    pki.extend(["--tls-server".into(), "127.0.0.1".into()]);
    let pki: Vec<&str> = pki.iter().map(String::as_str).collect();
    demo.etee(&pki)?;
    // The CA's revocation list (empty for now), followed by the platform and the
    // appliances (`crl`), and its OCSP responder, asked by the appliances when they seal
    // (their answer travels in the message) and when nothing else gives a status.
    demo.etee(&["pki", "revoke", "world"])?;
    let ocsp_port = free_port()?;
    if args.setup_only {
        outln!(
            "      the CA's OCSP responder: etee pki ocsp world --listen 127.0.0.1:{ocsp_port}"
        )?;
    } else {
        let listen = format!("127.0.0.1:{ocsp_port}");
        let mut ocsp = demo.spawn("ocsp", &["pki", "ocsp", "world", "--listen", &listen])?;
        demo.wait_for("ocsp", &mut ocsp, || {
            std::net::TcpStream::connect(("127.0.0.1", ocsp_port)).is_ok()
        })?;
        children.0.push(("ocsp".into(), ocsp));
        outln!("      the CA's OCSP responder: http://{listen}")?;
    }
    demo.etee(&[
        "keys",
        "generate",
        "--profile",
        "kgss-wrap",
        "--config",
        "kgss-hsm.toml",
    ])?;
    let private_files = std::fs::read_dir(demo.dir.join("world"))?
        .filter_map(|e| e.ok())
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.ends_with(".p12")
                || (n.ends_with("-key.pem")
                    && !n.starts_with("tls-")
                    && !n.starts_with("ca-")
                    && !n.starts_with("ra-"))
        })
        .count();
    demo.check(
        private_files == 0,
        "no institution key was written to a file: they live in the tokens",
    )?;

    demo.progress("the platform: ETKDepot, KGSS, KeyDepot on loopback")?;
    let port = free_port()?;
    write(
        &demo.dir.join("platform.toml"),
        &format!(
            "[platform]\nlisten = \"127.0.0.1:{port}\"\nstore = \"platform.redb\"\n\
             tls_certificate = \"world/tls-server.pem\"\ntls_key = \"world/tls-server-key.pem\"\n\
             client_ca = [\"world/ca.pem\"]\ncrl = [\"world/ca.crl\"]\ncrl_check_seconds = 1\n\n\
             [kgss]\nhsm = \"kgss-hsm.toml\"\n"
        ),
    )?;
    let etks: Vec<String> = INSTITUTIONS
        .iter()
        .map(|(n, _)| format!("world/{n}.etk"))
        .collect();
    let mut register = vec!["platform", "etk", "register", "--config", "platform.toml"];
    register.extend(etks.iter().map(String::as_str));
    demo.etee(&register)?;
    demo.etee(&[
        "platform",
        "attributes",
        "set",
        "--config",
        "platform.toml",
        "--holder",
        &format!("NIHII-PHARMACY={PHARMACY}"),
        "--recognised-pharmacy",
    ])?;
    demo.etee(&[
        "platform",
        "attributes",
        "set",
        "--config",
        "platform.toml",
        "--holder",
        "NIHII11=10203040506",
        "--doctor",
    ])?;
    if args.setup_only {
        outln!("      platform.toml (port {port})")?;
    } else {
        start_platform(demo, children, port)?;
    }

    demo.progress("one appliance per institution (`etee serve`, API on a Unix socket)")?;
    appliances(demo, children, args, port, ocsp_port)?;
    if args.setup_only {
        let dir = demo.dir.display().to_string();
        outln!(
            "etee demo: the world is ready in {dir}; start it with\n  \
             export SOFTHSM2_CONF={dir}/softhsm2.conf; cd {dir}\n  \
             etee pki ocsp world --listen 127.0.0.1:{ocsp_port} &\n  \
             etee platform serve --config platform.toml &\n  \
             etee serve --config alice-appliance.toml &   # and bob-, doctor-appliance.toml\n  \
             curl --unix-socket alice.sock -X POST --data-binary @FILE \
             'http://appliance/v1/seal?to=NIHII-PHARMACY:{PHARMACY}'"
        )?;
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(flows(demo))?;

    demo.progress("stopping the appliances and the platform; the platform's audit chain")?;
    children.stop();
    platform_audit(demo)
}

/// Starts `etee platform serve` and waits for its port.
fn start_platform(demo: &mut Demo, children: &mut Children, port: u16) -> Result<(), CliError> {
    let mut platform = demo.spawn(
        "platform",
        &["platform", "serve", "--config", "platform.toml"],
    )?;
    demo.wait_for("platform", &mut platform, || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    })?;
    children.0.push(("platform".into(), platform));
    outln!("      https://127.0.0.1:{port}")?;
    Ok(())
}

/// Writes each institution's appliance configuration and, unless only setting up,
/// starts `etee serve` with it and waits for its socket.
fn appliances(
    demo: &mut Demo,
    children: &mut Children,
    args: &Args,
    port: u16,
    ocsp_port: u16,
) -> Result<(), CliError> {
    let uid = nix::unistd::getuid().as_raw();
    for name in APPLIANCES {
        write(
            &demo.dir.join(format!("{name}-appliance.toml")),
            &format!(
                "[appliance]\nhsm = \"{name}-hsm.toml\"\ntrust = [\"world/ca.pem\"]\n\
                 crl = [\"world/ca.crl\"]\ncrl_check_seconds = 1\n\
                 ocsp = \"http://127.0.0.1:{ocsp_port}\"\n\
                 socket = \"{name}.sock\"\n\n\
                 [platform]\nurl = \"https://127.0.0.1:{port}\"\nprotocol = \"{}\"\n\
                 ca = [\"world/ca.pem\"]\n\n\
                 [[client]]\nname = \"medical-software\"\n\
                 operations = [\"seal\", \"unseal\", \"etk\", \"kgss\", \"keydepot\", \"audit\", \"kgss-delete\", \"keydepot-delete\"]\n\
                 unix_uid = {uid}\n",
                if args.rest { "rest" } else { "soap" }
            ),
        )?;
        if args.setup_only {
            continue;
        }
        let config = format!("{name}-appliance.toml");
        let mut child = demo.spawn(name, &["serve", "--config", &config])?;
        let socket = demo.dir.join(format!("{name}.sock"));
        demo.wait_for(name, &mut child, || socket.exists())?;
        children.0.push((name.into(), child));
        outln!("      {name}: unix:{}", socket.display())?;
    }
    Ok(())
}

/// The platform's audit chain, verified and its tail shown (the platform is stopped:
/// the embedded store is one process's).
fn platform_audit(demo: &mut Demo) -> Result<(), CliError> {
    let out = demo.run_to_end(
        demo.command(&[
            "platform",
            "audit",
            "--config",
            "platform.toml",
            "--tail",
            "6",
        ])?
        .stdout(Stdio::piped())
        .stderr(Stdio::piped()),
    )?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for line in text.lines() {
        outln!("      {line}")?;
    }
    demo.check(out.status.success(), "the platform's audit chain verifies")?;
    Ok(())
}

async fn client(demo: &Demo, name: &str) -> Result<UnixClient, CliError> {
    Ok(UnixClient::connect(&demo.dir.join(format!("{name}.sock"))).await?)
}

/// One line about an unseal answer: the official verdict and the sender.
fn verdict_line(answer: &Answer) -> String {
    let v = answer.json();
    let names = |k: &str| {
        v[k].as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default()
    };
    let sender = v["sender"]["identities"]
        .as_array()
        .and_then(|a| a.first())
        .map(|i| {
            format!(
                "{} {}",
                i["id_type"].as_str().unwrap_or("?"),
                i["value"].as_str().unwrap_or("?")
            )
        })
        .unwrap_or_else(|| "unknown".into());
    format!(
        "HTTP {} · fatal: {} · errors: [{}] · warnings: [{}] · sender: {sender}",
        answer.status,
        v["fatal"].as_str().unwrap_or("none"),
        names("errors"),
        names("warnings"),
    )
}

async fn flows(demo: &mut Demo) -> Result<(), CliError> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut alice = client(demo, "alice").await?;
    let mut bob = client(demo, "bob").await?;
    let mut doctor = client(demo, "doctor").await?;

    demo.progress("Alice seals a message for pharmacy NIHII 27150201; Bob opens it")?;
    let message =
        b"Medication schedule for patient 85073003328: amoxicillin 500 mg, 3x/day, 7 days.";
    let sealed = alice
        .call(
            "POST",
            &format!("/v1/seal?to=NIHII-PHARMACY:{PHARMACY}"),
            &message[..],
            false,
        )
        .await?;
    demo.check(
        sealed.status == 200,
        &format!(
            "Alice's appliance looked up Bob's ETK in ETKDepot and sealed {} bytes (HTTP {})",
            sealed.body.len(),
            sealed.status
        ),
    )?;
    demo.check(
        carries_ocsp_answer(&sealed.body),
        "the message carries the CA's OCSP answer for Alice's certificate (revocationValues, \
         as the official library embeds it)",
    )?;
    let opened = bob
        .call("POST", "/v1/unseal", sealed.body.clone(), true)
        .await?;
    outln!("      Bob: {}", verdict_line(&opened))?;
    let content = opened.json()["content"]
        .as_str()
        .and_then(|c| b64.decode(c).ok());
    demo.check(
        opened.status == 200 && content.as_deref() == Some(&message[..]),
        "Bob's appliance opened it with the ETK key in Bob's token: same content, clean verdict",
    )?;

    demo.progress("Alice seals a prescription for any recognised pharmacy (KGSS); Bob opens it")?;
    let prescription = b"Rx: paracetamol 1 g, max 4x/day. Dr. A. Hospital, NIHII 71000436.";
    let sealed_rx = alice
        .call(
            "POST",
            "/v1/seal?allow=recognised-pharmacy",
            &prescription[..],
            false,
        )
        .await?;
    let key_id = sealed_rx
        .header("etee-kgss-key-id")
        .unwrap_or("none")
        .to_owned();
    demo.check(
        sealed_rx.status == 200 && key_id != "none",
        &format!(
            "Alice's appliance got a new KGSS key ({key_id}) and sealed for it (HTTP {})",
            sealed_rx.status
        ),
    )?;
    let opened_rx = bob
        .call("POST", "/v1/unseal", sealed_rx.body.clone(), true)
        .await?;
    outln!("      Bob: {}", verdict_line(&opened_rx))?;
    let content = opened_rx.json()["content"]
        .as_str()
        .and_then(|c| b64.decode(c).ok());
    demo.check(
        opened_rx.status == 200 && content.as_deref() == Some(&prescription[..]),
        "KGSS released the key to Bob (a recognised pharmacy) and the prescription opened",
    )?;

    demo.progress("the doctor's appliance asks for the prescription's key")?;
    let refused = doctor
        .call("POST", "/v1/unseal", sealed_rx.body.clone(), true)
        .await?;
    let v = refused.json();
    outln!("      doctor: {}", problem_line(&refused))?;
    demo.check(
        refused.status == 403 && v["title"] == "KGSS_ACCESS_DENIED",
        "KGSS refused the key to a doctor (not a recognised pharmacy); no content released",
    )?;

    demo.progress("a tampered copy of Alice's message reaches Bob")?;
    let mut tampered = sealed.body.to_vec();
    let middle = tampered.len() / 2;
    tampered[middle] ^= 0x01;
    let rejected = bob.call("POST", "/v1/unseal", tampered, true).await?;
    outln!("      Bob: {}", verdict_line(&rejected))?;
    let v = rejected.json();
    demo.check(
        rejected.status == 422
            && (v["fatal"].is_string() || v["errors"].as_array().is_some_and(|e| !e.is_empty()))
            && v.get("content").is_none(),
        "rejected with the official notification; no content released",
    )?;

    demo.progress(
        "the world's CA revokes the doctor's certificate; Bob's appliance and the doctor's follow",
    )?;
    let referral = b"Referral: patient 85073003328, please check the dosage with the hospital.";
    let to_bob = format!("/v1/seal?to=NIHII-PHARMACY:{PHARMACY}");
    let from_doctor = doctor.call("POST", &to_bob, &referral[..], false).await?;
    let before = bob
        .call("POST", "/v1/unseal", from_doctor.body.clone(), true)
        .await?;
    demo.check(
        from_doctor.status == 200 && before.status == 200,
        "Bob opens the doctor's message while the doctor's certificate is good",
    )?;
    demo.etee(&["pki", "revoke", "world", "--name", "doctor"])?;
    let changed = Instant::now();
    // The appliance looks at its list file every second (`crl_check_seconds = 1`).
    let after = loop {
        let answer = bob
            .call("POST", "/v1/unseal", from_doctor.body.clone(), true)
            .await?;
        if answer.status != 200 || changed.elapsed() > Duration::from_secs(10) {
            break answer;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    outln!("      Bob: {}", verdict_line(&after))?;
    let v = after.json();
    demo.check(
        after.status == 422
            && v["errors"]
                .as_array()
                .is_some_and(|e| e.iter().any(|n| n == "OUTER_CERTIFICATE_REVOKED"))
            && v.get("content").is_none(),
        &format!(
            "{:.1} s after the list changed, without a restart, Bob's appliance refuses the \
             same message: OUTER_CERTIFICATE_REVOKED, no content released",
            changed.elapsed().as_secs_f64()
        ),
    )?;
    let refused = doctor.call("POST", &to_bob, &referral[..], false).await?;
    let v = refused.json();
    outln!("      doctor: {}", problem_line(&refused))?;
    // Its own appliance follows the list too: whichever of the list and the responder it
    // heard from first refuses.
    let by_list = v["detail"]
        .as_str()
        .is_some_and(|d| d.contains("revocation lists"));
    demo.check(
        refused.status == 409 && v["title"] == "OWN_CERTIFICATE_NOT_GOOD",
        if by_list {
            "the doctor's appliance no longer seals: the CA's list says its certificate is \
             revoked"
        } else {
            "the doctor's appliance no longer seals: the CA's OCSP responder says its \
             certificate is revoked"
        },
    )?;

    demo.progress("the tail of Bob's custody audit chain (every key use, before its result)")?;
    let audit = bob
        .call("GET", "/v1/audit?limit=10000", Vec::new(), true)
        .await?;
    let v = audit.json();
    let entries = v["entries"].as_array().cloned().unwrap_or_default();
    for e in &entries[entries.len().saturating_sub(6)..] {
        outln!(
            "      #{:<4} {:<16} {:<18} key {:<14} {}",
            e["sequence"],
            e["operation"].as_str().unwrap_or(""),
            e["client"].as_str().unwrap_or("-"),
            e["key"]
                .as_str()
                .map(|k| if k.len() > 14 { &k[..14] } else { k })
                .unwrap_or("-"),
            e["outcome"].as_str().unwrap_or("")
        )?;
    }
    demo.check(
        audit.status == 200 && v["intact"] == true && !entries.is_empty(),
        &format!(
            "Bob's chain verifies: {} records",
            v["records"].as_u64().unwrap_or(0)
        ),
    )?;
    Ok(())
}
