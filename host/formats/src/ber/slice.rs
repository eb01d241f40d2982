//! Zero-copy BER parsing of elements held in memory.

use super::{decode_header, tag, BerError, BerErrorKind, Length, MAX_DEPTH};
use std::borrow::Cow;

/// One decoded element: its identifier octet, its content and its whole encoding.
#[derive(Clone, Copy, Debug)]
pub struct Tlv<'a> {
    pub tag: u8,
    /// The content octets; for an indefinite length, the bytes between the header and
    /// the end-of-contents marker.
    pub content: &'a [u8],
    /// The whole encoding: header, content and, for indefinite lengths, the EOC.
    pub raw: &'a [u8],
    /// Offset of `raw` from the start of the outermost input, for error messages.
    pub offset: u64,
    pub indefinite: bool,
}

/// Parses one element at the start of `input`; returns it and the rest.
pub fn parse_one(input: &[u8], offset: u64) -> Result<(Tlv<'_>, &[u8]), BerError> {
    parse_at_depth(input, offset, 0)
}

/// Parses exactly one element spanning all of `input`.
pub fn parse_exact(input: &[u8]) -> Result<Tlv<'_>, BerError> {
    let (tlv, rest) = parse_one(input, 0)?;
    if !rest.is_empty() {
        return Err(BerError::new(
            tlv.raw.len() as u64,
            BerErrorKind::TrailingData,
        ));
    }
    Ok(tlv)
}

fn parse_at_depth(input: &[u8], offset: u64, depth: usize) -> Result<(Tlv<'_>, &[u8]), BerError> {
    if depth > MAX_DEPTH {
        return Err(BerError::new(offset, BerErrorKind::TooDeep));
    }
    let (t, len, hl) = decode_header(input)
        .map_err(|k| BerError::new(offset, k))?
        .ok_or(BerError::new(offset, BerErrorKind::Truncated))?;
    match len {
        Length::Definite(n) => {
            let end = usize::try_from(n)
                .ok()
                .and_then(|n| hl.checked_add(n))
                .filter(|&end| end <= input.len())
                .ok_or(BerError::new(offset, BerErrorKind::Truncated))?;
            let tlv = Tlv {
                tag: t,
                content: &input[hl..end],
                raw: &input[..end],
                offset,
                indefinite: false,
            };
            Ok((tlv, &input[end..]))
        }
        Length::Indefinite => {
            if t == 0 {
                return Err(BerError::new(offset, BerErrorKind::BadEoc));
            }
            // Walk the children until the end-of-contents marker.
            let mut pos = hl;
            loop {
                let rest = &input[pos..];
                if rest.len() >= 2 && rest[0] == 0 && rest[1] == 0 {
                    let tlv = Tlv {
                        tag: t,
                        content: &input[hl..pos],
                        raw: &input[..pos + 2],
                        offset,
                        indefinite: true,
                    };
                    return Ok((tlv, &input[pos + 2..]));
                }
                let (child, _) = parse_at_depth(rest, offset + pos as u64, depth + 1)?;
                if child.tag == 0 {
                    return Err(BerError::new(child.offset, BerErrorKind::BadEoc));
                }
                pos += child.raw.len();
            }
        }
    }
}

impl<'a> Tlv<'a> {
    /// Whether the identifier octet says constructed.
    pub fn is_constructed(&self) -> bool {
        tag::is_constructed(self.tag)
    }

    fn content_offset(&self) -> u64 {
        self.offset
            + (self.raw.len() - self.content.len() - if self.indefinite { 2 } else { 0 }) as u64
    }

    /// Fails unless the identifier octet is `expected`.
    pub fn expect(self, expected: u8) -> Result<Self, BerError> {
        if self.tag == expected {
            Ok(self)
        } else {
            Err(self.err(BerErrorKind::UnexpectedTag {
                expected,
                found: self.tag,
            }))
        }
    }

    /// An error located at this element.
    pub fn err(&self, kind: BerErrorKind) -> BerError {
        BerError::new(self.offset, kind)
    }

