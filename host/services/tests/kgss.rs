//! KGSS outer and inner messages (§5.1) and access evaluation.

use etee_formats::identity::Identity;
use etee_services::kgss::vocabulary::{self, *};
use etee_services::kgss::{
    evaluate, implicit_attributes, Attribute, Credential, Decision, EteeError, EteeStatus,
    GetKeyRequestContent, GetKeyResponseContent, GetNewKeyRequestContent, GetNewKeyResponseContent,
    KgssRequest, KgssResponse, Operation, ReplyTo,
};
use etee_services::soap::LangString;
use etee_services::{Error, SecretBytes};

const K: &str = "urn:be:fgov:ehealth:etee:kgss:1_0:protocol";

#[test]
fn outer_round_trips() {
    for op in [Operation::GetNewKey, Operation::GetKey] {
        let req = KgssRequest {
            operation: op,
            sealed_content: vec![0x30, 0x80, 9, 9],
        };
        assert_eq!(KgssRequest::parse(&req.to_xml()).unwrap(), req);

        let ok = KgssResponse::ok(op, vec![1, 2, 3]);
        assert!(ok.is_success());
        assert_eq!(KgssResponse::parse(&ok.to_xml()).unwrap(), ok);

        let failed = KgssResponse {
            operation: op,
            id: Some("id".into()),
            status: EteeStatus {
                code: "400".into(),
                message: None,
            },
            errors: vec![EteeError {
                code: "E1".into(),
                messages: vec![LangString {
                    lang: Some("EN".into()),
                    text: "denied".into(),
                }],
            }],
            sealed_content: None,
        };
        assert!(!failed.is_success());
        assert_eq!(KgssResponse::parse(&failed.to_xml()).unwrap(), failed);
    }
    let s = String::from_utf8(
        KgssRequest {
            operation: Operation::GetNewKey,
            sealed_content: vec![1],
        }
        .to_xml(),
    )
    .unwrap();
    assert!(s.contains("kgss:GetNewKeyRequest"), "{s}");
    assert!(
        s.contains("kgss:SealedNewKeyRequest><kgss:SealedContent>AQ=="),
        "{s}"
    );
}

#[test]
fn hand_written_outer_response() {
    let doc = format!(
        r#"<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body>
<GetKeyResponse xmlns="{K}" Id="x1">
  <Status xmlns=""><Code>100</Code><Message>Success</Message></Status>
  <SealedKeyResponse><SealedContent>AAEC
AwQ=</SealedContent></SealedKeyResponse>
</GetKeyResponse></soap:Body></soap:Envelope>"#
    );
    let r = KgssResponse::parse(doc.as_bytes()).unwrap();
    assert_eq!(r.operation, Operation::GetKey);
    assert!(r.is_success());
    assert_eq!(r.sealed_content, Some(vec![0, 1, 2, 3, 4]));
    // Qualified Status (not per XSD) is refused.
    let q = doc.replace("<Status xmlns=\"\">", "<Status>");
    assert!(matches!(
        KgssResponse::parse(q.as_bytes()),
        Err(Error::Schema(_))
    ));
    // Wrong sealed element for the operation.
    let w = doc.replace("SealedKeyResponse", "SealedNewKeyResponse");
    assert!(matches!(
        KgssResponse::parse(w.as_bytes()),
        Err(Error::Schema(_))
    ));
}

fn new_key_request() -> GetNewKeyRequestContent {
    GetNewKeyRequestContent {
        allowed_readers: vec![
            vocabulary::recognised_pharmacy(),
            vocabulary::patient("76120902527"),
        ],
        excluded_readers: vec![Credential::new(CERTIFIED_NS, DOCTOR_NIHII11, &[])],
        etk: vec![0x30, 0x80, 0, 0],
        deletion_strategy: true,
    }
}

