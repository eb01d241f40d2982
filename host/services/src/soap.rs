//! SOAP 1.1 envelopes and eHealth SOA faults (spec §7).
//!
//! All platform SOAP services are SOAP 1.1, document/literal: the body holds exactly one
//! element. The one header block the services understand is WS-Security's `Security`
//! ([`WSSE_NS`]), which the official .NET and Java clients of the `_X509` and `_SamlHok`
//! bindings send marked `mustUnderstand`: it is accepted, its content is not evaluated and
//! grants nothing (ETKDepot is a public lookup; KGSS takes its caller from the sealed
//! request). [`parse_request`] finds any other block its sender marked `mustUnderstand`,
//! which a service refuses with [`Fault::must_understand`] (SOAP 1.1 §4.2.3); blocks not so
//! marked are ignored.

use crate::error::{schema, Error};
use crate::xml::{self, nonempty_leaf, Element, Limits, XML_NS};

/// SOAP 1.1 envelope namespace.
pub const SOAP11_NS: &str = "http://schemas.xmlsoap.org/soap/envelope/";
/// SOAP 1.2 envelope namespace: recognised only to refuse it with a `VersionMismatch`.
pub const SOAP12_NS: &str = "http://www.w3.org/2003/05/soap-envelope";
/// WS-Security 1.0 (OASIS 2004) namespace, of the `Security` header block the services
/// understand (accept without evaluating it).
pub const WSSE_NS: &str =
    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd";
/// Namespace of `SystemError` / `BusinessError` fault details.
pub const SOA_ERRORS_NS: &str = "urn:be:fgov:ehealth:errors:soa:v1";
/// Content type of a SOAP 1.1 message.
pub const CONTENT_TYPE: &str = "text/xml; charset=utf-8";
/// HTTP status of a response carrying a fault (SOAP 1.1 HTTP binding).
pub const FAULT_HTTP_STATUS: u16 = 500;

/// Prefixes used when writing; any prefix is accepted when reading.
pub(crate) const PREFIXES: &[(&str, &str)] = &[
    (SOAP11_NS, "soap"),
    (SOA_ERRORS_NS, "soa"),
    (crate::etkdepot::PROTOCOL_NS, "etk"),
    (crate::etkdepot::CORE_NS, "core"),
    (crate::kgss::PROTOCOL_NS, "kgss"),
];

/// Parses a SOAP 1.1 envelope and returns its single body element.
pub fn parse_envelope(input: &[u8]) -> Result<Element, Error> {
    parse_envelope_with(input, &Limits::default())
}

/// [`parse_envelope`] with caller-set limits.
pub fn parse_envelope_with(input: &[u8], limits: &Limits) -> Result<Element, Error> {
    parse_parts(input, limits).map(|(_, payload)| payload)
}

/// The SOAP 1.1 actor of the next receiver: a header block for it is for the service.
pub const ACTOR_NEXT: &str = "http://schemas.xmlsoap.org/soap/actor/next";

/// A request envelope as a service that understands only the WS-Security header reads it.
#[derive(Clone, Debug)]
pub struct Request {
    /// The single body element.
    pub payload: Element,
    /// The first header block addressed to the service (no `actor`, or [`ACTOR_NEXT`])
    /// that its sender marked `mustUnderstand="1"`, as `{ns}name`, other than a
    /// WS-Security `Security` block: the service must refuse the request
    /// ([`Fault::must_understand`]) instead of serving it without it.
    pub not_understood: Option<String>,
    /// Whether a WS-Security `Security` block ([`WSSE_NS`]) is addressed to the service:
    /// understood, in that it is accepted; its content is not evaluated and grants nothing.
    pub security_header: bool,
}

/// Whether a header block is WS-Security's `Security` ([`WSSE_NS`]).
fn is_security(block: &Element) -> bool {
    block.is(Some(WSSE_NS), "Security")
}

