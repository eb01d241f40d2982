//! A small pool of logged-in PKCS#11 sessions, each owned by its own thread.
//!
//! cryptoki calls block (a network HSM may take milliseconds), so they never run on the
//! caller's thread: [`SessionPool::run`] hands a job to a free worker and waits for its
//! result. One session serves one operation at a time.
//!
//! The user logs in once (login state is shared by every session of the process;
//! `CKR_USER_ALREADY_LOGGED_IN` is success). When an operation fails with a session or
//! device error, the worker recovers and retries **once**:
//!
//! | return value | recovery |
//! |---|---|
//! | `CKR_CRYPTOKI_NOT_INITIALIZED` | `C_Initialize` again, new sessions, log in |
//! | `CKR_SESSION_HANDLE_INVALID`, `CKR_SESSION_CLOSED`, `CKR_DEVICE_ERROR`, `CKR_DEVICE_REMOVED`, `CKR_TOKEN_NOT_PRESENT`, `CKR_TOKEN_NOT_RECOGNIZED`, `CKR_SLOT_ID_INVALID`, `CKR_GENERAL_ERROR` | find the token again by label/serial, new sessions, log in |
//! | `CKR_USER_NOT_LOGGED_IN` (or a key not found in a public session) | log in again |
//! | `CKR_KEY_HANDLE_INVALID`, `CKR_OBJECT_HANDLE_INVALID` | find the keys again by CKA_ID/label |
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
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

type Job = Box<dyn FnOnce(&mut Worker) + Send>;

/// A pool of logged-in sessions on one token. Dropping it closes the sessions.
pub struct SessionPool {
    shared: Arc<Shared>,
    sender: Mutex<Option<mpsc::Sender<Job>>>,
    workers: Mutex<Vec<JoinHandle<()>>>,
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

/// A worker thread's state.
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

fn recovery_for(e: &HsmError) -> Option<Recovery> {
    use RvError::*;
    match e.rv()? {
        CryptokiNotInitialized => Some(Recovery::Reinitialize),
        SessionHandleInvalid | SessionClosed | DeviceError | DeviceRemoved | TokenNotPresent
        | TokenNotRecognized | SlotIdInvalid | GeneralError => Some(Recovery::Reopen),
        UserNotLoggedIn => Some(Recovery::Relogin),
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
            let recovery = recovery_for(&err);
            let candidate = recovery.is_some() || matches!(err, HsmError::NotFound { .. });
            // Private keys are invisible (key not found, handle invalid) in a public
            // session: someone logged us out, log in again.
            let recovery = match recovery {
                _ if candidate && self.logged_out() => Recovery::Relogin,
                Some(r) => r,
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
        login(
            &session,
            PinKind::User,
            &self.shared.pin,
            &self.shared.token_name,
        )?;
        self.live = Some(Live {
            session,
            epoch,
            generation,
        });
        Ok(())
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
            Recovery::Relogin => {
                self.cache.clear();
                if let Some(live) = &self.live {
                    login(
                        &live.session,
                        PinKind::User,
                        &self.shared.pin,
                        &self.shared.token_name,
                    )?;
                }
            }
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
        });
        let mut sessions = Vec::with_capacity(size);
        for _ in 0..size {
            let session = ctx.open_rw_session(slot).ctx("opening a session")?;
            login(&session, PinKind::User, &shared.pin, &shared.token_name)?;
            sessions.push(session);
        }
        let (sender, receiver) = mpsc::channel::<Job>();
        let receiver = Arc::new(Mutex::new(receiver));
        let mut workers = Vec::with_capacity(size);
        for (i, session) in sessions.into_iter().enumerate() {
            let mut worker = Worker {
                shared: shared.clone(),
                live: Some(Live {
                    session,
                    epoch: 0,
                    generation,
                }),
                cache: HashMap::new(),
            };
            let receiver = receiver.clone();
            let handle = std::thread::Builder::new()
                .name(format!("etee-hsm-{i}"))
                .spawn(move || loop {
                    let job = match receiver.lock() {
                        Ok(rx) => rx.recv(),
                        Err(_) => break,
                    };
                    let Ok(job) = job else { break };
                    // A panicking job drops its reply channel (the caller sees
                    // PoolStopped); the worker carries on.
                    let _ = std::panic::catch_unwind(AssertUnwindSafe(|| job(&mut worker)));
                })
                .map_err(|e| HsmError::Invalid(format!("starting a pool thread: {e}")))?;
            workers.push(handle);
        }
        Ok(Self {
            shared,
            sender: Mutex::new(Some(sender)),
            workers: Mutex::new(workers),
            size,
        })
    }

    /// Runs `f` on a worker's session and waits for the result. On a session or device
    /// error the worker recovers and runs `f` again, once; `f` must tolerate that.
    /// Blocks the calling thread: from async code, call it through `spawn_blocking`.
    /// Never call it from inside `f` (the pool could be exhausted).
    pub fn run<T, F>(&self, mut f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnMut(&mut Conn<'_>) -> Result<T> + Send + 'static,
    {
        let (reply, result) = mpsc::sync_channel(1);
        let job: Job = Box::new(move |w: &mut Worker| {
            let _ = reply.send(w.execute(&mut f));
        });
        let sender = self
            .sender
            .lock()
            .map_err(|_| HsmError::PoolStopped)?
            .clone()
            .ok_or(HsmError::PoolStopped)?;
        sender.send(job).map_err(|_| HsmError::PoolStopped)?;
        result.recv().map_err(|_| HsmError::PoolStopped)?
    }

    /// Number of sessions (and threads).
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

impl Drop for SessionPool {
    fn drop(&mut self) {
        if let Ok(mut s) = self.sender.lock() {
            s.take();
        }
        if let Ok(mut workers) = self.workers.lock() {
            for w in workers.drain(..) {
                let _ = w.join();
            }
        }
    }
}