#[test]
fn inner_round_trips() {
    let r = new_key_request();
    let x = r.to_xml();
    let s = String::from_utf8(x.clone()).unwrap();
    assert!(s.contains("kgss:ExludedReader"), "{s}");
    assert!(s.contains("<kgss:DeletionStrategy/>"), "{s}");
    assert_eq!(GetNewKeyRequestContent::parse(&x).unwrap(), r);
    let r2 = GetNewKeyRequestContent {
        excluded_readers: vec![],
        deletion_strategy: false,
        ..r
    };
    assert_eq!(GetNewKeyRequestContent::parse(&r2.to_xml()).unwrap(), r2);

    let resp = GetNewKeyResponseContent {
        new_key_identifier: b"kgss-test-key-id-0001".to_vec(),
        new_key: SecretBytes::new((0..16).collect()),
    };
    assert_eq!(
        GetNewKeyResponseContent::parse(&resp.to_xml()).unwrap(),
        resp
    );
    assert!(!format!("{resp:?}").contains("[0, 1"));
    assert!(format!("{resp:?}").contains("SecretBytes(16 bytes)"));

    for reply_to in [
        ReplyTo::Etk(vec![1, 2, 3]),
        ReplyTo::Kek {
            key: SecretBytes::new(vec![7; 16]),
            key_identifier: Some(vec![8; 16]),
        },
        ReplyTo::Kek {
            key: SecretBytes::new(vec![7; 16]),
            key_identifier: None,
        },
    ] {
        let g = GetKeyRequestContent {
            key_identifier: vec![5; 16],
            reply_to,
        };
        assert_eq!(GetKeyRequestContent::parse(&g.to_xml()).unwrap(), g);
    }
    let k = GetKeyResponseContent {
        key: SecretBytes::new(vec![3; 16]),
    };
    assert_eq!(GetKeyResponseContent::parse(&k.to_xml()).unwrap(), k);
}

#[test]
fn get_key_request_orders_and_choice() {
    let doc = |body: &str| {
        format!("<k:GetKeyRequestContent xmlns:k='{K}'><k:KeyIdentifier>AQID</k:KeyIdentifier>{body}</k:GetKeyRequestContent>")
    };
    let kek = "<k:KeyEncryptionKey>AAAAAAAAAAAAAAAAAAAAAA==</k:KeyEncryptionKey>";
    let kek_id = "<k:KeyEncryptionKeyIdentifier>BQU=</k:KeyEncryptionKeyIdentifier>";
    let etk = "<k:ETK>CQk=</k:ETK>";
    for body in [format!("{kek}{kek_id}"), format!("{kek_id}{kek}")] {
        let r = GetKeyRequestContent::parse(doc(&body).as_bytes()).unwrap();
        assert_eq!(
            r.reply_to,
            ReplyTo::Kek {
                key: SecretBytes::new(vec![0; 16]),
                key_identifier: Some(vec![5, 5])
            }
        );
    }
    assert_eq!(
        GetKeyRequestContent::parse(doc(etk).as_bytes())
            .unwrap()
            .reply_to,
        ReplyTo::Etk(vec![9, 9])
    );
    for bad in [
        String::new(),
        kek_id.to_owned(),
        format!("{kek}{etk}"),
        format!("{etk}{etk}"),
        format!("{kek}{kek}"),
        "<k:Other/>".to_owned(),
        "<k:ETK></k:ETK>".to_owned(),
    ] {
        let e = GetKeyRequestContent::parse(doc(&bad).as_bytes()).unwrap_err();
        assert!(matches!(e, Error::Schema(_)), "{bad}: {e:?}");
    }
}

