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
//!
//! Segments: with a size limit ([`FileAuditSink::with_segment_limit`]) the sink closes the
//! file once it has reached the limit, before the next record: everything in it made
//! durable, it is renamed `<file>.<next sequence, 20 digits>` (an archived segment, never
//! written again) and a new file starts with a checkpoint frame (a zero length, magic
//! `SEG1`, the chain's head and the wrong-PIN count so far, a check) followed by the next
//! records. Opening reads only the current file and trusts its checkpoint; [`scan`] walks
//! the archived segments and the current file in order and checks that each checkpoint is
//! where the previous segment ends. A crash during the switch leaves the current file
//! missing, empty or with a torn checkpoint: opening then continues from the last archived
//! segment. Old segments may be moved away: [`scan`] then starts at the oldest one present
//! and says where (`Scan::first_sequence`).

extern crate std;

use crate::audit::{
    sha256, AuditError, AuditHead, AuditRecord, AuditSink, BreakReason, ChainBreak, ChainVerifier,
    Outcome, PinHistory,
};
use crate::config::MAX_AUDIT_RECORD_LEN;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};
use std::vec::Vec;

const FRAME_HEADER: usize = 2 + 4;

/// The mode a new audit file (or segment) is created with, whatever the umask: the chain
/// names clients, keys and times, for the custody process's user alone.
const AUDIT_FILE_MODE: u32 = 0o600;

/// Why an audit file could not be opened or read.
#[derive(Debug)]
#[non_exhaustive]
pub enum FileSinkError {
    Io(io::Error),
    /// A frame before the end of the file is damaged (bad length, check or encoding).
    Corrupt {
        /// The file (the current one, or an archived segment).
        file: PathBuf,
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
            Self::Corrupt { file, offset } => {
                write!(f, "audit file {} damaged at byte {offset}", file.display())
            }
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
    /// Archived segments read before the current file.
    pub segments: usize,
    /// The sequence verification started at: 0, or the checkpoint of the oldest segment
    /// present when older ones were moved away (trusted, not verified).
    pub first_sequence: u64,
    /// The head the verification started from: [`AuditHead::GENESIS`], or the checkpoint
    /// of the oldest segment present (its `next_sequence` is `first_sequence`).
    pub first_head: AuditHead,
}

/// Reads and verifies the audit chain at `path`: its archived segments in order, then the
/// file itself, calling `each` for every intact record. Files are read frame by frame
/// (memory stays bounded whatever their size).
///
/// A core may write the chain meanwhile. The current file is opened first and read last:
/// a segment switch in between renames it (the open handle still reads it whole) and
/// lists it among the archived segments, where the walk stops. So a switch never looks
/// like a break; the scan shows the chain as it was when it started, or a little more.
pub fn scan(path: &Path, mut each: impl FnMut(&AuditRecord)) -> Result<Scan, FileSinkError> {
    let current = match File::open(path) {
        Ok(f) => Some(f),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(e.into()),
    };
    let archived = segments(path)?;
    let mut walker = Walker::new();
    let mut read = 0;
    for segment in &archived {
        if let Some(file) = &current {
            if same_file(file, segment)? {
                break;
            }
        }
        walker.file(segment, false, &mut each)?;
        read += 1;
    }
    let end = match current {
        Some(file) => walker.read(file, path, true, &mut each)?,
        None => FileEnd::whole(0),
    };
    Ok(walker.scan(end, read))
}

/// The archived segments of the audit file at `path`, oldest first.
pub fn segments(path: &Path) -> Result<Vec<PathBuf>, FileSinkError> {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return Ok(Vec::new());
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut found: Vec<(u64, PathBuf)> = Vec::new();
    for entry in entries {
        let entry = entry?;
        let file_name = entry.file_name();
        let next = file_name
            .to_str()
            .and_then(|n| n.strip_prefix(name))
            .and_then(archived_suffix);
        if let Some(next) = next {
            found.push((next, entry.path()));
        }
    }
    found.sort();
    Ok(found.into_iter().map(|(_, p)| p).collect())
}

/// The sequence an archived segment (a path from [`segments`]) was closed at: the first
/// record of the segment after it.
pub fn segment_end(segment: &Path) -> Option<u64> {
    let name = segment.file_name()?.to_str()?;
    archived_suffix(&name[name.rfind('.')?..])
}

/// `.` and [`SEGMENT_DIGITS`] digits: the suffix of an archived segment's name.
fn archived_suffix(suffix: &str) -> Option<u64> {
    let digits = suffix.strip_prefix('.')?;
    if digits.len() == SEGMENT_DIGITS && digits.bytes().all(|b| b.is_ascii_digit()) {
        digits.parse().ok()
    } else {
        None
    }
}

/// Digits of an archived segment's suffix (the chain's next sequence when it was closed).
const SEGMENT_DIGITS: usize = 20;

fn archive_name(path: &Path, next_sequence: u64) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(std::format!(
        ".{next_sequence:0width$}",
        width = SEGMENT_DIGITS
    ));
    path.with_file_name(name)
}

