//! The SoftHSM2 rig for the tests: one temporary token directory per test process (from
//! `hsm-config/softhsm2.conf.template`), `SOFTHSM2_CONF` pointing at it, and a fresh token
//! per test, initialised through our own `init_token` with PINs from files.
#![allow(dead_code)]

use etee_hsm::config::PinSource;
use etee_hsm::{init_token, HsmConfig, TokenSelector};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

pub const USER_PIN: &str = "user-pin-4321";
pub const SO_PIN: &str = "so-pin-8765";

pub struct Rig {
    pub dir: PathBuf,
    pub module: PathBuf,
}

/// The module: `SOFTHSM2_MODULE`, else the Debian/Ubuntu path.
pub fn module_path() -> PathBuf {
    std::env::var_os("SOFTHSM2_MODULE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(etee_hsm::config::DEFAULT_MODULE))
}

/// The rig of this test process. Fails (does not skip) without SoftHSM2.
pub fn rig() -> &'static Rig {
    static RIG: OnceLock<Rig> = OnceLock::new();
    RIG.get_or_init(|| {
        let module = module_path();
        assert!(
            module.exists(),
            "SoftHSM2 is not installed ({} is missing): run `bash hsm-config/setup.sh` \
             (scripts/test does), or set SOFTHSM2_MODULE to libsofthsm2.so",
            module.display()
        );
        remove_old_rigs(Path::new(env!("CARGO_TARGET_TMPDIR")));
        let dir = tempfile::Builder::new()
            .prefix("softhsm-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .expect("temporary directory")
            .keep();
        let tokens = dir.join("tokens");
        std::fs::create_dir(&tokens).unwrap();
        let template = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../hsm-config/softhsm2.conf.template"),
        )
        .expect("hsm-config/softhsm2.conf.template");
        assert!(template.contains("@TOKENDIR@"));
        let conf = dir.join("softhsm2.conf");
        std::fs::write(
            &conf,
            template.replace("@TOKENDIR@", &tokens.display().to_string()),
        )
        .unwrap();
        // Before the module is loaded (SoftHSM reads it in C_Initialize); the tests of one
        // binary share it, each on its own token.
        std::env::set_var("SOFTHSM2_CONF", &conf);
        Rig { dir, module }
    })
}

