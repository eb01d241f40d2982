//! Names of keys and clients: bounded byte strings.
//!
//! Bytes rather than text because a PKCS#11 `CKA_ID` is bytes; `Debug` shows printable
//! ASCII as text and anything else as hex, so that audit tooling and logs stay readable.

use crate::config::{MAX_CLIENT_ID_LEN, MAX_KEY_ID_LEN};
use core::fmt;
use heapless::Vec;
use serde::{Deserialize, Serialize};

macro_rules! bounded_id {
    ($(#[$doc:meta])* $name:ident, $max:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub struct $name(Vec<u8, $max>);

        impl $name {
            /// Longest id, in bytes.
            pub const MAX_LEN: usize = $max;

            /// Copies `bytes`; `None` if longer than [`Self::MAX_LEN`].
            pub fn new(bytes: &[u8]) -> Option<Self> {
                Vec::from_slice(bytes).ok().map(Self)
            }

            /// The id's bytes.
            pub fn as_bytes(&self) -> &[u8] {
                &self.0
            }
        }

        impl TryFrom<&str> for $name {
            type Error = IdTooLong;
            fn try_from(s: &str) -> Result<Self, IdTooLong> {
                Self::new(s.as_bytes()).ok_or(IdTooLong)
            }
        }

        impl TryFrom<&[u8]> for $name {
            type Error = IdTooLong;
            fn try_from(b: &[u8]) -> Result<Self, IdTooLong> {
                Self::new(b).ok_or(IdTooLong)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "("))?;
                show(&self.0, f)?;
                f.write_str(")")
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                show(&self.0, f)
            }
        }
    };
}

bounded_id!(
    /// A key as the host names it to the core (a PKCS#11 `CKA_ID` or label), at most
    /// [`MAX_KEY_ID_LEN`] bytes.
    KeyId,
    MAX_KEY_ID_LEN
);

bounded_id!(
    /// The application on whose behalf the host asks for a key operation, at most
    /// [`MAX_CLIENT_ID_LEN`] bytes. The host authenticates the caller (mTLS, Unix peer
    /// credentials) and asserts this id; the core's policy and audit are keyed on it.
    ClientId,
    MAX_CLIENT_ID_LEN
);

/// An id longer than its bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdTooLong;

impl fmt::Display for IdTooLong {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("identifier too long")
    }
}

fn show(bytes: &[u8], f: &mut fmt::Formatter<'_>) -> fmt::Result {
    let printable = !bytes.is_empty() && bytes.iter().all(|b| (0x20..0x7f).contains(b));
    match core::str::from_utf8(bytes) {
        Ok(s) if printable => f.write_str(s),
        _ => {
            f.write_str("0x")?;
            bytes.iter().try_for_each(|b| write!(f, "{b:02x}"))
        }
    }
}
