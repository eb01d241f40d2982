//! A file-backed audit sink for the host side (feature `std`).
//!
//! The file is a sequence of frames: `length: u16 BE`, `check: [u8; 4]` (the first bytes of
//! SHA-256 over the record bytes), then the record's postcard encoding. A record is durable
//! once `fdatasync` returned after its write, and the core releases no result before that.
//!
//! Group commit: [`AuditSink::append_deferred`] only writes; waiting for durability
//! ([`GroupSync::wait`], also reachable outside the core through
//! [`FileAuditSink::group_sync`]) runs one `fdatasync` for every record written so far, and
//! callers whose records an ongoing sync already covers wait for it instead of starting
//! their own. With concurrent callers one sync serves several records. [`GroupSync::start`]
//! hands a mark to a background syncer thread without waiting, so that a key use's record
//! becomes durable while the token works (see [`crate::audit`]); waiting for it afterwards
//! usually finds it durable. A failed write or sync stops the sink until it is reopened
//! (fail closed).
//!
//! Crash safety: a crash can only leave a partial frame at the end of the file. Opening the
//! file verifies every record and the chain, cuts such a torn tail (and syncs the cut), and
//! refuses a file whose damage is anywhere else: that is tampering or media failure, not a
//! crash, and the core must not run on top of it (fail closed).

extern crate std;

use crate::audit::{
    sha256, AuditError, AuditHead, AuditRecord, AuditSink, ChainBreak, ChainVerifier, Outcome,
    PinHistory,
};
use crate::config::MAX_AUDIT_RECORD_LEN;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};
use std::vec::Vec;

const FRAME_HEADER: usize = 2 + 4;

/// Why an audit file could not be opened or read.
#[derive(Debug)]
#[non_exhaustive]
pub enum FileSinkError {
    Io(io::Error),
    /// A frame before the end of the file is damaged (bad length, check or encoding).
    Corrupt {
        offset: u64,
    },
    /// The records decode but do not form a chain.
    Chain(ChainBreak),
    /// Another process (or another core in this one) has the file open for appending.
    InUse,
}

impl core::fmt::Display for FileSinkError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Io(e) => write!(f, "audit file: {e}"),
            Self::Corrupt { offset } => write!(f, "audit file damaged at byte {offset}"),
            Self::Chain(b) => write!(
                f,
                "audit chain broken at record {}: {:?}",
                b.sequence, b.reason
            ),
            Self::InUse => write!(
                f,
                "audit file is in use by another custody core (an `etee custody serve`, or \
                 another etee process using this token in-process); one core appends at a time"
            ),
        }
    }
}

impl std::error::Error for FileSinkError {}

