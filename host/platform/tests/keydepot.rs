//! KeyDepot REST over TLS on loopback: a hospital registers RSA and EC keys with a proof of
//! possession, anyone reads and lists them, the holder adds information and deletes them;
//! wrong proofs, key ids that are not the key's, duplicates, other institutions and
//! anonymous writers are refused; an HSM
//! attestation signed by the holder under the platform's CA is kept and served back, any
//! other is refused; malformed requests get 400 problems.

mod common;

on_both_stores!(
    register_read_list_and_add_info,
    proofs_of_possession_and_duplicates,
    only_the_holder_writes,
    attestations,
    malformed_requests_are_problems,
    concurrent_additions_stay_within_the_bounds,
    keys_per_holder_are_bounded,
);

use common::{cert, World};
use etee_formats::cert::Certificate;
use etee_formats::identity::Identity;
use etee_platform::client::{Answer, Connection};
use etee_platform::config::DEFAULT_MAX_KEYS_PER_HOLDER;
use etee_services::etkdepot::rest::IdentifierJson;
use etee_services::keydepot::{
    pop_challenge, sign, AttestationStatement, HolderInfo, KeyAttributes, KeyId, KeyInfo,
    KeyListResponse, KeyRecord, KeyStatus, KeyUse, RegisterKeyRequest, RegisterKeyResponse,
    SignedAttestation, TokenInfo,
};
use etee_testpki::{rsa_key, Institution};
use openssl::ec::{EcGroup, EcKey};
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use serde_json::Value;

const KEYS: &str = "/etee/v1/keydepot/keys";
const JSON: Option<&str> = Some("application/json");

fn rsa() -> PKey<Private> {
    rsa_key(2048).unwrap()
}

fn ec_p256() -> PKey<Private> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
    PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap()
}

fn key_id(id: &[u8]) -> KeyId {
    KeyId::new(id.to_vec()).unwrap()
}

/// A registration of `key` under its own id with a valid proof of possession.
fn request(key: &PKey<Private>) -> RegisterKeyRequest {
    request_by(key, &alice_identity())
}

/// A registration of `key` under its own id by `holder` (the identity its proof names).
fn request_by(key: &PKey<Private>, holder: &Identity) -> RegisterKeyRequest {
    let id = KeyId::of_public_key(&key.public_key_to_der().unwrap()).unwrap();
    request_as(key, id, holder)
}

/// Alice's identity, as her registrations name it (her certificate's first).
fn alice_identity() -> Identity {
    Identity {
        id_type: "NIHII-HOSPITAL".into(),
        value: "71000436".into(),
        application_id: None,
    }
}

/// The first identity of `institution`'s certificate: what KeyDepot takes as the holder.
fn holder_of(institution: &Institution) -> Identity {
    etee_formats::identity::primary_identity(&cert(&institution.auth.cert)).unwrap()
}

/// A registration of `key` as `id` (its own or not) by `holder`, with a valid proof of
/// possession.
fn request_as(key: &PKey<Private>, id: KeyId, holder: &Identity) -> RegisterKeyRequest {
    let spki = key.public_key_to_der().unwrap();
    RegisterKeyRequest {
        proof_of_possession: sign(key, &pop_challenge(&id, &spki, holder)).unwrap(),
        key_id: id,
        public_key: spki,
        info: KeyInfo {
            label: Some("laptop".into()),
            key_use: Some(KeyUse::Enc),
            properties: [("os".to_owned(), "linux".to_owned())].into(),
            ..Default::default()
        },
        attestation: None,
    }
}

fn key_path(id: &KeyId) -> String {
    format!("{KEYS}/{}", id.to_url_string())
}

async fn register(c: &mut Connection, r: &RegisterKeyRequest) -> Answer {
    c.send("POST", KEYS, JSON, r.to_json()).await.unwrap()
}

async fn add_info(c: &mut Connection, id: &KeyId, body: &str) -> Answer {
    c.send(
        "PATCH",
        &format!("{}/info", key_path(id)),
        JSON,
        body.as_bytes().to_vec(),
    )
    .await
    .unwrap()
}

async fn delete(c: &mut Connection, id: &KeyId) -> Answer {
    c.send("DELETE", &key_path(id), None, vec![]).await.unwrap()
}

/// A JSON answer with `status`.
fn assert_json(a: &Answer, status: u16) -> &[u8] {
    assert_eq!(a.status, status, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.content_type, "application/json");
    &a.body
}

/// An RFC 7807 answer with `status` and `title`; its detail.
fn assert_problem(a: &Answer, status: u16, title: &str) -> String {
    assert_eq!(a.status, status, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.content_type, "application/problem+json");
    let p: Value = serde_json::from_slice(&a.body).unwrap();
    assert_eq!(p["status"], status, "{p}");
    assert_eq!(p["title"], title, "{p}");
    p["detail"].as_str().unwrap_or_default().to_owned()
}

fn identifier(id_type: &str, value: &str, app: Option<&str>) -> IdentifierJson {
    IdentifierJson {
        id_type: id_type.into(),
        value: value.into(),
        application_identifier: app.map(Into::into),
    }
}

