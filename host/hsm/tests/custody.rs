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
use etee_formats::keystore::{ehealth_entries, write_pfx, EhealthKeystore, Profile};
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

/// Requests of `op` on record: the outcome records (a use also has a use record before the
/// token is asked, which this does not count).
fn count(records: &[AuditRecord], op: Operation) -> usize {
    records
        .iter()
        .filter(|r| r.operation == op && r.outcome != Outcome::Admitted)
        .count()
}

/// Every record a use record or a success, and every use concluded.
fn all_succeeded(records: &[AuditRecord]) -> bool {
    let used = records.iter().filter(|r| r.outcome == Outcome::Admitted);
    records
        .iter()
        .all(|r| matches!(r.outcome, Outcome::Success | Outcome::Admitted))
        && used.clone().all(|u| records.iter().any(|r| r.concludes(u)))
}

/// The two ways to run the core.
enum Keys {
    InProcess(CustodyKeys),
    Process(
        RemoteCustodyKeys,
        StopHandle,
        std::thread::JoinHandle<etee_hsm::Result<()>>,
        // The server's core (a clone), to look at its session pool.
        CustodyKeys,
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
        let core = server.keys().clone();
        let thread = std::thread::spawn(move || server.run());
        let client = RemoteCustodyKeys::open(config, custody, &socket).unwrap();
        Keys::Process(client, stop, thread, core)
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

    fn wrap(&self, key: &str, secret: &[u8]) -> Result<Vec<u8>, KeyError> {
        match self {
            Keys::InProcess(k) => k.wrap_secret(key, secret),
            Keys::Process(k, ..) => k.wrap_secret(key, secret),
        }
    }

    fn unwrap(&self, key: &str, wrapped: &[u8]) -> Result<zeroize::Zeroizing<Vec<u8>>, KeyError> {
        match self {
            Keys::InProcess(k) => k.unwrap_secret(key, wrapped),
            Keys::Process(k, ..) => k.unwrap_secret(key, wrapped),
        }
    }

    fn describe(&self, key: &str) -> Result<etee_custody::KeyFacts, KeyError> {
        match self {
            Keys::InProcess(k) => k.describe_key(key),
            Keys::Process(k, ..) => k.describe_key(key),
        }
    }

    /// Stops the server of the separate-process mode (the core is locked on record).
    fn close(self) {
        if let Keys::Process(client, stop, thread, core) = self {
            drop(core);
            drop(client);
            stop.stop();
            thread.join().unwrap().unwrap();
        }
    }

    /// The session pool of the core: this process's, or the custody server's.
    fn pool(&self) -> &etee_hsm::SessionPool {
        match self {
            Keys::InProcess(k) | Keys::Process(.., k) => k.hsm().pool(),
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
    let entries = ehealth_entries(
        alice.auth.key.clone(),
        vec![alice.auth.cert.clone(), pki.root.cert.clone()],
        alice.etk_key.clone(),
        alice.etk_cert.clone(),
    )
    .unwrap();
    let p12 = write_pfx(&entries, "secret", Profile::Modern).unwrap();
    let config = new_token(if process {
        "custody-proc"
    } else {
        "custody-inproc"
    });
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
    // Unlocking is on record: the login (its try, before the PIN reaches the token, then
    // its outcome) and the core's unlock.
    let after_unlock = records(&custody.audit_file);
    assert_eq!(
        after_unlock
            .iter()
            .map(|r| (r.operation, r.outcome))
            .collect::<Vec<_>>(),
        [
            (Operation::Unlock, Outcome::Admitted),
            (Operation::Unlock, Outcome::Success),
            (Operation::Unlock, Outcome::Admitted),
            (Operation::Unlock, Outcome::Success),
        ]
    );

    // Seal from Alice (through the core) to Alice's own ETK; unseal through the core.
    let signer = keys.signing_key();
    let plain = b"Through the custody core.\n".repeat(40);
    let sealed_to_alice = || {
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
        sealed
    };
    let sealed = sealed_to_alice();
    let signs = count(&records(&custody.audit_file), Operation::SignPssSha256);
    assert_eq!(signs, 2, "sealing signs both layers through the core");

    let ring = keys.key_ring();
    assert_eq!(ring.keys().len(), 1);
    let opts = UnsealOptions {
        anchors: TrustAnchors::new(vec![cert(&pki.root.cert)]),
        ..Default::default()
    };
    let (result, content) = unseal_to_vec(&sealed, &ring, &opts).unwrap();
    assert!(result.verdict.is_clean(), "{:?}", result.verdict);
    assert_eq!(content.as_deref(), Some(&plain[..]));

    let all = records(&custody.audit_file);
    assert_eq!(count(&all, Operation::SignPssSha256), signs);
    assert_eq!(count(&all, Operation::DecryptPkcs1v15), 1);
    assert_eq!(
        all.len(),
        4 + 2 * (signs + 1),
        "a use record and an outcome per private-key operation"
    );
    assert!(all_succeeded(&all), "{all:?}");
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
    // handle) while two callers seal and unseal: the operations go on (the pool logs in
    // again), each is on the chain once. A decryption in flight at the logout may fail:
    // SoftHSM then answers C_Decrypt as it answers a bad blob (CKR_GENERAL_ERROR), and
    // telling the two apart would take a call that only failures make, which would time
    // the padding (pool.rs); that message fails as a damaged one would, uniformly.
    let before = records(&custody.audit_file).len();
    let before_recoveries = keys.pool().recoveries();
    let (other, session) =
        common::foreign_session(&config.module, config.token.label.as_deref().unwrap());
    // Dropping the last clone of the second handle would finalise the library for every
    // test of this binary, also when this one fails: never dropped.
    let _other = std::mem::ManuallyDrop::new(other);
    const EACH: usize = 15;
    let failed = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    for _ in 0..EACH {
                        let sealed = sealed_to_alice();
                        let (result, content) = unseal_to_vec(&sealed, &ring, &opts).unwrap();
                        if result.verdict.is_clean() {
                            assert_eq!(content.as_deref(), Some(&plain[..]));
                        } else {
                            assert_eq!(content, None, "{:?}", result.verdict);
                            failed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        }
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
    // In this process, or in the custody server's core (also in this process here).
    assert!(
        keys.pool().recoveries() > before_recoveries,
        "the logout went unnoticed: {:?}",
        keys.pool().recent_recoveries()
    );
    eprintln!(
        "recoveries under load: {:?}",
        keys.pool().recent_recoveries()
    );
    let all = records(&custody.audit_file);
    assert_eq!(
        all.len(),
        before + 2 * EACH * 3 * 2,
        "two signatures and one decryption each, two records each"
    );
    // At most the one decryption of each caller that the logout caught, on record as
    // the token's refusal; every other use succeeded.
    let failed = failed.into_inner();
    assert!(failed <= 2, "{failed} unseals failed");
    let refused: Vec<&AuditRecord> = all[before..]
        .iter()
        .filter(|r| !matches!(r.outcome, Outcome::Success | Outcome::Admitted))
        .collect();
    assert_eq!(refused.len(), failed, "{refused:?}");
    assert!(refused
        .iter()
        .all(|r| r.operation == Operation::DecryptPkcs1v15
            && matches!(r.outcome, Outcome::Refused(CoreError::Token(_)))));
    let used: Vec<&AuditRecord> = all[before..]
        .iter()
        .filter(|r| r.outcome == Outcome::Admitted)
        .collect();
    assert!(used
        .iter()
        .all(|u| all[before..].iter().any(|r| r.concludes(u))));
    assert_eq!(
        etee_custody::audit::verify_chain_to(all.iter(), &keys.audit_head()),
        Ok(all.len() as u64)
    );

    // Blobs that cannot be decrypted (a bad padding, the wrong length): the caller gets
    // one uniform error, whatever the token said; the record keeps the token's own code,
    // the one a direct C_Decrypt of the same blob gets (SoftHSM: CKR_GENERAL_ERROR for a
    // bad padding).
    let etk = &ring.keys()[0];
    let mut bad_padding = vec![0u8; 256];
    openssl::rand::rand_bytes(&mut bad_padding[1..]).unwrap();
    let etk_id = alice.etk_serial_decimal();
    for blob in [bad_padding, vec![1u8; 17]] {
        let err = etk.ops.decrypt_pkcs1v15(&etk.key, &blob).unwrap_err();
        assert!(matches!(err, KeyError::DecryptFailed), "{err:?}");
        let failed = records(&custody.audit_file).pop().unwrap();
        assert_eq!(failed.operation, Operation::DecryptPkcs1v15);
        assert_eq!(failed.input_digest, openssl::sha::sha256(&blob));
        let Outcome::Refused(CoreError::Token(t)) = failed.outcome else {
            panic!("{failed:?}");
        };
        let token_says = common::token_decrypt_error(&config, etk_id.as_bytes(), &blob);
        assert_eq!(t.function, etee_custody::TokenFunction::Decrypt, "{t}");
        assert_eq!(t.ckr, token_says, "{t}");
        eprintln!("SoftHSM on a blob of {} bytes: {t}", blob.len());
    }

    // The ETK key deleted behind the core's back by another process (pkcs11-tool; not by
    // another handle in this process: SoftHSM 2.6.1 may crash when a session uses the
    // handle of an object another session of the same process destroyed): a message for
    // it is the key provider's error, not a verdict on the message (the sender did
    // nothing wrong), and the record keeps what the token said.
    common::pkcs11_tool_delete_private_key(&config, alice.etk_serial_decimal().as_bytes());
    match unseal_to_vec(&sealed_to_alice(), &ring, &opts) {
        Err(etee_formats::cms::UnsealError::Key(KeyError::Unavailable(why))) => {
            assert!(why.contains("C_Decrypt"), "{why}")
        }
        Err(e) => panic!("{e}"),
        Ok((result, _)) => panic!("a verdict: {:?}", result.verdict),
    }
    let failed = records(&custody.audit_file).pop().unwrap();
    assert_eq!(failed.operation, Operation::DecryptPkcs1v15);
    assert!(
        matches!(failed.outcome, Outcome::Refused(CoreError::Token(t))
            if t.ckr == etee_custody::token::ckr::KEY_HANDLE_INVALID),
        "{failed:?}"
    );

    let socket = dir.path().join("custody.sock");
    match keys {
        // Stopping the server (as SIGTERM does) answers what is under way, locks the core
        // on record and removes the socket.
        Keys::Process(client, stop, thread, core) => {
            drop((client, signer, ring, core));
            stop.stop();
            thread.join().unwrap().unwrap();
            assert!(!socket.exists(), "socket left behind");
        }
        // Dropping the keys locks the core, on record.
        keys @ Keys::InProcess(_) => drop((keys, signer, ring)),
    }
    let all = records(&custody.audit_file);
    assert_eq!(all.last().unwrap().operation, Operation::Lock);
    // Reopening continues the chain (the login and the core's unlock: two records each).
    let again = CustodyKeys::open(&config, &custody).unwrap();
    assert_eq!(again.audit_head().next_sequence, all.len() as u64 + 4);
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
    assert_eq!(
        all.iter().map(|r| r.outcome).collect::<Vec<_>>(),
        [
            Outcome::Admitted,
            Outcome::Refused(CoreError::PinIncorrect { tries_left: 4 }),
            Outcome::Admitted,
            Outcome::Success
        ]
    );
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

/// A wrapping key whose value the test knows (not sensitive, unlike `kgss-wrap`), so that
/// the token's RFC 3394 output can be checked against OpenSSL's.
fn known_wrapping_key(hsm: &Hsm, id: &str, value: &[u8]) {
    use cryptoki::mechanism::MechanismType;
    use cryptoki::object::{Attribute, KeyType, ObjectClass};
    let template = vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(false),
        Attribute::Extractable(true),
        Attribute::Wrap(true),
        Attribute::Unwrap(true),
        Attribute::Encrypt(false),
        Attribute::Decrypt(false),
        Attribute::Sign(false),
        Attribute::Verify(false),
        Attribute::AllowedMechanisms(vec![MechanismType::AES_KEY_WRAP]),
        Attribute::Id(id.as_bytes().to_vec()),
        Attribute::Value(value.to_vec()),
    ];
    hsm.pool()
        .run(|conn| Ok(conn.session().create_object(&template).unwrap()))
        .unwrap();
}

fn random(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    openssl::rand::rand_bytes(&mut v).unwrap();
    v
}

#[test]
fn wrap_unwrap_through_custody_is_audited_and_policed() {
    wrap_unwrap_through_custody(false);
}

#[test]
fn wrap_unwrap_through_custody_process_is_audited_and_policed() {
    wrap_unwrap_through_custody(true);
}

/// The KGSS wrapping key: generated by the built-in profile, used only through the core,
/// every use on the audit chain; key kinds kept apart.
fn wrap_unwrap_through_custody(process: bool) {
    use etee_custody::token::TokenFunction;
    use etee_hsm::{KeyClass, KeyProfile, KeyRole};

    let config = new_token(if process { "kgss-proc" } else { "kgss-inproc" });
    let known_kek = random(32);
    {
        let hsm = Hsm::open(&config).unwrap();
        let kgss = hsm.generate(&KeyProfile::kgss_wrap()).unwrap();
        assert_eq!(
            (kgss.id.as_str(), kgss.role, kgss.bits),
            ("kgss-wrap", KeyRole::Wrapping, 256)
        );
        assert!(kgss.public_key_hex.is_empty());
        // Once only.
        let again = hsm.generate(&KeyProfile::kgss_wrap()).unwrap_err();
        assert!(matches!(again, etee_hsm::HsmError::KeyExists(_)), "{again}");
        hsm.generate(&KeyProfile::authentication()).unwrap();
        known_wrapping_key(&hsm, "test-kek", &known_kek);

        // Our listing: a sensitive, never extractable AES-256 secret key for key wrap only.
        let list = hsm.list().unwrap();
        let k = list.keys.iter().find(|k| k.id == "kgss-wrap").unwrap();
        assert_eq!(k.class, KeyClass::SecretKey);
        assert_eq!(k.key_type, "CKK_AES");
        assert_eq!(k.role, Some(KeyRole::Wrapping));
        assert_eq!((k.key_bits, k.modulus_bits), (256, 0));
        assert_eq!((k.sensitive, k.extractable), (Some(true), Some(false)));
        assert_eq!(
            (k.always_sensitive, k.never_extractable),
            (Some(true), Some(true))
        );
        assert_eq!((k.wrap, k.unwrap), (Some(true), Some(true)));
        assert_eq!((k.sign, k.decrypt), (Some(false), Some(false)));
        assert_eq!(k.allowed_mechanisms, ["CKM_AES_KEY_WRAP"]);
        assert_eq!(k.local, Some(true));
        let auth = list.keys.iter().find(|k| k.id == "authentication").unwrap();
        assert_eq!((auth.class, auth.key_bits), (KeyClass::PrivateKey, 2048));
        let json = serde_json::to_value(&list).unwrap();
        let listed = json["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["id"] == "kgss-wrap")
            .unwrap();
        assert_eq!(listed["class"], "secret-key");
        assert_eq!(listed["role"], "wrapping");
        assert_eq!(listed["sensitive"], true);
        assert_eq!(listed["extractable"], false);

        // As OpenSC's pkcs11-tool sees it.
        let tool = common::pkcs11_tool_objects(&config);
        let objects = common::parse_pkcs11_tool(&tool);
        let o = objects
            .iter()
            .find(|o| o.id_hex == hex::encode("kgss-wrap"))
            .unwrap_or_else(|| panic!("{tool}"));
        assert!(o.kind.starts_with("Secret Key Object"), "{tool}");
        assert!(o.kind.contains("AES"), "{tool}");
        for flag in [
            "sensitive",
            "always sensitive",
            "never extractable",
            "local",
        ] {
            assert!(o.access.iter().any(|a| a == flag), "{flag} missing: {tool}");
        }
        assert!(!o.access.iter().any(|a| a == "extractable"), "{tool}");
        for u in ["wrap", "unwrap"] {
            assert!(o.usage.iter().any(|a| a == u), "{u} missing: {tool}");
        }
        for u in ["encrypt", "decrypt", "sign", "verify"] {
            assert!(!o.usage.iter().any(|a| a == u), "{u}: {tool}");
        }
    }

    let dir = tempfile::tempdir().unwrap();
    let custody = CustodyConfig::defaults(&config, dir.path());
    let keys = Keys::open(&config, &custody, process, dir.path());

    // Round trips of an AES-128 and an AES-256 key.
    let mut blobs = Vec::new();
    for n in [16, 32] {
        let secret = random(n);
        let wrapped = keys.wrap("kgss-wrap", &secret).unwrap();
        assert_eq!(wrapped.len(), n + 8);
        assert_ne!(&wrapped[8..], &secret[..]);
        // RFC 3394 is deterministic.
        assert_eq!(keys.wrap("kgss-wrap", &secret).unwrap(), wrapped);
        let back = keys.unwrap("kgss-wrap", &wrapped).unwrap();
        assert_eq!(&back[..], &secret[..]);
        blobs.push(wrapped);
    }

    // The token's output is RFC 3394's, checked against OpenSSL with a key we know.
    let secret = random(24);
    let wrapped = keys.wrap("test-kek", &secret).unwrap();
    let kek = openssl::aes::AesKey::new_encrypt(&known_kek).unwrap();
    let mut expected = vec![0u8; 32];
    let n = openssl::aes::wrap_key(&kek, None, &mut expected, &secret).unwrap();
    assert_eq!(n, 32);
    assert_eq!(wrapped, expected);
    assert_eq!(
        &keys.unwrap("test-kek", &expected).unwrap()[..],
        &secret[..]
    );

    let all = records(&custody.audit_file);
    assert_eq!(count(&all, Operation::WrapSecret), 5);
    assert_eq!(count(&all, Operation::UnwrapSecret), 3);
    assert!(all_succeeded(&all));
    // The wrap and the unwrap of a blob carry its fingerprint.
    let fingerprint = openssl::sha::sha256(&blobs[0]);
    let with_it: Vec<_> = all
        .iter()
        .filter(|r| r.input_digest == fingerprint && r.outcome != Outcome::Admitted)
        .collect();
    assert_eq!(with_it.len(), 3, "two wraps and one unwrap");

    // A corrupted blob, a blob for another key: one uniform error; the CKR on record.
    let mut corrupted = blobs[1].clone();
    corrupted[12] ^= 0x01;
    for (key, blob) in [("kgss-wrap", &corrupted), ("test-kek", &blobs[1])] {
        let err = keys.unwrap(key, blob).unwrap_err();
        assert!(matches!(err, KeyError::DecryptFailed), "{err:?}");
        let last = records(&custody.audit_file).pop().unwrap();
        assert_eq!(last.operation, Operation::UnwrapSecret);
        assert_eq!(last.input_digest, openssl::sha::sha256(blob));
        let Outcome::Refused(CoreError::Token(t)) = last.outcome else {
            panic!("{last:?}");
        };
        assert_eq!(t.function, TokenFunction::UnwrapKey, "{t}");
        assert_ne!(t.ckr, 0);
        eprintln!("SoftHSM on a bad blob: {t}");
    }
    // SoftHSM answers CKR_GENERAL_ERROR to a failed integrity check: final, not a reason to
    // reopen every session and try again.
    if let Keys::InProcess(k) = &keys {
        assert_eq!(
            k.hsm().pool().recoveries(),
            0,
            "{:?}",
            k.hsm().pool().recent_recoveries()
        );
    }
    // Wrong lengths: refused before the token, on record.
    let err = keys.wrap("kgss-wrap", &[1; 20]).unwrap_err();
    assert!(matches!(err, KeyError::Refused(_)), "{err:?}");
    let err = keys.unwrap("kgss-wrap", &[1; 30]).unwrap_err();
    assert!(matches!(err, KeyError::Refused(_)), "{err:?}");
    let all = records(&custody.audit_file);
    let n = all.len();
    assert_eq!(
        all[n - 2].outcome,
        Outcome::Refused(CoreError::InvalidLength)
    );
    assert_eq!(all[n - 2].input_digest, [0; 32], "no digest of a secret");
    assert_eq!(
        all[n - 1].outcome,
        Outcome::Refused(CoreError::InvalidLength)
    );

    // Key confusion under the default policy: refused and recorded.
    let err = keys
        .ops()
        .sign_pss_sha256(&KeyId("kgss-wrap".into()), &[7; 32])
        .unwrap_err();
    assert!(matches!(err, KeyError::Refused(_)), "{err:?}");
    let err = keys.wrap("authentication", &[1; 16]).unwrap_err();
    assert!(matches!(err, KeyError::Refused(_)), "{err:?}");
    let all = records(&custody.audit_file);
    let n = all.len();
    assert_eq!(all[n - 2].operation, Operation::SignPssSha256);
    assert_eq!(all[n - 1].operation, Operation::WrapSecret);
    assert!(all[n - 2..]
        .iter()
        .all(|r| r.outcome == Outcome::Refused(CoreError::PolicyDenied)));
    assert_eq!(
        etee_custody::audit::verify_chain_to(all.iter(), &keys.audit_head()),
        Ok(all.len() as u64)
    );
    keys.close();
}

/// Asserts that the chain at `audit` holds, beside the logins, a sign, a decrypt, a wrap
/// and an unwrap, in that order, each refused for the kind of key it named.
#[track_caller]
fn refused_by_key_kind(audit: &Path) {
    let refusals: Vec<_> = records(audit)
        .iter()
        .filter(|r| r.operation != Operation::Unlock)
        .map(|r| (r.operation, r.outcome))
        .collect();
    let wrong = Outcome::Refused(CoreError::WrongKeyKind);
    assert_eq!(
        refusals,
        [
            (Operation::SignPssSha256, wrong),
            (Operation::DecryptPkcs1v15, wrong),
            (Operation::WrapSecret, wrong),
            (Operation::UnwrapSecret, wrong),
        ]
    );
}

/// A policy that lets the CLI's client do every operation with each of `keys`: only the
/// key kind can then refuse a wrong use.
fn allow_everything(keys: &[etee_custody::KeyId]) -> etee_custody::policy::Policy {
    use etee_custody::policy::{Policy, Rule};
    let client = etee_custody::ClientId::try_from("etee-cli").unwrap();
    let mut policy = Policy::deny_all();
    for key in keys {
        policy
            .allow(Rule {
                client: client.clone(),
                key: key.clone(),
                sign: true,
                decrypt: true,
                wrap: true,
                unwrap: true,
                budget: etee_hsm::custody::DEFAULT_BUDGET,
            })
            .unwrap();
    }
    policy
}

/// With a policy that allows every operation on every key, the key kind still keeps them
/// apart (the core refuses before the token is asked), and the token itself refuses too.
#[test]
fn wrapping_and_rsa_keys_are_not_interchangeable() {
    use etee_custody::{KeyKind, Token};
    use etee_hsm::{HsmToken, KeyProfile};

    let config = new_token("kgss-confusion");
    let hsm = Hsm::open(&config).unwrap();
    hsm.generate(&KeyProfile::kgss_wrap()).unwrap();
    hsm.generate(&KeyProfile::authentication()).unwrap();
    let token = HsmToken::new(&hsm).unwrap();
    let kinds: Vec<_> = token.keys().map(|(id, k)| (id.to_vec(), k)).collect();
    assert_eq!(
        kinds,
        [
            (b"authentication".to_vec(), KeyKind::Authentication),
            (b"kgss-wrap".to_vec(), KeyKind::Wrapping)
        ]
    );

    // The second line: the token has no private key "kgss-wrap" and no secret key
    // "authentication".
    let mut raw = token.clone();
    let kgss = etee_custody::KeyId::try_from("kgss-wrap").unwrap();
    let auth = etee_custody::KeyId::try_from("authentication").unwrap();
    let mut out = [0u8; 512];
    assert!(raw.sign_pss_sha256(&kgss, &[1; 32], &mut out).is_err());
    assert!(raw.decrypt_pkcs1v15(&kgss, &[1; 256], &mut out).is_err());
    assert!(raw.wrap_aes_kw(&auth, &[1; 16], &mut out).is_err());
    assert!(raw.unwrap_aes_kw(&auth, &[1; 24], &mut out).is_err());

    let policy = allow_everything(&[kgss.clone(), auth.clone()]);
    let dir = tempfile::tempdir().unwrap();
    let custody = CustodyConfig::defaults(&config, dir.path());
    let keys = CustodyKeys::with_policy(hsm, token, policy, &custody).unwrap();
    let sign = keys.sign_pss_sha256(&KeyId("kgss-wrap".into()), &[7; 32]);
    assert!(matches!(sign, Err(KeyError::Refused(_))), "{sign:?}");
    let decrypt = keys.decrypt_pkcs1v15(&KeyId("kgss-wrap".into()), &[7; 256]);
    assert!(matches!(decrypt, Err(KeyError::Refused(_))), "{decrypt:?}");
    let wrap = keys.wrap_secret("authentication", &[7; 16]);
    assert!(matches!(wrap, Err(KeyError::Refused(_))), "{wrap:?}");
    let unwrap = keys.unwrap_secret("authentication", &[7; 24]);
    assert!(matches!(unwrap, Err(KeyError::Refused(_))), "{unwrap:?}");
    refused_by_key_kind(&custody.audit_file);
    // And the allowed use works.
    let wrapped = keys.wrap_secret("kgss-wrap", &[9; 32]).unwrap();
    assert_eq!(
        &keys.unwrap_secret("kgss-wrap", &wrapped).unwrap()[..],
        &[9; 32]
    );
}

/// The same for the two RSA keys: with a policy that allows everything, the core refuses
/// the authentication key for a decryption and an ETK key for a signature (the key kind,
/// before the token is asked), and the token refuses them itself (their templates do not
/// allow it), with the PKCS#11 code said.
#[test]
fn authentication_and_etk_keys_are_not_interchangeable() {
    use etee_custody::token::ckr;
    use etee_custody::{KeyKind, Token};
    use etee_hsm::{HsmToken, KeyProfile};

    let config = new_token("rsa-confusion");
    let hsm = Hsm::open(&config).unwrap();
    hsm.generate(&KeyProfile::authentication()).unwrap();
    let etk_id = hsm.generate(&KeyProfile::etk()).unwrap().id;
    let token = HsmToken::new(&hsm).unwrap();
    let auth = etee_custody::KeyId::try_from("authentication").unwrap();
    let etk = etee_custody::KeyId::try_from(etk_id.as_str()).unwrap();
    assert_eq!(token.key_kind(&auth), Some(KeyKind::Authentication));
    assert_eq!(token.key_kind(&etk), Some(KeyKind::Encryption));

    // The second line: the token's own refusals.
    let mut raw = token.clone();
    let mut out = [0u8; 512];
    let code = |r: Result<usize, etee_custody::TokenError>| r.map_err(|e| e.ckr);
    assert_eq!(
        code(raw.sign_pss_sha256(&etk, &[1; 32], &mut out)),
        Err(ckr::KEY_FUNCTION_NOT_PERMITTED),
        "an ETK key signs"
    );
    assert_eq!(
        code(raw.decrypt_pkcs1v15(&auth, &[1; 256], &mut out)),
        Err(ckr::KEY_FUNCTION_NOT_PERMITTED),
        "the authentication key decrypts"
    );

    let policy = allow_everything(&[auth.clone(), etk.clone()]);
    let dir = tempfile::tempdir().unwrap();
    let custody = CustodyConfig::defaults(&config, dir.path());
    let keys = CustodyKeys::with_policy(hsm, token, policy, &custody).unwrap();
    let sign = keys.sign_pss_sha256(&KeyId(etk_id.clone()), &[7; 32]);
    assert!(matches!(sign, Err(KeyError::Refused(_))), "{sign:?}");
    let decrypt = keys.decrypt_pkcs1v15(&KeyId("authentication".into()), &[7; 256]);
    assert!(matches!(decrypt, Err(KeyError::Refused(_))), "{decrypt:?}");
    let wrap = keys.wrap_secret(&etk_id, &[7; 16]);
    assert!(matches!(wrap, Err(KeyError::Refused(_))), "{wrap:?}");
    let unwrap = keys.unwrap_secret("authentication", &[7; 24]);
    assert!(matches!(unwrap, Err(KeyError::Refused(_))), "{unwrap:?}");
    refused_by_key_kind(&custody.audit_file);
    // The allowed use works: the authentication key signs.
    let signature = keys
        .sign_pss_sha256(&KeyId("authentication".into()), &[9; 32])
        .unwrap();
    assert_eq!(signature.len(), 256);
}

/// A fresh token `<name>-proc` or `<name>-inproc` holding the wrapping key `kek`, and the
/// default custody configuration with its audit file in a new directory.
fn token_with_kek(name: &str, process: bool) -> (HsmConfig, tempfile::TempDir, CustodyConfig) {
    let label = format!("{name}-{}", if process { "proc" } else { "inproc" });
    let config = new_token(&label);
    {
        let hsm = Hsm::open(&config).unwrap();
        known_wrapping_key(&hsm, "kek", &random(32));
    }
    let dir = tempfile::tempdir().unwrap();
    let custody = CustodyConfig::defaults(&config, dir.path());
    (config, dir, custody)
}

/// `[custody] budget_burst` / `budget_per_second` bound the default policy's rules: with a
/// burst of 3 and one use a second refilled, a fourth use at once is refused (and
/// recorded), in process and through a custody process alike.
#[test]
fn the_configured_budget_bounds_the_default_rules() {
    for process in [false, true] {
        let (config, dir, mut custody) = token_with_kek("budget", process);
        custody.budget = etee_custody::policy::Budget {
            burst: 3,
            per_second: 1,
        };
        let keys = Keys::open(&config, &custody, process, dir.path());
        for _ in 0..3 {
            keys.wrap("kek", &random(16)).unwrap();
        }
        let err = keys.wrap("kek", &random(16)).unwrap_err().to_string();
        assert!(err.contains("rate limit"), "a fourth use at once: {err}");
        keys.close();
        let all = records(&custody.audit_file);
        assert_eq!(
            count(&all, Operation::WrapSecret),
            4,
            "the refusal is on record too"
        );
        assert_eq!(
            all.iter()
                .filter(|r| r.operation == Operation::WrapSecret
                    && !matches!(r.outcome, Outcome::Success | Outcome::Admitted))
                .count(),
            1
        );
    }
}

/// A restart refills no budget: the uses on the audit chain within the longest refill time
/// are spent again when the core opens. With a burst of 100 refilled at one use a second,
/// 50 wraps and 50 questions about the key (`DescribeKey`, which spends from the same
/// rule), then a restart (a new custody process in that mode): only what the seconds since
/// have refilled is left, not a fresh burst. Also when those uses are spread over several
/// archived segments of the audit file (the smallest segments allowed).
#[test]
fn a_restart_does_not_refill_the_budget() {
    for (process, segmented) in [(false, false), (true, false), (false, true), (true, true)] {
        let name = if segmented {
            "budget-restart-seg"
        } else {
            "budget-restart"
        };
        let (config, dir, mut custody) = token_with_kek(name, process);
        custody.budget = etee_custody::policy::Budget {
            burst: 100,
            per_second: 1,
        };
        if segmented {
            custody.audit_segment_bytes = Some(etee_hsm::config::MIN_AUDIT_SEGMENT_BYTES);
        }
        let keys = Keys::open(&config, &custody, process, dir.path());
        for _ in 0..50 {
            keys.wrap("kek", &random(16)).unwrap();
            keys.describe("kek").unwrap();
        }
        let spent = std::time::Instant::now();
        keys.close();
        let archived = etee_custody::file_sink::segments(&custody.audit_file).unwrap();
        assert_eq!(archived.len() >= 3, segmented, "{archived:?}");
        let keys = Keys::open(&config, &custody, process, dir.path());
        let mut granted = 0u64;
        let err = loop {
            match keys.wrap("kek", &random(16)) {
                Ok(_) => granted += 1,
                Err(e) => break e.to_string(),
            }
            assert!(granted < 100, "a full burst after the restart");
        };
        let refilled = spent.elapsed().as_secs() + 1;
        assert!(err.contains("rate limit"), "{err}");
        assert!(
            granted <= refilled,
            "{granted} uses after the restart, {refilled} refilled at most (process: \
             {process}, segments: {segmented})"
        );
        keys.close();
    }
}

/// `[custody] audit_segment_bytes`: the SoftHSM-backed core starts new segments as its
/// audit file grows, the whole chain verifies across them, and a reopened core continues
/// it, in process and through a custody process alike.
#[test]
fn the_audit_file_starts_new_segments_as_it_grows() {
    for process in [false, true] {
        let (config, dir, mut custody) = token_with_kek("segments", process);
        custody.audit_segment_bytes = Some(4096);
        for round in 0..2 {
            let keys = Keys::open(&config, &custody, process, dir.path());
            for _ in 0..60 {
                keys.wrap("kek", &random(16)).unwrap();
            }
            keys.close();
            let archived = etee_custody::file_sink::segments(&custody.audit_file).unwrap();
            assert!(archived.len() >= 2 * (round + 1), "{archived:?}");
            let s = scan(&custody.audit_file, |_| {}).expect("the chain verifies across segments");
            assert_eq!((s.segments, s.first_sequence), (archived.len(), 0));
            let all = records(&custody.audit_file);
            assert!(all_succeeded(&all));
            assert_eq!(count(&all, Operation::WrapSecret), 60 * (round + 1));
        }
    }
}

/// A custody process on a fresh token, running on its own thread, and what the socket
/// tests need to speak to it.
struct Served {
    socket: std::path::PathBuf,
    audit: std::path::PathBuf,
    stop: StopHandle,
    thread: std::thread::JoinHandle<etee_hsm::Result<()>>,
    _dir: tempfile::TempDir,
}

impl Served {
    fn start(name: &str, limit: usize, timeouts: etee_hsm::remote::PeerTimeouts) -> Self {
        let (config, dir, custody) = token_with_kek(name, true);
        let socket = dir.path().join("custody.sock");
        let server = Server::bind(&config, &custody, &socket)
            .unwrap()
            .with_connection_limit(limit)
            .with_peer_timeouts(timeouts);
        let stop = server.stop_handle();
        let thread = std::thread::spawn(move || server.run());
        Self {
            socket,
            audit: custody.audit_file.clone(),
            stop,
            thread,
            _dir: dir,
        }
    }

    fn connect(&self) -> std::os::unix::net::UnixStream {
        std::os::unix::net::UnixStream::connect(&self.socket).unwrap()
    }

    /// Stops the server; it must have returned within `within`.
    fn stop_within(self, within: std::time::Duration) {
        let began = std::time::Instant::now();
        self.stop.stop();
        while !self.thread.is_finished() {
            assert!(
                began.elapsed() < within,
                "the server did not stop in {within:?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        self.thread.join().unwrap().unwrap();
    }
}

/// One request on `stream`; None when the server closed the connection instead of
/// answering.
fn ask(
    stream: &mut std::os::unix::net::UnixStream,
    request: &etee_custody::Request,
) -> Option<etee_custody::Response> {
    use etee_custody::config::{MAX_REQUEST_FRAME, MAX_RESPONSE_FRAME};
    let mut buf = vec![0u8; MAX_REQUEST_FRAME];
    let frame = etee_custody::wire::encode_request(request, &mut buf).unwrap();
    etee_hsm::remote::write_frame(stream, frame).ok()?;
    let answer = etee_hsm::remote::read_frame(stream, MAX_RESPONSE_FRAME).ok()??;
    Some(etee_custody::wire::decode_response(&answer).unwrap())
}

fn is_status(r: Option<etee_custody::Response>) -> bool {
    matches!(r, Some(etee_custody::Response::Status(_)))
}

/// The custody process serves a bounded number of connections at once. At the limit, a new
/// connection takes the place of the one that has waited longest for its peer's next
/// request (that peer finds it closed; clients then open another), so that idle or stalled
/// peers cannot keep a client out.
#[test]
fn the_custody_process_bounds_its_connections() {
    use etee_custody::Request;
    use std::io::Write;
    let served = Served::start("connections", 2, Default::default());
    let pause = || std::thread::sleep(std::time::Duration::from_millis(30));
    let (mut a, mut b) = (served.connect(), served.connect());
    assert!(is_status(ask(&mut a, &Request::Status)));
    pause();
    assert!(is_status(ask(&mut b, &Request::Status)));
    pause();
    let mut third = served.connect();
    assert!(
        is_status(ask(&mut third, &Request::Status)),
        "a third connection is served"
    );
    assert_eq!(
        ask(&mut a, &Request::Status),
        None,
        "in the place of the one idle longest"
    );
    assert!(
        is_status(ask(&mut b, &Request::Status)),
        "the other goes on"
    );
    // Stalled peers (half a request each) are taken out in turn the same way.
    pause();
    let mut stalled = served.connect();
    stalled.write_all(&[0, 0, 0, 40, 0, 2]).unwrap();
    pause();
    let mut fourth = served.connect();
    assert!(is_status(ask(&mut fourth, &Request::Status)));
    pause();
    let mut fifth = served.connect();
    assert!(is_status(ask(&mut fifth, &Request::Status)));
    stalled
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let mut rest = Vec::new();
    assert_eq!(
        std::io::Read::read_to_end(&mut stalled, &mut rest).unwrap(),
        0,
        "the stalled peer's connection was closed"
    );
    served.stop_within(std::time::Duration::from_secs(10));
}

/// A peer that stalls cannot hold a connection, nor the server's stop: half a request is
/// dropped after the idle timeout, a peer that does not read its answers after the write
/// timeout (also while the server stops), and a frame too long to read is answered
/// `BadFrame` and its connection closed at once (the peer sees the end without waiting for
/// another connection to come).
#[test]
fn stalled_peers_are_dropped() {
    use etee_custody::{Request, Response};
    use std::io::{Read, Write};
    let timeouts = etee_hsm::remote::PeerTimeouts {
        idle: std::time::Duration::from_millis(300),
        write: std::time::Duration::from_secs(2),
    };
    let served = Served::start("stalled", 16, timeouts);
    let mut half = served.connect();
    half.write_all(&[0, 0, 0, 40, 0, 2]).unwrap();
    half.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let began = std::time::Instant::now();
    let mut rest = Vec::new();
    assert_eq!(half.read_to_end(&mut rest).unwrap(), 0);
    assert!(began.elapsed() < std::time::Duration::from_secs(4));

    let mut long = served.connect();
    long.write_all(&100_000u32.to_be_bytes()).unwrap();
    long.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let answer = etee_hsm::remote::read_frame(&mut long, 1024)
        .unwrap()
        .unwrap();
    assert_eq!(
        etee_custody::wire::decode_response(&answer).unwrap(),
        Response::Error(CoreError::BadFrame)
    );
    assert_eq!(long.read_to_end(&mut rest).unwrap(), 0, "closed at once");

    // Requests without reading the answers, until the server takes no more of them (it is
    // then stuck writing answers this peer does not read).
    let mut greedy = served.connect();
    greedy.set_nonblocking(true).unwrap();
    let mut buf = vec![0u8; etee_custody::config::MAX_REQUEST_FRAME];
    let frame = etee_custody::wire::encode_request(&Request::Status, &mut buf).unwrap();
    let mut message = (frame.len() as u32).to_be_bytes().to_vec();
    message.extend_from_slice(frame);
    let (mut pending, mut last_progress) = (Vec::new(), std::time::Instant::now());
    while last_progress.elapsed() < std::time::Duration::from_millis(300) {
        if pending.is_empty() {
            pending = message.clone();
        }
        match greedy.write(&pending) {
            Ok(n) => {
                pending.drain(..n);
                last_progress = std::time::Instant::now();
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(std::time::Duration::from_millis(10))
            }
            Err(e) => panic!("the server dropped the peer early: {e}"),
        }
        assert!(last_progress.elapsed() < std::time::Duration::from_secs(30));
    }
    let mut fresh = served.connect();
    assert!(
        is_status(ask(&mut fresh, &Request::Status)),
        "others are served"
    );
    // The server stops once the write timeout has dropped that peer.
    served.stop_within(std::time::Duration::from_secs(10));
    greedy.set_nonblocking(false).unwrap();
    greedy
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let mut answers = Vec::new();
    match greedy.read_to_end(&mut answers) {
        Ok(_) => {}
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }
}

/// A peer that queued many requests and reads the answers back slowly cannot hold the
/// server's stop: after the write timeout (and a second) its connection is cut off.
#[test]
fn a_slow_reader_does_not_hold_the_stop() {
    use etee_custody::Request;
    use std::io::{Read, Write};
    let timeouts = etee_hsm::remote::PeerTimeouts {
        idle: std::time::Duration::from_secs(60),
        write: std::time::Duration::from_secs(1),
    };
    let served = Served::start("slow-reader", 16, timeouts);
    let mut peer = served.connect();
    let mut buf = vec![0u8; etee_custody::config::MAX_REQUEST_FRAME];
    let frame = etee_custody::wire::encode_request(&Request::Status, &mut buf).unwrap();
    let mut message = (frame.len() as u32).to_be_bytes().to_vec();
    message.extend_from_slice(frame);
    // Queue requests while the server takes them (it stops once its answers fill our
    // receive buffer), reading a little now and then so that it never stalls for long.
    peer.set_nonblocking(true).unwrap();
    let mut queued = 0usize;
    let began = std::time::Instant::now();
    let mut answers = vec![0u8; 64];
    while began.elapsed() < std::time::Duration::from_secs(2) {
        match peer.write(&message) {
            Ok(n) if n == message.len() => queued += 1,
            Ok(_) => break,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let _ = peer.read(&mut answers);
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(queued > 1000, "only {queued} requests queued");
    // Then read back slowly: about one answer every 100 ms, so that what it queued would
    // keep the server busy for minutes.
    peer.set_nonblocking(false).unwrap();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reading = done.clone();
    let reader = std::thread::spawn(move || {
        let mut chunk = [0u8; 16];
        while !reading.load(std::sync::atomic::Ordering::SeqCst) {
            std::thread::sleep(std::time::Duration::from_millis(100));
            match peer.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    });
    served.stop_within(std::time::Duration::from_secs(8));
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    reader.join().unwrap();
}

/// The custody process locks and unlocks itself (PIN file at start, lock at stop): `Lock`
/// and `Unlock` on its socket are refused without reaching the core, so that a client can
/// neither lock the core nor guess the PIN (wrong PINs count towards a lock-out that
/// survives restarts).
#[test]
fn lock_and_unlock_are_not_served_on_the_socket() {
    use etee_custody::lock::LockState;
    use etee_custody::{Request, Response};
    let served = Served::start("no-lock", 16, Default::default());
    let mut peer = served.connect();
    let head = |peer: &mut std::os::unix::net::UnixStream| match ask(peer, &Request::AuditHead) {
        Some(Response::AuditHead(h)) => h,
        other => panic!("{other:?}"),
    };
    let before = head(&mut peer);
    assert_eq!(
        ask(&mut peer, &Request::Lock),
        Some(Response::Error(CoreError::NotServed))
    );
    for _ in 0..6 {
        let unlock = Request::Unlock {
            pin: etee_custody::wire::Pin::from_slice(b"guess").unwrap(),
        };
        assert_eq!(
            ask(&mut peer, &unlock),
            Some(Response::Error(CoreError::NotServed))
        );
    }
    match ask(&mut peer, &Request::Status) {
        Some(Response::Status(s)) => {
            assert_eq!(s.state, LockState::Unlocked);
            assert_eq!(s.pin_tries_left, 5, "no PIN was tried");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(head(&mut peer), before, "nothing reached the core's chain");
    let records = records(&served.audit);
    served.stop_within(std::time::Duration::from_secs(10));
    assert!(!records.is_empty());
}

/// Stopping does not depend on the socket file: removed by an operator, the server still
/// stops when asked.
#[test]
fn the_custody_process_stops_without_its_socket_file() {
    let served = Served::start("no-socket-file", 16, Default::default());
    let mut peer = served.connect();
    assert!(is_status(ask(&mut peer, &etee_custody::Request::Status)));
    std::fs::remove_file(&served.socket).unwrap();
    served.stop_within(std::time::Duration::from_secs(10));
}

/// A wrong PIN in the PIN file counts like a wrong `Unlock`: each refused start is on the
/// audit chain and says how many tries are left, the fifth locks the core out, and then the
/// token is not asked at all (not even with the right PIN) until the administrator's reset.
#[test]
fn wrong_pin_files_are_counted_and_lock_the_core_out() {
    let config = new_token("pin-file-count");
    let dir = tempfile::tempdir().unwrap();
    let custody = CustodyConfig::defaults(&config, dir.path());
    let wrong_pin = dir.path().join("wrong.pin");
    std::fs::write(&wrong_pin, "0000\n").unwrap();
    let mut wrong = config.clone();
    wrong.pin = etee_hsm::config::PinSource::File(wrong_pin);
    let max = etee_custody::config::MAX_PIN_ATTEMPTS;
    for attempt in 1..max {
        let e = CustodyKeys::open(&wrong, &custody).unwrap_err().to_string();
        assert!(e.contains("CKR_PIN_INCORRECT"), "{e}");
        assert!(
            e.contains(&format!("{} more wrong PIN(s)", max - attempt)),
            "attempt {attempt}: {e}"
        );
    }
    let e = CustodyKeys::open(&wrong, &custody).unwrap_err().to_string();
    assert!(
        e.contains("CKR_PIN_INCORRECT") && e.contains("now locked out"),
        "{e}"
    );
    assert!(!e.contains("not asked"), "{e}");
    // Locked out: even the right PIN is not tried.
    let e = CustodyKeys::open(&config, &custody)
        .unwrap_err()
        .to_string();
    assert!(e.contains("locked out") && e.contains("not asked"), "{e}");
    let all = records(&custody.audit_file);
    let refused: Vec<_> = all
        .iter()
        .filter(|r| {
            r.operation == Operation::Unlock
                && !matches!(r.outcome, Outcome::Success | Outcome::Admitted)
        })
        .collect();
    assert_eq!(refused.len(), usize::from(max), "one record per wrong PIN");
    // The administrator's reset (on record) lets the right PIN in again.
    assert_eq!(
        CustodyKeys::reset_pin_counter(&config, &custody).unwrap(),
        max
    );
    let keys = CustodyKeys::open(&config, &custody).unwrap();
    drop(keys);
}

/// Commands that use the token without the core (`keys list`, `generate`, ...) log in
/// through [`CustodyKeys::open_token`]: each login is on the chain (a wrong PIN
/// counted, an accepted one recorded), and a chain that ends locked out stops them before
/// the token is asked, whatever the PIN. The administrator's reset does not try the PIN
/// (no login on record), so that it is no uncounted guess.
#[test]
fn every_login_with_the_user_pin_is_on_the_chain() {
    let config = new_token("login-gate");
    let dir = tempfile::tempdir().unwrap();
    let custody = CustodyConfig::defaults(&config, dir.path());
    let wrong_pin = dir.path().join("wrong.pin");
    std::fs::write(&wrong_pin, "0000\n").unwrap();
    let mut wrong = config.clone();
    wrong.pin = etee_hsm::config::PinSource::File(wrong_pin);
    let unlocks = || {
        records(&custody.audit_file)
            .iter()
            .filter(|r| r.operation == Operation::Unlock && r.outcome != Outcome::Admitted)
            .map(|r| r.outcome == Outcome::Success)
            .collect::<Vec<_>>()
    };

    let hsm = CustodyKeys::open_token(&config, &custody).unwrap();
    assert!(hsm.list().is_ok());
    drop(hsm);
    assert_eq!(unlocks(), [true], "the accepted login is on record");
    let max = etee_custody::config::MAX_PIN_ATTEMPTS;
    for attempt in 1..max {
        let e = CustodyKeys::open_token(&wrong, &custody)
            .unwrap_err()
            .to_string();
        assert!(e.contains("CKR_PIN_INCORRECT"), "attempt {attempt}: {e}");
    }
    // The fifth try reached the token: said so, and that the next ones will not.
    let e = CustodyKeys::open_token(&wrong, &custody)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("CKR_PIN_INCORRECT") && e.contains("now locked out"),
        "{e}"
    );
    assert!(!e.contains("not asked"), "{e}");
    assert_eq!(
        unlocks().len(),
        1 + usize::from(max),
        "each wrong PIN counted"
    );
    // Locked out: neither a wrong PIN nor the right one reaches the token, and nothing
    // more is appended.
    for c in [&wrong, &config] {
        let e = CustodyKeys::open_token(c, &custody)
            .unwrap_err()
            .to_string();
        assert!(e.contains("locked out") && e.contains("not asked"), "{e}");
    }
    assert_eq!(unlocks().len(), 1 + usize::from(max));

    // The reset with a configuration whose PIN is wrong: recorded, no login tried.
    assert_eq!(
        CustodyKeys::reset_pin_counter(&wrong, &custody).unwrap(),
        max
    );
    let all = records(&custody.audit_file);
    assert_eq!(all.last().unwrap().operation, Operation::PinReset);
    assert_eq!(
        unlocks().len(),
        1 + usize::from(max),
        "the reset tried no PIN"
    );
    // The count starts again: a wrong PIN is counted, the right one is accepted again.
    let e = CustodyKeys::open_token(&wrong, &custody)
        .unwrap_err()
        .to_string();
    assert!(e.contains(&format!("{} more wrong PIN(s)", max - 1)), "{e}");
    drop(CustodyKeys::open_token(&config, &custody).unwrap());
    assert_eq!(unlocks().last(), Some(&true));

    // No chain, nothing to reset: said, and no audit file made.
    let elsewhere = CustodyConfig::defaults(&config, &dir.path().join("none"));
    let e = CustodyKeys::reset_pin_counter(&config, &elsewhere)
        .unwrap_err()
        .to_string();
    assert!(e.contains("nothing to reset"), "{e}");
    assert!(!elsewhere.audit_file.exists());
}

/// `keys destroy` below the CLI: the plan refuses the active authentication key and
/// wrapping keys; an ETK key goes with a warning, through the core, with its public key,
/// on the audit chain (use, then outcome); pkcs11-tool no longer sees any of its objects.
#[test]
fn keys_are_destroyed_through_the_core_on_record() {
    use common::{parse_pkcs11_tool, pkcs11_tool_objects};
    let config = new_token("destroy-keys");
    let (etk_id, etk_hex) = {
        let hsm = Hsm::open(&config).unwrap();
        hsm.generate(&etee_hsm::KeyProfile::authentication())
            .unwrap();
        known_wrapping_key(&hsm, "kek", &random(32));
        let etk = hsm.generate(&etee_hsm::KeyProfile::etk()).unwrap();
        (etk.id.clone(), hex::encode(etk.id.as_bytes()))
    };
    let objects_with = |id_hex: &str| {
        parse_pkcs11_tool(&pkcs11_tool_objects(&config))
            .into_iter()
            .filter(|o| o.id_hex == id_hex)
            .count()
    };
    assert_eq!(objects_with(&etk_hex), 2, "private and public key");

    let dir = tempfile::tempdir().unwrap();
    let custody = CustodyConfig::defaults(&config, dir.path());
    let keys = CustodyKeys::open(&config, &custody).unwrap();
    let inventory = keys.hsm().list().unwrap();
    let refused = |id: &str| {
        etee_hsm::destroy_plan(&inventory, id)
            .unwrap_err()
            .to_string()
    };
    assert!(refused("authentication").contains("active authentication key"));
    assert!(refused("kek").contains("wrapping key"));
    assert!(refused("nothing-of-that-name").contains("no key with CKA_ID"));
    let plan = etee_hsm::destroy_plan(&inventory, &etk_id).unwrap();
    assert!(
        plan.warning
            .as_deref()
            .unwrap_or("")
            .contains("can no longer be opened"),
        "{plan:?}"
    );

    assert_eq!(keys.destroy_key(&plan).unwrap(), 2);
    assert_eq!(objects_with(&etk_hex), 0);
    assert!(keys
        .hsm()
        .list()
        .unwrap()
        .keys
        .iter()
        .all(|k| k.id != etk_id));
    let err = keys.destroy_key(&plan).unwrap_err();
    assert!(
        matches!(err, etee_hsm::HsmError::NotFound { .. }),
        "{err:?}"
    );
    // The others are untouched and still work.
    let left: Vec<String> = keys
        .hsm()
        .list()
        .unwrap()
        .keys
        .into_iter()
        .map(|k| k.id)
        .collect();
    assert!(left.contains(&"authentication".to_string()), "{left:?}");
    assert_eq!(keys.wrap_secret("kek", &random(16)).unwrap().len(), 24);
    drop(keys);

    let all = records(&custody.audit_file);
    let destroys: Vec<&AuditRecord> = all
        .iter()
        .filter(|r| r.operation == Operation::KeyDestroy)
        .collect();
    assert_eq!(destroys.len(), 4, "use and outcome, twice");
    assert_eq!(destroys[0].outcome, Outcome::Admitted);
    assert_eq!(destroys[1].outcome, Outcome::Success);
    assert!(destroys[1].concludes(destroys[0]));
    assert_eq!(
        destroys[0].key.as_ref().map(|k| k.as_bytes().to_vec()),
        Some(etk_id.as_bytes().to_vec())
    );
    assert!(matches!(destroys[3].outcome, Outcome::Refused(_)));
}

/// `hsm init-pin` below the CLI: the audit chain is opened before the PIN changes, so a
/// chain that cannot be used stops the change; a usable one records `UserPinSet`.
#[test]
fn the_user_pin_is_set_only_when_it_can_be_recorded() {
    let config = new_token("pin-recorded");
    let dir = tempfile::tempdir().unwrap();
    let mut custody = CustodyConfig::defaults(&config, dir.path());
    let so_pin = config.so_pin().unwrap();
    let mut renewed = config.clone();
    let new_pin = dir.path().join("new-user.pin");
    std::fs::write(&new_pin, "a-new-user-pin\n").unwrap();
    renewed.pin = etee_hsm::config::PinSource::File(new_pin);

    // An audit "file" that is a directory: nothing changes.
    let unusable = dir.path().join("audit-is-a-directory");
    std::fs::create_dir(&unusable).unwrap();
    custody.audit_file = unusable;
    let err = CustodyKeys::set_user_pin(&renewed, &custody, &so_pin).unwrap_err();
    assert!(matches!(err, etee_hsm::HsmError::Audit(_)), "{err:?}");
    Hsm::open(&config).unwrap();
    assert!(Hsm::open(&renewed).is_err(), "the PIN changed unrecorded");

    custody.audit_file = dir.path().join("audit.log");
    // A user PIN equal to the SO PIN: refused before the token is asked, as by `hsm init`.
    let mut same = config.clone();
    let so_pin_copy = dir.path().join("so-as-user.pin");
    std::fs::write(&so_pin_copy, so_pin.expose()).unwrap();
    same.pin = etee_hsm::config::PinSource::File(so_pin_copy);
    let err = CustodyKeys::set_user_pin(&same, &custody, &so_pin).unwrap_err();
    assert!(
        matches!(&err, etee_hsm::HsmError::Config(m) if m.contains("are the same")),
        "{err:?}"
    );
    Hsm::open(&config).unwrap();

    CustodyKeys::set_user_pin(&renewed, &custody, &so_pin).unwrap();
    Hsm::open(&renewed).unwrap();
    let all = records(&custody.audit_file);
    assert_eq!(count(&all, Operation::UserPinSet), 1);
}

#[test]
fn keys_are_described_through_the_core() {
    keys_are_described(false);
}

#[test]
fn keys_are_described_through_the_custody_process() {
    keys_are_described(true);
}

/// `DescribeKey` against SoftHSM: a key generated in the token is sensitive, never
/// extractable and local; a key created from a known value is none of those; the answer
/// is the same in both modes, and so are the public key (read without logging in when the
/// core runs in another process) and the token's description. Each question is recorded.
fn keys_are_described(process: bool) {
    let config = new_token(if process {
        "describe-proc"
    } else {
        "describe-inproc"
    });
    let generated = {
        let hsm = Hsm::open(&config).unwrap();
        known_wrapping_key(&hsm, "kek", &random(32));
        let auth = hsm
            .generate(&etee_hsm::KeyProfile::authentication())
            .unwrap();
        assert_eq!(auth.id, "authentication");
        hsm.public_key_der("authentication").unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let custody = CustodyConfig::defaults(&config, dir.path());
    let keys = Keys::open(&config, &custody, process, dir.path());
    let handle = match &keys {
        Keys::InProcess(k) => etee_hsm::CustodyHandle::InProcess(k.clone()),
        Keys::Process(k, ..) => etee_hsm::CustodyHandle::Process(k.clone()),
    };

    // (kind, sensitive, extractable, never extractable, local)
    let described = |key: &str| {
        let f = handle.describe_key(key).unwrap();
        (
            f.kind,
            f.sensitive,
            f.extractable,
            f.never_extractable,
            f.local,
        )
    };
    use etee_custody::KeyKind;
    let (yes, no) = (Some(true), Some(false));
    assert_eq!(
        described("authentication"),
        (KeyKind::Authentication, yes, no, yes, yes)
    );
    assert_eq!(described("kek"), (KeyKind::Wrapping, no, yes, no, no));
    // No rule for a key the token does not have: nothing said about it.
    let refused = handle.describe_key("no-such-key").unwrap_err();
    assert!(
        matches!(&refused, KeyError::Refused(why) if *why == CoreError::PolicyDenied.to_string()),
        "{refused:?}"
    );
    assert_eq!(handle.public_key_der("authentication").unwrap(), generated);
    assert_eq!(
        handle.token_summary().unwrap().label,
        config.token.label.clone().unwrap()
    );
    keys.close();

    let all = records(&custody.audit_file);
    let described: Vec<(String, Outcome)> = all
        .iter()
        .filter(|r| r.operation == Operation::DescribeKey)
        .map(|r| {
            (
                String::from_utf8_lossy(r.key.as_ref().unwrap().as_bytes()).into_owned(),
                r.outcome,
            )
        })
        .collect();
    assert_eq!(
        described,
        [
            ("authentication".to_string(), Outcome::Success),
            ("kek".to_string(), Outcome::Success),
            (
                "no-such-key".to_string(),
                Outcome::Refused(CoreError::PolicyDenied)
            ),
        ]
    );
}

/// A client sends nothing to a socket served by another uid than the custody process's
/// (`[custody] server_uid`, else its own when `allowed_uids` is empty): an impostor that
/// bound the path first gets no frame, and the client a clear error; the real server,
/// under the expected uid, is used.
#[test]
fn clients_send_frames_only_to_the_custody_process() {
    use std::io::Read;
    let me = nix::unistd::getuid().as_raw();
    let served = Served::start("server-uid", 16, Default::default());
    let (config, _dir, mut custody) = token_with_kek("server-uid-client", true);
    custody.server_uid = Some(me);
    let client = RemoteCustodyKeys::open(&config, &custody, &served.socket).unwrap();
    let head = client.audit_head().unwrap();
    assert!(head.next_sequence > 0, "the real server answered: {head:?}");
    drop(client);

    // The impostor runs as this process's uid; the client expects another.
    let impostor_dir = tempfile::tempdir().unwrap();
    let impostor_socket = impostor_dir.path().join("custody.sock");
    let impostor = std::os::unix::net::UnixListener::bind(&impostor_socket).unwrap();
    custody.server_uid = Some(me + 4242);
    let e = RemoteCustodyKeys::open(&config, &custody, &impostor_socket).unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains(&format!("served by uid {me}")) && text.contains("nothing was sent"),
        "{text}"
    );
    let (mut conn, _) = impostor.accept().unwrap();
    conn.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let mut got = Vec::new();
    conn.read_to_end(&mut got).unwrap();
    assert!(got.is_empty(), "the impostor was sent {} bytes", got.len());
    served.stop_within(std::time::Duration::from_secs(10));
}