/// Parses a SOAP 1.1 request envelope (as [`parse_envelope`]) and looks at its header
/// blocks: a `mustUnderstand` that is not a boolean (`1`, `0`) is a schema error.
pub fn parse_request(input: &[u8]) -> Result<Request, Error> {
    let (header, payload) = parse_parts(input, &Limits::default())?;
    let mut not_understood = None;
    let mut security_header = false;
    for block in header.iter().flat_map(|h| &h.children) {
        let must = match block.attr(Some(SOAP11_NS), "mustUnderstand") {
            Some(v) => parse_bool(v).map_err(|_| {
                schema(format!(
                    "mustUnderstand of header {} must be 1 or 0",
                    block.qname()
                ))
            })?,
            None => false,
        };
        let ours = block
            .attr(Some(SOAP11_NS), "actor")
            .is_none_or(|a| a.trim() == ACTOR_NEXT);
        if !ours {
            continue;
        }
        if is_security(block) {
            security_header = true;
        } else if must && not_understood.is_none() {
            not_understood = Some(block.qname());
        }
    }
    Ok(Request {
        payload,
        not_understood,
        security_header,
    })
}

/// The envelope's `Header` (if any) and its single body element.
fn parse_parts(input: &[u8], limits: &Limits) -> Result<(Option<Element>, Element), Error> {
    let mut env = xml::parse_with(input, limits)?;
    if env.name == "Envelope" && env.ns.as_deref() == Some(SOAP12_NS) {
        return Err(Error::SoapVersion(
            "SOAP 1.2 envelope; this service speaks SOAP 1.1".into(),
        ));
    }
    if !env.is(Some(SOAP11_NS), "Envelope") {
        return Err(Error::NotSoap(format!(
            "root is {}, not a SOAP 1.1 Envelope",
            env.qname()
        )));
    }
    if !xml::is_xml_whitespace(&env.text) {
        return Err(schema("text directly inside the SOAP Envelope"));
    }
    let mut body_index = None;
    for (i, c) in env.children.iter().enumerate() {
        match (c.ns.as_deref(), c.name.as_str(), body_index) {
            (Some(SOAP11_NS), "Header", None) if i == 0 => {}
            (Some(SOAP11_NS), "Body", None) => body_index = Some(i),
            _ => {
                return Err(schema(format!(
                    "unexpected {} in the SOAP Envelope",
                    c.qname()
                )))
            }
        }
    }
    let body_index = body_index.ok_or(Error::MissingBody)?;
    let mut body = env.children.swap_remove(body_index);
    // What is left is the header, if there was one.
    let header = env
        .children
        .pop()
        .filter(|h| h.is(Some(SOAP11_NS), "Header"));
    if !xml::is_xml_whitespace(&body.text) {
        return Err(schema("text directly inside the SOAP Body"));
    }
    if body.children.len() != 1 {
        return Err(Error::BodyChildren(body.children.len()));
    }
    let mut payload = body.children.swap_remove(0);
    // Keep in-scope namespace declarations reachable for QName text (faultcode).
    let mut decls = env.ns_decls.clone();
    decls.extend(body.ns_decls.iter().cloned());
    decls.append(&mut payload.ns_decls);
    payload.ns_decls = decls;
    Ok((header, payload))
}

/// Wraps one body element in a SOAP 1.1 envelope (no header) and serialises it.
pub fn envelope(body: Element) -> Vec<u8> {
    let env = Element::new(Some(SOAP11_NS), "Envelope")
        .with_child(Element::new(Some(SOAP11_NS), "Body").with_child(body));
    env.to_document(PREFIXES)
}

/// The SOA platform error codes (spec §7).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SoaCode {
    ServiceError,
    NotAuthenticated,
    NotAuthorized,
    ServiceUnavailable,
    /// SOA-02002: "Message must be SOAP" (listed twice in the platform's table).
    NotSoapMessage,
    MalformedMessage,
    MustBeSoap,
    MissingBody,
    WsiCompliance,
    WsdlCompliance,
    XsdCompliance,
    ContentValidation,
}

