//! Garbage, truncated and oversized frames get `BadFrame` (or another well-formed answer),
//! never a panic, and never a key operation.

mod common;
use common::*;

use etee_custody::config::{MAX_REQUEST_FRAME, PROTOCOL_VERSION};
use etee_custody::policy::Policy;
use etee_custody::wire::{self, request_id, Error, Response};

const ROUNDS: usize = 20_000;

/// Valid frames to mutate (an unlock with the right PIN first).
fn seeds() -> Vec<Vec<u8>> {
    vec![
        encode(&unlock(PIN)),
        encode(&sign(app(), auth(), [3; 32])),
        encode(&decrypt(
            app(),
            etk(),
            &blob_for(&etk(), b"0123456789abcdef"),
        )),
        encode(&etee_custody::Request::Status),
        encode(&etee_custody::Request::AuditHead),
        encode(&wrap(app(), kgss(), &[4; 32])),
        encode(&unwrap(app(), kgss(), &wrapped_for(&kgss(), &[4; 32]))),
    ]
}

/// Answers must always be frames the host can decode.
fn answer(core: &mut Core, frame: &[u8]) -> Response {
    let out = call_raw(core, frame, 0);
    wire::decode_response(&out).expect("the core produced an undecodable frame")
}

/// Sends `ROUNDS` malformed or mutated frames; returns how many got an answer other than
/// `BadFrame` (to show that the noise reaches past the frame parser).
fn run(core: &mut Core, seed: u64, with_unlock: bool) -> usize {
    let mut rng = XorShift(seed);
    let mut seeds = seeds();
    if !with_unlock {
        // A flip that flips back would unlock the core with the real PIN.
        seeds.remove(0);
    }
    let mut deeper = 0;
    for _ in 0..ROUNDS {
        let frame: Vec<u8> = match rng.below(4) {
            // Pure noise, sometimes longer than any frame.
            0 => (0..rng.below(MAX_REQUEST_FRAME + 64))
                .map(|_| rng.byte())
                .collect(),
            // Our version and a real id, then noise.
            1 => {
                let [hi, lo] = PROTOCOL_VERSION.to_be_bytes();
                let id = request_id::ALL[rng.below(request_id::ALL.len())];
                let mut f = vec![hi, lo, id];
                f.extend((0..rng.below(600)).map(|_| rng.byte()));
                f
            }
            // A valid frame with a few bytes flipped.
            2 => {
                let mut f = seeds[rng.below(seeds.len())].clone();
                for _ in 0..=rng.below(3) {
                    let i = rng.below(f.len());
                    f[i] ^= 1 << rng.below(8);
                }
                f
            }
            // A valid frame cut short or extended.
            _ => {
                let mut f = seeds[rng.below(seeds.len())].clone();
                if rng.below(2) == 0 {
                    f.truncate(rng.below(f.len()));
                } else {
                    f.extend((0..=rng.below(16)).map(|_| rng.byte()));
                }
                f
            }
        };
        if answer(core, &frame) != Response::Error(Error::BadFrame) {
            deeper += 1;
        }
    }
    deeper
}

#[test]
fn noise_never_panics_and_never_uses_a_key_on_a_locked_core() {
    let mut core = core();
    let deeper = run(&mut core, 0x9E37_79B9_7F4A_7C15, false);
    assert!(
        deeper > ROUNDS / 20,
        "only {deeper} frames got past the parser"
    );
    assert_eq!(key_uses(&core), vec![]);
}

#[test]
fn noise_never_panics_on_an_unlocked_core() {
    let mut core = unlocked_with(Policy::deny_all());
    let deeper = run(&mut core, 0xD1B5_4A32_D192_ED03, true);
    assert!(
        deeper > ROUNDS / 20,
        "only {deeper} frames got past the parser"
    );
    assert_eq!(
        key_uses(&core),
        vec![],
        "deny-all policy, yet a key was used"
    );
}

#[test]
fn truncations_and_extensions_are_bad_frames() {
    let mut core = unlocked();
    for seed in seeds() {
        for n in 0..seed.len() {
            let r = answer(&mut core, &seed[..n]);
            // Prefixes of a body-less request that still hold the header are themselves valid.
            if n < 3 || seed.len() > 3 {
                assert_eq!(
                    r,
                    Response::Error(Error::BadFrame),
                    "prefix {n} of {seed:?}"
                );
            }
        }
        let mut longer = seed.clone();
        longer.push(0);
        assert_eq!(answer(&mut core, &longer), Response::Error(Error::BadFrame));
    }
    // Oversized, whatever the content.
    let mut huge = encode(&sign(app(), auth(), [0; 32]));
    huge.resize(MAX_REQUEST_FRAME + 1, 0);
    assert_eq!(answer(&mut core, &huge), Response::Error(Error::BadFrame));
    assert_eq!(
        answer(&mut core, &vec![0xFF; 100_000]),
        Response::Error(Error::BadFrame)
    );
    assert_eq!(answer(&mut core, &[]), Response::Error(Error::BadFrame));
    assert_eq!(key_uses(&core), vec![]);
}

#[test]
fn huge_declared_lengths_are_refused_without_reading_them() {
    let mut core = unlocked();
    // A blob claiming 2^63 bytes.
    let mut f = vec![0, 2, request_id::DECRYPT_PKCS1V15, 1, b'a', 1, b'k'];
    f.extend_from_slice(&[0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F]);
    assert_eq!(answer(&mut core, &f), Response::Error(Error::BadFrame));
    // A varint that never ends.
    let mut f = vec![0, 2, request_id::UNLOCK];
    f.extend_from_slice(&[0x80; 20]);
    assert_eq!(answer(&mut core, &f), Response::Error(Error::BadFrame));
}

/// Seeds of the `custody` fuzz target (`fuzz/`): runs of frames, each preceded by its
/// length (two bytes, little endian), into a locked core. Written under
/// `$ETEE_FUZZ_CORPUS/custody`.
#[test]
#[ignore = "writes files: run with --ignored write_fuzz_corpus"]
fn write_fuzz_corpus() {
    let Some(dir) = std::env::var_os("ETEE_FUZZ_CORPUS") else {
        println!("set ETEE_FUZZ_CORPUS to the corpus directory (e.g. fuzz/corpus)");
        return;
    };
    // A relative directory is taken from the project root, as the other crates' writers do.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = root.join(dir).join("custody");
    std::fs::create_dir_all(&dir).unwrap();
    let run = |frames: &[Vec<u8>]| -> Vec<u8> {
        let mut out = Vec::new();
        for f in frames {
            out.extend((f.len() as u16).to_le_bytes());
            out.extend(f);
        }
        out
    };
    let every = seeds();
    let wrong = encode(&unlock(WRONG_PIN));
    let runs = [
        ("every-request", run(&every)),
        (
            "wrong-pin-then-right",
            run(&[wrong.clone(), wrong, every[0].clone(), every[1].clone()]),
        ),
        (
            "lock-in-between",
            run(&[
                every[0].clone(),
                every[2].clone(),
                encode(&etee_custody::Request::Lock),
                every[2].clone(),
            ]),
        ),
        ("locked", run(&every[1..])),
    ];
    for (name, bytes) in runs {
        std::fs::write(dir.join(name), bytes).unwrap();
        println!("wrote {}", dir.join(name).display());
    }
}
