//! Fail closed on the real path (docs/custody.md, "Audit hash chain"): a SoftHSM2 token,
//! the custody core over it and the real `FileAuditSink`, and a real write failure from
//! the kernel, with no hook in the code under test.
//!
//! The core runs in a child process (a copy of this test binary; [`ROLE_ENV`] says which
//! role). Once the core is open and every kind of key use has worked, the child's
//! `RLIMIT_FSIZE` is set a little past the end of the audit file (with `SIGXFSZ` ignored):
//! the append that crosses the limit is cut short by the kernel and the write after it
//! fails with `EFBIG`, as a full disk would fail it. The limit is aimed from the exact size
//! of the next use record (its postcard encoding and the frame header), so that the cut
//! falls either inside the use record (the core must not go on to the token; that the
//! token is not asked is not observable from here) or inside the outcome record (the token
//! has answered; its result must be withheld). Then:
//!
//! - the use at the cut and every later one (sign, decrypt, wrap, unwrap, and a
//!   `DescribeKey`) fail with the core's `AuditUnavailable`, and no signature, plaintext,
//!   wrapped or unwrapped key comes back, also after the limit is lifted again: the sink
//!   stays stopped until the core is reopened;
//! - no partial frame is left in the file (the sink cuts what the kernel let through);
//! - after the child is gone, the chain verifies, holds no success for the refused uses
//!   (and, for a cut in the outcome record, exactly the use record of the use at the cut,
//!   listed as unconcluded); a core reopened on it works, and its uses are on record.
//!
//! Both with the core in the child's own process ([`CustodyKeys`]) and with the child as
//! the custody server ([`Server`]) and this process its client over the Unix socket.
#![cfg(target_os = "linux")]

mod common;

use common::{encrypt_pkcs1, new_token, verify_pss};
use etee_custody::audit::{sha256, Hash, Operation, Outcome};
use etee_custody::config::MAX_AUDIT_RECORD_LEN;
use etee_custody::file_sink::{scan, Scan};
use etee_custody::{AuditHead, AuditRecord, ClientId, Error as CoreError};
use etee_formats::keys::{KeyError, KeyId, PrivateKeyOps};
use etee_hsm::config::{PinSource, DEFAULT_CUSTODY_CLIENT};
use etee_hsm::remote::Server;
use etee_hsm::{
    CustodyConfig, CustodyKeys, Hsm, HsmConfig, KeyProfile, RemoteCustodyKeys, TokenSelector,
};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Set in the environment of a copy of this test binary: the role it plays (`core`: the
/// in-process core that cuts its own file size and checks the refusals; `server`: the
/// custody server whose file size the parent cuts). Other `ETEE_FAIL_CLOSED_*` variables
/// describe the token and the case ([`Setup::child`]).
const ROLE_ENV: &str = "ETEE_FAIL_CLOSED_ROLE";

/// What the core answers when a record cannot be written, as the host's `KeyError` shows
/// it (`KeyError::Unavailable` around `CoreError::AuditUnavailable`'s text).
const WITHHELD: &str = "audit log unavailable; result withheld";

/// Records a fresh chain holds once the core is open: the login's try and outcome, the
/// core's unlock's try and outcome.
const OPENING_RECORDS: u64 = 4;

/// The size of a record's frame in the audit file (firmware/src/file_sink.rs: `length:
/// u16 BE`, `check: [u8; 4]`, then the record's postcard encoding).
fn frame_len(record: &AuditRecord) -> u64 {
    let mut buf = [0u8; MAX_AUDIT_RECORD_LEN];
    let body = record.encode(&mut buf).expect("a record fits its maximum");
    (2 + 4 + body.len()) as u64
}

/// `RLIMIT_FSIZE` of this process (soft limit; the hard limit stays).
mod file_size_limit {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};

    /// Files of this process may grow to `bytes` at most (`None`: up to the hard limit).
    /// Writes past it fail with `EFBIG` once `SIGXFSZ` is ignored ([`ignore_sigxfsz`]).
    pub fn set(bytes: Option<u64>) {
        let (_, hard) = getrlimit(Resource::RLIMIT_FSIZE).expect("getrlimit");
        let soft = bytes.map_or(hard, |b| b.min(hard));
        setrlimit(Resource::RLIMIT_FSIZE, soft, hard)
            .unwrap_or_else(|e| panic!("setrlimit(RLIMIT_FSIZE, {bytes:?}): {e}"));
    }

    /// Without this, the kernel's `SIGXFSZ` kills the process at the first write past the
    /// limit instead of failing the write.
    pub fn ignore_sigxfsz() {
        use nix::sys::signal::{signal, SigHandler, Signal};
        // SAFETY: installs SIG_IGN, no handler code.
        unsafe { signal(Signal::SIGXFSZ, SigHandler::SigIgn) }.expect("ignoring SIGXFSZ");
    }
}

