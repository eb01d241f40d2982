//! SOA faults (§7).

use etee_services::soap::{
    self, Environment, ErrorKind, Fault, FaultCode, LangString, SoaCode, SoaError,
};
use etee_services::Error;

#[test]
fn codes() {
    assert_eq!(SoaCode::ALL.len(), 12);
    for c in SoaCode::ALL {
        assert_eq!(SoaCode::from_code(c.code()), Some(*c));
    }
    let retry: Vec<_> = SoaCode::ALL
        .iter()
        .filter(|c| c.is_retryable())
        .map(|c| c.code())
        .collect();
    assert_eq!(retry, ["SOA-00001", "SOA-01001", "SOA-01002", "SOA-02001"]);
    assert_eq!(SoaCode::MalformedMessage.message(), "Malformed message");
    assert_eq!(SoaCode::MustBeSoap.message(), "Message must be SOAP");
}

#[test]
fn fault_round_trip() {
    let f = Fault::from_code(SoaCode::XsdCompliance, Some(Environment::Acceptation));
    assert_eq!(f.fault_code, FaultCode::Client);
    let x = f.to_xml();
    let s = String::from_utf8(x.clone()).unwrap();
    assert!(s.contains("<faultcode>soap:Client</faultcode>"), "{s}");
    // Environment is declared by the SOA schema (qualified, elementFormDefault
    // qualified); the core fields (Origin, Code, Message) are not.
    let doc = element_names(&s);
    assert!(
        doc.contains(&(
            "urn:be:fgov:ehealth:errors:soa:v1".to_owned(),
            "Environment".to_owned()
        )),
        "{s}"
    );
    assert!(doc.contains(&(String::new(), "Code".to_owned())), "{s}");
    assert!(s.contains("xml:lang=\"en\""), "{s}");
    assert_eq!(Fault::parse(&x).unwrap(), f);
    assert_eq!(f.soa_code(), Some(SoaCode::XsdCompliance));

    let server = Fault::from_code(SoaCode::ServiceUnavailable, None);
    assert_eq!(server.fault_code, FaultCode::Server);
    assert_eq!(Fault::parse(&server.to_xml()).unwrap(), server);

    let business = Fault {
        fault_code: FaultCode::Client,
        fault_string: "denied".into(),
        detail: Some(SoaError {
            kind: ErrorKind::BusinessError,
            id: Some("err-1".into()),
            origin: "Server".into(),
            code: "KGSS-ACCESS".into(),
            messages: vec![
                LangString {
                    lang: Some("en".into()),
                    text: "no".into(),
                },
                LangString {
                    lang: Some("fr".into()),
                    text: "non".into(),
                },
            ],
            retry: Some(false),
            contact: Some("servicedesk".into()),
            environment: Some(Environment::Production),
        }),
    };
    assert_eq!(Fault::parse(&business.to_xml()).unwrap(), business);
}

#[test]
fn fault_from_error() {
    let e = Error::MalformedXml("boom".into());
    let f = Fault::from_error(&e, None);
    assert_eq!(f.soa_code(), Some(SoaCode::MalformedMessage));
    assert!(f.detail.unwrap().messages[0].text.contains("boom"));
    assert_eq!(f.fault_code, FaultCode::Client);
}

/// A SOAP 1.2 envelope: `soap:VersionMismatch` (SOAP 1.1 §4.4.1), the SOA detail still
/// SOA-03002; an envelope that is not SOAP at all stays a `soap:Client` fault.
#[test]
fn a_soap12_envelope_is_a_version_mismatch() {
    let soap12 = br#"<env:Envelope xmlns:env="http://www.w3.org/2003/05/soap-envelope"><env:Body><a/></env:Body></env:Envelope>"#;
    let e = soap::parse_request(soap12).unwrap_err();
    assert!(matches!(e, Error::SoapVersion(_)), "{e:?}");
    let f = Fault::from_error(&e, Some(Environment::Test));
    assert_eq!(f.fault_code, FaultCode::VersionMismatch);
    assert_eq!(f.soa_code(), Some(SoaCode::MustBeSoap));
    let x = String::from_utf8(f.to_xml()).unwrap();
    assert!(
        x.contains("<faultcode>soap:VersionMismatch</faultcode>"),
        "{x}"
    );
    assert_eq!(Fault::parse(x.as_bytes()).unwrap(), f);

    let e = soap::parse_request(b"<GetEtkRequest/>").unwrap_err();
    let f = Fault::from_error(&e, None);
    assert_eq!(f.fault_code, FaultCode::Client);
    assert_eq!(f.soa_code(), Some(SoaCode::MustBeSoap));
}

