//! The file-backed audit sink: records survive a reopen, a torn final frame (a crash in the
//! middle of an append) is cut and nothing partial remains, and damage elsewhere is refused.

use etee_custody::audit::{verify_chain_to, AuditHead, AuditRecord};
use etee_custody::file_sink::{scan, segment_end, segments, FileAuditSink, FileSinkError};
use etee_custody::insecure::InsecureMemoryToken;
use etee_custody::policy::{Budget, Policy, Rule};
use etee_custody::wire::{Pin, Request, Response};
use etee_custody::{ClientId, Custody, KeyId, KeyKind};
use std::path::Path;

fn core_on(path: &Path) -> Custody<InsecureMemoryToken, FileAuditSink> {
    core_with_segments(path, None)
}

/// A core whose audit file starts a new segment past `limit` bytes.
fn core_with_segments(
    path: &Path,
    limit: Option<u64>,
) -> Custody<InsecureMemoryToken, FileAuditSink> {
    let (sink, head) = FileAuditSink::open(path).unwrap();
    core_on_sink(sink.with_segment_limit(limit), head)
}

/// The test core (key `auth`, client `app`) over an opened sink.
fn core_on_sink(
    sink: FileAuditSink,
    head: AuditHead,
) -> Custody<InsecureMemoryToken, FileAuditSink> {
    let auth = KeyId::try_from("auth").unwrap();
    let app = ClientId::try_from("app").unwrap();
    let token = InsecureMemoryToken::new(b"1234").unwrap().with_key(
        &auth,
        KeyKind::Authentication,
        b"seed",
    );
    let mut policy = Policy::deny_all();
    let budget = Budget {
        burst: 1000,
        per_second: 1000,
    };
    policy
        .allow(Rule {
            client: app,
            key: auth,
            sign: true,
            decrypt: false,
            wrap: false,
            unwrap: false,
            budget,
        })
        .unwrap();
    let failures = sink.pin_failures_at_open();
    Custody::new(token, sink, policy, head).with_pin_failures(failures)
}

fn sign(core: &mut Custody<InsecureMemoryToken, FileAuditSink>, n: u8, now: u64) -> Response {
    let request = Request::SignPssSha256 {
        client: ClientId::try_from("app").unwrap(),
        key: KeyId::try_from("auth").unwrap(),
        digest: [n; 32],
    };
    core.handle_request(&request, now)
}

fn unlock(pin: &[u8]) -> Request {
    Request::Unlock {
        pin: Pin::from_slice(pin).unwrap(),
    }
}

/// A chain of seven records in `path`: an unlock and three signatures (a use record and an
/// outcome each).
fn write_unlock_and_three_signatures(path: &Path) {
    let mut core = core_on(path);
    core.handle_request(&unlock(b"1234"), 1);
    for i in 0..3 {
        sign(&mut core, i, 10);
    }
}

fn records(path: &Path) -> Vec<AuditRecord> {
    let mut v = Vec::new();
    scan(path, |r| v.push(r.clone())).unwrap();
    v
}

#[test]
fn records_survive_a_reopen_and_the_chain_continues() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let head = {
        let mut core = core_on(&path);
        let unlock = unlock(b"1234");
        assert_eq!(core.handle_request(&unlock, 1), Response::Unlocked);
        for i in 0..5 {
            assert!(matches!(
                sign(&mut core, i, 10 + u64::from(i)),
                Response::Signature(_)
            ));
        }
        core.audit_head()
    };
    // The unlock (its try and its outcome), and a use record and an outcome for each
    // signature.
    assert_eq!(head.next_sequence, 12);
    assert_eq!(verify_chain_to(records(&path).iter(), &head), Ok(12));
    // A new core on the same file continues the same chain.
    let mut core = core_on(&path);
    assert_eq!(core.audit_head(), head);
    let unlock = unlock(b"1234");
    assert_eq!(core.handle_request(&unlock, 100), Response::Unlocked);
    assert!(matches!(sign(&mut core, 9, 101), Response::Signature(_)));
    assert_eq!(
        verify_chain_to(records(&path).iter(), &core.audit_head()),
        Ok(16)
    );
    assert!(scan(&path, |_| {}).unwrap().unconcluded.is_empty());
}

