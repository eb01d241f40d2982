//! ETKDepot SOAP (§4.1) and REST JSON (§4.2) messages.

use etee_services::etkdepot::rest::IdentifierJson;
use etee_services::etkdepot::{
    EtkDepotError, EtkJson, EtkResult, GetEtkRequest, GetEtkResponse, Identifier, MatchingEtk,
    Problem, Status,
};
use etee_services::soap::LangString;
use etee_services::{xml, Error};

#[test]
fn spec_request_example_verbatim() {
    let doc = br#"<GetEtkRequest xmlns="urn:be:fgov:ehealth:etkdepot:1_0:protocol">
  <SearchCriteria>
    <Identifier><Type>CBE</Type><Value>0809394427</Value><ApplicationID>KGSS</ApplicationID></Identifier>  <!-- 1..n, ApplicationID optional -->
  </SearchCriteria>
</GetEtkRequest>"#;
    let r = GetEtkRequest::from_element(&xml::parse(doc).unwrap()).unwrap();
    assert_eq!(
        r.identifiers,
        vec![Identifier::new("CBE", "0809394427", Some("KGSS"))]
    );
}

#[test]
fn request_round_trip_and_prefixes() {
    let r = GetEtkRequest {
        identifiers: vec![
            Identifier::new("SSIN", "76120902527", None),
            Identifier::new("NIHII-PHARMACY", "27150201", Some("APP & <co>")),
        ],
    };
    let x = r.to_xml();
    assert_eq!(GetEtkRequest::parse(&x).unwrap(), r);

    let hand = br#"<?xml version="1.0" encoding="UTF-8"?>
<SOAP-ENV:Envelope xmlns:SOAP-ENV="http://schemas.xmlsoap.org/soap/envelope/">
 <SOAP-ENV:Header/>
 <SOAP-ENV:Body>
  <ns2:GetEtkRequest xmlns:ns2="urn:be:fgov:ehealth:etkdepot:1_0:protocol">
   <ns2:SearchCriteria>
    <Identifier xmlns="urn:be:fgov:ehealth:etkdepot:1_0:protocol">
      <Type>SSIN</Type><Value> 76120902527 </Value>
    </Identifier>
   </ns2:SearchCriteria>
  </ns2:GetEtkRequest>
 </SOAP-ENV:Body>
</SOAP-ENV:Envelope>"#;
    let p = GetEtkRequest::parse(hand).unwrap();
    assert_eq!(
        p.identifiers,
        vec![Identifier::new("SSIN", "76120902527", None)]
    );
}

/// Each identifier is a store lookup: more than `MAX_IDENTIFIERS` in one request is a
/// content error (SOA-03007), refused before any is read.
#[test]
fn a_request_takes_at_most_ten_identifiers() {
    use etee_services::etkdepot::MAX_IDENTIFIERS;
    use etee_services::soap::SoaCode;
    assert_eq!(MAX_IDENTIFIERS, 10);
    let request = |n: usize| GetEtkRequest {
        identifiers: (0..n)
            .map(|i| Identifier::new("SSIN", &format!("{i:011}"), None))
            .collect(),
    };
    let ten = request(MAX_IDENTIFIERS);
    assert_eq!(GetEtkRequest::parse(&ten.to_xml()).unwrap(), ten);
    for n in [MAX_IDENTIFIERS + 1, 3300] {
        let e = GetEtkRequest::parse(&request(n).to_xml()).unwrap_err();
        assert!(
            matches!(&e, Error::Content(why) if why.contains(&format!("{n} identifiers"))
                && why.contains("at most 10")),
            "{e:?}"
        );
        assert_eq!(e.soa_code(), SoaCode::ContentValidation);
    }
}

