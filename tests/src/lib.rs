//! Shared helpers for the end-to-end tests in `tests/tests/`: they drive the real `etee`
//! binary as a user would (arguments, environment, stdin/stdout, exit codes, files).
//!
//! # Where the binary comes from
//!
//! Cargo only sets `CARGO_BIN_EXE_<name>` for the integration tests of the package that
//! owns the binary, and a (non-artifact) dependency on a binary-only package neither builds
//! the binary nor exposes its path. So [`etee_bin`] asks Cargo itself: it runs
//! `cargo build -p etee --bin etee --message-format=json` once per test process (a no-op of
//! a fraction of a second when up to date) and takes the `executable` path Cargo reports.
//! That is robust against a stale binary (the other crates change under the tests), against
//! custom target directories (`CARGO_TARGET_DIR`, `build.target-dir`) and picks the same
//! profile as the test binary itself (`cargo test --release` tests a release `etee`).
//! `ETEE_BIN=/path/to/etee` skips the build and tests that binary instead.
//!
//! # Skips
//!
//! Tests that need `../shared/vectors` or `openssl` on `PATH` print `skipping: ...` and
//! return when those are absent; set `ETEE_E2E_STRICT=1` to turn every such skip into a
//! failure. `scripts/test` (CI's command) sets `ETEE_TEST_TOOLS_REQUIRED=1`: the tools it
//! installs must be there, only the vectors may be absent (see `etee_testpki::skip`).

use serde_json::Value;
use std::ffi::OsStr;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// Environment variable the CLI reads the keystore password from.
pub const PASSWORD_ENV: &str = "ETEE_KEYSTORE_PASSWORD";

// ---------------------------------------------------------------------------------------
// The binary
// ---------------------------------------------------------------------------------------

/// Path of an up-to-date `etee` binary (built once per test process; see the crate docs).
pub fn etee_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("ETEE_BIN") {
            let p = PathBuf::from(p);
            assert!(p.is_file(), "ETEE_BIN={} is not a file", p.display());
            return p;
        }
        build_etee()
    })
}

fn build_etee() -> PathBuf {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&workspace).args([
        "build",
        "-p",
        "etee",
        "--bin",
        "etee",
        "--message-format=json-render-diagnostics",
    ]);
    // Same profile as this test binary: <target>/<profile-dir>/deps/<test-exe>.
    let profile_dir = std::env::current_exe().ok().and_then(|exe| {
        exe.parent()?
            .parent()?
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
    });
    match profile_dir.as_deref() {
        Some("release") => {
            cmd.arg("--release");
        }
        Some("debug") | None => {}
        Some(custom) => {
            cmd.args(["--profile", custom]);
        }
    }
    // Compiler diagnostics go to our stderr (shown when a test fails); JSON to stdout.
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .expect("running `cargo build -p etee`");
    assert!(
        out.status.success(),
        "`cargo build -p etee` failed ({}); see the compiler output above",
        out.status
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let exe = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "etee")
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .expect("cargo did not report the etee executable");
    assert!(exe.is_file(), "{} does not exist", exe.display());
    exe
}

// ---------------------------------------------------------------------------------------
// Running it
// ---------------------------------------------------------------------------------------

/// A prepared `etee` invocation. The password variable is removed from the inherited
/// environment (so a developer's shell never leaks into a test) and standard input is
/// empty unless [`Etee::stdin`] gives it bytes (so nothing ever waits on a terminal).
pub struct Etee {
    cmd: Command,
    stdin: Option<Vec<u8>>,
    shown: Vec<String>,
}

/// Starts an `etee` invocation with these arguments.
pub fn etee<I, S>(args: I) -> Etee
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(etee_bin());
    cmd.env_remove(PASSWORD_ENV);
    let mut e = Etee {
        cmd,
        stdin: None,
        shown: vec!["etee".into()],
    };
    for a in args {
        e = e.arg(a);
    }
    e
}