/// A use left without an outcome by a crash stays the unconcluded one when the same use
/// (same client, key and input) is made again and concluded after the restart.
#[test]
fn an_outcome_concludes_the_latest_matching_use() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    write_unlock_and_three_signatures(&path);
    let full = std::fs::read(&path).unwrap();
    // The last frame (the third signature's outcome, sequence 7) lost in a crash.
    let last_len = {
        let mut pos = 0usize;
        let mut starts = Vec::new();
        while pos < full.len() {
            starts.push(pos);
            pos += 6 + usize::from(u16::from_be_bytes([full[pos], full[pos + 1]]));
        }
        full.len() - starts[starts.len() - 1]
    };
    std::fs::write(&path, &full[..full.len() - last_len]).unwrap();
    assert_eq!(scan(&path, |_| {}).unwrap().unconcluded, [6]);
    let mut core = core_on(&path);
    assert_eq!(
        core.handle_request(&unlock(b"1234"), 20),
        Response::Unlocked
    );
    assert!(matches!(sign(&mut core, 2, 21), Response::Signature(_)));
    drop(core);
    assert_eq!(records(&path).len(), 11);
    assert_eq!(scan(&path, |_| {}).unwrap().unconcluded, [6]);
}

#[test]
fn a_torn_final_frame_is_cut_and_nothing_partial_remains() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    write_unlock_and_three_signatures(&path);
    let full = std::fs::read(&path).unwrap();
    let before_last = {
        let recs = records(&path);
        assert_eq!(recs.len(), 8);
        // Length of the file without its last frame.
        let mut len = 0;
        let mut pos = 0usize;
        for _ in 0..7 {
            let l = usize::from(u16::from_be_bytes([full[pos], full[pos + 1]]));
            pos += 6 + l;
            len = pos;
        }
        len
    };
    // A crash at every point inside the last append.
    for cut in before_last + 1..full.len() {
        std::fs::write(&path, &full[..cut]).unwrap();
        let (sink, head) = FileAuditSink::open(&path).unwrap();
        assert_eq!(head.next_sequence, 7, "cut at {cut}");
        // The cut bytes are kept beside the file, and the sink says so.
        let kept = dir.path().join(format!("audit.log.torn-{before_last}"));
        let reported = sink.cut_at_open().expect("a cut is reported").clone();
        assert_eq!(
            (reported.offset, reported.bytes, &reported.kept),
            (before_last as u64, (cut - before_last) as u64, &kept)
        );
        assert_eq!(std::fs::read(&kept).unwrap(), &full[before_last..cut]);
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&kept).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "the kept tail is as private as the chain");
        }
        drop(sink);
        assert_eq!(
            std::fs::metadata(&path).unwrap().len() as usize,
            before_last,
            "torn tail not removed (cut at {cut})"
        );
        assert_eq!(verify_chain_to(records(&path).iter(), &head), Ok(7));
        // The last signature's outcome is lost with the torn frame: its use shows.
        assert_eq!(scan(&path, |_| {}).unwrap().unconcluded, [6]);
        if cut + 1 < full.len() {
            std::fs::remove_file(&kept).unwrap();
        }
    }
    // A second cut at the same offset keeps the first one's evidence.
    let first_evidence = dir.path().join(format!("audit.log.torn-{before_last}"));
    let kept_before = std::fs::read(&first_evidence).unwrap();
    std::fs::write(&path, &full[..before_last + 3]).unwrap();
    let (sink, _) = FileAuditSink::open(&path).unwrap();
    let second = dir.path().join(format!("audit.log.torn-{before_last}.1"));
    assert_eq!(sink.cut_at_open().unwrap().kept, second);
    assert_eq!(
        std::fs::read(&second).unwrap(),
        &full[before_last..before_last + 3]
    );
    assert_eq!(std::fs::read(&first_evidence).unwrap(), kept_before);
    drop(sink);
    // Opened again, the file (cut and synced) has nothing more to cut.
    let (sink, _) = FileAuditSink::open(&path).unwrap();
    assert_eq!(sink.cut_at_open(), None);
    drop(sink);
    // Garbage in place of the last frame's body counts as torn too (bad check, at the end).
    let mut garbled = full.clone();
    let n = garbled.len();
    garbled[n - 1] ^= 0xff;
    std::fs::write(&path, &garbled).unwrap();
    let (_, head) = FileAuditSink::open(&path).unwrap();
    assert_eq!(head.next_sequence, 7);
}

#[test]
fn damage_before_the_end_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    write_unlock_and_three_signatures(&path);
    let full = std::fs::read(&path).unwrap();
    // Flip one byte inside the second frame's body: the check catches it.
    let first_len = 6 + usize::from(u16::from_be_bytes([full[0], full[1]]));
    let mut bad = full.clone();
    bad[first_len + 10] ^= 0x01;
    std::fs::write(&path, &bad).unwrap();
    match FileAuditSink::open(&path) {
        Err(FileSinkError::Corrupt { offset, file }) => {
            assert_eq!((offset as usize, file), (first_len, path.clone()))
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("a damaged audit file was accepted"),
    }
    // Dropping a whole record in the middle (frames intact): the chain breaks there.
    let second_len = 6 + usize::from(u16::from_be_bytes([full[first_len], full[first_len + 1]]));
    let mut dropped = full[..first_len].to_vec();
    dropped.extend_from_slice(&full[first_len + second_len..]);
    std::fs::write(&path, &dropped).unwrap();
    match FileAuditSink::open(&path) {
        Err(FileSinkError::Chain(b)) => assert_eq!(b.sequence, 1),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("a chain with a missing record was accepted"),
    }
}

