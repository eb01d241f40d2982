//! The PKCS#11 module and its tokens.
//!
//! A module is loaded and `C_Initialize`d (OS locking) **once per process**: [`Module::load`]
//! keeps a process-wide registry by path, because a second `C_Initialize` of the same
//! library fails and dropping a second handle would `C_Finalize` it under everyone's feet.
//! Handles are never finalised; after a `CKR_CRYPTOKI_NOT_INITIALIZED` (someone finalised
//! the library) the pool asks the module to initialise it again.
//!
//! Tokens are selected by label and/or serial, never by slot number (SoftHSM renumbers
//! slots when a token is initialised).

use crate::config::{HsmConfig, Pin, TokenSelector};
use crate::error::{CkContext, HsmError, PinKind, Result};
use cryptoki::context::{CInitializeArgs, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::{Slot, TokenInfo};
use serde::Serialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

static MODULES: OnceLock<Mutex<HashMap<PathBuf, Arc<Module>>>> = OnceLock::new();
/// Serialises token initialisation in this process (two inits could pick the same slot).
static INIT: Mutex<()> = Mutex::new(());
/// Serialises slot listing and token creation in this process: SoftHSM 2.6 refreshes its
/// slot table from the token directory on `C_GetSlotList`, and two threads doing it while
/// a new token appears can insert the same slot twice (an assertion in
/// `SlotManager::insertToken`, or memory corruption).
static SLOTS: Mutex<()> = Mutex::new(());

fn slots_guard() -> std::sync::MutexGuard<'static, ()> {
    SLOTS.lock().unwrap_or_else(|p| p.into_inner())
}

/// A loaded, initialised PKCS#11 library.
pub struct Module {
    path: PathBuf,
    state: RwLock<ModuleState>,
}

struct ModuleState {
    ctx: Pkcs11,
    /// Bumped by every re-initialisation; sessions opened under an older generation are
    /// stale.
    generation: u64,
}

impl std::fmt::Debug for Module {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Module").field("path", &self.path).finish()
    }
}

