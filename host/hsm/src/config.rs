//! The `[hsm]` table of the etee TOML configuration (example: `hsm-config/institution.toml`).
//!
//! ```toml
//! [hsm]
//! module = "/usr/lib/softhsm/libsofthsm2.so"   # default when absent
//! token_label = "etee-institution"             # or token_serial = "..."
//! pin_file = "user.pin"                        # relative to this file's directory
//! so_pin_file = "so.pin"                       # only `hsm init` needs it
//! ```
//!
//! Everything else has a safe default: `sessions` (pool size; default from the core count
//! and the token's session limit), `pin_credential` / `so_pin_credential` (a systemd
//! credential name instead of a file) and `[hsm.profiles.NAME]` key profiles (built in:
//! `authentication`, `etk` and `kgss-wrap`). The file holds `[hsm]` and `[custody]` only:
//! another table, or an unknown key inside one, is refused, so that a typo does not
//! silently fall back to a default.
//!
//! PINs are read into buffers wiped on drop, never logged and never put on a command line.

use crate::error::{HsmError, Result};
use cryptoki::mechanism::MechanismType;
use cryptoki::types::AuthPin;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use zeroize::{Zeroize, Zeroizing};

/// Where Debian and Ubuntu install SoftHSM2's PKCS#11 module.
pub const DEFAULT_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
/// Largest PIN file read (PINs are short; a large file is a mistake).
const MAX_PIN_FILE: u64 = 1024;
/// Largest pool the automatic sizing picks.
const MAX_AUTO_SESSIONS: usize = 8;

/// The configuration file as far as this crate is concerned.
#[derive(Clone, Debug)]
pub struct Config {
    pub hsm: HsmConfig,
    /// The optional `[custody]` table, with its defaults filled in.
    pub custody: CustodyConfig,
}

/// The CKA_ID (and profile name) of the KGSS service's wrapping key.
pub const KGSS_WRAP_ID: &str = "kgss-wrap";

/// The default client id of the in-process custody core.
pub const DEFAULT_CUSTODY_CLIENT: &str = "etee-cli";

/// The `[custody]` table: where the in-process custody core keeps its audit chain and
/// which client id it grants the token's keys to.
///
/// ```toml
/// [custody]
/// audit_file = "audit.log"   # default: audit-<token label or serial>.log beside the config
/// client = "etee-cli"        # default
/// mode = "in-process"        # default; or "process": the core runs in `etee custody serve`
/// socket = "custody.sock"    # the Unix socket of `etee custody serve` (needed for "process")
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CustodyConfig {
    /// The audit chain file.
    pub audit_file: PathBuf,
    /// The client the default policy lets sign with `authentication`, decrypt with every
    /// ETK key and wrap and unwrap with every wrapping key.
    pub client: String,
    /// Where the core runs.
    pub mode: CustodyMode,
    /// The Unix socket of the separate custody process.
    pub socket: Option<PathBuf>,
    /// User ids besides the server's own that may connect to the socket (checked with
    /// SO_PEERCRED on every connection).
    pub allowed_uids: Vec<u32>,
    /// The custody process's user id, which clients check their peer against (SO_PEERCRED)
    /// before sending a frame. Unset: the client's own uid, when `allowed_uids` is empty (the
    /// server then serves its own user only); unchecked, with a warning, otherwise.
    pub server_uid: Option<u32>,
    /// The rate budget of every rule of the default policy (and of the appliance's
    /// per-client rules): `budget_burst` uses at once, refilled at `budget_per_second`.
    pub budget: etee_custody::policy::Budget,
    /// The audit file starts a new segment once it holds this many bytes (the old one is
    /// kept as `<audit_file>.<next sequence>`); `None`: one file for ever.
    pub audit_segment_bytes: Option<u64>,
}

/// The default size at which the custody audit file starts a new segment: 64 MiB, about
/// 300 000 key uses; opening the core reads the current segment only.
pub const DEFAULT_AUDIT_SEGMENT_BYTES: u64 = 64 << 20;
/// The smallest `audit_segment_bytes` accepted.
pub const MIN_AUDIT_SEGMENT_BYTES: u64 = 4096;

/// Where the custody core runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CustodyMode {
    /// Inside the `etee` process, which then logs in with the PIN itself.
    #[default]
    InProcess,
    /// In `etee custody serve`, which alone holds the PIN; `etee` sends it frames over
    /// the `socket`.
    Process,
}

impl CustodyConfig {
    /// The defaults for a token, with the audit file in `dir`:
    /// `audit-<token label, else serial>.log` (characters other than ASCII letters,
    /// digits, `-`, `_` and `.` replaced by `_`).
    pub fn defaults(hsm: &HsmConfig, dir: &Path) -> Self {
        let name = hsm
            .token
            .label
            .as_deref()
            .or(hsm.token.serial.as_deref())
            .unwrap_or("token");
        let safe: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        Self {
            audit_file: dir.join(format!("audit-{safe}.log")),
            client: DEFAULT_CUSTODY_CLIENT.into(),
            mode: CustodyMode::InProcess,
            socket: None,
            allowed_uids: Vec::new(),
            server_uid: None,
            budget: crate::custody::DEFAULT_BUDGET,
            audit_segment_bytes: Some(DEFAULT_AUDIT_SEGMENT_BYTES),
        }
    }
}

/// The largest configuration file read: ample for any etee TOML configuration, and a
/// bound for `/dev/zero` or a log given as `--config` by mistake.
pub const MAX_CONFIG_FILE: u64 = 1024 * 1024;

/// Reads a configuration file as text (the HSM, appliance and platform configurations),
/// at most [`MAX_CONFIG_FILE`] bytes.
pub fn read_config_text(path: &Path) -> std::io::Result<String> {
    let mut bytes = Vec::new();
    if !etee_formats::read_at_most(std::fs::File::open(path)?, MAX_CONFIG_FILE, &mut bytes)? {
        return Err(std::io::Error::other(format!(
            "larger than {MAX_CONFIG_FILE} bytes: not a configuration file"
        )));
    }
    String::from_utf8(bytes)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8 text"))
}