fn alice_holder() -> HolderInfo {
    HolderInfo {
        identifiers: vec![identifier("NIHII-HOSPITAL", "71000436", None)],
        name: None,
    }
}

async fn register_read_list_and_add_info(w: World) {
    let mut alice = w.connect(Some(&w.alice)).await;
    let mut anonymous = w.connect(None).await;
    let before = etee_platform::unix_now();

    // Alice registers an RSA and an EC P-256 key.
    let mut registered = Vec::new();
    for key in [rsa(), ec_p256()] {
        let r = request(&key);
        let a = register(&mut alice, &r).await;
        let key = RegisterKeyResponse::parse(assert_json(&a, 201))
            .unwrap()
            .key;
        assert_eq!(key.key_id, r.key_id);
        assert_eq!(key.public_key, r.public_key);
        assert_eq!(key.holder, alice_holder());
        assert_eq!(key.info, r.info);
        assert!(!key.attested);
        assert_eq!(key.status, KeyStatus::Active);
        assert!(key.created_at >= before && key.created_at <= etee_platform::unix_now());
        registered.push(key);
    }

    // Anyone reads them, with or without a client certificate.
    for c in [&mut anonymous, &mut alice] {
        let a = c.get(&key_path(&registered[0].key_id)).await.unwrap();
        assert_eq!(
            KeyRecord::parse(assert_json(&a, 200)).unwrap(),
            registered[0]
        );
    }
    let a = anonymous
        .get(&format!("{}/holder", key_path(&registered[1].key_id)))
        .await
        .unwrap();
    assert_eq!(
        HolderInfo::parse(assert_json(&a, 200)).unwrap(),
        alice_holder()
    );
    let a = anonymous
        .get(&format!("{}/attestation", key_path(&registered[1].key_id)))
        .await
        .unwrap();
    assert_problem(&a, 404, "KEYDEPOT_NO_ATTESTATION");
    let a = anonymous
        .get(&key_path(&key_id(b"nobody's")))
        .await
        .unwrap();
    assert_problem(&a, 404, "KEYDEPOT_UNKNOWN_KEY");

    // The list: type case-insensitive, value zero-padded as ETKDepot does; by key id.
    let a = anonymous
        .get("/etee/v1/keydepot/holders/nihii-hospital/0071000436/keys")
        .await
        .unwrap();
    let list = KeyListResponse::parse(assert_json(&a, 200)).unwrap();
    assert_eq!(list.holder, alice_holder());
    let mut by_id = registered.clone();
    by_id.sort_by(|a, b| a.key_id.cmp(&b.key_id));
    assert_eq!(list.keys, by_id);

    // Alice adds information: given fields replace, properties add up.
    let a = add_info(
        &mut alice,
        &registered[0].key_id,
        r#"{"info":{"label":"desk","properties":{"room":"12"}}}"#,
    )
    .await;
    let changed = KeyRecord::parse(assert_json(&a, 200)).unwrap();
    let mut want = registered[0].info.clone();
    want.label = Some("desk".into());
    want.properties.insert("room".into(), "12".into());
    assert_eq!(changed.info, want);
    assert_eq!(changed.info.key_use, Some(KeyUse::Enc));
    assert_eq!(
        KeyRecord {
            info: registered[0].info.clone(),
            ..changed.clone()
        },
        registered[0],
        "only the information changed"
    );
    let a = anonymous
        .get(&key_path(&registered[0].key_id))
        .await
        .unwrap();
    assert_eq!(KeyRecord::parse(assert_json(&a, 200)).unwrap(), changed);

    // A holder with two application ids: the list can be restricted to one.
    let mut app_b = w.connect(Some(&w.app_b)).await;
    let a = register(&mut app_b, &request_by(&ec_p256(), &holder_of(&w.app_b))).await;
    let key = RegisterKeyResponse::parse(assert_json(&a, 201))
        .unwrap()
        .key;
    let app_b_holder = HolderInfo {
        identifiers: vec![identifier("CBE", "0406798006", Some("APP-B"))],
        name: None,
    };
    assert_eq!(key.holder, app_b_holder);
    let holder_keys = "/etee/v1/keydepot/holders/CBE/406798006/keys";
    for (query, found) in [
        ("", 1),
        ("?applicationIdentifier=APP-B", 1),
        ("?applicationIdentifier=APP-A", 0),
    ] {
        let a = anonymous
            .get(&format!("{holder_keys}{query}"))
            .await
            .unwrap();
        let list = KeyListResponse::parse(assert_json(&a, 200)).unwrap();
        assert_eq!(list.keys.len(), found, "{query}");
        assert_eq!(list.holder.identifiers[0].value, "0406798006");
    }

    // A holder without keys: an empty list. An unknown type: 400.
    let a = anonymous
        .get(&format!(
            "/etee/v1/keydepot/holders/NIHII-PHARMACY/{}/keys",
            common::PHARMACY
        ))
        .await
        .unwrap();
    let list = KeyListResponse::parse(assert_json(&a, 200)).unwrap();
    assert!(list.keys.is_empty());
    assert_eq!(
        list.holder.identifiers,
        vec![identifier("NIHII-PHARMACY", common::PHARMACY, None)]
    );
    let a = anonymous
        .get("/etee/v1/keydepot/holders/PLANET/42/keys")
        .await
        .unwrap();
    assert_problem(&a, 400, "KEYDEPOT_INVALID_REQUEST");
    w.stop().await;
}