impl SoaCode {
    /// Every code, in the order of §7.
    pub const ALL: &'static [SoaCode] = &[
        SoaCode::ServiceError,
        SoaCode::NotAuthenticated,
        SoaCode::NotAuthorized,
        SoaCode::ServiceUnavailable,
        SoaCode::NotSoapMessage,
        SoaCode::MalformedMessage,
        SoaCode::MustBeSoap,
        SoaCode::MissingBody,
        SoaCode::WsiCompliance,
        SoaCode::WsdlCompliance,
        SoaCode::XsdCompliance,
        SoaCode::ContentValidation,
    ];

    /// The code as written in faults, e.g. `SOA-03001`.
    pub fn code(self) -> &'static str {
        match self {
            SoaCode::ServiceError => "SOA-00001",
            SoaCode::NotAuthenticated => "SOA-01001",
            SoaCode::NotAuthorized => "SOA-01002",
            SoaCode::ServiceUnavailable => "SOA-02001",
            SoaCode::NotSoapMessage => "SOA-02002",
            SoaCode::MalformedMessage => "SOA-03001",
            SoaCode::MustBeSoap => "SOA-03002",
            SoaCode::MissingBody => "SOA-03003",
            SoaCode::WsiCompliance => "SOA-03004",
            SoaCode::WsdlCompliance => "SOA-03005",
            SoaCode::XsdCompliance => "SOA-03006",
            SoaCode::ContentValidation => "SOA-03007",
        }
    }

    /// The platform's message for the code.
    pub fn message(self) -> &'static str {
        match self {
            SoaCode::ServiceError => "Service error",
            SoaCode::NotAuthenticated => "Service call not authenticated",
            SoaCode::NotAuthorized => "Service call not authorized",
            SoaCode::ServiceUnavailable => "Service not available. Please contact service desk",
            SoaCode::NotSoapMessage | SoaCode::MustBeSoap => "Message must be SOAP",
            SoaCode::MalformedMessage => "Malformed message",
            SoaCode::MissingBody => "Message must contain SOAP body",
            SoaCode::WsiCompliance => "WS-I compliance failure",
            SoaCode::WsdlCompliance => "WSDL compliance failure",
            SoaCode::XsdCompliance => "XSD compliance failure",
            SoaCode::ContentValidation => "Message content validation failure",
        }
    }

    /// Looks a code up by its text (`SOA-03001`).
    pub fn from_code(code: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|c| c.code() == code.trim())
    }

    /// Whether eHealth clients retry a call that failed with this code.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            SoaCode::ServiceError
                | SoaCode::NotAuthenticated
                | SoaCode::NotAuthorized
                | SoaCode::ServiceUnavailable
        )
    }

    /// Whether the caller is at fault (`soap:Client`) rather than the service (`soap:Server`).
    pub fn is_client_fault(self) -> bool {
        !matches!(self, SoaCode::ServiceError | SoaCode::ServiceUnavailable)
    }
}

/// The SOAP 1.1 `faultcode`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FaultCode {
    Client,
    Server,
    VersionMismatch,
    MustUnderstand,
    /// Any other code (a dotted SOAP 1.1 subcode like `Client.Auth`, or a foreign
    /// namespace), as `{ns}local`, or `local` when it is in no namespace.
    Other(String),
}

impl FaultCode {
    fn local(&self) -> Option<&'static str> {
        Some(match self {
            FaultCode::Client => "Client",
            FaultCode::Server => "Server",
            FaultCode::VersionMismatch => "VersionMismatch",
            FaultCode::MustUnderstand => "MustUnderstand",
            FaultCode::Other(_) => return None,
        })
    }
}

/// Which detail element a fault carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    SystemError,
    BusinessError,
}

impl ErrorKind {
    fn name(self) -> &'static str {
        match self {
            ErrorKind::SystemError => "SystemError",
            ErrorKind::BusinessError => "BusinessError",
        }
    }
}

