//! A pull parser over `io::Read` for messages too large to hold in memory.
//!
//! Large content (the eContent of a SignedData, the encryptedContent of an EnvelopedData) is
//! exposed as an [`OctetStream`], itself an `io::Read`, so layers nest: the middle layer is
//! parsed from the outer layer's content stream, the inner layer from the decrypted stream.
//! A decoding fault inside a content stream surfaces as an `io::Error` carrying a
//! [`ContentFault`] that names the layer whose framing was broken.

use super::{decode_header, tag, BerError, BerErrorKind, Length, MAX_DEPTH};
use std::io::{self, Read};

/// Either a decoding fault at a known offset or an I/O failure of the source.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Ber(#[from] BerError),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// The payload of an `io::Error` raised by an [`OctetStream`]: which layer's framing broke.
#[derive(Debug, thiserror::Error)]
#[error("layer {layer}: {error}")]
pub struct ContentFault {
    pub layer: u8,
    pub error: BerError,
}

/// Identifier and length octets read from a stream.
#[derive(Clone, Copy, Debug)]
pub struct Header {
    pub tag: u8,
    pub len: Length,
    /// Offset of the first identifier octet.
    pub offset: u64,
    pub header_len: u8,
}

impl Header {
    /// End offset of a definite-length element.
    pub fn end(&self) -> Option<u64> {
        match self.len {
            // Saturating: a hostile length cannot wrap; reading then ends in Truncated.
            Length::Definite(n) => Some(
                self.offset
                    .saturating_add(u64::from(self.header_len))
                    .saturating_add(n),
            ),
            Length::Indefinite => None,
        }
    }
}

/// Initial buffer: small, so that a small message does not pay for zeroing a large one.
const BUF: usize = 8 * 1024;
/// The buffer grows to this once a stream has been refilled [`GROW_AFTER`] times: it is
/// carrying bulk content, and fewer, larger reads from the source pay off.
const BUF_LARGE: usize = 64 * 1024;
const GROW_AFTER: u32 = 8;

/// Buffered BER pull parser with a byte position.
pub struct BerStream<R> {
    inner: R,
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    /// Offset of `buf[start]` in the stream.
    pos: u64,
    /// Reads from the source so far (the buffer grows after [`GROW_AFTER`]).
    refills: u32,
    /// How far the buffer was ever written: what is wiped when it is dropped or replaced
    /// (an inner layer's stream carries decrypted content, a KGSS key or a KEK).
    filled: usize,
}

impl<R> Drop for BerStream<R> {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.buf[..self.filled]);
    }
}

impl<R: Read> BerStream<R> {
    pub fn new(inner: R) -> Self {
        Self::with_offset(inner, 0)
    }

    /// A stream whose first byte is at `offset` (for messages about nested content).
    pub fn with_offset(inner: R, offset: u64) -> Self {
        Self {
            inner,
            buf: vec![0; BUF].into_boxed_slice(),
            start: 0,
            end: 0,
            pos: offset,
            refills: 0,
            filled: 0,
        }
    }

    /// Offset of the next unread byte.
    pub fn pos(&self) -> u64 {
        self.pos
    }