/// A crash can leave a file extended with zeros where its last, unsynced frames were to
/// go: zeros to the end are cut as a torn tail (kept beside the file), while zeros with
/// anything after them, or in the middle of the chain, are damage.
#[test]
fn a_zero_filled_tail_is_torn_and_zeros_before_data_are_damage() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    write_unlock_and_three_signatures(&path);
    let full = std::fs::read(&path).unwrap();
    let (_, head) = {
        let (sink, head) = FileAuditSink::open(&path).unwrap();
        (sink, head)
    };
    for zeros in [1, 6, 300, 70_000] {
        let mut bytes = full.clone();
        bytes.extend(std::iter::repeat_n(0u8, zeros));
        std::fs::write(&path, &bytes).unwrap();
        let (sink, reopened) = FileAuditSink::open(&path).unwrap();
        assert_eq!(reopened, head, "{zeros} zeros");
        let cut = sink.cut_at_open().expect("the zeros are cut").clone();
        assert_eq!((cut.offset, cut.bytes), (full.len() as u64, zeros as u64));
        drop(sink);
        assert_eq!(std::fs::read(&path).unwrap(), full, "{zeros} zeros");
        let _ = std::fs::remove_file(&cut.kept);
    }
    // Zeros, then something: not a crash's extension.
    let mut bytes = full.clone();
    bytes.extend(std::iter::repeat_n(0u8, 300));
    bytes.push(1);
    std::fs::write(&path, &bytes).unwrap();
    assert!(matches!(
        FileAuditSink::open(&path),
        Err(FileSinkError::Corrupt { offset, .. }) if offset == full.len() as u64
    ));
    // Zeros in place of a frame in the middle: damage.
    let first_len = 6 + usize::from(u16::from_be_bytes([full[0], full[1]]));
    let mut bytes = full.clone();
    bytes[first_len..first_len + 6].fill(0);
    std::fs::write(&path, &bytes).unwrap();
    assert!(matches!(
        FileAuditSink::open(&path),
        Err(FileSinkError::Corrupt { offset, .. }) if offset == first_len as u64
    ));
}

/// A new chain's file that a crash left as zeros (its size reached the disk, its first
/// frames did not): torn, not damage; the chain starts again.
#[test]
fn a_new_file_left_as_zeros_by_a_crash_is_torn() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    for zeros in [1usize, 2, 6, 51, 110, 70_000] {
        std::fs::write(&path, vec![0u8; zeros]).unwrap();
        let s = scan(&path, |_| {}).unwrap();
        assert!(
            s.torn_tail && s.count == 0 && s.good_len == 0,
            "{zeros} zeros"
        );
        let (sink, head) = FileAuditSink::open(&path).unwrap();
        assert_eq!(head, AuditHead::GENESIS, "{zeros} zeros");
        let cut = sink.cut_at_open().expect("the zeros are cut").clone();
        assert_eq!((cut.offset, cut.bytes), (0, zeros as u64));
        drop(sink);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
        std::fs::remove_file(&cut.kept).unwrap();
    }
    // Zeros and then data at the start of a file: damage, as anywhere else.
    let mut bytes = vec![0u8; 110];
    bytes.push(7);
    std::fs::write(&path, &bytes).unwrap();
    assert!(matches!(
        FileAuditSink::open(&path),
        Err(FileSinkError::Corrupt { offset: 0, .. })
    ));
}

#[test]
fn a_missing_file_starts_a_new_chain() {
    let dir = tempfile::tempdir().unwrap();
    let (_, head) = FileAuditSink::open(&dir.path().join("new.log")).unwrap();
    assert_eq!(head, AuditHead::GENESIS);
}

#[test]
fn one_core_at_a_time_appends_to_a_chain() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    write_unlock_and_three_signatures(&path);
    let (first, head) = FileAuditSink::open(&path).unwrap();
    let second = FileAuditSink::open_waiting(&path, std::time::Duration::ZERO);
    assert!(
        matches!(second, Err(FileSinkError::InUse)),
        "a second sink opened"
    );
    // A waiting opener gets the file once the first sink is gone, at the same head.
    let waiter = std::thread::spawn(move || {
        FileAuditSink::open_waiting(&path, std::time::Duration::from_secs(5)).map(|(_, h)| h)
    });
    std::thread::sleep(std::time::Duration::from_millis(100));
    drop(first);
    assert_eq!(waiter.join().unwrap().unwrap(), head);
}

