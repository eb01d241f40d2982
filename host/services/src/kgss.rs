//! KGSS (spec §5.1): the outer SOAP messages, the inner (sealed) contents, and the pure
//! access-condition evaluation of `AllowedReader` / `ExludedReader` credentials.
//!
//! Outer messages carry the sealed inner content as base64 (`SealedContent`); sealing and
//! unsealing are the caller's business (`etee_formats::cms`). Inner contents are stand-alone
//! XML documents in the same protocol namespace.
//!
//! Namespace qualification follows the XSDs as the spec reads them: protocol elements
//! (including the inner contents and the `CredentialType` children) are qualified; the etee
//! commons `Status` and `Error` elements and their `Code`/`Message` children are unqualified
//! (§5.1, open question §10.4). An `Error/Message` is written with an unqualified `Lang`
//! attribute like `core:LocalisedString`; `xml:lang` is also read.

use crate::error::{schema, Error};
use crate::secret::SecretBytes;
use crate::soap::{self, LangString};
use crate::xml::{self, base64_leaf, empty_element, nonempty_leaf, Element, XML_NS};
use etee_formats::identity::{normalize_value, Identity};
use zeroize::Zeroizing;

/// The KGSS protocol namespace (outer and inner messages).
pub const PROTOCOL_NS: &str = "urn:be:fgov:ehealth:etee:kgss:1_0:protocol";

const K: Option<&str> = Some(PROTOCOL_NS);
const PREFIXES: &[(&str, &str)] = &[(PROTOCOL_NS, "kgss")];

/// The KGSS ETK lookup (§3.4): `CBE` / `0809394427` / `KGSS`.
pub const KGSS_ETK_TYPE: &str = "CBE";
pub const KGSS_ETK_VALUE: &str = "0809394427";
pub const KGSS_ETK_APPLICATION_ID: &str = "KGSS";

/// Most reader conditions (`AllowedReader` and `ExludedReader` together) of one key: the
/// platform refuses more at `GetNewKey` (each `GetKey` evaluates them all, and they are
/// stored with the key), and the appliance asks for no more.
pub const MAX_READER_CONDITIONS: usize = 64;
/// Most values one reader condition lists.
pub const MAX_CONDITION_VALUES: usize = 64;

/// Which of the two operations an outer message belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    GetNewKey,
    GetKey,
}

impl Operation {
    fn request(self) -> &'static str {
        match self {
            Operation::GetNewKey => "GetNewKeyRequest",
            Operation::GetKey => "GetKeyRequest",
        }
    }
    fn response(self) -> &'static str {
        match self {
            Operation::GetNewKey => "GetNewKeyResponse",
            Operation::GetKey => "GetKeyResponse",
        }
    }
    fn sealed_request(self) -> &'static str {
        match self {
            Operation::GetNewKey => "SealedNewKeyRequest",
            Operation::GetKey => "SealedKeyRequest",
        }
    }
    fn sealed_response(self) -> &'static str {
        match self {
            Operation::GetNewKey => "SealedNewKeyResponse",
            Operation::GetKey => "SealedKeyResponse",
        }
    }
}

/// `GetNewKeyRequest` / `GetKeyRequest`: the sealed inner request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KgssRequest {
    pub operation: Operation,
    /// The CMS sealed inner content.
    pub sealed_content: Vec<u8>,
}

impl KgssRequest {
    pub fn to_element(&self) -> Element {
        let op = self.operation;
        Element::new(K, op.request()).with_child(Element::new(K, op.sealed_request()).with_child(
            Element::leaf(K, "SealedContent", xml::encode_base64(&self.sealed_content)),
        ))
    }

    /// Reads either request element.
    pub fn from_element(e: &Element) -> Result<Self, Error> {
        let operation = match (e.ns.as_deref(), e.name.as_str()) {
            (K, "GetNewKeyRequest") => Operation::GetNewKey,
            (K, "GetKeyRequest") => Operation::GetKey,
            _ => return Err(schema(format!("{} is not a KGSS request", e.qname()))),
        };
        let mut c = e.children_in_order()?;
        let sealed = c.required(K, operation.sealed_request())?;
        c.finish()?;
        Ok(KgssRequest {
            operation,
            sealed_content: sealed_content(sealed)?,
        })
    }

    pub fn to_xml(&self) -> Vec<u8> {
        soap::envelope(self.to_element())
    }

