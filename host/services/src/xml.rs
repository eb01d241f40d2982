//! A small, safe XML reader and writer for the service messages.
//!
//! The messages are small, so the reader builds an [`Element`] tree. It is built on
//! `quick-xml` and refuses everything the messages never need and attackers love:
//! - any DOCTYPE (hence no DTD, no entity declarations, no external entities);
//! - processing instructions other than the leading XML declaration;
//! - entities other than the five predefined ones and numeric character references
//!   (`quick-xml` never expands anything else);
//! - documents beyond [`Limits`] (size, depth, element count, text and attribute sizes,
//!   namespace declarations per element and per document);
//! - element and attribute names that are not QNames (quick-xml takes almost anything);
//!   an attribute given twice under two prefixes of one namespace; an element named with
//!   the prefix `xmlns`; a `<` written in an attribute value; characters outside XML 1.0's
//!   `Char` (control characters, U+FFFE, U+FFFF), written or referenced;
//! - encodings other than UTF-8.
//!
//! Elements and attributes are matched by (namespace URI, local name), whatever prefix the
//! sender chose, as namespace-aware XML requires.

use crate::error::{schema, Error};
use base64::Engine as _;
use quick_xml::events::Event;
use quick_xml::name::ResolveResult;
use quick_xml::reader::NsReader;
use zeroize::{Zeroize, Zeroizing};

/// The namespace the `xml:` prefix is bound to (`xml:lang`).
pub const XML_NS: &str = "http://www.w3.org/XML/1998/namespace";
/// The namespace of the `xmlns:` prefix (namespace declarations): never an element's.
const XMLNS_NS: &str = "http://www.w3.org/2000/xmlns/";

/// Limits applied while reading. The defaults fit every platform message with a wide margin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Total input size in bytes (default 1 MiB).
    pub max_size: usize,
    /// Element nesting depth (default 32).
    pub max_depth: usize,
    /// Number of elements (default 10 000).
    pub max_elements: usize,
    /// Text content of one element, and one attribute value, in bytes (default 768 KiB:
    /// a base64 sealed content may take most of a message).
    pub max_text: usize,
    /// Attributes (including namespace declarations) on one element (default 32).
    pub max_attributes: usize,
    /// Namespace declarations on one element (default 16).
    pub max_element_namespaces: usize,
    /// Namespace declarations in the whole document (default 128). quick-xml resolves each
    /// prefix by scanning the bindings in scope: without this bound a 1 MiB document of
    /// declarations and prefixed names costs seconds of CPU.
    pub max_document_namespaces: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_size: 1024 * 1024,
            max_depth: 32,
            max_elements: 10_000,
            max_text: 768 * 1024,
            max_attributes: 32,
            max_element_namespaces: 16,
            max_document_namespaces: 128,
        }
    }
}

/// One attribute. Namespace declarations are not attributes here (see [`Element::ns_decls`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attr {
    /// Namespace URI; `None` for an unprefixed attribute.
    pub ns: Option<String>,
    pub name: String,
    pub value: String,
}

/// An element: namespace URI, local name, attributes, child elements and text content
/// (all text and CDATA directly inside it, concatenated; comments dropped).
///
/// The text is wiped on drop, because base64 text may carry key material; for the same
/// reason `Debug` shows its length, not the text.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Element {
    /// Namespace URI; `None` for an unqualified element.
    pub ns: Option<String>,
    pub name: String,
    pub attrs: Vec<Attr>,
    pub children: Vec<Element>,
    pub text: String,
    /// Namespace declarations on this element as read, `(prefix, uri)` with `""` for the
    /// default namespace. Needed to resolve QName-valued text such as `faultcode`. The
    /// writer declares the namespaces of element and attribute names itself; of these it
    /// writes only the named prefixes that it does not use for names (the last one of each
    /// prefix), so that they can serve QName-valued text and change no name's namespace.
    pub ns_decls: Vec<(String, String)>,
}

impl std::fmt::Debug for Element {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Element")
            .field("ns", &self.ns)
            .field("name", &self.name)
            .field("attrs", &self.attrs)
            .field("children", &self.children)
            .field("text", &format_args!("<{} bytes>", self.text.len()))
            .field("ns_decls", &self.ns_decls)
            .finish()
    }
}

impl Drop for Element {
    fn drop(&mut self) {
        self.text.zeroize();
    }
}