impl From<io::Error> for FileSinkError {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

/// What reading a file found: the intact records' head, and where the intact part ends.
pub struct Scan {
    pub head: AuditHead,
    pub count: u64,
    /// Bytes of intact frames; a torn tail starts here.
    pub good_len: u64,
    /// Whether a torn final frame was found after `good_len`.
    pub torn_tail: bool,
    /// Consecutive failed logins at the end of the chain.
    pub pin_failures: u8,
    /// Sequences of the use records ([`crate::audit::Outcome::Admitted`]) that no outcome
    /// record follows: uses whose end the chain does not show (the process or the machine
    /// stopped while the token worked; the key may have been used).
    pub unconcluded: Vec<u64>,
}

/// Reads and verifies an audit file, calling `each` for every intact record. The file is
/// read frame by frame (memory stays bounded whatever its size).
pub fn scan(path: &Path, mut each: impl FnMut(&AuditRecord)) -> Result<Scan, FileSinkError> {
    let file = match File::open(path) {
        Ok(f) => Some(f),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(e.into()),
    };
    let mut input = file.map(|f| io::BufReader::with_capacity(64 * 1024, f));
    let mut verifier = ChainVerifier::new(AuditHead::GENESIS);
    let mut pins = PinHistory::new();
    // Use records waiting for their outcome: as many as uses were in flight.
    let mut open_uses: Vec<AuditRecord> = Vec::new();
    let mut pos = 0u64;
    let mut frame = [0u8; FRAME_HEADER + MAX_AUDIT_RECORD_LEN];
    let torn_tail = loop {
        let Some(input) = input.as_mut() else {
            break false;
        };
        let header = read_up_to(input, &mut frame[..FRAME_HEADER])?;
        if header == 0 {
            break false;
        }
        if header < FRAME_HEADER {
            break true;
        }
        let len = usize::from(u16::from_be_bytes([frame[0], frame[1]]));
        if len == 0 || len > MAX_AUDIT_RECORD_LEN {
            return Err(FileSinkError::Corrupt { offset: pos });
        }
        if read_up_to(input, &mut frame[FRAME_HEADER..FRAME_HEADER + len])? < len {
            break true;
        }
        let body = &frame[FRAME_HEADER..FRAME_HEADER + len];
        if sha256(body)[..4] != frame[2..6] {
            // A bad check on the last frame is a torn write; anywhere else it is damage.
            if input.fill_buf()?.is_empty() {
                break true;
            }
            return Err(FileSinkError::Corrupt { offset: pos });
        }
        let record = AuditRecord::decode(body).ok_or(FileSinkError::Corrupt { offset: pos })?;
        verifier.push(&record).map_err(FileSinkError::Chain)?;
        pins.observe(&record);
        if record.outcome == Outcome::Admitted {
            open_uses.push(record.clone());
        } else if let Some(i) = open_uses.iter().position(|u| record.concludes(u)) {
            open_uses.remove(i);
        }
        each(&record);
        pos += (FRAME_HEADER + len) as u64;
    };
    Ok(Scan {
        head: verifier.head(),
        count: verifier.count(),
        good_len: pos,
        torn_tail,
        pin_failures: pins.failures(),
        unconcluded: open_uses.iter().map(|r| r.sequence).collect(),
    })
}

/// Fills `buf` as far as the input goes; returns how many bytes were read (less than
/// `buf.len()` only at the end of the input).
fn read_up_to(input: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match input.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// An append-only, fsynced audit file.
pub struct FileAuditSink {
    file: File,
    path: PathBuf,
    len: u64,
    sync: Arc<GroupSync>,
    pin_failures: u8,
}

/// Durability of an audit file's records, shared by the sink and the callers that wait for
/// their records outside the core (see the module doc). Marks are file lengths.
pub struct GroupSync {
    file: File,
    state: Mutex<SyncState>,
    /// Signalled when a sync ends.
    synced: Condvar,
    /// Signalled when the syncer thread has work (a mark to make durable) or must stop.
    work: Condvar,
}

struct SyncState {
    /// Bytes written (not necessarily durable).
    written: u64,
    /// Bytes known durable.
    durable: u64,
    syncing: bool,
    /// A write or sync failed: nothing more is accepted or confirmed (fail closed).
    failed: bool,
    /// Syncs run so far (for metrics and tests: with concurrent callers, fewer than records).
    syncs: u64,
    /// The highest mark handed to the syncer thread.
    requested: u64,
    /// When the syncer should start syncing the marks handed to it: the earliest time one of
    /// them is needed, less a sync's duration (see [`GroupSync::start`]).
    sync_at: Option<Instant>,
    /// How long a sync takes, averaged (microseconds).
    sync_micros: u64,
    /// The syncer thread runs (started by the first [`GroupSync::start`]).
    syncer: bool,
    /// The sink is gone: the syncer thread ends.
    closed: bool,
}

type StateGuard<'a> = std::sync::MutexGuard<'a, SyncState>;

/// Time the syncer allows itself to wake up before a sync it planned.
const SYNC_WAKE_MARGIN: Duration = Duration::from_micros(150);
/// A sync that took longer than this (a stall) counts as this long in the average.
const MAX_SYNC_ESTIMATE_MICROS: u64 = 20_000;

impl GroupSync {
    /// Waits until the file is durable up to `mark`, syncing it if no sync under way
    /// covers the mark.
    pub fn wait(&self, mark: u64) -> Result<(), AuditError> {
        let mut state = self.state();
        loop {
            if state.failed {
                return Err(AuditError::Storage);
            }
            if state.durable >= mark {
                return Ok(());
            }
            state = if state.syncing {
                self.synced
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner)
            } else {
                self.sync_now(state)
            };
        }
    }

    /// Starts making the file durable up to `mark` on the syncer thread, without waiting
    /// (a later [`Self::wait`] for the mark collects the outcome). The thread is started
    /// on first use and ends with the sink.
    ///
    /// `needed_in` is when the caller expects to wait for the mark (how long its token
    /// operation usually takes; zero if unknown). The syncer starts the sync that much
    /// later, less a sync's usual duration, so that the records of other callers written
    /// meanwhile share it: fewer syncs when the machine is busy. A caller that waits for a
    /// mark not yet durable syncs at once itself ([`Self::wait`]), so a wrong guess costs
    /// a shared sync, never a longer wait than without the syncer.
    pub fn start(self: &Arc<Self>, mark: u64, needed_in: Duration) {
        let mut state = self.state();
        if state.failed || state.closed || state.durable >= mark {
            return;
        }
        state.requested = state.requested.max(mark);
        // Start early enough: a sync's usual duration, and a margin for waking up.
        let lead = Duration::from_micros(state.sync_micros) + SYNC_WAKE_MARGIN;
        let at = Instant::now() + needed_in.saturating_sub(lead);
        state.sync_at = Some(state.sync_at.map_or(at, |t| t.min(at)));
        if !state.syncer {
            let me = self.clone();
            let spawned = std::thread::Builder::new()
                .name("audit-sync".into())
                .spawn(move || me.run_syncer());
            // Without the thread, `wait` syncs on the caller's thread as before.
            state.syncer = spawned.is_ok();
        }
        self.work.notify_one();
    }

    fn run_syncer(&self) {
        let mut state = self.state();
        loop {
            if state.closed {
                state.syncer = false;
                return;
            }
            let due = state
                .sync_at
                .map(|at| at.saturating_duration_since(Instant::now()));
            state = match due {
                _ if state.requested <= state.durable || state.syncing || state.failed => self
                    .work
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner),
                Some(wait) if !wait.is_zero() => {
                    self.work
                        .wait_timeout(state, wait)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
                _ => self.sync_now(state),
            };
        }
    }

    /// Runs one sync of everything written so far (the lock is released meanwhile).
    fn sync_now<'a>(&'a self, mut state: StateGuard<'a>) -> StateGuard<'a> {
        state.syncing = true;
        let target = state.written;
        // This sync covers every plan made so far; marks handed over from now on (written
        // after it began) plan the next one afresh.
        state.sync_at = None;
        drop(state);
        let began = Instant::now();
        let synced = self.file.sync_data();
        let took = began
            .elapsed()
            .as_micros()
            .min(u128::from(MAX_SYNC_ESTIMATE_MICROS)) as u64;
        let mut state = self.state();
        state.syncing = false;
        match synced {
            Ok(()) => {
                state.durable = state.durable.max(target);
                state.syncs += 1;
                // Moving average, 1/8 per sync.
                state.sync_micros = (state.sync_micros * 7 + took) / 8;
            }
            Err(_) => state.failed = true,
        }
        self.synced.notify_all();
        // A mark requested during this sync may need the syncer again.
        self.work.notify_one();
        state
    }

    /// Stops the syncer thread (when the sink goes).
    fn close(&self) {
        self.state().closed = true;
        self.work.notify_all();
    }

    /// How many syncs ran since the file was opened.
    pub fn syncs(&self) -> u64 {
        self.state().syncs
    }

    fn state(&self) -> StateGuard<'_> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for FileAuditSink {
    fn drop(&mut self) {
        self.sync.close();
    }
}

/// How long [`FileAuditSink::open`] waits for another core to release the file: long
/// enough for a short `etee seal` in another process to finish.
pub const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

fn lock_exclusive(file: &File, wait: std::time::Duration) -> Result<(), FileSinkError> {
    let deadline = std::time::Instant::now() + wait;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(()),
            Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(std::fs::TryLockError::WouldBlock) => return Err(FileSinkError::InUse),
            Err(std::fs::TryLockError::Error(e)) => return Err(FileSinkError::Io(e)),
        }
    }
}

