//! Frame sizes are part of the protocol: they are pinned here so that they never grow by
//! accident, and the bounds in `config` are checked against real maximal encodings.

mod common;
use common::*;

use etee_custody::audit::{AuditRecord, Operation, Outcome};
use etee_custody::config::*;
use etee_custody::token::{TokenError, TokenFunction};
use etee_custody::wire::{
    self, Error, Plaintext, Request, Response, Signature, WrapSecret, Wrapped,
};
use etee_custody::{ClientId, KeyId};

#[test]
fn pinned_bounds() {
    assert_eq!(PROTOCOL_VERSION, 2);
    assert_eq!(MAX_KEY_ID_LEN, 64);
    assert_eq!(MAX_CLIENT_ID_LEN, 32);
    assert_eq!(MAX_PIN_LEN, 64);
    assert_eq!(MAX_BLOB_LEN, 512);
    assert_eq!(MAX_SIGNATURE_LEN, 512);
    assert_eq!(MAX_PLAINTEXT_LEN, 512);
    assert_eq!(MIN_SECRET_LEN, 16);
    assert_eq!(MAX_SECRET_LEN, 32);
    assert_eq!(MAX_WRAPPED_LEN, 40);
    assert_eq!(MAX_POLICY_RULES, 32);
    assert_eq!(MAX_PIN_ATTEMPTS, 5);

    assert_eq!(MAX_REQUEST_FRAME, 615);
    assert_eq!(MAX_RESPONSE_FRAME, 517);
    assert_eq!(MAX_ERROR_LEN, 12);
    assert_eq!(MAX_AUDIT_FIELDS_LEN, 166);
    assert_eq!(MAX_AUDIT_RECORD_LEN, 198);
}

/// In-memory sizes on 64-bit hosts (what a request, a response or a record costs on the
/// stack: there is no heap). Upper bounds at today's sizes, so that growth is a decision.
#[test]
#[cfg(target_pointer_width = "64")]
fn pinned_memory_sizes() {
    use core::mem::size_of;
    assert!(size_of::<Request>() <= 640, "{}", size_of::<Request>());
    assert!(size_of::<Response>() <= 528, "{}", size_of::<Response>());
    assert!(
        size_of::<AuditRecord>() <= 232,
        "{}",
        size_of::<AuditRecord>()
    );
}

fn long_client() -> ClientId {
    ClientId::new(&[b'c'; MAX_CLIENT_ID_LEN]).unwrap()
}
fn long_key() -> KeyId {
    KeyId::new(&[b'k'; MAX_KEY_ID_LEN]).unwrap()
}

#[test]
fn largest_request_is_exactly_the_bound() {
    let largest = decrypt(long_client(), long_key(), &[0xFF; MAX_BLOB_LEN]);
    let mut buf = [0u8; MAX_REQUEST_FRAME];
    assert_eq!(
        wire::encode_request(&largest, &mut buf).unwrap().len(),
        MAX_REQUEST_FRAME
    );
    let mut short = [0u8; MAX_REQUEST_FRAME - 1];
    assert!(wire::encode_request(&largest, &mut short).is_err());

    // Every other request is smaller.
    let others = [
        unlock(&[b'9'; MAX_PIN_LEN]),
        sign(long_client(), long_key(), [0xFF; 32]),
        wrap(long_client(), long_key(), &[0xFF; MAX_SECRET_LEN]),
        unwrap(long_client(), long_key(), &[0xFF; MAX_WRAPPED_LEN]),
        Request::Status,
        Request::Lock,
        Request::AuditHead,
    ];
    for r in others {
        assert!(encode(&r).len() < MAX_REQUEST_FRAME, "{r:?}");
    }
    // A frame over the bound is refused before parsing.
    let mut over = encode(&largest);
    over.push(0);
    assert_eq!(wire::decode_request(&over), Err(wire::FrameError::BadFrame));
}

#[test]
fn largest_response_is_exactly_the_bound() {
    let mut buf = [0u8; MAX_RESPONSE_FRAME];
    let sig = Response::Signature(Signature::from_slice(&[1; MAX_SIGNATURE_LEN]).unwrap());
    assert_eq!(
        wire::encode_response(&sig, &mut buf).unwrap().len(),
        MAX_RESPONSE_FRAME
    );
    let pt = Response::Plaintext(Plaintext::from_slice(&[1; MAX_PLAINTEXT_LEN]).unwrap());
    assert_eq!(
        wire::encode_response(&pt, &mut buf).unwrap().len(),
        MAX_RESPONSE_FRAME
    );
    let worst_error = Response::Error(Error::Token(TokenError::new(
        TokenFunction::Decrypt,
        u64::MAX,
    )));
    assert_eq!(
        wire::encode_response(&worst_error, &mut buf).unwrap().len(),
        FRAME_HEADER_LEN + MAX_ERROR_LEN
    );
    for small in [
        Response::Wrapped(Wrapped::from_slice(&[1; MAX_WRAPPED_LEN]).unwrap()),
        Response::Unwrapped(WrapSecret::from_slice(&[1; MAX_SECRET_LEN]).unwrap()),
    ] {
        assert!(wire::encode_response(&small, &mut buf).unwrap().len() < MAX_RESPONSE_FRAME);
    }
    let slow = Response::Error(Error::RateLimited {
        retry_after_ms: u64::MAX,
    });
    assert!(
        wire::encode_response(&slow, &mut buf).unwrap().len() < FRAME_HEADER_LEN + MAX_ERROR_LEN
    );
}

#[test]
fn largest_audit_record_is_exactly_the_bound() {
    let record = AuditRecord {
        sequence: u64::MAX,
        time_ms: u64::MAX,
        client: Some(long_client()),
        operation: Operation::DecryptPkcs1v15,
        key: Some(long_key()),
        input_digest: [0xFF; 32],
        outcome: Outcome::Refused(Error::Token(TokenError::new(
            TokenFunction::Decrypt,
            u64::MAX,
        ))),
        prev_hash: [0xFF; 32],
    };
    let mut buf = [0u8; MAX_AUDIT_RECORD_LEN];
    let bytes = record.encode(&mut buf).unwrap();
    assert_eq!(bytes.len(), MAX_AUDIT_RECORD_LEN);
    assert_eq!(AuditRecord::decode(bytes), Some(record));
}

#[test]
fn handle_needs_a_full_size_output_buffer() {
    let mut core = core();
    let frame = encode(&Request::Status);
    let mut small = [0u8; MAX_RESPONSE_FRAME - 1];
    assert_eq!(core.handle(&frame, 0, &mut small), 0);
    let mut full = [0u8; MAX_RESPONSE_FRAME];
    assert!(core.handle(&frame, 0, &mut full) > 0);
}