impl Element {
    /// A new empty element.
    pub fn new(ns: Option<&str>, name: &str) -> Self {
        Element::with_ns(ns.map(str::to_owned), name.to_owned())
    }

    fn with_ns(ns: Option<String>, name: String) -> Self {
        Element {
            ns,
            name,
            attrs: Vec::new(),
            children: Vec::new(),
            text: String::new(),
            ns_decls: Vec::new(),
        }
    }

    /// Adds an attribute.
    pub fn with_attr(mut self, ns: Option<&str>, name: &str, value: impl Into<String>) -> Self {
        self.attrs.push(Attr {
            ns: ns.map(str::to_owned),
            name: name.to_owned(),
            value: value.into(),
        });
        self
    }

    /// Adds a child element.
    pub fn with_child(mut self, child: Element) -> Self {
        self.children.push(child);
        self
    }

    /// Adds child elements.
    pub fn with_children(mut self, children: impl IntoIterator<Item = Element>) -> Self {
        self.children.extend(children);
        self
    }

    /// Sets the text content.
    pub fn with_text(mut self, text: impl Into<String>) -> Self {
        self.text = text.into();
        self
    }

    /// A leaf element with text content.
    pub fn leaf(ns: Option<&str>, name: &str, text: impl Into<String>) -> Self {
        Element::new(ns, name).with_text(text)
    }

    /// Whether this is the element `{ns}name`.
    pub fn is(&self, ns: Option<&str>, name: &str) -> bool {
        self.ns.as_deref() == ns && self.name == name
    }

    /// `{ns}name` for messages.
    pub fn qname(&self) -> String {
        match &self.ns {
            Some(ns) => format!("{{{ns}}}{}", self.name),
            None => self.name.clone(),
        }
    }

    /// The value of attribute `{ns}name`.
    pub fn attr(&self, ns: Option<&str>, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|a| a.ns.as_deref() == ns && a.name == name)
            .map(|a| a.value.as_str())
    }

    /// The text of a simple-content element: an error if it has child elements.
    pub fn leaf_text(&self) -> Result<&str, Error> {
        if !self.children.is_empty() {
            return Err(schema(format!(
                "{} must hold text, not elements",
                self.qname()
            )));
        }
        Ok(&self.text)
    }

    /// A schema-order reader over the child elements; an error if the element has
    /// non-whitespace text next to its children (mixed content never occurs here).
    pub fn children_in_order(&self) -> Result<Children<'_>, Error> {
        if !is_xml_whitespace(&self.text) {
            return Err(schema(format!("{} must not hold text", self.qname())));
        }
        Ok(Children {
            parent: self,
            pos: 0,
        })
    }

    /// Requires this to be `{ns}name`.
    pub fn expect(&self, ns: Option<&str>, name: &str) -> Result<&Self, Error> {
        if self.is(ns, name) {
            Ok(self)
        } else {
            Err(schema(format!(
                "expected {}, found {}",
                Element::new(ns, name).qname(),
                self.qname()
            )))
        }
    }

    /// Serialises this element as a UTF-8 document with an XML declaration.
    ///
    /// Namespaces get the prefix given in `prefixes` (`(uri, prefix)`), or `ns1`, `ns2`, ...
    /// All are declared on this element.
    pub fn to_document(&self, prefixes: &[(&str, &str)]) -> Vec<u8> {
        // Room for the whole document from the start (twice what the element's parts add
        // up to covers escaping and declarations): a string grown step by step would leave
        // copies of its text, which may be a key's base64, in freed memory.
        let mut out = String::with_capacity(64 + 2 * self.serialised_len_hint());
        out.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>");
        self.write_to(&mut out, prefixes);
        out.into_bytes()
    }

    /// What the element's names, attributes and text add up to, with room for prefixes
    /// and namespace declarations.
    fn serialised_len_hint(&self) -> usize {
        let attrs: usize = self
            .attrs
            .iter()
            .map(|a| a.name.len() + a.value.len() + 16)
            .sum();
        let children: usize = self.children.iter().map(Self::serialised_len_hint).sum();
        2 * self.name.len()
            + 32
            + self.ns.as_ref().map_or(0, |ns| ns.len() + 16)
            + attrs
            + self.text.len()
            + children
    }

    /// Serialises this element (no XML declaration) into `out`; see [`to_document`](Self::to_document).
    pub fn write_to(&self, out: &mut String, prefixes: &[(&str, &str)]) {
        let mut used: Vec<(String, String)> = Vec::new();
        collect_namespaces(self, &mut |ns| {
            if ns != XML_NS && !used.iter().any(|(u, _)| u == ns) {
                let prefix = prefixes
                    .iter()
                    .find(|(u, _)| *u == ns)
                    .map(|(_, p)| (*p).to_owned())
                    .unwrap_or_else(|| format!("ns{}", used.len() + 1));
                used.push((ns.to_owned(), prefix));
            }
        });
        write_element(self, out, &used, true);
    }
}