/// A `core:LocalisedStringType` with `xml:lang`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LangString {
    pub lang: Option<String>,
    pub text: String,
}

/// The deployment environments of `SOAErrorType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Environment {
    Development,
    Test,
    Integration,
    Acceptation,
    Simulation,
    Production,
}

impl Environment {
    const ALL: [Environment; 6] = [
        Environment::Development,
        Environment::Test,
        Environment::Integration,
        Environment::Acceptation,
        Environment::Simulation,
        Environment::Production,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Environment::Development => "Development",
            Environment::Test => "Test",
            Environment::Integration => "Integration",
            Environment::Acceptation => "Acceptation",
            Environment::Simulation => "Simulation",
            Environment::Production => "Production",
        }
    }
    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.name() == s.trim())
    }
}

/// `SOAErrorType` (extends `core:ErrorType`): the detail of a platform fault. Its children
/// are unqualified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SoaError {
    pub kind: ErrorKind,
    /// Attribute `Id`.
    pub id: Option<String>,
    pub origin: String,
    /// E.g. `SOA-03001`; see [`SoaCode::from_code`].
    pub code: String,
    /// 1..n.
    pub messages: Vec<LangString>,
    pub retry: Option<bool>,
    pub contact: Option<String>,
    pub environment: Option<Environment>,
}

/// A SOAP 1.1 fault with an SOA error detail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fault {
    pub fault_code: FaultCode,
    pub fault_string: String,
    pub detail: Option<SoaError>,
}

impl Fault {
    /// The standard fault for an SOA code: `soap:Client`/`soap:Server`, the code's message,
    /// a `SystemError` detail with `Origin` `Server`, English message and the retry flag.
    pub fn from_code(code: SoaCode, environment: Option<Environment>) -> Self {
        Fault {
            fault_code: if code.is_client_fault() {
                FaultCode::Client
            } else {
                FaultCode::Server
            },
            fault_string: code.message().to_owned(),
            detail: Some(SoaError {
                kind: ErrorKind::SystemError,
                id: None,
                origin: "Server".into(),
                code: code.code().into(),
                messages: vec![LangString {
                    lang: Some("en".into()),
                    text: code.message().into(),
                }],
                retry: Some(code.is_retryable()),
                contact: None,
                environment,
            }),
        }
    }

    /// The fault a service answers to a request that failed to parse: a SOAP 1.2
    /// envelope ([`Error::SoapVersion`]) gets `soap:VersionMismatch` (SOAP 1.1 §4.4.1),
    /// with the SOA detail SOA-03002.
    pub fn from_error(err: &Error, environment: Option<Environment>) -> Self {
        let mut f = Fault::from_code(err.soa_code(), environment);
        if matches!(err, Error::SoapVersion(_)) {
            f.fault_code = FaultCode::VersionMismatch;
        }
        if let Some(d) = &mut f.detail {
            let code = err.soa_code().message();
            let text = err.to_string();
            // Many errors' texts start with their code's message ("XSD compliance
            // failure: …"): said once.
            d.messages[0].text = match text.get(..code.len()) {
                Some(head) if head.eq_ignore_ascii_case(code) => {
                    format!("{code}{}", &text[code.len()..])
                }
                _ => format!("{code}: {text}"),
            };
        }
        f
    }

    /// The fault for a request with a header block the service must understand and does
    /// not (`header` as `{ns}name`; any but WS-Security's `Security`): `soap:MustUnderstand`
    /// without `detail`, which SOAP 1.1 §4.4 keeps for errors in the Body. The SOA code of a
    /// WSDL compliance failure (the service's WSDL declares no such header) opens the
    /// fault string instead.
    pub fn must_understand(header: &str, environment: Option<Environment>) -> Self {
        let mut f = Fault::from_code(SoaCode::WsdlCompliance, environment);
        f.fault_code = FaultCode::MustUnderstand;
        f.detail = None;
        // The name is the sender's: bounded, as it is written back.
        let name: String = header.chars().take(200).collect();
        f.fault_string = format!(
            "{} ({}): the SOAP header {name} must be understood, and this service does not \
             understand it",
            SoaCode::WsdlCompliance.code(),
            SoaCode::WsdlCompliance.message()
        );
        f
    }

