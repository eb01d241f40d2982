//! Frames: round trips, explicit ids, pinned bytes (the wire contract), version handling.

mod common;
use common::*;

use etee_custody::audit::AuditHead;
use etee_custody::config::{MAX_RESPONSE_FRAME, PROTOCOL_VERSION};
use etee_custody::lock::LockState;
use etee_custody::token::{KeyFacts, KeyKind, TokenError, TokenFunction};
use etee_custody::wire::{
    self, all_distinct, request_id, response_id, Error, FrameError, Plaintext, Request, Response,
    Signature, StatusReply,
};

/// One request of each kind. The match below fails to compile when a variant is added, so
/// that this list (and the id checks using it) is kept complete.
fn every_request() -> Vec<Request> {
    let all = vec![
        Request::Status,
        unlock(PIN),
        Request::Lock,
        Request::AuditHead,
        sign(app(), auth(), [7; 32]),
        decrypt(app(), etk(), &[1, 2, 3]),
        wrap(app(), kgss(), &[4; 16]),
        unwrap(app(), kgss(), &[5; 24]),
        Request::DescribeKey {
            client: app(),
            key: auth(),
        },
    ];
    for r in &all {
        match r {
            Request::Status
            | Request::Unlock { .. }
            | Request::Lock
            | Request::AuditHead
            | Request::SignPssSha256 { .. }
            | Request::DecryptPkcs1v15 { .. }
            | Request::WrapSecret { .. }
            | Request::UnwrapSecret { .. }
            | Request::DescribeKey { .. } => {}
        }
    }
    all
}

fn every_response() -> Vec<Response> {
    let all = vec![
        Response::Status(StatusReply {
            state: LockState::LockedOut,
            pin_tries_left: 0,
        }),
        Response::Unlocked,
        Response::Locked,
        Response::AuditHead(AuditHead {
            next_sequence: 42,
            hash: [9; 32],
        }),
        Response::Signature(Signature::from_slice(&[5; 256]).unwrap()),
        Response::Plaintext(Plaintext::from_slice(&[6; 16]).unwrap()),
        Response::Wrapped(wire::Wrapped::from_slice(&[7; 40]).unwrap()),
        Response::Unwrapped(wire::WrapSecret::from_slice(&[8; 32]).unwrap()),
        Response::KeyFacts(facts()),
        Response::Error(Error::Token(TokenError::new(TokenFunction::Sign, 0x30))),
    ];
    for r in &all {
        match r {
            Response::Status(_)
            | Response::Unlocked
            | Response::Locked
            | Response::AuditHead(_)
            | Response::Signature(_)
            | Response::Plaintext(_)
            | Response::Wrapped(_)
            | Response::Unwrapped(_)
            | Response::KeyFacts(_)
            | Response::Error(_) => {}
        }
    }
    all
}

/// A key's facts as a token reports them, one attribute unknown.
fn facts() -> KeyFacts {
    KeyFacts {
        kind: KeyKind::Authentication,
        sensitive: Some(true),
        extractable: Some(false),
        never_extractable: None,
        local: Some(true),
    }
}

fn encode_resp(response: &Response) -> Vec<u8> {
    let mut buf = [0u8; MAX_RESPONSE_FRAME];
    wire::encode_response(response, &mut buf).unwrap().to_vec()
}

#[test]
fn requests_round_trip() {
    for r in every_request() {
        let frame = encode(&r);
        assert_eq!(wire::decode_request(&frame).unwrap(), r, "{r:?}");
    }
}

#[test]
fn responses_round_trip() {
    for r in every_response() {
        let frame = encode_resp(&r);
        assert_eq!(wire::decode_response(&frame).unwrap(), r, "{r:?}");
    }
    // Every error variant too.
    for e in every_error() {
        let r = Response::Error(e);
        assert_eq!(wire::decode_response(&encode_resp(&r)).unwrap(), r);
    }
}

