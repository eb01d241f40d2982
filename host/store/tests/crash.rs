//! The embedded store loses no acknowledged write when its process is killed.
//!
//! The test re-runs its own binary as a child (selected by an environment variable) that
//! inserts KGSS keys in a loop and prints each id once `insert_kgss_key` has returned `Ok`. The
//! parent kills it with SIGKILL mid-stream, several times on the same file, and checks that the
//! file opens and holds every acknowledged key.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use etee_store::{Credential, EmbeddedStore, Identifier, KgssKey, Store};

const CHILD_PATH: &str = "ETEE_STORE_CRASH_CHILD_PATH";
const CHILD_FIRST: &str = "ETEE_STORE_CRASH_CHILD_FIRST";
const TEST_NAME: &str = "acknowledged_kgss_keys_survive_sigkill";

fn key(n: u128) -> KgssKey {
    KgssKey {
        id: n.to_be_bytes(),
        wrapped_key: (0..40).map(|i| (n as u8).wrapping_add(i)).collect(),
        wrapping_key_label: "kgss-wrap-1".into(),
        creator: Identifier::new("SSIN", "85073003328", Some("KGSS")),
        allowed_readers: vec![Credential {
            namespace: "urn:be:fgov:certified-namespace:ehealth".into(),
            name: "urn:be:fgov:person:ssin".into(),
            values: vec![format!("{n:011}")],
        }],
        excluded_readers: vec![],
        deletion_strategy: None,
        created_at: 1_700_000_000 + n as i64,
    }
}

/// The child: insert until killed (bounded, in case the parent is gone).
fn child(path: &Path, first: u128) {
    let store = EmbeddedStore::open(path).expect("child open");
    let mut out = std::io::stdout().lock();
    for n in first..first + 200_000 {
        store.insert_kgss_key(&key(n)).expect("insert");
        writeln!(out, "ACK {n}").unwrap();
        out.flush().unwrap();
    }
}

#[test]
fn acknowledged_kgss_keys_survive_sigkill() {
    if let Ok(path) = std::env::var(CHILD_PATH) {
        let first = std::env::var(CHILD_FIRST).unwrap().parse().unwrap();
        child(Path::new(&path), first);
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crash.redb");
    let mut acknowledged = Vec::new();
    for round in 0..4u128 {
        let first = round * 1_000_000;
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([TEST_NAME, "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_PATH, &path)
            .env(CHILD_FIRST, first.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        let mut acked_this_round = 0;
        let started = Instant::now();
        // Kill at a different point each round, while the child is in the middle of writing.
        let kill_after = 30 + 17 * round as usize;
        while acked_this_round < kill_after {
            line.clear();
            assert!(out.read_line(&mut line).unwrap() > 0, "child ended early");
            if let Some(n) = line.strip_prefix("ACK ").and_then(|l| l.strip_suffix('\n')) {
                acknowledged.push(n.parse::<u128>().unwrap());
                acked_this_round += 1;
            }
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "child too slow"
            );
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        // Acknowledgements already in the pipe count too; a torn last line does not.
        loop {
            line.clear();
            if out.read_line(&mut line).unwrap() == 0 {
                break;
            }
            if let Some(n) = line.strip_prefix("ACK ").and_then(|l| l.strip_suffix('\n')) {
                acknowledged.push(n.parse::<u128>().unwrap());
            }
        }

        let store = EmbeddedStore::open(&path).expect("reopens after SIGKILL");
        for &n in &acknowledged {
            assert_eq!(
                store.get_kgss_key(&n.to_be_bytes()).unwrap(),
                Some(key(n)),
                "acknowledged key {n} lost in round {round}"
            );
        }
        // The key being written when the child died is either wholly there or absent.
        let last = acknowledged.last().copied().unwrap();
        for n in last + 1..last + 3 {
            let got = store.get_kgss_key(&n.to_be_bytes()).unwrap();
            assert!(got.is_none() || got == Some(key(n)), "torn key {n}");
        }
    }
    assert!(acknowledged.len() >= 4 * 30);
}