async fn proofs_of_possession_and_duplicates(w: World) {
    let mut alice = w.connect(Some(&w.alice)).await;
    let key = rsa();

    // Signed by another key.
    let mut r = request(&key);
    r.proof_of_possession = sign(
        &ec_p256(),
        &pop_challenge(&r.key_id, &r.public_key, &alice_identity()),
    )
    .unwrap();
    let a = register(&mut alice, &r).await;
    assert_problem(&a, 422, "KEYDEPOT_INVALID_PROOF_OF_POSSESSION");
    // A proof made for another key id (replayed for this one).
    let mut r = request(&key);
    r.proof_of_possession = sign(
        &key,
        &pop_challenge(&key_id(b"other"), &r.public_key, &alice_identity()),
    )
    .unwrap();
    let a = register(&mut alice, &r).await;
    assert_problem(&a, 422, "KEYDEPOT_INVALID_PROOF_OF_POSSESSION");
    // A tampered signature.
    let mut r = request(&ec_p256());
    let last = r.proof_of_possession.len() - 1;
    r.proof_of_possession[last] ^= 1;
    let a = register(&mut alice, &r).await;
    assert_problem(&a, 422, "KEYDEPOT_INVALID_PROOF_OF_POSSESSION");
    // Nothing was stored.
    let r = request(&key);
    let a = alice.get(&key_path(&r.key_id)).await.unwrap();
    assert_problem(&a, 404, "KEYDEPOT_UNKNOWN_KEY");

    // A key id is the key's own: Bob cannot take the id of Alice's key (which he can
    // compute from her public key) for a key of his, before her registration or after;
    // nor can anyone name a key freely.
    let mut bob = w.connect(Some(&w.bob)).await;
    let squat = request_as(&ec_p256(), r.key_id.clone(), &holder_of(&w.bob));
    let detail = assert_problem(
        &register(&mut bob, &squat).await,
        400,
        "KEYDEPOT_INVALID_REQUEST",
    );
    assert!(detail.contains("method-1"), "{detail}");
    assert_problem(
        &register(
            &mut alice,
            &request_as(&key, key_id(b"pop"), &alice_identity()),
        )
        .await,
        400,
        "KEYDEPOT_INVALID_REQUEST",
    );

    // Alice's registration body sent by Bob first, as his own: its proof names Alice, so
    // it is refused and Bob does not take her key.
    let a = register(&mut bob, &r).await;
    assert_problem(&a, 422, "KEYDEPOT_INVALID_PROOF_OF_POSSESSION");
    let a = bob.get(&key_path(&r.key_id)).await.unwrap();
    assert_problem(&a, 404, "KEYDEPOT_UNKNOWN_KEY");

    // The right proof registers; the same key again is a conflict (for Bob, whose own
    // proof of it he cannot make, a wrong proof still).
    assert_json(&register(&mut alice, &r).await, 201);
    let a = register(&mut alice, &r).await;
    assert_problem(&a, 409, "KEYDEPOT_DUPLICATE_KEY_ID");
    let a = register(&mut bob, &r).await;
    assert_problem(&a, 422, "KEYDEPOT_INVALID_PROOF_OF_POSSESSION");
    assert_problem(
        &register(&mut bob, &squat).await,
        400,
        "KEYDEPOT_INVALID_REQUEST",
    );
    // Still Alice's key.
    let a = bob.get(&key_path(&r.key_id)).await.unwrap();
    let stored = KeyRecord::parse(assert_json(&a, 200)).unwrap();
    assert_eq!(stored.public_key, r.public_key);
    assert_eq!(stored.holder, alice_holder());
    w.stop().await;
}