#[test]
fn ids_are_distinct_and_cover_every_variant() {
    assert!(all_distinct(&request_id::ALL));
    assert!(all_distinct(&response_id::ALL));
    assert!(
        !all_distinct(&[1, 2, 3, 2]),
        "the check itself must catch duplicates"
    );

    let mut seen: Vec<u8> = every_request().iter().map(Request::id).collect();
    seen.sort();
    let mut all = request_id::ALL.to_vec();
    all.sort();
    assert_eq!(seen, all);

    let mut seen: Vec<u8> = every_response().iter().map(Response::id).collect();
    seen.sort();
    let mut all = response_id::ALL.to_vec();
    all.sort();
    assert_eq!(seen, all);
}

#[test]
fn frame_header_is_version_then_id() {
    for r in every_request() {
        let frame = encode(&r);
        assert_eq!(frame[..2], PROTOCOL_VERSION.to_be_bytes());
        assert_eq!(frame[2], r.id());
    }
    for r in every_response() {
        let frame = encode_resp(&r);
        assert_eq!(frame[..2], PROTOCOL_VERSION.to_be_bytes());
        assert_eq!(frame[2], r.id());
    }
}

/// The wire contract, byte for byte. If this test fails, old peers can no longer talk to
/// this code: change the protocol version, or undo the change.
#[test]
fn pinned_bytes() {
    let mut expected = vec![0x00, 0x02, 0x10, 0x08];
    expected.extend_from_slice(b"seal-app");
    expected.push(0x04);
    expected.extend_from_slice(b"auth");
    expected.extend_from_slice(&[0xAB; 32]);
    assert_eq!(encode(&sign(app(), auth(), [0xAB; 32])), expected);

    let mut expected = vec![0x00, 0x02, 0x11, 0x08];
    expected.extend_from_slice(b"seal-app");
    expected.push(0x08);
    expected.extend_from_slice(b"etk-2024");
    expected.extend_from_slice(&[0x82, 0x01]); // blob length 130, varint
    expected.extend_from_slice(&[0x5A; 130]);
    assert_eq!(encode(&decrypt(app(), etk(), &[0x5A; 130])), expected);

    assert_eq!(
        encode(&unlock(b"1234")),
        [0, 2, 0x02, 4, b'1', b'2', b'3', b'4']
    );
    let mut expected = vec![0x00, 0x02, 0x12, 0x08];
    expected.extend_from_slice(b"seal-app");
    expected.push(0x09);
    expected.extend_from_slice(b"kgss-wrap");
    expected.push(16);
    expected.extend_from_slice(&[0x3C; 16]);
    assert_eq!(encode(&wrap(app(), kgss(), &[0x3C; 16])), expected);

    let mut expected = vec![0x00, 0x02, 0x13, 0x08];
    expected.extend_from_slice(b"seal-app");
    expected.push(0x09);
    expected.extend_from_slice(b"kgss-wrap");
    expected.push(40);
    expected.extend_from_slice(&[0xC3; 40]);
    assert_eq!(encode(&unwrap(app(), kgss(), &[0xC3; 40])), expected);
    let wrapped = Response::Wrapped(wire::Wrapped::from_slice(&[1; 24]).unwrap());
    let mut expected = vec![0x00, 0x02, 0x12, 24];
    expected.extend_from_slice(&[1; 24]);
    assert_eq!(encode_resp(&wrapped), expected);
    let unwrapped = Response::Unwrapped(wire::WrapSecret::from_slice(&[2; 16]).unwrap());
    let mut expected = vec![0x00, 0x02, 0x13, 16];
    expected.extend_from_slice(&[2; 16]);
    assert_eq!(encode_resp(&unwrapped), expected);

    let mut expected = vec![0x00, 0x02, 0x14, 0x08];
    expected.extend_from_slice(b"seal-app");
    expected.push(0x04);
    expected.extend_from_slice(b"auth");
    assert_eq!(
        encode(&Request::DescribeKey {
            client: app(),
            key: auth()
        }),
        expected
    );
    // Kind (variant index), then each attribute: 0 unknown, or 1 and the boolean.
    assert_eq!(
        encode_resp(&Response::KeyFacts(facts())),
        [0, 2, 0x14, 0, 1, 1, 1, 0, 0, 1, 1]
    );

    assert_eq!(encode(&Request::Status), [0, 2, 0x01]);
    assert_eq!(encode(&Request::Lock), [0, 2, 0x03]);
    assert_eq!(encode(&Request::AuditHead), [0, 2, 0x04]);

    assert_eq!(encode_resp(&Response::Unlocked), [0, 2, 0x02]);
    assert_eq!(encode_resp(&Response::Locked), [0, 2, 0x03]);
    assert_eq!(
        encode_resp(&Response::Status(StatusReply {
            state: LockState::Unlocked,
            pin_tries_left: 5
        })),
        [0, 2, 0x01, 1, 5]
    );
    let mut head = vec![0, 2, 0x04, 0xAC, 0x02]; // 300, varint
    head.extend_from_slice(&[0x11; 32]);
    assert_eq!(
        encode_resp(&Response::AuditHead(AuditHead {
            next_sequence: 300,
            hash: [0x11; 32]
        })),
        head
    );
    assert_eq!(
        encode_resp(&Response::Plaintext(Plaintext::from_slice(b"key").unwrap())),
        [0, 2, 0x11, 3, b'k', b'e', b'y']
    );
}

