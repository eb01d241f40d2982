//! ETKDepot (spec §4): the SOAP `GetEtk` messages (§4.1), and the REST side (§4.2) in
//! [`rest`] (ETK list, problem details) and [`jwks`] (JWK Sets of a holder's certificates).

pub mod jwks;
pub mod rest;

pub use rest::{EtkJson, Problem};

use crate::error::{schema, Error};
use crate::soap::{self, LangString};
use crate::xml::{self, base64_leaf, nonempty_leaf, Element};
use etee_formats::identity::{lookup_identifier, Identity};

/// The ETKDepot protocol namespace (elements qualified).
pub const PROTOCOL_NS: &str = "urn:be:fgov:ehealth:etkdepot:1_0:protocol";
/// The eHealth commons core namespace of `Status` (its children are unqualified).
pub const CORE_NS: &str = "urn:be:fgov:ehealth:commons:1_0:core";
/// The success status code.
pub const STATUS_OK: &str = "200";

const P: Option<&str> = Some(PROTOCOL_NS);

/// The most identifiers one `GetEtkRequest` may carry. The schema sets no maximum (1..n),
/// but each is a store lookup; the official connector sends one, and asks again for each
/// `MatchingEtk`. A request with more is a content error (SOA-03007).
pub const MAX_IDENTIFIERS: usize = 10;

/// One search criterion / matching identifier: `Type`, `Value`, optional `ApplicationID`.
///
/// The application id has three states, kept apart everywhere (XML, JSON, normalisation,
/// the store): `None` (no `ApplicationID` element: every ETK of the holder), `Some("")`
/// (an empty `<ApplicationID/>`: exactly the holder's ETK(s) *without* an application id;
/// etee's own convention, see `docs/platform.md`), and `Some(app)` (the ETK(s) of `app`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Identifier {
    /// An identifier type of spec §3.4 (`CBE`, `SSIN`, `NIHII-PHARMACY`, ...).
    pub id_type: String,
    pub value: String,
    pub application_id: Option<String>,
}

impl Identifier {
    pub fn new(id_type: &str, value: &str, application_id: Option<&str>) -> Self {
        Identifier {
            id_type: id_type.to_owned(),
            value: value.to_owned(),
            application_id: application_id.map(str::to_owned),
        }
    }

    /// The identifier as ETKDepot looks it up (§3.4): the canonical type name (`cbe` →
    /// `CBE`, `HUB` → `EHP`) and the value formatted as the official connector does
    /// (zero-padded, or cut to the type's length). The application id is kept as it is, an
    /// empty one included. An unknown type or an impossible value is a content error.
    pub fn normalized(&self) -> Result<Self, Error> {
        let (id_type, value) = lookup_identifier(&self.id_type, &self.value)
            .map_err(|e| Error::Content(e.to_string()))?;
        Ok(Identifier {
            id_type: id_type.to_owned(),
            value,
            application_id: self.application_id.clone(),
        })
    }

    /// Whether this identifier asks for the ETK(s) without an application id (an empty
    /// `ApplicationID`).
    pub fn wants_no_application(&self) -> bool {
        self.application_id.as_deref() == Some("")
    }

    fn to_element(&self) -> Element {
        let mut e = Element::new(P, "Identifier")
            .with_child(Element::leaf(P, "Type", &self.id_type))
            .with_child(Element::leaf(P, "Value", &self.value));
        if let Some(app) = &self.application_id {
            // Written even when empty: `<ApplicationID/>` is not an absent one.
            e = e.with_child(Element::leaf(P, "ApplicationID", app));
        }
        e
    }

    fn from_element(e: &Element) -> Result<Self, Error> {
        let mut c = e.children_in_order()?;
        let id_type = nonempty_leaf(c.required(P, "Type")?)?.to_owned();
        let value = nonempty_leaf(c.required(P, "Value")?)?.to_owned();
        // An empty (or blank) ApplicationID is kept as `Some("")`.
        let application_id = c
            .optional(P, "ApplicationID")
            .map(|a| a.leaf_text().map(|t| trim_xml_space(t).to_owned()))
            .transpose()?;
        c.finish()?;
        Ok(Identifier {
            id_type,
            value,
            application_id,
        })
    }
}

