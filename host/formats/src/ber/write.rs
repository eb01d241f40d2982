//! DER encoding of small elements, and the BER framing written around streamed content.

use super::tag;
use std::io::{self, Write};

/// Appends DER length octets.
pub fn push_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = (len as u64).to_be_bytes();
        let skip = bytes.iter().take_while(|&&b| b == 0).count();
        out.push(0x80 | (8 - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
}

/// Appends one definite-length element.
pub fn push_tlv(out: &mut Vec<u8>, t: u8, content: &[u8]) {
    out.push(t);
    push_len(out, content.len());
    out.extend_from_slice(content);
}

/// One definite-length element.
pub fn tlv(t: u8, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 6);
    push_tlv(&mut out, t, content);
    out
}

/// A constructed element from already-encoded parts.
pub fn cons(t: u8, parts: &[&[u8]]) -> Vec<u8> {
    tlv(t, &parts.concat())
}

/// SEQUENCE of already-encoded parts.
pub fn seq(parts: &[&[u8]]) -> Vec<u8> {
    cons(tag::SEQUENCE, parts)
}

/// DER SET OF: the elements sorted by their encodings (X.690 §11.6).
pub fn set_of(mut elements: Vec<Vec<u8>>) -> Vec<u8> {
    elements.sort();
    let refs: Vec<&[u8]> = elements.iter().map(Vec::as_slice).collect();
    cons(tag::SET, &refs)
}

/// A non-negative INTEGER from big-endian magnitude bytes.
pub fn uint(magnitude: &[u8]) -> Vec<u8> {
    let skip = magnitude.iter().take_while(|&&b| b == 0).count();
    let m = &magnitude[skip.min(magnitude.len().saturating_sub(1))..];
    let mut content = Vec::with_capacity(m.len() + 1);
    if m.is_empty() {
        content.push(0);
    } else {
        if m[0] & 0x80 != 0 {
            content.push(0);
        }
        content.extend_from_slice(m);
    }
    tlv(tag::INTEGER, &content)
}

/// A small non-negative INTEGER.
pub fn small_uint(v: u64) -> Vec<u8> {
    uint(&v.to_be_bytes())
}

/// An OCTET STRING.
pub fn octets(v: &[u8]) -> Vec<u8> {
    tlv(tag::OCTET_STRING, v)
}

/// BER writer for the indefinite-length framing of streamed layers: the official layout is
/// `30 80 … 00 00` around ContentInfo/SignedData/EnvelopedData and a constructed OCTET
/// STRING of 1000-byte primitive chunks for the content (spec §1.3).
pub struct BerWriter<W> {
    out: W,
    open: usize,
}

impl<W: Write> BerWriter<W> {
    pub fn new(out: W) -> Self {
        Self { out, open: 0 }
    }

    /// Opens a constructed element with an indefinite length.
    pub fn open(&mut self, t: u8) -> io::Result<()> {
        self.open += 1;
        self.out.write_all(&[t, 0x80])
    }

    /// Closes the innermost open element.
    pub fn close(&mut self) -> io::Result<()> {
        debug_assert!(self.open > 0);
        self.open -= 1;
        self.out.write_all(&[0, 0])
    }

    /// Writes already-encoded bytes.
    pub fn raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)
    }

    /// Writes one primitive OCTET STRING chunk.
    pub fn chunk(&mut self, bytes: &[u8]) -> io::Result<()> {
        let mut head = Vec::with_capacity(6);
        head.push(tag::OCTET_STRING);
        push_len(&mut head, bytes.len());
        self.out.write_all(&head)?;
        self.out.write_all(bytes)
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    pub fn get_mut(&mut self) -> &mut W {
        &mut self.out
    }

    pub fn into_inner(self) -> W {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ber::slice::parse_exact;

    #[test]
    fn lengths() {
        let mut v = Vec::new();
        push_len(&mut v, 0x7f);
        push_len(&mut v, 0x80);
        push_len(&mut v, 0x1234);
        assert_eq!(v, [0x7f, 0x81, 0x80, 0x82, 0x12, 0x34]);
    }

    #[test]
    fn integers_are_minimal_and_positive() {
        assert_eq!(uint(&[0x00, 0x00, 0x80]), [0x02, 0x02, 0x00, 0x80]);
        assert_eq!(uint(&[0x00]), [0x02, 0x01, 0x00]);
        assert_eq!(small_uint(2), [0x02, 0x01, 0x02]);
        assert_eq!(
            parse_exact(&uint(&[0xff, 0x01]))
                .unwrap()
                .uint_bytes()
                .unwrap(),
            [0xff, 0x01]
        );
    }

    #[test]
    fn set_of_sorts() {
        assert_eq!(
            set_of(vec![vec![0x05, 0x00], vec![0x02, 0x01, 0x01]]),
            [0x31, 0x05, 0x02, 0x01, 0x01, 0x05, 0x00]
        );
    }
}
