//! JWK Sets from certificates (§4.2).

use base64::Engine as _;
use etee_formats::cert::Certificate;
use etee_services::etkdepot::jwks::{Jwk, JwkSet, KeyUse};
use etee_testpki::{InstitutionSpec, TestPki};
use openssl::asn1::Asn1Time;
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::PKey;
use openssl::x509::{X509NameBuilder, X509};

fn b64url(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

fn cert(x: &X509) -> Certificate {
    Certificate::from_der(&x.to_der().unwrap()).unwrap()
}

#[test]
fn rsa_jwk_matches_openssl() {
    let pki = TestPki::generate("jwks").unwrap();
    let inst = pki
        .institution(&InstitutionSpec::new("CBE", "0406798006", "H").with_application_id("UHMEP"))
        .unwrap();
    let c = cert(&inst.etk_cert);
    let root = cert(&pki.root.cert);
    let jwk = Jwk::from_certificate(&c, &[root], KeyUse::Enc).unwrap();

    let rsa = inst.etk_cert.public_key().unwrap().rsa().unwrap();
    assert_eq!(jwk.kty, "RSA");
    assert_eq!(jwk.n.as_deref(), Some(b64url(&rsa.n().to_vec()).as_str()));
    assert_eq!(jwk.e.as_deref(), Some("AQAB"));
    let n = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(jwk.n.as_ref().unwrap())
        .unwrap();
    assert_ne!(n[0], 0, "no leading zero");
    assert_eq!(n.len(), 256);

    let spki = inst
        .etk_cert
        .public_key()
        .unwrap()
        .public_key_to_der()
        .unwrap();
    assert_eq!(
        jwk.kid.as_deref(),
        Some(b64url(&openssl::sha::sha256(&spki)).as_str())
    );
    assert_eq!(jwk.x5c.len(), 2);
    assert_eq!(
        jwk.x5c[0],
        base64::engine::general_purpose::STANDARD.encode(c.der())
    );
    assert_eq!(
        jwk.x5t_s256.as_deref(),
        Some(b64url(&openssl::sha::sha256(c.der())).as_str())
    );
    assert_eq!(jwk.key_use, Some(KeyUse::Enc));

    let set = JwkSet::from_certificates(&[c.clone(), cert(&inst.auth.cert)], KeyUse::Sig).unwrap();
    let json = String::from_utf8(set.to_json()).unwrap();
    assert!(json.contains("\"use\":\"sig\""), "{json}");
    assert!(json.contains("\"x5t#S256\""), "{json}");
    let back = JwkSet::parse(json.as_bytes()).unwrap();
    assert_eq!(back, set);
    assert!(back.keys[0]
        .public_key()
        .unwrap()
        .public_eq(&c.public_key().unwrap()));

    // A JWK whose x5c holds another key is refused.
    let mut wrong = set.clone();
    wrong.keys[0].x5c = set.keys[1].x5c.clone();
    assert!(JwkSet::parse(&wrong.to_json()).is_err());
    assert!(JwkSet::parse(br#"{"keys":[{"kty":"oct"}]}"#).is_err());
    assert!(JwkSet::parse(br#"{"keys":[{"kty":"RSA","n":"!!","e":"AQAB"}]}"#).is_err());
}

fn ec_cert(nid: Nid) -> (X509, PKey<openssl::pkey::Private>) {
    let group = EcGroup::from_curve_name(nid).unwrap();
    let key = PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap();
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", "SSIN=76120902527").unwrap();
    let name = name.build();
    let mut b = X509::builder().unwrap();
    b.set_version(2).unwrap();
    b.set_subject_name(&name).unwrap();
    b.set_issuer_name(&name).unwrap();
    b.set_pubkey(&key).unwrap();
    b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    b.set_not_after(&Asn1Time::days_from_now(30).unwrap())
        .unwrap();
    b.sign(&key, MessageDigest::sha384()).unwrap();
    (b.build(), key)
}

#[test]
fn ec_jwk() {
    for (nid, crv, len) in [
        (Nid::X9_62_PRIME256V1, "P-256", 32),
        (Nid::SECP384R1, "P-384", 48),
        (Nid::SECP521R1, "P-521", 66),
    ] {
        let (x, key) = ec_cert(nid);
        let c = cert(&x);
        let jwk = Jwk::from_certificate(&c, &[], KeyUse::Sig).unwrap();
        assert_eq!(jwk.kty, "EC");
        assert_eq!(jwk.crv.as_deref(), Some(crv));
        let xb = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(jwk.x.as_ref().unwrap())
            .unwrap();
        assert_eq!(xb.len(), len);
        assert!(jwk.public_key().unwrap().public_eq(&key));
        jwk.validate().unwrap();
    }
}