fn collect_namespaces(e: &Element, f: &mut impl FnMut(&str)) {
    if let Some(ns) = &e.ns {
        f(ns);
    }
    for a in &e.attrs {
        if let Some(ns) = &a.ns {
            f(ns);
        }
    }
    for c in &e.children {
        collect_namespaces(c, f);
    }
}

fn prefixed(ns: Option<&str>, name: &str, used: &[(String, String)]) -> String {
    match ns {
        None => name.to_owned(),
        Some(XML_NS) => format!("xml:{name}"),
        Some(ns) => {
            let p = used
                .iter()
                .find(|(u, _)| u == ns)
                .map(|(_, p)| p.as_str())
                .unwrap_or("ns0");
            format!("{p}:{name}")
        }
    }
}

fn write_element(e: &Element, out: &mut String, used: &[(String, String)], root: bool) {
    let tag = prefixed(e.ns.as_deref(), &e.name, used);
    out.push('<');
    out.push_str(&tag);
    let declare = |out: &mut String, p: &str, uri: &str| {
        out.push_str(" xmlns:");
        out.push_str(p);
        out.push_str("=\"");
        escape_attr(uri, out);
        out.push('"');
    };
    if root {
        for (uri, p) in used {
            declare(out, p, uri);
        }
    }
    // Declarations for QName-valued text (see `Element::ns_decls`): never the default
    // namespace nor a prefix of the names, whose namespaces they would change.
    for (i, (p, uri)) in e.ns_decls.iter().enumerate() {
        let reserved = p.is_empty() || p == "xml" || p == "xmlns";
        let later = e.ns_decls[i + 1..].iter().any(|(q, _)| q == p);
        if !reserved && !later && !used.iter().any(|(_, q)| q == p) {
            declare(out, p, uri);
        }
    }
    for a in &e.attrs {
        out.push(' ');
        out.push_str(&prefixed(a.ns.as_deref(), &a.name, used));
        out.push_str("=\"");
        escape_attr(&a.value, out);
        out.push('"');
    }
    if e.children.is_empty() && e.text.is_empty() {
        out.push_str("/>");
        return;
    }
    out.push('>');
    escape_text(&e.text, out);
    for c in &e.children {
        write_element(c, out, used, false);
    }
    out.push_str("</");
    out.push_str(&tag);
    out.push('>');
}

/// Characters XML 1.0 cannot carry at all; the writer replaces them with U+FFFD.
fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

/// Escapes element text: `&`, `<`, `>` and CR (so that it survives end-of-line handling).
pub fn escape_text(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\r' => out.push_str("&#13;"),
            c if !is_xml_char(c) => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
}

/// Escapes an attribute value (double-quoted): also `"` and whitespace characters that
/// attribute-value normalisation would otherwise turn into spaces.
pub fn escape_attr(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '"' => out.push_str("&quot;"),
            '\t' => out.push_str("&#9;"),
            '\n' => out.push_str("&#10;"),
            c => escape_text(c.encode_utf8(&mut [0; 4]), out),
        }
    }
}

/// XML whitespace only (space, tab, CR, LF), or empty.
pub fn is_xml_whitespace(s: &str) -> bool {
    s.bytes().all(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
}

/// Reads child elements in schema order.
#[derive(Debug)]
pub struct Children<'a> {
    parent: &'a Element,
    pos: usize,
}