    pub fn parse(input: &[u8]) -> Result<Self, Error> {
        Self::from_element(&soap::parse_envelope(input)?)
    }
}

fn sealed_content(e: &Element) -> Result<Vec<u8>, Error> {
    let mut c = e.children_in_order()?;
    let b = base64_leaf(c.required(K, "SealedContent")?)?;
    c.finish()?;
    if b.is_empty() {
        return Err(schema("empty SealedContent"));
    }
    Ok(b.to_vec())
}

/// The etee commons `Status`: `Code` and an optional plain `Message`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EteeStatus {
    pub code: String,
    pub message: Option<String>,
}

impl EteeStatus {
    /// Whether KGSS reported success (`100` or `200`, §5.1).
    pub fn is_ok(&self) -> bool {
        matches!(self.code.trim(), "100" | "200")
    }
}

/// One etee commons `Error`: `Code`, localised `Message`s (1..n).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EteeError {
    pub code: String,
    pub messages: Vec<LangString>,
}

/// `GetNewKeyResponse` / `GetKeyResponse`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KgssResponse {
    pub operation: Operation,
    /// Attribute `Id`.
    pub id: Option<String>,
    pub status: EteeStatus,
    pub errors: Vec<EteeError>,
    /// The sealed inner response; absent on failure.
    pub sealed_content: Option<Vec<u8>>,
}

impl KgssResponse {
    /// Success: Status 200 and the sealed content.
    pub fn ok(operation: Operation, sealed_content: Vec<u8>) -> Self {
        KgssResponse {
            operation,
            id: None,
            status: EteeStatus {
                code: "200".into(),
                message: Some("OK".into()),
            },
            errors: Vec::new(),
            sealed_content: Some(sealed_content),
        }
    }

    /// Success as §5.1 defines it: an OK status and no `Error`.
    pub fn is_success(&self) -> bool {
        self.status.is_ok() && self.errors.is_empty()
    }

    pub fn to_element(&self) -> Element {
        let op = self.operation;
        let mut e = Element::new(K, op.response());
        if let Some(id) = &self.id {
            e = e.with_attr(None, "Id", id);
        }
        let mut status =
            Element::new(None, "Status").with_child(Element::leaf(None, "Code", &self.status.code));
        if let Some(m) = &self.status.message {
            status = status.with_child(Element::leaf(None, "Message", m));
        }
        e = e.with_child(status);
        for err in &self.errors {
            e = e.with_child(
                Element::new(None, "Error")
                    .with_child(Element::leaf(None, "Code", &err.code))
                    .with_children(err.messages.iter().map(|m| {
                        let me = Element::leaf(None, "Message", &m.text);
                        match &m.lang {
                            Some(l) => me.with_attr(None, "Lang", l),
                            None => me,
                        }
                    })),
            );
        }
        if let Some(s) = &self.sealed_content {
            e = e.with_child(
                Element::new(K, op.sealed_response()).with_child(Element::leaf(
                    K,
                    "SealedContent",
                    xml::encode_base64(s),
                )),
            );
        }
        e
    }

    /// Reads either response element.
    pub fn from_element(e: &Element) -> Result<Self, Error> {
        let operation = match (e.ns.as_deref(), e.name.as_str()) {
            (K, "GetNewKeyResponse") => Operation::GetNewKey,
            (K, "GetKeyResponse") => Operation::GetKey,
            _ => return Err(schema(format!("{} is not a KGSS response", e.qname()))),
        };
        let mut c = e.children_in_order()?;
        let st = c.required(None, "Status")?;
        let mut sc = st.children_in_order()?;
        let code = nonempty_leaf(sc.required(None, "Code")?)?.to_owned();
        let message = sc
            .optional(None, "Message")
            .map(|m| m.leaf_text().map(str::to_owned))
            .transpose()?;
        sc.finish()?;
        let errors = c
            .many(None, "Error")
            .into_iter()
            .map(|x| {
                let mut xc = x.children_in_order()?;
                let code = nonempty_leaf(xc.required(None, "Code")?)?.to_owned();
                let messages = xc
                    .many1(None, "Message")?
                    .into_iter()
                    .map(|m| {
                        Ok(LangString {
                            lang: m
                                .attr(None, "Lang")
                                .or_else(|| m.attr(Some(XML_NS), "lang"))
                                .map(str::to_owned),
                            text: m.leaf_text()?.to_owned(),
                        })
                    })
                    .collect::<Result<_, Error>>()?;
                xc.finish()?;
                Ok(EteeError { code, messages })
            })
            .collect::<Result<_, Error>>()?;
        let sealed = c
            .optional(K, operation.sealed_response())
            .map(sealed_content)
            .transpose()?;
        c.finish()?;
        Ok(KgssResponse {
            operation,
            id: e.attr(None, "Id").map(str::to_owned),
            status: EteeStatus { code, message },
            errors,
            sealed_content: sealed,
        })
    }

