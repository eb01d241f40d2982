//! KeyDepot client (REST only, spec §6; etee's design, see `docs/platform.md`): public keys
//! registered by their holders, with a proof of possession and optionally an HSM
//! attestation.
//!
//! Reads are open; writes (register, add information, delete) are authenticated by the TLS
//! client certificate, so the [`HttpClient`] given must carry the holder's
//! [`crate::tls::TlsIdentity`]. Building a registration (the proof of possession, the
//! attestation) is the caller's business (`etee_services::keydepot`): this module moves the
//! messages and types the errors. Problems titled `KEYDEPOT_*` become
//! [`ProtocolError::UnknownKey`] (404 unknown key), [`ProtocolError::NotFound`] (no
//! attestation), [`ProtocolError::AccessDenied`], [`ProtocolError::NotAuthenticated`], or
//! [`ProtocolError::KeyDepot`] with the code.

use crate::error::{ProtocolError, Result};
use crate::etkdepot::http_error;
use crate::http::{encode_component, HttpClient, Request, Response};
use etee_services::keydepot::{
    AddInfoRequest, HolderInfo, KeyId, KeyInfo, KeyListResponse, KeyRecord, RegisterKeyRequest,
    RegisterKeyResponse, SignedAttestation,
};
use hyper::Method;

/// The keys collection, relative to the REST base.
pub const KEYS_PATH: &str = "/etee/v1/keydepot/keys";
/// The holders collection, relative to the REST base.
pub const HOLDERS_PATH: &str = "/etee/v1/keydepot/holders";

/// A client of KeyDepot. Cheap to clone.
#[derive(Clone, Debug)]
pub struct KeyDepotClient {
    http: HttpClient,
}

impl KeyDepotClient {
    /// A client of the REST endpoint of `http`.
    pub fn new(http: HttpClient) -> Self {
        Self { http }
    }

    /// Registers a key (201). Not repeated after an answer that leaves the outcome unknown
    /// ([`crate::ProtocolError::OutcomeUnknown`]: a second try would be told the key id is
    /// taken, by this very key).
    pub async fn register(&self, request: &RegisterKeyRequest) -> Result<RegisterKeyResponse> {
        let r = self
            .http
            .send_once(Request::json(Method::POST, KEYS_PATH, request.to_json()))
            .await?;
        expect(&r, 201)?;
        let answer = RegisterKeyResponse::parse(&r.body).map_err(malformed)?;
        about(&answer.key, &request.key_id)?;
        if answer.key.public_key != request.public_key {
            return Err(wrong("the registered key is not the one sent"));
        }
        Ok(answer)
    }

    /// One key.
    pub async fn get(&self, key_id: &KeyId) -> Result<KeyRecord> {
        let r = self.http.send(Request::get(key_path(key_id, ""))).await?;
        expect(&r, 200)?;
        let record = KeyRecord::parse(&r.body).map_err(malformed)?;
        about(&record, key_id)?;
        Ok(record)
    }

    /// The keys of a holder, restricted to one application id if given.
    pub async fn list(
        &self,
        id_type: &str,
        value: &str,
        application_id: Option<&str>,
    ) -> Result<KeyListResponse> {
        let r = self
            .http
            .send(Request::get(list_path(id_type, value, application_id)))
            .await?;
        expect(&r, 200)?;
        let list = KeyListResponse::parse(&r.body).map_err(malformed)?;
        for record in &list.keys {
            about(record, &record.key_id)?;
        }
        Ok(list)
    }

    /// Adds (or replaces) information of a key of the caller's.
    pub async fn add_info(&self, key_id: &KeyId, info: &KeyInfo) -> Result<KeyRecord> {
        let body = AddInfoRequest { info: info.clone() }.to_json();
        let r = self
            .http
            .send(Request::json(
                Method::PATCH,
                key_path(key_id, "/info"),
                body,
            ))
            .await?;
        expect(&r, 200)?;
        let record = KeyRecord::parse(&r.body).map_err(malformed)?;
        about(&record, key_id)?;
        Ok(record)
    }

    /// The attestation registered with a key, as registered.
    pub async fn attestation(&self, key_id: &KeyId) -> Result<SignedAttestation> {
        let r = self
            .http
            .send(Request::get(key_path(key_id, "/attestation")))
            .await?;
        expect(&r, 200)?;
        SignedAttestation::parse(&r.body).map_err(malformed)
    }

    /// Who holds a key.
    pub async fn holder(&self, key_id: &KeyId) -> Result<HolderInfo> {
        let r = self
            .http
            .send(Request::get(key_path(key_id, "/holder")))
            .await?;
        expect(&r, 200)?;
        HolderInfo::parse(&r.body).map_err(malformed)
    }

    /// Deletes a key of the caller's (204); not repeated after an unknown outcome.
    pub async fn delete(&self, key_id: &KeyId) -> Result<()> {
        let r = self
            .http
            .send_once(Request::delete(key_path(key_id, "")))
            .await?;
        expect(&r, 204)
    }
}

fn malformed(e: etee_services::Error) -> ProtocolError {
    ProtocolError::Malformed(format!("KeyDepot answer: {e}"))
}

/// `/etee/v1/keydepot/keys/{keyId}{suffix}` (pure).
pub fn key_path(key_id: &KeyId, suffix: &str) -> String {
    format!("{KEYS_PATH}/{}{suffix}", key_id.to_url_string())
}