#[test]
fn concurrent_callers_share_syncs_and_every_released_result_is_on_file() {
    concurrent_callers(None);
}

#[test]
fn concurrent_callers_across_segment_switches() {
    concurrent_callers(Some(700));
}

/// Bytes of the chain at `path`: its archived segments and the current file.
fn chain_bytes(path: &Path) -> u64 {
    let archived: u64 = segments(path)
        .unwrap()
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    archived + std::fs::metadata(path).unwrap().len()
}

fn concurrent_callers(limit: Option<u64>) {
    use etee_custody::custody::Admission;
    use etee_custody::Token;
    use std::sync::Mutex;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let mut core = core_with_segments(&path, limit);
    let unlock = unlock(b"1234");
    assert_eq!(core.handle_request(&unlock, 1), Response::Unlocked);
    let sync = core.audit_sink().group_sync();
    let core = Mutex::new(core);
    const THREADS: usize = 4;
    const EACH: usize = 40;
    let released: Vec<Vec<u64>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                let (core, sync) = (&core, &sync);
                s.spawn(move || {
                    // Each caller has its own token handle, as the host's callers do.
                    let mut handle = InsecureMemoryToken::new(b"1234").unwrap().with_key(
                        &KeyId::try_from("auth").unwrap(),
                        KeyKind::Authentication,
                        b"seed",
                    );
                    handle.login(b"1234").unwrap();
                    let mut mine = Vec::new();
                    for i in 0..EACH {
                        let request = Request::SignPssSha256 {
                            client: ClientId::try_from("app").unwrap(),
                            key: KeyId::try_from("auth").unwrap(),
                            digest: [(t * EACH + i) as u8; 32],
                        };
                        let admission = core.lock().unwrap().admit(&request, 10);
                        let Admission::Admitted(ticket) = admission else {
                            panic!("refused")
                        };
                        // As the host does: the use record syncs while the token works.
                        sync.start(ticket.durable_mark(), std::time::Duration::from_micros(200));
                        let executed = ticket.execute(&mut handle);
                        let concluded = core.lock().unwrap().conclude(executed, 11);
                        let mark = concluded.durable_mark();
                        let response = concluded.release(sync.wait(mark));
                        assert!(matches!(response, Response::Signature(_)));
                        mine.push(mark);
                    }
                    mine
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let records = records(&path);
    let head = core.lock().unwrap().audit_head();
    let total = (2 * THREADS * EACH + 2) as u64;
    assert_eq!(verify_chain_to(records.iter(), &head), Ok(total));
    assert!(scan(&path, |_| {}).unwrap().unconcluded.is_empty());
    // Every released result's mark was durable: within the synced files. (Marks count
    // the bytes of every file the sink wrote, checkpoints included.)
    let file_len = chain_bytes(&path);
    assert!(released.iter().flatten().all(|&m| m <= file_len));
    if limit.is_some() {
        assert!(segments(&path).unwrap().len() >= 3);
    }
    // At most one sync per record (the unlock's included), usually fewer.
    let syncs = sync.syncs();
    assert!(syncs >= 1 && syncs <= total, "{syncs}");
    eprintln!("{total} records, {syncs} syncs");
}

#[test]
fn a_use_whose_outcome_was_never_written_shows_in_the_scan() {
    use etee_custody::audit::Outcome;
    use etee_custody::custody::Admission;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let mut core = core_on(&path);
    core.handle_request(&unlock(b"1234"), 1);
    assert!(matches!(sign(&mut core, 1, 2), Response::Signature(_)));
    let request = Request::SignPssSha256 {
        client: ClientId::try_from("app").unwrap(),
        key: KeyId::try_from("auth").unwrap(),
        digest: [2; 32],
    };
    // Admitted, then the process "stops" before the outcome is recorded.
    let Admission::Admitted(ticket) = core.admit(&request, 3) else {
        panic!("refused")
    };
    let mark = ticket.durable_mark();
    core.audit_sink().group_sync().wait(mark).unwrap();
    drop(ticket);
    drop(core);
    let recs = records(&path);
    assert_eq!(recs.len(), 5);
    assert_eq!(recs[4].outcome, Outcome::Admitted);
    assert_eq!(recs[4].input_digest, etee_custody::audit::sha256(&[2; 32]));
    assert_eq!(scan(&path, |_| {}).unwrap().unconcluded, [4]);
}

#[test]
fn the_wrong_pin_counter_survives_a_restart() {
    use etee_custody::lock::LockState;
    use etee_custody::wire::Error;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let wrong = unlock(b"0000");
    let reopen = || {
        let core = core_on(&path);
        let failures = core.audit_sink().pin_failures_at_open();
        core.with_pin_failures(failures)
    };
    {
        let mut core = reopen();
        assert_eq!(core.status().pin_tries_left, 5);
        for left in [4, 3] {
            assert_eq!(
                core.handle_request(&wrong, 1),
                Response::Error(Error::PinIncorrect { tries_left: left })
            );
        }
    }
    // A restart does not give the guesser fresh tries.
    let mut core = reopen();
    assert_eq!(core.status().pin_tries_left, 3);
    for left in [2, 1, 0] {
        assert_eq!(
            core.handle_request(&wrong, 2),
            Response::Error(Error::PinIncorrect { tries_left: left })
        );
    }
    drop(core);
    let mut core = reopen();
    assert_eq!(core.status().state, LockState::LockedOut);
    let right = unlock(b"1234");
    assert_eq!(
        core.handle_request(&right, 3),
        Response::Error(Error::PinLockedOut)
    );
    // The administrator's reset is on the chain too, and so survives the next restart.
    core.reset_pin_counter(4).unwrap();
    drop(core);
    let mut core = reopen();
    assert_eq!(core.status().state, LockState::Locked);
    assert_eq!(core.status().pin_tries_left, 5);
    assert_eq!(core.handle_request(&right, 5), Response::Unlocked);
}

#[test]
fn the_syncer_syncs_on_its_own_and_a_waiter_never_waits_for_its_plan() {
    use etee_custody::custody::Admission;
    use std::time::{Duration, Instant};

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let mut core = core_on(&path);
    core.handle_request(&unlock(b"1234"), 1);
    let sync = core.audit_sink().group_sync();
    let request = |n: u8| Request::SignPssSha256 {
        client: ClientId::try_from("app").unwrap(),
        key: KeyId::try_from("auth").unwrap(),
        digest: [n; 32],
    };

    // Needed at once: the syncer thread makes the use record durable without a waiter.
    let first = request(1);
    let Admission::Admitted(ticket) = core.admit(&first, 2) else {
        panic!("refused")
    };
    let before = sync.syncs();
    sync.start(ticket.durable_mark(), Duration::ZERO);
    let deadline = Instant::now() + Duration::from_secs(5);
    while sync.syncs() == before {
        assert!(Instant::now() < deadline, "the syncer did not sync");
        std::thread::sleep(Duration::from_millis(1));
    }
    drop(ticket);

    // Planned for much later: a caller that needs it now syncs at once, not at the plan.
    let second = request(2);
    let Admission::Admitted(ticket) = core.admit(&second, 3) else {
        panic!("refused")
    };
    let mark = ticket.durable_mark();
    sync.start(mark, Duration::from_secs(30));
    let began = Instant::now();
    sync.wait(mark).unwrap();
    assert!(
        began.elapsed() < Duration::from_secs(5),
        "{:?}",
        began.elapsed()
    );
    drop(ticket);
    // Both use records are on file, without outcomes (never executed).
    assert_eq!(scan(&path, |_| {}).unwrap().unconcluded, [2, 3]);
}

/// A file of many frames, larger than the scanner's read buffer (frames straddle its
/// refills), scans and reopens whole; a torn tail after it is still cut.
#[test]
fn a_long_chain_scans_frame_by_frame() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    {
        let mut core = core_on(&path);
        core.handle_request(&unlock(b"1234"), 1);
        for i in 0..900u32 {
            let r = sign(&mut core, i as u8, 2 + u64::from(i));
            assert!(matches!(r, Response::Signature(_)), "{r:?}");
        }
    }
    let len = std::fs::metadata(&path).unwrap().len();
    assert!(len > 2 * 64 * 1024, "only {len} bytes");
    let mut seen = 0u64;
    let s = scan(&path, |_| seen += 1).unwrap();
    assert_eq!((s.count, seen, s.good_len), (1802, 1802, len));
    assert!(!s.torn_tail && s.unconcluded.is_empty());
    // Half a frame more at the end: torn, cut at the reopen, the chain intact.
    let mut bytes = std::fs::read(&path).unwrap();
    let half_frame = bytes[..20].to_vec();
    bytes.extend_from_slice(&half_frame);
    std::fs::write(&path, &bytes).unwrap();
    let s = scan(&path, |_| {}).unwrap();
    assert!(s.torn_tail && s.good_len == len);
    let (_, head) = FileAuditSink::open(&path).unwrap();
    assert_eq!(head.next_sequence, 1802);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), len);
}