    pub fn to_xml(&self) -> Vec<u8> {
        soap::envelope(self.to_element())
    }

    pub fn parse(input: &[u8]) -> Result<Self, Error> {
        Self::from_element(&soap::parse_envelope(input)?)
    }
}

/// `CredentialType`: a SAML attribute namespace and name, and the accepted values (none:
/// any value).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Credential {
    pub namespace: String,
    pub name: String,
    pub values: Vec<String>,
}

impl Credential {
    pub fn new(namespace: &str, name: &str, values: &[&str]) -> Self {
        Credential {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            values: values.iter().map(|v| (*v).to_owned()).collect(),
        }
    }

    fn to_element(&self, element: &str) -> Element {
        Element::new(K, element)
            .with_child(Element::leaf(K, "Namespace", &self.namespace))
            .with_child(Element::leaf(K, "Name", &self.name))
            .with_children(self.values.iter().map(|v| Element::leaf(K, "Value", v)))
    }

    fn from_element(e: &Element) -> Result<Self, Error> {
        let mut c = e.children_in_order()?;
        let namespace = nonempty_leaf(c.required(K, "Namespace")?)?.to_owned();
        let name = nonempty_leaf(c.required(K, "Name")?)?.to_owned();
        let values = c
            .many(K, "Value")
            .into_iter()
            .map(|v| v.leaf_text().map(|t| t.trim().to_owned()))
            .collect::<Result<_, _>>()?;
        c.finish()?;
        Ok(Credential {
            namespace,
            name,
            values,
        })
    }

    /// Whether a caller holding `attributes` matches this credential.
    pub fn matches(&self, attributes: &[Attribute]) -> bool {
        attributes.iter().any(|a| {
            a.namespace == self.namespace
                && a.name == self.name
                && (self.values.is_empty() || self.values.contains(&a.value))
        })
    }
}

fn to_content_document(e: Element) -> Zeroizing<Vec<u8>> {
    Zeroizing::new(e.to_document(PREFIXES))
}

/// The inner content of `GetNewKey`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GetNewKeyRequestContent {
    /// 1..n.
    pub allowed_readers: Vec<Credential>,
    /// Written `ExludedReader` (sic, normative).
    pub excluded_readers: Vec<Credential>,
    /// The requester's own ETK, to which KGSS seals the response.
    pub etk: Vec<u8>,
    /// The empty `DeletionStrategy` element is present.
    pub deletion_strategy: bool,
}

impl GetNewKeyRequestContent {
    pub fn to_element(&self) -> Element {
        let mut e = Element::new(K, "GetNewKeyRequestContent")
            .with_children(
                self.allowed_readers
                    .iter()
                    .map(|c| c.to_element("AllowedReader")),
            )
            .with_children(
                self.excluded_readers
                    .iter()
                    .map(|c| c.to_element("ExludedReader")),
            )
            .with_child(Element::leaf(K, "ETK", xml::encode_base64(&self.etk)));
        if self.deletion_strategy {
            e = e.with_child(Element::new(K, "DeletionStrategy"));
        }
        e
    }

    pub fn from_element(e: &Element) -> Result<Self, Error> {
        let mut c = e
            .expect(K, "GetNewKeyRequestContent")?
            .children_in_order()?;
        let allowed_readers = c
            .many1(K, "AllowedReader")?
            .into_iter()
            .map(Credential::from_element)
            .collect::<Result<_, _>>()?;
        let excluded_readers = c
            .many(K, "ExludedReader")
            .into_iter()
            .map(Credential::from_element)
            .collect::<Result<_, _>>()?;
        let etk = nonempty_base64(c.required(K, "ETK")?)?;
        let deletion_strategy = c
            .optional(K, "DeletionStrategy")
            .map(empty_element)
            .transpose()?
            .is_some();
        c.finish()?;
        Ok(GetNewKeyRequestContent {
            allowed_readers,
            excluded_readers,
            etk,
            deletion_strategy,
        })
    }

