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