async fn only_the_holder_writes(w: World) {
    let mut alice = w.connect(Some(&w.alice)).await;
    let mut bob = w.connect(Some(&w.bob)).await;
    let mut anonymous = w.connect(None).await;
    let mine = request(&rsa());
    let id = &mine.key_id;
    let a = register(&mut alice, &mine).await;
    let registered = RegisterKeyResponse::parse(assert_json(&a, 201))
        .unwrap()
        .key;

    // Another institution may neither add information nor delete.
    let info = r#"{"info":{"label":"bob was here"}}"#;
    assert_problem(
        &add_info(&mut bob, id, info).await,
        403,
        "KEYDEPOT_ACCESS_DENIED",
    );
    assert_problem(&delete(&mut bob, id).await, 403, "KEYDEPOT_ACCESS_DENIED");
    // Nobody writes without a client certificate.
    let stranger = request(&ec_p256());
    let a = register(&mut anonymous, &stranger).await;
    assert_problem(&a, 401, "KEYDEPOT_NOT_AUTHENTICATED");
    let a = add_info(&mut anonymous, id, info).await;
    assert_problem(&a, 401, "KEYDEPOT_NOT_AUTHENTICATED");
    assert_problem(
        &delete(&mut anonymous, id).await,
        401,
        "KEYDEPOT_NOT_AUTHENTICATED",
    );
    // Unchanged.
    let a = anonymous.get(&key_path(id)).await.unwrap();
    assert_eq!(KeyRecord::parse(assert_json(&a, 200)).unwrap(), registered);
    let a = anonymous.get(&key_path(&stranger.key_id)).await.unwrap();
    assert_problem(&a, 404, "KEYDEPOT_UNKNOWN_KEY");

    // The holder deletes, for real.
    let a = delete(&mut alice, id).await;
    assert_eq!(a.status, 204);
    assert!(a.body.is_empty());
    let a = anonymous.get(&key_path(id)).await.unwrap();
    assert_problem(&a, 404, "KEYDEPOT_UNKNOWN_KEY");
    assert!(w
        .store(|s| s.get_public_key(id.as_bytes()))
        .unwrap()
        .is_none());
    assert_problem(&delete(&mut alice, id).await, 404, "KEYDEPOT_UNKNOWN_KEY");
    assert_problem(
        &add_info(&mut alice, id, info).await,
        404,
        "KEYDEPOT_UNKNOWN_KEY",
    );
    // The key id is retired, not free again: a sender holding it must never reach the key
    // registered again, by its holder or anybody else.
    assert_problem(
        &register(&mut alice, &mine).await,
        409,
        "KEYDEPOT_DUPLICATE_KEY_ID",
    );

    // Every write and refusal is on the platform's audit chain, in order.
    let events = w.store(|s| s.events(0, 100)).unwrap();
    etee_store::audit::verify(0, etee_store::audit::GENESIS, &events).unwrap();
    let subject = id.to_url_string();
    let seen: Vec<(&str, &str)> = events
        .iter()
        .filter(|e| e.event.subject == subject)
        .map(|e| (e.event.action.as_str(), e.event.outcome.as_str()))
        .collect();
    assert_eq!(
        seen,
        [
            ("keydepot.register", "registered"),
            ("keydepot.add_info", "denied"),
            ("keydepot.delete", "denied"),
            ("keydepot.delete", "deleted"),
        ]
    );
    w.stop().await;
}

const NON_EXPORTABLE: KeyAttributes = KeyAttributes {
    sensitive: true,
    extractable: false,
    never_extractable: true,
    local: true,
};

/// An attestation of `r`'s key signed by `signer`'s authentication key, with its chain.
fn attestation(
    r: &RegisterKeyRequest,
    signer: &Institution,
    attributes: KeyAttributes,
) -> SignedAttestation {
    let statement = AttestationStatement::new(
        r.key_id.clone(),
        &r.public_key,
        TokenInfo {
            label: "etee".into(),
            serial: "0001".into(),
            manufacturer: "SoftHSM project".into(),
            model: "SoftHSM v2".into(),
        },
        attributes,
        etee_platform::unix_now(),
    );
    let chain: Vec<Certificate> = signer.chain.iter().map(cert).collect();
    SignedAttestation::sign(
        &statement,
        &signer.auth.key,
        &cert(&signer.auth.cert),
        &chain,
    )
    .unwrap()
}

async fn attestations(w: World) {
    let mut alice = w.connect(Some(&w.alice)).await;
    let mut anonymous = w.connect(None).await;

    // Signed by Alice's authentication key under the platform's CA: attested, and served
    // back as given.
    let mut r = request(&rsa());
    let signed = attestation(&r, &w.alice, NON_EXPORTABLE);
    r.attestation = Some(signed.clone());
    let a = register(&mut alice, &r).await;
    let key = RegisterKeyResponse::parse(assert_json(&a, 201))
        .unwrap()
        .key;
    assert!(key.attested);
    let a = anonymous
        .get(&format!("{}/attestation", key_path(&r.key_id)))
        .await
        .unwrap();
    assert_eq!(assert_json(&a, 200), &signed.to_json()[..]);
    let back = SignedAttestation::parse(&a.body).unwrap();
    assert_eq!(back, signed);
    back.verify(
        &r.key_id,
        &r.public_key,
        &etee_services::etkdepot::Identifier::new("NIHII-HOSPITAL", "71000436", None),
    )
    .unwrap();
    let a = anonymous.get(&key_path(&r.key_id)).await.unwrap();
    assert!(KeyRecord::parse(assert_json(&a, 200)).unwrap().attested);

    // Refused: signed by another institution (of the platform's CA, or not), by an
    // impostor of Alice under a foreign CA, about an exportable key, or about another key.
    let impostor = common::foreign_alice();
    let stranger = common::foreign_institution();
    let key = ec_p256();
    let cases: Vec<(&str, SignedAttestation, &str)> = vec![
        (
            "bob",
            attestation(&request(&key), &w.bob, NON_EXPORTABLE),
            "holder",
        ),
        (
            "stranger",
            attestation(&request(&key), &stranger, NON_EXPORTABLE),
            "holder",
        ),
        (
            "impostor",
            attestation(&request(&key), &impostor, NON_EXPORTABLE),
            "CA",
        ),
        (
            "exportable",
            attestation(
                &request(&key),
                &w.alice,
                KeyAttributes {
                    extractable: true,
                    never_extractable: false,
                    ..NON_EXPORTABLE
                },
            ),
            "exportable",
        ),
        (
            "other key",
            attestation(&request(&rsa()), &w.alice, NON_EXPORTABLE),
            "key",
        ),
        (
            "other key id",
            attestation(
                &request_as(&key, key_id(b"other"), &alice_identity()),
                &w.alice,
                NON_EXPORTABLE,
            ),
            "key id",
        ),
    ];
    for (case, signed, why) in cases {
        let mut r = request(&key);
        r.attestation = Some(signed);
        let a = register(&mut alice, &r).await;
        let detail = assert_problem(&a, 422, "KEYDEPOT_INVALID_ATTESTATION");
        assert!(detail.contains(why), "{case}: {detail}");
        let a = anonymous.get(&key_path(&r.key_id)).await.unwrap();
        assert_problem(&a, 404, "KEYDEPOT_UNKNOWN_KEY");
    }
    // The impostor's attestation passes every check but the chain's: the anchors decide.
    let mut r = request(&key);
    let forged = attestation(&r, &impostor, NON_EXPORTABLE);
    forged
        .verify(
            &r.key_id,
            &r.public_key,
            &etee_services::etkdepot::Identifier::new("NIHII-HOSPITAL", "71000436", None),
        )
        .unwrap();
    r.attestation = Some(forged);
    assert_problem(
        &register(&mut alice, &r).await,
        422,
        "KEYDEPOT_INVALID_ATTESTATION",
    );
    w.stop().await;
}