/// A chain of segments: an unlock and `n` signatures with the file switched past `limit`
/// bytes; returns the head.
fn segmented_chain(path: &Path, limit: u64, n: u32) -> AuditHead {
    let mut core = core_with_segments(path, Some(limit));
    assert_eq!(core.handle_request(&unlock(b"1234"), 1), Response::Unlocked);
    for i in 0..n {
        let r = sign(&mut core, i as u8, 2 + u64::from(i));
        assert!(matches!(r, Response::Signature(_)), "{r:?}");
    }
    core.audit_head()
}

#[test]
fn segments_switch_and_the_chain_reads_across_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let head = segmented_chain(&path, 600, 60);
    assert_eq!(head.next_sequence, 122);
    let archived = segments(&path).unwrap();
    assert!(archived.len() >= 5, "{archived:?}");
    // Named by the next sequence when closed, oldest first; each ends at a record
    // boundary (no file is over the limit by more than one record).
    let mut last_suffix = 0;
    for a in &archived {
        let name = a.file_name().unwrap().to_str().unwrap();
        let suffix: u64 = name.strip_prefix("audit.log.").unwrap().parse().unwrap();
        assert!(suffix > last_suffix);
        assert_eq!(segment_end(a), Some(suffix));
        last_suffix = suffix;
        assert!(std::fs::metadata(a).unwrap().len() < 600 + 200);
    }
    assert_eq!(segment_end(&path), None, "the current file is not archived");
    // The current file starts with a checkpoint.
    assert_eq!(
        &std::fs::read(&path).unwrap()[..6],
        &[0, 0, b'S', b'E', b'G', b'1']
    );
    let all = records(&path);
    assert_eq!(verify_chain_to(all.iter(), &head), Ok(122));
    let s = scan(&path, |_| {}).unwrap();
    assert_eq!(
        (s.count, s.segments, s.first_sequence),
        (122, archived.len(), 0)
    );
    assert!(s.unconcluded.is_empty() && !s.torn_tail);
    // A reopened core continues the chain in the current file.
    let mut core = core_with_segments(&path, Some(600));
    assert_eq!(core.audit_head(), head);
    assert_eq!(
        core.handle_request(&unlock(b"1234"), 500),
        Response::Unlocked
    );
    assert!(matches!(sign(&mut core, 1, 501), Response::Signature(_)));
    drop(core);
    assert_eq!(scan(&path, |_| {}).unwrap().count, 126);
}