impl Config {
    /// Reads a TOML file; relative paths in it are taken from the file's directory.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = read_config_text(path)
            .map_err(|e| HsmError::Config(format!("reading {}: {e}", path.display())))?;
        Self::from_toml(&text, &config_dir(path))
            .map_err(|e| HsmError::Config(format!("{}: {}", path.display(), strip_prefix(e))))
    }

    /// Parses TOML text; relative paths are taken from `base`.
    pub fn from_toml(text: &str, base: &Path) -> Result<Self> {
        let file: RawFile =
            toml::from_str(text).map_err(|e| HsmError::Config(toml_error(text, &e)))?;
        let raw = file
            .hsm
            .ok_or_else(|| HsmError::Config("no [hsm] table".into()))?;
        let hsm = HsmConfig::from_raw(raw, base)?;
        let mut custody = CustodyConfig::defaults(&hsm, base);
        if let Some(c) = file.custody {
            if let Some(f) = c.audit_file {
                custody.audit_file = if f.is_relative() { base.join(f) } else { f };
            }
            if let Some(client) = c.client {
                if client.is_empty() || client.len() > 32 {
                    return Err(HsmError::Config(
                        "[custody] client must be 1 to 32 bytes".into(),
                    ));
                }
                custody.client = client;
            }
            if let Some(mode) = c.mode {
                custody.mode = mode;
            }
            if let Some(uids) = c.allowed_uids {
                custody.allowed_uids = uids;
            }
            custody.server_uid = c.server_uid;
            if let Some(f) = c.socket {
                custody.socket = Some(if f.is_relative() { base.join(f) } else { f });
            }
            if let Some(bytes) = c.audit_segment_bytes {
                if bytes != 0 && bytes < MIN_AUDIT_SEGMENT_BYTES {
                    return Err(HsmError::Config(format!(
                        "[custody] audit_segment_bytes: at least {MIN_AUDIT_SEGMENT_BYTES} \
                         (or 0: never start a new segment)"
                    )));
                }
                custody.audit_segment_bytes = (bytes != 0).then_some(bytes);
            }
            if let Some(burst) = c.budget_burst {
                custody.budget.burst = burst;
            }
            if let Some(rate) = c.budget_per_second {
                custody.budget.per_second = rate;
            }
            if custody.budget.burst == 0 || custody.budget.per_second == 0 {
                return Err(HsmError::Config(
                    "[custody] budget_burst and budget_per_second must be at least 1".into(),
                ));
            }
            if custody.mode == CustodyMode::Process && custody.socket.is_none() {
                return Err(HsmError::Config(
                    "[custody] mode = \"process\" needs socket = PATH".into(),
                ));
            }
        }
        Ok(Self { hsm, custody })
    }
}

fn strip_prefix(e: HsmError) -> String {
    match e {
        HsmError::Config(s) => s,
        other => other.to_string(),
    }
}

/// Unknown tables are refused as unknown keys are: a misspelt `[custody]` would otherwise
/// drop the custody settings silently (a separate process, the audit file) for defaults.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    hsm: Option<RawHsm>,
    custody: Option<RawCustody>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCustody {
    audit_file: Option<PathBuf>,
    client: Option<String>,
    mode: Option<CustodyMode>,
    socket: Option<PathBuf>,
    allowed_uids: Option<Vec<u32>>,
    server_uid: Option<u32>,
    budget_burst: Option<u32>,
    budget_per_second: Option<u32>,
    audit_segment_bytes: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHsm {
    module: Option<PathBuf>,
    token_label: Option<String>,
    token_serial: Option<String>,
    pin_file: Option<PathBuf>,
    pin_credential: Option<String>,
    so_pin_file: Option<PathBuf>,
    so_pin_credential: Option<String>,
    sessions: Option<usize>,
    #[serde(default)]
    profiles: BTreeMap<String, RawProfile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    role: KeyRole,
    id: Option<String>,
    label: Option<String>,
    bits: Option<u32>,
    mechanisms: Option<Vec<String>>,
}

/// How the token is found: by label, by serial, or both (both must match). Never by slot
/// number: SoftHSM renumbers slots when tokens are initialised.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TokenSelector {
    pub label: Option<String>,
    pub serial: Option<String>,
}

impl TokenSelector {
    pub fn label(label: &str) -> Self {
        Self {
            label: Some(label.into()),
            serial: None,
        }
    }

    /// Whether a token with this label and serial is the one selected.
    pub fn matches(&self, label: &str, serial: &str) -> bool {
        self.label.as_deref().is_none_or(|l| l == label.trim_end())
            && self
                .serial
                .as_deref()
                .is_none_or(|s| s == serial.trim_end())
    }
}

impl fmt::Display for TokenSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.label, &self.serial) {
            (Some(l), Some(s)) => write!(f, "label {l:?} and serial {s:?}"),
            (Some(l), None) => write!(f, "label {l:?}"),
            (None, Some(s)) => write!(f, "serial {s:?}"),
            (None, None) => f.write_str("(no selector)"),
        }
    }
}

/// A PIN, in a buffer wiped on drop; `Debug` does not show it.
pub struct Pin(Zeroizing<String>);

impl Pin {
    pub fn new(pin: Zeroizing<String>) -> Self {
        Self(pin)
    }

    /// A cryptoki copy for one call (wiped when dropped).
    pub(crate) fn auth(&self) -> AuthPin {
        AuthPin::new(self.0.as_str().to_owned())
    }

    /// The PIN itself, for callers that must pass it on (never log it).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pin(<secret>)")
    }
}

/// Where a PIN comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PinSource {
    /// A file holding the PIN (one trailing `\n` or `\r\n` is ignored, nothing else).
    File(PathBuf),
    /// A systemd credential: `$CREDENTIALS_DIRECTORY/<name>`.
    Credential(String),
}

impl PinSource {
    /// For a PIN the token refused: a hint when the PIN as read begins or ends with
    /// whitespace (a second line ending, a space, a lone CR), which is part of the PIN.
    pub fn whitespace_hint(&self) -> Option<String> {
        let pin = self.read().ok()?;
        let text = pin.expose();
        let (first, last) = (text.chars().next()?, text.chars().last()?);
        (first.is_whitespace() || last.is_whitespace()).then(|| {
            let what = match self {
                Self::File(p) => format!("PIN file {}", p.display()),
                Self::Credential(name) => format!("PIN credential {name:?}"),
            };
            format!(
                "the PIN of {what} begins or ends with whitespace (a second line ending, a \
                 space, a CR?): only one trailing \\n or \\r\\n is taken off, the rest is \
                 part of the PIN"
            )
        })
    }

