//! Every wrong use of a key is refused — and refused before the token is touched.

mod common;
use common::*;

use etee_custody::audit::{sha256, Operation, Outcome};
use etee_custody::insecure::{Call, InsecureMemoryToken};
use etee_custody::policy::{Budget, Policy};
use etee_custody::token::{ckr, TokenError, TokenFunction};
use etee_custody::wire::{Error, Request, Response};
use etee_custody::KeyKind;

/// Sends `request` to `core` and checks that it is refused with `error`, that no key
/// operation reached the token, and that the refusal is on record.
fn refused(core: &mut Core, request: Request, error: Error) {
    let before = core.audit_sink().records().len();
    let calls_before = core.token().calls_total();
    assert_eq!(
        call(core, &request, 1_000),
        Response::Error(error),
        "{request:?}"
    );
    assert_eq!(
        core.token().calls_total(),
        calls_before,
        "token touched for {request:?}"
    );
    let records = core.audit_sink().records();
    assert_eq!(records.len(), before + 1);
    assert_eq!(records[before].outcome, Outcome::Refused(error));
}

/// A policy that lets the app do anything with every key: only the key kind stands between
/// it and a misuse.
fn permissive() -> Policy {
    let mut p = Policy::deny_all();
    for k in [auth(), etk(), etk_old(), kgss(), key("ghost")] {
        p.allow(any_rule(app(), k, GENEROUS)).unwrap();
    }
    p
}

#[test]
fn allowed_uses_work() {
    let mut core = unlocked();
    let digest = [0x42; 32];
    let Response::Signature(sig) = call(&mut core, &sign(app(), auth(), digest), 1) else {
        panic!("no signature");
    };
    assert_eq!(
        sig[..],
        core.token().expected_signature(&auth(), &digest).unwrap()[..]
    );

    let blob = blob_for(&etk(), b"0123456789abcdef");
    let Response::Plaintext(pt) = call(&mut core, &decrypt(app(), etk(), &blob), 2) else {
        panic!("no plaintext");
    };
    assert_eq!(pt.expose(), b"0123456789abcdef");

    let blob = blob_for(&etk_old(), b"old content key!");
    let Response::Plaintext(pt) = call(&mut core, &decrypt(other(), etk_old(), &blob), 3) else {
        panic!("no plaintext");
    };
    assert_eq!(pt.expose(), b"old content key!");

    assert_eq!(
        key_uses(&core),
        vec![
            Call::Sign(auth()),
            Call::Decrypt(etk()),
            Call::Decrypt(etk_old())
        ]
    );
    // Each use: its use record before the token was asked, then its outcome, alike.
    // (Records 0 and 1: the unlock's try and its outcome.)
    let records = core.audit_sink().records();
    assert_eq!(records.len(), 8);
    for (admitted, outcome) in [(2, 3), (4, 5), (6, 7)] {
        assert_eq!(records[admitted].outcome, Outcome::Admitted);
        assert_eq!(records[outcome].outcome, Outcome::Success);
        assert!(records[outcome].concludes(&records[admitted]));
    }
    assert_eq!(records[2].operation, Operation::SignPssSha256);
    assert_eq!(records[2].client, Some(app()));
    assert_eq!(records[2].key, Some(auth()));
    assert_eq!(records[2].input_digest, sha256(&digest));
    assert_eq!(
        records[4].input_digest,
        sha256(&blob_for(&etk(), b"0123456789abcdef"))
    );
    assert_eq!(records[6].client, Some(other()));
}

#[test]
fn decrypt_with_the_authentication_key() {
    let mut core = unlocked_with(permissive());
    refused(
        &mut core,
        decrypt(app(), auth(), &[0; 256]),
        Error::WrongKeyKind,
    );
}

#[test]
fn sign_with_an_encryption_key() {
    let mut core = unlocked_with(permissive());
    refused(&mut core, sign(app(), etk(), [0; 32]), Error::WrongKeyKind);
    refused(
        &mut core,
        sign(app(), etk_old(), [0; 32]),
        Error::WrongKeyKind,
    );
}