    pub fn to_xml(&self) -> Vec<u8> {
        self.to_element().to_document(PREFIXES)
    }

    pub fn parse(input: &[u8]) -> Result<Self, Error> {
        Self::from_element(&xml::parse(input)?)
    }
}

fn nonempty_base64(e: &Element) -> Result<Vec<u8>, Error> {
    let b = base64_leaf(e)?;
    if b.is_empty() {
        return Err(schema(format!("empty {}", e.name)));
    }
    Ok(b.to_vec())
}

fn secret_leaf(e: &Element) -> Result<SecretBytes, Error> {
    let b = base64_leaf(e)?;
    if b.is_empty() {
        return Err(schema(format!("empty {}", e.name)));
    }
    Ok(SecretBytes::from(b))
}

/// The inner content of the `GetNewKey` response: the new key and its identifier.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GetNewKeyResponseContent {
    pub new_key_identifier: Vec<u8>,
    /// The raw AES key (128 bits in practice).
    pub new_key: SecretBytes,
}

impl GetNewKeyResponseContent {
    pub fn to_element(&self) -> Element {
        Element::new(K, "GetNewKeyResponseContent")
            .with_child(Element::leaf(
                K,
                "NewKeyIdentifier",
                xml::encode_base64(&self.new_key_identifier),
            ))
            .with_child(Element::leaf(
                K,
                "NewKey",
                xml::encode_base64(self.new_key.expose()),
            ))
    }

    pub fn from_element(e: &Element) -> Result<Self, Error> {
        let mut c = e
            .expect(K, "GetNewKeyResponseContent")?
            .children_in_order()?;
        let new_key_identifier = nonempty_base64(c.required(K, "NewKeyIdentifier")?)?;
        let new_key = secret_leaf(c.required(K, "NewKey")?)?;
        c.finish()?;
        Ok(GetNewKeyResponseContent {
            new_key_identifier,
            new_key,
        })
    }

    /// The document; it holds the key, so it is wiped on drop.
    pub fn to_xml(&self) -> Zeroizing<Vec<u8>> {
        to_content_document(self.to_element())
    }

    pub fn parse(input: &[u8]) -> Result<Self, Error> {
        Self::from_element(&xml::parse(input)?)
    }
}

/// How KGSS must protect its `GetKey` answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplyTo {
    /// Seal to this ETK (the requester's).
    Etk(Vec<u8>),
    /// Seal unaddressed with this key-encryption key (and this key id, if given).
    Kek {
        key: SecretBytes,
        key_identifier: Option<Vec<u8>>,
    },
}

/// The inner content of `GetKey`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GetKeyRequestContent {
    pub key_identifier: Vec<u8>,
    pub reply_to: ReplyTo,
}

impl GetKeyRequestContent {
    /// Written in the JAXB order: KeyIdentifier, KeyEncryptionKey,
    /// KeyEncryptionKeyIdentifier, ETK.
    pub fn to_element(&self) -> Element {
        let e = Element::new(K, "GetKeyRequestContent").with_child(Element::leaf(
            K,
            "KeyIdentifier",
            xml::encode_base64(&self.key_identifier),
        ));
        match &self.reply_to {
            ReplyTo::Etk(etk) => e.with_child(Element::leaf(K, "ETK", xml::encode_base64(etk))),
            ReplyTo::Kek {
                key,
                key_identifier,
            } => {
                let e = e.with_child(Element::leaf(
                    K,
                    "KeyEncryptionKey",
                    xml::encode_base64(key.expose()),
                ));
                match key_identifier {
                    Some(id) => e.with_child(Element::leaf(
                        K,
                        "KeyEncryptionKeyIdentifier",
                        xml::encode_base64(id),
                    )),
                    None => e,
                }
            }
        }
    }