impl<'a> Children<'a> {
    fn peek(&self) -> Option<&'a Element> {
        self.parent.children.get(self.pos)
    }

    /// Whether the next child is `{ns}name`.
    pub fn next_is(&self, ns: Option<&str>, name: &str) -> bool {
        self.peek().is_some_and(|e| e.is(ns, name))
    }

    /// The next child if it is `{ns}name`.
    pub fn optional(&mut self, ns: Option<&str>, name: &str) -> Option<&'a Element> {
        let e = self.peek().filter(|e| e.is(ns, name))?;
        self.pos += 1;
        Some(e)
    }

    /// The next child, which must be `{ns}name`.
    pub fn required(&mut self, ns: Option<&str>, name: &str) -> Result<&'a Element, Error> {
        self.optional(ns, name).ok_or_else(|| {
            let want = Element::new(ns, name).qname();
            match self.peek() {
                Some(e) => schema(format!(
                    "in {}: expected {want}, found {}",
                    self.parent.qname(),
                    e.qname()
                )),
                None => schema(format!("in {}: missing {want}", self.parent.qname())),
            }
        })
    }

    /// All consecutive next children named `{ns}name` (0..n).
    pub fn many(&mut self, ns: Option<&str>, name: &str) -> Vec<&'a Element> {
        let mut v = Vec::new();
        while let Some(e) = self.optional(ns, name) {
            v.push(e);
        }
        v
    }

    /// All consecutive next children named `{ns}name`, at least one.
    pub fn many1(&mut self, ns: Option<&str>, name: &str) -> Result<Vec<&'a Element>, Error> {
        let first = self.required(ns, name)?;
        let mut v = vec![first];
        v.extend(self.many(ns, name));
        Ok(v)
    }

    /// The children not read yet.
    pub fn rest(&mut self) -> &'a [Element] {
        let r = &self.parent.children[self.pos..];
        self.pos = self.parent.children.len();
        r
    }

    /// Requires that every child was read.
    pub fn finish(self) -> Result<(), Error> {
        match self.peek() {
            None => Ok(()),
            Some(e) => Err(schema(format!(
                "unexpected {} in {}",
                e.qname(),
                self.parent.qname()
            ))),
        }
    }
}

/// Parses a document into its root element with the default [`Limits`].
pub fn parse(input: &[u8]) -> Result<Element, Error> {
    parse_with(input, &Limits::default())
}

fn malformed(e: impl std::fmt::Display) -> Error {
    Error::MalformedXml(e.to_string())
}

fn utf8(b: &[u8]) -> Result<&str, Error> {
    std::str::from_utf8(b).map_err(|_| malformed("invalid UTF-8"))
}

/// XML 1.0's `NameStartChar`, less the colon (Namespaces in XML's `NCName`).
fn is_name_start(c: char) -> bool {
    matches!(c,
        'A'..='Z' | '_' | 'a'..='z' | '\u{C0}'..='\u{D6}' | '\u{D8}'..='\u{F6}'
        | '\u{F8}'..='\u{2FF}' | '\u{370}'..='\u{37D}' | '\u{37F}'..='\u{1FFF}'
        | '\u{200C}'..='\u{200D}' | '\u{2070}'..='\u{218F}' | '\u{2C00}'..='\u{2FEF}'
        | '\u{3001}'..='\u{D7FF}' | '\u{F900}'..='\u{FDCF}' | '\u{FDF0}'..='\u{FFFD}'
        | '\u{10000}'..='\u{EFFFF}')
}

/// XML 1.0's `NameChar`, less the colon.
fn is_name_char(c: char) -> bool {
    is_name_start(c)
        || matches!(c,
            '-' | '.' | '0'..='9' | '\u{B7}' | '\u{300}'..='\u{36F}' | '\u{203F}'..='\u{2040}')
}

/// Requires an element or attribute name to be a QName (`prefix:local` or `local`, each
/// part an NCName). quick-xml takes any run of bytes up to white space, `/` or `>` as a
/// name (an empty one, `a&b`, `'x'`), which could not be written back and which another
/// reader would refuse.
fn qname(raw: &[u8], what: &str) -> Result<(), Error> {
    let name = utf8(raw)?;
    let ncname = |s: &str| {
        let mut chars = s.chars();
        chars.next().is_some_and(is_name_start) && chars.all(is_name_char)
    };
    let ok = match name.split_once(':') {
        Some((prefix, local)) => ncname(prefix) && ncname(local),
        None => ncname(name),
    };
    if ok {
        Ok(())
    } else {
        Err(malformed(format!("{what} name {name:?} is not a QName")))
    }
}