#[test]
fn a_crash_while_switching_segments_continues_from_the_last_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let head = segmented_chain(&path, 600, 30);
    let current = std::fs::read(&path).unwrap();
    // The crash points of a switch: the file renamed and no new one yet; the new one
    // created and empty; its checkpoint half written. Opening finishes the switch and the
    // chain goes on from the last archived segment (the current file's records are lost
    // in this simulation, so the head is the last segment's).
    let last = segments(&path).unwrap().pop().unwrap();
    let last_head = {
        let mut all = Vec::new();
        let s = scan(&last, |r| all.push(r.clone())).unwrap();
        let _ = s;
        etee_custody::audit::AuditHead::after(all.last().unwrap())
    };
    assert!(last_head.next_sequence <= head.next_sequence);
    for crash in ["renamed", "empty", "torn checkpoint", "zeros"] {
        match crash {
            "renamed" => std::fs::remove_file(&path).unwrap(),
            "empty" => std::fs::write(&path, b"").unwrap(),
            // Its size reached the disk, its checkpoint did not.
            "zeros" => std::fs::write(&path, [0u8; 110]).unwrap(),
            _ => std::fs::write(&path, &current[..20]).unwrap(),
        }
        let (_, reopened) = FileAuditSink::open(&path).unwrap();
        assert_eq!(reopened, last_head, "after a crash ({crash})");
        let s = scan(&path, |_| {}).unwrap();
        assert_eq!(s.head, last_head, "{crash}");
        assert!(!s.torn_tail);
    }
    // The chain goes on from there.
    let mut core = core_with_segments(&path, Some(600));
    assert_eq!(core.audit_head(), last_head);
    assert_eq!(
        core.handle_request(&unlock(b"1234"), 900),
        Response::Unlocked
    );
    drop(core);
    assert_eq!(
        scan(&path, |_| {}).unwrap().head.next_sequence,
        last_head.next_sequence + 2
    );
}