    /// The child elements of a constructed element.
    pub fn children(&self) -> Children<'a> {
        Children {
            rest: self.content,
            offset: self.content_offset(),
        }
    }

    /// Children as a sequence reader with expectations on tags.
    pub fn seq(&self) -> Result<Seq<'a>, BerError> {
        if !self.is_constructed() {
            return Err(self.err(BerErrorKind::BadValue(
                "primitive where constructed expected",
            )));
        }
        Ok(Seq {
            inner: self.children(),
            peeked: None,
            parent: *self,
        })
    }

    /// The octets of an OCTET STRING (or an implicitly tagged one), joining the chunks of a
    /// constructed encoding, however nested.
    pub fn octets(&self) -> Result<Cow<'a, [u8]>, BerError> {
        if !self.is_constructed() {
            return Ok(Cow::Borrowed(self.content));
        }
        let mut out = Vec::new();
        self.collect_octets(&mut out, 0)?;
        Ok(Cow::Owned(out))
    }

    fn collect_octets(&self, out: &mut Vec<u8>, depth: usize) -> Result<(), BerError> {
        if depth > MAX_DEPTH {
            return Err(self.err(BerErrorKind::TooDeep));
        }
        for child in self.children() {
            let child = child?;
            match child.tag {
                tag::OCTET_STRING => out.extend_from_slice(child.content),
                tag::OCTET_STRING_CONSTRUCTED => child.collect_octets(out, depth + 1)?,
                found => {
                    return Err(child.err(BerErrorKind::UnexpectedTag {
                        expected: tag::OCTET_STRING,
                        found,
                    }))
                }
            }
        }
        Ok(())
    }

    /// A non-negative INTEGER's magnitude, big-endian without leading zero octets.
    pub fn uint_bytes(&self) -> Result<&'a [u8], BerError> {
        let c = self.content;
        if c.is_empty() || self.is_constructed() {
            return Err(self.err(BerErrorKind::BadValue("INTEGER")));
        }
        let mut i = 0;
        while i + 1 < c.len() && c[i] == 0 {
            i += 1;
        }
        Ok(&c[i..])
    }

    /// A small INTEGER (versions, salt lengths).
    pub fn small_int(&self) -> Result<i64, BerError> {
        let c = self.content;
        if c.is_empty() || c.len() > 8 || self.is_constructed() {
            return Err(self.err(BerErrorKind::BadValue("INTEGER")));
        }
        let mut v: i64 = if c[0] & 0x80 != 0 { -1 } else { 0 };
        for &b in c {
            v = (v << 8) | i64::from(b);
        }
        Ok(v)
    }
}

/// Iterator over the children of a constructed element.
#[derive(Clone)]
pub struct Children<'a> {
    rest: &'a [u8],
    offset: u64,
}

impl<'a> Iterator for Children<'a> {
    type Item = Result<Tlv<'a>, BerError>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        match parse_one(self.rest, self.offset) {
            Ok((tlv, rest)) => {
                self.offset += tlv.raw.len() as u64;
                self.rest = rest;
                Some(Ok(tlv))
            }
            Err(e) => {
                self.rest = &[];
                Some(Err(e))
            }
        }
    }
}

/// Reads the fields of a SEQUENCE in order, with optional fields by tag.
pub struct Seq<'a> {
    inner: Children<'a>,
    peeked: Option<Tlv<'a>>,
    parent: Tlv<'a>,
}

