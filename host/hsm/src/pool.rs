//! A small pool of logged-in PKCS#11 sessions, lent to the threads that use them.
//!
//! [`SessionPool::run`] borrows a free session (waiting if every session is busy), runs the
//! job on the calling thread and gives the session back. One session serves one operation
//! at a time. cryptoki calls block (a network HSM may take milliseconds), so `run` is for
//! threads that may block: the CLI, the custody server's connection threads, and, from
//! async code, tokio's blocking pool (`spawn_blocking`) — never an async worker thread.
//! (An earlier version handed every job to a dedicated thread per session; the hand-off
//! cost about 0.3 ms per operation on the 2-core VM, a quarter of an RSA decryption,
//! see `docs/benchmarks-hsm.md`.)
//!
//! The user logs in once (login state is shared by every session of the process;
//! `CKR_USER_ALREADY_LOGGED_IN` is success). When an operation fails with a session or
//! device error, the worker recovers and retries **once**:
//!
//! | return value | recovery |
//! |---|---|
//! | `CKR_CRYPTOKI_NOT_INITIALIZED` | `C_Initialize` again, new sessions, log in |
//! | `CKR_SESSION_HANDLE_INVALID`, `CKR_SESSION_CLOSED`, `CKR_DEVICE_ERROR`, `CKR_DEVICE_REMOVED`, `CKR_TOKEN_NOT_PRESENT`, `CKR_TOKEN_NOT_RECOGNIZED`, `CKR_SLOT_ID_INVALID`, `CKR_GENERAL_ERROR` | find the token again by label/serial, new sessions, log in |
//! | `CKR_USER_NOT_LOGGED_IN`, `CKR_OPERATION_ACTIVE`, or any failure while the session shows as logged out | a new session in place of this one, logged in |
//! | `CKR_KEY_HANDLE_INVALID`, `CKR_OBJECT_HANDLE_INVALID` | find the keys again by CKA_ID/label |
//! | a private or secret key not found (while the session shows as logged in) | find the keys again: a logout hides them, and another session may have logged in again between the lookup and that check |
//!
//! A new session rather than the same one logged in again: an operation that a logout cut
//! short can stay active on the old session (SoftHSM leaves a signature's), and every later
//! call on it would fail with `CKR_OPERATION_ACTIVE`.
//!
//! A decryption's failure that the blob may have caused is final, with no recovery and no
//! retry, whatever happened: a probe of the session's state made only after failures
//! would time the padding. So a decryption in flight when the session is logged out
//! behind the pool's back, which SoftHSM answers as it answers a bad blob
//! (`CKR_GENERAL_ERROR`), fails as a damaged message would; the next operations recover.
//!
//! Sessions that may be dead are *forgotten*, not closed: after a library reset the same
//! handle number can belong to a new session of another worker, and closing it would kill
//! that one. Every worker drops its session when the pool's epoch moves on.

use crate::config::{HsmConfig, Pin, TokenSelector};
use crate::error::{CkContext, HsmError, PinKind, Result};
use crate::token::{find_token, login, Module, TokenSummary};
use cryptoki::error::RvError;
use cryptoki::object::{Attribute, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, SessionState};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};

/// A pool of logged-in sessions on one token. Dropping it closes the sessions.
pub struct SessionPool {
    shared: Arc<Shared>,
    /// The sessions not lent out.
    idle: Mutex<Vec<Worker>>,
    returned: Condvar,
    size: usize,
}

impl std::fmt::Debug for SessionPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionPool")
            .field("token", &self.shared.token_name)
            .field("size", &self.size)
            .finish()
    }
}

struct Shared {
    module: Arc<Module>,
    selector: TokenSelector,
    pin: Pin,
    token_name: String,
    /// Moves on when sessions must be dropped by every worker.
    epoch: AtomicU64,
    recoveries: AtomicU64,
    /// The last recoveries: what failed and what was done.
    recent: Mutex<std::collections::VecDeque<String>>,
    /// The token refused, at a later login, the PIN it accepted when the pool opened
    /// (changed or locked behind the service's back): nothing more is tried with it,
    /// since each try would be a guess the custody core does not count.
    pin_refused: std::sync::atomic::AtomicBool,
}

