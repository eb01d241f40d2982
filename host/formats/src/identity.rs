//! Identifiers parsed from eHealth certificate DNs (spec §3.3) and the ETKDepot identifier
//! types with their value formats (spec §3.4).
//!
//! An eHealth certificate names its holder in organisational units:
//! `C=BE, O=Federal Government, OU=eHealth-platform Belgium, OU=<name>, OU=<TYPE>=<value>,
//! [OU=<application id>,] CN=<TYPE>=<value>[, <application id>]`. An eID certificate instead
//! carries the national number (SSIN) in `serialNumber`.

use crate::cert::{Certificate, NameAttr};
use crate::oid;
use serde::Serialize;
use std::fmt;

/// One identity of a certificate holder, as ETKDepot looks it up.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Identity {
    /// The identifier type as written in the certificate (`CBE`, `SSIN`, `NIHII-PHARMACY`, ...).
    pub id_type: String,
    /// The value as written in the certificate (not re-padded; see [`normalize_value`]).
    pub value: String,
    /// The application id (e.g. `KGSS`), which selects one of several ETKs of one holder.
    pub application_id: Option<String>,
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.id_type, self.value)?;
        if let Some(app) = &self.application_id {
            write!(f, " ({app})")?;
        }
        Ok(())
    }
}

/// Organisational units that are never an application id.
const NOT_APPLICATION_IDS: [&str; 2] = ["eHealth-platform Belgium", "Federal Government"];

/// The identities of a certificate's holder, in DN encoding order (spec §3.3):
/// - an eID certificate (subject with `serialNumber`, 2.5.4.5, all digits) gives `SSIN=<serialNumber>`,
///   listed first;
/// - every OU of the form `TYPE=digits` gives `TYPE=digits` (a certificate can have several);
/// - the application id is an OU that is neither an identifier nor "eHealth-platform Belgium" /
///   "Federal Government" and that the CN ends with; it applies to every identity.
///
/// At most [`MAX_IDENTITIES`] of them, each once.
pub fn identities(cert: &Certificate) -> Vec<Identity> {
    identities_from_name(cert.subject())
}

/// The first of [`identities`]: the identity an ETKDepot lookup would use.
pub fn primary_identity(cert: &Certificate) -> Option<Identity> {
    identities(cert).into_iter().next()
}

/// The most identities taken from one certificate. Real eHealth DNs name one or two
/// (spec §3.3), but a subject can carry any number of `TYPE=digits` OUs, and every
/// identity is copied, reported (`POST /v1/unseal`, `etee unseal --json`) and compared by
/// the callers. The first ones in encoding order are kept and the rest ignored rather
/// than refused: callers either use the first or look for one they expect, so an ignored
/// identity can make such a check fail, never pass.
pub const MAX_IDENTITIES: usize = 16;

/// The longest application id, in characters: X.520's bound on an organisational unit
/// name (`ub-organizational-unit-name`, RFC 5280 appendix A). A longer OU is not taken
/// as one, so that each identity's copy of it stays small.
pub const MAX_APPLICATION_ID: usize = 64;

/// [`identities`] for a subject given as its attributes (encoding order): at most
/// [`MAX_IDENTITIES`], each once.
pub fn identities_from_name(subject: &[NameAttr]) -> Vec<Identity> {
    let ous: Vec<&str> = subject
        .iter()
        .filter(|a| a.oid == oid::AT_ORGANIZATIONAL_UNIT)
        .map(|a| a.value.as_str())
        .collect();
    let cn = subject
        .iter()
        .rev()
        .find(|a| a.oid == oid::AT_COMMON_NAME)
        .map(|a| a.value.as_str());
    let application_id = cn.and_then(|cn| application_id(cn, &ous));

    // eID certificates have no OUs, so their SSIN has no application id.
    let eid_ssin = subject
        .iter()
        .find(|a| a.oid == oid::AT_SERIAL_NUMBER)
        .map(|a| a.value.trim())
        .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
        .map(|v| ("SSIN", v, None));
    let from_ous = ous
        .iter()
        .filter_map(|ou| parse_identifier_ou(ou))
        .map(|(t, v)| (t, v, application_id));
    let mut out: Vec<Identity> = Vec::new();
    for (id_type, value, app) in eid_ssin.into_iter().chain(from_ous) {
        if out.len() == MAX_IDENTITIES {
            break;
        }
        // A scan is enough for duplicates: `out` stays short. The application id counts:
        // an eID SSIN and the same SSIN with an application are two identities, each
        // found by its own lookups.
        if out
            .iter()
            .any(|i| i.id_type == id_type && i.value == value && i.application_id.as_deref() == app)
        {
            continue;
        }
        out.push(Identity {
            id_type: id_type.to_owned(),
            value: value.to_owned(),
            application_id: app.map(str::to_owned),
        });
    }
    out
}