#[test]
fn request_schema_errors() {
    let wrap = |inner: &str| {
        format!("<s:Envelope xmlns:s='http://schemas.xmlsoap.org/soap/envelope/'><s:Body><GetEtkRequest xmlns='urn:be:fgov:ehealth:etkdepot:1_0:protocol'>{inner}</GetEtkRequest></s:Body></s:Envelope>")
    };
    for inner in [
        "",
        "<SearchCriteria/>",
        "<SearchCriteria><Identifier><Value>1</Value></Identifier></SearchCriteria>",
        "<SearchCriteria><Identifier><Value>1</Value><Type>CBE</Type></Identifier></SearchCriteria>",
        "<SearchCriteria><Identifier><Type>CBE</Type><Value></Value></Identifier></SearchCriteria>",
        "<SearchCriteria><Identifier><Type>CBE</Type><Value>1</Value><Extra/></Identifier></SearchCriteria>",
        "<SearchCriteria><Identifier><Type>CBE</Type><Value>1</Value></Identifier></SearchCriteria><SearchCriteria/>",
        "<SearchCriteria><Identifier xmlns=''><Type>CBE</Type><Value>1</Value></Identifier></SearchCriteria>",
        "<SearchCriteria>text<Identifier><Type>CBE</Type><Value>1</Value></Identifier></SearchCriteria>",
        "<SearchCriteria><Identifier><Type><b/></Type><Value>1</Value></Identifier></SearchCriteria>",
    ] {
        let e = GetEtkRequest::parse(wrap(inner).as_bytes()).unwrap_err();
        assert!(matches!(e, Error::Schema(_)), "{inner}: {e:?}");
    }
}

#[test]
fn identifier_normalisation() {
    let i = Identifier::new("CBE", "809394427", Some("KGSS"));
    assert_eq!(i.normalized().unwrap().value, "0809394427");
    assert!(matches!(
        Identifier::new("FOO", "1", None).normalized(),
        Err(Error::Content(_))
    ));
}

#[test]
fn identifier_type_names_are_canonical() {
    // SOAP sends the type as the caller wrote it: the lookup uses the §3.4 name.
    for (given, canonical) in [
        ("cbe", "CBE"),
        ("Nihii-Pharmacy", "NIHII-PHARMACY"),
        ("HUB", "EHP"),
        ("hub", "EHP"),
        (" SSIN ", "SSIN"),
    ] {
        let n = Identifier::new(given, "1", None).normalized().unwrap();
        assert_eq!(n.id_type, canonical, "{given}");
    }
    let hub = Identifier::new("HUB", "1990001916", Some("X"))
        .normalized()
        .unwrap();
    assert_eq!(hub, Identifier::new("EHP", "1990001916", Some("X")));
    // Values too long for the type are cut as the official connector cuts them.
    assert_eq!(
        Identifier::new("NIHII", "10203040506", None)
            .normalized()
            .unwrap()
            .value,
        "10203040"
    );
}