    /// Reads `KeyIdentifier` first, then the reply choice in any order (the XSD order and
    /// the JAXB propOrder differ): either `ETK`, or `KeyEncryptionKey` with an optional
    /// `KeyEncryptionKeyIdentifier`; each at most once, never both forms.
    pub fn from_element(e: &Element) -> Result<Self, Error> {
        let mut c = e.expect(K, "GetKeyRequestContent")?.children_in_order()?;
        let key_identifier = nonempty_base64(c.required(K, "KeyIdentifier")?)?;
        let (mut etk, mut kek, mut kek_id) = (None, None, None);
        for x in c.rest() {
            let slot = match (x.ns.as_deref(), x.name.as_str()) {
                (K, "ETK") => &mut etk,
                (K, "KeyEncryptionKey") => &mut kek,
                (K, "KeyEncryptionKeyIdentifier") => &mut kek_id,
                _ => {
                    return Err(schema(format!(
                        "unexpected {} in GetKeyRequestContent",
                        x.qname()
                    )))
                }
            };
            if slot.replace(x).is_some() {
                return Err(schema(format!("{} given twice", x.name)));
            }
        }
        let reply_to = match (etk, kek, kek_id) {
            (Some(etk), None, None) => ReplyTo::Etk(nonempty_base64(etk)?),
            (None, Some(kek), id) => ReplyTo::Kek {
                key: secret_leaf(kek)?,
                key_identifier: id.map(nonempty_base64).transpose()?,
            },
            (None, None, None) => {
                return Err(schema("GetKeyRequestContent needs ETK or KeyEncryptionKey"))
            }
            (None, None, Some(_)) => {
                return Err(schema(
                    "KeyEncryptionKeyIdentifier without KeyEncryptionKey",
                ))
            }
            (Some(_), _, _) => {
                return Err(schema(
                    "GetKeyRequestContent has both ETK and KeyEncryptionKey",
                ))
            }
        };
        Ok(GetKeyRequestContent {
            key_identifier,
            reply_to,
        })
    }

    /// The document; it may hold a key-encryption key, so it is wiped on drop.
    pub fn to_xml(&self) -> Zeroizing<Vec<u8>> {
        to_content_document(self.to_element())
    }

    pub fn parse(input: &[u8]) -> Result<Self, Error> {
        Self::from_element(&xml::parse(input)?)
    }
}

/// The inner content of the `GetKey` response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GetKeyResponseContent {
    pub key: SecretBytes,
}

impl GetKeyResponseContent {
    pub fn to_element(&self) -> Element {
        Element::new(K, "GetKeyResponseContent").with_child(Element::leaf(
            K,
            "Key",
            xml::encode_base64(self.key.expose()),
        ))
    }

    pub fn from_element(e: &Element) -> Result<Self, Error> {
        let mut c = e.expect(K, "GetKeyResponseContent")?.children_in_order()?;
        let key = secret_leaf(c.required(K, "Key")?)?;
        c.finish()?;
        Ok(GetKeyResponseContent { key })
    }

    /// The document; it holds the key, so it is wiped on drop.
    pub fn to_xml(&self) -> Zeroizing<Vec<u8>> {
        to_content_document(self.to_element())
    }

    pub fn parse(input: &[u8]) -> Result<Self, Error> {
        Self::from_element(&xml::parse(input)?)
    }
}

/// One attribute a caller holds (from its SAML session or the platform's registry).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Attribute {
    pub namespace: String,
    pub name: String,
    pub value: String,
}

impl Attribute {
    pub fn new(namespace: &str, name: &str, value: &str) -> Self {
        Attribute {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            value: value.to_owned(),
        }
    }
}

/// The outcome of [`evaluate`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Matched this `AllowedReader` (index) and no `ExludedReader`.
    Allowed { allowed_index: usize },
    /// Matched no `AllowedReader`.
    NotAllowed,
    /// Matched this `ExludedReader` (index): exclusion wins over any allowance.
    Excluded { excluded_index: usize },
}

impl Decision {
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allowed { .. })
    }
}

/// The KGSS access rule: a caller may read a key when its attributes match at least one
/// allowed credential and no excluded one. A credential matches when the caller has an
/// attribute with the same namespace and name and the credential lists no values or lists
/// that attribute's value. Comparison is exact (no case folding: these are URNs and
/// identifiers).
pub fn evaluate(
    allowed: &[Credential],
    excluded: &[Credential],
    caller_attributes: &[Attribute],
) -> Decision {
    if let Some(i) = excluded.iter().position(|c| c.matches(caller_attributes)) {
        return Decision::Excluded { excluded_index: i };
    }
    match allowed.iter().position(|c| c.matches(caller_attributes)) {
        Some(i) => Decision::Allowed { allowed_index: i },
        None => Decision::NotAllowed,
    }
}

