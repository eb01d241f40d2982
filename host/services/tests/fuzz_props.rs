//! Property tests: no parser panics on random bytes or on mutations of valid messages, and
//! messages with arbitrary field values round-trip.

use etee_services::etkdepot::{
    jwks::JwkSet, EtkJson, GetEtkRequest, GetEtkResponse, Identifier, Problem,
};
use etee_services::keydepot::{KeyListResponse, RegisterKeyRequest, SignedAttestation};
use etee_services::kgss::{
    vocabulary, Credential, GetKeyRequestContent, GetKeyResponseContent, GetNewKeyRequestContent,
    GetNewKeyResponseContent, KgssRequest, KgssResponse, Operation, ReplyTo,
};
use etee_services::soap::{self, Fault, SoaCode};
use etee_services::{xml, SecretBytes};
use proptest::prelude::*;

/// Runs every parser; results are ignored, panics fail the test.
fn all_parsers(b: &[u8]) {
    let _ = xml::parse(b);
    let _ = soap::parse_envelope(b);
    let _ = Fault::parse(b);
    let _ = GetEtkRequest::parse(b);
    let _ = GetEtkResponse::parse(b);
    let _ = KgssRequest::parse(b);
    let _ = KgssResponse::parse(b);
    let _ = GetNewKeyRequestContent::parse(b);
    let _ = GetNewKeyResponseContent::parse(b);
    let _ = GetKeyRequestContent::parse(b);
    let _ = GetKeyResponseContent::parse(b);
    let _ = EtkJson::parse_list(b);
    let _ = Problem::parse(b);
    let _ = JwkSet::parse(b);
    let _ = RegisterKeyRequest::parse(b);
    let _ = SignedAttestation::parse(b);
    let _ = KeyListResponse::parse(b);
}

fn samples() -> Vec<Vec<u8>> {
    vec![
        GetEtkRequest {
            identifiers: vec![Identifier::new("CBE", "0809394427", Some("KGSS"))],
        }
        .to_xml(),
        GetEtkResponse::found(vec![Identifier::new("CBE", "0809394427", None)], vec![1, 2, 3]).to_xml(),
        Fault::from_code(SoaCode::XsdCompliance, None).to_xml(),
        KgssRequest {
            operation: Operation::GetKey,
            sealed_content: vec![9; 20],
        }
        .to_xml(),
        KgssResponse::ok(Operation::GetNewKey, vec![1; 10]).to_xml(),
        GetNewKeyRequestContent {
            allowed_readers: vec![vocabulary::recognised_pharmacy()],
            excluded_readers: vec![vocabulary::patient("76120902527")],
            etk: vec![1, 2],
            deletion_strategy: true,
        }
        .to_xml(),
        GetKeyRequestContent {
            key_identifier: vec![1; 16],
            reply_to: ReplyTo::Kek {
                key: SecretBytes::new(vec![2; 16]),
                key_identifier: Some(vec![3; 4]),
            },
        }
        .to_xml()
        .to_vec(),
        GetKeyResponseContent {
            key: SecretBytes::new(vec![2; 16]),
        }
        .to_xml()
        .to_vec(),
        br#"{"keys":[{"kty":"EC","crv":"P-256","x":"AA","y":"AA"}]}"#.to_vec(),
        br#"{"keyId":"AQ","publicKey":"AA==","proofOfPossession":"AA==","info":{"label":"x"}}"#.to_vec(),
        br#"[{"identifiers":[{"type":"CBE","value":"1"}],"etk":"AQ==","notBefore":"2020-01-01T00:00:00Z","notAfter":"2021-01-01T00:00:00Z"}]"#.to_vec(),
    ]
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Insert(usize, u8),
    Delete(usize, usize),
    Truncate(usize),
    Duplicate(usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Flip(i, b)),
        (
            any::<usize>(),
            prop::sample::select(b"<>/&;:=\"' x\0\xff".to_vec())
        )
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
        (any::<usize>(), 0usize..40).prop_map(|(i, n)| Mutation::Delete(i, n)),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), 0usize..60).prop_map(|(i, n)| Mutation::Duplicate(i, n)),
    ]
}

fn apply(mut v: Vec<u8>, muts: &[Mutation]) -> Vec<u8> {
    for m in muts {
        let len = v.len().max(1);
        match *m {
            Mutation::Flip(i, b) => {
                if !v.is_empty() {
                    let i = i % v.len();
                    v[i] ^= b;
                }
            }
            Mutation::Insert(i, b) => v.insert(i % (v.len() + 1), b),
            Mutation::Delete(i, n) => {
                let i = i % len;
                let end = (i + n).min(v.len());
                if i < end {
                    v.drain(i..end);
                }
            }
            Mutation::Truncate(i) => v.truncate(i % len),
            Mutation::Duplicate(i, n) => {
                let i = i % len;
                let end = (i + n).min(v.len());
                if i < end {
                    let part = v[i..end].to_vec();
                    v.splice(end..end, part);
                }
            }
        }
    }
    v
}

fn text() -> impl Strategy<Value = String> {
    "[A-Za-z0-9&<>\"'_é€😀-]{1,16}"
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_bytes_never_panic(b in prop::collection::vec(any::<u8>(), 0..600)) {
        all_parsers(&b);
    }

    #[test]
    fn random_markup_never_panics(s in "[<>/a-z:= \"'&#;!\\[\\]?-]{0,300}") {
        all_parsers(s.as_bytes());
    }

    #[test]
    fn mutated_messages_never_panic(
        which in 0usize..11,
        muts in prop::collection::vec(mutation(), 1..6),
    ) {
        let s = samples();
        all_parsers(&apply(s[which % s.len()].clone(), &muts));
    }

    #[test]
    fn etk_request_round_trips(ids in prop::collection::vec((text(), text(), prop::option::of(text())), 1..5)) {
        let r = GetEtkRequest {
            identifiers: ids
                .iter()
                .map(|(t, v, a)| Identifier::new(t, v, a.as_deref()))
                .collect(),
        };
        prop_assert_eq!(GetEtkRequest::parse(&r.to_xml()).unwrap(), r);
    }

    #[test]
    fn new_key_request_round_trips(
        creds in prop::collection::vec((text(), text(), prop::collection::vec(text(), 0..3)), 1..4),
        excluded in prop::collection::vec((text(), text(), prop::collection::vec(text(), 0..3)), 0..3),
        etk in prop::collection::vec(any::<u8>(), 1..200),
        deletion_strategy in any::<bool>(),
    ) {
        let cred = |(n, m, v): &(String, String, Vec<String>)| Credential {
            namespace: n.clone(),
            name: m.clone(),
            values: v.clone(),
        };
        let r = GetNewKeyRequestContent {
            allowed_readers: creds.iter().map(cred).collect(),
            excluded_readers: excluded.iter().map(cred).collect(),
            etk,
            deletion_strategy,
        };
        prop_assert_eq!(GetNewKeyRequestContent::parse(&r.to_xml()).unwrap(), r);
    }
}