/// The kinds of key use, each tried first at the cut in its own case.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Use {
    Sign,
    Decrypt,
    Wrap,
    Unwrap,
}

const USES: [Use; 4] = [Use::Sign, Use::Decrypt, Use::Wrap, Use::Unwrap];

impl Use {
    fn name(self) -> &'static str {
        match self {
            Use::Sign => "sign",
            Use::Decrypt => "decrypt",
            Use::Wrap => "wrap",
            Use::Unwrap => "unwrap",
        }
    }

    fn named(name: &str) -> Self {
        *USES
            .iter()
            .find(|u| u.name() == name)
            .unwrap_or_else(|| panic!("no use {name:?}"))
    }

    fn operation(self) -> Operation {
        match self {
            Use::Sign => Operation::SignPssSha256,
            Use::Decrypt => Operation::DecryptPkcs1v15,
            Use::Wrap => Operation::WrapSecret,
            Use::Unwrap => Operation::UnwrapSecret,
        }
    }
}

/// Where the file size limit cuts the records of the first use after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cut {
    /// In the middle of the use record, before the token is asked.
    UseRecord,
    /// In the middle of the outcome record, the use record whole: the token answered.
    OutcomeRecord,
}

impl Cut {
    fn name(self) -> &'static str {
        match self {
            Cut::UseRecord => "use-record",
            Cut::OutcomeRecord => "outcome-record",
        }
    }

    fn named(name: &str) -> Self {
        match name {
            "use-record" => Cut::UseRecord,
            "outcome-record" => Cut::OutcomeRecord,
            other => panic!("no cut {other:?}"),
        }
    }
}

/// The token and one case, as the parent and the child both see them.
#[derive(Clone, Debug)]
struct Setup {
    label: String,
    pin: PathBuf,
    /// The audit file's directory (a new one per case: a new chain).
    dir: PathBuf,
    /// The ETK key's id, and its public key (SubjectPublicKeyInfo DER).
    etk: String,
    etk_public: Vec<u8>,
    /// The authentication key's public key.
    auth_public: Vec<u8>,
    /// A secret, and the same wrapped with the KGSS wrapping key (by a core on a chain of
    /// its own, when the token was made).
    secret: Vec<u8>,
    wrapped: Vec<u8>,
    first: Use,
    cut: Cut,
}

const WRAPPING_KEY: &str = "kgss-wrap";
const SIGNING_KEY: &str = "authentication";