/// rustls checks the client's chain at the handshake only; a certificate that expires
/// while its connection is kept alive must stop authenticating there and then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_that_expires_during_a_connection_stops_authenticating() {
    let w = World::new("expiring", common::Backend::Embedded).await;
    // Valid for a few seconds from now (key generation included).
    let now = etee_platform::unix_now();
    let validity = etee_testpki::Validity {
        not_before: now - 60,
        not_after: now + 6,
    };
    let short = common::pki()
        .pki
        .institution(
            &etee_testpki::InstitutionSpec::new("NIHII-HOSPITAL", "71000535", "Short Lived")
                .with_auth_validity(validity),
        )
        .unwrap();
    let mut c = w.connect(Some(&short)).await;
    // Authenticated: an unknown key is a 404, not a 401.
    assert_problem(
        &delete(&mut c, &key_id(b"nothing")).await,
        404,
        "KEYDEPOT_UNKNOWN_KEY",
    );

    // Past notAfter (a second's margin: the check is by the second), same connection.
    let wait = validity.not_after + 2 - etee_platform::unix_now();
    tokio::time::sleep(std::time::Duration::from_secs(wait.max(0) as u64)).await;
    let a = delete(&mut c, &key_id(b"nothing")).await;
    assert_problem(&a, 401, "KEYDEPOT_NOT_AUTHENTICATED");
    // That answer closed the connection.
    assert!(c.get("/health").await.is_err());
    // A new connection with the expired certificate is refused by the handshake's verifier
    // (with TLS 1.3 the client learns it at its first read).
    let refused = match w.try_connect(Some(&short)).await {
        Err(_) => true,
        Ok(mut c) => c.get("/health").await.is_err(),
    };
    assert!(refused, "an expired client certificate was accepted");
    // Anonymous reads go on as before.
    let mut anonymous = w.connect(None).await;
    assert_eq!(anonymous.get("/health").await.unwrap().status, 200);
    w.stop().await;
}