/// Splits an OU of the form `TYPE=digits`, the type an upper-case letter then upper-case
/// letters, digits, `_` or `-` (`^[A-Z][A-Z0-9_-]*=[0-9]+$`; digits for §3.4's `NIHII11`).
///
/// Narrower on purpose than the official connector (spec §3.3: Java's
/// `([A-Z(-|_)]+=[0-9]+)`, whose class holds the range `(`..`|`, so lower-case letters,
/// digits and `=` too): every type of §3.4 fits ours, and an OU such as `Ward=12` stays a
/// name, not an identifier nobody can look up.
pub fn parse_identifier_ou(ou: &str) -> Option<(&str, &str)> {
    let (t, v) = ou.split_once('=')?;
    let mut tb = t.bytes();
    let first_ok = tb.next().is_some_and(|b| b.is_ascii_uppercase());
    let rest_ok =
        tb.all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    let value_ok = !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit());
    (first_ok && rest_ok && value_ok).then_some((t, v))
}

/// The application id: the last OU (other than identifiers and the two platform OUs) that
/// the CN ends with. Stricter than the official connector (spec §3.3: `cn.endsWith(ou)`):
/// the OU must be a proper suffix of the CN that starts after a non-alphanumeric character
/// (`CN=CBE=0809394427, KGSS` → `KGSS`), so that a holder name repeated as the whole CN is
/// not mistaken for one, and at most [`MAX_APPLICATION_ID`] characters long (a bound on
/// hostile certificates). Every DN of the vectors reads the same either way.
fn application_id<'a>(cn: &str, ous: &[&'a str]) -> Option<&'a str> {
    ous.iter().copied().rev().find(|ou| {
        !ou.is_empty()
            && ou.chars().nth(MAX_APPLICATION_ID).is_none()
            && !NOT_APPLICATION_IDS.contains(ou)
            && parse_identifier_ou(ou).is_none()
            && cn.strip_suffix(ou).is_some_and(|head| {
                head.chars()
                    .next_back()
                    .is_some_and(|c| !c.is_alphanumeric())
            })
    })
}

/// Why an identifier could not be normalised.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    #[error("unknown identifier type {0:?}")]
    UnknownType(String),
    #[error("empty {id_type} value")]
    Empty { id_type: &'static str },
    #[error("{id_type} value {value:?} is not all digits")]
    NotDigits {
        id_type: &'static str,
        value: String,
    },
    #[error("{id_type} value {value:?} has more than {digits} significant digits")]
    TooLong {
        id_type: &'static str,
        value: String,
        digits: usize,
    },
}

macro_rules! identifier_types {
    ($($variant:ident => $name:literal, $digits:literal;)*) => {
        /// The ETKDepot identifier types (spec §3.4), with the digit length that values are
        /// left-padded to.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum IdentifierType { $($variant),* }

        impl IdentifierType {
            /// Every type, in the order of spec §3.4.
            pub const ALL: &'static [IdentifierType] = &[$(IdentifierType::$variant),*];

            /// The ETKDepot name, e.g. `NIHII-PHARMACY`.
            pub fn name(self) -> &'static str {
                match self { $(IdentifierType::$variant => $name),* }
            }

            /// The number of digits values are left-padded to.
            pub fn digits(self) -> usize {
                match self { $(IdentifierType::$variant => $digits),* }
            }
        }
    };
}