impl Setup {
    /// A new token `label` with an authentication key, an ETK key and the KGSS wrapping
    /// key, all generated in it, and a secret wrapped with the latter.
    fn token(label: &str) -> Setup {
        let config = new_token(label);
        let PinSource::File(pin) = config.pin.clone() else {
            panic!("new_token writes a PIN file")
        };
        let (auth, etk) = {
            let hsm = Hsm::open(&config).unwrap();
            let auth = hsm.generate(&KeyProfile::authentication()).unwrap();
            assert_eq!(auth.id, SIGNING_KEY);
            let etk = hsm.generate(&KeyProfile::etk()).unwrap();
            assert_eq!(
                hsm.generate(&KeyProfile::kgss_wrap()).unwrap().id,
                WRAPPING_KEY
            );
            (auth, etk)
        };
        let secret = random::<32>().to_vec();
        let wrapped = {
            let dir = tempfile::tempdir().unwrap();
            let keys =
                CustodyKeys::open(&config, &CustodyConfig::defaults(&config, dir.path())).unwrap();
            keys.wrap_secret(WRAPPING_KEY, &secret).unwrap()
        };
        Setup {
            label: label.into(),
            pin,
            dir: PathBuf::new(),
            etk: etk.id.clone(),
            etk_public: etk.public_key_der(),
            auth_public: auth.public_key_der(),
            secret,
            wrapped,
            first: Use::Sign,
            cut: Cut::UseRecord,
        }
    }

    fn case(&self, dir: &Path, first: Use, cut: Cut) -> Setup {
        Setup {
            dir: dir.to_path_buf(),
            first,
            cut,
            ..self.clone()
        }
    }

    fn hsm(&self) -> HsmConfig {
        let mut config = HsmConfig::new(
            common::module_path(),
            TokenSelector::label(&self.label),
            self.pin.clone(),
        );
        config.sessions = Some(2);
        config
    }

    fn custody(&self) -> CustodyConfig {
        CustodyConfig::defaults(&self.hsm(), &self.dir)
    }

    fn audit_file(&self) -> PathBuf {
        self.custody().audit_file
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("custody.sock")
    }

    /// `role` and this setup in the environment of a copy of this test binary that runs
    /// only `test` (`SOFTHSM2_CONF`, pointing at this process's tokens, is inherited).
    fn child(&self, test: &str, role: &str) -> Command {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args([test, "--exact", "--nocapture", "--test-threads=1"])
            .env(ROLE_ENV, role)
            .env("ETEE_FAIL_CLOSED_LABEL", &self.label)
            .env("ETEE_FAIL_CLOSED_PIN", &self.pin)
            .env("ETEE_FAIL_CLOSED_DIR", &self.dir)
            .env("ETEE_FAIL_CLOSED_ETK", &self.etk)
            .env("ETEE_FAIL_CLOSED_ETK_PUBLIC", hex::encode(&self.etk_public))
            .env(
                "ETEE_FAIL_CLOSED_AUTH_PUBLIC",
                hex::encode(&self.auth_public),
            )
            .env("ETEE_FAIL_CLOSED_SECRET", hex::encode(&self.secret))
            .env("ETEE_FAIL_CLOSED_WRAPPED", hex::encode(&self.wrapped))
            .env("ETEE_FAIL_CLOSED_FIRST", self.first.name())
            .env("ETEE_FAIL_CLOSED_CUT", self.cut.name())
            .stdin(Stdio::null());
        cmd
    }

    /// The setup [`Self::child`] passed.
    fn passed() -> Setup {
        let var = |name: &str| {
            std::env::var(format!("ETEE_FAIL_CLOSED_{name}"))
                .unwrap_or_else(|_| panic!("ETEE_FAIL_CLOSED_{name} is not set"))
        };
        Setup {
            label: var("LABEL"),
            pin: var("PIN").into(),
            dir: var("DIR").into(),
            etk: var("ETK"),
            etk_public: hex::decode(var("ETK_PUBLIC")).unwrap(),
            auth_public: hex::decode(var("AUTH_PUBLIC")).unwrap(),
            secret: hex::decode(var("SECRET")).unwrap(),
            wrapped: hex::decode(var("WRAPPED")).unwrap(),
            first: Use::named(&var("FIRST")),
            cut: Cut::named(&var("CUT")),
        }
    }
}