/// The frame a segment after the first starts with: where the chain stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Checkpoint {
    head: AuditHead,
    /// The wrong-PIN count ([`PinHistory::checkpoint_byte`]).
    pins: u8,
}

/// A zero length (never a record's frame), then `SEG1`.
const CHECKPOINT_MAGIC: [u8; 6] = [0, 0, b'S', b'E', b'G', b'1'];
/// Magic, next sequence (u64 BE), hash, wrong-PIN count, check (SHA-256 of what precedes).
const CHECKPOINT_LEN: usize = 6 + 8 + 32 + 1 + 4;

impl Checkpoint {
    fn encode(&self) -> [u8; CHECKPOINT_LEN] {
        let mut out = [0u8; CHECKPOINT_LEN];
        out[..6].copy_from_slice(&CHECKPOINT_MAGIC);
        out[6..14].copy_from_slice(&self.head.next_sequence.to_be_bytes());
        out[14..46].copy_from_slice(&self.head.hash);
        out[46] = self.pins;
        let check = sha256(&out[..47]);
        out[47..].copy_from_slice(&check[..4]);
        out
    }

    fn decode(bytes: &[u8; CHECKPOINT_LEN]) -> Option<Self> {
        if bytes[..6] != CHECKPOINT_MAGIC || sha256(&bytes[..47])[..4] != bytes[47..] {
            return None;
        }
        let mut hash = [0u8; 32];
        hash.copy_from_slice(&bytes[14..46]);
        Some(Self {
            head: AuditHead {
                next_sequence: u64::from_be_bytes(bytes[6..14].try_into().ok()?),
                hash,
            },
            pins: bytes[46],
        })
    }
}

/// How a file of the chain ended.
struct FileEnd {
    /// Bytes of intact frames (and checkpoint); a torn tail starts here.
    good_len: u64,
    torn_tail: bool,
}

impl FileEnd {
    /// The file ends after `good_len` bytes of intact frames.
    fn whole(good_len: u64) -> Self {
        Self {
            good_len,
            torn_tail: false,
        }
    }
}

/// Verification carried across the files of a chain.
struct Walker {
    verifier: ChainVerifier,
    pins: PinHistory,
    /// Use records waiting for their outcome: as many as uses were in flight.
    open_uses: Vec<AuditRecord>,
    started: bool,
    first_head: AuditHead,
}

impl Walker {
    fn new() -> Self {
        Self {
            verifier: ChainVerifier::new(AuditHead::GENESIS),
            pins: PinHistory::new(),
            open_uses: Vec::new(),
            started: false,
            first_head: AuditHead::GENESIS,
        }
    }

    fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            head: self.verifier.head(),
            pins: self.pins.checkpoint_byte(),
        }
    }

    fn scan(self, end: FileEnd, segments: usize) -> Scan {
        Scan {
            head: self.verifier.head(),
            count: self.verifier.count(),
            good_len: end.good_len,
            torn_tail: end.torn_tail,
            pin_failures: self.pins.failures(),
            unconcluded: self.open_uses.iter().map(|r| r.sequence).collect(),
            segments,
            first_sequence: self.first_head.next_sequence,
            first_head: self.first_head,
        }
    }

    /// Reads one file of the chain. Only the `current` file may end torn (a crash); a
    /// missing current file is an empty one.
    fn file(
        &mut self,
        path: &Path,
        current: bool,
        each: &mut impl FnMut(&AuditRecord),
    ) -> Result<FileEnd, FileSinkError> {
        match File::open(path) {
            Ok(file) => self.read(file, path, current, each),
            Err(e) if current && e.kind() == io::ErrorKind::NotFound => Ok(FileEnd::whole(0)),
            Err(e) => Err(e.into()),
        }
    }

    /// Reads `file`, the file of the chain at `path` (named in errors), as [`Self::file`].
    fn read(
        &mut self,
        file: File,
        path: &Path,
        current: bool,
        each: &mut impl FnMut(&AuditRecord),
    ) -> Result<FileEnd, FileSinkError> {
        let corrupt = |offset: u64| FileSinkError::Corrupt {
            file: path.to_path_buf(),
            offset,
        };
        let mut input = io::BufReader::with_capacity(64 * 1024, file);
        let mut frame = [0u8; FRAME_HEADER + MAX_AUDIT_RECORD_LEN];
        let torn = |good_len: u64| {
            if current {
                Ok(FileEnd {
                    good_len,
                    torn_tail: true,
                })
            } else {
                Err(corrupt(good_len))
            }
        };
        let mut pos = 0u64;
        // A checkpoint first, or the chain's first records.
        let got = read_up_to(&mut input, &mut frame[..CHECKPOINT_MAGIC.len()])?;
        if got == 0 {
            return Ok(FileEnd::whole(0));
        }
        let mut pending = got;
        if frame[..2] == [0, 0] {
            let mut raw = [0u8; CHECKPOINT_LEN];
            raw[..got].copy_from_slice(&frame[..got]);
            let n = got + read_up_to(&mut input, &mut raw[got..])?;
            let checkpoint = (n == CHECKPOINT_LEN)
                .then(|| Checkpoint::decode(&raw))
                .flatten();
            let Some(checkpoint) = checkpoint else {
                // A checkpoint cut by a crash while the segments were switched, or a new
                // file that a crash left as zeros (its size reached the disk, its first
                // frames did not): nothing follows to lose.
                let zeros = raw[..n].iter().all(|b| *b == 0) && zeros_to_end(&mut input)?;
                return if zeros || input.fill_buf()?.is_empty() {
                    torn(0)
                } else {
                    Err(corrupt(0))
                };
            };
            if !self.started {
                self.verifier = ChainVerifier::new(checkpoint.head);
                self.pins = PinHistory::continuing(checkpoint.pins);
                self.first_head = checkpoint.head;
            } else if checkpoint != self.checkpoint() {
                return Err(FileSinkError::Chain(ChainBreak {
                    sequence: self.verifier.head().next_sequence,
                    reason: BreakReason::Unlinked,
                }));
            }
            pos = CHECKPOINT_LEN as u64;
            pending = 0;
        } else if self.started {
            // A segment after another must say where it continues from.
            return Err(FileSinkError::Chain(ChainBreak {
                sequence: self.verifier.head().next_sequence,
                reason: BreakReason::Unlinked,
            }));
        }
        self.started = true;
        loop {
            // `pending` header bytes were already read into `frame`.
            let header = pending + read_up_to(&mut input, &mut frame[pending..FRAME_HEADER])?;
            pending = 0;
            if header == 0 {
                return Ok(FileEnd::whole(pos));
            }
            if header < FRAME_HEADER {
                return torn(pos);
            }
            let len = usize::from(u16::from_be_bytes([frame[0], frame[1]]));
            if len == 0 && frame[..header].iter().all(|b| *b == 0) && zeros_to_end(&mut input)? {
                // Zeros from here to the end: a file extended by a crash before its last
                // (unsynced) frames reached the disk, not damage; nothing follows to lose.
                return torn(pos);
            }
            if len == 0 || len > MAX_AUDIT_RECORD_LEN {
                return Err(corrupt(pos));
            }
            if read_up_to(&mut input, &mut frame[FRAME_HEADER..FRAME_HEADER + len])? < len {
                return torn(pos);
            }
            let body = &frame[FRAME_HEADER..FRAME_HEADER + len];
            if sha256(body)[..4] != frame[2..6] {
                // A bad check on the last frame is a torn write; anywhere else it is damage.
                if input.fill_buf()?.is_empty() {
                    return torn(pos);
                }
                return Err(corrupt(pos));
            }
            let record = AuditRecord::decode(body).ok_or_else(|| corrupt(pos))?;
            self.verifier.push(&record).map_err(FileSinkError::Chain)?;
            self.pins.observe(&record);
            if record.outcome == Outcome::Admitted {
                self.open_uses.push(record.clone());
            } else if let Some(i) = self.open_uses.iter().rposition(|u| record.concludes(u)) {
                // The latest matching use: an older one with the same client, key and
                // input is a use a crash left without an outcome, not this one's (and
                // searching from the end keeps the walk linear however many there are).
                self.open_uses.remove(i);
            }
            each(&record);
            pos += (FRAME_HEADER + len) as u64;
        }
    }
}