identifier_types! {
    Cbe => "CBE", 10;
    CbeTreatCenter => "CBE-TREAT_CENTER", 10;
    Ssin => "SSIN", 11;
    Nihii => "NIHII", 8;
    Nihii11 => "NIHII11", 11;
    NihiiPharmacy => "NIHII-PHARMACY", 8;
    NihiiLabo => "NIHII-LABO", 8;
    NihiiRetirement => "NIHII-RETIREMENT", 8;
    NihiiOtdPharmacy => "NIHII-OTD_PHARMACY", 8;
    NihiiHospital => "NIHII-HOSPITAL", 8;
    NihiiGroup => "NIHII-GROUP", 8;
    Ehp => "EHP", 10;
    NihiiPalliativeCare => "NIHII-PALLIATIVE_CARE", 8;
    NihiiOfficeDentists => "NIHII-OFFICE_DENTISTS", 8;
    NihiiMedicalHouse => "NIHII-MEDICAL_HOUSE", 8;
    NihiiOfficeDoctors => "NIHII-OFFICE_DOCTORS", 8;
    NihiiGroupDoctors => "NIHII-GROUP_DOCTORS", 8;
    NihiiOfBand => "NIHII-OF_BAND", 8;
    NihiiPsychHouse => "NIHII-PSYCH_HOUSE", 8;
    NihiiProtAcc => "NIHII-PROT_ACC", 8;
    NihiiHomeServices => "NIHII-HOME_SERVICES", 8;
    NihiiOfPhysios => "NIHII-OF_PHYSIOS", 8;
    Site => "SITE", 4;
    SiteSmur => "SITESMUR", 10;
    SitePit => "SITEPIT", 10;
    CbeConsortium => "CBE-CONSORTIUM", 10;
    NihiiGuardPost => "NIHII-GUARD_POST", 8;
    EhpCtrlOrganism => "EHP-CTRL_ORGANISM", 10;
    NihiiBelrai => "NIHII-BELRAI", 8;
    NihiiBelraiScreen => "NIHII-BELRAI_SCREEN", 8;
    NihiiGroupMidwives => "NIHII-GROUP_MIDWIVES", 8;
    NihiiAmbuService => "NIHII-AMBU_SERVICE", 8;
    NihiiLegalPsy => "NIHII-LEGAL_PSY", 8;
    NihiiReeducation => "NIHII-REEDUCATION", 8;
    NihiiSortingCenter => "NIHII-SORTING_CENTER", 8;
}

impl IdentifierType {
    /// Looks a type up by its ETKDepot name (ASCII case-insensitive); `HUB` is an alias of `EHP`.
    pub fn from_name(name: &str) -> Option<Self> {
        let name = name.trim();
        if name.eq_ignore_ascii_case("HUB") {
            return Some(Self::Ehp);
        }
        Self::ALL
            .iter()
            .copied()
            .find(|t| t.name().eq_ignore_ascii_case(name))
    }

    /// Left-pads `value` with zeros to [`digits`](Self::digits), losslessly: surplus
    /// *leading zeros* are dropped, and a value with more significant digits than the type
    /// allows is an error ([`IdentityError::TooLong`]).
    ///
    /// This is the form for *comparing* identities (a caller's certificate against a key's
    /// creator, a KGSS reader attribute, ...), where two different values must never
    /// become equal. An ETKDepot *lookup* formats its value as the official connector does,
    /// truncating: [`format_value`](Self::format_value).
    pub fn normalize(self, value: &str) -> Result<String, IdentityError> {
        let v = self.digits_of(value)?;
        let n = self.digits();
        if v.len() <= n {
            return Ok(format!("{v:0>n$}"));
        }
        let surplus = v.len() - n;
        if v.as_bytes()[..surplus].iter().all(|&b| b == b'0') {
            Ok(v[surplus..].to_owned())
        } else {
            Err(IdentityError::TooLong {
                id_type: self.name(),
                value: v.to_owned(),
                digits: n,
            })
        }
    }

    /// The value of an ETKDepot lookup, formatted as the official connector formats it
    /// (spec §3.4; CONN402 `IdentifierType.formatIdentifierValue`, reached through
    /// `getEtkSet(type, Long value, ...)`): the number without its leading zeros, then
    /// left-padded with zeros to [`digits`](Self::digits), or, when it has more digits
    /// than that, its first [`digits`](Self::digits) digits (`substring(0, length)`).
    ///
    /// So `NIHII` `10203040506` (a NIHII-11) is looked up as `10203040`, as the connector
    /// does. Values that are at most [`digits`](Self::digits) long give the same result
    /// as [`normalize`](Self::normalize). Empty and non-digit values are errors.
    pub fn format_value(self, value: &str) -> Result<String, IdentityError> {
        let v = self.digits_of(value)?;
        let n = self.digits();
        let significant = v.trim_start_matches('0');
        if significant.len() > n {
            Ok(significant[..n].to_owned())
        } else {
            Ok(format!("{significant:0>n$}"))
        }
    }