impl Shared {
    /// Logs in on `session` with the pool's PIN, unless the token refused it once already;
    /// a refusal stops every later try.
    fn login(&self, session: &Session) -> Result<()> {
        if self.pin_refused.load(Ordering::SeqCst) {
            return Err(self.pin_refused_error());
        }
        let logged_in = login(session, PinKind::User, &self.pin, &self.token_name);
        if let Err(HsmError::WrongPin { .. } | HsmError::PinLocked { .. }) = &logged_in {
            self.pin_refused.store(true, Ordering::SeqCst);
        }
        logged_in
    }

    fn pin_refused_error(&self) -> HsmError {
        HsmError::Config(format!(
            "token {}: the user PIN it accepted when the service started is refused now \
             (changed or locked behind the service's back); nothing more is tried with it \
             (each try would be an uncounted guess): restart with the right PIN file",
            self.token_name
        ))
    }
}

/// Recoveries remembered by [`SessionPool::recent_recoveries`].
const RECENT_RECOVERIES: usize = 16;

/// What a job sees: a logged-in session and a cache of object handles.
pub struct Conn<'a> {
    session: &'a Session,
    cache: &'a mut HashMap<(String, Vec<u8>), ObjectHandle>,
}

impl Conn<'_> {
    pub fn session(&self) -> &Session {
        self.session
    }

    /// The one object of `class` with CKA_ID `id` (else with CKA_LABEL `id`), cached.
    pub fn find_object(&mut self, class: ObjectClass, id: &[u8]) -> Result<ObjectHandle> {
        let key = (class.to_string(), id.to_vec());
        if let Some(h) = self.cache.get(&key) {
            return Ok(*h);
        }
        let mut hits = self
            .session
            .find_objects(&[Attribute::Class(class), Attribute::Id(id.to_vec())])
            .ctx("finding an object by CKA_ID")?;
        if hits.is_empty() {
            hits = self
                .session
                .find_objects(&[Attribute::Class(class), Attribute::Label(id.to_vec())])
                .ctx("finding an object by CKA_LABEL")?;
        }
        let what = class_name(class);
        match hits.len() {
            1 => {
                self.cache.insert(key, hits[0]);
                Ok(hits[0])
            }
            0 => Err(HsmError::NotFound {
                what,
                id: String::from_utf8_lossy(id).into_owned(),
            }),
            count => Err(HsmError::Ambiguous {
                what,
                id: String::from_utf8_lossy(id).into_owned(),
                count,
            }),
        }
    }

    /// Every object matching `template`.
    pub fn find_all(&self, template: &[Attribute]) -> Result<Vec<ObjectHandle>> {
        self.session.find_objects(template).ctx("finding objects")
    }

    /// Forgets cached handles (after objects were created, renamed or destroyed).
    pub fn forget_handles(&mut self) {
        self.cache.clear();
    }
}

pub(crate) fn class_name(class: ObjectClass) -> &'static str {
    if class == ObjectClass::PRIVATE_KEY {
        "private key"
    } else if class == ObjectClass::PUBLIC_KEY {
        "public key"
    } else if class == ObjectClass::SECRET_KEY {
        "secret key"
    } else if class == ObjectClass::CERTIFICATE {
        "certificate"
    } else {
        "object"
    }
}

struct Live {
    session: Session,
    epoch: u64,
    generation: u64,
}

