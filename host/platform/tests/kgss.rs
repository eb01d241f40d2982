//! KGSS over TLS on loopback, SOAP and REST: a hospital creates a key for "any recognised
//! pharmacy"; the pharmacy gets it (answer sealed to its ETK, or with a one-off KEK); a
//! doctor is refused; replays, foreign signers, misaddressed seals and borrowed ETKs are
//! refused; the holder deletes the key and then nobody gets it. The wrapping key here is
//! the insecure in-memory one; the HSM-backed wrapper is tested against SoftHSM in the
//! end-to-end tests.

mod common;

on_both_stores!(
    soap_new_key_for_recognised_pharmacies,
    rest_create_get_and_delete_by_the_holder,
    rest_bad_key_ids_and_methods_are_problems,
    rest_bodies_that_are_no_sealed_request_are_kgss_invalid_request,
    a_refused_seals_reason_is_logged_where_the_caller_is_told,
    a_wcf_security_header_is_accepted,
    the_replay_table_is_purged_while_the_platform_runs,
    a_deletion_racing_reads_is_final,
    an_attribute_removed_while_reads_run_is_final,
    a_store_writer_cannot_rebind_a_wrapped_key
);

use base64::Engine as _;
use common::{ring_of, signer_of, World};
use etee_formats::cms::{seal, unseal_to_vec, Recipient, SealOptions, UnsealOptions};
use etee_services::kgss::{
    vocabulary, Credential, GetKeyRequestContent, GetKeyResponseContent, GetNewKeyRequestContent,
    GetNewKeyResponseContent, KgssRequest, KgssResponse, Operation, ReplyTo,
};
use etee_services::secret::SecretBytes;
use etee_testpki::Institution;

/// `content` sealed by `from` to `to`'s ETK.
fn seal_for(from: &Institution, to: &Institution, content: &[u8]) -> Vec<u8> {
    seal_signed_at(from, to, content, None)
}

/// [`seal_for`] with the given signing time (now when `None`).
fn seal_signed_at(
    from: &Institution,
    to: &Institution,
    content: &[u8],
    signing_time: Option<i64>,
) -> Vec<u8> {
    let mut out = Vec::new();
    seal(
        &signer_of(from),
        &[Recipient::Certificate(common::cert(&to.etk_cert))],
        None,
        content,
        &mut out,
        &SealOptions {
            signing_time,
            ..Default::default()
        },
    )
    .unwrap();
    out
}

/// Opens an answer of KGSS with `to`'s ETK key (or a KEK), checking it is signed by KGSS.
fn open_answer(w: &World, to: Option<&Institution>, kek: Option<&[u8]>, sealed: &[u8]) -> Vec<u8> {
    let opts = UnsealOptions {
        anchors: w.anchors.clone(),
        kek: kek.map(|k| zeroize::Zeroizing::new(k.to_vec())),
        ..Default::default()
    };
    let ring = to.map(ring_of).unwrap_or_default();
    let (result, content) = unseal_to_vec(sealed, &ring, &opts).unwrap();
    assert!(result.verdict.is_clean(), "{:?}", result.verdict);
    let sender = result.sender.unwrap().certificate.unwrap();
    assert_eq!(
        sender.der(),
        common::cert(&w.kgss.auth.cert).der(),
        "not signed by KGSS"
    );
    content.unwrap()
}

fn new_key_request(w: &World, from: &Institution, etk_of: &Institution) -> Vec<u8> {
    let content = GetNewKeyRequestContent {
        allowed_readers: vec![vocabulary::recognised_pharmacy()],
        excluded_readers: vec![],
        etk: etk_of.etk.clone(),
        deletion_strategy: true,
    }
    .to_xml();
    seal_for(from, &w.kgss, &content)
}

fn get_key_request(w: &World, from: &Institution, key_id: &[u8], reply_to: ReplyTo) -> Vec<u8> {
    let content = GetKeyRequestContent {
        key_identifier: key_id.to_vec(),
        reply_to,
    }
    .to_xml();
    seal_for(from, &w.kgss, &content)
}

fn soap(operation: Operation, sealed: Vec<u8>) -> Vec<u8> {
    KgssRequest {
        operation,
        sealed_content: sealed,
    }
    .to_xml()
}

async fn call(
    c: &mut etee_platform::client::Connection,
    operation: Operation,
    sealed: Vec<u8>,
) -> KgssResponse {
    let a = c.soap("/Kgss/v1", soap(operation, sealed)).await.unwrap();
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    KgssResponse::parse(&a.body).unwrap()
}

/// A refused seal's message is the fixed text, with no verdict in it.
fn assert_opaque(r: &KgssResponse) {
    let text: Vec<&str> = r.errors[0]
        .messages
        .iter()
        .map(|m| m.text.as_str())
        .collect();
    assert_eq!(text, [etee_platform::kgss::SEAL_REFUSED], "{r:?}");
}

fn refusal_code(r: &KgssResponse) -> &str {
    assert!(!r.is_success(), "served: {r:?}");
    assert!(r.sealed_content.is_none());
    &r.errors[0].code
}