    /// `value` trimmed, if it is a non-empty string of ASCII digits.
    fn digits_of(self, value: &str) -> Result<&str, IdentityError> {
        let v = value.trim();
        if v.is_empty() {
            return Err(IdentityError::Empty {
                id_type: self.name(),
            });
        }
        if !v.bytes().all(|b| b.is_ascii_digit()) {
            return Err(IdentityError::NotDigits {
                id_type: self.name(),
                value: v.to_owned(),
            });
        }
        Ok(v)
    }
}

impl fmt::Display for IdentifierType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for IdentifierType {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl std::str::FromStr for IdentifierType {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_name(s).ok_or_else(|| IdentityError::UnknownType(s.to_owned()))
    }
}

/// Normalises an identifier value for comparing identities: left-pads it with zeros to the
/// digit length of `id_type` (spec §3.4; `HUB` = `EHP`). Unknown types, empty or non-digit
/// values and values with too many significant digits are errors
/// ([`IdentifierType::normalize`]; lookups use [`lookup_identifier`]).
pub fn normalize_value(id_type: &str, value: &str) -> Result<String, IdentityError> {
    id_type.parse::<IdentifierType>()?.normalize(value)
}

/// The canonical ETKDepot name of an identifier type as given (ASCII case-insensitive,
/// `HUB` = `EHP`), e.g. `cbe` → `CBE`; `None` for an unknown type.
pub fn canonical_type(id_type: &str) -> Option<&'static str> {
    IdentifierType::from_name(id_type).map(IdentifierType::name)
}