/// Token directories of earlier runs (older than an hour: not a run in progress).
fn remove_old_rigs(tmp: &Path) {
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return;
    };
    for e in entries.flatten() {
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age.as_secs() > 3600);
        if old && e.file_name().to_string_lossy().starts_with("softhsm-") {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

pub fn write_secret(path: &Path, content: &str) {
    std::fs::write(path, format!("{content}\n")).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
}

/// A new token labelled `name` (unique per test), initialised by `etee_hsm::init_token`.
///
/// Labels must not be prefixes of each other: `pkcs11-tool --token-label` (OpenSC) picks a
/// token whose label merely starts with the one given, so `kgss` could find `kgss-proc`.
pub fn new_token(name: &str) -> HsmConfig {
    let rig = rig();
    assert!(name.len() <= 32);
    let user = rig.dir.join(format!("{name}.user.pin"));
    let so = rig.dir.join(format!("{name}.so.pin"));
    write_secret(&user, USER_PIN);
    write_secret(&so, SO_PIN);
    let mut config = HsmConfig::new(rig.module.clone(), TokenSelector::label(name), user);
    config.so_pin = Some(PinSource::File(so));
    config.sessions = Some(2);
    let summary = init_token(&config).expect("init token");
    assert_eq!(summary.label, name);
    assert!(summary.user_pin_initialized);
    config
}

/// `pkcs11-tool ARGS` on the token, logged in with the user PIN (another process using
/// it); its standard output.
fn pkcs11_tool(config: &HsmConfig, args: &[&str]) -> String {
    let label = config.token.label.as_deref().unwrap();
    let login = ["--token-label", label, "--login", "--pin", USER_PIN];
    run_pkcs11_tool(config, &[&login[..], args].concat())
}

/// `pkcs11-tool --module MODULE ARGS`, which must succeed; its standard output.
fn run_pkcs11_tool(config: &HsmConfig, args: &[&str]) -> String {
    let out = Command::new("pkcs11-tool")
        .arg("--module")
        .arg(&config.module)
        .args(args)
        .output()
        .expect("pkcs11-tool (OpenSC) not found: run `bash hsm-config/setup.sh`");
    assert!(
        out.status.success(),
        "pkcs11-tool failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The `token flags` line OpenSC's `pkcs11-tool -L` shows for the token (no login, so
/// that asking changes no PIN counter).
pub fn pkcs11_tool_token_flags(config: &HsmConfig) -> String {
    let text = run_pkcs11_tool(config, &["-L"]);
    let label = config.token.label.as_deref().unwrap();
    let mut ours = false;
    for line in text.lines() {
        let (key, value) = line.split_once(':').unwrap_or_default();
        match key.trim() {
            "token label" => ours = value.trim() == label,
            "token flags" if ours => return value.trim().to_owned(),
            _ => {}
        }
    }
    panic!("no token {label:?} in pkcs11-tool -L:\n{text}")
}

/// `pkcs11-tool --list-objects` on the token, logged in; the text output.
pub fn pkcs11_tool_objects(config: &HsmConfig) -> String {
    pkcs11_tool(config, &["--list-objects"])
}

/// `pkcs11-tool --delete-object` of the private key with CKA_ID `id` on the token: another
/// process (an administrator, another application) removing a key under a running service.
pub fn pkcs11_tool_delete_private_key(config: &HsmConfig, id: &[u8]) {
    let id = hex::encode(id);
    pkcs11_tool(
        config,
        &["--delete-object", "--type", "privkey", "--id", &id],
    );
}

/// What the token answers to `C_Decrypt` (`CKM_RSA_PKCS`) of `blob` with the private key
/// of CKA_ID `id`, asked directly through cryptoki on a session of a second handle (the
/// process is logged in already), not through our code; as a `CKR_*` value. Panics if the
/// decryption succeeds, or on an answer no ciphertext should cause.
pub fn token_decrypt_error(config: &HsmConfig, id: &[u8], blob: &[u8]) -> u64 {
    use cryptoki::error::{Error, RvError};
    use cryptoki::object::{Attribute, ObjectClass};
    use etee_custody::token::ckr;
    let (other, session) = foreign_session(&config.module, config.token.label.as_deref().unwrap());
    let key = session
        .find_objects(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::Id(id.to_vec()),
        ])
        .unwrap()[0];
    let rv = match session.decrypt(&cryptoki::mechanism::Mechanism::RsaPkcs, key, blob) {
        Err(Error::Pkcs11(rv, _)) => rv,
        other => panic!("{other:?}"),
    };
    drop(session);
    // Dropping the last clone of the second handle would finalise the library.
    std::mem::forget(other);
    match rv {
        RvError::GeneralError => ckr::GENERAL_ERROR,
        RvError::EncryptedDataInvalid => ckr::ENCRYPTED_DATA_INVALID,
        RvError::EncryptedDataLenRange => ckr::ENCRYPTED_DATA_LEN_RANGE,
        RvError::DataLenRange => ckr::DATA_LEN_RANGE,
        other => panic!("the token answered {other}"),
    }
}

/// One object as pkcs11-tool prints it.
#[derive(Debug, Default)]
pub struct ToolObject {
    pub kind: String,
    pub label: String,
    pub id_hex: String,
    pub access: Vec<String>,
    pub usage: Vec<String>,
    pub mechanisms: Vec<String>,
}

/// Parses `pkcs11-tool --list-objects` text: a header line per object (`Private Key
/// Object; RSA`) followed by indented `name: value` lines.
pub fn parse_pkcs11_tool(text: &str) -> Vec<ToolObject> {
    let mut out: Vec<ToolObject> = Vec::new();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if !line.starts_with(' ') && !line.starts_with('\t') {
            out.push(ToolObject {
                kind: line.trim().to_string(),
                ..Default::default()
            });
            continue;
        }
        let Some(obj) = out.last_mut() else { continue };
        let Some((k, v)) = line.trim().split_once(':') else {
            continue;
        };
        let v = v.trim();
        let list = || {
            v.split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        };
        match k.trim() {
            "label" => obj.label = v.to_string(),
            "ID" => obj.id_hex = v.to_lowercase(),
            "Access" => obj.access = list(),
            "Usage" => obj.usage = list(),
            "Allowed mechanisms" => obj.mechanisms = list(),
            _ => {}
        }
    }
    out
}

/// The shared vectors: `ETEE_VECTORS` (relative: from the project root), else
/// `<workspace>/../shared/vectors`. `None` with a printed `skipping: ...` when absent, a
/// failure instead under `ETEE_E2E_STRICT=1` (the same rule as the end-to-end tests:
/// `etee_testpki::skip`).
#[track_caller]
pub fn vectors() -> Option<PathBuf> {
    etee_testpki::skip::shared_vectors()
}

/// `YYYY-MM-DDTHH:MM:SSZ` → unix seconds.
pub fn unix_time(s: &str) -> i64 {
    let n = |r: std::ops::Range<usize>| s[r].parse::<i64>().unwrap();
    let (y, m, d) = (n(0..4), n(5..7), n(8..10));
    let (hh, mm, ss) = (n(11..13), n(14..16), n(17..19));
    // Days from civil (proleptic Gregorian).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    days * 86400 + hh * 3600 + mm * 60 + ss
}

/// Runs `openssl ARGS`, failing the test with its stderr when it fails.
pub fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl command");
    assert!(
        out.status.success(),
        "openssl {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A session on `label` through a second handle on the same (already initialised)
/// library: what another component of the process could do behind the pool's back.
/// Dropping the last clone of the handle finalises the library.
pub fn foreign_session(
    module: &std::path::Path,
    label: &str,
) -> (cryptoki::context::Pkcs11, cryptoki::session::Session) {
    let other = cryptoki::context::Pkcs11::new(module).unwrap();
    let slot = other
        .get_slots_with_token()
        .unwrap()
        .into_iter()
        .find(|s| other.get_token_info(*s).unwrap().label().trim_end() == label)
        .unwrap();
    let session = other.open_ro_session(slot).unwrap();
    (other, session)
}

/// Whether `sig` is an RSA-PSS signature (SHA-256, MGF1-SHA-256, 32-byte salt: what the
/// token makes) of `digest` by the public key `spki_der`, checked by OpenSSL.
pub fn verify_pss(spki_der: &[u8], digest: &[u8; 32], sig: &[u8]) -> bool {
    use openssl::rsa::Padding;
    let key = openssl::pkey::PKey::public_key_from_der(spki_der).unwrap();
    let mut ctx = openssl::pkey_ctx::PkeyCtx::new(&key).unwrap();
    ctx.verify_init().unwrap();
    ctx.set_rsa_padding(Padding::PKCS1_PSS).unwrap();
    ctx.set_signature_md(openssl::md::Md::sha256()).unwrap();
    ctx.set_rsa_mgf1_md(openssl::md::Md::sha256()).unwrap();
    ctx.set_rsa_pss_saltlen(openssl::sign::RsaPssSaltlen::custom(32))
        .unwrap();
    ctx.verify(digest, sig).unwrap_or(false)
}

/// `data` encrypted by OpenSSL to the public key `spki_der` (RSA PKCS#1 v1.5: a
/// key-transport blob for the token's ETK key).
pub fn encrypt_pkcs1(spki_der: &[u8], data: &[u8]) -> Vec<u8> {
    let key = openssl::pkey::PKey::public_key_from_der(spki_der).unwrap();
    let mut ctx = openssl::pkey_ctx::PkeyCtx::new(&key).unwrap();
    ctx.encrypt_init().unwrap();
    ctx.set_rsa_padding(openssl::rsa::Padding::PKCS1).unwrap();
    let mut out = Vec::new();
    ctx.encrypt_to_vec(data, &mut out).unwrap();
    out
}