    /// Reads the PIN into a buffer wiped on drop (a file readable or writable by group or
    /// others is reported to the operator: [`read_pin_file`]).
    pub fn read(&self) -> Result<Pin> {
        match self {
            Self::File(p) => {
                // Its path comes from the configuration, where a PIN may have been written
                // instead (a credential's name is no such risk).
                if let Err(e) = std::fs::symlink_metadata(p) {
                    if let Some((path, reason)) = missing_secret_file(p, &e) {
                        return Err(HsmError::PinFile { path, reason });
                    }
                }
                read_pin_file(p)
            }
            Self::Credential(name) => {
                let failed = |reason: String| HsmError::Credential {
                    name: name.clone(),
                    reason,
                };
                let dir = std::env::var_os("CREDENTIALS_DIRECTORY").ok_or_else(|| {
                    failed("CREDENTIALS_DIRECTORY is not set (not running under systemd with LoadCredential=?)".into())
                })?;
                read_pin_file(&Path::new(&dir).join(name)).map_err(|e| match e {
                    HsmError::PinFile { path, reason } => {
                        failed(format!("{}: {reason}", path.display()))
                    }
                    other => other,
                })
            }
        }
    }
}

/// For a secret's file (a PIN file, a password file) that does not exist: its path with
/// the file's name left out, and why. A secret written where its file's path belongs
/// (`pin_file = "123456"`) would otherwise be shown in the error, and from there in logs
/// and journals; the directory is still shown, to find a mistyped path.
pub fn missing_secret_file(path: &Path, e: &std::io::Error) -> Option<(PathBuf, String)> {
    (e.kind() == std::io::ErrorKind::NotFound).then(|| {
        let dir = path.parent().unwrap_or(Path::new(""));
        (
            dir.join("…"),
            "no such file (its name is not shown, in case a secret was written where its \
             file's path belongs: check the setting)"
                .to_string(),
        )
    })
}

/// Reads a PIN file: at most 1 KiB, UTF-8, one trailing `\n` or `\r\n` removed (any other
/// byte, a second line ending or a space too, is part of the PIN), not empty. A file
/// readable or writable by group or others is reported to the operator
/// ([`crate::warn_operator`]), whichever command or service reads it.
pub fn read_pin_file(path: &Path) -> Result<Pin> {
    let (pin, warning) = read_pin_file_checked(path)?;
    if let Some(w) = warning {
        crate::warn_operator(&w);
    }
    Ok(pin)
}

/// [`read_pin_file`], returning the warning instead of reporting it.
pub fn read_pin_file_checked(path: &Path) -> Result<(Pin, Option<String>)> {
    let fail = |reason: String| HsmError::PinFile {
        path: path.to_path_buf(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(|e| fail(e.to_string()))?;
    let meta = file.metadata().map_err(|e| fail(e.to_string()))?;
    if let Some(why) = secret_file_refusal(&meta) {
        return Err(fail(why));
    }
    let warning = permission_warning(path, &file);
    // Room for the largest accepted file and one byte more from the start: growing
    // would reallocate and leave copies of the PIN in freed memory.
    let mut bytes = Vec::with_capacity(MAX_PIN_FILE as usize + 1);
    let read = file.take(MAX_PIN_FILE + 1).read_to_end(&mut bytes);
    if let Err(e) = read {
        bytes.zeroize();
        return Err(fail(e.to_string()));
    }
    if bytes.len() as u64 > MAX_PIN_FILE {
        bytes.zeroize();
        return Err(fail(format!("larger than {MAX_PIN_FILE} bytes")));
    }
    // One line ending (what `echo` or an editor adds) is not part of the PIN; anything
    // else is, so that a PIN never differs silently from the file's content.
    let ending = if bytes.ends_with(b"\r\n") {
        2
    } else {
        usize::from(bytes.ends_with(b"\n"))
    };
    let keep = bytes.len() - ending;
    bytes[keep..].fill(0);
    bytes.truncate(keep);
    if bytes.is_empty() {
        return Err(fail("empty".into()));
    }
    match String::from_utf8(bytes) {
        Ok(pin) => Ok((Pin(Zeroizing::new(pin)), warning)),
        Err(e) => {
            e.into_bytes().zeroize();
            Err(fail("not UTF-8".into()))
        }
    }
}

/// The directory relative paths of the configuration file `path` are taken from, made
/// absolute: a file named without a directory (`--config etee.toml`) would otherwise give
/// bare names, which `dlopen` looks up in the library path instead of beside the file.
pub fn config_dir(path: &Path) -> PathBuf {
    std::path::absolute(path)
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("."))
}

/// A TOML error as `line L, column C: what`, without the excerpt of the file `toml` adds:
/// the offending line may hold a secret (a PIN or a database password put where it does
/// not belong), and errors end up in logs.
pub fn toml_error(text: &str, e: &toml::de::Error) -> String {
    let Some(span) = e.span() else {
        return e.message().to_owned();
    };
    let before = &text.as_bytes()[..span.start.min(text.len())];
    let line = before.iter().filter(|b| **b == b'\n').count() + 1;
    let column = before.iter().rev().take_while(|b| **b != b'\n').count() + 1;
    format!(
        "line {line}, column {column}: {}",
        without_value(e.message())
    )
}

/// A deserialisation message without the value it quotes (`invalid type: string "…",
/// expected a path` → `invalid type, expected a path`): the value may be a secret.
fn without_value(message: &str) -> String {
    for kind in [
        "invalid type",
        "invalid value",
        "invalid length",
        "unknown variant",
    ] {
        if let Some(rest) = message.strip_prefix(kind) {
            return match rest.find(", expected") {
                Some(at) => format!("{kind}{}", &rest[at..]),
                None => kind.to_owned(),
            };
        }
    }
    message.to_owned()
}

fn permission_warning(path: &Path, file: &std::fs::File) -> Option<String> {
    secret_file_warning("PIN file", path, &file.metadata().ok()?)
}

/// Why a secret file must not be used, if it must not: one that someone else may write
/// (group or others, or another owner than this process's user or root) decides what
/// is used as the secret — with a PIN, what the token is asked with, so that it can also
/// make logins fail until the core locks itself out.
#[cfg(unix)]
pub fn secret_file_refusal(meta: &std::fs::Metadata) -> Option<String> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let mode = meta.permissions().mode();
    if !meta.is_file() {
        return None;
    }
    if mode & 0o022 != 0 {
        return Some(format!(
            "writable by group or others (mode {:o}): whoever can write it chooses the \
             secret; chmod 600 it",
            mode & 0o777
        ));
    }
    let me = nix::unistd::getuid().as_raw();
    (meta.uid() != me && meta.uid() != 0).then(|| {
        format!(
            "owned by uid {}, neither this process's user ({me}) nor root: that user \
             chooses the secret; chown it",
            meta.uid()
        )
    })
}