/// Which header blocks a service must refuse: any addressed to it and marked
/// `mustUnderstand`, except WS-Security's `Security` (2004 namespace), which is understood
/// (accepted, noted in `security_header`), whatever its content.
#[test]
fn only_the_wss_security_header_is_understood() {
    let request = |header: &str| {
        soap::parse_request(
            format!(
                "<s:Envelope xmlns:s='http://schemas.xmlsoap.org/soap/envelope/'>\
                 <s:Header>{header}</s:Header><s:Body><a/></s:Body></s:Envelope>"
            )
            .as_bytes(),
        )
        .unwrap()
    };
    let wsse = soap::WSSE_NS;
    let r = request(&format!(
        "<o:Security s:mustUnderstand='1' xmlns:o='{wsse}'><u:Timestamp \
         xmlns:u='urn:u'><u:Created>x</u:Created></u:Timestamp></o:Security>"
    ));
    assert_eq!(r.not_understood, None);
    assert!(r.security_header);
    // Another mustUnderstand block beside it is still refused.
    let r = request(&format!(
        "<o:Security s:mustUnderstand='1' xmlns:o='{wsse}'/>\
         <a:Action s:mustUnderstand='1' xmlns:a='http://www.w3.org/2005/08/addressing'>x</a:Action>"
    ));
    assert_eq!(
        r.not_understood.as_deref(),
        Some("{http://www.w3.org/2005/08/addressing}Action")
    );
    // A Security block of another namespace is not understood.
    let r = request("<o:Security s:mustUnderstand='1' xmlns:o='urn:not-wss'/>");
    assert_eq!(r.not_understood.as_deref(), Some("{urn:not-wss}Security"));
    assert!(!r.security_header);
    // One for another actor is not for the service at all.
    let r = request(&format!(
        "<o:Security s:mustUnderstand='1' s:actor='urn:gateway' xmlns:o='{wsse}'/>"
    ));
    assert_eq!(r.not_understood, None);
    assert!(!r.security_header);
}

/// (namespace, local name) of every element of `xml`, read with our own parser.
fn element_names(xml: &str) -> Vec<(String, String)> {
    fn walk(e: &etee_services::xml::Element, out: &mut Vec<(String, String)>) {
        out.push((e.ns.clone().unwrap_or_default(), e.name.clone()));
        for c in &e.children {
            walk(c, out);
        }
    }
    let root = etee_services::xml::parse(xml.as_bytes()).unwrap();
    let mut out = Vec::new();
    walk(&root, &mut out);
    out
}

/// A fault as eHealth's services write it: `Environment` qualified in the SOA namespace
/// (the unqualified form, which our platform wrote before, is read too).
#[test]
fn a_qualified_environment_is_read() {
    let doc = br#"<S:Envelope xmlns:S="http://schemas.xmlsoap.org/soap/envelope/"><S:Body>
  <S:Fault><faultcode>S:Server</faultcode><faultstring>SOA-02001</faultstring><detail>
    <ns4:SystemError xmlns:ns4="urn:be:fgov:ehealth:errors:soa:v1" Id="X">
     <Origin>Server</Origin><Code>SOA-02001</Code>
     <Message xml:lang="en">Service not available. Please contact service desk</Message>
     <ns4:Environment>Production</ns4:Environment>
    </ns4:SystemError></detail></S:Fault></S:Body></S:Envelope>"#;
    let f = Fault::parse(doc).unwrap();
    assert_eq!(f.soa_code(), Some(SoaCode::ServiceUnavailable));
    assert_eq!(f.detail.unwrap().environment, Some(Environment::Production));
}