async fn soap_new_key_for_recognised_pharmacies(w: World) {
    let mut c = w.connect(None).await;

    // Alice (a hospital) asks for a key any recognised pharmacy may read.
    let r = call(
        &mut c,
        Operation::GetNewKey,
        new_key_request(&w, &w.alice, &w.alice),
    )
    .await;
    assert!(r.is_success(), "{r:?}");
    let answer = open_answer(&w, Some(&w.alice), None, r.sealed_content.as_ref().unwrap());
    let new = GetNewKeyResponseContent::parse(&answer).unwrap();
    assert_eq!(new.new_key_identifier.len(), 16);

    // A request served once is a replay when it comes again; one refused for its content
    // (an ETK that is not the caller's) made no key, so it is refused again for the same
    // reason, not as a replay (its digest is remembered only with the key it creates).
    let once = new_key_request(&w, &w.bob, &w.bob);
    assert!(call(&mut c, Operation::GetNewKey, once.clone())
        .await
        .is_success());
    assert_eq!(
        refusal_code(&call(&mut c, Operation::GetNewKey, once).await),
        "KGSS_REPLAYED_REQUEST"
    );
    let borrowed = new_key_request(&w, &w.bob, &w.alice);
    for _ in 0..2 {
        let r = call(&mut c, Operation::GetNewKey, borrowed.clone()).await;
        assert_ne!(refusal_code(&r), "KGSS_REPLAYED_REQUEST");
        assert!(!r.is_success(), "{r:?}");
    }
    assert_eq!(new.new_key.len(), 16);
    let id = new.new_key_identifier.clone();

    // At rest the key is wrapped, never in clear.
    let key_id: [u8; 16] = id.clone().try_into().unwrap();
    let stored = w.store(move |s| s.get_kgss_key(&key_id)).unwrap().unwrap();
    // The 16-byte key and its 16-byte binding (id, creator, readers), wrapped: 40 bytes.
    assert_eq!(stored.wrapped_key.len(), 40);
    assert!(!stored
        .wrapped_key
        .windows(16)
        .any(|x| x == new.new_key.expose()));

    // Bob (a recognised pharmacy) gets it, sealed to his ETK ...
    let r = call(
        &mut c,
        Operation::GetKey,
        get_key_request(&w, &w.bob, &id, ReplyTo::Etk(w.bob.etk.clone())),
    )
    .await;
    assert!(r.is_success(), "{r:?}");
    let got = GetKeyResponseContent::parse(&open_answer(
        &w,
        Some(&w.bob),
        None,
        r.sealed_content.as_ref().unwrap(),
    ))
    .unwrap();
    assert_eq!(got.key.expose(), new.new_key.expose());

    // ... or with a one-off KEK of his.
    let kek = [0x5au8; 16];
    let reply = ReplyTo::Kek {
        key: SecretBytes::from_slice(&kek),
        key_identifier: Some(b"bob-one-off-kek".to_vec()),
    };
    let r = call(
        &mut c,
        Operation::GetKey,
        get_key_request(&w, &w.bob, &id, reply),
    )
    .await;
    let got = GetKeyResponseContent::parse(&open_answer(
        &w,
        None,
        Some(&kek),
        r.sealed_content.as_ref().unwrap(),
    ))
    .unwrap();
    assert_eq!(got.key.expose(), new.new_key.expose());

    // A doctor is not a recognised pharmacy.
    let r = call(
        &mut c,
        Operation::GetKey,
        get_key_request(&w, &w.doctor, &id, ReplyTo::Etk(w.doctor.etk.clone())),
    )
    .await;
    assert_eq!(refusal_code(&r), "KGSS_ACCESS_DENIED");
    assert_eq!(r.status.code, "403");

    // The same sealed request twice: the second is a replay.
    let once = get_key_request(&w, &w.bob, &id, ReplyTo::Etk(w.bob.etk.clone()));
    assert!(call(&mut c, Operation::GetKey, once.clone())
        .await
        .is_success());
    assert_eq!(
        refusal_code(&call(&mut c, Operation::GetKey, once.clone()).await),
        "KGSS_REPLAYED_REQUEST"
    );
    // The same request with bytes appended, or with its outer SEQUENCE's indefinite length
    // made definite, still opens cleanly: it is the same request, and a replay.
    let mut appended = once.clone();
    appended.push(0);
    let definite = {
        assert_eq!(
            &once[..2],
            &[0x30, 0x80],
            "sealed with an indefinite outer length"
        );
        assert_eq!(&once[once.len() - 2..], &[0, 0]);
        let body = &once[2..once.len() - 2];
        let mut der = vec![0x30, 0x83];
        der.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        der.extend_from_slice(body);
        der
    };
    for copy in [appended, definite] {
        assert_eq!(
            refusal_code(&call(&mut c, Operation::GetKey, copy).await),
            "KGSS_REPLAYED_REQUEST"
        );
    }

    // Unknown key.
    let r = call(
        &mut c,
        Operation::GetKey,
        get_key_request(&w, &w.bob, &[9; 16], ReplyTo::Etk(w.bob.etk.clone())),
    )
    .await;
    assert_eq!(refusal_code(&r), "KGSS_UNKNOWN_KEY");

    // Signed by a stranger (another CA), sealed to the wrong recipient, or asking KGSS to
    // answer to somebody else's ETK: refused.
    let stranger = common::foreign_institution();
    let content = GetNewKeyRequestContent {
        allowed_readers: vec![vocabulary::any_doctor()],
        excluded_readers: vec![],
        etk: w.alice.etk.clone(),
        deletion_strategy: false,
    }
    .to_xml();
    let r = call(
        &mut c,
        Operation::GetNewKey,
        seal_for(&stranger, &w.kgss, &content),
    )
    .await;
    assert_eq!(refusal_code(&r), "KGSS_INVALID_SEAL");
    assert_opaque(&r);
    // Signed too long ago (a captured request, replayed once the replay table has
    // forgotten it) or in the future: refused, whatever the unseal's verdict (which only
    // warns). A few seconds old is fine.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    // The official library's window: 5 minutes, and 300 s of clock skew either way
    // (spec §1.6): a caller whose clock is 200 s off is served.
    for (signed, refused) in [
        (now - 300 - 300 - 15, true),
        (now + 300 + 15, true),
        (now + 3600, true),
        (now - 5, false),
        (now - 300 - 200, false),
        (now + 200, false),
    ] {
        let r = call(
            &mut c,
            Operation::GetNewKey,
            seal_signed_at(&w.alice, &w.kgss, &content, Some(signed)),
        )
        .await;
        if refused {
            assert_eq!(refusal_code(&r), "KGSS_INVALID_SEAL", "signed at {signed}");
            assert_opaque(&r);
        } else {
            assert!(r.is_success(), "signed {} s ago: {r:?}", now - signed);
        }
    }

    // Damaged anywhere (ciphertext, padding, signatures, certificates), a request gets
    // the same fixed text: the verdict, which tells a good CBC padding from a bad one, is
    // not given (it would be a padding oracle on captured requests).
    let good = seal_for(&w.alice, &w.kgss, &content);
    for at in [
        good.len() / 3,
        good.len() / 2,
        good.len() * 2 / 3,
        good.len() - 40,
    ] {
        let mut bad = good.clone();
        bad[at] ^= 0x01;
        let r = call(&mut c, Operation::GetNewKey, bad).await;
        assert_eq!(refusal_code(&r), "KGSS_INVALID_SEAL", "byte {at}");
        assert_opaque(&r);
    }
    let r = call(
        &mut c,
        Operation::GetNewKey,
        seal_for(&w.alice, &w.bob, &content),
    )
    .await;
    assert_eq!(refusal_code(&r), "KGSS_INVALID_SEAL");
    let r = call(
        &mut c,
        Operation::GetNewKey,
        new_key_request(&w, &w.alice, &w.bob),
    )
    .await;
    assert_eq!(refusal_code(&r), "KGSS_INVALID_REQUEST");
    // Garbage inside a good seal.
    let r = call(
        &mut c,
        Operation::GetKey,
        seal_for(&w.bob, &w.kgss, b"<not/>"),
    )
    .await;
    assert_eq!(refusal_code(&r), "KGSS_INVALID_REQUEST");
    w.stop().await;
}

/// The REST body carrying a sealed KGSS request.
fn rest_body(sealed: &[u8]) -> Vec<u8> {
    let b64 = base64::engine::general_purpose::STANDARD;
    serde_json::to_vec(&serde_json::json!({ "sealedRequest": b64.encode(sealed) })).unwrap()
}