#[test]
fn inner_schema_errors() {
    let etk = "<k:ETK>AQ==</k:ETK>";
    let cred = "<k:Namespace>n</k:Namespace><k:Name>m</k:Name>";
    let doc = |body: &str| {
        format!("<k:GetNewKeyRequestContent xmlns:k='{K}'>{body}</k:GetNewKeyRequestContent>")
    };
    assert!(GetNewKeyRequestContent::parse(
        doc(&format!("<k:AllowedReader>{cred}</k:AllowedReader>{etk}")).as_bytes()
    )
    .is_ok());
    for bad in [
        etk.to_owned(),
        format!("<k:AllowedReader>{cred}</k:AllowedReader>"),
        format!("<k:ExcludedReader>{cred}</k:ExcludedReader><k:AllowedReader>{cred}</k:AllowedReader>{etk}"),
        format!("<k:AllowedReader>{cred}</k:AllowedReader><k:ExcludedReader>{cred}</k:ExcludedReader>{etk}"),
        format!("<k:AllowedReader><k:Name>m</k:Name></k:AllowedReader>{etk}"),
        format!("<k:AllowedReader>{cred}</k:AllowedReader>{etk}<k:DeletionStrategy>x</k:DeletionStrategy>"),
        format!("<k:AllowedReader>{cred}</k:AllowedReader><k:ETK>***</k:ETK>"),
    ] {
        let e = GetNewKeyRequestContent::parse(doc(&bad).as_bytes()).unwrap_err();
        assert!(matches!(e, Error::Schema(_)), "{bad}: {e:?}");
    }
}

fn attr(ns: &str, name: &str, v: &str) -> Attribute {
    Attribute::new(ns, name, v)
}

#[test]
fn access_evaluation() {
    // A prescription readable by any recognised pharmacy and the patient.
    let allowed = vec![recognised_pharmacy(), patient("76120902527")];
    let pharmacy = [attr(CERTIFIED_NS, RECOGNISED_PHARMACY, "true")];
    let doctor = [attr(CERTIFIED_NS, DOCTOR_NIHII11, "12345678901")];
    let patient_attrs = [attr(IDENTIFICATION_NS, PERSON_SSIN, "76120902527")];
    let other_patient = [attr(IDENTIFICATION_NS, PERSON_SSIN, "71715100070")];
    let unrecognised = [attr(CERTIFIED_NS, RECOGNISED_PHARMACY, "false")];

    assert_eq!(
        evaluate(&allowed, &[], &pharmacy),
        Decision::Allowed { allowed_index: 0 }
    );
    assert_eq!(evaluate(&allowed, &[], &doctor), Decision::NotAllowed);
    assert!(evaluate(&allowed, &[], &patient_attrs).is_allowed());
    assert!(!evaluate(&allowed, &[], &other_patient).is_allowed());
    assert!(!evaluate(&allowed, &[], &unrecognised).is_allowed());
    assert!(!evaluate(&allowed, &[], &[]).is_allowed());

    // Empty values = any value.
    assert!(evaluate(&[any_doctor()], &[], &doctor).is_allowed());
    // Name and namespace must both match.
    let wrong_ns = [attr(IDENTIFICATION_NS, DOCTOR_NIHII11, "1")];
    assert!(!evaluate(&[any_doctor()], &[], &wrong_ns).is_allowed());

    // Excluded wins: a pharmacist who is also the excluded patient.
    let both = [pharmacy[0].clone(), other_patient[0].clone()];
    assert_eq!(
        evaluate(&allowed, &[patient("71715100070")], &both),
        Decision::Excluded { excluded_index: 0 }
    );
    assert!(evaluate(&allowed, &[patient("00000000097")], &both).is_allowed());
}

#[test]
fn implicit_attributes_from_identity() {
    let ids = vec![
        Identity {
            id_type: "SSIN".into(),
            value: "76120902527".into(),
            application_id: None,
        },
        Identity {
            id_type: "NIHII11".into(),
            value: "12345678901".into(),
            application_id: None,
        },
    ];
    let attrs = implicit_attributes(&ids);
    assert_eq!(
        attrs,
        vec![attr(IDENTIFICATION_NS, PERSON_SSIN, "76120902527")]
    );
    assert!(evaluate(&[patient("76120902527")], &[], &attrs).is_allowed());
    // A NIHII11 identity does not make a doctor.
    assert!(!evaluate(&[any_doctor()], &[], &attrs).is_allowed());
    let pharmacy = [Identity {
        id_type: "NIHII-PHARMACY".into(),
        value: "27150201".into(),
        application_id: None,
    }];
    assert!(implicit_attributes(&pharmacy).is_empty());
}