fn every_error() -> Vec<Error> {
    vec![
        Error::BadFrame,
        Error::VersionMismatch {
            supported: 1,
            got: 2,
        },
        Error::Locked,
        Error::PinIncorrect { tries_left: 3 },
        Error::PinLockedOut,
        Error::PolicyDenied,
        Error::RateLimited {
            retry_after_ms: 1500,
        },
        Error::UnknownKey,
        Error::WrongKeyKind,
        Error::DecryptFailed,
        Error::AuditUnavailable,
        Error::Token(TokenError::new(TokenFunction::Login, 0xA0)),
        Error::UnwrapFailed,
        Error::InvalidLength,
        Error::NotServed,
    ]
}

/// Nested enums are encoded by variant index: the order below is the wire contract.
#[test]
fn error_variant_order_is_stable() {
    let frames: Vec<Vec<u8>> = every_error()
        .into_iter()
        .map(|e| encode_resp(&Response::Error(e)))
        .collect();
    let tags: Vec<u8> = frames.iter().map(|f| f[3]).collect();
    assert_eq!(tags, (0..15).collect::<Vec<u8>>());
    assert_eq!(frames[1], [0, 2, 0xFF, 1, 1, 2]);
    assert_eq!(frames[3], [0, 2, 0xFF, 3, 3]);
    assert_eq!(frames[6], [0, 2, 0xFF, 6, 0xDC, 0x0B]);
    assert_eq!(frames[11], [0, 2, 0xFF, 11, 5, 0xA0, 0x01]);
}

#[test]
fn token_function_order_is_stable() {
    use TokenFunction::*;
    let all = [
        Initialize,
        GetSlotList,
        GetTokenInfo,
        OpenSession,
        CloseSession,
        Login,
        Logout,
        FindObjectsInit,
        FindObjects,
        FindObjectsFinal,
        GetAttributeValue,
        SignInit,
        Sign,
        DecryptInit,
        Decrypt,
        WrapKey,
        UnwrapKey,
        CreateObject,
        DestroyObject,
    ];
    for (i, f) in all.into_iter().enumerate() {
        let frame = encode_resp(&Response::Error(Error::Token(TokenError::new(f, 0))));
        assert_eq!(frame[4] as usize, i, "{f:?}");
        assert!(f.name().starts_with("C_"));
    }
    assert_eq!(
        TokenError::new(Login, 0xA0).to_string(),
        "C_Login failed: CKR 0x000000A0"
    );
}