fn resolved(r: ResolveResult<'_>) -> Result<Option<String>, Error> {
    match r {
        ResolveResult::Unbound => Ok(None),
        ResolveResult::Bound(ns) => {
            // quick-xml binds a prefix to the declaration's value as written; the namespace
            // name is that value with its references replaced (`urn:a&amp;b` is `urn:a&b`),
            // as in `Element::ns_decls` and as any other XML reader sees it.
            let ns = quick_xml::escape::unescape(utf8(ns.as_ref())?).map_err(malformed)?;
            // An empty default-namespace declaration undeclares it.
            Ok((!ns.is_empty()).then(|| ns.into_owned()))
        }
        ResolveResult::Unknown(p) => Err(malformed(format!(
            "unbound namespace prefix {:?}",
            String::from_utf8_lossy(&p)
        ))),
    }
}

/// Parses a document into its root element.
pub fn parse_with(input: &[u8], limits: &Limits) -> Result<Element, Error> {
    if input.len() > limits.max_size {
        return Err(Error::TooLarge {
            what: "document size",
            limit: limits.max_size,
        });
    }
    let input = input.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(input);
    // quick-xml strips a byte order mark too: a second one would vanish unseen, and what
    // follows it (an XML declaration) be taken for the document's start. It is a
    // character before the root element, which XML does not allow.
    if input.starts_with(b"\xEF\xBB\xBF") {
        return Err(malformed(
            "a second byte order mark (U+FEFF) before the root element",
        ));
    }
    let text = utf8(input)?;
    let mut reader = NsReader::from_str(text);
    {
        let c = reader.config_mut();
        c.expand_empty_elements = true;
        c.check_end_names = true;
        c.check_comments = true;
        c.trim_text(false);
    }
    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<Element> = None;
    let mut elements = 0usize;
    let mut namespaces = 0usize;
    let mut first = true;
    loop {
        let (res, ev) = reader.read_resolved_event().map_err(malformed)?;
        let was_first = std::mem::replace(&mut first, false);
        match ev {
            Event::Decl(d) => {
                if !was_first {
                    return Err(malformed("XML declaration not at the start"));
                }
                if let Some(encoding) = declaration(&d)? {
                    if !encoding.eq_ignore_ascii_case("utf-8") {
                        return Err(malformed("only UTF-8 documents are accepted"));
                    }
                }
            }
            Event::DocType(_) => return Err(Error::ForbiddenXml("DOCTYPE (DTD)".into())),
            Event::PI(_) => {
                return Err(Error::ForbiddenXml("processing instruction".into()));
            }
            Event::Comment(_) => {}
            Event::Start(s) => {
                if root.is_some() {
                    return Err(malformed("content after the root element"));
                }
                if stack.len() >= limits.max_depth {
                    return Err(Error::TooLarge {
                        what: "element depth",
                        limit: limits.max_depth,
                    });
                }
                elements += 1;
                if elements > limits.max_elements {
                    return Err(Error::TooLarge {
                        what: "element count",
                        limit: limits.max_elements,
                    });
                }
                qname(s.name().as_ref(), "element")?;
                let ns = resolved(res)?;
                // `<xmlns:a/>`: quick-xml gives the element the namespace of namespace
                // declarations, which no element may have (Namespaces in XML 1.0 §3) and
                // no document can declare for it.
                if ns.as_deref() == Some(XMLNS_NS) {
                    return Err(malformed("an element name with the prefix xmlns"));
                }
                let mut el = Element::with_ns(ns, utf8(s.local_name().as_ref())?.to_owned());
                // Counted before any attribute is resolved, each resolution scanning them.
                let declared = s
                    .attributes()
                    .with_checks(false)
                    .filter(|a| {
                        a.as_ref()
                            .is_ok_and(|a| a.key.as_namespace_binding().is_some())
                    })
                    .count();
                if declared > limits.max_element_namespaces {
                    return Err(Error::TooLarge {
                        what: "namespace declarations on one element",
                        limit: limits.max_element_namespaces,
                    });
                }
                namespaces += declared;
                if namespaces > limits.max_document_namespaces {
                    return Err(Error::TooLarge {
                        what: "namespace declarations in the document",
                        limit: limits.max_document_namespaces,
                    });
                }
                for (i, a) in s.attributes().enumerate() {
                    if i >= limits.max_attributes {
                        return Err(Error::TooLarge {
                            what: "attributes on one element",
                            limit: limits.max_attributes,
                        });
                    }
                    let a = a.map_err(malformed)?;
                    qname(a.key.as_ref(), "attribute")?;
                    if a.value.len() > limits.max_text {
                        return Err(Error::TooLarge {
                            what: "attribute value",
                            limit: limits.max_text,
                        });
                    }
                    // XML 1.0 §3.1: no `<` in an attribute value (quick-xml takes it).
                    if a.value.contains(&b'<') {
                        return Err(malformed("a '<' in an attribute value"));
                    }
                    let value = a.unescape_value().map_err(malformed)?.into_owned();
                    xml_chars(&value, "an attribute value")?;
                    if let Some(b) = a.key.as_namespace_binding() {
                        let prefix = match b {
                            quick_xml::name::PrefixDeclaration::Default => String::new(),
                            quick_xml::name::PrefixDeclaration::Named(p) => utf8(p)?.to_owned(),
                        };
                        // quick-xml checks the reserved namespaces against the value as
                        // written; `…/xmlns&#x2F;` names the same namespace.
                        let reserved = match (prefix.as_str(), value.as_str()) {
                            ("xml", XML_NS) => false,
                            ("xml" | "xmlns", _) | (_, XML_NS | XMLNS_NS) => true,
                            _ => false,
                        };
                        if reserved {
                            return Err(malformed(format!(
                                "prefix {prefix:?} may not be bound to {value:?}"
                            )));
                        }
                        el.ns_decls.push((prefix, value));
                        continue;
                    }
                    let (ares, local) = reader.resolve_attribute(a.key);
                    let attr = Attr {
                        ns: resolved(ares)?,
                        name: utf8(local.as_ref())?.to_owned(),
                        value,
                    };
                    // Two prefixes bound to one namespace make two spellings of one
                    // attribute (`a:mustUnderstand="0" b:mustUnderstand="1"`), which
                    // quick-xml, comparing spellings, lets through; readers would disagree
                    // on which counts (Namespaces in XML 1.0 §6.3 forbids it).
                    if el
                        .attrs
                        .iter()
                        .any(|b| b.ns == attr.ns && b.name == attr.name)
                    {
                        return Err(malformed(format!(
                            "attribute {} given twice",
                            Element::new(attr.ns.as_deref(), &attr.name).qname()
                        )));
                    }
                    el.attrs.push(attr);
                }
                stack.push(el);
            }
            Event::End(_) => {
                let el = stack
                    .pop()
                    .ok_or_else(|| malformed("end tag without start tag"))?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(el),
                    None => root = Some(el),
                }
            }
            Event::Text(t) => {
                let s = t.unescape().map_err(malformed)?;
                xml_chars(&s, "text")?;
                append_text(&mut stack, &s, limits)?;
            }
            Event::CData(c) => {
                let s = utf8(c.as_ref())?.to_owned();
                xml_chars(&s, "CDATA")?;
                if stack.is_empty() {
                    return Err(malformed("CDATA outside the root element"));
                }
                append_text(&mut stack, &s, limits)?;
            }
            Event::Empty(_) => return Err(malformed("unexpanded empty element")),
            Event::Eof => {
                if !stack.is_empty() {
                    return Err(malformed("truncated document: unclosed elements"));
                }
                return root.ok_or_else(|| malformed("no root element"));
            }
        }
    }
}