/// The `(type, value)` an ETKDepot lookup uses: the canonical type name (spec §3.4's table,
/// `HUB` = `EHP`, any case) and the value formatted as the official connector does
/// ([`IdentifierType::format_value`]: zero-padded, or truncated to the type's length).
pub fn lookup_identifier(
    id_type: &str,
    value: &str,
) -> Result<(&'static str, String), IdentityError> {
    let t = id_type.parse::<IdentifierType>()?;
    Ok((t.name(), t.format_value(value)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds subject attributes from `(field, value)` pairs in encoding order.
    fn name(rdns: &[(&str, &str)]) -> Vec<NameAttr> {
        rdns.iter()
            .map(|(f, v)| {
                let oid = match *f {
                    "C" => oid::AT_COUNTRY,
                    "O" => oid::AT_ORGANIZATION,
                    "OU" => oid::AT_ORGANIZATIONAL_UNIT,
                    "CN" => oid::AT_COMMON_NAME,
                    "SERIALNUMBER" => oid::AT_SERIAL_NUMBER,
                    other => panic!("unknown field {other}"),
                };
                NameAttr {
                    oid: oid.to_vec(),
                    value: (*v).to_owned(),
                }
            })
            .collect()
    }

    fn id(t: &str, v: &str, app: Option<&str>) -> Identity {
        Identity {
            id_type: t.into(),
            value: v.into(),
            application_id: app.map(Into::into),
        }
    }

    #[test]
    fn kgss_dn() {
        // §3.3: C=BE, O=Federal Government, OU=KGSS, OU=CBE=0809394427, OU=EHEALTH-PLATFORM,
        // OU=eHealth-platform Belgium, CN="CBE=0809394427, KGSS" (printed last RDN first).
        let n = name(&[
            ("C", "BE"),
            ("O", "Federal Government"),
            ("OU", "KGSS"),
            ("OU", "CBE=0809394427"),
            ("OU", "EHEALTH-PLATFORM"),
            ("OU", "eHealth-platform Belgium"),
            ("CN", "CBE=0809394427, KGSS"),
        ]);
        assert_eq!(
            identities_from_name(&n),
            vec![id("CBE", "0809394427", Some("KGSS"))]
        );
    }

    #[test]
    fn many_ous_keep_their_order_and_lose_their_duplicates() {
        // Each identifier twice in a row: the first occurrence stays, in encoding order,
        // and past MAX_IDENTITIES the rest are ignored.
        let mut n = name(&[("C", "BE"), ("CN", "x")]);
        for i in 0..20_000 {
            for _ in 0..2 {
                n.push(NameAttr {
                    oid: oid::AT_ORGANIZATIONAL_UNIT.to_vec(),
                    value: format!("NIHII={}", i * 7),
                });
            }
        }
        let want: Vec<Identity> = (0..MAX_IDENTITIES)
            .map(|i| id("NIHII", &(i * 7).to_string(), None))
            .collect();
        assert_eq!(identities_from_name(&n), want);
        // A duplicate is one of (type, value, application id): the eID SSIN and the same
        // SSIN with an application stay two.
        let n = name(&[
            ("C", "BE"),
            ("OU", "SSIN=71715100070"),
            ("OU", "APP"),
            ("CN", "SSIN=71715100070, APP"),
            ("SERIALNUMBER", "71715100070"),
        ]);
        assert_eq!(
            identities_from_name(&n),
            vec![
                id("SSIN", "71715100070", None),
                id("SSIN", "71715100070", Some("APP"))
            ]
        );
    }

    /// A self-signed certificate with this subject (`(field, value)` in encoding order),
    /// values as UTF8String whatever their length: OpenSSL applies X.520's length bounds
    /// only when it picks the string type itself, and hostile certificates ignore them.
    fn certificate_named(rdns: &[(&str, String)]) -> Certificate {
        use openssl::asn1::Asn1Type;
        use openssl::{ec, nid::Nid, pkey::PKey, x509};
        let group = ec::EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
        let key = PKey::from_ec_key(ec::EcKey::generate(&group).unwrap()).unwrap();
        let mut name = x509::X509NameBuilder::new().unwrap();
        for (field, value) in rdns {
            name.append_entry_by_text_with_type(field, value, Asn1Type::UTF8STRING)
                .unwrap();
        }
        let name = name.build();
        let x = etee_testpki::self_signed(&name, &key, None).unwrap();
        Certificate::from_der(&x.to_der().unwrap()).unwrap()
    }

    #[test]
    fn a_crafted_subject_gives_few_identities_and_no_long_application_id() {
        // As reported: many `TYPE=digits` OUs and a long application id that the CN ends
        // with, each identity carrying its own copy of it.
        let app = "A".repeat(2000);
        let mut rdns = vec![("C", "BE".to_owned())];
        rdns.extend((0..1000).map(|i| ("OU", format!("NIHII={i}"))));
        rdns.push(("OU", app.clone()));
        rdns.push(("CN", format!("NIHII=0, {app}")));
        let ids = identities(&certificate_named(&rdns));
        let want: Vec<Identity> = (0..MAX_IDENTITIES)
            .map(|i| id("NIHII", &i.to_string(), None))
            .collect();
        assert_eq!(ids, want);

        // An application id of X.520's longest OU is still one.
        let app = "B".repeat(MAX_APPLICATION_ID);
        let rdns = [
            ("C", "BE".to_owned()),
            ("OU", "CBE=0809394427".to_owned()),
            ("OU", app.clone()),
            ("CN", format!("CBE=0809394427, {app}")),
        ];
        assert_eq!(
            identities(&certificate_named(&rdns)),
            vec![id("CBE", "0809394427", Some(&app))]
        );
    }

    #[test]
    fn pharmacy_dn() {
        let n = name(&[
            ("C", "BE"),
            ("O", "Federal Government"),
            ("OU", "NIHII-PHARMACY=27150201"),
            ("OU", "APOTHEEK DE LINDE"),
            ("OU", "eHealth-platform Belgium"),
            ("CN", "NIHII-PHARMACY=27150201"),
        ]);
        assert_eq!(
            identities_from_name(&n),
            vec![id("NIHII-PHARMACY", "27150201", None)]
        );
    }

    #[test]
    fn organisation_with_application_id() {
        let n = name(&[
            ("C", "BE"),
            ("O", "Federal Government"),
            ("OU", "VITALINKGATEWAY"),
            ("OU", "EHP=1990001916"),
            ("OU", "VLAAMS AGENTSCHAP ZORG EN GEZONDHEID"),
            ("OU", "eHealth-platform Belgium"),
            ("CN", "EHP=1990001916, VITALINKGATEWAY"),
        ]);
        assert_eq!(
            identities_from_name(&n),
            vec![id("EHP", "1990001916", Some("VITALINKGATEWAY"))]
        );
    }

    #[test]
    fn natural_person() {
        let n = name(&[
            ("C", "BE"),
            ("O", "Federal Government"),
            ("OU", "SSIN=76120902527"),
            ("OU", "FREDERIK EUGEEN LIBERT"),
            ("OU", "eHealth-platform Belgium"),
            ("CN", "SSIN=76120902527"),
        ]);
        let ids = identities_from_name(&n);
        assert_eq!(ids, vec![id("SSIN", "76120902527", None)]);
    }

    #[test]
    fn several_identifiers_share_the_application_id() {
        let n = name(&[
            ("C", "BE"),
            ("O", "Federal Government"),
            ("OU", "eHealth-platform Belgium"),
            ("OU", "NIHII-HOSPITAL=71000436"),
            ("OU", "CBE=0123456789"),
            ("OU", "MYAPP"),
            ("CN", "NIHII-HOSPITAL=71000436, MYAPP"),
        ]);
        assert_eq!(
            identities_from_name(&n),
            vec![
                id("NIHII-HOSPITAL", "71000436", Some("MYAPP")),
                id("CBE", "0123456789", Some("MYAPP"))
            ]
        );
    }

    #[test]
    fn eid_serial_number_is_ssin() {
        let n = name(&[
            ("C", "BE"),
            ("CN", "Alice SPECIMEN (Authentication)"),
            ("SERIALNUMBER", "71715100070"),
        ]);
        assert_eq!(
            identities_from_name(&n),
            vec![id("SSIN", "71715100070", None)]
        );
        // A CA's "serialNumber=002" style attribute that is not all digits is ignored.
        let ca = name(&[
            ("C", "BE"),
            ("SERIALNUMBER", "2010a"),
            ("CN", "Government CA"),
        ]);
        assert!(identities_from_name(&ca).is_empty());
    }

    #[test]
    fn no_identifier_no_identity() {
        let n = name(&[
            ("CN", "Bob"),
            ("OU", "eHealth-platform Belgium"),
            ("O", "Federal Government"),
            ("C", "BE"),
        ]);
        assert!(identities_from_name(&n).is_empty());
        // A CN equal to the holder-name OU is not an application id.
        let n = name(&[
            ("C", "BE"),
            ("OU", "Niala Reitromed Valid"),
            ("OU", "NIHII=987456321"),
            ("CN", "Niala Reitromed Valid"),
        ]);
        assert_eq!(
            identities_from_name(&n),
            vec![id("NIHII", "987456321", None)]
        );
    }

    #[test]
    fn identifier_ou_syntax() {
        assert_eq!(
            parse_identifier_ou("NIHII11=12345678901"),
            Some(("NIHII11", "12345678901"))
        );
        assert_eq!(
            parse_identifier_ou("CBE-TREAT_CENTER=1"),
            Some(("CBE-TREAT_CENTER", "1"))
        );
        assert_eq!(parse_identifier_ou("nihii=123"), None);
        assert_eq!(parse_identifier_ou("-NIHII=123"), None);
        assert_eq!(parse_identifier_ou("NIHII=12a"), None);
        assert_eq!(parse_identifier_ou("NIHII="), None);
        assert_eq!(parse_identifier_ou("=123"), None);
        assert_eq!(parse_identifier_ou("NIHII 1=123"), None);
    }

    #[test]
    fn normalisation() {
        assert_eq!(normalize_value("CBE", "809394427").unwrap(), "0809394427");
        assert_eq!(
            normalize_value("SSIN", "76120902527").unwrap(),
            "76120902527"
        );
        assert_eq!(normalize_value("NIHII", "1234").unwrap(), "00001234");
        assert_eq!(normalize_value("NIHII11", "202").unwrap(), "00000000202");
        assert_eq!(
            normalize_value("NIHII-PHARMACY", " 27150201 ").unwrap(),
            "27150201"
        );
        assert_eq!(normalize_value("EHP", "1990001916").unwrap(), "1990001916");
        assert_eq!(normalize_value("HUB", "1990001916").unwrap(), "1990001916");
        assert_eq!(normalize_value("hub", "1").unwrap(), "0000000001");
        assert_eq!(normalize_value("SITE", "7").unwrap(), "0007");
        assert_eq!(normalize_value("NIHII", "0012345678").unwrap(), "12345678");
        assert!(matches!(
            normalize_value("NIHII", "123456789"),
            Err(IdentityError::TooLong { digits: 8, .. })
        ));
        assert!(matches!(
            normalize_value("CBE", "08O9"),
            Err(IdentityError::NotDigits { .. })
        ));
        assert!(matches!(
            normalize_value("CBE", "-1"),
            Err(IdentityError::NotDigits { .. })
        ));
        assert!(matches!(
            normalize_value("CBE", ""),
            Err(IdentityError::Empty { .. })
        ));
        assert!(matches!(
            normalize_value("FOO", "1"),
            Err(IdentityError::UnknownType(_))
        ));
    }

    #[test]
    fn lookup_values_are_formatted_as_the_connector_does() {
        // Short values: zero-padded, as normalize does.
        assert_eq!(
            lookup_identifier("CBE", "809394427").unwrap(),
            ("CBE", "0809394427".to_owned())
        );
        assert_eq!(
            lookup_identifier("NIHII", "1234").unwrap(),
            ("NIHII", "00001234".to_owned())
        );
        assert_eq!(
            lookup_identifier("SITE", "0").unwrap(),
            ("SITE", "0000".to_owned())
        );
        // Too long: the first digits of the number (connector: Long value, then
        // substring(0, length)); a NIHII-11 asked for as NIHII gives its NIHII-8.
        assert_eq!(
            lookup_identifier("NIHII", "10203040506").unwrap(),
            ("NIHII", "10203040".to_owned())
        );
        assert_eq!(
            lookup_identifier("CBE", "08093944271").unwrap(),
            ("CBE", "8093944271".to_owned())
        );
        assert_eq!(
            lookup_identifier("SSIN", "760120902527").unwrap(),
            ("SSIN", "76012090252".to_owned())
        );
        // Leading zeros are not digits of the number (Long.toString drops them).
        assert_eq!(
            lookup_identifier("NIHII", "0012345678").unwrap(),
            ("NIHII", "12345678".to_owned())
        );
        assert_eq!(
            lookup_identifier("NIHII", "00123456789").unwrap(),
            ("NIHII", "12345678".to_owned())
        );
        // Canonical type names, whatever the case; HUB is EHP.
        assert_eq!(
            lookup_identifier("cbe", "1").unwrap(),
            ("CBE", "0000000001".to_owned())
        );
        assert_eq!(
            lookup_identifier("Hub", "1990001916").unwrap(),
            ("EHP", "1990001916".to_owned())
        );
        assert_eq!(
            lookup_identifier(" nihii-pharmacy ", "27150201").unwrap(),
            ("NIHII-PHARMACY", "27150201".to_owned())
        );
        // Formatting is idempotent.
        for (t, v) in [
            ("NIHII", "10203040506"),
            ("CBE", "809394427"),
            ("SITE", "0"),
        ] {
            let (t1, v1) = lookup_identifier(t, v).unwrap();
            assert_eq!(lookup_identifier(t1, &v1).unwrap(), (t1, v1));
        }
        // Still errors: unknown type, empty or non-digit value.
        assert!(matches!(
            lookup_identifier("FOO", "1"),
            Err(IdentityError::UnknownType(_))
        ));
        assert!(matches!(
            lookup_identifier("CBE", " "),
            Err(IdentityError::Empty { .. })
        ));
        assert!(matches!(
            lookup_identifier("CBE", "12-4"),
            Err(IdentityError::NotDigits { .. })
        ));
        // Comparing identities stays lossless.
        assert!(matches!(
            normalize_value("CBE", "18093944271"),
            Err(IdentityError::TooLong { digits: 10, .. })
        ));
        assert_eq!(
            lookup_identifier("CBE", "18093944271").unwrap().1,
            "1809394427"
        );
        assert_eq!(canonical_type("hub"), Some("EHP"));
        assert_eq!(canonical_type("cbe-treat_center"), Some("CBE-TREAT_CENTER"));
        assert_eq!(canonical_type("PLANET"), None);
    }

    #[test]
    fn type_table() {
        assert_eq!(IdentifierType::ALL.len(), 35);
        for t in IdentifierType::ALL {
            assert_eq!(IdentifierType::from_name(t.name()), Some(*t));
        }
        assert_eq!(IdentifierType::from_name("HUB"), Some(IdentifierType::Ehp));
        assert_eq!(IdentifierType::NihiiPharmacy.digits(), 8);
        assert_eq!(IdentifierType::SiteSmur.digits(), 10);
        assert_eq!(
            IdentifierType::EhpCtrlOrganism.to_string(),
            "EHP-CTRL_ORGANISM"
        );
    }
}