async fn malformed_requests_are_problems(w: World) {
    let mut alice = w.connect(Some(&w.alice)).await;
    let good = request(&rsa());
    let good_json: Value = serde_json::from_slice(&good.to_json()).unwrap();
    let with = |field: &str, value: Value| {
        let mut v = good_json.clone();
        v[field] = value;
        serde_json::to_vec(&v).unwrap()
    };
    let small = rsa_key(1024).unwrap();
    let bodies: Vec<(&str, Vec<u8>)> = vec![
        ("not JSON", b"{".to_vec()),
        ("empty", vec![]),
        ("an array", b"[]".to_vec()),
        ("no key", br#"{"keyId":"AQ"}"#.to_vec()),
        ("bad base64", with("publicKey", "***".into())),
        ("not a key", with("publicKey", "AAAA".into())),
        (
            "small RSA key",
            with(
                "publicKey",
                base64::Engine::encode(
                    &base64::engine::general_purpose::STANDARD,
                    small.public_key_to_der().unwrap(),
                )
                .into(),
            ),
        ),
        ("bad key id", with("keyId", "a+b/".into())),
        ("not the key's id", with("keyId", "AQ".into())),
        ("empty key id", with("keyId", "".into())),
        ("long key id", with("keyId", "A".repeat(90).into())),
        ("bad proof", with("proofOfPossession", 5.into())),
        ("bad info", with("info", "x".into())),
        (
            "33 properties",
            with(
                "info",
                serde_json::json!({ "properties": (0..33)
                    .map(|i| (format!("p{i}"), Value::from("v")))
                    .collect::<serde_json::Map<_, _>>() }),
            ),
        ),
        (
            "long label",
            with("info", serde_json::json!({ "label": "l".repeat(257) })),
        ),
        (
            "long property",
            with(
                "info",
                serde_json::json!({ "properties": { "k": "v".repeat(1025) } }),
            ),
        ),
        (
            "five certificates of attestation",
            with(
                "attestation",
                serde_json::json!({ "statement": "AA==", "signature": "AA==",
                    "x5c": vec!["AA=="; 5] }),
            ),
        ),
    ];
    for (case, body) in bodies {
        let a = alice.send("POST", KEYS, JSON, body).await.unwrap();
        let detail = assert_problem(&a, 400, "KEYDEPOT_INVALID_REQUEST");
        assert!(!detail.is_empty(), "{case}");
    }
    // Too large for the configured limit (64 KiB in the tests).
    let mut big = w.connect(Some(&w.alice)).await;
    let a = big
        .send("POST", KEYS, JSON, vec![b' '; 70_000])
        .await
        .unwrap();
    assert_problem(&a, 413, "KEYDEPOT_INVALID_REQUEST");

    // Bad key ids in paths: bad base64, too long, not UTF-8 once percent-decoded; the
    // detail names nothing of the platform's code.
    let long = "A".repeat(90);
    for bad in ["***", long.as_str(), "%FF%FE"] {
        let path = format!("{KEYS}/{bad}");
        let a = alice.get(&path).await.unwrap();
        let detail = assert_problem(&a, 400, "KEYDEPOT_INVALID_REQUEST");
        assert!(
            !detail.contains("key_id") && !detail.contains('`'),
            "{detail}"
        );
        for sub in ["attestation", "holder"] {
            let a = alice.get(&format!("{path}/{sub}")).await.unwrap();
            assert_problem(&a, 400, "KEYDEPOT_INVALID_REQUEST");
        }
        let a = alice.send("DELETE", &path, None, vec![]).await.unwrap();
        assert_problem(&a, 400, "KEYDEPOT_INVALID_REQUEST");
        let a = alice
            .send(
                "PATCH",
                &format!("{path}/info"),
                JSON,
                br#"{"info":{}}"#.to_vec(),
            )
            .await
            .unwrap();
        assert_problem(&a, 400, "KEYDEPOT_INVALID_REQUEST");
    }

    // Bad add-info bodies, on a key that exists.
    assert_json(&register(&mut alice, &good).await, 201);
    for body in [
        "{",
        r#"{"info":5}"#,
        r#"{"label":"x"}"#,
        r#"{"info":{"use":"both"}}"#,
    ] {
        let a = add_info(&mut alice, &good.key_id, body).await;
        assert_problem(&a, 400, "KEYDEPOT_INVALID_REQUEST");
    }
    let a = alice.get(&key_path(&good.key_id)).await.unwrap();
    assert_eq!(
        KeyRecord::parse(assert_json(&a, 200)).unwrap().info,
        good.info
    );

    // Information only grows, within the bounds of what it becomes: the key has one
    // property, 31 more fit, one beyond does not.
    let more = |from: usize, to: usize| {
        let properties: serde_json::Map<_, _> = (from..to)
            .map(|i| (format!("p{i}"), Value::from("v")))
            .collect();
        serde_json::json!({ "info": { "properties": properties } }).to_string()
    };
    assert_eq!(good.info.properties.len(), 1);
    let a = add_info(&mut alice, &good.key_id, &more(0, 31)).await;
    let grown = KeyRecord::parse(assert_json(&a, 200)).unwrap().info;
    assert_eq!(grown.properties.len(), 32);
    let a = add_info(&mut alice, &good.key_id, &more(31, 32)).await;
    let detail = assert_problem(&a, 400, "KEYDEPOT_INVALID_REQUEST");
    assert!(detail.contains("at most 32"), "{detail}");
    let a = alice.get(&key_path(&good.key_id)).await.unwrap();
    assert_eq!(KeyRecord::parse(assert_json(&a, 200)).unwrap().info, grown);

    // Bad list criteria: an impossible value, an unknown parameter, not UTF-8.
    for path in [
        "/etee/v1/keydepot/holders/NIHII-HOSPITAL/abc/keys",
        "/etee/v1/keydepot/holders/NIHII-HOSPITAL/123456789012345/keys",
        "/etee/v1/keydepot/holders/NIHII-HOSPITAL/71000436/keys?identifier=1",
        "/etee/v1/keydepot/holders/%ff/71000436/keys",
    ] {
        let a = alice.get(path).await.unwrap();
        let detail = assert_problem(&a, 400, "KEYDEPOT_INVALID_REQUEST");
        assert!(
            !detail.contains("id_type") && !detail.contains('`'),
            "{detail}"
        );
    }
    // A method a route does not serve: a problem too.
    let a = alice.send("PUT", KEYS, JSON, b"{}".to_vec()).await.unwrap();
    assert_problem(&a, 405, "Method not allowed");
    w.stop().await;
}

/// An attestation is refused when the platform's revocation lists revoke its signer (the
/// same key that authenticates the caller over TLS, here looked at on its own).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attestation_by_a_revoked_key_is_refused() {
    use etee_formats::revocation::{Revocation, RevocationPolicy};
    let w = World::new("attestation-revoked", common::Backend::Embedded).await;
    let pki = &common::pki().pki;
    let now = etee_platform::unix_now();
    let list = |revoked: &[&Institution]| {
        let entries: Vec<_> = revoked
            .iter()
            .map(|i| (i.auth.cert.serial_number(), now - 10))
            .collect();
        pki.crl(&entries, 1, now - 60, now + 3600)
            .unwrap()
            .to_der()
            .unwrap()
    };
    let identities = etee_formats::identity::identities(&cert(&w.alice.auth.cert));
    let register = |revoked: &[&Institution]| {
        let anchors = w.anchors.clone().with_revocation(
            Revocation::new(&[list(revoked)], RevocationPolicy::Optional).unwrap(),
        );
        let mut r = request(&rsa());
        r.attestation = Some(attestation(&r, &w.alice, NON_EXPORTABLE));
        w.store(|s| {
            etee_platform::keydepot::register(
                s,
                &anchors,
                &identities,
                &r,
                now,
                DEFAULT_MAX_KEYS_PER_HOLDER,
            )
        })
    };
    assert!(register(&[&w.bob]).is_ok());
    let e = register(&[&w.alice]).unwrap_err().to_string();
    assert!(e.contains("revoked"), "{e}");
    w.stop().await;
}

