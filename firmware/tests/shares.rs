//! M-of-N shares: any `threshold` shares rebuild the secret, fewer do not; damaged shares,
//! shares of two splits and repeated shares are named errors; the encoding is exact.

use etee_custody::config::{MAX_SHARED_SECRET_LEN, MAX_SHARES};
use etee_custody::shares::{combine, split, Share, ShareError, MAX_SHARE_ENCODED_LEN};

/// A deterministic stand-in for the random source (xorshift), so that failures repeat.
fn random(seed: u64) -> impl FnMut(&mut [u8]) {
    let mut state = seed | 1;
    move |buf: &mut [u8]| {
        for b in buf {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            *b = state as u8;
        }
    }
}

fn shares_of(secret: &[u8], threshold: u8, count: u8, seed: u64) -> Vec<Share> {
    split(secret, threshold, count, &mut random(seed))
        .unwrap()
        .into_iter()
        .collect()
}

/// Re-creates a share (it is not `Clone`, as it holds secret bytes).
fn copy(s: &Share) -> Share {
    let mut buf = [0u8; MAX_SHARE_ENCODED_LEN];
    Share::decode(s.encode(&mut buf).unwrap()).unwrap()
}

/// Every subset of `shares` with `size` members, as index lists.
fn subsets(n: usize, size: usize) -> Vec<Vec<usize>> {
    (0u32..1 << n)
        .filter(|m| m.count_ones() as usize == size)
        .map(|m| (0..n).filter(|i| m & (1 << i) != 0).collect())
        .collect()
}

#[test]
fn any_threshold_of_the_shares_rebuild_the_secret() {
    let secret = b"3f9c2a71d0e4b85c6a1f09e37d2b4c58a6e1f0d29b3c7a45";
    for (threshold, count) in [(2u8, 2u8), (2, 3), (3, 5), (4, 7), (5, 5), (2, 16)] {
        let shares = shares_of(secret, threshold, count, u64::from(threshold) * 97 + 5);
        assert_eq!(shares.len(), usize::from(count));
        for size in [threshold, count.min(threshold + 1)] {
            for subset in subsets(count.into(), size.into()) {
                // In both orders: the result does not depend on it.
                let mut chosen: Vec<Share> = subset.iter().map(|&i| copy(&shares[i])).collect();
                assert_eq!(combine(&chosen).unwrap().expose(), secret, "{subset:?}");
                chosen.reverse();
                assert_eq!(combine(&chosen).unwrap().expose(), secret, "{subset:?}");
            }
        }
    }
    // The largest split and secret.
    let long = [0xA5u8; MAX_SHARED_SECRET_LEN];
    let shares = shares_of(&long, MAX_SHARES as u8, MAX_SHARES as u8, 11);
    assert_eq!(combine(&shares).unwrap().expose(), long);
}

#[test]
fn fewer_shares_than_the_threshold_are_refused() {
    let shares = shares_of(b"a high-entropy secret, say", 3, 5, 1);
    for size in 0..3 {
        let got = combine(&shares[..size]).unwrap_err();
        let needed = if size == 0 { 2 } else { 3 };
        assert_eq!(got, ShareError::NotEnough { needed, got: size });
    }
}

/// With threshold 2, one share's byte is the secret byte plus a uniformly random
/// coefficient: over all coefficients it takes every value once, whatever the secret.
#[test]
fn one_share_below_the_threshold_says_nothing_about_the_secret() {
    for secret in [0x00u8, 0x42, 0xFF] {
        let mut seen = [false; 256];
        for coefficient in 0..=255u8 {
            let mut calls = 0;
            let mut fixed = |buf: &mut [u8]| {
                // First call: the split id; second: the coefficient.
                calls += 1;
                buf.fill(if calls == 1 { 7 } else { coefficient });
            };
            let shares = split(&[secret], 2, 2, &mut fixed).unwrap();
            seen[usize::from(shares[1].value.expose()[0])] = true;
        }
        assert!(seen.iter().all(|&s| s), "secret {secret:#x}");
    }
}

#[test]
fn damaged_mixed_and_repeated_shares_are_named() {
    let secret = b"0123456789abcdef0123456789abcdef";
    let shares = shares_of(secret, 2, 3, 3);

    // A damaged value: the rebuilt secret fails the check, nothing wrong is returned.
    let mut damaged = copy(&shares[0]);
    let mut bytes = damaged.value.expose().to_vec();
    bytes[5] ^= 1;
    damaged.value = etee_custody::shares::SharedSecret::from_slice(&bytes).unwrap();
    assert_eq!(
        combine(&[damaged, copy(&shares[1])]).unwrap_err(),
        ShareError::CheckFailed
    );

    // A share of another split of the same secret.
    let other = shares_of(secret, 2, 3, 4);
    assert_eq!(
        combine(&[copy(&shares[0]), copy(&other[1])]).unwrap_err(),
        ShareError::MixedSplits
    );
    // The same share twice.
    assert_eq!(
        combine(&[copy(&shares[2]), copy(&shares[2])]).unwrap_err(),
        ShareError::Duplicate(3)
    );
    // An index outside the split.
    let mut outside = copy(&shares[0]);
    outside.index = 4;
    assert_eq!(
        combine(&[outside, copy(&shares[1])]).unwrap_err(),
        ShareError::BadIndex(4)
    );
}