/// `/etee/v1/keydepot/holders/{type}/{value}/keys[?applicationIdentifier=]` (pure).
pub fn list_path(id_type: &str, value: &str, application_id: Option<&str>) -> String {
    let mut p = format!(
        "{HOLDERS_PATH}/{}/{}/keys",
        encode_component(id_type),
        encode_component(value)
    );
    if let Some(app) = application_id {
        p.push_str("?applicationIdentifier=");
        p.push_str(&encode_component(app));
    }
    p
}

/// `Ok` for the success status, else the typed error (pure).
pub fn expect(r: &Response, status: u16) -> Result<()> {
    if r.status == status {
        return Ok(());
    }
    Err(match http_error(r) {
        ProtocolError::Http {
            status,
            problem: Some(p),
        } => {
            let code = p.title.clone().unwrap_or_default();
            let message = p.detail.clone().unwrap_or_default();
            match code.as_str() {
                "KEYDEPOT_UNKNOWN_KEY" => ProtocolError::UnknownKey,
                "KEYDEPOT_NO_ATTESTATION" => ProtocolError::NotFound,
                "KEYDEPOT_ACCESS_DENIED" => ProtocolError::AccessDenied(message),
                "KEYDEPOT_NOT_AUTHENTICATED" => ProtocolError::NotAuthenticated(message),
                c if c.starts_with("KEYDEPOT_") => ProtocolError::KeyDepot {
                    status,
                    code,
                    message,
                },
                _ => ProtocolError::Http {
                    status,
                    problem: Some(p),
                },
            }
        }
        other => other,
    })
}

/// Whether `record` is about `key_id`, and its key id is its public key's (RFC 5280
/// method 1, as KeyDepot requires at registration): an answer about another key, or a key
/// under another's id, is `Malformed`.
fn about(record: &KeyRecord, key_id: &KeyId) -> Result<()> {
    if &record.key_id != key_id {
        return Err(wrong("KeyDepot answered about another key"));
    }
    match KeyId::of_public_key(&record.public_key) {
        Ok(own) if &own == key_id => Ok(()),
        _ => Err(wrong("a key id that is not its public key's")),
    }
}

fn wrong(why: &str) -> ProtocolError {
    ProtocolError::Malformed(format!("KeyDepot answer: {why}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use etee_services::etkdepot::Problem;

    fn problem(status: u16, title: &str) -> Response {
        Response {
            status,
            content_type: "application/problem+json".into(),
            retry_after: None,
            body: Problem::new(status, title, Some("why".into()))
                .to_json()
                .into(),
        }
    }

    #[test]
    fn an_answer_must_be_about_the_key_asked_for() {
        let spki = |bits| {
            let rsa = openssl::rsa::Rsa::generate(bits).unwrap();
            openssl::pkey::PKey::from_rsa(rsa)
                .unwrap()
                .public_key_to_der()
                .unwrap()
        };
        let (a, b) = (spki(1024), spki(1024));
        let (id_a, id_b) = (
            KeyId::of_public_key(&a).unwrap(),
            KeyId::of_public_key(&b).unwrap(),
        );
        let record = |key_id: &KeyId, public_key: &[u8]| KeyRecord {
            key_id: key_id.clone(),
            public_key: public_key.to_vec(),
            holder: HolderInfo {
                identifiers: Vec::new(),
                name: None,
            },
            info: KeyInfo::default(),
            attested: false,
            status: etee_services::keydepot::KeyStatus::Active,
            created_at: 0,
        };
        assert!(about(&record(&id_a, &a), &id_a).is_ok());
        // Another key's record; a record whose id is not its key's.
        assert!(matches!(
            about(&record(&id_b, &b), &id_a),
            Err(ProtocolError::Malformed(_))
        ));
        assert!(matches!(
            about(&record(&id_a, &b), &id_a),
            Err(ProtocolError::Malformed(_))
        ));
    }

    #[test]
    fn paths() {
        let id = KeyId::new(vec![0xfb, 0xff]).unwrap();
        assert_eq!(key_path(&id, "/info"), "/etee/v1/keydepot/keys/-_8/info");
        assert_eq!(
            list_path("NIHII-HOSPITAL", "71000436", Some("A B")),
            "/etee/v1/keydepot/holders/NIHII-HOSPITAL/71000436/keys?applicationIdentifier=A%20B"
        );
    }

    #[test]
    fn errors() {
        assert!(expect(&problem(204, "x"), 204).is_ok());
        assert!(matches!(
            expect(&problem(404, "KEYDEPOT_UNKNOWN_KEY"), 200),
            Err(ProtocolError::UnknownKey)
        ));
        assert!(matches!(
            expect(&problem(403, "KEYDEPOT_ACCESS_DENIED"), 204),
            Err(ProtocolError::AccessDenied(_))
        ));
        assert!(matches!(
            expect(&problem(401, "KEYDEPOT_NOT_AUTHENTICATED"), 201),
            Err(ProtocolError::NotAuthenticated(_))
        ));
        assert!(matches!(
            expect(&problem(409, "KEYDEPOT_DUPLICATE_KEY_ID"), 201),
            Err(ProtocolError::KeyDepot { status: 409, code, .. }) if code == "KEYDEPOT_DUPLICATE_KEY_ID"
        ));
        let plain = Response {
            status: 502,
            content_type: "text/html".into(),
            retry_after: None,
            body: "<html>".into(),
        };
        assert!(matches!(
            expect(&plain, 200),
            Err(ProtocolError::Http {
                status: 502,
                problem: None
            })
        ));
    }
}