#[cfg(not(unix))]
pub fn secret_file_refusal(_: &std::fs::Metadata) -> Option<String> {
    None
}

/// The range of the services' timeouts in milliseconds (the appliance's and the
/// platform's `handshake_timeout_ms`, `request_timeout_ms`, ...): a tenth of a second (less
/// cuts off every handshake, request or platform call) to a day.
pub const TIMEOUT_MS_RANGE: std::ops::RangeInclusive<u64> = 100..=86_400_000;

/// `value`, the setting `key`, when within `range`; else the message naming the key, the
/// value and the range, for the caller's configuration error (which adds the file).
pub fn in_range<T>(key: &str, value: T, range: impl std::ops::RangeBounds<T>) -> Result<T, String>
where
    T: PartialOrd + std::fmt::Display,
{
    use std::ops::Bound;
    if range.contains(&value) {
        return Ok(value);
    }
    let allowed = match (range.start_bound(), range.end_bound()) {
        (Bound::Included(min), Bound::Included(max)) => format!("{min} to {max}"),
        (Bound::Included(min), _) => format!("at least {min}"),
        (_, Bound::Included(max)) => format!("at most {max}"),
        _ => "out of range".to_owned(),
    };
    Err(format!("{key} = {value}: {allowed}"))
}

/// A timeout setting `key` in milliseconds within [`TIMEOUT_MS_RANGE`], or `default` when
/// not set.
pub fn timeout_ms(
    key: &str,
    ms: Option<u64>,
    default: std::time::Duration,
) -> Result<std::time::Duration, String> {
    ms.map_or(Ok(default), |ms| {
        in_range(key, ms, TIMEOUT_MS_RANGE).map(std::time::Duration::from_millis)
    })
}

/// A warning when a `client_ca` file holds certificates that are not CAs (no
/// basicConstraints cA=true), e.g. a TLS server's certificate given by mistake: the files
/// are taken as they are, but `callers` (who the TLS server authenticates: "API callers'")
/// have certificates issued by a CA, so such an entry most likely lets nobody in. `None`
/// when every certificate is a CA (one that cannot be parsed is left to the checks that
/// use it).
pub fn client_ca_warning(path: &Path, ders: &[impl AsRef<[u8]>], callers: &str) -> Option<String> {
    let not_ca: Vec<String> = ders
        .iter()
        .filter_map(|der| etee_formats::cert::Certificate::from_der(der.as_ref()).ok())
        .filter(|c| !c.is_ca())
        .map(|c| c.subject_string())
        .collect();
    (!not_ca.is_empty()).then(|| {
        format!(
            "client_ca {}: not a CA certificate (no basicConstraints cA=true): {}; {callers} \
             certificates must be issued by the CAs given in client_ca",
            path.display(),
            not_ca.join("; ")
        )
    })
}

/// What to tell the operator of a secret file (`what`: "keystore password file", "TLS
/// key"...) at `path` that group or others may read or write, if it is one.
pub fn permission_warning_for(what: &str, path: &Path) -> Option<String> {
    secret_file_warning(what, path, &std::fs::metadata(path).ok()?)
}

#[cfg(unix)]
fn secret_file_warning(what: &str, path: &Path, meta: &std::fs::Metadata) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = meta.permissions().mode();
    (mode & 0o077 != 0).then(|| {
        format!(
            "{what} {} is readable or writable by group or others (mode {:o}); chmod 600 it",
            path.display(),
            mode & 0o777
        )
    })
}

#[cfg(not(unix))]
fn secret_file_warning(_: &str, _: &Path, _: &std::fs::Metadata) -> Option<String> {
    None
}

/// What a key is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyRole {
    /// The eHealth authentication key: signs both layers of sealed messages (RSA-PSS).
    Authentication,
    /// An ETK decryption key: opens key-transport blobs (RSA PKCS#1 v1.5).
    #[serde(alias = "encryption", alias = "decryption")]
    Etk,
    /// An AES key that wraps and unwraps secrets (`CKM_AES_KEY_WRAP`, RFC 3394): the KGSS
    /// service stores its keys wrapped under it. A secret key, not a key pair.
    Wrapping,
}

impl KeyRole {
    /// The mechanisms a key of this role may ever be allowed.
    pub fn permitted_mechanisms(self) -> &'static [MechanismType] {
        match self {
            Self::Authentication => &[
                MechanismType::RSA_PKCS_PSS,
                MechanismType::SHA256_RSA_PKCS_PSS,
            ],
            Self::Etk => &[MechanismType::RSA_PKCS],
            Self::Wrapping => &[MechanismType::AES_KEY_WRAP],
        }
    }

    /// The mechanism the role needs: what [`crate::HsmKeys`] calls.
    pub fn required_mechanism(self) -> MechanismType {
        match self {
            Self::Authentication => MechanismType::RSA_PKCS_PSS,
            Self::Etk => MechanismType::RSA_PKCS,
            Self::Wrapping => MechanismType::AES_KEY_WRAP,
        }
    }
}

impl fmt::Display for KeyRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Authentication => "authentication",
            Self::Etk => "etk",
            Self::Wrapping => "wrapping",
        })
    }
}

/// How to generate one kind of key. Sensitivity and non-extractability are not
/// configurable: every key is `CKA_SENSITIVE` and not `CKA_EXTRACTABLE`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct KeyProfile {
    pub name: String,
    pub role: KeyRole,
    /// CKA_ID (UTF-8). `None` for ETK keys: the id becomes the decimal serial of the ETK
    /// certificate when it is installed; until then a provisional `etk-pending-…` id.
    pub id: Option<String>,
    /// CKA_LABEL; defaults to the id.
    pub label: Option<String>,
    /// RSA modulus size: 2048 (default), 3072 or 4096; for wrapping keys the AES key size:
    /// 128, 192 or 256 (default).
    pub bits: u32,
    /// CKA_ALLOWED_MECHANISMS, `CKM_...` names; a subset of the role's permitted ones that
    /// holds the required one.
    pub mechanisms: Vec<String>,
}