/// The core, in this process or behind the socket.
enum Keys<'a> {
    InProcess(&'a CustodyKeys),
    Remote(&'a RemoteCustodyKeys),
}

impl Keys<'_> {
    fn ops(&self) -> &dyn PrivateKeyOps {
        match self {
            Keys::InProcess(k) => *k,
            Keys::Remote(k) => *k,
        }
    }

    fn wrap(&self, secret: &[u8]) -> Result<Vec<u8>, KeyError> {
        match self {
            Keys::InProcess(k) => k.wrap_secret(WRAPPING_KEY, secret),
            Keys::Remote(k) => k.wrap_secret(WRAPPING_KEY, secret),
        }
    }

    fn unwrap(&self, wrapped: &[u8]) -> Result<zeroize::Zeroizing<Vec<u8>>, KeyError> {
        match self {
            Keys::InProcess(k) => k.unwrap_secret(WRAPPING_KEY, wrapped),
            Keys::Remote(k) => k.unwrap_secret(WRAPPING_KEY, wrapped),
        }
    }

    /// `DescribeKey`: no key used, but its answer is released only once on record too.
    fn describe(&self, key: &str) -> Result<etee_custody::KeyFacts, KeyError> {
        match self {
            Keys::InProcess(k) => k.describe_key(key),
            Keys::Remote(k) => k.describe_key(key),
        }
    }

    fn head(&self) -> AuditHead {
        match self {
            Keys::InProcess(k) => k.audit_head(),
            Keys::Remote(k) => k.audit_head().expect("the custody server's audit head"),
        }
    }
}

fn random<const N: usize>() -> [u8; N] {
    let mut v = [0u8; N];
    openssl::rand::rand_bytes(&mut v).unwrap();
    v
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// One key use with fresh input: a digest to sign, a blob to decrypt (a random secret
/// encrypted to the ETK key), a secret to wrap; or the setup's wrapped secret to unwrap.
struct Attempt {
    what: Use,
    digest: [u8; 32],
    secret: [u8; 32],
    blob: Vec<u8>,
}

impl Attempt {
    fn new(what: Use, setup: &Setup) -> Attempt {
        let secret = random::<32>();
        Attempt {
            what,
            digest: random(),
            secret,
            blob: encrypt_pkcs1(&setup.etk_public, &secret),
        }
    }

    fn key(&self, setup: &Setup) -> String {
        match self.what {
            Use::Sign => SIGNING_KEY.into(),
            Use::Decrypt => setup.etk.clone(),
            Use::Wrap | Use::Unwrap => WRAPPING_KEY.into(),
        }
    }

    /// The input digest of this use's use record (a wrap's is zeros: its output, whose
    /// digest the outcome record carries, does not exist yet).
    fn recorded_input(&self, setup: &Setup) -> Hash {
        match self.what {
            Use::Sign => sha256(&self.digest),
            Use::Decrypt => sha256(&self.blob),
            Use::Wrap => [0; 32],
            Use::Unwrap => sha256(&setup.wrapped),
        }
    }

    /// The use record the core appends for this use when the chain stands at `head`
    /// (its time aside: the same length whatever the millisecond).
    fn use_record(&self, setup: &Setup, head: AuditHead) -> AuditRecord {
        AuditRecord {
            sequence: head.next_sequence,
            time_ms: now_ms(),
            client: Some(ClientId::try_from(DEFAULT_CUSTODY_CLIENT).unwrap()),
            operation: self.what.operation(),
            key: Some(etee_custody::KeyId::try_from(self.key(setup).as_str()).unwrap()),
            input_digest: self.recorded_input(setup),
            outcome: Outcome::Admitted,
            prev_hash: head.hash,
        }
    }

    /// Runs the use. On success, checks the result (the signature verifies, the
    /// plaintext is the secret, the wrapped key has its length) and returns the input
    /// digest of its outcome record (for a wrap, the digest of the wrapped key).
    fn run(&self, keys: &Keys, setup: &Setup) -> Result<Hash, KeyError> {
        let key = KeyId(self.key(setup));
        match self.what {
            Use::Sign => {
                let signature = keys.ops().sign_pss_sha256(&key, &self.digest)?;
                assert!(
                    verify_pss(&setup.auth_public, &self.digest, &signature),
                    "a signature that does not verify"
                );
            }
            Use::Decrypt => {
                let plain = keys.ops().decrypt_pkcs1v15(&key, &self.blob)?;
                assert_eq!(&plain[..], &self.secret[..], "a wrong plaintext");
            }
            Use::Wrap => {
                let wrapped = keys.wrap(&self.secret)?;
                assert_eq!(wrapped.len(), 40, "an RFC 3394 wrap of 32 bytes");
                return Ok(sha256(&wrapped));
            }
            Use::Unwrap => {
                let secret = keys.unwrap(&setup.wrapped)?;
                assert_eq!(&secret[..], &setup.secret[..], "a wrong secret unwrapped");
            }
        }
        Ok(self.recorded_input(setup))
    }
}

/// The use was refused with the core's `AuditUnavailable`, nothing released.
fn assert_withheld(result: Result<Hash, KeyError>, what: Use, when: &str) {
    match result {
        Err(KeyError::Unavailable(said)) if said == WITHHELD => {}
        Ok(_) => panic!(
            "{when}: a {} result was RELEASED although its audit record could not be written",
            what.name()
        ),
        Err(other) => panic!(
            "{when}: {} refused, but not as the audit being unavailable: {other:?}",
            what.name()
        ),
    }
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().len()
}

/// Where the chain stood at the cut, and what the file should hold once it is over.
struct Cutoff {
    /// The sequence of the first record the cut could affect.
    next_sequence: u64,
    /// The file's length before the use at the cut.
    size: u64,
    /// The file's length after it: `size`, or `size` and the use record.
    kept: u64,
    /// The use record's input digest.
    use_input: Hash,
}

impl std::fmt::Debug for Cutoff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cutoff")
            .field("next_sequence", &self.next_sequence)
            .field("size", &self.size)
            .field("kept", &self.kept)
            .field("use_input", &hex::encode(self.use_input))
            .finish()
    }
}