/// The REST body of `who`'s GetKey for `key_id`, the answer sealed to its ETK.
fn rest_get(w: &World, who: &Institution, key_id: &[u8]) -> Vec<u8> {
    rest_body(&get_key_request(
        w,
        who,
        key_id,
        ReplyTo::Etk(who.etk.clone()),
    ))
}

/// Alice creates a key for recognised pharmacies over REST on `c`; the 201 answer.
/// The key id (decoded) of a create answer.
fn created_key_id(created: &etee_platform::client::Answer) -> Vec<u8> {
    let v: serde_json::Value = serde_json::from_slice(&created.body).unwrap();
    base64::engine::general_purpose::STANDARD
        .decode(v["keyId"].as_str().unwrap())
        .unwrap()
}

/// The REST path of a KGSS key, its id in the URL-safe form.
fn key_path(key_id: &[u8]) -> String {
    format!(
        "/etee/v1/kgss/keys/{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key_id)
    )
}

async fn rest_create(
    w: &World,
    c: &mut etee_platform::client::Connection,
) -> etee_platform::client::Answer {
    let a = c
        .send(
            "POST",
            "/etee/v1/kgss/keys",
            Some("application/json"),
            rest_body(&new_key_request(w, &w.alice, &w.alice)),
        )
        .await
        .unwrap();
    assert_eq!(a.status, 201, "{}", String::from_utf8_lossy(&a.body));
    a
}