impl<'a> Seq<'a> {
    fn peek(&mut self) -> Result<Option<Tlv<'a>>, BerError> {
        if self.peeked.is_none() {
            self.peeked = self.inner.next().transpose()?;
        }
        Ok(self.peeked)
    }

    /// The next field, whatever its tag.
    pub fn any(&mut self) -> Result<Tlv<'a>, BerError> {
        self.peek()?;
        self.peeked
            .take()
            .ok_or(self.parent.err(BerErrorKind::BadValue("missing field")))
    }

    /// The next field, which must carry `t`.
    pub fn next(&mut self, t: u8) -> Result<Tlv<'a>, BerError> {
        self.any()?.expect(t)
    }

    /// The next field if it carries `t`.
    pub fn optional(&mut self, t: u8) -> Result<Option<Tlv<'a>>, BerError> {
        match self.peek()? {
            Some(tlv) if tlv.tag == t => {
                self.peeked = None;
                Ok(Some(tlv))
            }
            _ => Ok(None),
        }
    }

    /// Whether fields remain.
    pub fn has_more(&mut self) -> Result<bool, BerError> {
        Ok(self.peek()?.is_some())
    }

    /// Fails if fields remain.
    pub fn finish(mut self) -> Result<(), BerError> {
        match self.peek()? {
            None => Ok(()),
            Some(t) => Err(t.err(BerErrorKind::TrailingData)),
        }
    }
}

/// Decodes an OBJECT IDENTIFIER's content octets into dotted form (for messages and JSON).
pub fn oid_to_string(content: &[u8]) -> String {
    let mut parts: Vec<u64> = Vec::new();
    let mut acc: u64 = 0;
    for &b in content {
        acc = (acc << 7) | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            if parts.is_empty() {
                let first = if acc < 80 { acc / 40 } else { 2 };
                parts.push(first);
                parts.push(acc - first * 40);
            } else {
                parts.push(acc);
            }
            acc = 0;
        }
    }
    parts
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn definite_and_indefinite_octets_agree() {
        // 24 80 04 02 'ab' 24 80 04 01 'c' 00 00 00 00  ==  "abc"
        let ber = [
            0x24, 0x80, 0x04, 0x02, b'a', b'b', 0x24, 0x80, 0x04, 0x01, b'c', 0, 0, 0, 0,
        ];
        let tlv = parse_exact(&ber).unwrap();
        assert!(tlv.indefinite);
        assert_eq!(&*tlv.octets().unwrap(), b"abc");
        let der = [0x04, 0x03, b'a', b'b', b'c'];
        assert_eq!(&*parse_exact(&der).unwrap().octets().unwrap(), b"abc");
    }

    #[test]
    fn truncation_and_trailing_data_are_errors() {
        assert_eq!(
            parse_exact(&[0x30, 0x03, 0x02, 0x01]).unwrap_err().kind,
            BerErrorKind::Truncated
        );
        assert_eq!(
            parse_exact(&[0x05, 0x00, 0x00]).unwrap_err().kind,
            BerErrorKind::TrailingData
        );
        assert_eq!(
            parse_exact(&[0x30, 0x80, 0x05, 0x00]).unwrap_err().kind,
            BerErrorKind::Truncated
        );
        assert_eq!(
            parse_exact(&[0x04, 0x80, 0, 0]).unwrap_err().kind,
            BerErrorKind::IndefinitePrimitive
        );
        assert_eq!(
            parse_exact(&[0x1f, 0x01, 0x00]).unwrap_err().kind,
            BerErrorKind::HighTagNumber
        );
    }

    #[test]
    fn deep_nesting_is_refused_not_overflowed() {
        let mut v = Vec::new();
        for _ in 0..10_000 {
            v.extend_from_slice(&[0x30, 0x80]);
        }
        assert_eq!(parse_exact(&v).unwrap_err().kind, BerErrorKind::TooDeep);
    }

    #[test]
    fn huge_length_is_truncation() {
        let v = [0x04, 0x88, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
        assert!(parse_exact(&v).is_err());
    }

    #[test]
    fn oid_strings() {
        assert_eq!(
            oid_to_string(&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x02]),
            "1.2.840.113549.1.7.2"
        );
        assert_eq!(
            oid_to_string(&[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01]),
            "2.16.840.1.101.3.4.2.1"
        );
    }

    #[test]
    fn integers() {
        let t = parse_exact(&[0x02, 0x03, 0x00, 0x80, 0x01]).unwrap();
        assert_eq!(t.uint_bytes().unwrap(), &[0x80, 0x01]);
        assert_eq!(
            parse_exact(&[0x02, 0x01, 0x20])
                .unwrap()
                .small_int()
                .unwrap(),
            32
        );
    }
}