impl Cutoff {
    /// A line of the child's standard output.
    fn line(&self) -> String {
        format!(
            "fail-closed cutoff: {} {} {} {}",
            self.next_sequence,
            self.size,
            self.kept,
            hex::encode(self.use_input)
        )
    }

    /// The cutoff in the child's output.
    fn parse(output: &str) -> Option<Cutoff> {
        let (_, facts) = output
            .lines()
            .find_map(|l| l.split_once("fail-closed cutoff: "))?;
        let facts: Vec<&str> = facts.split_whitespace().collect();
        let [next_sequence, size, kept, use_input] = facts[..] else {
            return None;
        };
        Some(Cutoff {
            next_sequence: next_sequence.parse().ok()?,
            size: size.parse().ok()?,
            kept: kept.parse().ok()?,
            use_input: hex::decode(use_input).ok()?.try_into().ok()?,
        })
    }
}

/// The side that holds the core's client: every use works; then the file size limit is
/// set (`limit`) so that the setup's cut falls in the next records, and the first use
/// and every one after it are refused with nothing released, also once the limit is
/// lifted (`limit(None)`): the sink stays stopped.
fn cut_and_refuse(keys: &Keys, setup: &Setup, limit: &mut dyn FnMut(Option<u64>)) -> Cutoff {
    let audit = setup.audit_file();
    for what in USES {
        Attempt::new(what, setup)
            .run(keys, setup)
            .unwrap_or_else(|e| panic!("{} before any limit: {e}", what.name()));
    }
    let head = keys.head();
    assert_eq!(
        head.next_sequence,
        OPENING_RECORDS + 2 * USES.len() as u64,
        "the opening, then a use record and an outcome record per use"
    );
    let size = file_len(&audit);
    let attempt = Attempt::new(setup.first, setup);
    let use_len = frame_len(&attempt.use_record(setup, head));
    // The outcome record of a success has the use record's size (the same fields, one
    // byte of outcome, a 32-byte digest): half of it is inside it.
    let (at, kept) = match setup.cut {
        Cut::UseRecord => (size + use_len / 2, size),
        Cut::OutcomeRecord => (size + use_len + use_len / 2, size + use_len),
    };
    limit(Some(at));
    assert_withheld(
        attempt.run(keys, setup),
        setup.first,
        &format!("the first use after the cut ({})", setup.cut.name()),
    );
    assert_eq!(
        file_len(&audit),
        kept,
        "the audit file after the failed append (limit {at}, {size} bytes before, use record \
         {use_len} bytes): what the kernel let through of a frame must be cut again"
    );
    let later = |when: &str| {
        for what in USES {
            assert_withheld(Attempt::new(what, setup).run(keys, setup), what, when);
        }
        match keys.describe(SIGNING_KEY) {
            Err(KeyError::Unavailable(said)) if said == WITHHELD => {}
            other => panic!("{when}: DescribeKey answered {other:?}"),
        }
    };
    later("a later use, the limit still there");
    limit(None);
    later("a later use, the limit lifted (the sink must stay stopped until reopened)");
    assert_eq!(file_len(&audit), kept, "nothing written after the failure");
    Cutoff {
        next_sequence: head.next_sequence,
        size,
        kept,
        use_input: attempt.recorded_input(setup),
    }
}