async fn rest_create_get_and_delete_by_the_holder(w: World) {
    let b64 = base64::engine::general_purpose::STANDARD;
    let sealed_of = |answer: &[u8]| -> Vec<u8> {
        let v: serde_json::Value = serde_json::from_slice(answer).unwrap();
        b64.decode(v["sealedResponse"].as_str().unwrap()).unwrap()
    };

    let mut alice = w.connect(Some(&w.alice)).await;
    let a = rest_create(&w, &mut alice).await;
    let new = GetNewKeyResponseContent::parse(&open_answer(
        &w,
        Some(&w.alice),
        None,
        &sealed_of(&a.body),
    ))
    .unwrap();
    let key_id = new.new_key_identifier.clone();
    let v: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
    assert_eq!(b64.decode(v["keyId"].as_str().unwrap()).unwrap(), key_id);
    // The key never appears in the JSON, only sealed.
    assert!(!a.body.windows(16).any(|x| x == new.new_key.expose()));

    let mut bob = w.connect(Some(&w.bob)).await;
    let get = |who: &Institution| rest_get(&w, who, &key_id);
    let a = bob
        .send(
            "POST",
            "/etee/v1/kgss/keys/retrieve",
            Some("application/json"),
            get(&w.bob),
        )
        .await
        .unwrap();
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    let got =
        GetKeyResponseContent::parse(&open_answer(&w, Some(&w.bob), None, &sealed_of(&a.body)))
            .unwrap();
    assert_eq!(got.key.expose(), new.new_key.expose());

    // The id exactly as create returned it (standard base64, percent-encoded for the path),
    // and the URL-safe form, name the same key; a malformed id is a bad request.
    let returned = v["keyId"].as_str().unwrap().to_owned();
    let path = format!(
        "/etee/v1/kgss/keys/{}",
        returned
            .replace('/', "%2F")
            .replace('+', "%2B")
            .replace('=', "%3D")
    );
    assert_eq!(
        alice
            .send("DELETE", "/etee/v1/kgss/keys/not*base64", None, vec![])
            .await
            .unwrap()
            .status,
        400
    );
    let url_safe_path = key_path(&key_id);
    // Only the holder deletes: not Bob (asking with the URL-safe form, which names the
    // same key), not an anonymous caller.
    let a = bob
        .send("DELETE", &url_safe_path, None, vec![])
        .await
        .unwrap();
    assert_eq!(a.status, 403);
    let why = String::from_utf8_lossy(&a.body);
    assert!(
        why.contains("KGSS_ACCESS_DENIED") && why.contains("only the key's holder"),
        "{why}"
    );
    let mut anonymous = w.connect(None).await;
    assert_eq!(
        anonymous
            .send("DELETE", &path, None, vec![])
            .await
            .unwrap()
            .status,
        401
    );
    assert_eq!(
        alice
            .send("DELETE", &path, None, vec![])
            .await
            .unwrap()
            .status,
        204
    );
    // Deleted for real: nobody gets it, and it is not in the store.
    let a = bob
        .send(
            "POST",
            "/etee/v1/kgss/keys/retrieve",
            Some("application/json"),
            get(&w.bob),
        )
        .await
        .unwrap();
    assert_eq!(a.status, 404);
    let id: [u8; 16] = key_id.clone().try_into().unwrap();
    assert!(w.store(move |s| s.get_kgss_key(&id)).unwrap().is_none());
    assert_eq!(
        alice
            .send("DELETE", &path, None, vec![])
            .await
            .unwrap()
            .status,
        404
    );

    // The audit chain in the store: create, read, refused delete, delete; no key bytes.
    let events = w.store(|s| s.events(0, 100)).unwrap();
    etee_store::audit::verify(0, etee_store::audit::GENESIS, &events).unwrap();
    let hex_id = hex::encode(&key_id);
    let seen: Vec<(&str, &str, &str)> = events
        .iter()
        .filter(|e| e.event.subject == hex_id)
        .map(|e| {
            (
                e.event.action.as_str(),
                e.event.actor.as_str(),
                e.event.outcome.as_str(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            ("kgss.create", "NIHII-HOSPITAL=71000436", "created"),
            ("kgss.read", "NIHII-PHARMACY=27150201", "granted"),
            ("kgss.delete", "NIHII-PHARMACY=27150201", "denied"),
            ("kgss.delete", "NIHII-HOSPITAL=71000436", "deleted"),
        ]
    );
    let key_hex = hex::encode(new.new_key.expose());
    assert!(events
        .iter()
        .all(|e| !format!("{:?}", e.event).contains(&key_hex)));

    // Bad JSON and bad base64: 400 problems.
    for bad in [
        b"{".to_vec(),
        br#"{"sealedRequest":"***"}"#.to_vec(),
        br#"{"other":1}"#.to_vec(),
    ] {
        let a = bob
            .send("POST", "/etee/v1/kgss/keys", Some("application/json"), bad)
            .await
            .unwrap();
        assert_eq!(a.status, 400);
        assert_eq!(a.content_type, "application/problem+json");
    }
    w.stop().await;
}

async fn retrieve(
    c: &mut etee_platform::client::Connection,
    body: Vec<u8>,
) -> etee_platform::Result<etee_platform::client::Answer> {
    c.send(
        "POST",
        "/etee/v1/kgss/keys/retrieve",
        Some("application/json"),
        body,
    )
    .await
}

/// Revocation lists in use by the platform (`crl`; replaced here as the platform's file
/// follower would): Bob gets a key while his certificate is good; once the list revokes
/// it, his kept-alive connection's next request is served without a caller (401) and that
/// connection is closed, a new connection fares no better, and a GetKey he sealed is
/// refused (its signer is revoked) even on Alice's connection; Alice is unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_caller_is_refused_on_its_open_connection_and_after() {
    use etee_formats::revocation::{Revocation, RevocationPolicy};
    let mut w = World::new("revoked-caller", common::Backend::Embedded).await;
    let pki = &common::pki().pki;
    let now = etee_platform::unix_now();
    let list = |revoked: &[&Institution], number: u64| {
        let entries: Vec<_> = revoked
            .iter()
            .map(|i| (i.auth.cert.serial_number(), now - 10))
            .collect();
        pki.crl(&entries, number, now - 60, now + 3600)
            .unwrap()
            .to_der()
            .unwrap()
    };
    let revocation = Revocation::new(&[list(&[], 1)], RevocationPolicy::Optional).unwrap();
    w.restart_with_anchors(w.anchors.clone().with_revocation(revocation.clone()))
        .await;

    let mut alice = w.connect(Some(&w.alice)).await;
    let key_id = created_key_id(&rest_create(&w, &mut alice).await);
    let get = |who: &Institution| rest_get(&w, who, &key_id);
    let mut bob = w.connect(Some(&w.bob)).await;
    let a = retrieve(&mut bob, get(&w.bob)).await.unwrap();
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));

    // Beside the lists, the end of each of the platform's own certificates: KGSS's
    // authentication (it signs the answers) and ETK certificates, the TLS server's.
    let not_after = |cert: &openssl::x509::X509| {
        etee_formats::cert::Certificate::from_der(&cert.to_der().unwrap())
            .unwrap()
            .not_after()
    };
    let expiry = |role: &str, at: i64| {
        format!(
            "etee_platform_certificate_expiry_timestamp_seconds{{certificate=\"{role}\"}} {at}\n"
        )
    };
    w.metrics_have(&[
        "etee_platform_revocation_lists 1\n",
        "etee_platform_revocation_lists_stale 0\n",
        &format!(
            "etee_platform_revocation_next_update_seconds {}\n",
            now + 3600
        ),
        &expiry("authentication", not_after(&w.kgss.auth.cert)),
        &expiry("etk", not_after(&w.kgss.etk_cert)),
        "etee_platform_certificate_expiry_timestamp_seconds{certificate=\"tls\"} ",
    ])
    .await;
    let certs = w.anchors.certs().to_vec();
    revocation.replace(&[list(&[&w.bob], 2)], &certs).unwrap();
    // Deleting Alice's key: as Bob that would be 403 (not the holder); served without a
    // caller, it is 401.
    let delete = key_path(&key_id);
    let a = bob.send("DELETE", &delete, None, vec![]).await.unwrap();
    assert_eq!(a.status, 401, "{}", String::from_utf8_lossy(&a.body));
    assert!(
        String::from_utf8_lossy(&a.body).contains("KGSS_NOT_AUTHENTICATED"),
        "{}",
        String::from_utf8_lossy(&a.body)
    );
    assert!(
        retrieve(&mut bob, get(&w.bob)).await.is_err(),
        "the connection of a revoked caller stays open"
    );
    let mut again = w.connect(Some(&w.bob)).await;
    let a = again.send("DELETE", &delete, None, vec![]).await.unwrap();
    assert_eq!(a.status, 401, "{}", String::from_utf8_lossy(&a.body));
    // His GetKey is refused whoever carries it: its signer is revoked (the refusal of a
    // seal says no more than that, by design).
    for c in [&mut w.connect(Some(&w.bob)).await, &mut alice] {
        let a = retrieve(c, get(&w.bob)).await.unwrap();
        assert_eq!(a.status, 400, "{}", String::from_utf8_lossy(&a.body));
        assert!(
            String::from_utf8_lossy(&a.body).contains("KGSS_INVALID_SEAL"),
            "{}",
            String::from_utf8_lossy(&a.body)
        );
    }
    // The same request with the lists emptied again is served: the refusal was the list's.
    revocation.replace(&[list(&[], 3)], &certs).unwrap();
    let mut bob = w.connect(Some(&w.bob)).await;
    let a = retrieve(&mut bob, get(&w.bob)).await.unwrap();
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    revocation.replace(&[list(&[&w.bob], 4)], &certs).unwrap();
    // Alice herself goes on.
    let a = retrieve(&mut alice, get(&w.alice)).await.unwrap();
    assert_eq!(
        a.status,
        403,
        "Alice is not a pharmacy: {}",
        String::from_utf8_lossy(&a.body)
    );
    rest_create(&w, &mut alice).await;
    // KGSS's own certificate revoked: no key is made nor released (a service error; its
    // answers would be refused by every client), until the lists say otherwise again.
    revocation
        .replace(&[list(&[&w.bob, &w.kgss], 5)], &certs)
        .unwrap();
    let a = alice
        .send(
            "POST",
            "/etee/v1/kgss/keys",
            Some("application/json"),
            rest_body(&new_key_request(&w, &w.alice, &w.alice)),
        )
        .await
        .unwrap();
    assert_eq!(a.status, 500, "{}", String::from_utf8_lossy(&a.body));
    let a = retrieve(&mut alice, get(&w.alice)).await.unwrap();
    assert_eq!(a.status, 500, "{}", String::from_utf8_lossy(&a.body));
    revocation.replace(&[list(&[&w.bob], 6)], &certs).unwrap();
    rest_create(&w, &mut alice).await;
    w.stop().await;
}

/// An OCSP responder in memory for the platform's tests: answers with the test PKI's CA
/// about whichever institution the request names, revoked for those in `revoked`.
struct Answering {
    known: Vec<Institution>,
    revoked: Vec<Vec<u8>>,
}

impl etee_formats::ocsp::OcspTransport for Answering {
    fn post(&self, _url: &str, request: &[u8]) -> Result<Vec<u8>, String> {
        let pki = &common::pki().pki;
        let now = etee_platform::unix_now();
        let names = |i: &&Institution| {
            let id = etee_formats::ocsp::CertId::of(&i.auth.cert, &pki.root.cert).unwrap();
            request.windows(id.der().len()).any(|w| w == id.der())
        };
        let inst = self.known.iter().find(names).ok_or("not asked about")?;
        let der = inst.auth.cert.to_der().unwrap();
        let status = if self.revoked.contains(&der) {
            etee_testpki::OcspStatus::Revoked(now - 60)
        } else {
            etee_testpki::OcspStatus::Good
        };
        let answer = etee_testpki::OcspAnswer {
            nonce: Some(request[request.len() - 16..].to_vec()),
            ..etee_testpki::OcspAnswer::at(status, now)
        };
        pki.ocsp_response(&inst.auth.cert, &answer)
            .map_err(|e| e.to_string())
    }
}