/// How much of the archived chain [`FileAuditSink::open_observing`] reads at most to reach
/// back to its `since_ms`: a window longer than that (a budget that never refills) is
/// shown from there on.
pub const MAX_REACH_BACK_BYTES: u64 = 256 * 1024 * 1024;

/// How a file of the chain begins, from its first bytes only.
struct FileStart {
    /// It begins with a checkpoint: archived segments come before it.
    continues: bool,
    /// The time of its first record, when it has a readable one.
    time_ms: Option<u64>,
}

/// Reads the beginning of the chain file at `path` (a missing or empty file neither
/// continues nor has records).
fn first_record(path: &Path) -> Result<FileStart, FileSinkError> {
    let mut head = std::vec![0u8; CHECKPOINT_LEN + FRAME_HEADER + MAX_AUDIT_RECORD_LEN];
    let got = match File::open(path) {
        Ok(f) => read_up_to(&mut &f, &mut head)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
        Err(e) => return Err(e.into()),
    };
    let head = &head[..got];
    let checkpoint = head
        .get(..CHECKPOINT_LEN)
        .and_then(|c| Checkpoint::decode(c.try_into().ok()?));
    let frames = if checkpoint.is_some() {
        &head[CHECKPOINT_LEN..]
    } else {
        head
    };
    let time_ms = frames.get(..FRAME_HEADER).and_then(|header| {
        let len = usize::from(u16::from_be_bytes([header[0], header[1]]));
        let body = frames.get(FRAME_HEADER..FRAME_HEADER + len)?;
        (len > 0 && sha256(body)[..4] == header[2..6])
            .then(|| AuditRecord::decode(body))
            .flatten()
            .map(|r| r.time_ms)
    });
    Ok(FileStart {
        continues: checkpoint.is_some(),
        time_ms,
    })
}