#[test]
fn a_damaged_or_missing_segment_is_refused_and_old_ones_may_be_moved_away() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let head = segmented_chain(&path, 600, 40);
    let archived = segments(&path).unwrap();
    assert!(archived.len() >= 4);
    // A byte flipped inside a middle segment: damage, named with its file.
    let middle = &archived[archived.len() / 2];
    let original = std::fs::read(middle).unwrap();
    let mut bad = original.clone();
    let n = bad.len();
    bad[n / 2] ^= 0x01;
    std::fs::write(middle, &bad).unwrap();
    match scan(&path, |_| {}) {
        Err(FileSinkError::Corrupt { file, .. }) => assert_eq!(&file, middle),
        Err(FileSinkError::Chain(_)) => {}
        other => panic!(
            "a damaged segment was accepted: {:?}",
            other.map(|s| s.count)
        ),
    }
    // A segment cut short (its last record gone): the next checkpoint no longer links.
    std::fs::write(middle, &original[..original.len() - 1]).unwrap();
    assert!(scan(&path, |_| {}).is_err());
    // A middle segment missing: the next one's checkpoint does not link.
    std::fs::write(middle, &original).unwrap();
    assert!(scan(&path, |_| {}).is_ok());
    let aside = dir.path().join("aside");
    std::fs::rename(middle, &aside).unwrap();
    match scan(&path, |_| {}) {
        Err(FileSinkError::Chain(b)) => {
            assert_eq!(b.reason, etee_custody::audit::BreakReason::Unlinked)
        }
        other => panic!(
            "a gap between segments was accepted: {:?}",
            other.map(|s| s.count)
        ),
    }
    std::fs::rename(&aside, middle).unwrap();
    // The head after each record, while every segment is present.
    let mut heads = std::collections::BTreeMap::new();
    scan(&path, |r| {
        let h = etee_custody::AuditHead::after(r);
        heads.insert(h.next_sequence, h);
    })
    .unwrap();
    // The oldest segments moved away (archived elsewhere): verification starts at the
    // oldest checkpoint present, and says so.
    for old in &archived[..2] {
        std::fs::rename(
            old,
            dir.path()
                .join(old.file_name().unwrap())
                .with_extension("moved"),
        )
        .unwrap();
    }
    let s = scan(&path, |_| {}).unwrap();
    assert!(s.first_sequence > 0);
    assert_eq!(s.head, head);
    assert_eq!(s.count, head.next_sequence - s.first_sequence);
    assert_eq!(s.segments, archived.len() - 2);
    // It starts from the head the chain had there (the checkpoint links to it).
    assert_eq!(s.first_head.next_sequence, s.first_sequence);
    assert_eq!(Some(&s.first_head), heads.get(&s.first_sequence));
}

#[test]
fn the_wrong_pin_count_survives_a_segment_switch() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    {
        // Small segments: every record or two starts a new file.
        let mut core = core_with_segments(&path, Some(100));
        for now in 1..=3 {
            let r = core.handle_request(&unlock(b"wrong"), now);
            assert!(matches!(r, Response::Error(_)), "{r:?}");
        }
    }
    assert!(!segments(&path).unwrap().is_empty());
    let (sink, _) = FileAuditSink::open(&path).unwrap();
    assert_eq!(sink.pin_failures_at_open(), 3);
    assert_eq!(scan(&path, |_| {}).unwrap().pin_failures, 3);
}

/// A second core waiting for the file's lock while the first switches segments must not
/// end up appending to the archived segment: it opens the path again and waits for the new
/// file.
#[test]
fn a_core_waiting_for_the_lock_follows_a_segment_switch() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let mut first = core_with_segments(&path, Some(600));
    assert_eq!(
        first.handle_request(&unlock(b"1234"), 1),
        Response::Unlocked
    );
    assert!(segments(&path).unwrap().is_empty());
    let waiting = {
        let path = path.clone();
        std::thread::spawn(move || {
            FileAuditSink::open_waiting(&path, std::time::Duration::from_secs(20))
        })
    };
    // The second core has opened the file and waits for its lock.
    std::thread::sleep(std::time::Duration::from_millis(200));
    for i in 0..10 {
        assert!(matches!(sign(&mut first, i, 10), Response::Signature(_)));
    }
    assert!(!segments(&path).unwrap().is_empty(), "no switch happened");
    let head = first.audit_head();
    drop(first);
    let (sink, seen) = waiting.join().unwrap().unwrap();
    assert_eq!(seen, head);
    // Its records go to the current file, after the first core's.
    let mut second = core_on_sink(sink, seen);
    assert_eq!(
        second.handle_request(&unlock(b"1234"), 50),
        Response::Unlocked
    );
    assert!(matches!(sign(&mut second, 99, 51), Response::Signature(_)));
    drop(second);
    let s = scan(&path, |_| {}).unwrap();
    assert_eq!(s.head.next_sequence, head.next_sequence + 4);
}

/// The audit file and each new segment are created for their owner alone (0600), whatever
/// the process's umask lets through.
#[test]
fn audit_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let mut core = core_with_segments(&path, Some(1));
    assert!(matches!(
        core.handle_request(&unlock(b"1234"), 1),
        Response::Unlocked
    ));
    for n in 0..3 {
        sign(&mut core, n, 2 + u64::from(n));
    }
    let files: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(files.len() > 1, "segments were started: {files:?}");
    for file in files {
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", file.display());
    }
}

