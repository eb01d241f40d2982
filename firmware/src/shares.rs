//! M-of-N secret sharing: a secret split into `count` shares of which any `threshold`
//! rebuild it and fewer tell nothing about it (Shamir's scheme over GF(2^8), one polynomial
//! per byte of the secret).
//!
//! The host uses it for the token's security officer PIN: `etee hsm init --so-pin-shares
//! M/N` makes a random SO PIN, gives it to the token and hands out only its shares, so
//! that the officer's operations (setting the user PIN again after a lock-out,
//! re-initialising the token, which destroys its keys) need `threshold` share holders
//! together. Key generation and import need only the user PIN on PKCS#11 tokens, which the
//! service must hold; a quorum for them is a matter for the HSM's own administration.
//!
//! Each share carries the split's random id and a check value (8 bytes of SHA-256 over
//! the split id and the secret), so that a damaged share, or shares of two different
//! splits, are reported before the result is used, instead of trying a wrong PIN on the
//! token. The check value gives away 64 bits about the secret, which is why only secrets
//! with far more entropy than that should be split (the host splits 24 random bytes
//! written as hex).
//!
//! Field arithmetic is branch-free on secret data (no tables indexed by secret bytes).

use crate::config::{MAX_SHARED_SECRET_LEN, MAX_SHARES};
use crate::secret::Secret;
use core::fmt;
use heapless::Vec;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

// `combine` walks the subsets of the shares given with a `u32` mask.
const _: () = assert!(MAX_SHARES < 32);

/// Version of the share encoding, its first byte.
pub const SHARE_FORMAT: u8 = 1;

/// A shared secret, or one share's value: wiped on drop, never printed.
pub type SharedSecret = Secret<MAX_SHARED_SECRET_LEN>;

/// One of the `count` shares of a split.
#[derive(Serialize, Deserialize, PartialEq, Eq)]
pub struct Share {
    /// [`SHARE_FORMAT`].
    pub format: u8,
    /// Random id of the split: shares of different splits do not combine.
    pub set: [u8; 8],
    /// How many shares rebuild the secret.
    pub threshold: u8,
    /// How many shares were made.
    pub count: u8,
    /// This share's x coordinate, 1 to `count`.
    pub index: u8,
    /// The first 8 bytes of SHA-256 over a label, the split id and the secret.
    pub check: [u8; 8],
    /// The polynomials' values at `index`, one byte per byte of the secret.
    pub value: SharedSecret,
}

impl fmt::Debug for Share {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Share {{ {} of {} (any {}), set {:02x?}, value: {} bytes }}",
            self.index,
            self.count,
            self.threshold,
            self.set,
            self.value.len()
        )
    }
}

/// Largest encoded share: format, set, threshold, count, index, check, value (a varint
/// length below 128, then the bytes).
pub const MAX_SHARE_ENCODED_LEN: usize = 1 + 8 + 1 + 1 + 1 + 8 + 1 + MAX_SHARED_SECRET_LEN;

/// Why a secret could not be split or rebuilt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShareError {
    /// `threshold` must be at least 2 and at most `count`, `count` at most [`MAX_SHARES`].
    BadParameters { threshold: u8, count: u8 },
    /// The secret is empty or longer than [`MAX_SHARED_SECRET_LEN`].
    BadSecretLength(usize),
    /// Fewer shares than the split's threshold.
    NotEnough { needed: u8, got: usize },
    /// The shares are of different splits (or disagree on threshold, count or length).
    MixedSplits,
    /// The same share given twice.
    Duplicate(u8),
    /// A share whose index is 0 or above its count.
    BadIndex(u8),
    /// The shares combine into a secret their check value does not match: one of them is
    /// damaged.
    CheckFailed,
    /// Not a share encoding.
    BadEncoding,
    /// A share of another format version.
    UnsupportedFormat(u8),
}

impl fmt::Display for ShareError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadParameters { threshold, count } => write!(
                f,
                "{threshold} of {count}: the threshold must be at least 2 and at most the \
                 number of shares, which is at most {MAX_SHARES}"
            ),
            Self::BadSecretLength(n) => write!(
                f,
                "a secret of {n} bytes cannot be split (1 to {MAX_SHARED_SECRET_LEN})"
            ),
            Self::NotEnough { needed, got } => {
                write!(f, "{got} share(s) given; this split needs {needed}")
            }
            Self::MixedSplits => f.write_str("the shares are not all of the same split"),
            Self::Duplicate(i) => write!(f, "share {i} is given twice"),
            Self::BadIndex(i) => write!(f, "share index {i} is outside its split"),
            Self::CheckFailed => f.write_str(
                "the shares do not rebuild the secret they were made from: one of them is \
                 damaged",
            ),
            Self::BadEncoding => f.write_str("not a share"),
            Self::UnsupportedFormat(v) => write!(f, "share format {v} is not supported"),
        }
    }
}