/// One session of the pool, with its handle cache.
pub struct Worker {
    shared: Arc<Shared>,
    live: Option<Live>,
    cache: HashMap<(String, Vec<u8>), ObjectHandle>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Recovery {
    Reinitialize,
    Reopen,
    Relogin,
    Refind,
}

/// A key lookup that found nothing, of a class a logout hides (`CKA_PRIVATE` objects).
fn hidden_by_logout(e: &HsmError) -> bool {
    matches!(e, HsmError::NotFound { what, .. }
        if *what == class_name(ObjectClass::PRIVATE_KEY) || *what == class_name(ObjectClass::SECRET_KEY))
}

fn recovery_for(e: &HsmError) -> Option<Recovery> {
    use RvError::*;
    match e.rv()? {
        CryptokiNotInitialized => Some(Recovery::Reinitialize),
        SessionHandleInvalid | SessionClosed | DeviceError | DeviceRemoved | TokenNotPresent
        | TokenNotRecognized | SlotIdInvalid | GeneralError => Some(Recovery::Reopen),
        UserNotLoggedIn | OperationActive => Some(Recovery::Relogin),
        KeyHandleInvalid | ObjectHandleInvalid => Some(Recovery::Refind),
        _ => None,
    }
}

impl Worker {
    fn execute<T>(&mut self, f: &mut dyn FnMut(&mut Conn<'_>) -> Result<T>) -> Result<T> {
        let mut retried = false;
        loop {
            let result = self.ensure_session().and_then(|()| {
                let live = self.live.as_ref().ok_or(HsmError::PoolStopped)?;
                let mut conn = Conn {
                    session: &live.session,
                    cache: &mut self.cache,
                };
                f(&mut conn)
            });
            let err = match result {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            if retried {
                return Err(err);
            }
            // What the blob may have caused is final, and answered without one more call
            // to the token: an extra call only after a failure would time the padding.
            if matches!(err, HsmError::DecryptFailed(_) | HsmError::UnwrapFailed(_)) {
                return Err(err);
            }
            // Logged out behind our back (private keys invisible, an operation cut short):
            // whatever the call answered, log in again and retry. Asked after every
            // failure alike, and answered by the session's state alone, so that it says
            // nothing about a ciphertext (decryption failures stay opaque otherwise).
            let recovery = match recovery_for(&err) {
                _ if self.logged_out() => Recovery::Relogin,
                Some(r) => r,
                // A private or secret key not found may have been hidden by a logout that
                // another session repaired between the lookup and the check above (login
                // state is shared): look again, once. The lookup comes before any use of a
                // ciphertext, so the retry tells nothing about one.
                None if hidden_by_logout(&err) => Recovery::Refind,
                None => return Err(err),
            };
            self.shared.recoveries.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut recent) = self.shared.recent.lock() {
                if recent.len() == RECENT_RECOVERIES {
                    recent.pop_front();
                }
                let cause = err.ckr().unwrap_or_else(|| err.to_string());
                recent.push_back(format!("{cause}: {recovery:?}"));
            }
            self.recover(recovery)?;
            retried = true;
        }
    }

    fn logged_out(&self) -> bool {
        self.live.as_ref().is_some_and(|l| {
            matches!(
                l.session.get_session_info().map(|i| i.session_state()),
                Ok(SessionState::RoPublic | SessionState::RwPublic)
            )
        })
    }

    /// Opens (and logs in) a session if there is none or if it is stale.
    fn ensure_session(&mut self) -> Result<()> {
        let epoch = self.shared.epoch.load(Ordering::SeqCst);
        let (ctx, generation) = self.shared.module.context();
        if let Some(live) = &self.live {
            if live.epoch == epoch && live.generation == generation {
                return Ok(());
            }
            self.forget_session();
        }
        let (slot, _) = find_token(&ctx, &self.shared.selector, self.shared.module.path())?;
        let session = ctx.open_rw_session(slot).ctx("opening a session")?;
        self.shared.login(&session)?;
        self.live = Some(Live {
            session,
            epoch,
            generation,
        });
        Ok(())
    }

    /// Closes this worker's session when its handle is still its own (no library reset
    /// or epoch change since it was opened, so the number names no other session); else
    /// forgets it.
    fn close_session(&mut self) {
        let current = (
            self.shared.epoch.load(Ordering::SeqCst),
            self.shared.module.context().1,
        );
        match self.live.take() {
            Some(live) if (live.epoch, live.generation) == current => drop(live.session),
            Some(live) => std::mem::forget(live.session),
            None => {}
        }
        self.cache.clear();
    }

    fn forget_session(&mut self) {
        if let Some(live) = self.live.take() {
            // Not closed: the handle may already belong to another session (see module doc).
            std::mem::forget(live.session);
        }
        self.cache.clear();
    }

    fn recover(&mut self, recovery: Recovery) -> Result<()> {
        let seen_epoch = self
            .live
            .as_ref()
            .map_or_else(|| self.shared.epoch.load(Ordering::SeqCst), |l| l.epoch);
        let bump = |shared: &Shared| {
            let _ = shared.epoch.compare_exchange(
                seen_epoch,
                seen_epoch + 1,
                Ordering::SeqCst,
                Ordering::SeqCst,
            );
        };
        match recovery {
            Recovery::Reinitialize => {
                let generation = self
                    .live
                    .as_ref()
                    .map_or_else(|| self.shared.module.context().1, |l| l.generation);
                self.forget_session();
                self.shared.module.reinitialize(generation)?;
                bump(&self.shared);
            }
            Recovery::Reopen => {
                self.forget_session();
                bump(&self.shared);
            }
            // The next turn of the loop opens the new session and logs in.
            Recovery::Relogin => self.close_session(),
            Recovery::Refind => self.cache.clear(),
        }
        Ok(())
    }
}

impl SessionPool {
    /// Finds the configured token, opens the sessions and logs in (a wrong PIN fails here,
    /// as [`HsmError::WrongPin`]).
    pub fn open(config: &HsmConfig, pin: Pin) -> Result<Self> {
        let module = Module::load(&config.module)?;
        let (ctx, generation) = module.context();
        let (slot, info) = find_token(&ctx, &config.token, &config.module)?;
        let summary = TokenSummary::new(slot, &info);
        let size = config.pool_size(summary.max_sessions);
        let shared = Arc::new(Shared {
            module,
            selector: config.token.clone(),
            pin,
            token_name: summary.name(),
            epoch: AtomicU64::new(0),
            recoveries: AtomicU64::new(0),
            recent: Mutex::new(Default::default()),
            pin_refused: std::sync::atomic::AtomicBool::new(false),
        });
        let mut sessions = Vec::with_capacity(size);
        for _ in 0..size {
            let session = ctx.open_rw_session(slot).ctx("opening a session")?;
            login(&session, PinKind::User, &shared.pin, &shared.token_name)?;
            sessions.push(session);
        }
        let idle = sessions
            .into_iter()
            .map(|session| Worker {
                shared: shared.clone(),
                live: Some(Live {
                    session,
                    epoch: 0,
                    generation,
                }),
                cache: HashMap::new(),
            })
            .collect();
        Ok(Self {
            shared,
            idle: Mutex::new(idle),
            returned: Condvar::new(),
            size,
        })
    }