/// The whole chain at `path`, verified, with its records.
fn chain(path: &Path) -> (Scan, Vec<AuditRecord>) {
    let mut records = Vec::new();
    let s = scan(path, |r| records.push(r.clone()))
        .unwrap_or_else(|e| panic!("the audit chain does not verify: {e}"));
    assert!(!s.torn_tail, "a partial record at the end of the chain");
    assert_eq!(
        s.good_len,
        file_len(path),
        "bytes after the last intact record"
    );
    (s, records)
}

/// Once the core that failed is gone: the chain verifies, holds no partial record, the
/// uses before the cut each with its success, and after it nothing (a cut in the use
/// record) or the use record of the use at the cut alone, unconcluded (a cut in its
/// outcome record). A core reopened on it works, and its uses are on record.
fn check_chain_and_reopen(setup: &Setup, cutoff: &Cutoff) {
    eprintln!(
        "{} first, cut in the {}: {cutoff:?}",
        setup.first.name(),
        setup.cut.name()
    );
    let audit = setup.audit_file();
    let (s, records) = chain(&audit);
    assert_eq!(s.good_len, cutoff.kept, "{cutoff:?}");
    let (before, after): (Vec<&AuditRecord>, Vec<&AuditRecord>) = records
        .iter()
        .partition(|r| r.sequence < cutoff.next_sequence);
    assert_eq!(before.len() as u64, cutoff.next_sequence);
    for what in USES {
        let successes = before
            .iter()
            .filter(|r| r.operation == what.operation() && r.outcome == Outcome::Success)
            .count();
        assert_eq!(successes, 1, "{} before the cut: {before:#?}", what.name());
    }
    assert!(
        before
            .iter()
            .all(|r| matches!(r.outcome, Outcome::Success | Outcome::Admitted)),
        "{before:#?}"
    );
    match setup.cut {
        Cut::UseRecord => {
            assert!(
                after.is_empty(),
                "records after a cut in the first use record: {after:#?}"
            );
            assert!(s.unconcluded.is_empty(), "{:?}", s.unconcluded);
        }
        Cut::OutcomeRecord => {
            let [used] = after[..] else {
                panic!("expected the use record of the use at the cut alone: {after:#?}")
            };
            assert_eq!(
                (used.operation, used.outcome, used.input_digest),
                (setup.first.operation(), Outcome::Admitted, cutoff.use_input),
                "{used:#?}"
            );
            assert_eq!(
                s.unconcluded,
                [used.sequence],
                "the use at the cut is listed as unconcluded"
            );
        }
    }

    // Reopened (no limit in this process): the core continues the chain.
    let keys = CustodyKeys::open(&setup.hsm(), &setup.custody())
        .expect("the core reopens on the chain the failure left");
    let mut done = Vec::new();
    for what in USES {
        let recorded = Attempt::new(what, setup)
            .run(&Keys::InProcess(&keys), setup)
            .unwrap_or_else(|e| panic!("{} after reopening: {e}", what.name()));
        done.push((what, recorded));
    }
    drop(keys);
    let torn: Vec<_> = std::fs::read_dir(&setup.dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".torn-"))
        .map(|e| e.path())
        .collect();
    assert!(
        torn.is_empty(),
        "the reopened core cut a torn tail: {torn:?}"
    );
    let (s2, again) = chain(&audit);
    assert_eq!(
        again[..records.len()],
        records[..],
        "the chain was rewritten"
    );
    let new = &again[records.len()..];
    assert_eq!(
        new.len() as u64,
        OPENING_RECORDS + 2 * USES.len() as u64 + 1,
        "the opening, a use and an outcome per use, the lock: {new:#?}"
    );
    assert!(
        new.iter()
            .all(|r| matches!(r.outcome, Outcome::Success | Outcome::Admitted)),
        "{new:#?}"
    );
    for (what, recorded) in done {
        let found = new.iter().any(|r| {
            r.operation == what.operation()
                && r.outcome == Outcome::Success
                && r.input_digest == recorded
        });
        assert!(
            found,
            "the {} after reopening is not on record",
            what.name()
        );
    }
    assert_eq!(
        s2.unconcluded, s.unconcluded,
        "the uses after reopening are concluded"
    );
}

