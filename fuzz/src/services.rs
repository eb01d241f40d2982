//! The bodies of the platform services' targets: `soap`, `kgss_xml`, `services_json`.
//!
//! They read what the platform and its clients read from the network (`etee-services`),
//! and check more than "no panic":
//!
//! - XML (both XML targets): what parses stays within the default [`Limits`]; tighter
//!   limits refuse it with [`Error::TooLarge`] naming the limit (and limits equal to the
//!   document's own measures accept it); a parsed document holds no markup declaration
//!   (DOCTYPE, ENTITY, ...), no processing instruction and no entity reference other than
//!   the predefined ones (an independent scanner looks); the same document with a DOCTYPE
//!   inserted is refused as [`Error::ForbiddenXml`]; the tree written out reads back as
//!   the same tree.
//! - `soap`: the envelope is read as the platform reads requests (`parse_request`, then
//!   the ETKDepot and KGSS request readers) and as clients read answers (responses,
//!   faults); every message that parses is written and read back to the same value, and
//!   writing that again gives the same bytes. A refused request gives a fault and a
//!   problem answer that read back.
//! - `kgss_xml`: the four inner (sealed) KGSS contents, round trip as above; the access
//!   rule allows a caller holding exactly an allowed credential unless it is excluded.
//! - `services_json`: the REST/KeyDepot JSON bodies, round trip through their writers; the
//!   proofs (possession, attestation) are checked without panicking.
//!
//! XML 1.0 cannot carry some characters (controls, U+FFFE, ...): the reader refuses them,
//! and the writer replaces them with U+FFFD in values made otherwise. A value that holds
//! one is compared after that replacement (writing the read-back value must then give the
//! same bytes).
//!
//! This file is also compiled into `host/services/tests/robustness.rs` (stable Rust), so
//! it uses nothing but `etee-services`, `etee-formats` and std.

use etee_formats::identity::normalize_value;
use etee_services::error::Error;
use etee_services::etkdepot::jwks::JwkSet;
use etee_services::etkdepot::{EtkJson, GetEtkRequest, GetEtkResponse, Identifier, Problem};
use etee_services::keydepot::{
    AddInfoRequest, AttestationStatement, HolderInfo, KeyListResponse, KeyRecord,
    RegisterKeyRequest, RegisterKeyResponse, SignedAttestation,
};
use etee_services::kgss::{
    self, vocabulary, Attribute, Decision, GetKeyRequestContent, GetKeyResponseContent,
    GetNewKeyRequestContent, GetNewKeyResponseContent, KgssRequest, KgssResponse,
};
use etee_services::soap::{self, Environment, Fault};
use etee_services::xml::{self, Element, Limits};
use std::fmt::Debug;

/// The holder the seed attestations are made for (`write_fuzz_corpus`).
pub const ATTESTATION_HOLDER: (&str, &str) = ("SSIN", "76120902527");

// ---- shared checks ----------------------------------------------------------------------

/// Characters XML 1.0 can carry (the writer replaces the others with U+FFFD).
fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Writes `v`, reads it back, and writes that again. The value read back must be `v`
/// when `exact` (no character the writer replaces), and must write to the same bytes.
fn round_trip<T: PartialEq + Debug>(
    what: &str,
    v: &T,
    exact: bool,
    write: impl Fn(&T) -> Vec<u8>,
    read: impl Fn(&[u8]) -> Result<T, Error>,
) {
    let w1 = write(v);
    let back = match read(&w1) {
        Ok(b) => b,
        Err(e) => panic!(
            "{what}: the written form does not read back\n{e}\nvalue: {v:?}\nwritten: {}",
            lossy(&w1)
        ),
    };
    if exact {
        assert!(
            &back == v,
            "{what}: read back differs\nvalue: {v:?}\nback: {back:?}\nwritten: {}",
            lossy(&w1)
        );
    }
    let w2 = write(&back);
    assert!(
        w1 == w2,
        "{what}: written twice differently:\n{}\n{}",
        lossy(&w1),
        lossy(&w2)
    );
}

/// The measures of a tree that [`Limits`] bound.
#[derive(Debug, Default)]
struct Measures {
    depth: usize,
    elements: usize,
    /// Longest text (of one element) or attribute value (namespace declarations too).
    text: usize,
    /// Most attributes on one element, namespace declarations included.
    attributes: usize,
    /// Whether every text, attribute value and namespace is made of XML characters.
    clean: bool,
}