/// `t` without leading and trailing XML white space.
fn trim_xml_space(t: &str) -> &str {
    t.trim_matches(|c| matches!(c, ' ' | '\t' | '\r' | '\n'))
}

impl From<Identity> for Identifier {
    fn from(i: Identity) -> Self {
        Identifier {
            id_type: i.id_type,
            value: i.value,
            application_id: i.application_id,
        }
    }
}

fn identifiers_element(name: &str, ids: &[Identifier]) -> Element {
    Element::new(P, name).with_children(ids.iter().map(Identifier::to_element))
}

fn identifiers_from(e: &Element) -> Result<Vec<Identifier>, Error> {
    let mut c = e.children_in_order()?;
    let ids = c
        .many1(P, "Identifier")?
        .into_iter()
        .map(Identifier::from_element)
        .collect::<Result<_, _>>()?;
    c.finish()?;
    Ok(ids)
}

/// Why a search with `given` identifiers, over [`MAX_IDENTIFIERS`], is refused.
pub fn too_many_identifiers(given: usize) -> String {
    format!(
        "{given} identifiers in SearchCriteria: at most {MAX_IDENTIFIERS} in one GetEtk \
         request; ask for the others in further requests"
    )
}

/// `GetEtkRequest`: one to [`MAX_IDENTIFIERS`] identifiers of the same holder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GetEtkRequest {
    /// 1..[`MAX_IDENTIFIERS`] when read.
    pub identifiers: Vec<Identifier>,
}

impl GetEtkRequest {
    pub fn to_element(&self) -> Element {
        Element::new(P, "GetEtkRequest")
            .with_child(identifiers_element("SearchCriteria", &self.identifiers))
    }

    pub fn from_element(e: &Element) -> Result<Self, Error> {
        let mut c = e.expect(P, "GetEtkRequest")?.children_in_order()?;
        let criteria = c.required(P, "SearchCriteria")?;
        // Counted before any is read.
        let given = criteria.children.len();
        if given > MAX_IDENTIFIERS {
            return Err(Error::Content(too_many_identifiers(given)));
        }
        let identifiers = identifiers_from(criteria)?;
        c.finish()?;
        Ok(GetEtkRequest { identifiers })
    }

    /// The SOAP envelope.
    pub fn to_xml(&self) -> Vec<u8> {
        soap::envelope(self.to_element())
    }

    /// Parses a SOAP envelope.
    pub fn parse(input: &[u8]) -> Result<Self, Error> {
        Self::from_element(&soap::parse_envelope(input)?)
    }
}

/// `core:Status`: `Code` and localised `Message`s (attribute `Lang`: FR, NL, EN, DE, NA).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub code: String,
    /// 1..n.
    pub messages: Vec<LangString>,
}

impl Status {
    /// `200` with an English "OK".
    pub fn ok() -> Self {
        Status {
            code: STATUS_OK.into(),
            messages: vec![LangString {
                lang: Some("EN".into()),
                text: "OK".into(),
            }],
        }
    }

    pub fn is_ok(&self) -> bool {
        self.code.trim() == STATUS_OK
    }

    fn to_element(&self) -> Element {
        Element::new(Some(CORE_NS), "Status")
            .with_child(Element::leaf(None, "Code", &self.code))
            .with_children(self.messages.iter().map(|m| {
                let e = Element::leaf(None, "Message", &m.text);
                match &m.lang {
                    Some(l) => e.with_attr(None, "Lang", l),
                    None => e,
                }
            }))
    }

    fn from_element(e: &Element) -> Result<Self, Error> {
        let mut c = e.children_in_order()?;
        let code = nonempty_leaf(c.required(None, "Code")?)?.to_owned();
        let messages = c
            .many1(None, "Message")?
            .into_iter()
            .map(|m| {
                Ok(LangString {
                    lang: m.attr(None, "Lang").map(str::to_owned),
                    text: m.leaf_text()?.to_owned(),
                })
            })
            .collect::<Result<_, Error>>()?;
        c.finish()?;
        Ok(Status { code, messages })
    }
}

/// One `MatchingEtk`: the full identifiers (with application id) of one of several ETKs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MatchingEtk {
    /// 1..n.
    pub identifiers: Vec<Identifier>,
}