impl Module {
    /// The module at `path`, loaded and initialised on first use in this process.
    pub fn load(path: &Path) -> Result<Arc<Module>> {
        let key = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        let mut modules = MODULES
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(m) = modules.get(&key) {
            return Ok(m.clone());
        }
        if !path.exists() {
            return Err(HsmError::Module {
                module: path.to_path_buf(),
                reason: "no such file; install SoftHSM2 (bash hsm-config/setup.sh) or set [hsm] module to your HSM's PKCS#11 library".into(),
            });
        }
        let ctx = open_library(path)?;
        let module = Arc::new(Module {
            path: path.to_path_buf(),
            state: RwLock::new(ModuleState { ctx, generation: 0 }),
        });
        modules.insert(key, module.clone());
        Ok(module)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The current cryptoki handle and its generation.
    pub(crate) fn context(&self) -> (Pkcs11, u64) {
        let st = self.state.read().unwrap_or_else(|p| p.into_inner());
        (st.ctx.clone(), st.generation)
    }

    /// Initialises the library again after it was finalised behind our back, unless a
    /// newer generation than `seen` exists already. The old handle is leaked on purpose:
    /// dropping it would `C_Finalize` the library again.
    pub(crate) fn reinitialize(&self, seen: u64) -> Result<()> {
        let mut st = self.state.write().unwrap_or_else(|p| p.into_inner());
        if st.generation != seen {
            return Ok(());
        }
        let ctx = open_library(&self.path)?;
        let old = std::mem::replace(&mut st.ctx, ctx);
        std::mem::forget(old);
        st.generation += 1;
        Ok(())
    }

    /// Every token present, initialised or not.
    pub fn tokens(&self) -> Result<Vec<TokenSummary>> {
        let (ctx, _) = self.context();
        let _slots = slots_guard();
        let slots = ctx.get_slots_with_token().ctx("listing slots")?;
        slots
            .into_iter()
            .map(|s| {
                Ok(TokenSummary::new(
                    s,
                    &ctx.get_token_info(s).ctx("token info")?,
                ))
            })
            .collect()
    }

    /// The slot holding the initialised token `selector` names; exactly one must match.
    pub fn find_token(&self, selector: &TokenSelector) -> Result<(Slot, TokenInfo)> {
        let (ctx, _) = self.context();
        find_token(&ctx, selector, &self.path)
    }
}

fn open_library(path: &Path) -> Result<Pkcs11> {
    let fail = |reason: String| HsmError::Module {
        module: path.to_path_buf(),
        reason,
    };
    // cryptoki panics (in cryptoki-sys) on a library without C_GetFunctionList, such as a
    // wrong `.so` given as the module: look for the symbol's name first (every PKCS#11
    // module exports it, so it is in the file's dynamic string table), and catch the panic
    // should a file name the symbol without exporting it.
    let not_pkcs11 = || {
        fail(
            "not a PKCS#11 module (it does not export C_GetFunctionList): set [hsm] module to \
             your HSM's PKCS#11 library"
                .into(),
        )
    };
    let bytes = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
    if !bytes
        .windows(b"C_GetFunctionList\0".len())
        .any(|w| w == b"C_GetFunctionList\0")
    {
        return Err(not_pkcs11());
    }
    drop(bytes);
    let ctx = std::panic::catch_unwind(|| Pkcs11::new(path))
        .map_err(|_| not_pkcs11())?
        .map_err(|e| fail(e.to_string()))?;
    // SoftHSM builds its slot table in C_Initialize: not while another thread lists slots.
    let _listing = slots_guard();
    match ctx.initialize(CInitializeArgs::OsThreads) {
        // Another component of this process initialised it: share it.
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => Ok(ctx),
        Err(e) => Err(fail(format!(
            "C_Initialize: {}{}",
            HsmError::ck(e, "").ckr().unwrap_or_default(),
            softhsm_hint(path)
        ))),
    }
}

/// For SoftHSM2, which reads its token directory from the file named by `SOFTHSM2_CONF`
/// (else `/etc/softhsm/softhsm2.conf`): which file that is and whether it exists, the
/// usual cause of "no token" and of a failed `C_Initialize` on a test rig. Empty for other
/// modules.
pub(crate) fn softhsm_hint(module: &Path) -> String {
    if !module.to_string_lossy().contains("softhsm") {
        return String::new();
    }
    let (conf, how) = match std::env::var_os("SOFTHSM2_CONF") {
        Some(c) => (std::path::PathBuf::from(c), "SOFTHSM2_CONF"),
        None => (
            std::path::PathBuf::from("/etc/softhsm/softhsm2.conf"),
            "SOFTHSM2_CONF unset, the default",
        ),
    };
    let state = if conf.is_file() {
        ""
    } else {
        ", which does not exist"
    };
    format!(
        "; SoftHSM2 reads its tokens from the directory named in {} ({how}{state})",
        conf.display()
    )
}

pub(crate) fn find_token(
    ctx: &Pkcs11,
    selector: &TokenSelector,
    module: &Path,
) -> Result<(Slot, TokenInfo)> {
    let _listing = slots_guard();
    let slots = ctx.get_slots_with_token().ctx("listing slots")?;
    let mut found = Vec::new();
    let mut present = Vec::new();
    for slot in slots {
        let info = ctx.get_token_info(slot).ctx("token info")?;
        if !info.token_initialized() {
            continue;
        }
        present.push(format!(
            "{:?} (serial {})",
            info.label().trim_end(),
            info.serial_number().trim_end()
        ));
        if selector.matches(info.label(), info.serial_number()) {
            found.push((slot, info));
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(HsmError::TokenNotFound {
            selector: selector.to_string(),
            module: module.to_path_buf(),
            present: if present.is_empty() {
                "none initialised".into()
            } else {
                present.join(", ")
            },
            hint: softhsm_hint(module),
        }),
        n => Err(HsmError::Config(format!(
            "{n} tokens match {selector}; add token_serial to choose one"
        ))),
    }
}

/// Logs `kind` in; `CKR_USER_ALREADY_LOGGED_IN` is success (login state is shared by all
/// sessions of the process).
pub(crate) fn login(session: &Session, kind: PinKind, pin: &Pin, token: &str) -> Result<()> {
    let user = match kind {
        PinKind::User => UserType::User,
        PinKind::SecurityOfficer => UserType::So,
    };
    match session.login(user, Some(&pin.auth())) {
        Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(()),
        Err(CkError::Pkcs11(RvError::PinIncorrect, _)) => Err(HsmError::WrongPin {
            kind,
            token: token.into(),
        }),
        Err(CkError::Pkcs11(RvError::PinLocked, _)) => Err(HsmError::PinLocked {
            kind,
            token: token.into(),
        }),
        Err(CkError::Pkcs11(RvError::UserPinNotInitialized, _)) => {
            Err(HsmError::UserPinNotInitialized(token.into()))
        }
        Err(e) => Err(HsmError::ck(e, format!("logging in to {token}"))),
    }
}

/// What `etee hsm init` and `etee keys list` say about a token.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct TokenSummary {
    /// Informational only: slot numbers change, tokens are found by label or serial.
    pub slot: u64,
    pub label: String,
    pub serial: String,
    pub manufacturer: String,
    pub model: String,
    pub initialized: bool,
    pub user_pin_initialized: bool,
    /// The token reports failed user logins (CKF_USER_PIN_COUNT_LOW).
    pub user_pin_count_low: bool,
    pub user_pin_final_try: bool,
    pub user_pin_locked: bool,
    pub max_sessions: Option<u64>,
}

impl TokenSummary {
    pub(crate) fn new(slot: Slot, t: &TokenInfo) -> Self {
        Self {
            slot: slot.id(),
            label: t.label().trim_end().into(),
            serial: t.serial_number().trim_end().into(),
            manufacturer: t.manufacturer_id().trim_end().into(),
            model: t.model().trim_end().into(),
            initialized: t.token_initialized(),
            user_pin_initialized: t.user_pin_initialized(),
            user_pin_count_low: t.user_pin_count_low(),
            user_pin_final_try: t.user_pin_final_try(),
            user_pin_locked: t.user_pin_locked(),
            max_sessions: t.max_session_count().into(),
        }
    }