#[test]
fn unknown_key() {
    let mut core = unlocked_with(permissive());
    refused(
        &mut core,
        sign(app(), key("ghost"), [0; 32]),
        Error::UnknownKey,
    );
    refused(
        &mut core,
        decrypt(app(), key("ghost"), &[0; 256]),
        Error::UnknownKey,
    );
}

#[test]
fn without_a_rule_key_existence_is_not_revealed() {
    let mut core = unlocked();
    // Same answer for a key that exists and one that does not.
    refused(
        &mut core,
        sign(other(), auth(), [0; 32]),
        Error::PolicyDenied,
    );
    refused(
        &mut core,
        sign(other(), key("ghost"), [0; 32]),
        Error::PolicyDenied,
    );
    refused(
        &mut core,
        sign(client("stranger"), auth(), [0; 32]),
        Error::PolicyDenied,
    );
}

#[test]
fn other_clients_key() {
    let mut core = unlocked();
    // etk_old belongs to `other`, etk to `app`.
    let blob = blob_for(&etk_old(), b"not for seal-app");
    refused(
        &mut core,
        decrypt(app(), etk_old(), &blob),
        Error::PolicyDenied,
    );
    let blob = blob_for(&etk(), b"not for archive!");
    refused(
        &mut core,
        decrypt(other(), etk(), &blob),
        Error::PolicyDenied,
    );
}

#[test]
fn operation_not_allowed_by_the_rule() {
    // The app's rule for `auth` allows signing only, for `etk` decryption only.
    let mut core = unlocked();
    refused(
        &mut core,
        decrypt(app(), auth(), &[0; 256]),
        Error::PolicyDenied,
    );
    refused(&mut core, sign(app(), etk(), [0; 32]), Error::PolicyDenied);
}

#[test]
fn locked_core() {
    let mut core = core();
    refused(&mut core, sign(app(), auth(), [0; 32]), Error::Locked);
    let blob = blob_for(&etk(), b"0123456789abcdef");
    refused(&mut core, decrypt(app(), etk(), &blob), Error::Locked);

    // And again after an explicit Lock.
    let mut core = unlocked();
    assert_eq!(call(&mut core, &Request::Lock, 5), Response::Locked);
    assert!(!core.token().is_logged_in());
    refused(&mut core, sign(app(), auth(), [0; 32]), Error::Locked);
}

#[test]
fn over_budget() {
    let mut p = Policy::deny_all();
    let budget = Budget {
        burst: 2,
        per_second: 1,
    };
    p.allow(rule(app(), auth(), true, false, budget)).unwrap();
    let mut core = unlocked_with(p);

    let t = 10_000;
    assert!(matches!(
        call(&mut core, &sign(app(), auth(), [1; 32]), t),
        Response::Signature(_)
    ));
    assert!(matches!(
        call(&mut core, &sign(app(), auth(), [2; 32]), t),
        Response::Signature(_)
    ));
    assert_eq!(key_uses(&core).len(), 2);

    let before = core.token().calls().len();
    assert_eq!(
        call(&mut core, &sign(app(), auth(), [3; 32]), t + 400),
        Response::Error(Error::RateLimited {
            retry_after_ms: 600
        })
    );
    assert_eq!(
        core.token().calls().len(),
        before,
        "token touched over budget"
    );
    let last = core.audit_sink().records().last().unwrap();
    assert_eq!(
        last.outcome,
        Outcome::Refused(Error::RateLimited {
            retry_after_ms: 600
        })
    );

    // One second later one more use is possible, not two.
    assert!(matches!(
        call(&mut core, &sign(app(), auth(), [4; 32]), t + 1_000),
        Response::Signature(_)
    ));
    assert!(matches!(
        call(&mut core, &sign(app(), auth(), [5; 32]), t + 1_000),
        Response::Error(Error::RateLimited { .. })
    ));
    assert_eq!(key_uses(&core).len(), 3);
}

#[test]
fn refusals_do_not_spend_the_budget() {
    let mut p = Policy::deny_all();
    let one = Budget {
        burst: 1,
        per_second: 0,
    };
    p.allow(rule(app(), etk(), true, true, one)).unwrap();
    let mut core = unlocked_with(p);
    // Wrong kind, refused before the budget is touched ...
    refused(&mut core, sign(app(), etk(), [0; 32]), Error::WrongKeyKind);
    // ... so the single use is still there.
    let blob = blob_for(&etk(), b"0123456789abcdef");
    assert!(matches!(
        call(&mut core, &decrypt(app(), etk(), &blob), 1),
        Response::Plaintext(_)
    ));
    refused(
        &mut core,
        decrypt(app(), etk(), &blob),
        Error::RateLimited {
            retry_after_ms: u64::MAX,
        },
    );
}