impl Share {
    /// The share's postcard encoding, in `out`.
    pub fn encode<'a>(&self, out: &'a mut [u8]) -> Result<&'a [u8], ShareError> {
        postcard::to_slice(self, out)
            .map(|s| &*s)
            .map_err(|_| ShareError::BadEncoding)
    }

    /// A share from its encoding, which must be consumed exactly.
    pub fn decode(bytes: &[u8]) -> Result<Self, ShareError> {
        match bytes.first() {
            None => return Err(ShareError::BadEncoding),
            Some(&v) if v != SHARE_FORMAT => return Err(ShareError::UnsupportedFormat(v)),
            Some(_) => {}
        }
        let (share, rest): (Share, _) =
            postcard::take_from_bytes(bytes).map_err(|_| ShareError::BadEncoding)?;
        if !rest.is_empty() {
            return Err(ShareError::BadEncoding);
        }
        if share.index == 0 || share.index > share.count {
            return Err(ShareError::BadIndex(share.index));
        }
        check_parameters(share.threshold, share.count)?;
        if share.value.is_empty() {
            return Err(ShareError::BadEncoding);
        }
        Ok(share)
    }
}

/// Whether a split of `count` shares with quorum `threshold` can be made: `threshold` at
/// least 2 and at most `count`, `count` at most [`MAX_SHARES`].
pub fn check_parameters(threshold: u8, count: u8) -> Result<(), ShareError> {
    if threshold < 2 || threshold > count || usize::from(count) > MAX_SHARES {
        return Err(ShareError::BadParameters { threshold, count });
    }
    Ok(())
}

/// Splits `secret` into `count` shares, any `threshold` of which rebuild it. `random`
/// fills a buffer with cryptographically secure random bytes (the split id and the
/// polynomials' coefficients).
pub fn split(
    secret: &[u8],
    threshold: u8,
    count: u8,
    random: &mut dyn FnMut(&mut [u8]),
) -> Result<Vec<Share, MAX_SHARES>, ShareError> {
    check_parameters(threshold, count)?;
    if secret.is_empty() || secret.len() > MAX_SHARED_SECRET_LEN {
        return Err(ShareError::BadSecretLength(secret.len()));
    }
    let mut set = [0u8; 8];
    random(&mut set);
    let check = check_value(&set, secret);
    // Coefficients 1 to threshold − 1 of each byte's polynomial (the constant term is the
    // secret byte), wiped when done.
    let mut coefficients = Coefficients([[0u8; MAX_SHARED_SECRET_LEN]; MAX_SHARES - 1]);
    for row in coefficients.0.iter_mut().take(usize::from(threshold) - 1) {
        random(&mut row[..secret.len()]);
    }
    let mut shares = Vec::new();
    for x in 1..=count {
        let value = Secret::fill_with(|buf| {
            for (i, (out, &s)) in buf.iter_mut().zip(secret).enumerate() {
                // Horner, from the highest coefficient down to the secret byte.
                let mut y = 0u8;
                for row in coefficients.0[..usize::from(threshold) - 1].iter().rev() {
                    y = gf_mul(y, x) ^ row[i];
                }
                *out = gf_mul(y, x) ^ s;
            }
            Ok::<_, ()>(secret.len())
        })
        .map_err(|()| ShareError::BadSecretLength(secret.len()))?;
        let share = Share {
            format: SHARE_FORMAT,
            set,
            threshold,
            count,
            index: x,
            check,
            value,
        };
        // `count` ≤ MAX_SHARES, checked above.
        shares
            .push(share)
            .map_err(|_| ShareError::BadParameters { threshold, count })?;
    }
    Ok(shares)
}

