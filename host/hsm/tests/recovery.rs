//! (g) Session recovery: the pool's sessions are lost behind its back and the next
//! operations still succeed, also when that happens while several threads work. This test finalises the PKCS#11 library, so it runs alone in
//! its own test process (its own file) with one test function.

mod common;

use common::{foreign_session, verify_pss};
use cryptoki::context::{CInitializeArgs, Pkcs11};
use etee_formats::keys::{KeyId, PrivateKeyOps};
use etee_hsm::Hsm;
use openssl::pkey::{PKey, Public};
use openssl::rsa::Padding;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Waits until `done` holds (checked every millisecond); fails after a minute, far beyond
/// what any machine takes: a bound against hanging, not a timing assertion.
fn wait_for(done: impl Fn() -> bool, what: &str) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "waited a minute for {what}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn operations_survive_lost_sessions() {
    let config = common::new_token("recovery");
    let hsm = Hsm::open(&config).unwrap();
    let auth = hsm
        .generate(config.profile("authentication").unwrap())
        .unwrap();
    let etk = hsm.generate(config.profile("etk").unwrap()).unwrap();
    let keys = hsm.keys();
    let auth_id = KeyId(auth.id.clone());
    let etk_id = KeyId(etk.id.clone());
    let blob = {
        let key: PKey<Public> = PKey::public_key_from_der(&etk.public_key_der()).unwrap();
        let mut ctx = openssl::pkey_ctx::PkeyCtx::new(&key).unwrap();
        ctx.encrypt_init().unwrap();
        ctx.set_rsa_padding(Padding::PKCS1).unwrap();
        let mut out = Vec::new();
        ctx.encrypt_to_vec(b"content key 1234", &mut out).unwrap();
        out
    };
    let digest = openssl::sha::sha256(b"recover");
    let check = |what: &str| {
        for _ in 0..4 {
            let sig = keys
                .sign_pss_sha256(&auth_id, &digest)
                .unwrap_or_else(|e| panic!("sign after {what}: {e}"));
            assert!(verify_pss(&auth.public_key_der(), &digest, &sig), "{what}");
            let plain = keys
                .decrypt_pkcs1v15(&etk_id, &blob)
                .unwrap_or_else(|e| panic!("decrypt after {what}: {e}"));
            assert_eq!(&plain[..], b"content key 1234", "{what}");
        }
    };
    check("start");
    assert_eq!(hsm.pool().recoveries(), 0);

    // 1. Logged out behind the pool's back (C_Logout logs out every session).
    let (other, session) = foreign_session(&config.module, "recovery");
    session.logout().unwrap();
    drop(session);
    check("C_Logout from another handle");
    let log = hsm.pool().recent_recoveries();
    assert!(!log.is_empty(), "no recovery recorded");
    // Re-login, or (for a worker whose private-key handle died with the logout, while
    // another worker had logged in again already) finding the key again.
    assert!(log.iter().any(|r| r.ends_with("Relogin")), "{log:?}");
    assert!(
        log.iter()
            .all(|r| r.ends_with("Relogin") || r.ends_with("Refind")),
        "{log:?}"
    );

    // 1b. The same while several threads are signing. Deterministic: the logout comes
    //     once the workers have signed a few times between them, and each worker goes on
    //     until it has signed AFTER times starting after the logout, so that operations
    //     run on logged-out sessions whatever the scheduling; the pool must have noticed
    //     (a recovery counted) and every signature must still verify.
    let before = hsm.pool().recoveries();
    let (second, session) = foreign_session(&config.module, "recovery");
    const AFTER: usize = 10;
    let signed = AtomicUsize::new(0);
    let logged_out = AtomicBool::new(false);
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    let mut after = 0;
                    while after < AFTER {
                        // Read before the operation: it starts after the logout.
                        let late = logged_out.load(Ordering::SeqCst);
                        let sig = keys.sign_pss_sha256(&auth_id, &digest).unwrap();
                        assert!(verify_pss(&auth.public_key_der(), &digest, &sig));
                        signed.fetch_add(1, Ordering::SeqCst);
                        after += usize::from(late);
                    }
                })
            })
            .collect();
        wait_for(
            || signed.load(Ordering::SeqCst) >= 8,
            "the workers' first signatures",
        );
        session.logout().unwrap();
        logged_out.store(true, Ordering::SeqCst);
        for w in workers {
            w.join().unwrap();
        }
    });
    drop(session);
    // Dropping the last clone of a handle finalises the library: not yet.
    std::mem::forget(second);
    assert!(
        hsm.pool().recoveries() > before,
        "the logout under load went unnoticed: {:?}",
        hsm.pool().recent_recoveries()
    );
    check("C_Logout under load");
    assert!(
        hsm.pool()
            .recent_recoveries()
            .iter()
            .all(|r| r.ends_with("Relogin") || r.ends_with("Refind")),
        "{:?}",
        hsm.pool().recent_recoveries()
    );

    // 2. Every session closed and the library re-initialised by someone else: the pool's
    //    handles are invalid (CKR_SESSION_HANDLE_INVALID); the token is found again by
    //    label and the keys by CKA_ID.
    drop(other); // the last reference to a second handle: C_Finalize
    let reinit = Pkcs11::new(&config.module).unwrap();
    reinit.initialize(CInitializeArgs::OsThreads).unwrap();
    std::mem::forget(reinit); // never finalise again behind the test's back
    let before = hsm.pool().recoveries();
    check("C_Finalize + C_Initialize from another handle");
    assert!(hsm.pool().recoveries() > before);
    let log = hsm.pool().recent_recoveries();
    assert!(
        log.last().unwrap() == "CKR_SESSION_HANDLE_INVALID: Reopen",
        "{log:?}"
    );

    // 2b. The same while two threads are working: both stop between two operations (a
    //     PKCS#11 library must not be finalised under a call in progress: SoftHSM frees
    //     what that call uses), the library is finalised and initialised again by another
    //     handle, then both go on at once on the handles the reset invalidated, one with a
    //     decryption, the other with a signature. No call was in flight, so nothing a blob
    //     could have caused can fail: every request succeeds (a decryption failing here,
    //     even with the uniform `DecryptFailed`, would be a message lost to a recoverable
    //     session error), and the pool recovered by opening new sessions.
    //     Both of the pool's sessions are made current first (two jobs that wait for each
    //     other hold one each), so that both handles in use are ones the reset kills.
    assert_eq!(hsm.pool().size(), 2);
    let both = std::sync::Barrier::new(2);
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                hsm.pool()
                    .run(|_| {
                        both.wait();
                        Ok::<_, etee_hsm::HsmError>(())
                    })
                    .unwrap()
            });
        }
    });
    let before = hsm.pool().recoveries();
    const ROUNDS: usize = 6;
    const PAUSE_AT: usize = 2;
    let pause = std::sync::Barrier::new(3);
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..2)
            .map(|w| {
                let pause = &pause;
                let (keys, auth_id, etk_id, blob, auth) = (&keys, &auth_id, &etk_id, &blob, &auth);
                s.spawn(move || {
                    for round in 0..ROUNDS {
                        if round == PAUSE_AT {
                            pause.wait(); // both between two operations
                            pause.wait(); // the library was reset
                        }
                        // Worker 0 decrypts first, worker 1 signs first.
                        for op in [w, 1 - w] {
                            if op == 0 {
                                let plain = keys
                                    .decrypt_pkcs1v15(etk_id, blob)
                                    .unwrap_or_else(|e| panic!("decrypt, round {round}: {e:?}"));
                                assert_eq!(&plain[..], b"content key 1234");
                            } else {
                                let sig = keys
                                    .sign_pss_sha256(auth_id, &digest)
                                    .unwrap_or_else(|e| panic!("sign, round {round}: {e:?}"));
                                assert!(verify_pss(&auth.public_key_der(), &digest, &sig));
                            }
                        }
                    }
                })
            })
            .collect();
        pause.wait();
        drop(Pkcs11::new(&config.module).unwrap()); // C_Finalize
        let reinit = Pkcs11::new(&config.module).unwrap();
        reinit.initialize(CInitializeArgs::OsThreads).unwrap();
        std::mem::forget(reinit);
        pause.wait();
        for w in workers {
            w.join().unwrap();
        }
    });
    let log = hsm.pool().recent_recoveries();
    assert!(
        hsm.pool().recoveries() > before,
        "the reset under two threads went unnoticed: {log:?}"
    );
    assert_eq!(
        log.last().unwrap(),
        "CKR_SESSION_HANDLE_INVALID: Reopen",
        "{log:?}"
    );
    check("C_Finalize + C_Initialize under two threads");

    // 3. The library finalised and left so (CKR_CRYPTOKI_NOT_INITIALIZED): the pool
    //    initialises it again.
    drop(Pkcs11::new(&config.module).unwrap());
    let before = hsm.pool().recoveries();
    check("C_Finalize from another handle");
    assert!(hsm.pool().recoveries() > before);
    let log = hsm.pool().recent_recoveries();
    assert!(
        log.iter()
            .any(|r| r == "CKR_CRYPTOKI_NOT_INITIALIZED: Reinitialize"),
        "{log:?}"
    );

    // 4. An operation left active on every session (begun and never finished, as a
    //    logout in the middle of a signature leaves one in SoftHSM): each call on such a
    //    session fails with CKR_OPERATION_ACTIVE, and the pool gives it a new session.
    let pool = hsm.pool();
    let all_lent = std::sync::Barrier::new(pool.size());
    std::thread::scope(|s| {
        for _ in 0..pool.size() {
            s.spawn(|| {
                pool.run(|conn| {
                    conn.session()
                        .digest_init(&cryptoki::mechanism::Mechanism::Sha256)
                        .expect("a digest begun");
                    all_lent.wait();
                    Ok(())
                })
                .unwrap();
            });
        }
    });
    let before = pool.recoveries();
    check("operations left active");
    assert!(pool.recoveries() > before);
    let log = pool.recent_recoveries();
    assert!(
        log.iter().any(|r| r == "CKR_OPERATION_ACTIVE: Relogin"),
        "{log:?}"
    );

    // Everything else still works after recoveries: listing, a new key.
    let listed = hsm.list().unwrap();
    assert_eq!(listed.keys.len(), 2);
    let mut profile = config.profile("etk").unwrap().clone();
    profile.id = Some("after-recovery".into());
    hsm.generate(&profile).unwrap();
    eprintln!(
        "recoveries: {} {:?}",
        hsm.pool().recoveries(),
        hsm.pool().recent_recoveries()
    );
}