#[test]
fn decrypt_failures_look_the_same_whatever_the_cause() {
    let mut core = unlocked();
    // A blob for another key (the fake "padding" check fails) ...
    let wrong = blob_for(&etk_old(), b"0123456789abcdef");
    let frame_a = call_raw(&mut core, &encode(&decrypt(app(), etk(), &wrong)), 1);
    // ... a blob that is too short ...
    let frame_b = call_raw(&mut core, &encode(&decrypt(app(), etk(), &[1, 2, 3])), 2);
    // ... and a device error give the same bytes on the wire.
    core.token()
        .fail_next(TokenError::new(TokenFunction::Decrypt, ckr::DEVICE_ERROR));
    let frame_c = call_raw(&mut core, &encode(&decrypt(app(), etk(), &wrong)), 3);
    assert_eq!(frame_a, frame_b);
    assert_eq!(frame_a, frame_c);
    assert_eq!(
        etee_custody::wire::decode_response(&frame_a).unwrap(),
        Response::Error(Error::DecryptFailed)
    );

    // The audit log keeps the detail for the operator.
    // (Three uses, two records each: the outcomes are every second record.)
    let records = core.audit_sink().records();
    let n = records.len();
    assert_eq!(
        records[n - 5].outcome,
        Outcome::Refused(Error::Token(TokenError::new(
            TokenFunction::Decrypt,
            ckr::ENCRYPTED_DATA_INVALID
        )))
    );
    assert_eq!(
        records[n - 1].outcome,
        Outcome::Refused(Error::Token(TokenError::new(
            TokenFunction::Decrypt,
            ckr::DEVICE_ERROR
        )))
    );
}

/// A token that could not try (the key, session or device gone) is not a failed decryption:
/// no ciphertext causes those codes, so they are passed on for the host to say that the
/// token is unavailable instead of judging the message; every other code stays uniform.
#[test]
fn a_token_that_could_not_try_is_not_a_failed_decryption() {
    let blob = blob_for(&etk(), b"0123456789abcdef");
    for code in [
        ckr::KEY_HANDLE_INVALID,
        ckr::OBJECT_HANDLE_INVALID,
        ckr::SESSION_HANDLE_INVALID,
        ckr::SESSION_CLOSED,
        ckr::USER_NOT_LOGGED_IN,
        ckr::DEVICE_REMOVED,
        ckr::TOKEN_NOT_PRESENT,
        ckr::CRYPTOKI_NOT_INITIALIZED,
    ] {
        assert!(ckr::token_unavailable(code));
        let mut core = unlocked();
        let e = TokenError::new(TokenFunction::Decrypt, code);
        core.token().fail_next(e);
        assert_eq!(
            call(&mut core, &decrypt(app(), etk(), &blob), 1),
            Response::Error(Error::Token(e))
        );
    }
    for code in [
        ckr::GENERAL_ERROR,
        ckr::FUNCTION_FAILED,
        ckr::DEVICE_ERROR,
        ckr::DATA_LEN_RANGE,
        ckr::ENCRYPTED_DATA_INVALID,
        ckr::ENCRYPTED_DATA_LEN_RANGE,
    ] {
        assert!(!ckr::token_unavailable(code));
        let mut core = unlocked();
        core.token()
            .fail_next(TokenError::new(TokenFunction::Decrypt, code));
        assert_eq!(
            call(&mut core, &decrypt(app(), etk(), &blob), 1),
            Response::Error(Error::DecryptFailed)
        );
    }
}

#[test]
fn sign_failures_carry_the_pkcs11_function_and_code() {
    let mut core = unlocked();
    let e = TokenError::new(TokenFunction::Sign, ckr::SESSION_HANDLE_INVALID);
    core.token().fail_next(e);
    assert_eq!(
        call(&mut core, &sign(app(), auth(), [9; 32]), 1),
        Response::Error(Error::Token(e))
    );
}