/// Rebuilds the secret from at least `threshold` shares of one split. With more than
/// that, a share whose value is damaged is passed over: the first `threshold`-subset
/// whose result matches the split's check value wins. (A share whose other fields are
/// damaged is refused with the error that names it.)
pub fn combine(shares: &[Share]) -> Result<SharedSecret, ShareError> {
    let first = shares
        .first()
        .ok_or(ShareError::NotEnough { needed: 2, got: 0 })?;
    for (n, s) in shares.iter().enumerate() {
        if s.format != first.format
            || s.set != first.set
            || s.threshold != first.threshold
            || s.count != first.count
            || s.check != first.check
            || s.value.len() != first.value.len()
        {
            return Err(ShareError::MixedSplits);
        }
        if s.index == 0 || s.index > s.count {
            return Err(ShareError::BadIndex(s.index));
        }
        if shares[..n].iter().any(|t| t.index == s.index) {
            return Err(ShareError::Duplicate(s.index));
        }
    }
    check_parameters(first.threshold, first.count)?;
    let threshold = usize::from(first.threshold);
    if shares.len() < threshold {
        return Err(ShareError::NotEnough {
            needed: first.threshold,
            got: shares.len(),
        });
    }
    // Every `threshold`-subset in turn (the first one when all shares are sound): a damaged
    // share among more than enough does not stop the others. At most 2^16 masks.
    for mask in 0u32..(1 << shares.len()) {
        if mask.count_ones() as usize != threshold {
            continue;
        }
        let mut chosen: Vec<&Share, MAX_SHARES> = Vec::new();
        for (i, share) in shares.iter().enumerate() {
            if mask & (1 << i) != 0 {
                // `shares.len()` ≤ count ≤ MAX_SHARES: distinct indices within the split.
                chosen.push(share).map_err(|_| ShareError::MixedSplits)?;
            }
        }
        let secret = interpolate(&chosen, first.value.len());
        if check_value(&first.set, secret.expose()) == first.check {
            return Ok(secret);
        }
    }
    Err(ShareError::CheckFailed)
}

/// Lagrange interpolation at x = 0 of `used` (distinct indices): secret =
/// Σ y_i · Π_{j≠i} x_j / (x_j − x_i), where subtraction is XOR in GF(2^8).
fn interpolate(used: &[&Share], len: usize) -> SharedSecret {
    let filled = Secret::fill_with(|buf| {
        let len = len.min(buf.len());
        buf[..len].fill(0);
        for (i, si) in used.iter().enumerate() {
            let mut basis = 1u8;
            for (j, sj) in used.iter().enumerate() {
                if i != j {
                    basis = gf_mul(basis, gf_mul(sj.index, gf_inv(sj.index ^ si.index)));
                }
            }
            for (out, &y) in buf[..len].iter_mut().zip(si.value.expose()) {
                *out ^= gf_mul(y, basis);
            }
        }
        Ok::<_, core::convert::Infallible>(len)
    });
    match filled {
        Ok(secret) => secret,
        Err(never) => match never {},
    }
}

/// The check value of a split: 8 bytes of SHA-256 over a label, the split id and the secret.
fn check_value(set: &[u8; 8], secret: &[u8]) -> [u8; 8] {
    let digest = Sha256::new()
        .chain_update(b"etee share check v1\0")
        .chain_update(set)
        .chain_update(secret)
        .finalize();
    let mut check = [0u8; 8];
    check.copy_from_slice(&digest[..8]);
    check
}

/// The coefficients of a split, wiped on drop.
struct Coefficients([[u8; MAX_SHARED_SECRET_LEN]; MAX_SHARES - 1]);

impl Drop for Coefficients {
    fn drop(&mut self) {
        for row in self.0.iter_mut() {
            row.fill(0);
        }
        core::hint::black_box(&mut self.0);
    }
}

/// Multiplication in GF(2^8) modulo x^8 + x^4 + x^3 + x + 1 (the AES field), without
/// branches or tables that depend on the operands.
fn gf_mul(mut a: u8, mut b: u8) -> u8 {
    let mut product = 0u8;
    for _ in 0..8 {
        product ^= a & 0u8.wrapping_sub(b & 1);
        let carry = a >> 7;
        a = (a << 1) ^ (0x1b & 0u8.wrapping_sub(carry));
        b >>= 1;
    }
    product
}

/// Multiplicative inverse in GF(2^8): a^254 (0 for 0, which the callers never pass: the
/// indices of distinct shares differ, so their XOR is not 0).
fn gf_inv(a: u8) -> u8 {
    // a^254 = a^(2+4+8+16+32+64+128).
    let mut result = 1u8;
    let mut square = a;
    for _ in 0..7 {
        square = gf_mul(square, square);
        result = gf_mul(result, square);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_arithmetic() {
        // FIPS 197, 4.2: {57} · {83} = {c1}; {53} and {ca} are inverses.
        assert_eq!(gf_mul(0x57, 0x83), 0xc1);
        assert_eq!(gf_mul(0x53, 0xca), 0x01);
        assert_eq!(gf_inv(0x53), 0xca);
        for a in 1..=255u8 {
            assert_eq!(gf_mul(a, gf_inv(a)), 1, "{a:#x}");
            assert_eq!(gf_mul(a, 1), a);
            assert_eq!(gf_mul(a, 0), 0);
        }
    }
}