impl KeyProfile {
    /// The built-in authentication profile: id and label `authentication`, RSA-2048,
    /// `CKM_RSA_PKCS_PSS` and `CKM_SHA256_RSA_PKCS_PSS`.
    pub fn authentication() -> Self {
        Self {
            name: "authentication".into(),
            role: KeyRole::Authentication,
            id: Some(etee_formats::keystore::ehealth::AUTHENTICATION_ALIAS.into()),
            label: None,
            bits: 2048,
            mechanisms: names(KeyRole::Authentication.permitted_mechanisms()),
        }
    }

    /// The built-in ETK profile: RSA-2048, `CKM_RSA_PKCS` decryption only, id assigned
    /// when the certificate is installed.
    pub fn etk() -> Self {
        Self {
            name: "etk".into(),
            role: KeyRole::Etk,
            id: None,
            label: None,
            bits: 2048,
            mechanisms: names(KeyRole::Etk.permitted_mechanisms()),
        }
    }

    /// The built-in KGSS wrapping key profile: id and label `kgss-wrap`, AES-256,
    /// `CKM_AES_KEY_WRAP` only (wrap and unwrap; no encrypt, decrypt, sign or derive).
    pub fn kgss_wrap() -> Self {
        Self {
            name: KGSS_WRAP_ID.into(),
            role: KeyRole::Wrapping,
            id: Some(KGSS_WRAP_ID.into()),
            label: None,
            bits: 256,
            mechanisms: names(KeyRole::Wrapping.permitted_mechanisms()),
        }
    }

    /// CKA_ALLOWED_MECHANISMS as cryptoki values.
    pub fn mechanism_types(&self) -> Vec<MechanismType> {
        self.mechanisms
            .iter()
            .filter_map(|n| mechanism_by_name(n))
            .collect()
    }

    fn validate(&self) -> Result<()> {
        let bad = |why: String| HsmError::Config(format!("profile {:?}: {why}", self.name));
        let (sizes, what) = match self.role {
            KeyRole::Wrapping => (&[128, 192, 256], "128, 192 or 256"),
            KeyRole::Authentication | KeyRole::Etk => (&[2048, 3072, 4096], "2048, 3072 or 4096"),
        };
        if !sizes.contains(&self.bits) {
            return Err(bad(format!("bits = {} ({what})", self.bits)));
        }
        if self.role == KeyRole::Wrapping && self.id.is_none() {
            return Err(bad("a wrapping key needs an id".into()));
        }
        let permitted = self.role.permitted_mechanisms();
        for m in &self.mechanisms {
            match mechanism_by_name(m) {
                Some(t) if permitted.contains(&t) => {}
                _ => {
                    return Err(bad(format!(
                        "mechanism {m} is not allowed for {} keys (allowed: {})",
                        self.role,
                        names(permitted).join(", ")
                    )))
                }
            }
        }
        let required = self.role.required_mechanism();
        if !self.mechanism_types().contains(&required) {
            return Err(bad(format!("mechanisms must include {required}")));
        }
        if let Some(id) = &self.id {
            if id.is_empty() || id.len() > 128 {
                return Err(bad("id must be 1 to 128 bytes".into()));
            }
        }
        Ok(())
    }
}

fn names(mechs: &[MechanismType]) -> Vec<String> {
    mechs.iter().map(|m| m.to_string()).collect()
}

fn mechanism_by_name(name: &str) -> Option<MechanismType> {
    [
        MechanismType::RSA_PKCS_PSS,
        MechanismType::SHA256_RSA_PKCS_PSS,
        MechanismType::RSA_PKCS,
        MechanismType::AES_KEY_WRAP,
    ]
    .into_iter()
    .find(|m| m.to_string() == name)
}

/// The `[hsm]` table, checked, with paths made absolute.
#[derive(Clone, Debug)]
pub struct HsmConfig {
    /// Path of the PKCS#11 library.
    pub module: PathBuf,
    pub token: TokenSelector,
    /// The user PIN.
    pub pin: PinSource,
    /// The security officer PIN (`hsm init` only).
    pub so_pin: Option<PinSource>,
    /// Pool size; `None` = automatic.
    pub sessions: Option<usize>,
    /// Key profiles by name: the built-in `authentication` and `etk`, plus (or replaced
    /// by) the configured ones.
    pub profiles: BTreeMap<String, KeyProfile>,
}

impl HsmConfig {
    /// A configuration built in code (tests, tools): built-in profiles, automatic pool.
    pub fn new(module: impl Into<PathBuf>, token: TokenSelector, pin_file: PathBuf) -> Self {
        Self {
            module: module.into(),
            token,
            pin: PinSource::File(pin_file),
            so_pin: None,
            sessions: None,
            profiles: builtin_profiles(),
        }
    }

    fn from_raw(raw: RawHsm, base: &Path) -> Result<Self> {
        let abs = |p: PathBuf| if p.is_relative() { base.join(p) } else { p };
        let token = TokenSelector {
            label: raw.token_label,
            serial: raw.token_serial,
        };
        if token.label.is_none() && token.serial.is_none() {
            return Err(HsmError::Config(
                "[hsm] needs token_label or token_serial (slots are never selected by number)"
                    .into(),
            ));
        }
        if let Some(l) = &token.label {
            if l.is_empty() || l.len() > 32 {
                return Err(HsmError::Config(
                    "[hsm] token_label must be 1 to 32 bytes".into(),
                ));
            }
        }
        let source = |file: Option<PathBuf>, cred: Option<String>, what: &str| match (file, cred) {
            (Some(_), Some(_)) => Err(HsmError::Config(format!(
                "[hsm] {what}_file and {what}_credential are exclusive"
            ))),
            (Some(f), None) => Ok(Some(PinSource::File(abs(f)))),
            (None, Some(c)) if c.is_empty() || c.contains('/') || c == ".." || c == "." => Err(
                HsmError::Config(format!("[hsm] {what}_credential must be a plain name")),
            ),
            (None, Some(c)) => Ok(Some(PinSource::Credential(c))),
            (None, None) => Ok(None),
        };
        let pin = source(raw.pin_file, raw.pin_credential, "pin")?
            .ok_or_else(|| HsmError::Config(
                "[hsm] needs pin_file (a file holding the user PIN) or pin_credential (a systemd credential)".into(),
            ))?;
        let so_pin = source(raw.so_pin_file, raw.so_pin_credential, "so_pin")?;
        if raw.sessions == Some(0) || raw.sessions.is_some_and(|n| n > 256) {
            return Err(HsmError::Config("[hsm] sessions must be 1 to 256".into()));
        }
        let mut profiles = builtin_profiles();
        for (name, p) in raw.profiles {
            let defaults = match p.role {
                KeyRole::Authentication => KeyProfile::authentication(),
                KeyRole::Etk => KeyProfile::etk(),
                KeyRole::Wrapping => KeyProfile::kgss_wrap(),
            };
            let profile = KeyProfile {
                name: name.clone(),
                role: p.role,
                id: p.id.or(defaults.id),
                label: p.label,
                bits: p.bits.unwrap_or(defaults.bits),
                mechanisms: p.mechanisms.unwrap_or(defaults.mechanisms),
            };
            profile.validate()?;
            profiles.insert(name, profile);
        }
        Ok(Self {
            module: raw.module.map(abs).unwrap_or_else(|| DEFAULT_MODULE.into()),
            token,
            pin,
            so_pin,
            sessions: raw.sessions,
            profiles,
        })
    }