fn measure(e: &Element, depth: usize, m: &mut Measures) {
    m.depth = m.depth.max(depth);
    m.elements += 1;
    m.text = m.text.max(e.text.len());
    m.attributes = m.attributes.max(e.attrs.len() + e.ns_decls.len());
    let clean = |s: &str| s.chars().all(is_xml_char);
    m.clean &= clean(&e.text) && e.ns.as_deref().is_none_or(clean);
    for a in &e.attrs {
        m.text = m.text.max(a.value.len());
        m.clean &= clean(&a.value) && a.ns.as_deref().is_none_or(clean);
    }
    for (_, uri) in &e.ns_decls {
        m.text = m.text.max(uri.len());
    }
    for c in &e.children {
        measure(c, depth + 1, m);
    }
}

/// The tree as the writer can write it: no namespace declarations (the writer makes its
/// own), characters XML cannot carry replaced.
fn writable(e: &Element) -> Element {
    let fix = |s: &str| -> String {
        s.chars()
            .map(|c| if is_xml_char(c) { c } else { '\u{FFFD}' })
            .collect()
    };
    let mut out = Element::new(e.ns.as_deref().map(fix).as_deref(), &e.name);
    out.text = fix(&e.text);
    for a in &e.attrs {
        out = out.with_attr(a.ns.as_deref().map(fix).as_deref(), &a.name, fix(&a.value));
    }
    out.with_children(e.children.iter().map(writable))
}

/// What an independent scan of a document finds that the reader must refuse: a markup
/// declaration (`<!DOCTYPE`, `<!ENTITY`, ...: any `<!` that does not open a comment or a
/// CDATA section), a processing instruction other than a leading XML declaration, or an
/// entity reference other than the five predefined ones and character references.
fn forbidden_markup(doc: &[u8]) -> Option<&'static str> {
    let doc = doc.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(doc);
    // Before the first markup only white space may come (a second BOM is a character).
    let first = doc.iter().position(|&b| b == b'<').unwrap_or(doc.len());
    if !doc[..first]
        .iter()
        .all(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
    {
        return Some("character before the first markup");
    }
    let find = |from: usize, pat: &[u8]| -> Option<usize> {
        doc.get(from..)?
            .windows(pat.len())
            .position(|w| w == pat)
            .map(|p| from + p)
    };
    // An `&` in text or in an attribute value must start a predefined entity or a
    // character reference (the reader would fail to unescape anything else).
    let bad_reference = |at: usize| {
        let rest = &doc[at..];
        ![&b"&amp;"[..], b"&lt;", b"&gt;", b"&quot;", b"&apos;", b"&#"]
            .iter()
            .any(|p| rest.starts_with(p))
    };
    let mut i = 0;
    while i < doc.len() {
        let rest = &doc[i..];
        if rest.starts_with(b"<!--") {
            i = find(i + 4, b"-->")? + 3;
        } else if rest.starts_with(b"<![CDATA[") {
            i = find(i + 9, b"]]>")? + 3;
        } else if rest.starts_with(b"<!") {
            return Some("markup declaration");
        } else if rest.starts_with(b"<?") {
            let decl = i == 0
                && rest.starts_with(b"<?xml")
                && matches!(rest.get(5), Some(b' ' | b'\t' | b'\r' | b'\n' | b'?'));
            if !decl {
                return Some("processing instruction");
            }
            i = find(i, b"?>")? + 2;
        } else if rest.starts_with(b"<") {
            // A tag: up to its `>`, quoted attribute values skipped.
            let mut j = i + 1;
            let mut quote = None;
            loop {
                let c = *doc.get(j)?;
                match quote {
                    Some(q) if c == q => quote = None,
                    Some(_) if c == b'&' && bad_reference(j) => {
                        return Some("entity reference in an attribute value")
                    }
                    Some(_) => {}
                    None if c == b'"' || c == b'\'' => quote = Some(c),
                    None if c == b'>' => break,
                    None => {}
                }
                j += 1;
            }
            i = j + 1;
        } else {
            if rest[0] == b'&' && bad_reference(i) {
                return Some("entity reference in text");
            }
            i += 1;
        }
    }
    None
}