impl Etee {
    pub fn arg<S: AsRef<OsStr>>(mut self, a: S) -> Self {
        self.shown.push(a.as_ref().to_string_lossy().into_owned());
        self.cmd.arg(a);
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        for a in args {
            self = self.arg(a);
        }
        self
    }

    /// Passes the keystore password the recommended way: in `ETEE_KEYSTORE_PASSWORD`.
    pub fn password(mut self, password: &str) -> Self {
        self.cmd.env(PASSWORD_ENV, password);
        self
    }

    /// Sets an environment variable of the child (e.g. `SOFTHSM2_CONF`).
    pub fn env<K: AsRef<OsStr>, V: AsRef<OsStr>>(mut self, key: K, value: V) -> Self {
        self.cmd.env(key, value);
        self
    }

    /// Removes an environment variable from the child's (e.g. `CREDENTIALS_DIRECTORY`, so
    /// that the test's own environment cannot supply it).
    pub fn env_remove<K: AsRef<OsStr>>(mut self, key: K) -> Self {
        self.cmd.env_remove(key);
        self
    }

    /// Bytes for standard input.
    pub fn stdin(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.stdin = Some(bytes.into());
        self
    }

    pub fn run(mut self) -> Output {
        self.cmd
            .stdin(if self.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = self.cmd.spawn().expect("spawning etee");
        let writer = self.stdin.take().map(|bytes| {
            let mut pipe = child.stdin.take().expect("stdin pipe");
            // A thread, so a large input cannot deadlock against a full stdout pipe.
            std::thread::spawn(move || {
                // The child may legitimately stop reading early (e.g. a fatal verdict).
                let _ = pipe.write_all(&bytes);
            })
        });
        let out = child.wait_with_output().expect("waiting for etee");
        if let Some(w) = writer {
            w.join().expect("stdin writer thread");
        }
        Output {
            command: self.shown.join(" "),
            code: out.status.code(),
            stdout: out.stdout,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// What an `etee` run produced.
#[derive(Debug)]
pub struct Output {
    pub command: String,
    /// `None` when killed by a signal.
    pub code: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl Output {
    /// Asserts the exit code, showing everything about the run when it differs.
    #[track_caller]
    pub fn code(&self, expected: i32) -> &Self {
        assert_eq!(
            self.code,
            Some(expected),
            "unexpected exit status of `{}`\n--- stdout\n{}\n--- stderr\n{}",
            self.command,
            String::from_utf8_lossy(&self.stdout),
            self.stderr
        );
        self
    }

    /// Standard output as one JSON line (`--json`), parsed; asserts it is exactly one line.
    #[track_caller]
    pub fn json(&self) -> Value {
        let text = std::str::from_utf8(&self.stdout).expect("stdout is not UTF-8");
        assert!(
            text.ends_with('\n') && text.matches('\n').count() == 1,
            "`{}`: expected exactly one JSON line, got {text:?} (stderr: {})",
            self.command,
            self.stderr
        );
        serde_json::from_str(text)
            .unwrap_or_else(|e| panic!("`{}`: stdout is not JSON ({e}): {text:?}", self.command))
    }
}

// ---------------------------------------------------------------------------------------
// Test world (`etee pki init`)
// ---------------------------------------------------------------------------------------

/// A test world made by `etee pki init`: a CA, and the institutions `alice`
/// (NIHII-HOSPITAL=71000436) and `bob` (NIHII-PHARMACY=27150201), each with a keystore,
/// an ETK, and (for independent checks only) the ETK certificate and key as PEM.
pub struct World {
    dir: tempfile::TempDir,
    /// The keystore password `pki init` chose (file `password`).
    pub password: String,
    /// Decimal ETK serial numbers, from `pki init`'s report, by institution name.
    pub etk_serials: Vec<(String, String)>,
}

impl World {
    /// Creates a new world in a fresh temporary directory.
    pub fn create() -> World {
        Self::create_with(&[])
    }

    /// [`World::create`] with more arguments for `etee pki init` (`--ocsp-url`, ...).
    pub fn create_with(extra: &[&str]) -> World {
        let dir = tempfile::Builder::new()
            .prefix(&format!("{WORLD_PREFIX}{}-", std::process::id()))
            .tempdir()
            .expect("temporary directory");
        let out = etee(["pki", "init"]).arg(dir.path()).args(extra).run();
        out.code(0);
        let password = std::fs::read_to_string(dir.path().join("password"))
            .expect("pki init writes `password`")
            .trim_end()
            .to_string();
        assert!(!password.is_empty(), "pki init wrote an empty password");
        // "alice: CN=... (ETK serial 123)"
        let report = String::from_utf8_lossy(&out.stdout);
        let etk_serials = report
            .lines()
            .filter_map(|l| {
                let (name, rest) = l.split_once(": ")?;
                let serial = rest.rsplit_once("(ETK serial ")?.1.strip_suffix(')')?;
                Some((name.to_string(), serial.to_string()))
            })
            .collect::<Vec<_>>();
        let w = World {
            dir,
            password,
            etk_serials,
        };
        for name in ["alice", "bob"] {
            for f in [
                format!("{name}.p12"),
                format!("{name}.etk"),
                format!("{name}-etk-cert.pem"),
                format!("{name}-etk-key.pem"),
            ] {
                assert!(w.path(&f).is_file(), "pki init did not write {f}");
            }
            w.etk_serial(name);
        }
        assert!(w.ca().is_file(), "pki init did not write ca.pem");
        w
    }

    /// The world of this test process (one per test file), created on first use. Statics
    /// are never dropped, so its directory outlives the process; to keep the system
    /// temporary directory bounded, worlds of earlier runs are removed when a new one is
    /// made (those whose process has ended, or, without `/proc`, older than a day).
    pub fn shared() -> &'static World {
        static WORLD: OnceLock<World> = OnceLock::new();
        WORLD.get_or_init(|| {
            remove_stale_worlds();
            World::create()
        })
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    pub fn ca(&self) -> PathBuf {
        self.path("ca.pem")
    }
    pub fn p12(&self, who: &str) -> PathBuf {
        self.path(&format!("{who}.p12"))
    }
    pub fn etk(&self, who: &str) -> PathBuf {
        self.path(&format!("{who}.etk"))
    }
    pub fn etk_cert_pem(&self, who: &str) -> PathBuf {
        self.path(&format!("{who}-etk-cert.pem"))
    }
    pub fn etk_key_pem(&self, who: &str) -> PathBuf {
        self.path(&format!("{who}-etk-key.pem"))
    }
    pub fn password_file(&self) -> PathBuf {
        self.path("password")
    }

    /// The decimal serial of `who`'s ETK encryption certificate (the keystore alias).
    pub fn etk_serial(&self, who: &str) -> &str {
        self.etk_serials
            .iter()
            .find(|(n, _)| n == who)
            .map(|(_, s)| s.as_str())
            .unwrap_or_else(|| panic!("pki init reported no ETK serial for {who}"))
    }

    /// `etee seal` from `from` to the ETKs of `to` (checked against this world's CA),
    /// from file to file; returns the sealed bytes.
    pub fn seal(&self, scratch: &Path, from: &str, to: &[&str], plaintext: &[u8]) -> Vec<u8> {
        let input = scratch.join(format!("seal-in-{}", unique()));
        let output = scratch.join(format!("seal-out-{}", unique()));
        std::fs::write(&input, plaintext).unwrap();
        let mut cmd = etee(["seal", "--keystore"])
            .arg(self.p12(from))
            .arg("--trust")
            .arg(self.ca())
            .arg("--in")
            .arg(&input)
            .arg("--out")
            .arg(&output)
            .password(&self.password);
        for who in to {
            cmd = cmd.arg("--to").arg(self.etk(who));
        }
        cmd.run().code(0);
        std::fs::read(&output).expect("seal wrote --out")
    }

    /// `etee unseal --json` as `who` (trusting this world's CA) of `sealed`, content to a
    /// file in `scratch`. Returns the run, the verdict and the content file's path.
    pub fn unseal(&self, scratch: &Path, who: &str, sealed: &[u8], extra: &[&str]) -> Unsealed {
        let input = scratch.join(format!("unseal-in-{}", unique()));
        let out = scratch.join(format!("unseal-out-{}", unique()));
        std::fs::write(&input, sealed).unwrap();
        let run = etee(["unseal", "--json", "--keystore"])
            .arg(self.p12(who))
            .arg("--trust")
            .arg(self.ca())
            .arg("--in")
            .arg(&input)
            .arg("--out")
            .arg(&out)
            .args(extra)
            .password(&self.password)
            .run();
        let verdict = run.json();
        Unsealed { run, verdict, out }
    }
}

/// Result of [`World::unseal`].
pub struct Unsealed {
    pub run: Output,
    pub verdict: Value,
    /// The `--out` path (exists only when the content was released).
    pub out: PathBuf,
}

impl Unsealed {
    /// The released content; panics when there is none.
    #[track_caller]
    pub fn content(&self) -> Vec<u8> {
        std::fs::read(&self.out).unwrap_or_else(|e| {
            panic!(
                "no content at {} ({e}); verdict {}",
                self.out.display(),
                self.verdict
            )
        })
    }
}

fn remove_stale_worlds() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    // Where /proc exists (Linux), a world whose process is gone is stale at once;
    // elsewhere, after a day.
    let proc_fs = Path::new("/proc/self").exists();
    let day = std::time::Duration::from_secs(24 * 3600);
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(WORLD_PREFIX) else {
            continue;
        };
        let pid = rest.split('-').next().filter(|p| p.parse::<u32>().is_ok());
        let stale = match pid {
            Some(pid) if proc_fs => !Path::new("/proc").join(pid).exists(),
            _ => e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > day),
        };
        if stale {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Prefix of world directories: `etee-e2e-world-<pid>-<random>`.
const WORLD_PREFIX: &str = "etee-e2e-world-";

/// A number unique within this process (for file names in shared scratch directories).
pub fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// A fresh scratch directory for one test.
pub fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("etee-e2e-")
        .tempdir()
        .expect("temporary directory")
}

/// Deterministic, non-repetitive test content of `len` bytes (all byte values occur).
pub fn content(len: usize, seed: u8) -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9 ^ u32::from(seed);
    (0..len)
        .map(|_| {
            // xorshift32
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect()
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(openssl::sha::sha256(data))
}

// ---------------------------------------------------------------------------------------
// Skips: shared vectors, openssl
// ---------------------------------------------------------------------------------------

/// Reports a test skipped for want of a tool (or fails it under `ETEE_E2E_STRICT=1` or
/// `ETEE_TEST_TOOLS_REQUIRED=1`): the one definition in
/// `etee_testpki::skip`, shared with the crates' own tests.
#[track_caller]
pub fn skip(why: &str) {
    etee_testpki::skip::skip(why);
}

/// The shared vectors directory: `ETEE_VECTORS` (relative: from the project root), else
/// `<workspace>/../shared/vectors`. `None` (after printing `skipping: ...`) when it is
/// absent; a failure under `ETEE_E2E_STRICT=1` (`etee_testpki::skip::shared_vectors`).
#[track_caller]
pub fn vectors() -> Option<PathBuf> {
    etee_testpki::skip::shared_vectors()
}

/// Whether `openssl` (the command) can be run; prints a skip line when it cannot.
pub fn openssl_cli() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    let ok = *OK.get_or_init(|| {
        Command::new("openssl")
            .arg("version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    if !ok {
        skip("`openssl` not on PATH");
    }
    ok
}

/// What `openssl cms` needs to open a sealed message as its recipient: the CA file both
/// signatures chain to, the recipient's ETK certificate and key (PEM files), and the
/// outer signer's certificate (PEM) for the inner layer, which carries none; `None` takes
/// the one the outer layer carries.
pub struct OpensslRecipient<'a> {
    pub ca: &'a Path,
    pub etk_cert: &'a Path,
    pub etk_key: &'a Path,
    pub signer: Option<&'a Path>,
}

/// Opens the sealed message at `sealed` with `openssl cms` alone, in three steps in `dir`:
/// the outer signature, the decryption, the inner signature. Returns the content; any
/// step that fails fails the test.
#[track_caller]
pub fn openssl_open(dir: &Path, sealed: &Path, r: &OpensslRecipient) -> Vec<u8> {
    let p = |name: &str| dir.join(name);
    let verify = |more: &[&OsStr]| {
        let fixed = [
            "cms", "-verify", "-inform", "DER", "-binary", "-purpose", "any",
        ];
        openssl(fixed.iter().map(OsStr::new).chain(more.iter().copied()));
    };
    let outer_signer = p("outer-signer.pem");
    verify(&[
        "-CAfile".as_ref(),
        r.ca.as_os_str(),
        "-in".as_ref(),
        sealed.as_os_str(),
        "-certsout".as_ref(),
        outer_signer.as_os_str(),
        "-out".as_ref(),
        p("middle.der").as_os_str(),
    ]);
    openssl([
        "cms".as_ref(),
        "-decrypt".as_ref(),
        "-inform".as_ref(),
        "DER".as_ref(),
        "-binary".as_ref(),
        "-recip".as_ref(),
        r.etk_cert.as_os_str(),
        "-inkey".as_ref(),
        r.etk_key.as_os_str(),
        "-in".as_ref(),
        p("middle.der").as_os_str(),
        "-out".as_ref(),
        p("inner.der").as_os_str(),
    ] as [&OsStr; 13]);
    verify(&[
        "-CAfile".as_ref(),
        r.ca.as_os_str(),
        "-certfile".as_ref(),
        r.signer.unwrap_or(&outer_signer).as_os_str(),
        "-in".as_ref(),
        p("inner.der").as_os_str(),
        "-out".as_ref(),
        p("opened-by-openssl").as_os_str(),
    ]);
    std::fs::read(p("opened-by-openssl")).expect("openssl's content")
}

/// Runs `openssl` with these arguments; panics with its output when it fails.
#[track_caller]
pub fn openssl<I, S>(args: I)
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<_> = args
        .into_iter()
        .map(|a| a.as_ref().to_os_string())
        .collect();
    let out = Command::new("openssl")
        .args(&args)
        .stdin(Stdio::null())
        .output()
        .expect("running openssl");
    assert!(
        out.status.success(),
        "openssl {:?} failed ({})\n--- stdout\n{}\n--- stderr\n{}",
        args,
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------------------------------------------------------------------------------------
// A small BER reader, independent of the implementation, for layout checks
// ---------------------------------------------------------------------------------------

/// One BER element.
#[derive(Debug, Clone)]
pub struct Tlv<'a> {
    /// The identifier octet (single-octet tags only; ETEE needs nothing else).
    pub tag: u8,
    /// Whether the length was the indefinite form (`0x80`).
    pub indefinite: bool,
    /// The header bytes (identifier and length octets).
    pub header: &'a [u8],
    /// The content octets of a primitive element (empty for constructed ones).
    pub value: &'a [u8],
    /// The children of a constructed element.
    pub children: Vec<Tlv<'a>>,
    /// The whole encoding, header to end (including any end-of-contents octets).
    pub raw: &'a [u8],
}

impl Tlv<'_> {
    pub fn constructed(&self) -> bool {
        self.tag & 0x20 != 0
    }

    /// The `i`-th child; panics with context when absent.
    #[track_caller]
    pub fn child(&self, i: usize) -> &Self {
        self.children.get(i).unwrap_or_else(|| {
            panic!(
                "element {:02x} has {} children, wanted #{i}",
                self.tag,
                self.children.len()
            )
        })
    }
}

/// Parses exactly one BER element spanning all of `data`.
pub fn ber(data: &[u8]) -> Result<Tlv<'_>, String> {
    let (tlv, rest) = ber_one(data, 0)?;
    if rest.is_empty() {
        Ok(tlv)
    } else {
        Err(format!("{} bytes after the element", rest.len()))
    }
}

fn ber_one(data: &[u8], depth: usize) -> Result<(Tlv<'_>, &[u8]), String> {
    if depth > 64 {
        return Err("nesting too deep".into());
    }
    let tag = *data.first().ok_or("truncated: no tag")?;
    if tag & 0x1f == 0x1f {
        return Err(format!("multi-byte tag {tag:02x}"));
    }
    let first = *data.get(1).ok_or("truncated: no length")?;
    let (len, hlen): (Option<usize>, usize) = match first {
        0x80 => (None, 2),
        n if n < 0x80 => (Some(n as usize), 2),
        n => {
            let k = (n & 0x7f) as usize;
            if k > 4 {
                return Err("length too long".into());
            }
            let bytes = data.get(2..2 + k).ok_or("truncated length")?;
            let len = bytes.iter().fold(0usize, |a, b| (a << 8) | *b as usize);
            (Some(len), 2 + k)
        }
    };
    let constructed = tag & 0x20 != 0;
    let header = &data[..hlen];
    match len {
        Some(len) => {
            let end = hlen.checked_add(len).ok_or("overflow")?;
            let body = data
                .get(hlen..end)
                .ok_or_else(|| format!("truncated: element {tag:02x} wants {len} bytes"))?;
            let mut children = Vec::new();
            let value = if constructed {
                let mut rest = body;
                while !rest.is_empty() {
                    let (c, r) = ber_one(rest, depth + 1)?;
                    children.push(c);
                    rest = r;
                }
                &body[..0]
            } else {
                body
            };
            let tlv = Tlv {
                tag,
                indefinite: false,
                header,
                value,
                children,
                raw: &data[..end],
            };
            Ok((tlv, &data[end..]))
        }
        None => {
            if !constructed {
                return Err(format!("indefinite length on primitive {tag:02x}"));
            }
            let mut rest = &data[hlen..];
            let mut children = Vec::new();
            loop {
                if rest.starts_with(&[0, 0]) {
                    rest = &rest[2..];
                    break;
                }
                if rest.is_empty() {
                    return Err("truncated: missing end-of-contents".into());
                }
                let (c, r) = ber_one(rest, depth + 1)?;
                children.push(c);
                rest = r;
            }
            let used = data.len() - rest.len();
            let tlv = Tlv {
                tag,
                indefinite: true,
                header,
                value: &data[..0],
                children,
                raw: &data[..used],
            };
            Ok((tlv, rest))
        }
    }
}

/// DER content of the OBJECT IDENTIFIER 1.2.840.113549.1.7.2 (id-signedData).
pub const OID_SIGNED_DATA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x02];
/// 1.2.840.113549.1.7.3 (id-envelopedData).
pub const OID_ENVELOPED_DATA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x03];
/// 1.2.840.113549.1.7.1 (id-data).
pub const OID_DATA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x01];

