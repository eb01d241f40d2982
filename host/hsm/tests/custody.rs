//! The custody core in front of a real SoftHSM2 token: every private-key use through
//! [`CustodyKeys`] (in this process) or [`RemoteCustodyKeys`] (a [`Server`] behind a Unix
//! socket) passes the policy and lands on the audit chain.

mod common;

use common::new_token;
use etee_custody::audit::{Operation, Outcome};
use etee_custody::file_sink::scan;
use etee_custody::{AuditRecord, Error as CoreError};
use etee_formats::cert::Certificate;
use etee_formats::cms::{seal, unseal_to_vec, Recipient, SealOptions, UnsealOptions};
use etee_formats::keys::{KeyError, KeyId, KeyRing, PrivateKeyOps, SigningKey};
use etee_formats::keystore::{write_pfx, EhealthKeystore, PfxEntry, Profile};
use etee_formats::trust::TrustAnchors;
use etee_hsm::remote::{Server, StopHandle};
use etee_hsm::{CustodyConfig, CustodyKeys, Hsm, HsmConfig, ImportOptions, RemoteCustodyKeys};
use etee_testpki::{InstitutionSpec, TestPki};
use std::path::Path;

fn cert(x: &openssl::x509::X509) -> Certificate {
    Certificate::from_der(&x.to_der().unwrap()).unwrap()
}

fn records(path: &Path) -> Vec<AuditRecord> {
    let mut out = Vec::new();
    let s = scan(path, |r| out.push(r.clone())).expect("the audit chain verifies");
    assert!(!s.torn_tail);
    assert_eq!(s.count as usize, out.len());
    out
}

fn count(records: &[AuditRecord], op: Operation) -> usize {
    records.iter().filter(|r| r.operation == op).count()
}

/// The two ways to run the core.
enum Keys {
    InProcess(CustodyKeys),
    Process(
        RemoteCustodyKeys,
        StopHandle,
        std::thread::JoinHandle<etee_hsm::Result<()>>,
    ),
}

impl Keys {
    fn open(config: &HsmConfig, custody: &CustodyConfig, process: bool, dir: &Path) -> Keys {
        if !process {
            return Keys::InProcess(CustodyKeys::open(config, custody).unwrap());
        }
        let socket = dir.join("custody.sock");
        let server = Server::bind(config, custody, &socket).unwrap();
        let stop = server.stop_handle();
        let thread = std::thread::spawn(move || server.run());
        let client = RemoteCustodyKeys::open(config, custody, &socket).unwrap();
        Keys::Process(client, stop, thread)
    }

    fn ops(&self) -> &dyn PrivateKeyOps {
        match self {
            Keys::InProcess(k) => k,
            Keys::Process(k, ..) => k,
        }
    }

    fn signing_key(&self) -> SigningKey {
        match self {
            Keys::InProcess(k) => k.signing_key().unwrap(),
            Keys::Process(k, ..) => k.signing_key().unwrap(),
        }
    }

    fn key_ring(&self) -> KeyRing {
        match self {
            Keys::InProcess(k) => k.key_ring().unwrap(),
            Keys::Process(k, ..) => k.key_ring().unwrap(),
        }
    }

    fn audit_head(&self) -> etee_custody::AuditHead {
        match self {
            Keys::InProcess(k) => k.audit_head(),
            Keys::Process(k, ..) => match k.request(&etee_custody::Request::AuditHead).unwrap() {
                etee_custody::Response::AuditHead(h) => h,
                other => panic!("{other:?}"),
            },
        }
    }
}

#[test]
fn seal_unseal_through_custody_is_audited_and_policed() {
    seal_unseal_through_custody(false);
}

#[test]
fn seal_unseal_through_custody_process_is_audited_and_policed() {
    seal_unseal_through_custody(true);
}