/// Callers checked by OCSP alone (no list): the revoked one is served without a caller
/// (the check runs off the async workers), the other goes on, and the metrics count the
/// questions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_revoked_by_its_ocsp_responder_is_refused() {
    use etee_formats::ocsp::{Online, Responder};
    use etee_formats::revocation::{Revocation, RevocationPolicy};
    let mut w = World::new("ocsp-caller", common::Backend::Embedded).await;
    let online = Online::new(
        Responder::Url("http://ocsp.test/".into()),
        Box::new(Answering {
            known: vec![w.alice.clone(), w.bob.clone()],
            revoked: vec![w.bob.auth.cert.to_der().unwrap()],
        }),
    );
    let revocation = Revocation::new(&[], RevocationPolicy::Mandatory)
        .unwrap()
        .with_online(online);
    w.restart_with_anchors(w.anchors.clone().with_revocation(revocation))
        .await;

    let mut alice = w.connect(Some(&w.alice)).await;
    let key_id = created_key_id(&rest_create(&w, &mut alice).await);
    let delete = key_path(&key_id);
    let mut bob = w.connect(Some(&w.bob)).await;
    let a = bob.send("DELETE", &delete, None, vec![]).await.unwrap();
    assert_eq!(a.status, 401, "{}", String::from_utf8_lossy(&a.body));
    // Alice, good, deletes her key.
    let mut alice = w.connect(Some(&w.alice)).await;
    let a = alice.send("DELETE", &delete, None, vec![]).await.unwrap();
    assert!(
        (200..300).contains(&a.status),
        "{}: {}",
        a.status,
        String::from_utf8_lossy(&a.body)
    );
    w.metrics_have(&["etee_platform_ocsp_asked_total 2\n"])
        .await;
    w.stop().await;
}

/// A problem answer (RFC 7807) with `status` and `title`: its detail, which names nothing
/// of the platform's code (axum's own rejections name the handler's variables).
fn problem_detail(a: &etee_platform::client::Answer, status: u16, title: &str) -> String {
    assert_eq!(a.status, status, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.content_type, "application/problem+json");
    let p: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
    assert_eq!(p["status"], status, "{p}");
    assert_eq!(p["title"], title, "{p}");
    let detail = p["detail"].as_str().unwrap_or_default().to_owned();
    assert!(
        !detail.contains("key_id") && !detail.contains('`'),
        "{detail}"
    );
    detail
}

/// Key ids that cannot be KGSS's (not UTF-8 in the path, not base64, not 16 bytes) are 400
/// problems, in the path of a delete as in a sealed GetKey; an unknown 16-byte id is 404;
/// a method a route does not serve is a 405 problem.
async fn rest_bad_key_ids_and_methods_are_problems(w: World) {
    let mut alice = w.connect(Some(&w.alice)).await;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let long = b64.encode([7u8; 225]);
    for (path, why) in [
        ("/etee/v1/kgss/keys/%ff".to_owned(), "not UTF-8"),
        ("/etee/v1/kgss/keys/%FF%FE".to_owned(), "not UTF-8"),
        ("/etee/v1/kgss/keys/***".to_owned(), "not base64"),
        (format!("/etee/v1/kgss/keys/{long}"), "16 bytes"),
        (key_path(&[7; 15]), "16 bytes"),
    ] {
        let a = alice.send("DELETE", &path, None, vec![]).await.unwrap();
        let detail = problem_detail(&a, 400, "KGSS_INVALID_REQUEST");
        assert!(detail.contains(why), "{path}: {detail}");
    }
    let a = alice
        .send("DELETE", &key_path(&[7; 16]), None, vec![])
        .await
        .unwrap();
    problem_detail(&a, 404, "KGSS_UNKNOWN_KEY");

    // The same ids in a sealed GetKey: refused as a bad request too.
    let mut bob = w.connect(None).await;
    for id in [&[9u8; 8][..], &[9; 225]] {
        let a = retrieve(&mut bob, rest_get(&w, &w.bob, id)).await.unwrap();
        let detail = problem_detail(&a, 400, "KGSS_INVALID_REQUEST");
        assert!(detail.contains("16 bytes"), "{detail}");
    }

    for (method, path) in [
        ("GET", "/etee/v1/kgss/keys"),
        ("PUT", "/etee/v1/kgss/keys/retrieve"),
        ("GET", &key_path(&[7; 16])),
        ("GET", "/Kgss/v1"),
    ] {
        let a = alice.send(method, path, None, vec![]).await.unwrap();
        problem_detail(&a, 405, "Method not allowed");
    }
    w.stop().await;
}

