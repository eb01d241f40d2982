//! BER/DER encoding as ETEE needs it.
//!
//! The official libraries write BER with indefinite lengths and chunked, sometimes nested,
//! constructed OCTET STRINGs (spec §1.3), so everything that reads messages must accept BER.
//! Three pieces:
//! - [`slice`](mod@slice): a zero-copy parser for small elements held in memory (certificates,
//!   SignerInfos, RecipientInfos, attributes);
//! - [`stream`]: a pull parser over `io::Read` for the large parts, so that a 1 GiB message
//!   never has to sit in memory;
//! - [`write`](mod@write): DER for small elements and the BER framing we emit around streamed content.
//!
//! Only low tag numbers (< 31) occur in CMS; high tag numbers are rejected as malformed.

pub mod slice;
pub mod stream;
pub mod write;

use std::fmt;

/// Identifier octets used by CMS (universal and context-specific, low tag numbers).
pub mod tag {
    pub const BOOLEAN: u8 = 0x01;
    pub const INTEGER: u8 = 0x02;
    pub const BIT_STRING: u8 = 0x03;
    pub const OCTET_STRING: u8 = 0x04;
    pub const NULL: u8 = 0x05;
    pub const OID: u8 = 0x06;
    pub const UTF8_STRING: u8 = 0x0c;
    pub const PRINTABLE_STRING: u8 = 0x13;
    pub const T61_STRING: u8 = 0x14;
    pub const IA5_STRING: u8 = 0x16;
    pub const UTC_TIME: u8 = 0x17;
    pub const GENERALIZED_TIME: u8 = 0x18;
    pub const BMP_STRING: u8 = 0x1e;
    pub const UNIVERSAL_STRING: u8 = 0x1c;
    pub const OCTET_STRING_CONSTRUCTED: u8 = 0x24;
    pub const SEQUENCE: u8 = 0x30;
    pub const SET: u8 = 0x31;
    /// `[n]` constructed, context-specific.
    pub const fn ctx_cons(n: u8) -> u8 {
        0xa0 | n
    }
    /// `[n]` primitive, context-specific.
    pub const fn ctx_prim(n: u8) -> u8 {
        0x80 | n
    }
    /// Whether the identifier octet has the constructed bit.
    pub const fn is_constructed(t: u8) -> bool {
        t & 0x20 != 0
    }
}

/// Deepest nesting accepted anywhere; real messages stay below 20.
pub const MAX_DEPTH: usize = 48;

/// The length octets of an element.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Length {
    Definite(u64),
    Indefinite,
}

/// What went wrong while decoding, and at which byte offset (from the start of the
/// enclosing input: the message, or the element being parsed in memory).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{kind} at byte {offset}")]
pub struct BerError {
    pub offset: u64,
    pub kind: BerErrorKind,
}

/// The kinds of decoding failure.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BerErrorKind {
    /// The input ended inside an element.
    Truncated,
    /// Length octets that are reserved, too long, or overflow.
    BadLength,
    /// A primitive element with an indefinite length.
    IndefinitePrimitive,
    /// A tag number of 31 or more (never used by CMS).
    HighTagNumber,
    /// Nesting deeper than [`MAX_DEPTH`].
    TooDeep,
    /// A different element than the structure requires.
    UnexpectedTag { expected: u8, found: u8 },
    /// An element larger than the limit for its kind.
    TooLarge { limit: u64 },
    /// A constructed element with more children than the limit for its kind.
    TooMany { limit: u64 },
    /// A child element ran past the end of its definite-length parent.
    Overrun,
    /// An end-of-contents marker where none may be, or one with content.
    BadEoc,
    /// Bytes left after the element.
    TrailingData,
    /// A value that is not valid for its type (INTEGER, OID, time, BIT STRING...).
    BadValue(&'static str),
}

impl fmt::Display for BerErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated => f.write_str("input ends inside an element"),
            Self::BadLength => f.write_str("malformed length"),
            Self::IndefinitePrimitive => f.write_str("indefinite length on a primitive element"),
            Self::HighTagNumber => f.write_str("high tag number"),
            Self::TooDeep => f.write_str("nesting too deep"),
            Self::UnexpectedTag { expected, found } => {
                write!(f, "expected tag 0x{expected:02x}, found 0x{found:02x}")
            }
            Self::TooLarge { limit } => write!(f, "element larger than {limit} bytes"),
            Self::TooMany { limit } => write!(f, "more than {limit} elements"),
            Self::Overrun => f.write_str("element runs past the end of its parent"),
            Self::BadEoc => f.write_str("misplaced end-of-contents"),
            Self::TrailingData => f.write_str("trailing data"),
            Self::BadValue(what) => write!(f, "invalid {what}"),
        }
    }
}

impl BerError {
    pub fn new(offset: u64, kind: BerErrorKind) -> Self {
        Self { offset, kind }
    }
}

/// Decodes identifier and length octets at the start of `input`.
/// Returns (tag, length, header size). `Ok(None)` when more bytes are needed.
pub(crate) fn decode_header(input: &[u8]) -> Result<Option<(u8, Length, usize)>, BerErrorKind> {
    let Some(&t) = input.first() else {
        return Ok(None);
    };
    if t & 0x1f == 0x1f {
        return Err(BerErrorKind::HighTagNumber);
    }
    let Some(&l0) = input.get(1) else {
        return Ok(None);
    };
    if l0 < 0x80 {
        return Ok(Some((t, Length::Definite(u64::from(l0)), 2)));
    }
    if l0 == 0x80 {
        if !tag::is_constructed(t) && t != 0 {
            return Err(BerErrorKind::IndefinitePrimitive);
        }
        return Ok(Some((t, Length::Indefinite, 2)));
    }
    let n = usize::from(l0 & 0x7f);
    if n > 8 || l0 == 0xff {
        return Err(BerErrorKind::BadLength);
    }
    if input.len() < 2 + n {
        return Ok(None);
    }
    let mut len: u64 = 0;
    for &b in &input[2..2 + n] {
        len = (len << 8) | u64::from(b);
    }
    Ok(Some((t, Length::Definite(len), 2 + n)))
}