    fn available(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// Ensures at least `n` (≤ 16) bytes are buffered, unless the source ends first.
    fn fill(&mut self, n: usize) -> io::Result<()> {
        while self.end - self.start < n {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            self.grow_if_bulky();
            let got = loop {
                match self.inner.read(&mut self.buf[self.end..]) {
                    Ok(k) => break k,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            };
            if got == 0 {
                return Ok(());
            }
            self.end += got;
            self.filled = self.filled.max(self.end);
        }
        Ok(())
    }

    fn grow_if_bulky(&mut self) {
        self.refills = self.refills.saturating_add(1);
        if self.refills > GROW_AFTER && self.buf.len() < BUF_LARGE {
            let mut bigger = vec![0; BUF_LARGE].into_boxed_slice();
            bigger[..self.end].copy_from_slice(&self.buf[..self.end]);
            let mut old = std::mem::replace(&mut self.buf, bigger);
            zeroize::Zeroize::zeroize(&mut old[..self.filled]);
            self.filled = self.end;
        }
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
        self.pos += n as u64;
    }

    fn err(&self, kind: BerErrorKind) -> ReadError {
        ReadError::Ber(BerError::new(self.pos, kind))
    }

    /// Whether the source has no more bytes.
    pub fn at_eof(&mut self) -> Result<bool, ReadError> {
        self.fill(1)?;
        Ok(self.available().is_empty())
    }

    /// The next identifier octet without consuming it; `None` at the end of the source.
    pub fn peek_tag(&mut self) -> Result<Option<u8>, ReadError> {
        self.fill(1)?;
        Ok(self.available().first().copied())
    }

    /// Whether the next two bytes are an end-of-contents marker (not consumed).
    pub fn at_eoc(&mut self) -> Result<bool, ReadError> {
        self.fill(2)?;
        Ok(self.available().starts_with(&[0, 0]))
    }

    /// Reads identifier and length octets.
    pub fn read_header(&mut self) -> Result<Header, ReadError> {
        self.fill(10)?;
        match decode_header(self.available()) {
            Ok(Some((t, len, hl))) => {
                let h = Header {
                    tag: t,
                    len,
                    offset: self.pos,
                    header_len: hl as u8,
                };
                self.consume(hl);
                Ok(h)
            }
            Ok(None) => Err(self.err(BerErrorKind::Truncated)),
            Err(kind) => Err(self.err(kind)),
        }
    }

    /// Reads a header that must carry `expected`.
    pub fn expect_header(&mut self, expected: u8) -> Result<Header, ReadError> {
        let offset = self.pos;
        let h = self.read_header()?;
        if h.tag != expected {
            return Err(ReadError::Ber(BerError::new(
                offset,
                BerErrorKind::UnexpectedTag {
                    expected,
                    found: h.tag,
                },
            )));
        }
        Ok(h)
    }

    /// Consumes an end-of-contents marker.
    pub fn read_eoc(&mut self) -> Result<(), ReadError> {
        if self.at_eoc()? {
            self.consume(2);
            Ok(())
        } else if self.available().len() < 2 {
            Err(self.err(BerErrorKind::Truncated))
        } else {
            Err(self.err(BerErrorKind::BadEoc))
        }
    }

    /// Whether a constructed element opened by `h` has more children; consumes its EOC
    /// when an indefinite one ends.
    pub fn has_more_in(&mut self, h: &Header) -> Result<bool, ReadError> {
        match h.end() {
            Some(end) if self.pos == end => Ok(false),
            Some(end) if self.pos > end => Err(self.err(BerErrorKind::Overrun)),
            Some(_) => Ok(true),
            None => {
                if self.at_eoc()? {
                    self.consume(2);
                    Ok(false)
                } else {
                    Ok(true)
                }
            }
        }
    }

    /// Closes an element: for a definite length, checks the position is at its end; for an
    /// indefinite one, consumes the EOC.
    pub fn close(&mut self, h: &Header) -> Result<(), ReadError> {
        match h.end() {
            Some(end) if self.pos == end => Ok(()),
            Some(_) => Err(self.err(BerErrorKind::Overrun)),
            None => self.read_eoc(),
        }
    }

    /// Reads `n` content bytes into memory, refusing more than `limit`.
    pub fn read_bytes(&mut self, n: u64, limit: u64) -> Result<Vec<u8>, ReadError> {
        if n > limit {
            return Err(self.err(BerErrorKind::TooLarge { limit }));
        }
        let mut out = vec![0u8; n as usize];
        let mut filled = 0;
        while filled < out.len() {
            if self.start == self.end {
                self.fill(1)?;
                if self.start == self.end {
                    return Err(self.err(BerErrorKind::Truncated));
                }
            }
            let k = (self.end - self.start).min(out.len() - filled);
            out[filled..filled + k].copy_from_slice(&self.buf[self.start..self.start + k]);
            self.consume(k);
            filled += k;
        }
        Ok(out)
    }

    /// Reads one whole element (header, content, and nested EOCs) into memory, refusing
    /// elements larger than `limit`. Used for the small parts: certificates, SignerInfos.
    pub fn read_element(&mut self, limit: u64) -> Result<Vec<u8>, ReadError> {
        let mut out = Vec::new();
        self.copy_element(&mut out, limit, 0)?;
        Ok(out)
    }

    fn copy_element(
        &mut self,
        out: &mut Vec<u8>,
        limit: u64,
        depth: usize,
    ) -> Result<(), ReadError> {
        if depth > MAX_DEPTH {
            return Err(self.err(BerErrorKind::TooDeep));
        }
        let start = self.pos;
        let h = self.read_header()?;
        let hl = usize::from(h.header_len);
        // Re-read the header octets from what was consumed.
        out.extend_from_slice(&self.buf[self.start - hl..self.start]);
        match h.len {
            Length::Definite(n) => {
                let room = limit.saturating_sub(out.len() as u64);
                let body = self.read_bytes(n, room)?;
                out.extend_from_slice(&body);
            }
            Length::Indefinite => loop {
                if out.len() as u64 > limit {
                    return Err(ReadError::Ber(BerError::new(
                        start,
                        BerErrorKind::TooLarge { limit },
                    )));
                }
                if self.at_eoc()? {
                    self.consume(2);
                    out.extend_from_slice(&[0, 0]);
                    break;
                }
                self.copy_element(out, limit, depth + 1)?;
            },
        }
        Ok(())
    }

    /// Skips one whole element without keeping it.
    pub fn skip_element(&mut self) -> Result<(), ReadError> {
        self.skip_at_depth(0)
    }

    fn skip_at_depth(&mut self, depth: usize) -> Result<(), ReadError> {
        if depth > MAX_DEPTH {
            return Err(self.err(BerErrorKind::TooDeep));
        }
        let h = self.read_header()?;
        match h.len {
            Length::Definite(mut n) => {
                while n > 0 {
                    if self.start == self.end {
                        self.fill(1)?;
                        if self.start == self.end {
                            return Err(self.err(BerErrorKind::Truncated));
                        }
                    }
                    let k = ((self.end - self.start) as u64).min(n) as usize;
                    self.consume(k);
                    n -= k as u64;
                }
                Ok(())
            }
            Length::Indefinite => loop {
                if self.at_eoc()? {
                    self.consume(2);
                    return Ok(());
                }
                self.skip_at_depth(depth + 1)?;
            },
        }
    }

    /// Copies up to `out.len()` raw bytes (used by content streams).
    fn read_raw(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.start == self.end {
            // Large reads bypass the buffer.
            if out.len() >= self.buf.len() {
                let k = self.inner.read(out)?;
                self.pos += k as u64;
                return Ok(k);
            }
            self.fill(1)?;
        }
        let k = (self.end - self.start).min(out.len());
        out[..k].copy_from_slice(&self.buf[self.start..self.start + k]);
        self.consume(k);
        Ok(k)
    }

    /// A reader over the octets of the OCTET STRING (or implicitly tagged octet string)
    /// whose header `h` was just read: primitive, or constructed with nested chunks.
    pub fn octet_stream(&mut self, h: Header, layer: u8) -> OctetStream<'_, R> {
        let mut s = OctetStream {
            src: self,
            frames: Vec::new(),
            remaining: 0,
            layer,
            done: false,
            pending: None,
        };
        if tag::is_constructed(h.tag) {
            s.frames.push(h.end());
        } else {
            match h.len {
                Length::Definite(n) => s.remaining = n,
                Length::Indefinite => s.done = true, // cannot occur: rejected by decode_header
            }
        }
        s
    }
}

/// `io::Read` over the content octets of a (possibly chunked) OCTET STRING.
pub struct OctetStream<'a, R> {
    src: &'a mut BerStream<R>,
    /// Open constructed frames: `Some(end)` for definite lengths, `None` for indefinite.
    frames: Vec<Option<u64>>,
    remaining: u64,
    layer: u8,
    done: bool,
    /// A fault met after some bytes were already returned; reported on the next read.
    pending: Option<ReadError>,
}