/// Shows `each` the records of the archived segments `archived` (oldest first, the last
/// one just before the file being opened) from the one the time `since_ms` falls in,
/// reading at most [`MAX_REACH_BACK_BYTES`]. Best effort: a damaged segment is shown up
/// to its damage, and the reach back goes on with the next one.
fn show_archived_since(archived: &[PathBuf], since_ms: u64, each: &mut dyn FnMut(&AuditRecord)) {
    let mut from = archived.len();
    let mut bytes = 0u64;
    while from > 0 {
        let size = std::fs::metadata(&archived[from - 1]).map_or(u64::MAX, |m| m.len());
        bytes = bytes.saturating_add(size);
        if bytes > MAX_REACH_BACK_BYTES {
            break;
        }
        from -= 1;
        match first_record(&archived[from]) {
            // The segment the window starts in, or the chain's first one.
            Ok(start) if !start.continues || start.time_ms.is_some_and(|t| t < since_ms) => break,
            Ok(_) => {}
            Err(_) => {
                from += 1;
                break;
            }
        }
    }
    for segment in &archived[from..] {
        // The error is `etee audit verify`'s to report; the records before it were shown.
        let _ = Walker::new().file(segment, false, &mut |r: &AuditRecord| each(r));
    }
}

/// Whether the rest of the input is zero bytes only (read to its end).
fn zeros_to_end(input: &mut impl BufRead) -> io::Result<bool> {
    loop {
        let buf = input.fill_buf()?;
        if buf.is_empty() {
            return Ok(true);
        }
        if buf.iter().any(|b| *b != 0) {
            return Ok(false);
        }
        let n = buf.len();
        input.consume(n);
    }
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
    /// Bytes in the current file.
    len: u64,
    /// Bytes of the files this sink closed before the current one: marks are `base + len`,
    /// so that they keep growing across segments.
    base: u64,
    /// Close the file for a new segment once it holds this many bytes.
    segment_limit: Option<u64>,
    /// Where the chain stands after the last record written, for the next checkpoint.
    head: AuditHead,
    pins: PinHistory,
    sync: Arc<GroupSync>,
    pin_failures: u8,
    cut: Option<CutTail>,
}

/// A torn tail cut when the file was opened: where, how long, and the file its bytes were
/// kept in (`<audit file>.torn-<offset>`: a torn frame, or the first frame's worth of a
/// zero-filled tail).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CutTail {
    pub offset: u64,
    pub bytes: u64,
    pub kept: PathBuf,
}

/// Copies the bytes of `file` from `offset` to its end (at most one frame) into
/// `<path>.torn-<offset>`, durably.
fn keep_torn_tail(path: &Path, file: &File, offset: u64) -> Result<CutTail, FileSinkError> {
    let cut = file.metadata()?.len().saturating_sub(offset);
    let mut tail = Vec::new();
    let mut reader = file;
    reader.seek(SeekFrom::Start(offset))?;
    reader
        .take((FRAME_HEADER + MAX_AUDIT_RECORD_LEN) as u64)
        .read_to_end(&mut tail)?;
    // Never over an earlier cut's evidence (offsets restart in every segment): the first
    // free name of `<file>.torn-<offset>`, `<file>.torn-<offset>.1`, ...
    let mut attempt = 0u32;
    let (kept, mut out) = loop {
        let mut name = path.file_name().unwrap_or_default().to_os_string();
        name.push(std::format!(".torn-{offset}"));
        if attempt > 0 {
            name.push(std::format!(".{attempt}"));
        }
        let kept = path.with_file_name(name);
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(AUDIT_FILE_MODE)
            .open(&kept)
        {
            Ok(out) => break (kept, out),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempt < 10_000 => attempt += 1,
            Err(e) => return Err(e.into()),
        }
    };
    out.write_all(&tail)?;
    out.sync_all()?;
    sync_dir(&kept)?;
    Ok(CutTail {
        offset,
        bytes: cut,
        kept,
    })
}

/// Durability of an audit file's records, shared by the sink and the callers that wait for
/// their records outside the core (see the module doc). Marks are file lengths.
pub struct GroupSync {
    state: Mutex<SyncState>,
    /// Signalled when a sync ends.
    synced: Condvar,
    /// Signalled when the syncer thread has work (a mark to make durable) or must stop.
    work: Condvar,
}

struct SyncState {
    /// The file being appended to (replaced when a new segment starts).
    file: Arc<File>,
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
        let file = state.file.clone();
        drop(state);
        let began = Instant::now();
        let synced = file.sync_data();
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