#[test]
fn bad_parameters_are_refused() {
    let mut r = random(9);
    for (threshold, count) in [(1u8, 3u8), (0, 2), (4, 3), (2, MAX_SHARES as u8 + 1)] {
        assert_eq!(
            split(b"secret", threshold, count, &mut r).unwrap_err(),
            ShareError::BadParameters { threshold, count }
        );
    }
    assert_eq!(
        split(b"", 2, 3, &mut r).unwrap_err(),
        ShareError::BadSecretLength(0)
    );
    let long = [1u8; MAX_SHARED_SECRET_LEN + 1];
    assert_eq!(
        split(&long, 2, 3, &mut r).unwrap_err(),
        ShareError::BadSecretLength(MAX_SHARED_SECRET_LEN + 1)
    );
}

#[test]
fn the_encoding_is_exact_and_bounded() {
    let shares = shares_of(&[0xEEu8; MAX_SHARED_SECRET_LEN], 2, 2, 8);
    let mut buf = [0u8; MAX_SHARE_ENCODED_LEN];
    let encoded = shares[0].encode(&mut buf).unwrap().to_vec();
    assert_eq!(encoded.len(), MAX_SHARE_ENCODED_LEN);
    assert_eq!(Share::decode(&encoded).unwrap(), copy(&shares[0]));

    let mut trailing = encoded.clone();
    trailing.push(0);
    assert_eq!(Share::decode(&trailing), Err(ShareError::BadEncoding));
    for cut in 0..encoded.len() {
        assert!(Share::decode(&encoded[..cut]).is_err(), "cut at {cut}");
    }
    let mut future = encoded.clone();
    future[0] = 2;
    assert_eq!(
        Share::decode(&future),
        Err(ShareError::UnsupportedFormat(2))
    );
    // Threshold above count, as a damaged file might say.
    let mut bad = encoded.clone();
    bad[9] = 3;
    assert!(Share::decode(&bad).is_err());
}

#[test]
fn debug_shows_no_share_bytes() {
    let shares = shares_of(b"\x01\x02\x03 secret secret", 2, 3, 5);
    let shown = format!("{:?}", shares[1]);
    assert!(shown.contains("2 of 3 (any 2)"), "{shown}");
    let value = shares[1].value.expose();
    assert!(!shown.contains(&format!("{value:?}")), "{shown}");
    // Nor in hex (the split id is printed in hex).
    let hex: String = value.iter().map(|b| format!("{b:02x}")).collect();
    let bare: String = shown
        .chars()
        .filter(|c| c.is_ascii_hexdigit())
        .collect::<String>()
        .to_ascii_lowercase();
    assert!(!bare.contains(&hex[..8]), "{shown}");
}

/// With more shares than the threshold, a damaged one is passed over; with too many
/// damaged ones nothing wrong comes out.
#[test]
fn a_damaged_share_among_more_than_enough_is_passed_over() {
    let secret = b"fedcba9876543210fedcba9876543210";
    let shares = shares_of(secret, 2, 4, 21);
    let damage = |s: &Share| {
        let mut d = copy(s);
        let mut bytes = d.value.expose().to_vec();
        bytes[0] ^= 0x80;
        d.value = etee_custody::shares::SharedSecret::from_slice(&bytes).unwrap();
        d
    };
    let given = [damage(&shares[0]), copy(&shares[1]), copy(&shares[3])];
    assert_eq!(combine(&given).unwrap().expose(), secret);
    let given = [damage(&shares[0]), damage(&shares[1]), copy(&shares[3])];
    assert_eq!(combine(&given).unwrap_err(), ShareError::CheckFailed);
}

/// Arbitrary bytes never panic the decoder, and whatever it accepts encodes back to the
/// same bytes (the encoding is exact); a valid share with any single byte changed either
/// decodes to a different share or is refused.
#[test]
fn arbitrary_bytes_are_refused_or_exact() {
    let mut r = random(0xDEC0DE);
    let mut buf = [0u8; MAX_SHARE_ENCODED_LEN + 8];
    let mut accepted = 0;
    for round in 0..20_000usize {
        let len = round % buf.len();
        r(&mut buf[..len]);
        // Often a plausible header, so that the decoder gets past the first checks.
        if len > 12 && round % 2 == 0 {
            buf[0] = 1;
            buf[9] = 2;
            buf[10] = 3;
            buf[11] = 1 + (buf[11] % 3);
        }
        if let Ok(share) = Share::decode(&buf[..len]) {
            accepted += 1;
            let mut out = [0u8; MAX_SHARE_ENCODED_LEN];
            assert_eq!(share.encode(&mut out).unwrap(), &buf[..len]);
        }
    }
    eprintln!("{accepted} of 20000 random inputs decoded");

    let shares = shares_of(b"0123456789abcdef", 2, 3, 77);
    let mut enc = [0u8; MAX_SHARE_ENCODED_LEN];
    let good = shares[0].encode(&mut enc).unwrap().to_vec();
    for i in 0..good.len() {
        for flip in [0x01u8, 0x80] {
            let mut bad = good.clone();
            bad[i] ^= flip;
            if let Ok(s) = Share::decode(&bad) {
                assert_ne!(s, copy(&shares[0]), "byte {i} ^ {flip:#x}");
            }
        }
    }
}