fn seal_unseal_through_custody(process: bool) {
    let pki = TestPki::generate("etee-hsm custody").unwrap();
    let alice = pki
        .institution(&InstitutionSpec::new("NIHII-HOSPITAL", "71000436", "Alice"))
        .unwrap();
    let entries = vec![
        PfxEntry {
            alias: "authentication".into(),
            key: alice.auth.key.clone(),
            chain: vec![alice.auth.cert.clone(), pki.root.cert.clone()],
        },
        PfxEntry {
            alias: alice.etk_serial_decimal(),
            key: alice.etk_key.clone(),
            chain: vec![alice.etk_cert.clone()],
        },
    ];
    let p12 = write_pfx(&entries, "secret", Profile::Modern).unwrap();
    let config = new_token(if process { "custody-proc" } else { "custody" });
    {
        let hsm = Hsm::open(&config).unwrap();
        let keystore = EhealthKeystore::load(&p12, "secret").unwrap();
        hsm.import(&keystore, &ImportOptions::default()).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let custody = CustodyConfig::defaults(&config, dir.path());
    assert_eq!(
        custody.audit_file,
        dir.path().join(format!(
            "audit-{}.log",
            config.token.label.as_deref().unwrap()
        ))
    );
    assert_eq!(custody.client, "etee-cli");

    let keys = Keys::open(&config, &custody, process, dir.path());
    // Unlocking is on record.
    let after_unlock = records(&custody.audit_file);
    assert_eq!(after_unlock.len(), 1);
    assert_eq!(after_unlock[0].operation, Operation::Unlock);
    assert_eq!(after_unlock[0].outcome, Outcome::Success);

    // Seal from Alice (through the core) to Alice's own ETK; unseal through the core.
    let signer = keys.signing_key();
    let plain = b"Through the custody core.\n".repeat(40);
    let mut sealed = Vec::new();
    seal(
        &signer,
        &[Recipient::Certificate(cert(&alice.etk_cert))],
        None,
        &plain[..],
        &mut sealed,
        &SealOptions::default(),
    )
    .unwrap();
    let signs = count(&records(&custody.audit_file), Operation::SignPssSha256);
    assert_eq!(signs, 2, "sealing signs both layers through the core");

    let ring = keys.key_ring();
    assert_eq!(ring.keys().len(), 1);
    let opts = UnsealOptions {
        anchors: TrustAnchors::new(vec![cert(&pki.root.cert)]),
        ..Default::default()
    };
    let (result, content) = unseal_to_vec(&sealed, &ring, &opts);
    assert!(result.verdict.is_clean(), "{:?}", result.verdict);
    assert_eq!(content.as_deref(), Some(&plain[..]));

    let all = records(&custody.audit_file);
    assert_eq!(count(&all, Operation::SignPssSha256), signs);
    assert_eq!(count(&all, Operation::DecryptPkcs1v15), 1);
    assert_eq!(
        all.len(),
        1 + signs + 1,
        "one record per private-key operation"
    );
    assert!(all.iter().all(|r| r.outcome == Outcome::Success));
    let head = keys.audit_head();
    assert_eq!(head.next_sequence, all.len() as u64);
    assert_eq!(head.hash, all.last().unwrap().hash());

    // Decrypting with the authentication key: refused by the policy, and recorded.
    let err = keys
        .ops()
        .decrypt_pkcs1v15(&KeyId("authentication".into()), &[0u8; 256])
        .unwrap_err();
    assert!(matches!(err, KeyError::Refused(_)), "{err:?}");
    // Signing with the ETK key: refused too.
    let etk = KeyId(alice.etk_serial_decimal());
    let err = keys.ops().sign_pss_sha256(&etk, &[7; 32]).unwrap_err();
    assert!(matches!(err, KeyError::Refused(_)), "{err:?}");
    // A bad blob for the ETK key: the uniform decryption error.
    let err = keys.ops().decrypt_pkcs1v15(&etk, &[1u8; 256]).unwrap_err();
    assert!(matches!(err, KeyError::DecryptFailed), "{err:?}");

    let all = records(&custody.audit_file);
    let refused: Vec<_> = all
        .iter()
        .filter(|r| r.outcome == Outcome::Refused(CoreError::PolicyDenied))
        .collect();
    assert_eq!(refused.len(), 2, "{all:?}");
    assert_eq!(
        refused[0].key.as_ref().map(|k| k.as_bytes()),
        Some(&b"authentication"[..])
    );
    assert_eq!(refused[0].operation, Operation::DecryptPkcs1v15);
    let failed = all.last().unwrap();
    assert_eq!(failed.operation, Operation::DecryptPkcs1v15);
    assert!(matches!(
        failed.outcome,
        Outcome::Refused(CoreError::Token(_))
    ));

    // The PKCS#11 sessions are logged out behind the core's back (C_Logout from another
    // handle) while two callers seal and unseal: every operation still succeeds, each is
    // on the chain once.
    let before = records(&custody.audit_file).len();
    let (other, session) =
        common::foreign_session(&config.module, config.token.label.as_deref().unwrap());
    const EACH: usize = 15;
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    for _ in 0..EACH {
                        let mut sealed = Vec::new();
                        seal(
                            &signer,
                            &[Recipient::Certificate(cert(&alice.etk_cert))],
                            None,
                            &plain[..],
                            &mut sealed,
                            &SealOptions::default(),
                        )
                        .unwrap();
                        let (result, content) = unseal_to_vec(&sealed, &ring, &opts);
                        assert!(result.verdict.is_clean(), "{:?}", result.verdict);
                        assert_eq!(content.as_deref(), Some(&plain[..]));
                    }
                })
            })
            .collect();
        std::thread::sleep(std::time::Duration::from_millis(30));
        session.logout().unwrap();
        for w in workers {
            w.join().unwrap();
        }
    });
    drop(session);
    // Dropping the last clone of the second handle would finalise the library: keep it.
    std::mem::forget(other);
    if let Keys::InProcess(k) = &keys {
        assert!(k.hsm().pool().recoveries() > 0, "the logout went unnoticed");
        eprintln!(
            "recoveries under load: {:?}",
            k.hsm().pool().recent_recoveries()
        );
    }
    let all = records(&custody.audit_file);
    assert_eq!(
        all.len(),
        before + 2 * EACH * 3,
        "two signatures and one decryption each"
    );
    assert!(all[before..].iter().all(|r| r.outcome == Outcome::Success));
    assert_eq!(
        etee_custody::audit::verify_chain_to(all.iter(), &keys.audit_head()),
        Ok(all.len() as u64)
    );

    let socket = dir.path().join("custody.sock");
    match keys {
        // Stopping the server (as SIGTERM does) answers what is under way, locks the core
        // on record and removes the socket.
        Keys::Process(client, stop, thread) => {
            drop((client, signer, ring));
            stop.stop();
            thread.join().unwrap().unwrap();
            assert!(!socket.exists(), "socket left behind");
        }
        // Dropping the keys locks the core, on record.
        keys @ Keys::InProcess(_) => drop((keys, signer, ring)),
    }
    let all = records(&custody.audit_file);
    assert_eq!(all.last().unwrap().operation, Operation::Lock);
    // Reopening continues the chain.
    let again = CustodyKeys::open(&config, &custody).unwrap();
    assert_eq!(again.audit_head().next_sequence, all.len() as u64 + 1);
}