    /// The user PIN and a permission warning, if any.
    pub fn user_pin(&self) -> Result<Pin> {
        self.pin.read()
    }

    /// The SO PIN (for `hsm init`).
    pub fn so_pin(&self) -> Result<Pin> {
        self.so_pin
            .as_ref()
            .ok_or_else(|| {
                HsmError::Config(
                    "[hsm] needs so_pin_file (or so_pin_credential) for the SO PIN; `etee hsm \
                     init --so-pin-shares M/N` makes a random one and splits it instead"
                        .into(),
                )
            })?
            .read()
    }

    /// A profile by name.
    pub fn profile(&self, name: &str) -> Result<&KeyProfile> {
        self.profiles.get(name).ok_or_else(|| {
            HsmError::Config(format!(
                "no key profile {name:?} (have: {})",
                self.profiles.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        })
    }

    /// The pool size: the configured one, else the core count (at least 2, at most 8),
    /// capped by the token's session limit.
    pub fn pool_size(&self, token_max_sessions: Option<u64>) -> usize {
        let auto = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
            .clamp(2, MAX_AUTO_SESSIONS);
        let n = self.sessions.unwrap_or(auto);
        match token_max_sessions {
            Some(max) if (max as usize) < n => (max as usize).max(1),
            _ => n,
        }
    }
}

fn builtin_profiles() -> BTreeMap<String, KeyProfile> {
    [
        KeyProfile::authentication(),
        KeyProfile::etk(),
        KeyProfile::kgss_wrap(),
    ]
    .into_iter()
    .map(|p| (p.name.clone(), p))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_file() {
        let c = Config::from_toml(
            "[hsm]\nmodule = \"/m.so\"\ntoken_label = \"t\"\npin_file = \"u.pin\"\nso_pin_file = \"/s.pin\"\n",
            Path::new("/etc/etee"),
        )
        .unwrap()
        .hsm;
        assert_eq!(c.module, PathBuf::from("/m.so"));
        assert_eq!(c.token, TokenSelector::label("t"));
        assert_eq!(c.pin, PinSource::File("/etc/etee/u.pin".into()));
        assert_eq!(c.so_pin, Some(PinSource::File("/s.pin".into())));
        assert_eq!(c.profiles.len(), 3);
        assert_eq!(c.profile("kgss-wrap").unwrap(), &KeyProfile::kgss_wrap());
        assert_eq!(c.profile("authentication").unwrap().bits, 2048);
        assert!(c.pool_size(None) >= 2);
        assert_eq!(c.pool_size(Some(1)), 1);
    }

    #[test]
    fn the_custody_server_uid_is_read() {
        let read = |extra: &str| {
            Config::from_toml(
                &format!("[hsm]\ntoken_label = \"t\"\npin_file = \"/p\"\n{extra}"),
                Path::new("/"),
            )
            .map(|c| c.custody.server_uid)
        };
        assert_eq!(read("").unwrap(), None);
        assert_eq!(read("[custody]\nserver_uid = 998\n").unwrap(), Some(998));
        assert!(read("[custody]\nserver_uid = -1\n").is_err());
        assert!(read("[custody]\nserver_uid = \"etee\"\n").is_err());
    }

    #[test]
    fn defaults_and_refusals() {
        let c = Config::from_toml(
            "[hsm]\ntoken_serial = \"abc\"\npin_file = \"/p\"\n",
            Path::new("/"),
        )
        .unwrap()
        .hsm;
        assert_eq!(c.module, PathBuf::from(DEFAULT_MODULE));
        assert!(c.so_pin.is_none());
        for bad in [
            "[hsm]\npin_file = \"/p\"\n",
            "[hsm]\ntoken_label = \"t\"\n",
            "[hsm]\ntoken_label = \"t\"\npin_file = \"/p\"\npin-file = \"/q\"\n",
            "[hsm]\ntoken_label = \"t\"\npin_file = \"/p\"\n[hsm.profiles.x]\nrole = \"etk\"\nmechanisms = [\"CKM_RSA_PKCS_PSS\"]\n",
            "[hsm]\ntoken_label = \"t\"\npin_file = \"/p\"\n[hsm.profiles.x]\nrole = \"authentication\"\nbits = 1024\n",
            "[hsm]\ntoken_label = \"t\"\npin_file = \"/p\"\n[hsm.profiles.x]\nrole = \"etk\"\nextractable = true\n",
            "[hsm]\ntoken_label = \"t\"\npin_file = \"/p\"\n[hsm.profiles.x]\nrole = \"wrapping\"\nbits = 2048\n",
            "[hsm]\ntoken_label = \"t\"\npin_file = \"/p\"\n[hsm.profiles.x]\nrole = \"wrapping\"\nmechanisms = [\"CKM_RSA_PKCS\"]\n",
            "[hsm]\ntoken_label = \"t\"\npin_file = \"/p\"\n[hsm.profiles.x]\nrole = \"etk\"\nmechanisms = [\"CKM_AES_KEY_WRAP\"]\n",
            "[other]\n",
        ] {
            assert!(Config::from_toml(bad, Path::new("/")).is_err(), "{bad}");
        }
        // A misspelt table is refused, not ignored (its settings would fall back to
        // defaults: here the custody core in process instead of a separate one).
        let e = Config::from_toml(
            "[hsm]\ntoken_label = \"t\"\npin_file = \"/p\"\n[custdy]\nmode = \"process\"\n",
            Path::new("/"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("custdy") && e.contains("custody"), "{e}");
    }

    #[test]
    fn example_file_in_hsm_config() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../hsm-config/institution.toml");
        let c = Config::load(&path).unwrap().hsm;
        assert_eq!(c.module, PathBuf::from(DEFAULT_MODULE));
        assert_eq!(c.token.label.as_deref(), Some("etee-institution"));
        assert!(matches!(&c.pin, PinSource::File(p) if p.ends_with("hsm-config/user.pin")));
        assert!(c.so_pin.is_some());
        assert_eq!(
            c.profile("authentication").unwrap(),
            &KeyProfile {
                label: Some("authentication".into()),
                ..KeyProfile::authentication()
            }
        );
        assert_eq!(c.profile("etk").unwrap(), &KeyProfile::etk());
        assert_eq!(c.profile("kgss-wrap").unwrap(), &KeyProfile::kgss_wrap());
    }

    /// The keys the example file shows commented out (`# key = value`, `# [custody]`) are
    /// read too, and those it calls defaults are the defaults.
    #[test]
    fn example_file_commented_keys_parse() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../hsm-config/institution.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let uncommented: String = text
            .lines()
            .map(|line| match line.strip_prefix("# ") {
                Some(rest)
                    if rest == "[custody]"
                        || rest.split_once(" = ").is_some_and(|(key, _)| {
                            !key.is_empty()
                                && key.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                        }) =>
                {
                    rest
                }
                _ => line,
            })
            .map(|line| format!("{line}\n"))
            .collect();
        assert!(uncommented.contains("\n[custody]\n"), "{uncommented}");
        let base = Path::new("/etc/etee");
        let c = Config::from_toml(&uncommented, base).unwrap();
        let defaults = CustodyConfig::defaults(&c.hsm, base);
        assert_eq!(c.hsm.sessions, Some(4));
        assert_eq!(c.hsm.token.serial.as_deref(), Some("1a2b3c4d5e6f7081"));
        assert_eq!(c.custody.audit_file, defaults.audit_file);
        assert_eq!(c.custody.client, defaults.client);
        assert_eq!(c.custody.mode, CustodyMode::InProcess);
        assert_eq!(
            c.custody.socket,
            Some(PathBuf::from("/run/etee/custody.sock"))
        );
        assert_eq!(c.custody.allowed_uids, [1001]);
        assert_eq!(c.custody.server_uid, Some(998));
        assert_eq!(c.custody.budget, crate::custody::DEFAULT_BUDGET);
        assert_eq!(
            c.custody.audit_segment_bytes,
            Some(DEFAULT_AUDIT_SEGMENT_BYTES)
        );
    }

    #[test]
    fn wrapping_profiles() {
        let c = Config::from_toml(
            "[hsm]\ntoken_label = \"t\"\npin_file = \"/p\"\n[hsm.profiles.kw128]\nrole = \"wrapping\"\nid = \"kw128\"\nbits = 128\n",
            Path::new("/"),
        )
        .unwrap()
        .hsm;
        let p = c.profile("kw128").unwrap();
        assert_eq!((p.role, p.bits), (KeyRole::Wrapping, 128));
        assert_eq!(p.mechanism_types(), [MechanismType::AES_KEY_WRAP]);
    }

    #[test]
    fn custody_table() {
        let base = Path::new("/etc/etee");
        let minimal = "[hsm]\ntoken_label = \"lab el/1\"\npin_file = \"user.pin\"\n";
        let c = Config::from_toml(minimal, base).unwrap();
        assert_eq!(
            c.custody.audit_file,
            PathBuf::from("/etc/etee/audit-lab_el_1.log")
        );
        assert_eq!(c.custody.client, DEFAULT_CUSTODY_CLIENT);
        let full = format!("{minimal}[custody]\naudit_file = \"log/chain\"\nclient = \"app\"\n");
        let c = Config::from_toml(&full, base).unwrap();
        assert_eq!(c.custody.audit_file, PathBuf::from("/etc/etee/log/chain"));
        assert_eq!(c.custody.client, "app");
        assert_eq!(c.custody.mode, CustodyMode::InProcess);
        let process = format!("{minimal}[custody]\nmode = \"process\"\nsocket = \"run/c.sock\"\n");
        let c = Config::from_toml(&process, Path::new("/etc/etee")).unwrap();
        assert_eq!(c.custody.mode, CustodyMode::Process);
        assert_eq!(
            c.custody.socket,
            Some(PathBuf::from("/etc/etee/run/c.sock"))
        );
        let no_socket = format!("{minimal}[custody]\nmode = \"process\"\n");
        assert!(Config::from_toml(&no_socket, Path::new("/etc/etee")).is_err());
        let bad_mode = format!("{minimal}[custody]\nmode = \"remote\"\n");
        assert!(Config::from_toml(&bad_mode, Path::new("/etc/etee")).is_err());
        let typo = format!("{minimal}[custody]\naudit = \"x\"\n");
        assert!(Config::from_toml(&typo, base).is_err());
        let long = format!("{minimal}[custody]\nclient = \"{}\"\n", "c".repeat(33));
        assert!(Config::from_toml(&long, base).is_err());
        // The budget: the default, one value changed, and nonsense refused.
        let c = Config::from_toml(minimal, base).unwrap();
        assert_eq!(c.custody.budget, crate::custody::DEFAULT_BUDGET);
        let faster = format!("{minimal}[custody]\nbudget_per_second = 20000\n");
        let c = Config::from_toml(&faster, base).unwrap();
        assert_eq!(
            (c.custody.budget.burst, c.custody.budget.per_second),
            (crate::custody::DEFAULT_BUDGET.burst, 20_000)
        );
        assert_eq!(
            c.custody.audit_segment_bytes,
            Some(DEFAULT_AUDIT_SEGMENT_BYTES)
        );
        let one = format!("{minimal}[custody]\naudit_segment_bytes = 0\n");
        assert_eq!(
            Config::from_toml(&one, base)
                .unwrap()
                .custody
                .audit_segment_bytes,
            None
        );
        let small = format!("{minimal}[custody]\naudit_segment_bytes = 1048576\n");
        assert_eq!(
            Config::from_toml(&small, base)
                .unwrap()
                .custody
                .audit_segment_bytes,
            Some(1 << 20)
        );
        for bad in [
            "audit_segment_bytes = 100",
            "budget_burst = 0",
            "budget_per_second = 0",
            "budget_burst = -1",
        ] {
            let text = format!("{minimal}[custody]\n{bad}\n");
            assert!(Config::from_toml(&text, base).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_pin_written_where_its_files_path_belongs_is_not_shown() {
        let dir = tempfile::tempdir().unwrap();
        let source = PinSource::File(dir.path().join("s3cretPIN999"));
        let text = source.read().err().unwrap().to_string();
        assert!(!text.contains("s3cretPIN999"), "{text}");
        assert!(
            text.contains(&dir.path().display().to_string()),
            "the directory is: {text}"
        );
        assert!(text.contains("no such file"), "{text}");
        // Any other failure names the file, as before.
        let unreadable = dir.path().join("a-directory");
        std::fs::create_dir(&unreadable).unwrap();
        let text = PinSource::File(unreadable)
            .read()
            .err()
            .unwrap()
            .to_string();
        assert!(text.contains("a-directory"), "{text}");
    }

    #[test]
    fn pin_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pin");
        std::fs::write(&p, "12 34\r\n").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        let (pin, warning) = read_pin_file_checked(&p).unwrap();
        assert_eq!(pin.expose(), "12 34");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert!(warning.unwrap().contains("chmod 600"));
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
            assert!(read_pin_file_checked(&p).unwrap().1.is_none());
        }
        let _ = warning;
        std::fs::write(&p, "\n").unwrap();
        let err = read_pin_file(&p).err().unwrap().to_string();
        assert!(err.contains("empty"), "{err}");
        // Exactly one line ending goes; anything else is the PIN's, and hinted at.
        let source = PinSource::File(p.clone());
        for (content, pin, hinted) in [
            ("1234\n", "1234", false),
            ("1234\r\n", "1234", false),
            ("1234", "1234", false),
            ("1234\n\n", "1234\n", true),
            ("1234\r", "1234\r", true),
            ("1234 \n", "1234 ", true),
            (" 1234", " 1234", true),
        ] {
            std::fs::write(&p, content).unwrap();
            assert_eq!(read_pin_file(&p).unwrap().expose(), pin, "{content:?}");
            let hint = source.whitespace_hint();
            assert_eq!(hint.is_some(), hinted, "{content:?}: {hint:?}");
            if let Some(h) = hint {
                assert!(!h.contains("1234"), "the hint shows no PIN: {h}");
            }
        }
        std::fs::write(&p, [0xff, 0xfe]).unwrap();
        assert!(read_pin_file(&p).is_err());
        assert!(read_pin_file(&dir.path().join("missing")).is_err());
    }

    /// A TOML error says where, and what, but not the line: it may hold a secret.
    #[test]
    fn toml_errors_do_not_echo_the_file() {
        let text = "[hsm]\nmodule = \"/m.so\"\npin = \"user-pin-4321\"\n";
        let err = Config::from_toml(text, Path::new("/etc/etee"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 3, column 1"), "{err}");
        assert!(err.contains("unknown field `pin`"), "{err}");
        assert!(!err.contains("4321"), "{err}");
        for (line, secret) in [
            ("pin_file = 123456", "123456"),
            ("token_label = [\"S3cret\"]", "S3cret"),
            ("sessions = \"S3cret\"", "S3cret"),
        ] {
            let text = format!("[hsm]\nmodule = \"/m.so\"\n{line}\n");
            let err = Config::from_toml(&text, Path::new("/etc/etee"))
                .unwrap_err()
                .to_string();
            assert!(err.contains("line 3") && err.contains("expected"), "{err}");
            assert!(!err.contains(secret), "{err}");
        }
        let unquoted = "[hsm]\nmodule = postgres://etee:S3cretPW@db/etee\n";
        let err = Config::from_toml(unquoted, Path::new("/etc/etee"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2"), "{err}");
        assert!(!err.contains("S3cretPW"), "{err}");
    }

    /// Relative paths of a configuration named without a directory are taken from the
    /// working directory, as absolute paths (a bare module name would be looked up by
    /// `dlopen` in the library path).
    #[test]
    fn a_configuration_without_a_directory_gives_absolute_paths() {
        let dir = config_dir(Path::new("etee.toml"));
        assert!(dir.is_absolute(), "{}", dir.display());
        assert_eq!(dir, std::env::current_dir().unwrap());
        assert_eq!(
            config_dir(Path::new("/etc/etee/a.toml")),
            Path::new("/etc/etee")
        );
    }

    /// A PIN file someone else may write, or owned by another user, is refused (its mode
    /// or owner named); one only readable by others is used, with a warning.
    #[test]
    fn pin_files_others_may_write_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pin");
        std::fs::write(&p, "1234\n").unwrap();
        for mode in [0o620, 0o602, 0o666] {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            let err = read_pin_file_checked(&p).err().unwrap().to_string();
            assert!(
                err.contains("writable by group or others"),
                "{mode:o}: {err}"
            );
        }
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let (pin, warning) = read_pin_file_checked(&p).unwrap();
        assert_eq!(pin.expose(), "1234");
        assert!(warning.is_some());
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        // Another owner: only root can give a file away, as the suite does when run as root.
        let me = nix::unistd::getuid().as_raw();
        if me == 0 {
            std::os::unix::fs::chown(&p, Some(65534), None).unwrap();
            let err = read_pin_file_checked(&p).err().unwrap().to_string();
            assert!(err.contains("owned by uid 65534"), "{err}");
        }
    }

    /// A credential is a plain file name in systemd's credentials directory.
    #[test]
    fn credential_names_are_plain() {
        for bad in ["", ".", "..", "a/b"] {
            let text = format!(
                "[hsm]\nmodule = \"/m.so\"\ntoken_label = \"t\"\npin_credential = {bad:?}\n"
            );
            let err = Config::from_toml(&text, Path::new("/etc/etee"))
                .unwrap_err()
                .to_string();
            assert!(err.contains("plain name"), "{bad:?}: {err}");
        }
        let text =
            "[hsm]\nmodule = \"/m.so\"\ntoken_label = \"t\"\npin_credential = \"user-pin\"\n";
        assert!(Config::from_toml(text, Path::new("/etc/etee")).is_ok());
    }
}