#[test]
fn wrap_and_unwrap_round_trip() {
    let mut core = unlocked();
    for secret in [&[0x11u8; 16][..], &[0x22; 24], &[0x33; 32]] {
        let Response::Wrapped(wrapped) = call(&mut core, &wrap(app(), kgss(), secret), 1) else {
            panic!("no wrapped secret");
        };
        assert_eq!(wrapped.len(), secret.len() + 8);
        assert_eq!(wrapped[..], wrapped_for(&kgss(), secret)[..]);
        let Response::Unwrapped(back) = call(&mut core, &unwrap(app(), kgss(), &wrapped), 2) else {
            panic!("no unwrapped secret");
        };
        assert_eq!(back.expose(), secret);
        // Both on record: the wrap with the wrapped output's fingerprint (not the secret's),
        // the unwrap with the blob's: the same digest.
        // (Each with its use record before it; the wrap's has no digest yet.)
        let records = core.audit_sink().records();
        let (w, u) = (&records[records.len() - 3], &records[records.len() - 1]);
        assert_eq!(records[records.len() - 4].input_digest, [0; 32]);
        assert!(w.concludes(&records[records.len() - 4]));
        assert!(u.concludes(&records[records.len() - 2]));
        assert_eq!(w.operation, Operation::WrapSecret);
        assert_eq!(u.operation, Operation::UnwrapSecret);
        assert_eq!(w.input_digest, sha256(&wrapped));
        assert_eq!(u.input_digest, sha256(&wrapped));
        assert_ne!(w.input_digest, sha256(secret));
        assert_eq!(
            (w.client.as_ref(), w.key.as_ref()),
            (Some(&app()), Some(&kgss()))
        );
        assert!(w.outcome == Outcome::Success && u.outcome == Outcome::Success);
    }
    assert_eq!(
        key_uses(&core),
        (0..3)
            .flat_map(|_| [Call::Wrap(kgss()), Call::Unwrap(kgss())])
            .collect::<Vec<_>>()
    );
}

#[test]
fn unwrapped_secrets_are_never_printed() {
    let mut core = unlocked();
    let wrapped = wrapped_for(&kgss(), &[0xAB; 16]);
    let response = call(&mut core, &unwrap(app(), kgss(), &wrapped), 1);
    let printed = format!("{response:?} {:?}", wrap(app(), kgss(), &[0xAB; 16]));
    assert!(!printed.contains("171"), "{printed}");
    assert!(printed.contains("redacted"), "{printed}");
}

#[test]
fn sign_or_decrypt_with_the_wrapping_key() {
    let mut core = unlocked_with(permissive());
    refused(&mut core, sign(app(), kgss(), [0; 32]), Error::WrongKeyKind);
    refused(
        &mut core,
        decrypt(app(), kgss(), &[0; 256]),
        Error::WrongKeyKind,
    );
}

#[test]
fn wrap_or_unwrap_with_rsa_keys() {
    let mut core = unlocked_with(permissive());
    for k in [auth(), etk(), etk_old()] {
        refused(
            &mut core,
            wrap(app(), k.clone(), &[1; 32]),
            Error::WrongKeyKind,
        );
        let wrapped = wrapped_for(&kgss(), &[1; 32]);
        refused(&mut core, unwrap(app(), k, &wrapped), Error::WrongKeyKind);
    }
    refused(
        &mut core,
        wrap(app(), key("ghost"), &[1; 16]),
        Error::UnknownKey,
    );
}

#[test]
fn wrap_permissions_are_separate() {
    let mut p = Policy::deny_all();
    p.allow(wrap_rule(app(), kgss(), true, false, GENEROUS))
        .unwrap();
    p.allow(wrap_rule(other(), kgss(), false, true, GENEROUS))
        .unwrap();
    p.allow(rule(client("signer"), kgss(), true, true, GENEROUS))
        .unwrap();
    let mut core = unlocked_with(p);
    let wrapped = wrapped_for(&kgss(), &[5; 16]);
    refused(
        &mut core,
        unwrap(app(), kgss(), &wrapped),
        Error::PolicyDenied,
    );
    refused(
        &mut core,
        wrap(other(), kgss(), &[5; 16]),
        Error::PolicyDenied,
    );
    // Sign and decrypt rights give no wrap or unwrap rights.
    refused(
        &mut core,
        wrap(client("signer"), kgss(), &[5; 16]),
        Error::PolicyDenied,
    );
    refused(
        &mut core,
        unwrap(client("signer"), kgss(), &wrapped),
        Error::PolicyDenied,
    );
    assert!(matches!(
        call(&mut core, &wrap(app(), kgss(), &[5; 16]), 1),
        Response::Wrapped(_)
    ));
    assert!(matches!(
        call(&mut core, &unwrap(other(), kgss(), &wrapped), 2),
        Response::Unwrapped(_)
    ));
}