    /// Runs `f` on a free session, on the calling thread, waiting for a session if all
    /// are lent out. On a session or device error the session recovers and `f` runs again,
    /// once; `f` must tolerate that. Blocks: from async code, call it through
    /// `spawn_blocking`. Never call it from inside `f` (the pool could be exhausted).
    pub fn run<T, F>(&self, mut f: F) -> Result<T>
    where
        F: FnMut(&mut Conn<'_>) -> Result<T>,
    {
        let mut lent = Lent {
            pool: self,
            worker: Some(self.borrow()),
        };
        let worker = lent.worker.as_mut().ok_or(HsmError::PoolStopped)?;
        worker.execute(&mut f)
    }

    fn borrow(&self) -> Worker {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(worker) = idle.pop() {
                return worker;
            }
            idle = self
                .returned
                .wait(idle)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Number of sessions.
    pub fn size(&self) -> usize {
        self.size
    }

    /// How the token is named in messages: label and serial.
    pub fn token_name(&self) -> &str {
        &self.shared.token_name
    }

    /// The token as it is now.
    pub fn token(&self) -> Result<TokenSummary> {
        let (slot, info) = self.shared.module.find_token(&self.shared.selector)?;
        Ok(TokenSummary::new(slot, &info))
    }

    pub fn module(&self) -> &Arc<Module> {
        &self.shared.module
    }

    /// How many recoveries (re-login, new sessions, re-initialisation...) happened.
    pub fn recoveries(&self) -> u64 {
        self.shared.recoveries.load(Ordering::Relaxed)
    }

    /// The last recoveries, oldest first, as `CAUSE: Action` (e.g.
    /// `CKR_SESSION_HANDLE_INVALID: Reopen`), for logs and tests.
    pub fn recent_recoveries(&self) -> Vec<String> {
        self.shared
            .recent
            .lock()
            .map(|r| r.iter().cloned().collect())
            .unwrap_or_default()
    }
}

/// A session lent out by [`SessionPool::run`]; given back when dropped, also when the job
/// panics (then without its session, which may be mid-operation: a new one is opened on
/// next use).
struct Lent<'p> {
    pool: &'p SessionPool,
    worker: Option<Worker>,
}

impl Drop for Lent<'_> {
    fn drop(&mut self) {
        if let Some(mut worker) = self.worker.take() {
            if std::thread::panicking() {
                worker.forget_session();
            }
            let mut idle = self
                .pool
                .idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            idle.push(worker);
            drop(idle);
            self.pool.returned.notify_one();
        }
    }
}