    /// The SOA code of the detail, if it is a known one.
    pub fn soa_code(&self) -> Option<SoaCode> {
        self.detail
            .as_ref()
            .and_then(|d| SoaCode::from_code(&d.code))
    }

    /// The `soap:Fault` element.
    pub fn to_element(&self) -> Element {
        let mut code = Element::new(None, "faultcode");
        code.text = match (&self.fault_code, self.fault_code.local()) {
            (_, Some(l)) => format!("soap:{l}"),
            (FaultCode::Other(s), None) => match expanded_name(s) {
                // A code in a namespace gets a prefix declared where it is used.
                Some((ns, local)) => {
                    code.ns_decls
                        .push((FAULT_CODE_PREFIX.to_owned(), ns.to_owned()));
                    format!("{FAULT_CODE_PREFIX}:{local}")
                }
                None => s.clone(),
            },
            _ => String::new(),
        };
        let mut f = Element::new(Some(SOAP11_NS), "Fault")
            .with_child(code)
            .with_child(Element::leaf(None, "faultstring", &self.fault_string));
        if let Some(d) = &self.detail {
            let mut e = Element::new(Some(SOA_ERRORS_NS), d.kind.name());
            if let Some(id) = &d.id {
                e = e.with_attr(None, "Id", id);
            }
            e = e
                .with_child(Element::leaf(None, "Origin", &d.origin))
                .with_child(Element::leaf(None, "Code", &d.code));
            for m in &d.messages {
                let mut me = Element::leaf(None, "Message", &m.text);
                if let Some(l) = &m.lang {
                    me = me.with_attr(Some(XML_NS), "lang", l);
                }
                e = e.with_child(me);
            }
            if let Some(r) = d.retry {
                e = e.with_child(Element::leaf(None, "Retry", r.to_string()));
            }
            if let Some(c) = &d.contact {
                e = e.with_child(Element::leaf(None, "Contact", c));
            }
            if let Some(env) = d.environment {
                // Declared by the SOA schema itself (qualified), unlike the core fields.
                e = e.with_child(Element::leaf(
                    Some(SOA_ERRORS_NS),
                    "Environment",
                    env.name(),
                ));
            }
            f = f.with_child(Element::new(None, "detail").with_child(e));
        }
        f
    }

    /// The whole envelope.
    pub fn to_xml(&self) -> Vec<u8> {
        envelope(self.to_element())
    }

    /// Parses an envelope whose body is a fault.
    pub fn parse(input: &[u8]) -> Result<Self, Error> {
        Self::from_element(&parse_envelope(input)?)
    }

    /// Reads a `soap:Fault` element (as returned by [`parse_envelope`]).
    pub fn from_element(e: &Element) -> Result<Self, Error> {
        let mut c = e.expect(Some(SOAP11_NS), "Fault")?.children_in_order()?;
        let code_el = c.required(None, "faultcode")?;
        let mut decls = e.ns_decls.clone();
        decls.extend(code_el.ns_decls.iter().cloned());
        let fault_code = resolve_fault_code(nonempty_leaf(code_el)?, &decls)?;
        let fault_string = c.required(None, "faultstring")?.leaf_text()?.to_owned();
        c.optional(None, "faultactor");
        let detail = match c.optional(None, "detail") {
            None => None,
            Some(d) => d
                .children
                .iter()
                .find(|x| {
                    x.ns.as_deref() == Some(SOA_ERRORS_NS)
                        && (x.name == "SystemError" || x.name == "BusinessError")
                })
                .map(parse_soa_error)
                .transpose()?,
        };
        c.finish()?;
        Ok(Fault {
            fault_code,
            fault_string,
            detail,
        })
    }
}