#[test]
fn empty_application_id_is_not_an_absent_one() {
    let default = Identifier::new("CBE", "0406798006", Some(""));
    let any = Identifier::new("CBE", "0406798006", None);
    assert!(default.wants_no_application() && !any.wants_no_application());
    assert_ne!(default, any);
    // Normalisation keeps the difference.
    assert_eq!(
        Identifier::new("cbe", "406798006", Some(""))
            .normalized()
            .unwrap(),
        default
    );
    assert_eq!(
        Identifier::new("cbe", "406798006", None)
            .normalized()
            .unwrap(),
        any
    );

    // XML: written as an empty element, read back as Some(""); absent stays None.
    let r = GetEtkRequest {
        identifiers: vec![default.clone(), any.clone()],
    };
    let x = r.to_xml();
    let text = String::from_utf8_lossy(&x);
    assert!(
        text.contains("ApplicationID/>") || text.contains("ApplicationID></"),
        "{text}"
    );
    assert_eq!(GetEtkRequest::parse(&x).unwrap(), r);
    let m = response(EtkResult::MatchingEtk(vec![
        MatchingEtk {
            identifiers: vec![default.clone()],
        },
        MatchingEtk {
            identifiers: vec![Identifier::new("CBE", "0406798006", Some("APP-A"))],
        },
    ]));
    assert_eq!(GetEtkResponse::parse(&m.to_xml()).unwrap(), m);

    // By hand, as another client would write it: `<ApplicationID/>`, and a blank one.
    for app in ["<ApplicationID/>", "<ApplicationID> </ApplicationID>"] {
        let doc = format!(
            "<GetEtkRequest xmlns='urn:be:fgov:ehealth:etkdepot:1_0:protocol'><SearchCriteria>\
             <Identifier><Type>CBE</Type><Value>0406798006</Value>{app}</Identifier>\
             </SearchCriteria></GetEtkRequest>"
        );
        let r = GetEtkRequest::from_element(&xml::parse(doc.as_bytes()).unwrap()).unwrap();
        assert_eq!(r.identifiers, vec![default.clone()], "{app}");
    }

    // JSON: "applicationIdentifier": "" both ways; absent stays absent.
    let j = IdentifierJson::from(&default);
    assert_eq!(j.application_identifier.as_deref(), Some(""));
    let e = EtkJson {
        identifiers: vec![j, IdentifierJson::from(&any)],
        etk: vec![1],
        not_before: 0,
        not_after: 1,
    };
    let bytes = EtkJson::list_to_json(std::slice::from_ref(&e));
    let s = String::from_utf8(bytes.clone()).unwrap();
    assert_eq!(
        s.matches("\"applicationIdentifier\":\"\"").count(),
        1,
        "{s}"
    );
    let back = EtkJson::parse_list(&bytes).unwrap();
    assert_eq!(back, vec![e]);
    assert_eq!(Identifier::from(&back[0].identifiers[0]), default);
    assert_eq!(Identifier::from(&back[0].identifiers[1]), any);
}

fn response(result: EtkResult) -> GetEtkResponse {
    GetEtkResponse {
        id: Some("id-1".into()),
        status: Status::ok(),
        given_search_criteria: Some(vec![Identifier::new("CBE", "0809394427", None)]),
        result,
    }
}

#[test]
fn response_round_trips() {
    for r in [
        response(EtkResult::Etk(vec![0x30, 0x80, 1, 2, 3, 0, 0])),
        response(EtkResult::MatchingEtk(vec![
            MatchingEtk {
                identifiers: vec![Identifier::new("CBE", "0809394427", Some("KGSS"))],
            },
            MatchingEtk {
                identifiers: vec![Identifier::new("CBE", "0809394427", Some("OTHER"))],
            },
        ])),
        response(EtkResult::Errors(vec![EtkDepotError {
            code: "NOT_FOUND".into(),
            message: "No ETK".into(),
        }])),
        GetEtkResponse {
            id: None,
            status: Status {
                code: "500".into(),
                messages: vec![
                    LangString {
                        lang: Some("FR".into()),
                        text: "erreur".into(),
                    },
                    LangString {
                        lang: None,
                        text: "error".into(),
                    },
                ],
            },
            given_search_criteria: None,
            result: EtkResult::None,
        },
    ] {
        let x = r.to_xml();
        assert_eq!(GetEtkResponse::parse(&x).unwrap(), r);
    }
    assert!(Status::ok().is_ok());
}