/// The certificates (DER) of a sealed message's outer SignedData, in order.
pub fn outer_certificates(sealed: &[u8]) -> Vec<Vec<u8>> {
    let ci = ber(sealed).unwrap_or_else(|e| panic!("not a BER message: {e}"));
    let sd = ci.child(1).child(0);
    sd.children
        .iter()
        .find(|c| c.tag == 0xa0)
        .map(|certs| certs.children.iter().map(|c| c.raw.to_vec()).collect())
        .unwrap_or_default()
}

/// The outer certificate whose subject contains `needle` (as text), as PEM.
#[track_caller]
pub fn outer_certificate_pem(sealed: &[u8], needle: &str) -> Vec<u8> {
    outer_certificates(sealed)
        .iter()
        .map(|der| openssl::x509::X509::from_der(der).expect("outer certificate"))
        .find(|x| {
            x.subject_name()
                .entries()
                .any(|e| String::from_utf8_lossy(e.data().as_slice()).contains(needle))
        })
        .unwrap_or_else(|| panic!("no outer certificate with {needle:?} in its subject"))
        .to_pem()
        .unwrap()
}

/// Checks a BER eContent / encryptedContent wrapper the way the official library writes
/// it: a constructed, indefinite-length element whose children are primitive OCTET
/// STRINGs (`04`) of exactly 1000 bytes each except a shorter, non-empty last one.
/// Returns the concatenated content octets.
#[track_caller]
pub fn assert_chunked(wrapper: &Tlv<'_>, what: &str) -> Vec<u8> {
    assert!(
        wrapper.indefinite,
        "{what}: expected indefinite length, header {}",
        hex::encode(wrapper.header)
    );
    let n = wrapper.children.len();
    let mut out = Vec::new();
    for (i, c) in wrapper.children.iter().enumerate() {
        assert_eq!(
            c.tag, 0x04,
            "{what}: chunk {i} is not a primitive OCTET STRING"
        );
        if i + 1 < n {
            assert_eq!(
                c.header,
                [0x04, 0x82, 0x03, 0xe8],
                "{what}: chunk {i} of {n} is not a 1000-byte chunk"
            );
        } else {
            assert!(
                !c.value.is_empty() && c.value.len() <= 1000,
                "{what}: last chunk has {} bytes",
                c.value.len()
            );
        }
        out.extend_from_slice(c.value);
    }
    out
}