impl FileAuditSink {
    /// Opens (or creates) the file, verifies it, cuts a torn tail, and returns the sink
    /// with the head to give [`crate::Custody::new`].
    ///
    /// The file is locked (`flock`, exclusive) for as long as the sink lives: two cores
    /// appending to one chain would fork it. A lock held elsewhere is waited for up to
    /// [`LOCK_WAIT`], then [`FileSinkError::InUse`].
    pub fn open(path: &Path) -> Result<(Self, AuditHead), FileSinkError> {
        Self::open_waiting(path, LOCK_WAIT)
    }

    /// [`Self::open`], waiting at most `wait` for the lock.
    pub fn open_waiting(
        path: &Path,
        wait: std::time::Duration,
    ) -> Result<(Self, AuditHead), FileSinkError> {
        let file = OpenOptions::new()
            .create(true)
            .read(true)
            .write(true)
            .truncate(false)
            .open(path)?;
        lock_exclusive(&file, wait)?;
        // Scanned under the lock, so the head is the one this sink appends after.
        let scan = scan(path, |_| {})?;
        if scan.torn_tail {
            file.set_len(scan.good_len)?;
        }
        file.sync_all()?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            // A new file's directory entry must be durable too.
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        let sync = Arc::new(GroupSync {
            file: file.try_clone()?,
            state: Mutex::new(SyncState {
                written: scan.good_len,
                durable: scan.good_len,
                syncing: false,
                failed: false,
                syncs: 0,
                requested: 0,
                sync_at: None,
                sync_micros: 0,
                syncer: false,
                closed: false,
            }),
            synced: Condvar::new(),
            work: Condvar::new(),
        });
        let sink = Self {
            file,
            path: path.to_path_buf(),
            len: scan.good_len,
            sync,
            pin_failures: scan.pin_failures,
        };
        Ok((sink, scan.head))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Consecutive failed logins at the end of the chain when it was opened: give it to
    /// [`crate::Custody::with_pin_failures`].
    pub fn pin_failures_at_open(&self) -> u8 {
        self.pin_failures
    }

    /// The durability handle, for waiting for a record outside the core's lock.
    pub fn group_sync(&self) -> Arc<GroupSync> {
        self.sync.clone()
    }

    fn write_frame(&mut self, body: &[u8]) -> io::Result<()> {
        let mut frame = Vec::with_capacity(FRAME_HEADER + body.len());
        frame.extend_from_slice(&(body.len() as u16).to_be_bytes());
        frame.extend_from_slice(&sha256(body)[..4]);
        frame.extend_from_slice(body);
        self.file.seek(SeekFrom::Start(self.len))?;
        self.file.write_all(&frame)?;
        self.len += frame.len() as u64;
        Ok(())
    }
}

impl AuditSink for FileAuditSink {
    fn append(&mut self, record: &AuditRecord) -> Result<(), AuditError> {
        let mark = self.append_deferred(record)?;
        self.wait_durable(mark)
    }

    fn append_deferred(&mut self, record: &AuditRecord) -> Result<u64, AuditError> {
        if self.sync.state().failed {
            return Err(AuditError::Storage);
        }
        let mut buf = [0u8; MAX_AUDIT_RECORD_LEN];
        let body = record.encode(&mut buf).ok_or(AuditError::Storage)?;
        if self.write_frame(body).is_err() {
            // Undo a partial frame if we can; either way, stop until reopened.
            let _ = self.file.set_len(self.len);
            self.sync.state().failed = true;
            return Err(AuditError::Storage);
        }
        self.sync.state().written = self.len;
        Ok(self.len)
    }

    fn wait_durable(&self, mark: u64) -> Result<(), AuditError> {
        self.sync.wait(mark)
    }
}