#[test]
fn hand_written_response_with_wrapped_base64() {
    let doc = br#"<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/">
<soapenv:Body>
<p:GetEtkResponse xmlns:p="urn:be:fgov:ehealth:etkdepot:1_0:protocol" xmlns:c="urn:be:fgov:ehealth:commons:1_0:core" Id="_abc">
  <c:Status><Code>200</Code><Message Lang="EN">OK</Message></c:Status>
  <p:ETK>
    AAEC
    AwQF
  </p:ETK>
</p:GetEtkResponse>
</soapenv:Body></soapenv:Envelope>"#;
    let r = GetEtkResponse::parse(doc).unwrap();
    assert_eq!(r.id.as_deref(), Some("_abc"));
    assert!(r.status.is_ok());
    assert_eq!(r.result, EtkResult::Etk(vec![0, 1, 2, 3, 4, 5]));
    assert_eq!(r.status.messages[0].lang.as_deref(), Some("EN"));

    // Status children qualified in the core namespace are wrong (unqualified per XSD).
    let bad = String::from_utf8_lossy(doc).replace("<Code>200</Code>", "<c:Code>200</c:Code>");
    assert!(matches!(
        GetEtkResponse::parse(bad.as_bytes()),
        Err(Error::Schema(_))
    ));
    // A default namespace makes unprefixed Status children qualified: wrong, unless undeclared.
    let default_ns = String::from_utf8_lossy(doc)
        .replace("<p:", "<")
        .replace("</p:", "</")
        .replace("xmlns:p=", "xmlns=");
    assert!(matches!(
        GetEtkResponse::parse(default_ns.as_bytes()),
        Err(Error::Schema(_))
    ));
    let undeclared = default_ns.replace("<c:Status>", "<c:Status xmlns=\"\">");
    assert!(GetEtkResponse::parse(undeclared.as_bytes())
        .unwrap()
        .status
        .is_ok());
    // Bad base64.
    let bad = String::from_utf8_lossy(doc).replace("AwQF", "Aw!F");
    let e = GetEtkResponse::parse(bad.as_bytes()).unwrap_err();
    assert!(matches!(e, Error::Schema(_)), "{e:?}");
    // ETK and MatchingEtk together.
    let bad = String::from_utf8_lossy(doc).replace(
        "</p:ETK>",
        "</p:ETK><p:MatchingEtk><p:Identifier><p:Type>CBE</p:Type><p:Value>1</p:Value></p:Identifier></p:MatchingEtk>",
    );
    assert!(matches!(
        GetEtkResponse::parse(bad.as_bytes()),
        Err(Error::Schema(_))
    ));
}

#[test]
fn etk_json_and_problem() {
    let e = EtkJson {
        identifiers: vec![IdentifierJson {
            id_type: "CBE".into(),
            value: "0809394427".into(),
            application_identifier: Some("KGSS".into()),
        }],
        etk: vec![1, 2, 3],
        not_before: 1_700_000_000,
        not_after: 1_800_000_000,
    };
    let j = EtkJson::list_to_json(std::slice::from_ref(&e));
    let s = String::from_utf8(j.clone()).unwrap();
    assert!(s.contains("\"applicationIdentifier\":\"KGSS\""), "{s}");
    assert!(s.contains("\"notBefore\":\"2023-11-14T22:13:20Z\""), "{s}");
    assert!(s.contains("\"etk\":\"AQID\""), "{s}");
    assert_eq!(EtkJson::parse_list(&j).unwrap(), vec![e]);
    assert!(matches!(
        EtkJson::parse_list(b"[{\"etk\":1}]"),
        Err(Error::Json(_))
    ));

    let p = Problem::no_matching_etk();
    let j = p.to_json();
    assert_eq!(Problem::parse(&j).unwrap(), p);
    let p = Problem::parse(br#"{"title":"x","status":400}"#).unwrap();
    assert_eq!(p.problem_type, "about:blank");
    let from_err = Problem::from_error(&Error::Schema("bad".into()));
    assert_eq!(from_err.status, Some(400));
}

#[test]
fn etk_json_from_generated_etk() {
    use etee_testpki::{InstitutionSpec, TestPki};
    let pki = TestPki::generate("svc").unwrap();
    let inst = pki
        .institution(&InstitutionSpec::new("NIHII-PHARMACY", "27150201", "P"))
        .unwrap();
    let etk = etee_formats::etk::Etk::parse(&inst.etk).unwrap();
    let j = EtkJson::from_etk(&etk);
    assert_eq!(j.identifiers[0].id_type, "NIHII-PHARMACY");
    assert_eq!(j.identifiers[0].value, "27150201");
    assert!(j.not_before < j.not_after);
}