#[test]
fn lock_state_order_is_stable() {
    for (i, state) in [LockState::Locked, LockState::Unlocked, LockState::LockedOut]
        .into_iter()
        .enumerate()
    {
        let frame = encode_resp(&Response::Status(StatusReply {
            state,
            pin_tries_left: 0,
        }));
        assert_eq!(frame[3] as usize, i);
    }
}

#[test]
fn other_versions_are_recognised_before_anything_else() {
    let mut frame = encode(&Request::Status);
    frame[..2].copy_from_slice(&1u16.to_be_bytes());
    assert_eq!(
        wire::decode_request(&frame),
        Err(FrameError::VersionMismatch { got: 1 })
    );
    // Whatever follows the version, even nothing.
    assert_eq!(
        wire::decode_request(&[0xFF, 0xFF]),
        Err(FrameError::VersionMismatch { got: 0xFFFF })
    );

    let mut core = core();
    assert_eq!(
        call_raw_decoded(&mut core, &[0, 9, 0x10, 1, 2, 3]),
        Response::Error(Error::VersionMismatch {
            supported: PROTOCOL_VERSION,
            got: 9
        })
    );
}

fn call_raw_decoded(core: &mut Core, frame: &[u8]) -> Response {
    wire::decode_response(&call_raw(core, frame, 0)).unwrap()
}

#[test]
fn exact_frames_only() {
    let frame = encode(&sign(app(), auth(), [1; 32]));
    // Every proper prefix is malformed.
    for n in 0..frame.len() {
        assert_eq!(
            wire::decode_request(&frame[..n]),
            Err(FrameError::BadFrame),
            "prefix {n}"
        );
    }
    // So is anything appended.
    let mut longer = frame.clone();
    longer.push(0);
    assert_eq!(wire::decode_request(&longer), Err(FrameError::BadFrame));
    // Body-less requests take no body.
    assert_eq!(
        wire::decode_request(&[0, 2, request_id::STATUS, 0]),
        Err(FrameError::BadFrame)
    );
    // Unknown ids.
    assert_eq!(
        wire::decode_request(&[0, 2, 0x7E]),
        Err(FrameError::BadFrame)
    );
}

#[test]
fn encoding_into_a_short_buffer_fails_cleanly() {
    let r = decrypt(app(), etk(), &[0; 512]);
    let mut small = [0u8; 100];
    assert_eq!(
        wire::encode_request(&r, &mut small),
        Err(FrameError::BufferTooSmall)
    );
    assert_eq!(
        wire::encode_request(&Request::Status, &mut [0u8; 2]),
        Err(FrameError::BufferTooSmall)
    );
    assert_eq!(
        wire::encode_request(&Request::Status, &mut [0u8; 3])
            .unwrap()
            .len(),
        3
    );
}

#[test]
fn pins_are_never_printed() {
    let r = unlock(b"s3cret-pin");
    let shown = format!("{r:?}");
    assert!(!shown.contains("s3cret"), "{shown}");
    let r = Response::Plaintext(Plaintext::from_slice(b"content-key-1234").unwrap());
    assert!(!format!("{r:?}").contains("content"));
}

#[test]
fn ids_print_readably() {
    assert_eq!(format!("{:?}", auth()), "KeyId(auth)");
    assert_eq!(
        format!("{:?}", etee_custody::KeyId::new(&[0, 0xFF]).unwrap()),
        "KeyId(0x00ff)"
    );
    // An ETK key is named by its certificate's decimal serial: 20 octets make 49 digits.
    assert!(etee_custody::KeyId::new(&[b'9'; 49]).is_some());
    assert!(etee_custody::KeyId::new(&[0; 65]).is_none());
    assert!(etee_custody::ClientId::try_from("x".repeat(33).as_str()).is_err());
}