impl<R: Read> OctetStream<'_, R> {
    fn fault(&self, e: ReadError) -> io::Error {
        match e {
            ReadError::Io(e) => e,
            ReadError::Ber(error) => io::Error::new(
                io::ErrorKind::InvalidData,
                ContentFault {
                    layer: self.layer,
                    error,
                },
            ),
        }
    }

    /// Finds the next primitive chunk; false at the end of the string.
    fn advance(&mut self) -> Result<bool, ReadError> {
        loop {
            let Some(&top) = self.frames.last() else {
                return Ok(false);
            };
            match top {
                Some(end) if self.src.pos() == end => {
                    self.frames.pop();
                    continue;
                }
                Some(end) if self.src.pos() > end => {
                    return Err(self.src.err(BerErrorKind::Overrun))
                }
                None if self.src.at_eoc()? => {
                    self.src.consume(2);
                    self.frames.pop();
                    continue;
                }
                _ => {}
            }
            let offset = self.src.pos();
            let h = self.src.read_header()?;
            match h.tag {
                tag::OCTET_STRING => {
                    if let (Some(end), Some(Some(parent_end))) = (h.end(), self.frames.last()) {
                        if end > *parent_end {
                            return Err(ReadError::Ber(BerError::new(
                                offset,
                                BerErrorKind::Overrun,
                            )));
                        }
                    }
                    if let Length::Definite(n) = h.len {
                        self.remaining = n;
                        if n > 0 {
                            return Ok(true);
                        }
                    }
                }
                tag::OCTET_STRING_CONSTRUCTED => {
                    if self.frames.len() >= MAX_DEPTH {
                        return Err(ReadError::Ber(BerError::new(offset, BerErrorKind::TooDeep)));
                    }
                    self.frames.push(h.end());
                }
                found => {
                    return Err(ReadError::Ber(BerError::new(
                        offset,
                        BerErrorKind::UnexpectedTag {
                            expected: tag::OCTET_STRING,
                            found,
                        },
                    )))
                }
            }
        }
    }

    /// Reads and discards the rest of the string.
    pub fn drain(&mut self) -> io::Result<u64> {
        io::copy(self, &mut io::sink())
    }
}