/// What [`FileAuditSink::open_observing`] shows for `since`: the chain (`all`, as it is
/// after the opening) from the start of the last file (archived segments and the current
/// one, first sequences `starts`) whose first record is older than `since`, or from the
/// chain's start.
fn shown_from(all: &[AuditRecord], starts: &[u64], since: u64) -> usize {
    let from = starts
        .iter()
        .rev()
        .find(|&&s| all[s as usize].time_ms < since)
        .copied()
        .unwrap_or(0);
    from as usize
}

fn observe(path: &Path, since: u64) -> Vec<AuditRecord> {
    let mut shown = Vec::new();
    FileAuditSink::open_observing(path, std::time::Duration::ZERO, since, &mut |r| {
        shown.push(r.clone())
    })
    .unwrap();
    shown
}

/// A core opening its chain shows its observer (the budgets' replay) the records since a
/// time, reaching back into the archived segments as far as that time needs, in chain
/// order; with `u64::MAX`, the current file only. After a crash that left the current file
/// without records, from the last archived segment and as far back. A damaged segment is
/// shown up to its damage and the reach back goes on.
#[test]
fn opening_shows_the_records_since_a_time_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    // Times: the unlock 1, signature i at 2 + i (a use and an outcome each).
    let head = segmented_chain(&path, 600, 60);
    let archived = segments(&path).unwrap();
    let mut starts: Vec<u64> = vec![0];
    starts.extend(archived.iter().map(|a| segment_end(a).unwrap()));
    let all = records(&path);
    assert_eq!(all.len() as u64, head.next_sequence);
    for since in [u64::MAX, 62, 61, 45, 30, 20, 3, 2, 1, 0] {
        let shown = observe(&path, since);
        let from = shown_from(&all, &starts, since);
        assert_eq!(shown, all[from..], "since {since}");
        assert!(
            all.iter()
                .filter(|r| r.time_ms >= since)
                .all(|r| shown.contains(r)),
            "since {since}: every record of the window is shown"
        );
    }
    assert_eq!(
        observe(&path, u64::MAX)[0].sequence,
        *starts.last().unwrap(),
        "the current file only"
    );

    // A damaged middle segment: its records up to the damage, then the next segments.
    let middle = &archived[archived.len() / 2];
    let original = std::fs::read(middle).unwrap();
    let mut bad = original.clone();
    let n = bad.len();
    bad[n - 3] ^= 0x01; // in its last record
    std::fs::write(middle, &bad).unwrap();
    let shown = observe(&path, 0);
    let last_of_middle = segment_end(middle).unwrap() - 1;
    assert!(shown.iter().all(|r| r.sequence != last_of_middle));
    assert_eq!(
        shown.len(),
        all.len() - 1,
        "only the damaged record is missing"
    );
    std::fs::write(middle, &original).unwrap();

    // A crash while switching segments: the current file holds a torn checkpoint.
    let current = std::fs::read(&path).unwrap();
    std::fs::write(&path, &current[..20]).unwrap();
    let shown = observe(&path, 40);
    let all = records(&path);
    starts.pop();
    let from = shown_from(&all, &starts, 40);
    assert_eq!(shown, all[from..]);
    assert!(from < *starts.last().unwrap() as usize, "reached back");
}

/// Reading the chain while a core writes it and switches segments (as `etee audit verify`
/// does on a running service): every scan is intact, never a break at a switch.
#[test]
fn a_scan_during_segment_switches_sees_no_break() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    std::thread::scope(|s| {
        let writer = s.spawn(|| {
            let mut core = core_with_segments(&path, Some(400));
            assert_eq!(core.handle_request(&unlock(b"1234"), 1), Response::Unlocked);
            for i in 0..1500u32 {
                let r = sign(&mut core, i as u8, 2 + 2 * u64::from(i));
                assert!(matches!(r, Response::Signature(_)), "{r:?}");
            }
        });
        let (mut scans, mut switches_seen) = (0u32, 0usize);
        while !writer.is_finished() {
            match scan(&path, |_| {}) {
                Ok(s) => switches_seen = switches_seen.max(s.segments),
                // A torn tail is a frame being written; anything else is a false alarm.
                Err(e) => panic!("scan {scans} while the chain is written: {e}"),
            }
            scans += 1;
        }
        writer.join().unwrap();
        assert!(
            scans > 10 && switches_seen > 50,
            "{scans} scans, {switches_seen}"
        );
    });
    // The unlock, 1 500 uses and their outcomes, and the lock when the core went.
    assert_eq!(scan(&path, |_| {}).unwrap().count, 3002);
}
