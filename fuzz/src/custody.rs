//! The `custody` target: a run of request frames into one custody core (the insecure
//! in-memory token and audit sink of the core's own tests, with their keys and policy).
//!
//! The input is a sequence of frames, each preceded by its length (two bytes, little
//! endian), at most [`MAX_FRAMES`] of them, 100 ms apart. Checks beyond "no panic": every
//! answer is a frame the host decodes; the audit chain the core wrote verifies from its
//! genesis and ends at the core's head; the token was asked to use a key no more
//! often than the chain admitted a use.

#[path = "../../firmware/tests/common/mod.rs"]
mod common;

use common::{call_raw, core, Core};
use etee_custody::audit::{verify_chain_to, Outcome};
use etee_custody::wire;

/// Frames read from one input at most (the sink holds 256 records: two per frame at most).
pub const MAX_FRAMES: usize = 64;

pub fn custody(data: &[u8]) {
    let mut core: Core = core();
    let mut rest = data;
    let mut now_ms = 1_000;
    for _ in 0..MAX_FRAMES {
        let [lo, hi, tail @ ..] = rest else { break };
        let len = usize::from(u16::from_le_bytes([*lo, *hi])).min(tail.len());
        let (frame, after) = tail.split_at(len);
        rest = after;
        let answer = call_raw(&mut core, frame, now_ms);
        wire::decode_response(&answer).expect("the core answered with an undecodable frame");
        now_ms += 100;
    }
    let head = core.audit_head();
    let records = core.audit_sink().records();
    verify_chain_to(records.iter(), &head).expect("the core's audit chain verifies");
    let admitted = records
        .iter()
        .filter(|r| r.outcome == Outcome::Admitted)
        .count();
    assert!(
        core.token().key_uses() <= admitted,
        "{} key uses, {admitted} admitted",
        core.token().key_uses()
    );
}