impl<R: Read> Read for OctetStream<'_, R> {
    /// Fills `out` across chunk boundaries (up to the end of the string), so that readers
    /// above work in large blocks even though BER chunks are 1000 bytes.
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if let Some(e) = self.pending.take() {
            self.done = true;
            return Err(self.fault(e));
        }
        let mut filled = 0;
        while filled < out.len() && !self.done {
            if self.remaining == 0 {
                match self.advance() {
                    Ok(true) => {}
                    Ok(false) => {
                        self.done = true;
                        break;
                    }
                    // Report what was read first; the fault comes again on the next call.
                    Err(e) if filled > 0 => {
                        self.pending = Some(e);
                        break;
                    }
                    Err(e) => return Err(self.fault(e)),
                }
            }
            let want = ((out.len() - filled) as u64).min(self.remaining) as usize;
            let k = self.src.read_raw(&mut out[filled..filled + want])?;
            if k == 0 {
                let e = self.src.err(BerErrorKind::Truncated);
                if filled > 0 {
                    self.pending = Some(e);
                    break;
                }
                return Err(self.fault(e));
            }
            self.remaining -= k as u64;
            filled += k;
        }
        Ok(filled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn content_of(ber: &[u8]) -> io::Result<Vec<u8>> {
        let mut s = BerStream::new(ber);
        let h = s.read_header().unwrap();
        let mut out = Vec::new();
        s.octet_stream(h, 1).read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn nested_chunks_stream_in_order() {
        let ber = [
            0x24, 0x80, 0x04, 0x02, b'a', b'b', 0x24, 0x04, 0x04, 0x02, b'c', b'd', 0x04, 0x00, 0,
            0,
        ];
        assert_eq!(content_of(&ber).unwrap(), b"abcd");
        assert_eq!(content_of(&[0x04, 0x01, b'x']).unwrap(), b"x");
    }

    #[test]
    fn broken_chunks_are_content_faults() {
        let e = content_of(&[0x24, 0x80, 0x02, 0x01, 0x00, 0, 0]).unwrap_err();
        let fault = e
            .get_ref()
            .and_then(|i| i.downcast_ref::<ContentFault>())
            .unwrap();
        assert_eq!(fault.layer, 1);
        let e = content_of(&[0x24, 0x80, 0x04, 0x05, b'a']).unwrap_err();
        assert!(e
            .get_ref()
            .and_then(|i| i.downcast_ref::<ContentFault>())
            .is_some());
        // A chunk that claims more than its definite parent holds.
        assert!(content_of(&[0x24, 0x03, 0x04, 0x05, b'a', b'b', b'c', b'd', b'e']).is_err());
    }

    #[test]
    fn read_element_keeps_exact_bytes() {
        let ber = [0x30, 0x80, 0x02, 0x01, 0x05, 0x00, 0x00, 0x05, 0x00];
        let mut s = BerStream::new(&ber[..]);
        assert_eq!(s.read_element(100).unwrap(), &ber[..7]);
        assert_eq!(s.pos(), 7);
        assert!(matches!(
            BerStream::new(&ber[..]).read_element(3),
            Err(ReadError::Ber(BerError {
                kind: BerErrorKind::TooLarge { .. },
                ..
            }))
        ));
    }
}