/// One `Error` of a response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtkDepotError {
    pub code: String,
    pub message: String,
}

/// The choice that follows `GivenSearchCriteria`.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum EtkResult {
    /// Exactly one match: the ETK (CMS SignedData bytes).
    Etk(Vec<u8>),
    /// Several ETKs: the client re-queries with one of these.
    MatchingEtk(Vec<MatchingEtk>),
    Errors(Vec<EtkDepotError>),
    /// Nothing (allowed when there is no `GivenSearchCriteria`).
    #[default]
    None,
}

/// `GetEtkResponse`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GetEtkResponse {
    /// Attribute `Id`.
    pub id: Option<String>,
    pub status: Status,
    pub given_search_criteria: Option<Vec<Identifier>>,
    pub result: EtkResult,
}

impl GetEtkResponse {
    /// A success with one ETK.
    pub fn found(criteria: Vec<Identifier>, etk: Vec<u8>) -> Self {
        GetEtkResponse {
            id: None,
            status: Status::ok(),
            given_search_criteria: Some(criteria),
            result: EtkResult::Etk(etk),
        }
    }

    pub fn to_element(&self) -> Element {
        let mut e = Element::new(P, "GetEtkResponse");
        if let Some(id) = &self.id {
            e = e.with_attr(None, "Id", id);
        }
        e = e.with_child(self.status.to_element());
        if let Some(g) = &self.given_search_criteria {
            e = e.with_child(identifiers_element("GivenSearchCriteria", g));
        }
        match &self.result {
            EtkResult::Etk(b) => e.with_child(Element::leaf(P, "ETK", xml::encode_base64(b))),
            EtkResult::MatchingEtk(m) => e.with_children(
                m.iter()
                    .map(|m| identifiers_element("MatchingEtk", &m.identifiers)),
            ),
            EtkResult::Errors(errs) => e.with_children(errs.iter().map(|x| {
                Element::new(P, "Error")
                    .with_child(Element::leaf(P, "Code", &x.code))
                    .with_child(Element::leaf(P, "Message", &x.message))
            })),
            EtkResult::None => e,
        }
    }

    pub fn from_element(e: &Element) -> Result<Self, Error> {
        let mut c = e.expect(P, "GetEtkResponse")?.children_in_order()?;
        let status = Status::from_element(c.required(Some(CORE_NS), "Status")?)?;
        let given_search_criteria = c
            .optional(P, "GivenSearchCriteria")
            .map(identifiers_from)
            .transpose()?;
        let result = if let Some(etk) = c.optional(P, "ETK") {
            let der = base64_leaf(etk)?;
            if der.is_empty() {
                return Err(schema("empty ETK"));
            }
            EtkResult::Etk(der.to_vec())
        } else if c.next_is(P, "MatchingEtk") {
            EtkResult::MatchingEtk(
                c.many(P, "MatchingEtk")
                    .into_iter()
                    .map(|m| {
                        Ok(MatchingEtk {
                            identifiers: identifiers_from(m)?,
                        })
                    })
                    .collect::<Result<_, Error>>()?,
            )
        } else if c.next_is(P, "Error") {
            EtkResult::Errors(
                c.many(P, "Error")
                    .into_iter()
                    .map(|x| {
                        let mut xc = x.children_in_order()?;
                        let code = xc.required(P, "Code")?.leaf_text()?.trim().to_owned();
                        let message = xc.required(P, "Message")?.leaf_text()?.to_owned();
                        xc.finish()?;
                        Ok(EtkDepotError { code, message })
                    })
                    .collect::<Result<_, Error>>()?,
            )
        } else {
            EtkResult::None
        };
        c.finish()?;
        Ok(GetEtkResponse {
            id: e.attr(None, "Id").map(str::to_owned),
            status,
            given_search_criteria,
            result,
        })
    }

    /// The SOAP envelope.
    pub fn to_xml(&self) -> Vec<u8> {
        soap::envelope(self.to_element())
    }

    /// Parses a SOAP envelope.
    pub fn parse(input: &[u8]) -> Result<Self, Error> {
        Self::from_element(&soap::parse_envelope(input)?)
    }
}
