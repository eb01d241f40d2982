//! KeyDepot through the client against the platform on loopback: the hospital, identified
//! by a TLS client certificate whose key is used through `PrivateKeyOps` (counted), registers
//! a key with its proof of possession, reads, lists, adds information, reads the holder and
//! deletes it; anonymous and foreign writers are refused with typed errors.

#[path = "../../platform/tests/common/mod.rs"]
mod common;
mod support;

use common::{Backend, World};
use etee_protocol::{KeyDepotClient, ProtocolError};
use etee_services::keydepot::{pop_challenge, sign, KeyId, KeyInfo, KeyUse, RegisterKeyRequest};
use openssl::pkey::{PKey, Private};
use std::sync::atomic::Ordering;

/// A registration of a new key under its own id.
fn registration() -> RegisterKeyRequest {
    registration_of(&etee_testpki::rsa_key(2048).unwrap())
}

/// Alice, the hospital registering below: the holder the proofs name.
fn alice_identity() -> etee_formats::identity::Identity {
    etee_formats::identity::Identity {
        id_type: "NIHII-HOSPITAL".into(),
        value: "71000436".into(),
        application_id: None,
    }
}

fn registration_of(key: &PKey<Private>) -> RegisterKeyRequest {
    let spki = key.public_key_to_der().unwrap();
    let key_id = KeyId::of_public_key(&spki).unwrap();
    RegisterKeyRequest {
        proof_of_possession: sign(key, &pop_challenge(&key_id, &spki, &alice_identity())).unwrap(),
        key_id,
        public_key: spki,
        info: KeyInfo {
            label: Some("laptop".into()),
            key_use: Some(KeyUse::Enc),
            ..Default::default()
        },
        attestation: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_read_list_update_and_delete() {
    let w = World::new("protocol-keydepot", Backend::Embedded).await;
    let (identity, ops) = support::counted_identity(&w.alice);
    let alice = KeyDepotClient::new(support::http(w.addr, Some(identity), support::quick()));
    let anonymous = KeyDepotClient::new(support::http(w.addr, None, support::quick()));

    let request = registration();
    let registered = alice.register(&request).await.unwrap().key;
    assert!(
        ops.signatures.load(Ordering::SeqCst) >= 1,
        "the TLS client key signed the handshake through PrivateKeyOps"
    );
    assert_eq!(registered.key_id, request.key_id);
    assert_eq!(registered.public_key, request.public_key);
    assert!(!registered.attested);

    // Anyone reads.
    let read = anonymous.get(&request.key_id).await.unwrap();
    assert_eq!(read, registered);
    let holder = anonymous.holder(&request.key_id).await.unwrap();
    assert_eq!(holder.identifiers[0].value, "71000436");
    let list = anonymous
        .list("NIHII-HOSPITAL", "71000436", None)
        .await
        .unwrap();
    assert_eq!(list.keys.len(), 1);
    assert!(anonymous
        .list("nihii-hospital", "71000436", Some("NO-SUCH-APP"))
        .await
        .unwrap()
        .keys
        .is_empty());
    assert!(matches!(
        anonymous.attestation(&request.key_id).await,
        Err(ProtocolError::NotFound)
    ));

    // Writes need a client certificate, of the holder.
    let info = KeyInfo {
        label: Some("renamed".into()),
        ..Default::default()
    };
    assert!(matches!(
        anonymous.register(&registration()).await,
        Err(ProtocolError::NotAuthenticated(_))
    ));
    let (bob_identity, _) = support::counted_identity(&w.bob);
    let bob = KeyDepotClient::new(support::http(w.addr, Some(bob_identity), support::quick()));
    assert!(matches!(
        bob.add_info(&request.key_id, &info).await,
        Err(ProtocolError::AccessDenied(_))
    ));
    assert!(matches!(
        bob.delete(&request.key_id).await,
        Err(ProtocolError::AccessDenied(_))
    ));
    let updated = alice.add_info(&request.key_id, &info).await.unwrap();
    assert_eq!(updated.info.label.as_deref(), Some("renamed"));
    assert_eq!(updated.info.key_use, Some(KeyUse::Enc));

    // A taken key id (the same key again), and Alice's registration sent by Bob: its
    // proof names Alice.
    assert!(matches!(
        alice.register(&request).await,
        Err(ProtocolError::KeyDepot { status: 409, code, .. }) if code == "KEYDEPOT_DUPLICATE_KEY_ID"
    ));
    assert!(matches!(
        bob.register(&request).await,
        Err(ProtocolError::KeyDepot { status: 422, code, .. })
            if code == "KEYDEPOT_INVALID_PROOF_OF_POSSESSION"
    ));
    // A key id that is not the key's.
    let key = etee_testpki::rsa_key(2048).unwrap();
    let mut wrong = registration_of(&key);
    wrong.key_id = KeyId::new(b"alice-laptop-3".to_vec()).unwrap();
    wrong.proof_of_possession = sign(
        &key,
        &pop_challenge(&wrong.key_id, &wrong.public_key, &alice_identity()),
    )
    .unwrap();
    assert!(matches!(
        alice.register(&wrong).await,
        Err(ProtocolError::KeyDepot { status: 400, code, .. }) if code == "KEYDEPOT_INVALID_REQUEST"
    ));
    // A proof made for another key id.
    let mut wrong = registration_of(&key);
    wrong.proof_of_possession = sign(
        &key,
        &pop_challenge(&request.key_id, &wrong.public_key, &alice_identity()),
    )
    .unwrap();
    assert!(matches!(
        alice.register(&wrong).await,
        Err(ProtocolError::KeyDepot { status: 422, .. })
    ));

    alice.delete(&request.key_id).await.unwrap();
    assert!(matches!(
        anonymous.get(&request.key_id).await,
        Err(ProtocolError::UnknownKey)
    ));
    assert!(matches!(
        alice.delete(&request.key_id).await,
        Err(ProtocolError::UnknownKey)
    ));
    w.stop().await;
}
