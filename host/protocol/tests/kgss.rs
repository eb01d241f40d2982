//! KGSS through the client against the platform on loopback, SOAP and REST: a hospital
//! creates a key for recognised pharmacies, the pharmacy gets the same key (sealed to its
//! ETK, or with a one-off KEK), a doctor is refused, the holder deletes the key (REST,
//! authenticated by a TLS identity whose key is behind `PrivateKeyOps`) and then it is
//! unknown; a stranger may not delete.

#[path = "../../platform/tests/common/mod.rs"]
mod common;
mod support;

use base64::Engine as _;
use common::{Backend, World};
use etee_formats::cms::{seal, Recipient, SealOptions};
use etee_formats::etk::Etk;
use etee_protocol::{Flavour, KeyReply, KgssClient, ProtocolError};
use etee_services::kgss::{vocabulary, GetNewKeyResponseContent};
use etee_services::secret::SecretBytes;

/// KGSS's ETK, through the checking cache.
async fn kgss_etk(w: &World) -> Etk {
    let cache = support::cache(w, Flavour::Rest);
    cache
        .get(&etee_protocol::kgss_identifier())
        .await
        .unwrap()
        .remove(0)
}

fn client(w: &World, flavour: Flavour, identity: Option<etee_protocol::TlsIdentity>) -> KgssClient {
    let http = support::http(w.addr, identity, support::quick());
    match flavour {
        Flavour::Soap => KgssClient::new(flavour, Some(http), None).unwrap(),
        Flavour::Rest => KgssClient::new(flavour, None, Some(http)).unwrap(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_read_refuse_and_delete_in_both_flavours() {
    let w = World::new("protocol-kgss", Backend::Embedded).await;
    let kgss = kgss_etk(&w).await;
    let alice = support::caller(&w, &w.alice);
    let bob = support::caller(&w, &w.bob);
    let doctor = support::caller(&w, &w.doctor);
    for flavour in [Flavour::Soap, Flavour::Rest] {
        let c = client(&w, flavour, None);
        let new = c
            .new_key(
                &alice,
                &kgss,
                vec![vocabulary::recognised_pharmacy()],
                vec![],
            )
            .await
            .unwrap();
        assert_eq!((new.id.len(), new.key.len()), (16, 16), "{flavour:?}");
        assert!(!format!("{new:?}").contains(&format!("{:?}", &new.key[..4])));

        // Bob (a recognised pharmacy) gets the same key, both ways.
        let got = c
            .get_key(&bob, &kgss, &new.id, KeyReply::Etk)
            .await
            .unwrap();
        assert_eq!(got.as_slice(), new.key.as_slice(), "{flavour:?}");
        let got = c
            .get_key(&bob, &kgss, &new.id, KeyReply::Kek)
            .await
            .unwrap();
        assert_eq!(got.as_slice(), new.key.as_slice(), "{flavour:?} KEK");

        // A doctor is not a recognised pharmacy.
        assert!(
            matches!(
                c.get_key(&doctor, &kgss, &new.id, KeyReply::Etk).await,
                Err(ProtocolError::AccessDenied(_))
            ),
            "{flavour:?}"
        );
        // An unknown key.
        assert!(matches!(
            c.get_key(&bob, &kgss, &[7u8; 16], KeyReply::Etk).await,
            Err(ProtocolError::UnknownKey)
        ));
        // Asking KGSS to answer to somebody else's ETK is refused (the request content).
        let borrowed = etee_protocol::KgssCaller {
            own_etk: w.alice.etk.clone(),
            ..bob.clone()
        };
        assert!(matches!(
            c.get_key(&borrowed, &kgss, &new.id, KeyReply::Etk).await,
            Err(ProtocolError::Kgss { code, .. }) if code == "KGSS_INVALID_REQUEST"
        ));

        // Deletion is REST only; the SOAP-only client says so.
        if flavour == Flavour::Soap {
            assert!(matches!(
                c.delete_key(&new.id).await,
                Err(ProtocolError::Unsupported(_))
            ));
        }
        // Without a client certificate, nobody; Bob is not the holder; Alice is.
        let anonymous = client(&w, Flavour::Rest, None);
        assert!(matches!(
            anonymous.delete_key(&new.id).await,
            Err(ProtocolError::NotAuthenticated(_))
        ));
        let (bob_tls, _) = support::counted_identity(&w.bob);
        assert!(matches!(
            client(&w, Flavour::Rest, Some(bob_tls))
                .delete_key(&new.id)
                .await,
            Err(ProtocolError::AccessDenied(_))
        ));
        let (alice_tls, signatures) = support::counted_identity(&w.alice);
        let holder = client(&w, Flavour::Rest, Some(alice_tls));
        holder.delete_key(&new.id).await.unwrap();
        assert!(
            signatures
                .signatures
                .load(std::sync::atomic::Ordering::SeqCst)
                >= 1,
            "the TLS handshake was signed through PrivateKeyOps"
        );
        assert!(matches!(
            c.get_key(&bob, &kgss, &new.id, KeyReply::Etk).await,
            Err(ProtocolError::UnknownKey)
        ));
        assert!(matches!(
            holder.delete_key(&new.id).await,
            Err(ProtocolError::UnknownKey)
        ));
    }
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_must_come_from_kgss() {
    let w = World::new("protocol-kgss-sender", Backend::Embedded).await;
    let kgss = kgss_etk(&w).await;
    let alice = support::caller(&w, &w.alice);
    // Told that Bob's ETK is KGSS's, the client seals to Bob, whom the platform cannot
    // open for: refused by the service.
    let bob_etk = Etk::parse(&w.bob.etk).unwrap();
    let c = client(&w, Flavour::Rest, None);
    assert!(matches!(
        c.new_key(&alice, &bob_etk, vec![vocabulary::recognised_pharmacy()], vec![])
            .await,
        Err(ProtocolError::Kgss { code, .. }) if code == "KGSS_INVALID_SEAL"
    ));

    // A fake KGSS answering with a key sealed to Alice by Bob (a trusted institution, so
    // the verdict is clean): the client refuses a key that KGSS did not sign.
    let content = GetNewKeyResponseContent {
        new_key_identifier: vec![1; 16],
        new_key: SecretBytes::from_slice(&[2; 16]),
    }
    .to_xml();
    let mut sealed = Vec::new();
    seal(
        &common::signer_of(&w.bob),
        &[Recipient::Certificate(common::cert(&w.alice.etk_cert))],
        None,
        content.as_slice(),
        &mut sealed,
        &SealOptions::default(),
    )
    .unwrap();
    let body = serde_json::json!({
        "keyId": base64::engine::general_purpose::STANDARD.encode([1u8; 16]),
        "sealedResponse": base64::engine::general_purpose::STANDARD.encode(&sealed),
    })
    .to_string()
    .into_bytes();
    let fake = support::fake_server(std::sync::Arc::new(move |_, _| {
        let body = body.clone();
        Box::pin(async move { (201, "application/json".to_owned(), body) })
    }))
    .await;
    let impostor = KgssClient::new(
        Flavour::Rest,
        None,
        Some(support::http(fake.addr, None, support::quick())),
    )
    .unwrap();
    match impostor
        .new_key(
            &alice,
            &kgss,
            vec![vocabulary::recognised_pharmacy()],
            vec![],
        )
        .await
    {
        Err(ProtocolError::Unseal(why)) => assert!(why.contains("not by KGSS"), "{why}"),
        other => panic!("{other:?}"),
    }
    // And an answer that does not open (garbage) is an unseal error, not a panic.
    let fake = support::fake_server(std::sync::Arc::new(|_, _| {
        Box::pin(async {
            (
                200,
                "application/json".to_owned(),
                br#"{"sealedResponse":"MIAGCSqGSIb3DQEHAqCAMIACAQE="}"#.to_vec(),
            )
        })
    }))
    .await;
    let broken = KgssClient::new(
        Flavour::Rest,
        None,
        Some(support::http(fake.addr, None, support::quick())),
    )
    .unwrap();
    let bob = support::caller(&w, &w.bob);
    assert!(matches!(
        broken.get_key(&bob, &kgss, &[1; 16], KeyReply::Etk).await,
        Err(ProtocolError::Unseal(_))
    ));
    w.stop().await;
}