/// The cases: each kind of use first at the cut, the cut in its use record and in its
/// outcome record.
fn cases() -> impl Iterator<Item = (Use, Cut)> {
    [Cut::UseRecord, Cut::OutcomeRecord]
        .into_iter()
        .flat_map(|cut| USES.into_iter().map(move |first| (first, cut)))
}

/// Held by each test of this file for its whole run: the tests share one SoftHSM token
/// directory, and a child process that enumerates the tokens while this process
/// initialises another one there can get `CKR_GENERAL_ERROR` from `C_GetTokenInfo`
/// (seen with SoftHSM 2.6.1 when the two tests ran at once).
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

const IN_PROCESS_TEST: &str = "a_failed_audit_write_withholds_every_result_in_process";

/// The in-process core ([`CustodyKeys`]) in a child process that cuts its own file size.
#[test]
fn a_failed_audit_write_withholds_every_result_in_process() {
    if std::env::var(ROLE_ENV).as_deref() == Ok("core") {
        return core_role();
    }
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let token = Setup::token("fail-closed-inproc");
    for (first, cut) in cases() {
        let dir = tempfile::tempdir().unwrap();
        let setup = token.case(dir.path(), first, cut);
        let out = setup.child(IN_PROCESS_TEST, "core").output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "the child core ({} first, cut in the {}) failed: {}\n{stdout}\n{stderr}",
            first.name(),
            cut.name(),
            out.status
        );
        let cutoff = Cutoff::parse(&stdout)
            .unwrap_or_else(|| panic!("no cutoff line from the child:\n{stdout}\n{stderr}"));
        check_chain_and_reopen(&setup, &cutoff);
    }
}

/// The child of [`a_failed_audit_write_withholds_every_result_in_process`].
fn core_role() {
    let setup = Setup::passed();
    file_size_limit::ignore_sigxfsz();
    let keys = CustodyKeys::open(&setup.hsm(), &setup.custody()).expect("opening the core");
    let cutoff = cut_and_refuse(&Keys::InProcess(&keys), &setup, &mut |limit| {
        file_size_limit::set(limit)
    });
    // Its lock cannot be recorded either: the sink is stopped.
    drop(keys);
    assert_eq!(file_len(&setup.audit_file()), cutoff.kept);
    println!("{}", cutoff.line());
}