    /// How a message names the token.
    pub fn name(&self) -> String {
        format!("{:?} (serial {})", self.label, self.serial)
    }
}

/// The configured token's summary (flags, PIN state), found as every command finds it
/// (initialised, by label and/or serial, unambiguous), without logging in.
pub fn token_summary(config: &HsmConfig) -> Result<TokenSummary> {
    let module = Module::load(&config.module)?;
    let (slot, info) = module.find_token(&config.token)?;
    Ok(TokenSummary::new(slot, &info))
}

/// `etee hsm init`: initialises a free token with the configured label and SO PIN, then
/// sets the user PIN. Refuses a token that is already initialised. With `token_serial`,
/// the uninitialised token with that serial is used; otherwise the first free one
/// (SoftHSM always offers one).
pub fn init_token(config: &HsmConfig) -> Result<TokenSummary> {
    let so_pin = config.so_pin()?;
    init_token_with(config, &so_pin)
}

/// [`init_token`] with an SO PIN from elsewhere than the configuration (a new random one
/// whose shares are handed out: [`crate::so_shares`]).
pub fn init_token_with(config: &HsmConfig, so_pin: &Pin) -> Result<TokenSummary> {
    init_token_reporting(config, so_pin).map_err(|e| e.error)
}

/// Why `hsm init` failed, and whether the token was initialised (`C_InitToken` with the
/// new SO PIN) before it did: only then is that SO PIN worth keeping.
#[derive(Debug)]
pub struct InitError {
    pub error: HsmError,
    /// `C_InitToken` succeeded (the token now has the new label and SO PIN) and a later
    /// step failed.
    pub token_initialised: bool,
}

/// Checks, without changing anything, that [`init_token_with`] could initialise a token
/// with `so_pin` now: a label, a readable user PIN, no initialised token with the
/// configured label or serial, a free token, both PINs of a length the token takes. Run
/// it before writing anything that is only worth having if the token is initialised.
pub fn check_init(config: &HsmConfig, so_pin: &Pin) -> Result<()> {
    init_label(config)?;
    let user_pin = config.user_pin()?;
    let module = Module::load(&config.module)?;
    let _guard = INIT.lock().unwrap_or_else(|p| p.into_inner());
    let (ctx, _) = module.context();
    free_slot(&ctx, config, so_pin, &user_pin).map(|_| ())
}

/// [`init_token_with`], saying whether a failure came before or after `C_InitToken`.
pub fn init_token_reporting(
    config: &HsmConfig,
    so_pin: &Pin,
) -> std::result::Result<TokenSummary, InitError> {
    let before = |error| InitError {
        error,
        token_initialised: false,
    };
    let label = init_label(config).map_err(before)?;
    let user_pin = config.user_pin().map_err(before)?;
    let module = Module::load(&config.module).map_err(before)?;
    let _guard = INIT.lock().unwrap_or_else(|p| p.into_inner());
    let (ctx, _) = module.context();
    let (slot, creating) = free_slot(&ctx, config, so_pin, &user_pin).map_err(before)?;
    ctx.init_token(slot, &so_pin.auth(), label)
        .map_err(|e| match e {
            CkError::Pkcs11(RvError::PinIncorrect, _) => HsmError::WrongPin {
                kind: PinKind::SecurityOfficer,
                token: label.into(),
            },
            e => HsmError::ck(e, format!("initialising token {label:?}")),
        })
        .map_err(before)?;
    drop(creating);
    let after = |error| InitError {
        error,
        token_initialised: true,
    };
    // The token may have moved to another slot: find it again by label.
    let selector = TokenSelector::label(label);
    let (slot, info) = find_token(&ctx, &selector, &config.module).map_err(after)?;
    let name = TokenSummary::new(slot, &info).name();
    (|| {
        let session = ctx.open_rw_session(slot).ctx("opening a session")?;
        login(&session, PinKind::SecurityOfficer, so_pin, &name)?;
        session
            .init_pin(&user_pin.auth())
            .ctx("setting the user PIN")?;
        session.logout().ctx("logging out")?;
        let info = ctx.get_token_info(slot).ctx("token info")?;
        Ok(TokenSummary::new(slot, &info))
    })()
    .map_err(after)
}

/// The label `hsm init` gives the token.
fn init_label(config: &HsmConfig) -> Result<&str> {
    config
        .token
        .label
        .as_deref()
        .ok_or_else(|| HsmError::Config("[hsm] token_label is needed to initialise a token".into()))
}

/// Refuses a user PIN equal to the SO PIN. The two roles exist to be held apart: whoever
/// has the SO PIN can set a new user PIN, and the user PIN sits in a file the service reads.
fn roles_apart(so_pin: &Pin, user_pin: &Pin) -> Result<()> {
    if so_pin.expose() == user_pin.expose() {
        return Err(HsmError::Config(
            "the user PIN (pin_file) and the SO PIN are the same: give the security officer \
             a PIN of their own"
                .into(),
        ));
    }
    Ok(())
}

/// The slot of the free token `hsm init` would initialise: refused when a token with the
/// configured label or serial is already initialised (that would destroy its keys), when
/// none is free, or when a PIN does not fit the token's lengths (a user PIN it refuses
/// after `C_InitToken` would leave an initialised token without one). The slot listing
/// stays serialised (the guard returned) until the token is created.
fn free_slot(
    ctx: &Pkcs11,
    config: &HsmConfig,
    so_pin: &Pin,
    user_pin: &Pin,
) -> Result<(Slot, std::sync::MutexGuard<'static, ()>)> {
    roles_apart(so_pin, user_pin)?;
    match find_token(ctx, &config.token, &config.module) {
        Ok(_) => return Err(HsmError::TokenAlreadyInitialized(config.token.to_string())),
        Err(HsmError::TokenNotFound { .. }) => {}
        // Several initialised tokens carry the label: refused before anything is touched
        // (a free token initialised with it would only add one more).
        Err(e) => return Err(e),
    }
    let listing = slots_guard();
    let mut free = None;
    for slot in ctx.get_slots_with_token().ctx("listing slots")? {
        let info = ctx.get_token_info(slot).ctx("token info")?;
        let serial_ok = config
            .token
            .serial
            .as_deref()
            .is_none_or(|s| s == info.serial_number().trim_end());
        if serial_ok {
            if info.token_initialized() && config.token.serial.is_some() {
                return Err(HsmError::TokenAlreadyInitialized(format!(
                    "serial {:?} (label {:?})",
                    info.serial_number().trim_end(),
                    info.label().trim_end()
                )));
            }
            if !info.token_initialized() {
                free = Some((slot, info.min_pin_length(), info.max_pin_length()));
                break;
            }
        }
    }
    let (slot, min_pin, max_pin) = free.ok_or_else(|| HsmError::TokenNotFound {
        selector: match &config.token.serial {
            Some(s) => format!("an uninitialised token with serial {s:?}"),
            None => "an uninitialised token".into(),
        },
        module: config.module.clone(),
        present: "every token is initialised".into(),
        hint: softhsm_hint(&config.module),
    })?;
    for (kind, pin) in [
        (PinKind::SecurityOfficer, so_pin),
        (PinKind::User, user_pin),
    ] {
        let len = pin.expose().len();
        if len < min_pin || (max_pin > 0 && len > max_pin) {
            return Err(HsmError::Invalid(format!(
                "the {kind} PIN has {len} characters; this token takes {min_pin} to {max_pin}"
            )));
        }
    }
    Ok((slot, listing))
}

/// `etee hsm init-pin`: the security officer sets the token's user PIN to the configured
/// one (`C_InitPIN`): after a lock-out (CKR_PIN_LOCKED), or to change a PIN nobody knows
/// any more. The token's keys are untouched.
pub fn init_user_pin(config: &HsmConfig, so_pin: &Pin) -> Result<TokenSummary> {
    let user_pin = config.user_pin()?;
    roles_apart(so_pin, &user_pin)?;
    let module = Module::load(&config.module)?;
    let (ctx, _) = module.context();
    let (slot, info) = find_token(&ctx, &config.token, &config.module)?;
    let name = TokenSummary::new(slot, &info).name();
    {
        let session = ctx.open_rw_session(slot).ctx("opening a session")?;
        login(&session, PinKind::SecurityOfficer, so_pin, &name)?;
        let set = session
            .init_pin(&user_pin.auth())
            .ctx("setting the user PIN");
        let _ = session.logout();
        set?;
    }
    let info = ctx.get_token_info(slot).ctx("token info")?;
    Ok(TokenSummary::new(slot, &info))
}