#[test]
fn hand_written_fault_with_other_prefix() {
    let doc = br#"<S:Envelope xmlns:S="http://schemas.xmlsoap.org/soap/envelope/">
 <S:Body>
  <S:Fault>
   <faultcode>S:Server</faultcode>
   <faultstring>SOA-02001</faultstring>
   <detail>
    <ns4:SystemError xmlns:ns4="urn:be:fgov:ehealth:errors:soa:v1" Id="UNIQUE_ID">
     <Origin>Server</Origin><Code>SOA-02001</Code>
     <Message xml:lang="en">Service not available. Please contact service desk</Message>
     <Environment>Production</Environment>
    </ns4:SystemError>
   </detail>
  </S:Fault>
 </S:Body>
</S:Envelope>"#;
    let f = Fault::parse(doc).unwrap();
    assert_eq!(f.fault_code, FaultCode::Server);
    assert_eq!(f.soa_code(), Some(SoaCode::ServiceUnavailable));
    assert!(f.soa_code().unwrap().is_retryable());
    let d = f.detail.unwrap();
    assert_eq!(d.id.as_deref(), Some("UNIQUE_ID"));
    assert_eq!(d.retry, None);

    // A faultcode prefix that is not bound is a schema error.
    let bad = String::from_utf8_lossy(doc).replace("S:Server</faultcode>", "x:Server</faultcode>");
    assert!(matches!(
        Fault::parse(bad.as_bytes()),
        Err(Error::Schema(_))
    ));
    // An unknown environment too.
    let bad = String::from_utf8_lossy(doc).replace(">Production<", ">Prod<");
    assert!(matches!(
        Fault::parse(bad.as_bytes()),
        Err(Error::Schema(_))
    ));
    // A body that is not a fault.
    let e = Fault::from_element(
        &soap::parse_envelope(&soap::envelope(etee_services::xml::Element::new(None, "x")))
            .unwrap(),
    );
    assert!(matches!(e, Err(Error::Schema(_))));
}

/// Found by the `soap` round trip on the seed `fault-foreign.xml` (and by `fuzz_smoke` on
/// its mutations): a fault whose code is not one of SOAP's four (`S:Client.Auth`, a foreign
/// namespace's), read as `{ns}local`, was written
/// with that text as the code, which no reader takes for a QName; writing it and reading it
/// back failed ("unbound prefix"). Now the code gets a prefix declared on `faultcode`.
#[test]
fn fault_with_another_code_is_written_readably() {
    let soap11 = |code: &str, decl: &str| {
        format!(
            r#"<S:Envelope xmlns:S="http://schemas.xmlsoap.org/soap/envelope/"><S:Body><S:Fault><faultcode{decl}>{code}</faultcode><faultstring/></S:Fault></S:Body></S:Envelope>"#
        )
        .into_bytes()
    };
    for (input, want) in [
        (
            soap11("S:Client.Auth", ""),
            format!("{{{}}}Client.Auth", soap::SOAP11_NS),
        ),
        (
            soap11("x:Oops", r#" xmlns:x="urn:x}y""#),
            "{urn:x}y}Oops".to_owned(),
        ),
        (soap11("Plain", ""), "Plain".to_owned()),
    ] {
        let f = Fault::parse(&input).unwrap();
        assert_eq!(f.fault_code, FaultCode::Other(want));
        let written = f.to_xml();
        assert_eq!(
            Fault::parse(&written).as_ref(),
            Ok(&f),
            "{}",
            String::from_utf8_lossy(&written)
        );
    }
    // A faultcode that is no QName (its parts are NCNames) is a schema error.
    for bad in ["S:a}b", "S:a:b", ":Client", "S:", "S:a b"] {
        assert!(
            matches!(Fault::parse(&soap11(bad, "")), Err(Error::Schema(_))),
            "{bad}"
        );
    }
}
