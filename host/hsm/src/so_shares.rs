//! The security officer's PIN under an M-of-N quorum.
//!
//! `etee hsm init --so-pin-shares M/N` makes a random SO PIN (24 random bytes as 48 hex
//! digits), initialises the token with it and writes it nowhere: it hands out N share
//! files instead ([`etee_custody::shares`]), any M of which rebuild it. The officer's
//! later operations (`etee hsm init-pin`: setting the user PIN again, e.g. after a
//! lock-out) then need M share holders together. A share file is text:
//!
//! ```text
//! # etee: share 2 of 3 of the security officer PIN of token "hospital"; any 2 open it.
//! etee-share-v1 01a4…
//! ```
//!
//! Lines starting with `#` are for the people who keep the file; the share itself is the
//! hex of its postcard encoding after `etee-share-v1 `.

use crate::config::Pin;
use crate::error::{HsmError, Result};
use etee_custody::config::MAX_SHARED_SECRET_LEN;
use etee_custody::shares::{self, Share, MAX_SHARE_ENCODED_LEN};
use std::path::Path;
use zeroize::Zeroizing;

/// What starts the share line of a share file.
pub const SHARE_LINE_PREFIX: &str = "etee-share-v1 ";

/// Random bytes in a new SO PIN (written as twice as many hex digits).
const SO_PIN_RANDOM_BYTES: usize = 24;

/// Largest share file read (a share line and a few comment lines).
const MAX_SHARE_FILE: u64 = 4096;

/// A new random SO PIN and its `count` shares, any `threshold` of which rebuild it.
pub fn new_so_pin(threshold: u8, count: u8) -> Result<(Pin, Vec<Share>)> {
    let mut raw = Zeroizing::new([0u8; SO_PIN_RANDOM_BYTES]);
    openssl::rand::rand_bytes(raw.as_mut())?;
    let pin = Zeroizing::new(hex::encode(raw.as_ref()));
    // All the randomness the split takes (its id, then threshold − 1 coefficients a byte
    // of the PIN), drawn beforehand so that a failing generator is an error, not a panic.
    let mut pool = Zeroizing::new(vec![
        0u8;
        8 + usize::from(threshold.saturating_sub(1)) * pin.len()
    ]);
    openssl::rand::rand_bytes(&mut pool)?;
    let mut used = 0;
    let mut short = false;
    let mut random = |buf: &mut [u8]| {
        let end = (used + buf.len()).min(pool.len());
        let n = end - used;
        buf[..n].copy_from_slice(&pool[used..end]);
        short |= n < buf.len();
        buf[n..].fill(0);
        used = end;
    };
    let shares = shares::split(pin.as_bytes(), threshold, count, &mut random)
        .map_err(|e| HsmError::Invalid(format!("SO PIN shares: {e}")))?;
    // The pool is sized for the split; a shortfall would have meant zero coefficients.
    if short {
        return Err(HsmError::Invalid(
            "SO PIN shares: not enough random bytes were drawn".into(),
        ));
    }
    Ok((Pin::new(pin), shares.into_iter().collect()))
}

/// The text of a share file for the token named `token` (wiped when dropped).
pub fn share_file_text(share: &Share, token: &str) -> Result<Zeroizing<String>> {
    let mut buf = Zeroizing::new([0u8; MAX_SHARE_ENCODED_LEN]);
    let encoded = share
        .encode(buf.as_mut())
        .map_err(|e| HsmError::Invalid(format!("SO PIN share: {e}")))?;
    let hex_text = Zeroizing::new(hex::encode(encoded));
    Ok(Zeroizing::new(format!(
        "# etee: share {} of {} of the security officer PIN of token {token:?}; any {} open it.\n\
         # Keep it apart from the other shares; `etee hsm init-pin --so-pin-share FILE ...` uses it.\n\
         {SHARE_LINE_PREFIX}{}\n",
        share.index,
        share.count,
        share.threshold,
        hex_text.as_str()
    )))
}