/// The prefix [`Fault::to_element`] declares on `faultcode` for a code in a namespace
/// ([`FaultCode::Other`] `{ns}local`).
const FAULT_CODE_PREFIX: &str = "fc";

/// `(ns, local)` of an expanded name `{ns}local`. A local name holds no `}` (it is an
/// NCName: [`resolve_fault_code`] refuses others), so the last one ends the namespace.
fn expanded_name(s: &str) -> Option<(&str, &str)> {
    s.strip_prefix('{')?.rsplit_once('}')
}

/// Resolves the QName text of `faultcode` against the in-scope declarations. Neither part
/// may hold a colon (beyond the one between them), a brace or white space: they are
/// NCNames, and [`FaultCode::Other`]'s `{ns}local` must say where the name begins.
fn resolve_fault_code(text: &str, decls: &[(String, String)]) -> Result<FaultCode, Error> {
    let (prefix, local) = text.split_once(':').unwrap_or(("", text));
    let ncname = |s: &str| {
        !s.chars()
            .any(|c| matches!(c, ':' | '{' | '}' | ' ' | '\t' | '\r' | '\n'))
    };
    if local.is_empty() || text.starts_with(':') || !ncname(prefix) || !ncname(local) {
        return Err(schema(format!("faultcode {text:?}: not a QName")));
    }
    let ns = decls
        .iter()
        .rev()
        .find(|(p, _)| p == prefix)
        .map(|(_, u)| u.as_str());
    if !prefix.is_empty() && ns.is_none() {
        return Err(schema(format!("faultcode {text:?}: unbound prefix")));
    }
    Ok(match (ns, local) {
        (Some(SOAP11_NS), "Client") => FaultCode::Client,
        (Some(SOAP11_NS), "Server") => FaultCode::Server,
        (Some(SOAP11_NS), "VersionMismatch") => FaultCode::VersionMismatch,
        (Some(SOAP11_NS), "MustUnderstand") => FaultCode::MustUnderstand,
        (Some(ns), l) => FaultCode::Other(format!("{{{ns}}}{l}")),
        (None, l) => FaultCode::Other(l.to_owned()),
    })
}

fn parse_soa_error(e: &Element) -> Result<SoaError, Error> {
    let kind = if e.name == "SystemError" {
        ErrorKind::SystemError
    } else {
        ErrorKind::BusinessError
    };
    let mut c = e.children_in_order()?;
    let origin = c.required(None, "Origin")?.leaf_text()?.trim().to_owned();
    let code = nonempty_leaf(c.required(None, "Code")?)?.to_owned();
    let messages = c
        .many1(None, "Message")?
        .into_iter()
        .map(|m| {
            Ok(LangString {
                lang: m.attr(Some(XML_NS), "lang").map(str::to_owned),
                text: m.leaf_text()?.to_owned(),
            })
        })
        .collect::<Result<_, Error>>()?;
    let retry = c
        .optional(None, "Retry")
        .map(|r| parse_bool(r.leaf_text()?))
        .transpose()?;
    let contact = c
        .optional(None, "Contact")
        .map(|r| r.leaf_text().map(str::to_owned))
        .transpose()?;
    // Qualified as the SOA schema declares it (what eHealth sends); unqualified too, as
    // our own platform wrote it before.
    let environment = c
        .optional(Some(SOA_ERRORS_NS), "Environment")
        .or_else(|| c.optional(None, "Environment"))
        .map(|r| {
            let t = r.leaf_text()?;
            Environment::from_name(t).ok_or_else(|| schema(format!("unknown Environment {t:?}")))
        })
        .transpose()?;
    c.finish()?;
    Ok(SoaError {
        kind,
        id: e.attr(None, "Id").map(str::to_owned),
        origin,
        code,
        messages,
        retry,
        contact,
        environment,
    })
}

/// `xs:boolean`.
pub(crate) fn parse_bool(t: &str) -> Result<bool, Error> {
    match t.trim() {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        other => Err(schema(format!("not a boolean: {other:?}"))),
    }
}