/// The core's `Unlock` checks the PIN against the one the pool logged in with; wrong PINs
/// move the retry counter and are recorded.
#[test]
fn unlock_checks_the_pin_and_counts_failures() {
    use etee_custody::file_sink::FileAuditSink;
    use etee_custody::policy::Policy;
    use etee_custody::wire::Pin;
    use etee_custody::{AuditHead, Custody, Request, Response};
    use etee_hsm::HsmToken;

    let config = new_token("custody-pin");
    let hsm = Hsm::open(&config).unwrap();
    let token = HsmToken::new(&hsm).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let (sink, head) = FileAuditSink::open(&path).unwrap();
    assert_eq!(head, AuditHead::GENESIS);
    let mut core = Custody::new(token, sink, Policy::deny_all(), head);
    let unlock = |pin: &str| Request::Unlock {
        pin: Pin::from_slice(pin.as_bytes()).unwrap(),
    };
    let wrong = core.handle_request(&unlock("0000"), 1);
    assert_eq!(
        wrong,
        Response::Error(CoreError::PinIncorrect { tries_left: 4 })
    );
    let right = core.handle_request(&unlock(common::USER_PIN), 2);
    assert_eq!(right, Response::Unlocked);
    let all = records(&path);
    assert_eq!(all.len(), 2);
    assert_eq!(
        all[0].outcome,
        Outcome::Refused(CoreError::PinIncorrect { tries_left: 4 })
    );
    assert_eq!(all[1].outcome, Outcome::Success);
}

/// Five wrong PINs lock the core out, a restart does not clear them (they are counted from
/// the audit chain), and the administrator's reset (recorded) does.
#[test]
fn a_pin_lock_out_survives_a_restart_until_reset() {
    use etee_custody::wire::Pin;
    use etee_custody::{Request, Response};

    let config = new_token("custody-lockout");
    let dir = tempfile::tempdir().unwrap();
    let custody = CustodyConfig::defaults(&config, dir.path());
    {
        let keys = CustodyKeys::open(&config, &custody).unwrap();
        assert_eq!(keys.request(&Request::Lock), Response::Locked);
        let wrong = Request::Unlock {
            pin: Pin::from_slice(b"not the pin").unwrap(),
        };
        for left in (0..5).rev() {
            assert_eq!(
                keys.request(&wrong),
                Response::Error(CoreError::PinIncorrect { tries_left: left })
            );
        }
    }
    let err = CustodyKeys::open(&config, &custody)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("locked out") && err.contains("reset-pin"),
        "{err}"
    );
    assert_eq!(
        CustodyKeys::reset_pin_counter(&config, &custody).unwrap(),
        5
    );
    let keys = CustodyKeys::open(&config, &custody).unwrap();
    match keys.request(&Request::Status) {
        Response::Status(s) => {
            assert_eq!(s.state, etee_custody::lock::LockState::Unlocked);
            assert_eq!(s.pin_tries_left, 5);
        }
        other => panic!("{other:?}"),
    }
    let all = records(&custody.audit_file);
    assert_eq!(count(&all, Operation::PinReset), 1);
}