/// A platform whose TLS files are wrong does not start, and leaves nothing behind: the
/// files are checked before the embedded store is created (and before KGSS logs in).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_with_wrong_tls_files_creates_no_store() {
    let w = World::new("tls-first", common::Backend::Embedded).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = w.platform.config.clone();
    config.store = dir.path().join("new.redb").display().to_string();
    config.tls_key = dir.path().join("missing-key.pem");
    let opened = tokio::task::spawn_blocking(move || etee_platform::Platform::open(config))
        .await
        .unwrap();
    let err = opened.err().expect("no TLS key, no platform").to_string();
    assert!(err.contains("missing-key.pem"), "{err}");
    assert!(!dir.path().join("new.redb").exists());
    w.stop().await;
}

/// What stops a start is named with its setting: an address already taken (`listen`), a
/// store in a directory that does not exist (`store`), a missing certificate
/// (`tls_certificate`), a key that is not the certificate's (`tls_key`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_start_names_the_setting() {
    let w = World::new("start-errors", common::Backend::Embedded).await;
    let open = |config: etee_platform::PlatformConfig| async move {
        tokio::task::spawn_blocking(move || etee_platform::Platform::open(config))
            .await
            .unwrap()
            .err()
            .expect("not opened")
            .to_string()
    };
    // The address the world serves on.
    let mut taken = w.platform.config.clone();
    taken.listen = w.addr;
    let platform = std::sync::Arc::new(etee_platform::Platform::new(
        w.platform.store.clone(),
        taken,
        w.anchors.clone(),
        None,
    ));
    let e = etee_platform::server::start(platform)
        .await
        .err()
        .expect("the address is taken")
        .to_string();
    assert!(
        e.contains(&format!("listen {}: ", w.addr)) && e.contains("in use"),
        "{e}"
    );
    let dir = tempfile::tempdir().unwrap();
    let mut config = w.platform.config.clone();
    let store = dir.path().join("missing").join("platform.redb");
    config.store = store.display().to_string();
    let e = open(config.clone()).await;
    assert!(e.contains(&format!("store {}: ", store.display())), "{e}");
    let mut missing = config.clone();
    missing.tls_certificate = dir.path().join("nope.pem");
    let e = open(missing).await;
    assert!(
        e.contains(&format!(
            "tls_certificate {}: ",
            dir.path().join("nope.pem").display()
        )),
        "{e}"
    );
    let other_key = dir.path().join("other-key.pem");
    std::fs::write(
        &other_key,
        w.alice.auth.key.private_key_to_pem_pkcs8().unwrap(),
    )
    .unwrap();
    let mut mismatched = config;
    mismatched.tls_key = other_key.clone();
    let e = open(mismatched.clone()).await;
    assert!(
        e.contains(&format!(
            "tls_key {} does not match tls_certificate {}",
            other_key.display(),
            mismatched.tls_certificate.display()
        )),
        "{e}"
    );
    w.stop().await;
}

/// A holder whose certificate says `HUB=` is stored as `EHP` (spec §3.4: the same type):
/// its attestation names it, and it adds information to and deletes its key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_certificate_holds_its_ehp_keys() {
    let w = World::new("keydepot-hub", common::Backend::Embedded).await;
    let hub = common::pki()
        .pki
        .institution(&etee_testpki::InstitutionSpec::new(
            "HUB",
            "1990001916",
            "A Hub",
        ))
        .unwrap();
    let identities = etee_formats::identity::identities(&cert(&hub.auth.cert));
    assert_eq!(identities[0].id_type, "HUB");
    let now = etee_platform::unix_now();
    let mut r = request_by(&rsa(), &identities[0]);
    r.attestation = Some(attestation(&r, &hub, NON_EXPORTABLE));
    let key = w
        .store(|s| {
            etee_platform::keydepot::register(
                s,
                &w.anchors,
                &identities,
                &r,
                now,
                DEFAULT_MAX_KEYS_PER_HOLDER,
            )
        })
        .unwrap();
    assert!(key.attested);
    assert_eq!(key.holder.identifiers[0].id_type, "EHP");
    let info = KeyInfo {
        label: Some("hub".into()),
        ..Default::default()
    };
    let changed = w
        .store(|s| etee_platform::keydepot::add_info(s, &identities, &r.key_id, &info, now))
        .unwrap();
    assert_eq!(changed.info.label.as_deref(), Some("hub"));
    w.store(|s| etee_platform::keydepot::delete(s, &identities, &r.key_id, now))
        .unwrap();
    w.stop().await;
}

