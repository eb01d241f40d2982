//! Sealing and unsealing 1 KiB messages with keys in SoftHSM2, each as a ratio to the bare
//! PKCS#11 call that bounds it, measured in the same run on the same token:
//! - unseal ops/s ÷ `C_Decrypt` (CKM_RSA_PKCS, RSA-2048) ops/s (one decryption per unseal);
//! - seal ops/s ÷ half the `C_Sign` (CKM_RSA_PKCS_PSS, SHA-256) ops/s (two signatures per
//!   seal);
//!
//! on 1 and 2 threads, through the in-process custody core ([`CustodyKeys`]: policy check
//! and an fsynced audit record per operation), through the custody core in a separate
//! process ([`RemoteCustodyKeys`] to this bench binary re-run as `etee custody serve` would
//! run: [`etee_hsm::remote::Server`] on a Unix socket) and straight on the session pool
//! ([`etee_hsm::HsmKeys`]), so that the core's own cost shows. The bare call runs on
//! sessions of our own (one per thread), not through the pool.
//!
//! Each figure is the median of 7 rounds in which the contenders run one after the other,
//! so a noisy machine affects them alike.
//!
//! `cargo bench -p etee-hsm --bench custody` (ETEE_BENCH_SECONDS: the approximate total
//! measuring time, default 100; ETEE_BENCH_AUDIT_DIR: where the audit file goes, default
//! the target directory's disk; SOFTHSM2_MODULE: the module, default the Debian path).

use cryptoki::context::Pkcs11;
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsPssParams};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use cryptoki::slot::Slot;
use cryptoki::types::Ulong;
use etee_custody::policy::{Budget, Policy};
use etee_custody::ClientId;
use etee_formats::cert::Certificate;
use etee_formats::cms::{seal, unseal, Recipient, SealOptions, UnsealOptions};
use etee_formats::keys::{KeyRing, SigningKey};
use etee_formats::keystore::{ehealth_entries, write_pfx, EhealthKeystore, Profile};
use etee_formats::trust::TrustAnchors;
use etee_hsm::config::PinSource;
use etee_hsm::{
    init_token, CustodyConfig, CustodyKeys, Hsm, HsmConfig, HsmToken, ImportOptions,
    RemoteCustodyKeys, TokenSelector,
};
use etee_testpki::{InstitutionSpec, TestPki};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Barrier;
use std::time::{Duration, Instant};

const USER_PIN: &str = "bench-user-1234";
const SO_PIN: &str = "bench-so-5678";
const LABEL: &str = "etee-bench";
const ROUNDS: usize = 7;
/// Slots per round (bare call, bare call through the pool, HsmKeys, CustodyKeys in-process
/// and in a separate process) times measurements (seal and unseal on 1 and 2 threads):
/// ETEE_BENCH_SECONDS is shared among them.
const SLOTS: usize = 5 * 4 * ROUNDS;
/// Set in the environment of the bench re-run as the separate custody process: the
/// directory of the bench's token configuration.
const SERVER_ENV: &str = "ETEE_BENCH_CUSTODY_SERVER";
/// Where the separate custody process keeps its audit file (beside the in-process core's,
/// so that ETEE_BENCH_AUDIT_DIR applies to both).
const SERVER_AUDIT_ENV: &str = "ETEE_BENCH_CUSTODY_SERVER_AUDIT";