const PROCESS_TEST: &str = "a_failed_audit_write_withholds_every_result_in_the_custody_process";

/// The custody server ([`Server`]) in a child process whose file size this process cuts
/// (through the child's standard input); this process is its client over the socket.
#[test]
fn a_failed_audit_write_withholds_every_result_in_the_custody_process() {
    if std::env::var(ROLE_ENV).as_deref() == Ok("server") {
        return server_role();
    }
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let token = Setup::token("fail-closed-proc");
    for (first, cut) in cases() {
        let dir = tempfile::tempdir().unwrap();
        let setup = token.case(dir.path(), first, cut);
        let mut child = setup
            .child(PROCESS_TEST, "server")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut commands = child.stdin.take().unwrap();
        let mut replies = BufReader::new(child.stdout.take().unwrap()).lines();
        // What the child says on standard error, whole once it has ended.
        let (said, stderr) = (std::sync::mpsc::channel(), child.stderr.take().unwrap());
        let said_tx = said.0;
        std::thread::spawn(move || {
            let _ = said_tx.send(std::io::read_to_string(stderr).unwrap_or_default());
        });
        let stderr = said.1;
        // Each line the server child says, from its standard output (libtest may print
        // before it on the same line).
        let mut expect = |what: &str| {
            let found = replies
                .by_ref()
                .map_while(Result::ok)
                .any(|l| l.ends_with(&format!("fail-closed server: {what}")));
            assert!(
                found,
                "the server child ended without saying {what:?}:\n{}",
                stderr.recv().unwrap_or_default()
            );
        };
        expect("ready");
        let remote = RemoteCustodyKeys::open(&setup.hsm(), &setup.custody(), &setup.socket())
            .expect("connecting to the custody server");
        let cutoff = cut_and_refuse(&Keys::Remote(&remote), &setup, &mut |limit| {
            let command = match limit {
                Some(bytes) => format!("limit {bytes}\n"),
                None => "lift\n".into(),
            };
            commands.write_all(command.as_bytes()).unwrap();
            expect("done");
        });
        drop(remote);
        // End of input: the server stops.
        drop(commands);
        let status = child.wait().unwrap();
        let stderr = stderr.recv().unwrap_or_default();
        assert!(
            status.success(),
            "the custody server child ({} first, cut in the {}): {status}\n{stderr}",
            first.name(),
            cut.name()
        );
        check_chain_and_reopen(&setup, &cutoff);
    }
}

/// The child of [`a_failed_audit_write_withholds_every_result_in_the_custody_process`]:
/// serves the core on the setup's socket, sets or lifts its file size limit on each line
/// of its standard input (`limit BYTES`, `lift`), and stops at the end of the input.
fn server_role() {
    let setup = Setup::passed();
    file_size_limit::ignore_sigxfsz();
    let server = Server::bind(&setup.hsm(), &setup.custody(), &setup.socket())
        .expect("starting the custody server");
    let stop = server.stop_handle();
    let running = std::thread::spawn(move || server.run());
    let say = |what: &str| {
        let mut out = std::io::stdout().lock();
        writeln!(out, "fail-closed server: {what}").unwrap();
        out.flush().unwrap();
    };
    say("ready");
    for line in std::io::stdin().lock().lines() {
        let line = line.unwrap();
        match line.split_once(' ') {
            Some(("limit", bytes)) => file_size_limit::set(Some(bytes.parse().unwrap())),
            None if line == "lift" => file_size_limit::set(None),
            _ => panic!("unknown command {line:?}"),
        }
        say("done");
    }
    stop.stop();
    running
        .join()
        .unwrap()
        .expect("the custody server stops cleanly");
}

/// The text the tests expect is the core's own.
#[test]
fn the_refusal_is_the_cores_audit_unavailable() {
    assert_eq!(CoreError::AuditUnavailable.to_string(), WITHHELD);
}
