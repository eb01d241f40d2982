//! Bounded secret byte strings (PINs, decrypted key material) that are wiped on drop and
//! never printed.
//!
//! The crate forbids `unsafe`, so there are no volatile writes: [`Drop`] overwrites the
//! whole buffer with zeros and passes it through [`core::hint::black_box`] so that the
//! compiler does not drop the stores as dead. That is best effort, as it is for any Rust
//! type: copies made by moves before the drop are not reached. To keep those few, the type
//! is not `Clone` and the core hands secrets around by reference.

use core::fmt;
use core::sync::atomic::{compiler_fence, Ordering};
use serde::de::{self, Deserialize, Deserializer, SeqAccess, Visitor};
use serde::{Serialize, Serializer};

/// Up to `N` secret bytes; zeroed on drop; `Debug` shows only the length.
///
/// On the wire it is a postcard byte string (varint length, then the bytes), the same
/// encoding as a `heapless::Vec<u8, N>`.
pub struct Secret<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> Secret<N> {
    /// An empty secret.
    pub const fn new() -> Self {
        Self {
            buf: [0; N],
            len: 0,
        }
    }

    /// Copies `bytes`; `None` if longer than `N`.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        let mut s = Self::new();
        s.buf.get_mut(..bytes.len())?.copy_from_slice(bytes);
        s.len = bytes.len();
        Some(s)
    }

    /// Fills the secret from `fill`, which writes into the whole buffer and returns how many
    /// bytes it wrote (a token writing a plaintext in place, without a second copy).
    pub fn fill_with<E>(fill: impl FnOnce(&mut [u8]) -> Result<usize, E>) -> Result<Self, E> {
        let mut s = Self::new();
        let n = fill(&mut s.buf)?;
        s.len = n.min(N);
        Ok(s)
    }

    /// The secret bytes. Named so that each use is easy to find in review.
    pub fn expose(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or(&[])
    }

    /// Number of bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl<const N: usize> Default for Secret<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> Drop for Secret<N> {
    fn drop(&mut self) {
        for b in self.buf.iter_mut() {
            *b = 0;
        }
        self.len = 0;
        core::hint::black_box(&mut self.buf);
        compiler_fence(Ordering::SeqCst);
    }
}

impl<const N: usize> fmt::Debug for Secret<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({} bytes, redacted)", self.len)
    }
}

/// Compares without stopping at the first difference (for tests and round trips; the core
/// never compares secrets itself: the token checks the PIN).
impl<const N: usize> PartialEq for Secret<N> {
    fn eq(&self, other: &Self) -> bool {
        let (a, b) = (self.expose(), other.expose());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}
impl<const N: usize> Eq for Secret<N> {}

impl<const N: usize> Serialize for Secret<N> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(self.expose())
    }
}

impl<'de, const N: usize> Deserialize<'de> for Secret<N> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SecretVisitor<const N: usize>;

        impl<'de, const N: usize> Visitor<'de> for SecretVisitor<N> {
            type Value = Secret<N>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "at most {N} bytes")
            }

            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Self::Value, E> {
                Secret::from_slice(v).ok_or_else(|| E::invalid_length(v.len(), &self))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut s = Secret::new();
                while let Some(b) = seq.next_element::<u8>()? {
                    let slot = s
                        .buf
                        .get_mut(s.len)
                        .ok_or_else(|| de::Error::invalid_length(N + 1, &self))?;
                    *slot = b;
                    s.len += 1;
                }
                Ok(s)
            }
        }

        deserializer.deserialize_bytes(SecretVisitor::<N>)
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    #[test]
    fn debug_never_shows_the_bytes() {
        let s = Secret::<8>::from_slice(b"1234").unwrap();
        assert_eq!(std::format!("{s:?}"), "Secret(4 bytes, redacted)");
    }

    #[test]
    fn bounded() {
        assert!(Secret::<4>::from_slice(b"12345").is_none());
        assert_eq!(Secret::<4>::from_slice(b"1234").unwrap().expose(), b"1234");
    }

    #[test]
    fn same_encoding_as_a_heapless_vec() {
        let s = Secret::<64>::from_slice(b"pin").unwrap();
        let v = heapless::Vec::<u8, 64>::from_slice(b"pin").unwrap();
        let (mut a, mut b) = ([0u8; 80], [0u8; 80]);
        let a = postcard::to_slice(&s, &mut a).unwrap();
        let b = postcard::to_slice(&v, &mut b).unwrap();
        assert_eq!(a, b);
        let back: Secret<64> = postcard::from_bytes(a).unwrap();
        assert_eq!(back, s);
        assert!(postcard::from_bytes::<Secret<2>>(a).is_err());
    }
}