/// `doc` with `<!DOCTYPE r [<!ENTITY e "x">]>` after its XML declaration (or at its start).
fn with_doctype(doc: &[u8]) -> Vec<u8> {
    let body = doc.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(doc);
    let bom = doc.len() - body.len();
    let at = if body.starts_with(b"<?xml") {
        body.windows(2)
            .position(|w| w == b"?>")
            .map_or(0, |p| p + 2)
    } else {
        0
    };
    let mut out = doc[..bom + at].to_vec();
    out.extend_from_slice(br#"<!DOCTYPE r [<!ENTITY e "x">]>"#);
    out.extend_from_slice(&doc[bom + at..]);
    out
}

fn too_large(r: &Result<Element, Error>, want: &str) -> bool {
    matches!(r, Err(Error::TooLarge { what, .. }) if *what == want)
}

/// The XML reader's properties (see the module doc); returns the parsed tree, if any,
/// and whether its values are all XML characters.
pub fn xml_reader(data: &[u8]) -> Option<(Element, bool)> {
    let root = xml::parse(data).ok()?;
    let mut m = Measures {
        clean: true,
        ..Default::default()
    };
    measure(&root, 1, &mut m);
    let d = Limits::default();
    assert!(data.len() <= d.max_size);
    assert!(m.depth <= d.max_depth, "depth {} accepted", m.depth);
    assert!(
        m.elements <= d.max_elements,
        "{} elements accepted",
        m.elements
    );
    assert!(
        m.attributes <= d.max_attributes,
        "{} attributes accepted",
        m.attributes
    );
    assert!(m.text <= d.max_text, "text of {} bytes accepted", m.text);

    if let Some(what) = forbidden_markup(data) {
        panic!("a document with a {what} was accepted\n{}", lossy(data));
    }
    let doctype = with_doctype(data);
    let r = xml::parse(&doctype);
    assert!(
        matches!(r, Err(Error::ForbiddenXml(_))),
        "a DOCTYPE was not refused\n{r:?}\n{}",
        lossy(&doctype)
    );

    // Exactly the document's measures: accepted. One less of any: refused, naming it.
    let exact = Limits {
        max_size: data.len(),
        max_depth: m.depth,
        max_elements: m.elements,
        max_attributes: m.attributes,
        ..d
    };
    if let Err(e) = xml::parse_with(data, &exact) {
        panic!("refused at limits equal to its measures\n{m:?}: {e}");
    }
    let tighter = [
        (
            Limits {
                max_size: data.len() - 1,
                ..d
            },
            "document size",
        ),
        (
            Limits {
                max_depth: m.depth - 1,
                ..d
            },
            "element depth",
        ),
        (
            Limits {
                max_elements: m.elements - 1,
                ..d
            },
            "element count",
        ),
    ];
    for (limits, what) in tighter {
        let r = xml::parse_with(data, &limits);
        assert!(too_large(&r, what), "{what} limit not applied: {r:?}");
    }
    if m.attributes > 0 {
        let limits = Limits {
            max_attributes: m.attributes - 1,
            ..d
        };
        let r = xml::parse_with(data, &limits);
        assert!(
            too_large(&r, "attributes on one element"),
            "attribute limit not applied: {r:?}"
        );
    }
    if m.text > 0 {
        let limits = Limits {
            max_text: m.text - 1,
            ..d
        };
        let r = xml::parse_with(data, &limits);
        assert!(
            too_large(&r, "element text") || too_large(&r, "attribute value"),
            "text limit not applied: {r:?}"
        );
    }

    // The tree written out reads back as the same tree (escaping can make the document
    // and its values longer: read back with room for that).
    let written = root.to_document(&[]);
    // The writer declares every namespace on the root: as many as the whole document had.
    let roomy = Limits {
        max_size: 8 * d.max_size,
        max_text: 8 * d.max_text,
        max_attributes: 2 * d.max_attributes + 2 * d.max_document_namespaces,
        max_element_namespaces: 2 * d.max_document_namespaces,
        max_document_namespaces: 2 * d.max_document_namespaces,
        ..d
    };
    let back = match xml::parse_with(&written, &roomy) {
        Ok(b) => b,
        Err(e) => panic!(
            "the written tree does not read back\n{e}\n{}",
            lossy(&written)
        ),
    };
    let (a, b) = (writable(&root), writable(&back));
    assert!(
        a == b,
        "the tree read back differs\nread: {a:?}\nback: {b:?}\nwritten: {}",
        lossy(&written)
    );
    Some((root, m.clean))
}

// ---- soap --------------------------------------------------------------------------------

/// A request refused with `e`: the platform's fault and REST problem must read back.
fn refusal(e: &Error) {
    let f = Fault::from_error(e, Some(Environment::Production));
    assert_eq!(f.soa_code(), Some(e.soa_code()));
    let clean = fault_is_clean(&f);
    round_trip("fault", &f, clean, Fault::to_xml, Fault::parse);
    let p = Problem::from_error(e);
    round_trip("problem", &p, true, Problem::to_json, Problem::parse);
}

fn fault_is_clean(f: &Fault) -> bool {
    let clean = |s: &str| s.chars().all(is_xml_char);
    clean(&f.fault_string)
        && match &f.fault_code {
            soap::FaultCode::Other(s) => clean(s),
            _ => true,
        }
        && f.detail.as_ref().is_none_or(|d| {
            clean(&d.origin)
                && clean(&d.code)
                && d.id.as_deref().is_none_or(clean)
                && d.contact.as_deref().is_none_or(clean)
                && d.messages
                    .iter()
                    .all(|m| clean(&m.text) && m.lang.as_deref().is_none_or(clean))
        })
}

/// SOAP envelopes: requests as the platform reads them, answers as clients read them.
pub fn soap(data: &[u8]) {
    let clean = xml_reader(data).is_none_or(|(_, clean)| clean);
    let request = match soap::parse_request(data) {
        Ok(r) => r,
        Err(e) => {
            refusal(&e);
            return;
        }
    };
    let payload = soap::parse_envelope(data).expect("parse_request accepted it");
    assert_eq!(payload, request.payload);
    if let Some(header) = &request.not_understood {
        let f = Fault::must_understand(header, Some(Environment::Production));
        round_trip(
            "mustUnderstand fault",
            &f,
            fault_is_clean(&f),
            Fault::to_xml,
            Fault::parse,
        );
    }

    // What the platform routes: ETKDepot's and KGSS's requests.
    match GetEtkRequest::from_element(&payload) {
        Ok(r) => {
            for id in &r.identifiers {
                if let Ok(n) = id.normalized() {
                    assert_eq!(n.normalized().as_ref(), Ok(&n), "normalising twice differs");
                }
                let _ = id.wants_no_application();
            }
            round_trip(
                "GetEtkRequest",
                &r,
                clean,
                GetEtkRequest::to_xml,
                GetEtkRequest::parse,
            );
            let again = soap::parse_request(&r.to_xml()).expect("written request reads");
            assert!(again.not_understood.is_none() && !again.security_header);
        }
        Err(e) => refusal(&e),
    }
    match KgssRequest::from_element(&payload) {
        Ok(r) => round_trip(
            "KgssRequest",
            &r,
            clean,
            KgssRequest::to_xml,
            KgssRequest::parse,
        ),
        Err(e) => refusal(&e),
    }
    // What clients read.
    if let Ok(r) = GetEtkResponse::from_element(&payload) {
        let _ = r.status.is_ok();
        round_trip(
            "GetEtkResponse",
            &r,
            clean,
            GetEtkResponse::to_xml,
            GetEtkResponse::parse,
        );
    }
    if let Ok(r) = KgssResponse::from_element(&payload) {
        let _ = r.is_success();
        round_trip(
            "KgssResponse",
            &r,
            clean,
            KgssResponse::to_xml,
            KgssResponse::parse,
        );
    }
    if let Ok(f) = Fault::from_element(&payload) {
        let _ = f
            .soa_code()
            .map(|c| (c.is_retryable(), c.is_client_fault()));
        round_trip("Fault", &f, clean, Fault::to_xml, Fault::parse);
    }
}

// ---- kgss_xml ----------------------------------------------------------------------------

/// The inner (sealed) KGSS contents, and the access rule over what a request names.
pub fn kgss_xml(data: &[u8]) {
    let clean = xml_reader(data).is_none_or(|(_, clean)| clean);
    if let Ok(r) = GetNewKeyRequestContent::parse(data) {
        round_trip(
            "GetNewKeyRequestContent",
            &r,
            clean,
            GetNewKeyRequestContent::to_xml,
            GetNewKeyRequestContent::parse,
        );
        for c in r.allowed_readers.iter().chain(&r.excluded_readers) {
            let _ = vocabulary::is_known(&c.namespace, &c.name);
            if let Some(t) = vocabulary::value_type(&c.namespace, &c.name) {
                for v in &c.values {
                    if let Ok(n) = normalize_value(t, v) {
                        assert_eq!(normalize_value(t, &n).as_ref(), Ok(&n));
                    }
                }
            }
        }
        // A caller holding exactly the first allowed credential (its first value) is
        // allowed, unless an exclusion matches it.
        let first = &r.allowed_readers[0];
        let holds = vec![Attribute::new(
            &first.namespace,
            &first.name,
            first.values.first().map_or("any", String::as_str),
        )];
        match kgss::evaluate(&r.allowed_readers, &r.excluded_readers, &holds) {
            Decision::Allowed { allowed_index } => {
                assert!(r.allowed_readers[allowed_index].matches(&holds));
                assert!(!r.excluded_readers.iter().any(|c| c.matches(&holds)));
            }
            Decision::Excluded { excluded_index } => {
                assert!(r.excluded_readers[excluded_index].matches(&holds));
            }
            Decision::NotAllowed => panic!("the first allowed credential's holder is not allowed"),
        }
    }
    if let Ok(r) = GetKeyRequestContent::parse(data) {
        round_trip(
            "GetKeyRequestContent",
            &r,
            clean,
            |r| r.to_xml().to_vec(),
            GetKeyRequestContent::parse,
        );
    }
    if let Ok(r) = GetNewKeyResponseContent::parse(data) {
        round_trip(
            "GetNewKeyResponseContent",
            &r,
            clean,
            |r| r.to_xml().to_vec(),
            GetNewKeyResponseContent::parse,
        );
    }
    if let Ok(r) = GetKeyResponseContent::parse(data) {
        round_trip(
            "GetKeyResponseContent",
            &r,
            clean,
            |r| r.to_xml().to_vec(),
            GetKeyResponseContent::parse,
        );
    }
}

// ---- services_json -----------------------------------------------------------------------

/// The REST (ETKDepot) and KeyDepot JSON bodies.
pub fn services_json(data: &[u8]) {
    let holder = Identifier::new(ATTESTATION_HOLDER.0, ATTESTATION_HOLDER.1, None);
    if let Ok(r) = RegisterKeyRequest::parse(data) {
        round_trip(
            "RegisterKeyRequest",
            &r,
            true,
            RegisterKeyRequest::to_json,
            RegisterKeyRequest::parse,
        );
        let _ = r.check_limits();
        let _ = r.verify_proof_of_possession(&etee_formats::identity::Identity {
            id_type: ATTESTATION_HOLDER.0.to_owned(),
            value: ATTESTATION_HOLDER.1.to_owned(),
            application_id: None,
        });
        if let Some(a) = &r.attestation {
            let _ = a.verify(&r.key_id, &r.public_key, &holder);
        }
    }
    if let Ok(r) = AddInfoRequest::parse(data) {
        round_trip(
            "AddInfoRequest",
            &r,
            true,
            AddInfoRequest::to_json,
            AddInfoRequest::parse,
        );
        let mut info = r.info.clone();
        let _ = info.check_limits();
        info.merge(&r.info);
        assert_eq!(info, r.info, "merging information into itself changes it");
    }
    if let Ok(a) = SignedAttestation::parse(data) {
        round_trip(
            "SignedAttestation",
            &a,
            true,
            SignedAttestation::to_json,
            SignedAttestation::parse,
        );
        if let Ok(st) = etee_services::json::parse::<AttestationStatement>(&a.statement) {
            let _ = a.verify(&st.key_id, b"", &holder);
        }
    }
    if let Ok(st) = etee_services::json::parse::<AttestationStatement>(data) {
        round_trip(
            "AttestationStatement",
            &st,
            true,
            |s| s.to_be_signed().expect("a statement read can be signed"),
            etee_services::json::parse,
        );
    }
    if let Ok(r) = KeyRecord::parse(data) {
        round_trip("KeyRecord", &r, true, KeyRecord::to_json, KeyRecord::parse);
    }
    if let Ok(r) = RegisterKeyResponse::parse(data) {
        round_trip(
            "RegisterKeyResponse",
            &r,
            true,
            RegisterKeyResponse::to_json,
            RegisterKeyResponse::parse,
        );
    }
    if let Ok(r) = KeyListResponse::parse(data) {
        round_trip(
            "KeyListResponse",
            &r,
            true,
            KeyListResponse::to_json,
            KeyListResponse::parse,
        );
    }
    if let Ok(r) = HolderInfo::parse(data) {
        round_trip(
            "HolderInfo",
            &r,
            true,
            HolderInfo::to_json,
            HolderInfo::parse,
        );
    }
    if let Ok(l) = EtkJson::parse_list(data) {
        round_trip(
            "EtkJson list",
            &l,
            true,
            |l| EtkJson::list_to_json(l),
            EtkJson::parse_list,
        );
    }
    if let Ok(p) = Problem::parse(data) {
        round_trip("Problem", &p, true, Problem::to_json, Problem::parse);
    }
    if let Ok(s) = JwkSet::parse(data) {
        round_trip("JwkSet", &s, true, JwkSet::to_json, JwkSet::parse);
    }
}
