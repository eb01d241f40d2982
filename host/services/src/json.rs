//! JSON helpers shared by the REST types: size-limited parsing, base64 field codecs,
//! RFC 3339 times, canonical serialisation.

use crate::error::Error;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Default maximum JSON body size (1 MiB), like the XML limit.
pub const MAX_JSON_SIZE: usize = 1024 * 1024;

/// Parses a JSON body of at most [`MAX_JSON_SIZE`] bytes (serde_json also bounds nesting).
pub fn parse<T: DeserializeOwned>(input: &[u8]) -> Result<T, Error> {
    if input.len() > MAX_JSON_SIZE {
        return Err(Error::TooLarge {
            what: "JSON body size",
            limit: MAX_JSON_SIZE,
        });
    }
    serde_json::from_slice(input).map_err(|e| Error::Json(e.to_string()))
}

/// Serialises to compact JSON.
pub fn to_vec<T: Serialize>(v: &T) -> Vec<u8> {
    // Only plain data types with string keys are serialised here: this cannot fail.
    serde_json::to_vec(v).unwrap_or_default()
}

/// Canonical JSON bytes: object members sorted by key (byte order, which is RFC 8785's
/// UTF-16 order for the ASCII keys used here), no insignificant whitespace, serde_json's
/// minimal string escaping. Enough of RFC 8785 for data with ASCII keys and integer numbers.
pub fn canonical<T: Serialize>(v: &T) -> Result<Vec<u8>, Error> {
    let value = serde_json::to_value(v).map_err(|e| Error::Json(e.to_string()))?;
    let mut out = Vec::new();
    write_canonical(&value, &mut out)?;
    Ok(out)
}

fn write_canonical(v: &serde_json::Value, out: &mut Vec<u8>) -> Result<(), Error> {
    use serde_json::Value;
    match v {
        Value::Object(map) => {
            let mut members: Vec<_> = map.iter().collect();
            members.sort_by(|a, b| a.0.cmp(b.0));
            out.push(b'{');
            for (i, (k, v)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend(to_vec(k));
                out.push(b':');
                write_canonical(v, out)?;
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(v, out)?;
            }
            out.push(b']');
        }
        Value::Number(n) if n.is_f64() => {
            return Err(Error::Json("canonical JSON: no fractional numbers".into()))
        }
        other => out.extend(to_vec(other)),
    }
    Ok(())
}

/// Standard base64 (padded) for `Vec<u8>` fields.
pub mod b64 {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(v))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(s.as_bytes())
            .map_err(serde::de::Error::custom)
    }
}

/// Optional standard base64.
pub mod b64_opt {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => super::b64::serialize(v, s),
            None => s.serialize_none(),
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        #[derive(Deserialize)]
        struct W(#[serde(with = "super::b64")] Vec<u8>);
        Ok(Option::<W>::deserialize(d)?.map(|w| w.0))
    }
}

/// base64url without padding (RFC 4648 §5), as JOSE uses it.
pub mod b64url {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn encode(v: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v)
    }
    pub fn decode(s: &str) -> Result<Vec<u8>, base64::DecodeError> {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s.as_bytes())
    }
    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&encode(v))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        decode(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// Unix seconds as an RFC 3339 UTC string.
pub mod rfc3339 {
    use serde::{Deserialize, Deserializer, Serializer};
    use time::format_description::well_known::Rfc3339;
    use time::OffsetDateTime;

    pub fn format(t: i64) -> Option<String> {
        OffsetDateTime::from_unix_timestamp(t)
            .ok()?
            .format(&Rfc3339)
            .ok()
    }
    pub fn serialize<S: Serializer>(t: &i64, s: S) -> Result<S::Ok, S::Error> {
        let f = format(*t).ok_or_else(|| serde::ser::Error::custom("time out of range"))?;
        s.serialize_str(&f)
    }
    /// Refuses a time that [`format`] cannot write back: an offset can take a time written
    /// in the years 0000–9999 out of them in UTC (`0000-01-01T00:00:00+00:01`), and such a
    /// value would make its whole body unwritable.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        let s = String::deserialize(d)?;
        let t = OffsetDateTime::parse(&s, &Rfc3339)
            .map(|t| t.unix_timestamp())
            .map_err(serde::de::Error::custom)?;
        match format(t) {
            Some(_) => Ok(t),
            None => Err(serde::de::Error::custom(
                "time outside the years 0000-9999 in UTC",
            )),
        }
    }
}