// ---------------------------------------------------------------------------------------
// Time: RFC 3339 <-> unix seconds (UTC), for computing `--at` values
// ---------------------------------------------------------------------------------------

/// Unix seconds now.
pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock before 1970")
        .as_secs() as i64
}

// Days from 1970-01-01 to a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// `YYYY-MM-DDTHH:MM:SSZ` for unix seconds.
pub fn rfc3339(t: i64) -> String {
    let (y, mo, d) = civil_from_days(t.div_euclid(86_400));
    let s = t.rem_euclid(86_400);
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}Z",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

/// Parses an RFC 3339 date-time (`T` or space, optional fraction, `Z` or `±hh:mm`).
/// `None` when it is not one.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        t.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| t.parse().ok())?
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    let mut i = 19;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start {
            return None;
        }
    }
    let offset = match &s[i..] {
        "Z" | "z" => 0,
        tz if tz.len() == 6 && (tz.starts_with('+') || tz.starts_with('-')) => {
            let oh = num(i + 1..i + 3)?;
            let om = num(i + 4..i + 6)?;
            if b[i + 3] != b':' {
                return None;
            }
            let o = oh * 3600 + om * 60;
            if tz.starts_with('-') {
                -o
            } else {
                o
            }
        }
        _ => return None,
    };
    Some(days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + se - offset)
}