fn total_seconds() -> f64 {
    std::env::var("ETEE_BENCH_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|s: &f64| *s > 0.0)
        .unwrap_or(100.0)
}

fn module_path() -> PathBuf {
    std::env::var_os("SOFTHSM2_MODULE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(etee_hsm::config::DEFAULT_MODULE))
}

fn secret_file(path: &Path, pin: &str) {
    std::fs::write(path, format!("{pin}\n")).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
}

/// A private SoftHSM configuration in `dir` (its own token directory), exported before the
/// module is loaded, and a fresh token labelled [`LABEL`] in it.
fn fresh_token(dir: &Path) -> HsmConfig {
    let module = module_path();
    assert!(
        module.exists(),
        "SoftHSM2 is missing ({}): run `bash hsm-config/setup.sh` or set SOFTHSM2_MODULE",
        module.display()
    );
    let tokens = dir.join("tokens");
    std::fs::create_dir(&tokens).unwrap();
    let template = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../hsm-config/softhsm2.conf.template"),
    )
    .expect("hsm-config/softhsm2.conf.template");
    let conf = dir.join("softhsm2.conf");
    std::fs::write(
        &conf,
        template.replace("@TOKENDIR@", &tokens.display().to_string()),
    )
    .unwrap();
    std::env::set_var("SOFTHSM2_CONF", &conf);
    secret_file(&dir.join("user.pin"), USER_PIN);
    secret_file(&dir.join("so.pin"), SO_PIN);
    let config = token_config(dir);
    init_token(&config).expect("initialising the token");
    config
}

/// The configuration of the token made by [`fresh_token`] in `dir`.
fn token_config(dir: &Path) -> HsmConfig {
    let mut config = HsmConfig::new(
        module_path(),
        TokenSelector::label(LABEL),
        dir.join("user.pin"),
    );
    config.so_pin = Some(PinSource::File(dir.join("so.pin")));
    // One session per benchmark thread.
    config.sessions = Some(2);
    config
}

/// The custody core with the bench policy, its audit file in `audit_dir`.
fn custody_keys(config: &HsmConfig, audit_dir: &Path) -> (CustodyKeys, CustodyConfig) {
    let custody_config = CustodyConfig::defaults(config, audit_dir);
    let opened = Hsm::open(config).unwrap();
    let token = HsmToken::new(&opened).unwrap();
    let policy = bench_policy(&token, &custody_config.client);
    let keys = CustodyKeys::with_policy(opened, token, policy, &custody_config).unwrap();
    (keys, custody_config)
}

/// The separate custody process: this binary again, serving the core on `socket` until
/// SIGTERM.
fn run_custody_server(dir: &Path) {
    let config = token_config(dir);
    let audit_dir = std::env::var_os(SERVER_AUDIT_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| dir.join("server-audit"));
    std::fs::create_dir_all(&audit_dir).unwrap();
    let (keys, custody_config) = custody_keys(&config, &audit_dir);
    let server =
        etee_hsm::remote::Server::with_keys(keys, &custody_config, &dir.join("custody.sock"))
            .unwrap();
    etee_hsm::remote::stop_on_signals(server.stop_handle()).unwrap();
    server.run().unwrap();
}

/// Starts [`run_custody_server`] in a child process and connects to it.
struct CustodyProcess {
    child: std::process::Child,
}

impl CustodyProcess {
    fn start(
        dir: &Path,
        audit_dir: &Path,
        config: &HsmConfig,
        custody: &CustodyConfig,
    ) -> (Self, RemoteCustodyKeys) {
        let socket = dir.join("custody.sock");
        let child = std::process::Command::new(std::env::current_exe().unwrap())
            .env(SERVER_ENV, dir)
            .env(SERVER_AUDIT_ENV, audit_dir.join("server"))
            .stdin(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let start = Instant::now();
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "no custody socket"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let keys = RemoteCustodyKeys::open(config, custody, &socket).unwrap();
        (Self { child }, keys)
    }
}

impl Drop for CustodyProcess {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

fn cert(x: &openssl::x509::X509) -> Certificate {
    Certificate::from_der(&x.to_der().unwrap()).unwrap()
}

/// What the measurements share.
struct World {
    config: HsmConfig,
    etk_id: String,
    etk_cert: Certificate,
    etk_public: openssl::pkey::PKey<openssl::pkey::Public>,
    anchors: TrustAnchors,
}

/// A generated institution imported from a `.p12` (authentication key and ETK).
fn world(dir: &Path) -> World {
    let config = fresh_token(dir);
    let pki = TestPki::generate("etee-hsm bench").unwrap();
    let inst = pki
        .institution(&InstitutionSpec::new("NIHII-HOSPITAL", "71000436", "Bench"))
        .unwrap();
    let etk_id = inst.etk_serial_decimal();
    let entries = ehealth_entries(
        inst.auth.key.clone(),
        vec![inst.auth.cert.clone(), pki.root.cert.clone()],
        inst.etk_key.clone(),
        inst.etk_cert.clone(),
    )
    .unwrap();
    let p12 = write_pfx(&entries, "bench", Profile::Modern).unwrap();
    let keystore = EhealthKeystore::load(&p12, "bench").unwrap();
    Hsm::open(&config)
        .unwrap()
        .import(&keystore, &ImportOptions::default())
        .unwrap();
    let etk_public = inst.etk_cert.public_key().unwrap();
    World {
        config,
        etk_id,
        etk_cert: cert(&inst.etk_cert),
        etk_public,
        anchors: TrustAnchors::new(vec![cert(&pki.root.cert)]),
    }
}

/// Our own handle on the module, for bare PKCS#11 calls on sessions outside the pool.
struct Bare {
    ctx: Pkcs11,
    slot: Slot,
}

impl Bare {
    fn new(config: &HsmConfig) -> Self {
        let ctx = Pkcs11::new(&config.module).unwrap();
        // The pool initialised the library already; this handle shares it.
        let _ = ctx.initialize(cryptoki::context::CInitializeArgs::OsThreads);
        // Dropping a handle calls C_Finalize, which would end the pool's sessions too:
        // keep one clone alive for the whole process.
        std::mem::forget(ctx.clone());
        let slot = ctx
            .get_slots_with_token()
            .unwrap()
            .into_iter()
            .find(|s| {
                ctx.get_token_info(*s)
                    .is_ok_and(|i| i.label().trim_end() == LABEL)
            })
            .expect("the bench token");
        Self { ctx, slot }
    }

    /// A new session (logged in: the pool's login holds for every session of the
    /// process) and the private key with CKA_ID `id`.
    fn session(&self, id: &str) -> (Session, ObjectHandle) {
        let session = self.ctx.open_rw_session(self.slot).unwrap();
        let found = session
            .find_objects(&[
                Attribute::Class(ObjectClass::PRIVATE_KEY),
                Attribute::Id(id.as_bytes().to_vec()),
            ])
            .unwrap();
        assert_eq!(found.len(), 1, "private key {id}");
        (session, found[0])
    }
}

fn pss() -> Mechanism<'static> {
    Mechanism::RsaPkcsPss(PkcsPssParams {
        hash_alg: MechanismType::SHA256,
        mgf: PkcsMgfType::MGF1_SHA256,
        s_len: Ulong::from(32),
    })
}

/// Operations per second of `op` on `threads` threads for about `secs`: each thread makes
/// its state with `setup`, runs `op` once untimed, then all start together.
fn rate<S>(
    threads: usize,
    secs: f64,
    setup: &(dyn Fn() -> S + Sync),
    op: &(dyn Fn(&mut S) + Sync),
) -> f64 {
    let barrier = Barrier::new(threads);
    let duration = Duration::from_secs_f64(secs);
    let results: Vec<(u64, Duration)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut state = setup();
                    op(&mut state);
                    barrier.wait();
                    let start = Instant::now();
                    let mut n = 0u64;
                    while start.elapsed() < duration {
                        op(&mut state);
                        n += 1;
                    }
                    (n, start.elapsed())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ops: u64 = results.iter().map(|r| r.0).sum();
    let longest = results.iter().map(|r| r.1).max().unwrap_or(duration);
    ops as f64 / longest.as_secs_f64()
}

/// One measurement: in each of [`ROUNDS`] rounds the bare call, the same call through
/// [`etee_hsm::SessionPool::run`], `HsmKeys`, then `CustodyKeys`, each for `secs` on
/// `threads` threads.
struct Trio<'a, B> {
    threads: usize,
    secs: f64,
    /// The bare call's rate is multiplied by this before dividing (½ for seal).
    scale: f64,
    bare_setup: &'a (dyn Fn() -> B + Sync),
    bare: &'a (dyn Fn(&mut B) + Sync),
    pooled: &'a (dyn Fn(&mut ()) + Sync),
    direct: &'a (dyn Fn(&mut ()) + Sync),
    custody: &'a (dyn Fn(&mut ()) + Sync),
    remote: &'a (dyn Fn(&mut ()) + Sync),
}

/// Medians over the rounds: rates, and the per-round ratios to the scaled bare rate.
#[derive(Clone, Copy)]
struct Figures {
    bare: f64,
    pooled: f64,
    direct: f64,
    custody: f64,
    remote: f64,
    direct_ratio: f64,
    custody_ratio: f64,
    remote_ratio: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

impl<B> Trio<'_, B> {
    fn run(&self) -> Figures {
        let (mut b, mut p, mut d, mut c, mut r) = (vec![], vec![], vec![], vec![], vec![]);
        let (mut dr, mut cr, mut rr) = (vec![], vec![], vec![]);
        for _ in 0..ROUNDS {
            let bare = rate(self.threads, self.secs, self.bare_setup, self.bare);
            p.push(rate(self.threads, self.secs, &|| (), self.pooled));
            let direct = rate(self.threads, self.secs, &|| (), self.direct);
            let custody = rate(self.threads, self.secs, &|| (), self.custody);
            let remote = rate(self.threads, self.secs, &|| (), self.remote);
            b.push(bare);
            d.push(direct);
            c.push(custody);
            r.push(remote);
            dr.push(direct / (bare * self.scale));
            cr.push(custody / (bare * self.scale));
            rr.push(remote / (bare * self.scale));
        }
        Figures {
            bare: median(b),
            pooled: median(p),
            direct: median(d),
            custody: median(c),
            remote: median(r),
            direct_ratio: median(dr),
            custody_ratio: median(cr),
            remote_ratio: median(rr),
        }
    }
}

/// The default policy's rules with a budget the bench cannot exhaust: the figures are the
/// core's cost, not its rate limit (the default allows 1 000 uses a second sustained).
fn bench_policy(token: &HsmToken, client: &str) -> Policy {
    let client = ClientId::try_from(client).unwrap();
    let unlimited = Budget {
        burst: 1_000_000_000,
        per_second: 1_000_000,
    };
    etee_hsm::custody::policy_for(token, &client, unlimited).unwrap()
}

fn seal_1k(signer: &SigningKey, to: &Certificate, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8192);
    seal(
        signer,
        &[Recipient::Certificate(to.clone())],
        None,
        content,
        &mut out,
        &SealOptions::default(),
    )
    .unwrap();
    out
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("custody: bench");
        return;
    }
    if let Some(dir) = std::env::var_os(SERVER_ENV) {
        return run_custody_server(Path::new(&dir));
    }
    let total = total_seconds();
    let secs = total / SLOTS as f64;
    // In the target directory (on disk, like a real audit file), not on a tmpfs.
    let dir = tempfile::Builder::new()
        .prefix("bench-softhsm-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let w = world(dir.path());

    let hsm = Hsm::open(&w.config).unwrap();
    let direct = hsm.keys();
    // ETEE_BENCH_AUDIT_DIR puts the audit file elsewhere (a tmpfs shows the fsync's share).
    let audit_dir = std::env::var_os("ETEE_BENCH_AUDIT_DIR")
        .map(PathBuf::from)
        .map(|d| tempfile::tempdir_in(d).unwrap())
        .unwrap_or_else(|| tempfile::tempdir_in(dir.path()).unwrap());
    let (custody, custody_config) = custody_keys(&w.config, audit_dir.path());
    let (_process, remote) =
        CustodyProcess::start(dir.path(), audit_dir.path(), &w.config, &custody_config);
    let bare = Bare::new(&w.config);

    let direct_signer = direct.signing_key().unwrap();
    let custody_signer = custody.signing_key().unwrap();
    let remote_signer = remote.signing_key().unwrap();
    let direct_ring: KeyRing = direct.key_ring().unwrap();
    let custody_ring: KeyRing = custody.key_ring().unwrap();
    let remote_ring: KeyRing = remote.key_ring().unwrap();
    assert_eq!(custody_ring.keys().len(), 1);
    assert_eq!(remote_ring.keys().len(), 1);
    let opts = UnsealOptions {
        anchors: w.anchors.clone(),
        ..Default::default()
    };
    let content = vec![0x42u8; 1024];
    let sealed = seal_1k(&direct_signer, &w.etk_cert, &content);

    // The bare calls' inputs: an RSA-2048 PKCS#1 v1.5 blob for the ETK, a SHA-256 digest.
    let blob = {
        let mut ctx = openssl::pkey_ctx::PkeyCtx::new(&w.etk_public).unwrap();
        ctx.encrypt_init().unwrap();
        ctx.set_rsa_padding(openssl::rsa::Padding::PKCS1).unwrap();
        let mut out = vec![];
        ctx.encrypt_to_vec(&[7u8; 16], &mut out).unwrap();
        out
    };
    let digest = [1u8; 32];
    let etk_session = || bare.session(&w.etk_id);
    let auth_session = || bare.session("authentication");
    let bare_decrypt = |s: &mut (Session, ObjectHandle)| {
        let plain = s.0.decrypt(&Mechanism::RsaPkcs, s.1, &blob).unwrap();
        assert_eq!(plain.len(), 16);
    };
    let bare_sign = |s: &mut (Session, ObjectHandle)| {
        let sig = s.0.sign(&pss(), s.1, &digest).unwrap();
        assert_eq!(sig.len(), 256);
    };
    // The bare calls again, on the pool's sessions (what HsmKeys and the core pay to reach
    // the token: borrowing a session, the handle cache, the call on this thread).
    let pool = hsm.pool().clone();
    let pooled_decrypt = |_: &mut ()| {
        let (id, blob) = (w.etk_id.clone(), blob.clone());
        let n = pool
            .run(move |conn| {
                let h = conn.find_object(ObjectClass::PRIVATE_KEY, id.as_bytes())?;
                Ok(conn
                    .session()
                    .decrypt(&Mechanism::RsaPkcs, h, &blob)
                    .unwrap()
                    .len())
            })
            .unwrap();
        assert_eq!(n, 16);
    };
    let pooled_sign = |_: &mut ()| {
        let n = pool
            .run(move |conn| {
                let h = conn.find_object(ObjectClass::PRIVATE_KEY, b"authentication")?;
                Ok(conn.session().sign(&pss(), h, &digest).unwrap().len())
            })
            .unwrap();
        assert_eq!(n, 256);
    };
    let unseal_with = |ring: &KeyRing| {
        let r = unseal(&sealed[..], io::sink(), ring, &opts).unwrap();
        assert!(r.verdict.is_clean(), "{:?}", r.verdict);
    };
    let direct_unseal = |_: &mut ()| unseal_with(&direct_ring);
    let custody_unseal = |_: &mut ()| unseal_with(&custody_ring);
    let remote_unseal = |_: &mut ()| unseal_with(&remote_ring);
    let direct_seal = |_: &mut ()| {
        seal_1k(&direct_signer, &w.etk_cert, &content);
    };
    let custody_seal = |_: &mut ()| {
        seal_1k(&custody_signer, &w.etk_cert, &content);
    };
    let remote_seal = |_: &mut ()| {
        seal_1k(&remote_signer, &w.etk_cert, &content);
    };

    println!(
        "SoftHSM2 {} on {} CPU(s); {ROUNDS} alternating rounds of {:.2} s per figure \
         (ETEE_BENCH_SECONDS={total}); audit file {}",
        w.config.module.display(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        secs,
        custody_config.audit_file.display()
    );
    let mut rows = Vec::new();
    for threads in [1, 2] {
        let unseal_figures = Trio {
            threads,
            secs,
            scale: 1.0,
            bare_setup: &etk_session,
            bare: &bare_decrypt,
            pooled: &pooled_decrypt,
            direct: &direct_unseal,
            custody: &custody_unseal,
            remote: &remote_unseal,
        }
        .run();
        let seal_figures = Trio {
            threads,
            secs,
            scale: 0.5,
            bare_setup: &auth_session,
            bare: &bare_sign,
            pooled: &pooled_sign,
            direct: &direct_seal,
            custody: &custody_seal,
            remote: &remote_seal,
        }
        .run();
        rows.push((threads, unseal_figures, seal_figures));
    }
    let audit_records = custody.audit_head().next_sequence;
    // What the core adds to each operation at least: one append + fdatasync of a
    // record-sized frame, in the audit file's directory.
    let fsync_rate = {
        use std::io::Seek;
        let f = std::fs::File::create(audit_dir.path().join("fsync-probe")).unwrap();
        rate(1, secs * 2.0, &|| (), &|_: &mut ()| {
            let mut f = &f;
            f.seek(io::SeekFrom::End(0)).unwrap();
            f.write_all(&[0x5a; 160]).unwrap();
            f.sync_data().unwrap();
        })
    };

    println!();
    println!("bare PKCS#11 calls: on own sessions (one per thread) | through SessionPool::run");
    println!("  threads  C_Decrypt CKM_RSA_PKCS       C_Sign CKM_RSA_PKCS_PSS");
    for (threads, u, s) in &rows {
        println!(
            "  {threads:7}  {:7.0} /s | {:7.0} /s     {:7.0} /s | {:7.0} /s",
            u.bare, u.pooled, s.bare, s.pooled
        );
    }
    println!();
    println!("1 KiB messages: ops/s and ratio to the bare rate (unseal ÷ decrypt, seal ÷ sign/2)");
    println!("  operation  threads  HsmKeys (no core)   core in-process     core in a process   target ≥ 0.90");
    for (threads, u, s) in &rows {
        for (name, f) in [("unseal", u), ("seal", s)] {
            let verdict = |r: f64| if r >= 0.9 { "met" } else { "MISSED" };
            println!(
                "  {name:9}  {threads:7}  {:6.0} /s  {:5.2}   {:6.0} /s  {:5.2}   {:6.0} /s  {:5.2}   {} / {}",
                f.direct,
                f.direct_ratio,
                f.custody,
                f.custody_ratio,
                f.remote,
                f.remote_ratio,
                verdict(f.custody_ratio),
                verdict(f.remote_ratio)
            );
        }
    }
    println!();
    println!(
        "  audit records written by the in-process core: {audit_records}, with {} fdatasync(s) (group commit)",
        custody.audit_syncs()
    );
    println!(
        "  append + fdatasync in the audit directory: {fsync_rate:.0} /s ({:.2} ms each)",
        1000.0 / fsync_rate
    );
    let _ = io::stdout().flush();
}