    /// Continues in `file` (a new segment), everything up to `mark` durable.
    fn switch(&self, file: File, mark: u64) {
        let mut state = self.state();
        state.file = Arc::new(file);
        state.written = mark;
        state.durable = mark;
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

/// Opens (or creates) the audit file and locks it. A file renamed while we waited for its
/// lock (a new segment started by the core that held it) is not ours to append to: open
/// the path again.
fn open_locked(path: &Path, wait: std::time::Duration) -> Result<File, FileSinkError> {
    let deadline = Instant::now() + wait;
    loop {
        let file = OpenOptions::new()
            .create(true)
            .read(true)
            .write(true)
            .truncate(false)
            .mode(AUDIT_FILE_MODE)
            .open(path)?;
        lock_exclusive(&file, deadline.saturating_duration_since(Instant::now()))?;
        if same_file(&file, path)? {
            return Ok(file);
        }
    }
}

#[cfg(unix)]
fn same_file(file: &File, path: &Path) -> io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let (a, b) = (
        file.metadata()?,
        match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        },
    );
    Ok(a.dev() == b.dev() && a.ino() == b.ino())
}

#[cfg(not(unix))]
fn same_file(_: &File, path: &Path) -> io::Result<bool> {
    Ok(path.exists())
}

/// Makes a directory entry change in `path`'s directory durable (a file created or renamed
/// there, a directory made there). An error is returned, not ignored: records written to a
/// file whose name may not survive a power cut must not be taken as durable (a new file,
/// a new segment after the rename).
pub fn sync_dir(path: &Path) -> io::Result<()> {
    match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => File::open(dir)?.sync_all(),
        None => File::open(".")?.sync_all(),
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
        Self::open_observing(path, wait, u64::MAX, &mut |_| {})
    }

    /// [`Self::open_waiting`], showing `each` the records read to find the head, in chain
    /// order: those of the current file (those of the last archived segment instead when
    /// the current file holds none yet), preceded, when the current file (or that segment)
    /// begins after `since_ms` (record time), by those of the archived segments back to
    /// the one the time `since_ms` falls in (at most [`MAX_REACH_BACK_BYTES`] of them;
    /// best effort: a segment whose beginning cannot be read ends the reach back, one
    /// damaged further on is shown up to the damage; reporting damage is `etee audit
    /// verify`'s). A torn tail is not shown. For state the core rebuilds
    /// from its recent history, such as the policy's budgets
    /// ([`crate::policy::Policy::replay`]); `u64::MAX` reads the current file only.
    pub fn open_observing(
        path: &Path,
        wait: std::time::Duration,
        since_ms: u64,
        mut each: &mut dyn FnMut(&AuditRecord),
    ) -> Result<(Self, AuditHead), FileSinkError> {
        let file = open_locked(path, wait)?;
        // Read under the lock, so the head is the one this sink appends after. For the
        // head, only the current file: its checkpoint says where the archived segments
        // ended.
        // Whether the window reaches before `first` (a file that continues archived
        // segments and begins after `since_ms`).
        let reaches_back = |first: &Path| -> Result<bool, FileSinkError> {
            if since_ms == u64::MAX {
                return Ok(false);
            }
            let start = first_record(first)?;
            Ok(start.continues && start.time_ms.is_none_or(|t| t >= since_ms))
        };
        if reaches_back(path)? {
            show_archived_since(&segments(path)?, since_ms, &mut *each);
        }
        let mut walker = Walker::new();
        let end = walker.file(path, true, &mut each)?;
        if end.good_len == 0 {
            // Empty, or a checkpoint cut by a crash while the segments were switched: the
            // chain continues from the last archived segment, if there is one.
            if let Some((last, before)) = segments(path)?.split_last() {
                if reaches_back(last)? {
                    show_archived_since(before, since_ms, &mut *each);
                }
                walker = Walker::new();
                walker.file(last, false, &mut each)?;
                let checkpoint = walker.checkpoint().encode();
                file.set_len(0)?;
                (&file).write_all(&checkpoint)?;
                walker.file(path, true, &mut |_| {})?;
                return Self::finish_open(path, file, walker, CHECKPOINT_LEN as u64);
            }
        }
        let mut cut = None;
        if end.torn_tail {
            // A crash leaves a partial last record, but an altered last record looks the
            // same: its bytes are kept beside the file before the cut, for whoever looks.
            cut = Some(keep_torn_tail(path, &file, end.good_len)?);
            file.set_len(end.good_len)?;
        }
        let (mut sink, head) = Self::finish_open(path, file, walker, end.good_len)?;
        sink.cut = cut;
        Ok((sink, head))
    }

    /// The torn tail this sink cut when it opened the file, if it did (see [`CutTail`]).
    pub fn cut_at_open(&self) -> Option<&CutTail> {
        self.cut.as_ref()
    }

    fn finish_open(
        path: &Path,
        file: File,
        walker: Walker,
        len: u64,
    ) -> Result<(Self, AuditHead), FileSinkError> {
        file.sync_all()?;
        // A new file's directory entry must be durable too.
        sync_dir(path)?;
        let head = walker.verifier.head();
        let sync = Arc::new(GroupSync {
            state: Mutex::new(SyncState {
                file: Arc::new(file.try_clone()?),
                written: len,
                durable: len,
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
            len,
            base: 0,
            segment_limit: None,
            head,
            pins: walker.pins,
            sync,
            pin_failures: walker.pins.failures(),
            cut: None,
        };
        Ok((sink, head))
    }

    /// Starts a new segment whenever the current file has reached `bytes` (checked before
    /// each record; `None`: one file for ever). See the module doc.
    pub fn with_segment_limit(mut self, bytes: Option<u64>) -> Self {
        self.segment_limit = bytes.filter(|&b| b > 0);
        self
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

    /// Closes the current file as an archived segment and continues in a new one that
    /// starts with a checkpoint (see the module doc). Nothing is written to the new file
    /// before its checkpoint and its directory entry are durable.
    fn next_segment(&mut self) -> io::Result<()> {
        self.sync
            .wait(self.base + self.len)
            .map_err(|_| io::Error::other("the audit file could not be synced"))?;
        let archived = archive_name(&self.path, self.head.next_sequence);
        std::fs::rename(&self.path, &archived)?;
        let file = OpenOptions::new()
            .create_new(true)
            .read(true)
            .write(true)
            .mode(AUDIT_FILE_MODE)
            .open(&self.path)?;
        // Ours at once: nobody else can have it open yet; a process waiting for the old
        // file's lock finds it renamed (see `open_locked`).
        file.try_lock()
            .map_err(|_| io::Error::other("locking the new audit file"))?;
        let checkpoint = Checkpoint {
            head: self.head,
            pins: self.pins.checkpoint_byte(),
        };
        (&file).write_all(&checkpoint.encode())?;
        file.sync_all()?;
        sync_dir(&self.path)?;
        self.base += self.len;
        self.len = CHECKPOINT_LEN as u64;
        self.sync.switch(file.try_clone()?, self.base + self.len);
        // The archived segment's handle (and its lock) goes.
        self.file = file;
        Ok(())
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
        if self.segment_limit.is_some_and(|limit| self.len >= limit) && self.next_segment().is_err()
        {
            // Nothing of this record written; stop until reopened (which finishes the
            // switch if it was half done).
            self.sync.state().failed = true;
            return Err(AuditError::Storage);
        }
        if self.write_frame(body).is_err() {
            // Undo a partial frame if we can; either way, stop until reopened.
            let _ = self.file.set_len(self.len);
            self.sync.state().failed = true;
            return Err(AuditError::Storage);
        }
        self.head = AuditHead::after(record);
        self.pins.observe(record);
        self.sync.state().written = self.base + self.len;
        Ok(self.base + self.len)
    }

    fn wait_durable(&self, mark: u64) -> Result<(), AuditError> {
        self.sync.wait(mark)
    }
}