/// A REST body that is no `{"sealedRequest": base64}` is refused as a business error,
/// the problem's title being `KGSS_INVALID_REQUEST` (docs/platform.md: REST business
/// errors are titled with their code, which our client maps), as a bad sealed content is.
async fn rest_bodies_that_are_no_sealed_request_are_kgss_invalid_request(w: World) {
    let mut c = w.connect(None).await;
    for path in ["/etee/v1/kgss/keys", "/etee/v1/kgss/keys/retrieve"] {
        for (body, why) in [
            (&b"{}"[..], "sealedRequest"),
            (b"not json", "JSON"),
            (br#"{"sealedRequest": "***"}"#, "sealedRequest"),
        ] {
            let a = c
                .send("POST", path, Some("application/json"), body.to_vec())
                .await
                .unwrap();
            let said = String::from_utf8_lossy(&a.body).into_owned();
            assert_eq!(a.status, 400, "{path}: {said}");
            assert_eq!(a.content_type, "application/problem+json", "{path}");
            let p: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
            assert_eq!(p["title"], "KGSS_INVALID_REQUEST", "{path}: {p}");
            assert_eq!(p["status"], 400, "{path}: {p}");
            let detail = p["detail"].as_str().unwrap_or_default();
            assert!(detail.contains(why), "{path} {body:?}: {detail}");
        }
    }
    w.stop().await;
}

/// A refused seal's answer says the reason is in the service's log, under the answer's id:
/// it is, at a level the default filter (`warn,…`) keeps, with the unseal's verdict and
/// nothing of the request.
async fn a_refused_seals_reason_is_logged_where_the_caller_is_told(w: World) {
    common::capture_logs();
    let content = GetNewKeyRequestContent {
        allowed_readers: vec![vocabulary::recognised_pharmacy()],
        excluded_readers: vec![],
        etk: w.alice.etk.clone(),
        deletion_strategy: false,
    }
    .to_xml();
    // Sealed to Bob, not to KGSS: KGSS cannot open it.
    let misaddressed = seal_for(&w.alice, &w.bob, &content);
    let mut c = w.connect(None).await;
    let r = call(&mut c, Operation::GetNewKey, misaddressed.clone()).await;
    assert_eq!(refusal_code(&r), "KGSS_INVALID_SEAL");
    assert_opaque(&r);
    let soap_id = r.id.clone().expect("the answer's id");
    let a = c
        .send(
            "POST",
            "/etee/v1/kgss/keys",
            Some("application/json"),
            rest_body(&misaddressed),
        )
        .await
        .unwrap();
    let p: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
    assert_eq!(p["title"], "KGSS_INVALID_SEAL", "{p}");
    assert_eq!(p["detail"], etee_platform::kgss::SEAL_REFUSED, "{p}");
    let rest_id = p["instance"]
        .as_str()
        .expect("the problem's instance")
        .to_owned();
    assert_ne!(rest_id, soap_id);

    for id in [soap_id, rest_id] {
        let logged = common::logged();
        let line = logged
            .iter()
            .find(|l| l.text.contains(&id))
            .unwrap_or_else(|| panic!("nothing logged under {id}: {logged:?}"));
        assert!(line.level <= tracing::Level::WARN, "{line:?}");
        // The verdict is there (a code of the unseal, not the public text), the request's
        // content is not.
        assert!(line.text.contains("KGSS refused"), "{line:?}");
        assert!(!line.text.contains("does not open and verify"), "{line:?}");
        assert!(
            line.text.chars().any(|c| c.is_ascii_uppercase()),
            "{line:?}"
        );
        assert!(!line.text.contains("RecognisedPharmacy"), "{line:?}");
    }
    w.stop().await;
}

/// `GetNewKey` and `GetKey` as a WCF client of the `_X509` binding sends them (a
/// `wsse:Security` header marked `mustUnderstand="1"` with a Timestamp): KGSS understands
/// the header, in that it accepts it (and says so at debug); its content grants nothing,
/// the caller is still the sealed request's signer: a doctor is refused as without it.
async fn a_wcf_security_header_is_accepted(w: World) {
    common::capture_logs();
    let mut c = w.connect(None).await;
    let wcf = |operation: Operation, sealed: &[u8]| {
        let (request, inner) = match operation {
            Operation::GetNewKey => ("GetNewKeyRequest", "SealedNewKeyRequest"),
            Operation::GetKey => ("GetKeyRequest", "SealedKeyRequest"),
        };
        common::wcf_envelope(&format!(
            r#"<{request} xmlns="{ns}"><{inner}><SealedContent>{b64}</SealedContent></{inner}></{request}>"#,
            ns = etee_services::kgss::PROTOCOL_NS,
            b64 = base64::engine::general_purpose::STANDARD.encode(sealed),
        ))
    };
    let mut ask = async |operation, sealed: Vec<u8>| {
        let a = c.soap("/Kgss/v1", wcf(operation, &sealed)).await.unwrap();
        assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
        KgssResponse::parse(&a.body).unwrap()
    };
    let r = ask(
        Operation::GetNewKey,
        new_key_request(&w, &w.alice, &w.alice),
    )
    .await;
    assert!(r.is_success(), "{r:?}");
    let answer = open_answer(&w, Some(&w.alice), None, r.sealed_content.as_ref().unwrap());
    let new = GetNewKeyResponseContent::parse(&answer).unwrap();
    let id = new.new_key_identifier.clone();

    let r = ask(
        Operation::GetKey,
        get_key_request(&w, &w.bob, &id, ReplyTo::Etk(w.bob.etk.clone())),
    )
    .await;
    assert!(r.is_success(), "{r:?}");
    let got = GetKeyResponseContent::parse(&open_answer(
        &w,
        Some(&w.bob),
        None,
        r.sealed_content.as_ref().unwrap(),
    ))
    .unwrap();
    assert_eq!(got.key.expose(), new.new_key.expose());

    let r = ask(
        Operation::GetKey,
        get_key_request(&w, &w.doctor, &id, ReplyTo::Etk(w.doctor.etk.clone())),
    )
    .await;
    assert_eq!(refusal_code(&r), "KGSS_ACCESS_DENIED");

    let logged = common::logged();
    assert!(
        logged.iter().any(|l| l.level == tracing::Level::DEBUG
            && l.text
                .contains("WS-Security header was accepted and not evaluated")
            && l.text.contains("kgss")),
        "{logged:?}"
    );
    w.stop().await;
}

/// The platform forgets KGSS's expired request digests as it runs (the table would grow
/// for ever otherwise), and keeps those still in their window.
async fn the_replay_table_is_purged_while_the_platform_runs(mut w: World) {
    use std::time::{Duration, Instant};
    w.restart_configured(|c| c.limits.replay_purge_interval = Duration::from_millis(50))
        .await;
    let now = etee_platform::unix_now();
    let (expired, live) = ([1u8; 32], [2u8; 32]);
    w.store(|s| {
        assert!(s.remember_request(&expired, now - 10, now - 20).unwrap());
        assert!(s.remember_request(&live, now + 3600, now).unwrap());
    });
    // Seen from before its expiry, a digest is there until it is purged.
    let deadline = Instant::now() + Duration::from_secs(10);
    while w.store(|s| s.request_seen(&expired, now - 20)).unwrap() {
        assert!(
            Instant::now() < deadline,
            "the expired digest is still stored"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(w.store(|s| s.request_seen(&live, now)).unwrap());
    w.stop().await;
}

/// An exclusion the platform cannot evaluate (a name it never attests) would exclude
/// nobody: `GetNewKey` refuses it, over SOAP and REST. An exclusion it can evaluate (§5.1
/// vocabulary, or a name of the attribute registry) is kept and applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusions_the_platform_cannot_evaluate_are_refused() {
    let w = World::new("kgss-exclusions", common::Backend::Embedded).await;
    let with_exclusion = |excluded: Credential| {
        GetNewKeyRequestContent {
            allowed_readers: vec![vocabulary::recognised_pharmacy(), vocabulary::any_doctor()],
            excluded_readers: vec![excluded],
            etk: w.alice.etk.clone(),
            deletion_strategy: false,
        }
        .to_xml()
    };
    let unknown = Credential::new(
        vocabulary::CERTIFIED_NS,
        "urn:be:fgov:person:ssin:ehealth:1.0:fpsph:nurse:boolean",
        &["true"],
    );
    let mut c = w.connect(Some(&w.alice)).await;
    let r = call(
        &mut c,
        Operation::GetNewKey,
        seal_for(&w.alice, &w.kgss, &with_exclusion(unknown.clone())),
    )
    .await;
    assert_eq!(refusal_code(&r), "KGSS_INVALID_REQUEST");
    let a = c
        .send(
            "POST",
            "/etee/v1/kgss/keys",
            Some("application/json"),
            rest_body(&seal_for(&w.alice, &w.kgss, &with_exclusion(unknown))),
        )
        .await
        .unwrap();
    let detail = problem_detail(&a, 400, "KGSS_INVALID_REQUEST");
    assert!(detail.contains("excluded reader"), "{detail}");

    // Dr Dirk excluded by his NIHII11 (a §5.1 name the registry holds): the exclusion is
    // kept and applies, though he is a doctor.
    let doctor = Credential::new(
        vocabulary::CERTIFIED_NS,
        vocabulary::DOCTOR_NIHII11,
        &["10203040506"],
    );
    let r = call(
        &mut c,
        Operation::GetNewKey,
        seal_for(&w.alice, &w.kgss, &with_exclusion(doctor)),
    )
    .await;
    assert!(r.is_success(), "{r:?}");
    let id = GetNewKeyResponseContent::parse(&open_answer(
        &w,
        Some(&w.alice),
        None,
        r.sealed_content.as_ref().unwrap(),
    ))
    .unwrap()
    .new_key_identifier;
    let r = call(
        &mut c,
        Operation::GetKey,
        get_key_request(&w, &w.doctor, &id, ReplyTo::Etk(w.doctor.etk.clone())),
    )
    .await;
    assert_eq!(refusal_code(&r), "KGSS_ACCESS_DENIED");

    // A name of the operator's own, once in the registry, can be excluded.
    let custom = ("urn:example:lab", "urn:example:lab:blocked");
    let blocked = Credential::new(custom.0, custom.1, &["yes"]);
    let r = call(
        &mut c,
        Operation::GetNewKey,
        seal_for(&w.alice, &w.kgss, &with_exclusion(blocked.clone())),
    )
    .await;
    assert_eq!(refusal_code(&r), "KGSS_INVALID_REQUEST");
    w.store(|s| {
        s.set_attribute(
            "NIHII-PHARMACY",
            common::PHARMACY,
            &etee_store::Attribute {
                namespace: custom.0.into(),
                name: custom.1.into(),
                value: "yes".into(),
            },
        )
    })
    .unwrap();
    let r = call(
        &mut c,
        Operation::GetNewKey,
        seal_for(&w.alice, &w.kgss, &with_exclusion(blocked)),
    )
    .await;
    assert!(r.is_success(), "{r:?}");
    w.stop().await;
}

/// Bob's GetKeys of `key_id` (sealed beforehand, each a distinct message: copies are
/// replays) on four connections, six each, while `interfere` runs once the first has been
/// served: when `interfere` ended, and each answer with when its request was sent.
async fn reads_racing<F: std::future::Future<Output = std::time::Instant>>(
    w: &World,
    key_id: &[u8],
    interfere: impl FnOnce() -> F,
) -> (
    std::time::Instant,
    Vec<(std::time::Instant, etee_platform::client::Answer)>,
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Instant;
    const CONNECTIONS: usize = 4;
    const EACH: usize = 6;
    let bodies: Vec<Vec<Vec<u8>>> = (0..CONNECTIONS)
        .map(|_| (0..EACH).map(|_| rest_get(w, &w.bob, key_id)).collect())
        .collect();
    let served = AtomicUsize::new(0);
    let reader = |bodies: Vec<Vec<u8>>| {
        let served = &served;
        async move {
            let mut bob = w.connect(Some(&w.bob)).await;
            let mut answers = Vec::new();
            for body in bodies {
                let sent = Instant::now();
                let a = retrieve(&mut bob, body).await.unwrap();
                if a.status == 200 {
                    served.fetch_add(1, Ordering::SeqCst);
                }
                answers.push((sent, a));
            }
            answers
        }
    };
    let interfering = async {
        // Once reads are being served, while more are on their way.
        while served.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        interfere().await
    };
    let mut bodies = bodies.into_iter();
    let mut next = || bodies.next().unwrap();
    let (done_at, a, b, c, d) = tokio::join!(
        interfering,
        reader(next()),
        reader(next()),
        reader(next()),
        reader(next())
    );
    (done_at, [a, b, c, d].into_iter().flatten().collect())
}

/// Says how many of `all` GetKeys were served before `what`, and checks that `what` did
/// race them: some served, not all.
fn raced(granted: usize, all: usize, what: &str) {
    eprintln!("{granted} of {all} GetKeys served before the {what}");
    assert!(granted >= 1);
    assert!(
        granted < all,
        "every read was served: the {what} did not race them"
    );
}

/// The holder deletes a key while a pharmacy's GetKeys are under way on four connections:
/// every GetKey is either served the key or told it is unknown; none sent after the
/// deletion was answered is served; and no grant is on the audit chain after the
/// deletion (GetKey checks that the key is still there in the transaction that records
/// the grant), one per key served.
async fn a_deletion_racing_reads_is_final(w: World) {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut alice = w.connect(Some(&w.alice)).await;
    let created = rest_create(&w, &mut alice).await;
    let key_id = created_key_id(&created);
    let v: serde_json::Value = serde_json::from_slice(&created.body).unwrap();
    let new = GetNewKeyResponseContent::parse(&open_answer(
        &w,
        Some(&w.alice),
        None,
        &b64.decode(v["sealedResponse"].as_str().unwrap()).unwrap(),
    ))
    .unwrap();
    let (deleted_at, answers) = reads_racing(&w, &key_id, || async {
        let a = alice
            .send("DELETE", &key_path(&key_id), None, vec![])
            .await
            .unwrap();
        assert_eq!(a.status, 204, "{}", String::from_utf8_lossy(&a.body));
        std::time::Instant::now()
    })
    .await;
    let mut granted = 0;
    for (sent, a) in &answers {
        match a.status {
            200 => {
                assert!(
                    *sent < deleted_at,
                    "served a GetKey sent after the deletion"
                );
                let v: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
                let sealed = b64.decode(v["sealedResponse"].as_str().unwrap()).unwrap();
                let got =
                    GetKeyResponseContent::parse(&open_answer(&w, Some(&w.bob), None, &sealed))
                        .unwrap();
                assert_eq!(got.key.expose(), new.new_key.expose());
                granted += 1;
            }
            404 => {}
            other => panic!("{other}: {}", String::from_utf8_lossy(&a.body)),
        }
    }
    raced(granted, answers.len(), "deletion");
    let id: [u8; 16] = key_id.clone().try_into().unwrap();
    assert!(w.store(move |s| s.get_kgss_key(&id)).unwrap().is_none());

    let events = w.store(|s| s.events(0, 1000)).unwrap();
    etee_store::audit::verify(0, etee_store::audit::GENESIS, &events).unwrap();
    let hex_id = hex::encode(&key_id);
    let of_key: Vec<_> = events
        .iter()
        .filter(|e| e.event.subject == hex_id)
        .map(|e| (e.event.action.as_str(), e.event.outcome.as_str()))
        .collect();
    let deletion = of_key
        .iter()
        .position(|&e| e == ("kgss.delete", "deleted"))
        .expect("the deletion is on the chain");
    assert_eq!(
        of_key[..deletion]
            .iter()
            .filter(|&&e| e == ("kgss.read", "granted"))
            .count(),
        granted,
        "one grant per key served, all before the deletion: {of_key:?}"
    );
    assert!(
        of_key[deletion + 1..]
            .iter()
            .all(|&e| e != ("kgss.read", "granted")),
        "a grant after the deletion: {of_key:?}"
    );
    w.stop().await;
}

/// An administrator removes Bob's "recognised pharmacy" attribute (with its audit event,
/// in one transaction, as `etee platform attributes remove` does) while his GetKeys for a
/// key of recognised pharmacies are under way on four connections: every GetKey is served
/// or refused; none sent after the removal returned is served; and on the audit chain no
/// grant follows the removal (GetKey checks that the registry still holds what its
/// decision read, in the transaction that records the grant, and decides again if not).
async fn an_attribute_removed_while_reads_run_is_final(w: World) {
    let mut alice = w.connect(Some(&w.alice)).await;
    let key_id = created_key_id(&rest_create(&w, &mut alice).await);
    let (removed_at, answers) = reads_racing(&w, &key_id, || async {
        let event = etee_platform::audit::event(
            etee_platform::unix_now(),
            "attributes.remove",
            "admin uid 0",
            format!("NIHII-PHARMACY={}", common::PHARMACY),
            "done",
            None,
        );
        let removed = w.store(|s| {
            s.apply_with_event(
                etee_store::Change::RemoveAttribute {
                    id_type: "NIHII-PHARMACY",
                    value: common::PHARMACY,
                    namespace: vocabulary::CERTIFIED_NS,
                    name: vocabulary::RECOGNISED_PHARMACY,
                },
                &event,
            )
        });
        assert!(removed.unwrap().is_some(), "Bob had the attribute");
        std::time::Instant::now()
    })
    .await;
    let mut granted = 0;
    for (sent, a) in &answers {
        match a.status {
            200 => {
                assert!(*sent < removed_at, "served a GetKey sent after the removal");
                granted += 1;
            }
            403 => {}
            other => panic!("{other}: {}", String::from_utf8_lossy(&a.body)),
        }
    }
    raced(granted, answers.len(), "removal");
    let events = w.store(|s| s.events(0, 1000)).unwrap();
    etee_store::audit::verify(0, etee_store::audit::GENESIS, &events).unwrap();
    let hex_id = hex::encode(&key_id);
    let removal = events
        .iter()
        .position(|e| e.event.action == "attributes.remove")
        .expect("the removal is on the chain");
    let grants = |events: &[etee_store::StoredEvent]| {
        events
            .iter()
            .filter(|e| {
                e.event.subject == hex_id
                    && e.event.action == "kgss.read"
                    && e.event.outcome == "granted"
            })
            .count()
    };
    assert_eq!(
        grants(&events[..removal]),
        granted,
        "one grant per key served"
    );
    assert_eq!(
        grants(&events[removal + 1..]),
        0,
        "a grant after the removal"
    );
    w.stop().await;
}

/// Whoever can write to the store but not use the HSM cannot give a stored key other
/// conditions: each key is wrapped together with a binding of its id, creator and reader
/// conditions. Key A (any doctor) and key B (recognised pharmacies): A's wrapped key copied
/// into B's record, or B's conditions written onto A, release nothing to Bob (a pharmacy),
/// who still gets B itself while it is untouched.
async fn a_store_writer_cannot_rebind_a_wrapped_key(w: World) {
    let mut c = w.connect(None).await;
    let mut create = async |reader: Credential| {
        let content = GetNewKeyRequestContent {
            allowed_readers: vec![reader],
            excluded_readers: vec![],
            etk: w.alice.etk.clone(),
            deletion_strategy: true,
        }
        .to_xml();
        let r = call(
            &mut c,
            Operation::GetNewKey,
            seal_for(&w.alice, &w.kgss, &content),
        )
        .await;
        assert!(r.is_success(), "{r:?}");
        let answer = open_answer(&w, Some(&w.alice), None, r.sealed_content.as_ref().unwrap());
        let new = GetNewKeyResponseContent::parse(&answer).unwrap();
        let id: [u8; 16] = new.new_key_identifier.clone().try_into().unwrap();
        (id, new.new_key.expose().to_vec())
    };
    let (id_a, _) = create(vocabulary::any_doctor()).await;
    let (id_b, key_b) = create(vocabulary::recognised_pharmacy()).await;
    let mut c = w.connect(None).await;
    let mut bob_gets = async |id: [u8; 16]| {
        let r = call(
            &mut c,
            Operation::GetKey,
            get_key_request(&w, &w.bob, &id, ReplyTo::Etk(w.bob.etk.clone())),
        )
        .await;
        r.is_success().then(|| {
            GetKeyResponseContent::parse(&open_answer(
                &w,
                Some(&w.bob),
                None,
                r.sealed_content.as_ref().unwrap(),
            ))
            .unwrap()
            .key
            .expose()
            .to_vec()
        })
    };
    assert_eq!(bob_gets(id_b).await, Some(key_b.clone()));
    assert_eq!(bob_gets(id_a).await, None, "A is for doctors");

    let record = |id: [u8; 16]| w.store(move |s| s.get_kgss_key(&id)).unwrap().unwrap();
    let (a, b) = (record(id_a), record(id_b));
    let rewrite = |changed: etee_store::KgssKey| {
        w.store(move |s| {
            let event = |what: &str| {
                etee_platform::audit::event(
                    0,
                    what,
                    "a store writer",
                    hex::encode(changed.id),
                    "done",
                    None,
                )
            };
            s.apply_with_event(
                etee_store::Change::DeleteKgssKey(&changed.id),
                &event("delete"),
            )
            .unwrap();
            s.apply_with_event(
                etee_store::Change::InsertKgssKey(&changed),
                &event("insert"),
            )
            .unwrap();
        })
    };
    // A's wrapped key in B's record: B's conditions, A's key.
    rewrite(etee_store::KgssKey {
        wrapped_key: a.wrapped_key.clone(),
        ..b.clone()
    });
    assert_eq!(
        bob_gets(id_b).await,
        None,
        "A's key released under B's conditions"
    );
    // B's conditions on A.
    rewrite(etee_store::KgssKey {
        allowed_readers: b.allowed_readers.clone(),
        ..a.clone()
    });
    assert_eq!(
        bob_gets(id_a).await,
        None,
        "A released under conditions it was not given"
    );
    // Each record as KGSS wrote it releases as before.
    rewrite(b);
    assert_eq!(bob_gets(id_b).await, Some(key_b));
    w.stop().await;
}