#[test]
fn wrap_lengths_are_checked_before_the_token() {
    let mut core = unlocked();
    for len in [0, 8, 15, 17, 20, 31] {
        refused(
            &mut core,
            wrap(app(), kgss(), &vec![7; len]),
            Error::InvalidLength,
        );
    }
    for len in [0, 8, 16, 23, 25, 39] {
        refused(
            &mut core,
            unwrap(app(), kgss(), &vec![7; len]),
            Error::InvalidLength,
        );
    }
    // On record without a digest of the secret.
    let mut core = unlocked();
    refused(
        &mut core,
        wrap(app(), kgss(), &[7; 20]),
        Error::InvalidLength,
    );
    let last = core.audit_sink().records().last().unwrap().clone();
    assert_eq!(last.operation, Operation::WrapSecret);
    assert_eq!(last.input_digest, [0; 32]);
}

#[test]
fn unwrap_failures_look_the_same_whatever_the_cause() {
    let mut core = unlocked();
    let good = wrapped_for(&kgss(), &[9; 32]);
    // A flipped bit (integrity check) ...
    let mut flipped = good.clone();
    flipped[20] ^= 1;
    let frame_a = call_raw(&mut core, &encode(&unwrap(app(), kgss(), &flipped)), 1);
    // ... a blob for another key ...
    let mut other_key = [0u8; 40];
    let n = InsecureMemoryToken::new(PIN)
        .unwrap()
        .with_key(&kgss(), KeyKind::Wrapping, b"another key")
        .fake_wrap(&kgss(), &[9; 32], &mut other_key)
        .unwrap();
    let frame_b = call_raw(
        &mut core,
        &encode(&unwrap(app(), kgss(), &other_key[..n])),
        2,
    );
    // ... and a device error give the same bytes on the wire.
    core.token()
        .fail_next(TokenError::new(TokenFunction::UnwrapKey, ckr::DEVICE_ERROR));
    let frame_c = call_raw(&mut core, &encode(&unwrap(app(), kgss(), &good)), 3);
    assert_eq!(frame_a, frame_b);
    assert_eq!(frame_a, frame_c);
    assert_eq!(
        etee_custody::wire::decode_response(&frame_a).unwrap(),
        Response::Error(Error::UnwrapFailed)
    );
    // The audit log keeps the detail, and the blob's fingerprint.
    // (Three uses, two records each: the outcomes are every second record.)
    let records = core.audit_sink().records();
    let n = records.len();
    assert_eq!(
        records[n - 5].outcome,
        Outcome::Refused(Error::Token(TokenError::new(
            TokenFunction::UnwrapKey,
            ckr::WRAPPED_KEY_INVALID
        )))
    );
    assert_eq!(records[n - 5].input_digest, sha256(&flipped));
    assert_eq!(
        records[n - 1].outcome,
        Outcome::Refused(Error::Token(TokenError::new(
            TokenFunction::UnwrapKey,
            ckr::DEVICE_ERROR
        )))
    );
}

#[test]
fn wrap_failures_carry_the_pkcs11_function_and_code() {
    let mut core = unlocked();
    let e = TokenError::new(TokenFunction::WrapKey, ckr::DEVICE_ERROR);
    core.token().fail_next(e);
    assert_eq!(
        call(&mut core, &wrap(app(), kgss(), &[3; 16]), 1),
        Response::Error(Error::Token(e))
    );
    let last = core.audit_sink().records().last().unwrap();
    assert_eq!(last.outcome, Outcome::Refused(Error::Token(e)));
    assert_eq!(last.input_digest, [0; 32]);
}