// ---------------------------------------------------------------------------------------
// SoftHSM rigs
// ---------------------------------------------------------------------------------------

/// The SoftHSM2 module: `SOFTHSM2_MODULE`, else Debian's path.
pub fn softhsm_module() -> PathBuf {
    std::env::var_os("SOFTHSM2_MODULE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/softhsm/libsofthsm2.so"))
}

/// A file readable by its owner only, holding `text` and a newline (PIN files).
pub fn secret_file(path: &Path, text: &str) {
    std::fs::write(path, format!("{text}\n")).expect("writing a secret file");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .expect("restricting a secret file");
}

/// A private SoftHSM2 configuration (its own token directory) in a test's directory;
/// every `etee` run through [`SoftHsm::etee`] gets it as `SOFTHSM2_CONF`. A clone names the
/// same configuration and tokens (several processes may use one SoftHSM2 token).
#[derive(Clone)]
pub struct SoftHsm {
    pub dir: PathBuf,
    pub conf: PathBuf,
}

impl SoftHsm {
    pub fn new(dir: &Path) -> SoftHsm {
        let module = softhsm_module();
        assert!(
            module.exists(),
            "SoftHSM2 is not installed ({} is missing): run `bash hsm-config/setup.sh`",
            module.display()
        );
        let tokens = dir.join("tokens");
        std::fs::create_dir_all(&tokens).expect("token directory");
        let template = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../hsm-config/softhsm2.conf.template"),
        )
        .expect("hsm-config/softhsm2.conf.template");
        let conf = dir.join("softhsm2.conf");
        std::fs::write(
            &conf,
            template.replace("@TOKENDIR@", &tokens.display().to_string()),
        )
        .expect("writing softhsm2.conf");
        SoftHsm {
            dir: dir.to_path_buf(),
            conf,
        }
    }

    /// An `etee` HSM configuration `NAME.toml` for a token labelled `label`, with its own
    /// PIN files and `extra` TOML appended (e.g. a `[custody]` table); returns its path.
    pub fn token_config(&self, name: &str, label: &str, extra: &str) -> PathBuf {
        secret_file(
            &self.dir.join(format!("{name}-user.pin")),
            &format!("{name}-user-1234"),
        );
        secret_file(
            &self.dir.join(format!("{name}-so.pin")),
            &format!("{name}-so-5678"),
        );
        let path = self.dir.join(format!("{name}.toml"));
        std::fs::write(
            &path,
            format!(
                "[hsm]\nmodule = {:?}\ntoken_label = {label:?}\npin_file = \"{name}-user.pin\"\nso_pin_file = \"{name}-so.pin\"\n{extra}",
                softhsm_module().display().to_string()
            ),
        )
        .expect("writing the HSM configuration");
        path
    }

    /// `etee ARGS` with this rig's `SOFTHSM2_CONF`.
    pub fn etee<I, S>(&self, args: I) -> Etee
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        etee(args).env("SOFTHSM2_CONF", &self.conf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trip() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2026-11-23T13:54:40Z"), Some(1_795_442_080));
        assert_eq!(
            parse_rfc3339("2026-11-23T14:54:40+01:00"),
            Some(1_795_442_080)
        );
        assert_eq!(
            parse_rfc3339("2026-11-23T13:54:40.25Z"),
            Some(1_795_442_080)
        );
        assert_eq!(parse_rfc3339("2026-11-23 13:54:40"), None);
        assert_eq!(parse_rfc3339("not a time at all!!"), None);
        for t in [0, 951_782_400, 1_795_442_080, 4_102_444_800] {
            assert_eq!(parse_rfc3339(&rfc3339(t)), Some(t));
        }
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn ber_reader() {
        // 30 80 { 04 01 aa, 24 80 { 04 02 bb cc } 00 00 } 00 00
        let data = [
            0x30, 0x80, 0x04, 0x01, 0xaa, 0x24, 0x80, 0x04, 0x02, 0xbb, 0xcc, 0, 0, 0, 0,
        ];
        let t = ber(&data).unwrap();
        assert!(t.indefinite && t.constructed());
        assert_eq!(t.children.len(), 2);
        assert_eq!(t.child(0).value, [0xaa]);
        assert_eq!(t.child(1).child(0).value, [0xbb, 0xcc]);
        assert_eq!(t.child(1).raw.len(), 8);
        assert!(ber(&data[..14]).is_err());
        assert!(ber(&[0x04, 0x80, 0, 0]).is_err());
    }

    #[test]
    fn content_is_deterministic_and_varied() {
        assert_eq!(content(100, 1), content(100, 1));
        assert_ne!(content(100, 1), content(100, 2));
        let c = content(100_000, 3);
        let mut seen = [false; 256];
        c.iter().for_each(|b| seen[*b as usize] = true);
        assert!(seen.iter().all(|s| *s));
    }
}