/// Reads one share file.
pub fn read_share_file(path: &Path) -> Result<Share> {
    let fail = |reason: String| HsmError::Share {
        path: path.to_path_buf(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(|e| fail(e.to_string()))?;
    let mut text = Zeroizing::new(String::new());
    use std::io::Read;
    file.take(MAX_SHARE_FILE + 1)
        .read_to_string(&mut text)
        .map_err(|e| fail(e.to_string()))?;
    if text.len() as u64 > MAX_SHARE_FILE {
        return Err(fail(format!(
            "larger than {MAX_SHARE_FILE} bytes: not a share file"
        )));
    }
    parse_share_text(&text).map_err(fail)
}

/// The share of a share file's text.
pub fn parse_share_text(text: &str) -> std::result::Result<Share, String> {
    let mut lines = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'));
    let line = lines
        .next()
        .ok_or_else(|| format!("no `{}` line", SHARE_LINE_PREFIX.trim_end()))?;
    if lines.next().is_some() {
        return Err("more than one share line".into());
    }
    let hex_text = line.strip_prefix(SHARE_LINE_PREFIX).ok_or_else(|| {
        format!(
            "the share line must start with `{}`",
            SHARE_LINE_PREFIX.trim_end()
        )
    })?;
    let bytes = Zeroizing::new(
        hex::decode(hex_text.trim()).map_err(|e| format!("the share is not hex: {e}"))?,
    );
    Share::decode(&bytes).map_err(|e| e.to_string())
}

/// The SO PIN rebuilt from share files (at least the split's threshold of them).
pub fn so_pin_from_share_files(paths: &[impl AsRef<Path>]) -> Result<Pin> {
    let shares = paths
        .iter()
        .map(|p| read_share_file(p.as_ref()))
        .collect::<Result<Vec<_>>>()?;
    let secret = shares::combine(&shares).map_err(|e| HsmError::Shares(e.to_string()))?;
    let pin = std::str::from_utf8(secret.expose())
        .map_err(|_| HsmError::Shares("the rebuilt secret is not a PIN".into()))?;
    debug_assert!(pin.len() <= MAX_SHARED_SECRET_LEN);
    Ok(Pin::new(Zeroizing::new(pin.to_owned())))
}

/// `M/N` (e.g. `2/3`): the threshold and the number of shares.
pub fn parse_quorum(text: &str) -> Result<(u8, u8)> {
    let bad = || {
        HsmError::Invalid(format!(
            "{text:?}: give the quorum as M/N, e.g. 2/3 (any 2 of 3 share holders)"
        ))
    };
    let (m, n) = text.split_once('/').ok_or_else(bad)?;
    let m: u8 = m.trim().parse().map_err(|_| bad())?;
    let n: u8 = n.trim().parse().map_err(|_| bad())?;
    // The split's own bounds, said before any token is touched.
    shares::check_parameters(m, n).map_err(|e| HsmError::Invalid(format!("{text:?}: {e}")))?;
    Ok((m, n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_so_pin_is_rebuilt_from_its_share_files() {
        let dir = tempfile::tempdir().unwrap();
        let (pin, shares) = new_so_pin(2, 3).unwrap();
        assert_eq!(pin.expose().len(), 2 * SO_PIN_RANDOM_BYTES);
        let paths: Vec<_> = shares
            .iter()
            .map(|s| {
                let p = dir.path().join(format!("share-{}", s.index));
                std::fs::write(&p, share_file_text(s, "hospital").unwrap()).unwrap();
                p
            })
            .collect();
        let text = std::fs::read_to_string(&paths[1]).unwrap();
        assert!(text.contains("share 2 of 3"), "{text}");
        assert!(!text.contains(pin.expose()), "the PIN is in a share file");
        for pair in [[0, 1], [1, 2], [2, 0]] {
            let rebuilt = so_pin_from_share_files(&[&paths[pair[0]], &paths[pair[1]]]).unwrap();
            assert_eq!(rebuilt.expose(), pin.expose());
        }
        let e = so_pin_from_share_files(&[&paths[0]])
            .unwrap_err()
            .to_string();
        assert!(e.contains("needs 2"), "{e}");
        // Two new PINs differ.
        assert_ne!(new_so_pin(2, 3).unwrap().0.expose(), pin.expose());
    }

    #[test]
    fn share_files_that_are_not_shares_are_named() {
        let (_, shares) = new_so_pin(2, 2).unwrap();
        let good = share_file_text(&shares[0], "t").unwrap();
        assert!(parse_share_text(&good).is_ok());
        for (text, says) in [
            ("", "no `etee-share-v1` line"),
            ("# only a comment\n", "no `etee-share-v1` line"),
            ("etee-share-v2 00\n", "must start with"),
            ("etee-share-v1 zz\n", "not hex"),
            ("etee-share-v1 0102\n", "not a share"),
        ] {
            let e = parse_share_text(text).unwrap_err();
            assert!(e.contains(says), "{text:?}: {e}");
        }
        let twice = format!("{}{}", good.as_str(), good.lines().last().unwrap());
        assert!(parse_share_text(&twice)
            .unwrap_err()
            .contains("more than one"));
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big");
        std::fs::write(&big, "#".repeat(5000)).unwrap();
        let e = read_share_file(&big).unwrap_err().to_string();
        assert!(e.contains("not a share file") && e.contains("big"), "{e}");
    }

    #[test]
    fn quorums_are_parsed_with_the_split_bounds() {
        assert_eq!(parse_quorum("2/3").unwrap(), (2, 3));
        assert_eq!(parse_quorum(" 3 / 5 ").unwrap(), (3, 5));
        for bad in ["2", "1/3", "4/3", "2/17", "a/b", "2/3/4"] {
            assert!(parse_quorum(bad).is_err(), "{bad}");
        }
    }
}