/// A holder registers at most `max_keys_per_holder` keys: one more is a 409 problem
/// `KEYDEPOT_TOO_MANY_KEYS` that says what to do, and is not stored; another holder is not
/// affected, and a deletion makes room.
async fn keys_per_holder_are_bounded(mut w: World) {
    w.restart_with(etee_platform::config::Limits {
        max_keys_per_holder: 2,
        ..Default::default()
    })
    .await;
    let mut alice = w.connect(Some(&w.alice)).await;
    let mut bob = w.connect(Some(&w.bob)).await;
    let first = request(&ec_p256());
    assert_json(&register(&mut alice, &first).await, 201);
    assert_json(&register(&mut alice, &request(&ec_p256())).await, 201);
    let third = request(&ec_p256());
    let detail = assert_problem(
        &register(&mut alice, &third).await,
        409,
        "KEYDEPOT_TOO_MANY_KEYS",
    );
    assert!(
        detail.contains("already has 2 keys") && detail.contains("delete one"),
        "{detail}"
    );
    let a = alice.get(&key_path(&third.key_id)).await.unwrap();
    assert_problem(&a, 404, "KEYDEPOT_UNKNOWN_KEY");
    assert_json(
        &register(&mut bob, &request_by(&ec_p256(), &holder_of(&w.bob))).await,
        201,
    );
    let a = alice
        .get("/etee/v1/keydepot/holders/NIHII-HOSPITAL/71000436/keys")
        .await
        .unwrap();
    assert_eq!(
        KeyListResponse::parse(assert_json(&a, 200))
            .unwrap()
            .keys
            .len(),
        2
    );
    assert_eq!(delete(&mut alice, &first.key_id).await.status, 204);
    assert_json(&register(&mut alice, &third).await, 201);
    w.stop().await;
}

/// Additions to one key's information made at the same moment: each is checked against
/// what the information becomes, so that together they cannot pass the 32-property bound
/// (each passed against the same reading before the store's update was conditional).
async fn concurrent_additions_stay_within_the_bounds(w: World) {
    let identities = etee_formats::identity::identities(&cert(&w.alice.auth.cert));
    let now = etee_platform::unix_now();
    let r = request(&rsa());
    let key = w
        .store(|s| {
            etee_platform::keydepot::register(
                s,
                &w.anchors,
                &identities,
                &r,
                now,
                DEFAULT_MAX_KEYS_PER_HOLDER,
            )
        })
        .unwrap();
    let before = key.info.properties.len();
    const CALLERS: usize = 8;
    const EACH: usize = 5;
    assert!(
        before + CALLERS * EACH > 32,
        "the additions must overflow together"
    );
    let addition = |caller: usize| KeyInfo {
        properties: (0..EACH)
            .map(|i| (format!("c{caller}-{i}"), "v".to_owned()))
            .collect(),
        ..Default::default()
    };
    let outcomes: Vec<_> = w.store(|s| {
        let start = std::sync::Barrier::new(CALLERS);
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..CALLERS)
                .map(|caller| {
                    let (start, identities, r) = (&start, &identities, &r);
                    scope.spawn(move || {
                        start.wait();
                        etee_platform::keydepot::add_info(
                            s,
                            identities,
                            &r.key_id,
                            &addition(caller),
                            now,
                        )
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    });
    let mut added = Vec::new();
    for (caller, outcome) in outcomes.into_iter().enumerate() {
        match outcome {
            Ok(_) => added.push(caller),
            Err(e @ etee_platform::keydepot::KeyDepotError::Invalid(_)) => {
                assert!(e.to_string().contains("at most 32"), "{e}")
            }
            Err(etee_platform::keydepot::KeyDepotError::Contended) => {}
            Err(e) => panic!("caller {caller}: {e}"),
        }
    }
    let stored = w
        .store(|s| etee_platform::keydepot::get(s, &r.key_id))
        .unwrap()
        .info;
    // Exactly the successful additions, whole, and within the bound.
    assert_eq!(stored.properties.len(), before + added.len() * EACH);
    assert!(stored.properties.len() <= 32, "{}", stored.properties.len());
    for caller in &added {
        for (name, _) in addition(*caller).properties {
            assert!(stored.properties.contains_key(&name), "{name} lost");
        }
    }
    // As many as fit: (32 - 1) / 5 = 6 additions, unless a caller gave up on contention.
    assert!(!added.is_empty());
    w.stop().await;
}