/// Checks an XML declaration as XML 1.0 writes it (§2.8: `version`, then `encoding` and
/// `standalone` if present, in that order, nothing else; a version `1.` and digits,
/// `standalone` yes or no) and returns its encoding, if it names one (pure). quick-xml
/// reads any attributes there; other readers refuse such a declaration.
fn declaration(raw: &[u8]) -> Result<Option<String>, Error> {
    let text = utf8(raw)?;
    let mut rest = text.strip_prefix("xml").unwrap_or(text);
    let mut seen: Vec<(&str, &str)> = Vec::new();
    loop {
        let trimmed = rest.trim_start_matches([' ', '\t', '\r', '\n']);
        if trimmed.is_empty() {
            break;
        }
        if trimmed.len() == rest.len() {
            return Err(malformed(
                "XML declaration: pseudo-attributes must be separated by white space",
            ));
        }
        let (name, after) = trimmed
            .split_once('=')
            .ok_or_else(|| malformed("XML declaration: a pseudo-attribute without a value"))?;
        let after = after.trim_start_matches([' ', '\t', '\r', '\n']);
        let quote = after
            .chars()
            .next()
            .filter(|q| matches!(q, '"' | '\''))
            .ok_or_else(|| malformed("XML declaration: a value not in quotes"))?;
        let (value, tail) = after[1..]
            .split_once(quote)
            .ok_or_else(|| malformed("XML declaration: an unclosed value"))?;
        seen.push((name.trim_end_matches([' ', '\t', '\r', '\n']), value));
        rest = tail;
    }
    let names: Vec<&str> = seen.iter().map(|(n, _)| *n).collect();
    let in_order = matches!(
        names.as_slice(),
        ["version"]
            | ["version", "encoding"]
            | ["version", "standalone"]
            | ["version", "encoding", "standalone"]
    );
    if !in_order {
        return Err(malformed(format!(
            "XML declaration: pseudo-attributes {names:?} (version, then encoding and \
             standalone if present)"
        )));
    }
    let mut encoding = None;
    for (name, value) in seen {
        let ok = match name {
            "version" => value
                .strip_prefix("1.")
                .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit())),
            "encoding" => {
                let mut b = value.bytes();
                b.next().is_some_and(|c| c.is_ascii_alphabetic())
                    && b.all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
            }
            _ => matches!(value, "yes" | "no"),
        };
        if !ok {
            return Err(malformed(format!("XML declaration: {name} {value:?}")));
        }
        if name == "encoding" {
            encoding = Some(value.to_owned());
        }
    }
    Ok(encoding)
}