/// The credential vocabulary of §5.1 (SAML attribute namespaces and names).
pub mod vocabulary {
    use super::Credential;

    /// Namespace of attributes certified by eHealth (professions, recognised pharmacies).
    pub const CERTIFIED_NS: &str = "urn:be:fgov:certified-namespace:ehealth";
    /// Namespace of identification attributes (the person's SSIN).
    pub const IDENTIFICATION_NS: &str = "urn:be:fgov:identification-namespace";

    pub const DOCTOR_NIHII11: &str = "urn:be:fgov:person:ssin:ehealth:1.0:doctor:nihii11";
    pub const DENTIST_NIHII11: &str = "urn:be:fgov:person:ssin:ehealth:1.0:nihii:dentist:nihii11";
    pub const MIDWIFE_NIHII11: &str = "urn:be:fgov:person:ssin:ehealth:1.0:nihii:midwife:nihii11";
    pub const NURSE_NIHII11: &str = "urn:be:fgov:person:ssin:ehealth:1.0:nihii:nurse:nihii11";
    pub const PHYSIOTHERAPIST_NIHII11: &str =
        "urn:be:fgov:person:ssin:ehealth:1.0:nihii:physiotherapist:nihii11";
    pub const RECOGNISED_PHARMACY: &str =
        "urn:be:fgov:ehealth:1.0:pharmacy:nihii-number:recognisedpharmacy:boolean";
    pub const PERSON_SSIN: &str = "urn:be:fgov:person:ssin";

    /// The certified names above whose value is a care provider's NIHII11 number.
    pub const NIHII11_NAMES: [&str; 5] = [
        DOCTOR_NIHII11,
        DENTIST_NIHII11,
        MIDWIFE_NIHII11,
        NURSE_NIHII11,
        PHYSIOTHERAPIST_NIHII11,
    ];

    /// Whether `(namespace, name)` is one of the names above.
    pub fn is_known(namespace: &str, name: &str) -> bool {
        match namespace {
            CERTIFIED_NS => name == RECOGNISED_PHARMACY || NIHII11_NAMES.contains(&name),
            IDENTIFICATION_NS => name == PERSON_SSIN,
            _ => false,
        }
    }

    /// The identifier type (spec §3.4) whose number an attribute's value is — `SSIN` for
    /// the person's SSIN, `NIHII11` for the `*:nihii11` names — so that values are
    /// compared zero-padded (`normalize_value`); `None` for other names.
    pub fn value_type(namespace: &str, name: &str) -> Option<&'static str> {
        match namespace {
            CERTIFIED_NS if NIHII11_NAMES.contains(&name) => Some("NIHII11"),
            IDENTIFICATION_NS if name == PERSON_SSIN => Some("SSIN"),
            _ => None,
        }
    }

    /// Any doctor.
    pub fn any_doctor() -> Credential {
        Credential::new(CERTIFIED_NS, DOCTOR_NIHII11, &[])
    }
    /// Any recognised pharmacy (value `true`).
    pub fn recognised_pharmacy() -> Credential {
        Credential::new(CERTIFIED_NS, RECOGNISED_PHARMACY, &["true"])
    }
    /// That patient.
    pub fn patient(ssin: &str) -> Credential {
        Credential::new(IDENTIFICATION_NS, PERSON_SSIN, &[ssin])
    }
}

/// The attributes a caller holds by its certificate identities alone: an `SSIN` identity
/// gives `urn:be:fgov:identification-namespace` / `urn:be:fgov:person:ssin` = the SSIN,
/// zero-padded to 11 digits.
///
/// Nothing else can honestly be derived from a certificate: being a doctor, nurse or a
/// recognised pharmacy is certified by the platform's attribute registry (the SAML
/// attributes KGSS checks), not by the DN. A `NIHII11` or `NIHII-PHARMACY` identity
/// therefore gives no attribute here.
pub fn implicit_attributes(identities: &[Identity]) -> Vec<Attribute> {
    let mut out: Vec<Attribute> = Vec::new();
    for id in identities {
        if id.id_type.eq_ignore_ascii_case("SSIN") {
            if let Ok(ssin) = normalize_value("SSIN", &id.value) {
                let a = Attribute::new(
                    vocabulary::IDENTIFICATION_NS,
                    vocabulary::PERSON_SSIN,
                    &ssin,
                );
                if !out.contains(&a) {
                    out.push(a);
                }
            }
        }
    }
    out
}