/// Requires XML 1.0's `Char` (§2.2) of every character, written or referenced (`&#1;`):
/// control characters other than tab, line feed and carriage return, and U+FFFE/U+FFFF,
/// are not XML; quick-xml takes them, other readers refuse them.
fn xml_chars(s: &str, what: &str) -> Result<(), Error> {
    let bad = s.chars().find(|&c| {
        !matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
    });
    match bad {
        None => Ok(()),
        Some(c) => Err(malformed(format!(
            "{what} holds U+{:04X}, not an XML character",
            u32::from(c)
        ))),
    }
}

fn append_text(stack: &mut [Element], s: &str, limits: &Limits) -> Result<(), Error> {
    match stack.last_mut() {
        None if is_xml_whitespace(s) => Ok(()),
        None => Err(malformed("text outside the root element")),
        Some(el) => {
            if el.text.len() + s.len() > limits.max_text {
                return Err(Error::TooLarge {
                    what: "element text",
                    limit: limits.max_text,
                });
            }
            el.text.push_str(s);
            Ok(())
        }
    }
}

/// Decodes `xs:base64Binary` text: padded standard base64, XML whitespace anywhere ignored
/// (senders wrap lines). The result is wiped on drop.
pub fn decode_base64(text: &str, what: &str) -> Result<Zeroizing<Vec<u8>>, Error> {
    // Room for all of it from the start: growing would leave copies of the text behind.
    let mut compact = Zeroizing::new(String::with_capacity(text.len()));
    compact.extend(
        text.chars()
            .filter(|c| !matches!(c, ' ' | '\t' | '\r' | '\n')),
    );
    base64::engine::general_purpose::STANDARD
        .decode(compact.as_bytes())
        .map(Zeroizing::new)
        .map_err(|e| schema(format!("{what}: invalid base64 ({e})")))
}

/// Encodes bytes as `xs:base64Binary` text (one line).
pub fn encode_base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The text of a leaf element, decoded from base64 (see [`decode_base64`]).
pub fn base64_leaf(e: &Element) -> Result<Zeroizing<Vec<u8>>, Error> {
    decode_base64(e.leaf_text()?, &e.name)
}

/// The text of a leaf element, which must be non-empty after trimming (xs:string fields
/// that identify something); returned trimmed.
pub fn nonempty_leaf(e: &Element) -> Result<&str, Error> {
    let t = e
        .leaf_text()?
        .trim_matches(|c| matches!(c, ' ' | '\t' | '\r' | '\n'));
    if t.is_empty() {
        return Err(schema(format!("{} must not be empty", e.name)));
    }
    Ok(t)
}

/// Requires an empty element (no children, whitespace text only), e.g. `DeletionStrategy`.
pub fn empty_element(e: &Element) -> Result<(), Error> {
    if !e.children.is_empty() || !is_xml_whitespace(&e.text) {
        return Err(schema(format!("{} must be empty", e.name)));
    }
    Ok(())
}
