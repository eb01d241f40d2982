//! KGSS client (spec §5): keys for unknown recipients.
//!
//! Every request is sealed (sign → encrypt → sign) to KGSS's ETK and signed by the caller's
//! authentication key; every answer is unsealed, must have a clean verdict **and** be
//! signed by KGSS itself (the sender's certificate names the identity of the KGSS ETK, CBE
//! 0809394427), so that a key is only ever accepted from KGSS. The KGSS ETK is the caller's
//! to provide, checked (e.g. from [`crate::etk_cache::EtkCache`]).
//!
//! - SOAP (`POST {soap base}/Kgss/v1`): `GetNewKeyRequest`/`GetKeyRequest`; success is
//!   `Status/Code` 100 or 200 and no `Error`.
//! - REST (`POST {rest base}/etee/v1/kgss/keys` and `.../keys/retrieve`): JSON
//!   `{"sealedRequest"}` → `{"keyId"?, "sealedResponse"}` or a problem titled with the
//!   business code.
//! - Deletion exists in REST only (`DELETE {rest base}/etee/v1/kgss/keys/{keyId}`, the
//!   holder authenticated by its TLS client certificate): it uses the REST endpoint
//!   whatever the flavour, and is [`ProtocolError::Unsupported`] without one.
//!
//! Business codes become typed errors: `KGSS_ACCESS_DENIED` → [`ProtocolError::AccessDenied`],
//! `KGSS_UNKNOWN_KEY` → [`ProtocolError::UnknownKey`], `KGSS_NOT_AUTHENTICATED` →
//! [`ProtocolError::NotAuthenticated`], any other → [`ProtocolError::Kgss`].
//!
//! Sealing and unsealing call the key provider (an HSM): they run on tokio's blocking pool.
//! A request is sealed afresh for each attempt: KGSS refuses a replayed sealed request.

use crate::error::{ProtocolError, Result};
use crate::etkdepot::{fault_error, http_error};
use crate::http::{HttpClient, Request, Response};
use crate::Flavour;
use base64::Engine as _;
use etee_formats::cms::{seal, unseal_to_vec, Recipient, SealOptions, UnsealError, UnsealOptions};
use etee_formats::etk::Etk;
use etee_formats::identity::{normalize_value, Identity};
use etee_formats::keys::{KeyRing, SigningKey};
use etee_formats::trust::TrustAnchors;
use etee_services::kgss::{
    Credential, GetKeyRequestContent, GetKeyResponseContent, GetNewKeyRequestContent,
    GetNewKeyResponseContent, KgssRequest, KgssResponse, Operation, ReplyTo,
};
use etee_services::secret::SecretBytes;
use hyper::Method;
use std::fmt;
use zeroize::Zeroizing;

/// The SOAP path, relative to the SOAP base.
pub const SOAP_PATH: &str = "/Kgss/v1";
/// The REST paths, relative to the REST base.
pub const REST_NEW_KEY_PATH: &str = "/etee/v1/kgss/keys";
pub const REST_GET_KEY_PATH: &str = "/etee/v1/kgss/keys/retrieve";

/// Who calls KGSS: the authentication key that signs the requests, the caller's own ETK
/// (KGSS seals its answers to it), the key ring that opens them, and the anchors the
/// answers' signer (KGSS) must chain to. Cheap to clone (keys are behind `Arc`).
#[derive(Clone)]
pub struct KgssCaller {
    pub signer: SigningKey,
    /// The caller's own ETK (CMS bytes), as published in ETKDepot.
    pub own_etk: Vec<u8>,
    pub ring: KeyRing,
    pub anchors: TrustAnchors,
}

impl fmt::Debug for KgssCaller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KgssCaller")
            .field("signer", &self.signer)
            .field("own_etk_len", &self.own_etk.len())
            .field("ring", &self.ring)
            .field("anchors", &self.anchors)
            .finish()
    }
}

/// A new key: its identifier (16 bytes with this platform) and the AES key.
pub struct NewKey {
    pub id: Vec<u8>,
    pub key: Zeroizing<Vec<u8>>,
}

impl fmt::Debug for NewKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewKey")
            .field(
                "id",
                &base64::engine::general_purpose::STANDARD.encode(&self.id),
            )
            .field("key", &"<secret>")
            .finish()
    }
}

/// How `GetKey` asks KGSS to protect its answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyReply {
    /// Sealed to the caller's ETK.
    Etk,
    /// Sealed unaddressed with a fresh random one-off AES-128 key-encryption key sent in the
    /// (sealed) request, as the connector does.
    Kek,
}

/// A client of KGSS. Cheap to clone.
#[derive(Clone, Debug)]
pub struct KgssClient {
    flavour: Flavour,
    soap: Option<HttpClient>,
    rest: Option<HttpClient>,
}

impl KgssClient {
    /// A client speaking `flavour`; `soap` and `rest` are the clients of the SOAP and REST
    /// endpoints (the one of the flavour is required; REST also serves deletions).
    pub fn new(
        flavour: Flavour,
        soap: Option<HttpClient>,
        rest: Option<HttpClient>,
    ) -> Result<Self> {
        let needed = match flavour {
            Flavour::Soap => soap.is_some(),
            Flavour::Rest => rest.is_some(),
        };
        if !needed {
            return Err(ProtocolError::Endpoint(format!(
                "KGSS {flavour:?} needs that endpoint"
            )));
        }
        Ok(Self {
            flavour,
            soap,
            rest,
        })
    }

    pub fn flavour(&self) -> Flavour {
        self.flavour
    }

    /// `GetNewKey`: a new key readable by `allowed` minus `excluded`.
    pub async fn new_key(
        &self,
        caller: &KgssCaller,
        kgss_etk: &Etk,
        allowed: Vec<Credential>,
        excluded: Vec<Credential>,
    ) -> Result<NewKey> {
        let content = GetNewKeyRequestContent {
            allowed_readers: allowed,
            excluded_readers: excluded,
            etk: caller.own_etk.clone(),
            deletion_strategy: true,
        }
        .to_xml();
        let (sealed, rest_key_id) = self
            .call(
                Operation::GetNewKey,
                caller,
                kgss_etk,
                Zeroizing::new(content),
            )
            .await?;
        let opened = open(caller, kgss_etk, sealed, None).await?;
        let answer = GetNewKeyResponseContent::parse(&opened)
            .map_err(|e| ProtocolError::Malformed(format!("GetNewKeyResponseContent: {e}")))?;
        if let Some(id) = rest_key_id {
            if id != answer.new_key_identifier {
                return Err(ProtocolError::Malformed(
                    "keyId differs from the sealed NewKeyIdentifier".into(),
                ));
            }
        }
        checked_key(answer.new_key.expose())?;
        if answer.new_key_identifier.is_empty() || answer.new_key_identifier.len() > MAX_KEY_ID {
            return Err(ProtocolError::Malformed(format!(
                "a NewKeyIdentifier of {} bytes (1 to {MAX_KEY_ID} expected)",
                answer.new_key_identifier.len()
            )));
        }
        Ok(NewKey {
            id: answer.new_key_identifier,
            key: Zeroizing::new(answer.new_key.expose().to_vec()),
        })
    }

    /// `GetKey`: the key `key_id`, answered as `reply` says.
    pub async fn get_key(
        &self,
        caller: &KgssCaller,
        kgss_etk: &Etk,
        key_id: &[u8],
        reply: KeyReply,
    ) -> Result<Zeroizing<Vec<u8>>> {
        let (reply_to, kek) = match reply {
            KeyReply::Etk => (ReplyTo::Etk(caller.own_etk.clone()), None),
            KeyReply::Kek => {
                let mut kek = Zeroizing::new(vec![0u8; 16]);
                openssl::rand::rand_bytes(&mut kek)
                    .map_err(|e| ProtocolError::Seal(format!("random KEK: {e}")))?;
                let mut kek_id = vec![0u8; 16];
                openssl::rand::rand_bytes(&mut kek_id)
                    .map_err(|e| ProtocolError::Seal(format!("random KEK id: {e}")))?;
                let reply = ReplyTo::Kek {
                    key: SecretBytes::from_slice(&kek),
                    key_identifier: Some(kek_id),
                };
                (reply, Some(kek))
            }
        };
        let content = GetKeyRequestContent {
            key_identifier: key_id.to_vec(),
            reply_to,
        }
        .to_xml();
        let (sealed, _) = self
            .call(Operation::GetKey, caller, kgss_etk, content)
            .await?;
        let opened = open(caller, kgss_etk, sealed, kek).await?;
        let answer = GetKeyResponseContent::parse(&opened)
            .map_err(|e| ProtocolError::Malformed(format!("GetKeyResponseContent: {e}")))?;
        checked_key(answer.key.expose())?;
        Ok(Zeroizing::new(answer.key.expose().to_vec()))
    }

    /// Deletes the key `key_id` (the caller must be its holder, authenticated by the TLS
    /// client certificate of the REST client). REST only, see the module documentation.
    pub async fn delete_key(&self, key_id: &[u8]) -> Result<()> {
        let rest = self.rest.as_ref().ok_or(ProtocolError::Unsupported(
            "KGSS deletion needs the REST endpoint",
        ))?;
        let path = format!(
            "{REST_NEW_KEY_PATH}/{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key_id)
        );
        // Not repeated after an unknown outcome: a second try would say "unknown key".
        let r = rest.send_once(Request::delete(path)).await?;
        match r.status {
            204 | 200 => Ok(()),
            _ => Err(rest_error(&r)),
        }
    }

    /// Seals `content` (afresh for each attempt), sends it, and returns the sealed answer
    /// and, for REST `GetNewKey`, the `keyId` given beside it.
    async fn call(
        &self,
        operation: Operation,
        caller: &KgssCaller,
        kgss_etk: &Etk,
        content: Zeroizing<Vec<u8>>,
    ) -> Result<(Vec<u8>, Option<Vec<u8>>)> {
        let content = std::sync::Arc::new(content);
        let flavour = self.flavour;
        let build = || {
            let (signer, recipient, content) = (
                caller.signer.clone(),
                kgss_etk.encryption_cert().clone(),
                content.clone(),
            );
            async move {
                let sealed = blocking(move || seal_request(&signer, recipient, &content)).await?;
                Ok(match flavour {
                    Flavour::Soap => Request::soap(
                        SOAP_PATH,
                        KgssRequest {
                            operation,
                            sealed_content: sealed,
                        }
                        .to_xml(),
                    ),
                    Flavour::Rest => Request::json(
                        Method::POST,
                        match operation {
                            Operation::GetNewKey => REST_NEW_KEY_PATH,
                            Operation::GetKey => REST_GET_KEY_PATH,
                        },
                        rest_request_body(&sealed),
                    ),
                })
            }
        };
        match flavour {
            Flavour::Soap => {
                let http = self
                    .soap
                    .as_ref()
                    .ok_or(ProtocolError::Endpoint("no KGSS SOAP endpoint".into()))?;
                let r = http.send_with(build).await?;
                parse_soap_answer(operation, &r).map(|s| (s, None))
            }
            Flavour::Rest => {
                let http = self
                    .rest
                    .as_ref()
                    .ok_or(ProtocolError::Endpoint("no KGSS REST endpoint".into()))?;
                let r = http.send_with(build).await?;
                parse_rest_answer(operation, &r)
            }
        }
    }
}

/// Runs blocking key operations off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ProtocolError::Seal(format!("key operation task: {e}")))?
}

/// The inner content sealed to KGSS's encryption certificate by `signer`.
fn seal_request(
    signer: &SigningKey,
    recipient: etee_formats::cert::Certificate,
    content: &[u8],
) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(content.len() + 8192);
    seal(
        signer,
        &[Recipient::Certificate(recipient)],
        None,
        content,
        &mut out,
        &SealOptions::default(),
    )
    .map_err(|e| ProtocolError::Seal(e.to_string()))?;
    Ok(out)
}

/// Opens a KGSS answer with the caller's keys (or `kek`) and checks its sender is KGSS.
async fn open(
    caller: &KgssCaller,
    kgss_etk: &Etk,
    sealed: Vec<u8>,
    kek: Option<Zeroizing<Vec<u8>>>,
) -> Result<Zeroizing<Vec<u8>>> {
    let ring = if kek.is_some() {
        KeyRing::new()
    } else {
        caller.ring.clone()
    };
    let opts = UnsealOptions {
        anchors: caller.anchors.clone(),
        kek,
        ..Default::default()
    };
    let kgss = kgss_etk.identities();
    blocking(move || {
        let (result, content) = unseal_to_vec(&sealed, &ring, &opts).map_err(|e| match e {
            UnsealError::Key(k) => ProtocolError::Key(k),
            other => ProtocolError::Unseal(other.to_string()),
        })?;
        let content = content.map(Zeroizing::new);
        let v = &result.verdict;
        let content = match content {
            Some(c) if v.is_clean() => c,
            _ => {
                let mut why: Vec<String> = v.fatal.iter().map(|f| f.name().to_owned()).collect();
                why.extend(v.errors.iter().map(|e| e.name().to_owned()));
                if why.is_empty() {
                    why.push("no content".into());
                }
                return Err(ProtocolError::Unseal(why.join(", ")));
            }
        };
        let sender = result.sender.map(|s| s.identities()).unwrap_or_default();
        if !is_kgss(&sender, &kgss) {
            return Err(ProtocolError::Unseal(format!(
                "the answer is signed by {}, not by KGSS",
                sender
                    .first()
                    .map(ToString::to_string)
                    .unwrap_or_else(|| "an unnamed signer".into())
            )));
        }
        Ok(content)
    })
    .await
}

/// Whether a sender's identities include one of the KGSS ETK's (type, zero-padded value and
/// application id) (pure).
pub fn is_kgss(sender: &[Identity], kgss: &[Identity]) -> bool {
    let norm = |i: &Identity| {
        (
            i.id_type.to_ascii_uppercase(),
            normalize_value(&i.id_type, &i.value).unwrap_or_else(|_| i.value.clone()),
            i.application_id.clone(),
        )
    };
    !kgss.is_empty()
        && sender
            .iter()
            .any(|s| kgss.iter().any(|k| norm(s) == norm(k)))
}

/// A business code as a typed error (pure).
pub fn business_error(code: &str, message: String) -> ProtocolError {
    match code.trim() {
        "KGSS_ACCESS_DENIED" => ProtocolError::AccessDenied(message),
        "KGSS_UNKNOWN_KEY" => ProtocolError::UnknownKey,
        "KGSS_NOT_AUTHENTICATED" => ProtocolError::NotAuthenticated(message),
        other => ProtocolError::Kgss {
            code: other.to_owned(),
            message,
        },
    }
}

/// Reads a SOAP answer: the sealed content of a success (pure).
pub fn parse_soap_answer(operation: Operation, r: &Response) -> Result<Vec<u8>> {
    if let Some(fault) = r.fault() {
        return Err(fault_error(fault));
    }
    if r.status != 200 {
        return Err(http_error(r));
    }
    let answer = KgssResponse::parse(&r.body)
        .map_err(|e| ProtocolError::Malformed(format!("KGSS answer: {e}")))?;
    if answer.operation != operation {
        return Err(ProtocolError::Malformed(format!(
            "a {:?} answer to {operation:?}",
            answer.operation
        )));
    }
    if let Some(e) = answer.errors.first() {
        let message = e
            .messages
            .first()
            .map(|m| m.text.clone())
            .unwrap_or_default();
        return Err(business_error(&e.code, message));
    }
    if !answer.is_success() {
        return Err(ProtocolError::Kgss {
            code: answer.status.code,
            message: answer.status.message.unwrap_or_default(),
        });
    }
    answer
        .sealed_content
        .ok_or_else(|| ProtocolError::Malformed("success without sealed content".into()))
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct SealedRequestJson<'a> {
    sealed_request: &'a str,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct SealedResponseJson {
    #[serde(default)]
    key_id: Option<String>,
    sealed_response: String,
}

/// `{"sealedRequest": base64}` (pure).
pub fn rest_request_body(sealed: &[u8]) -> Vec<u8> {
    let b64 = base64::engine::general_purpose::STANDARD.encode(sealed);
    serde_json::to_vec(&SealedRequestJson {
        sealed_request: &b64,
    })
    .unwrap_or_default()
}

/// A REST error answer: the problem's title is the business code.
fn rest_error(r: &Response) -> ProtocolError {
    match http_error(r) {
        ProtocolError::Http {
            problem: Some(p), ..
        } if p.title.as_deref().is_some_and(|t| t.starts_with("KGSS_")) => business_error(
            p.title.as_deref().unwrap_or_default(),
            p.detail.unwrap_or_default(),
        ),
        other => other,
    }
}

/// Reads a REST answer: the sealed response and the `keyId` beside it (pure).
pub fn parse_rest_answer(operation: Operation, r: &Response) -> Result<(Vec<u8>, Option<Vec<u8>>)> {
    let expected = match operation {
        Operation::GetNewKey => 201,
        Operation::GetKey => 200,
    };
    if r.status != expected {
        return Err(rest_error(r));
    }
    let json: SealedResponseJson = serde_json::from_slice(&r.body)
        .map_err(|e| ProtocolError::Malformed(format!("KGSS answer: {e}")))?;
    let b64 = base64::engine::general_purpose::STANDARD;
    let sealed = b64
        .decode(json.sealed_response.as_bytes())
        .map_err(|e| ProtocolError::Malformed(format!("sealedResponse: {e}")))?;
    let key_id = json
        .key_id
        .map(|k| b64.decode(k.as_bytes()))
        .transpose()
        .map_err(|e| ProtocolError::Malformed(format!("keyId: {e}")))?;
    Ok((sealed, key_id))
}

/// The longest key id taken from KGSS (ours are 16 bytes).
const MAX_KEY_ID: usize = 64;

/// A KGSS key is an AES key: 16 bytes as KGSS issues them, or 24 or 32 (which sealing
/// accepts as a KEK). Anything else is no key to seal with.
fn checked_key(key: &[u8]) -> Result<()> {
    match key.len() {
        16 | 24 | 32 => Ok(()),
        n => Err(ProtocolError::Malformed(format!(
            "KGSS answered a key of {n} bytes (an AES key of 16, 24 or 32 expected)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etee_services::etkdepot::Problem;
    use etee_services::kgss::EteeError;
    use etee_services::soap::LangString;

    #[test]
    fn only_aes_keys_are_taken() {
        for n in [16, 24, 32] {
            assert!(checked_key(&vec![1; n]).is_ok(), "{n}");
        }
        for n in [0, 1, 15, 17, 31, 33, 4096] {
            assert!(
                matches!(checked_key(&vec![1; n]), Err(ProtocolError::Malformed(_))),
                "{n}"
            );
        }
    }

    fn answer(status: u16, ct: &str, body: Vec<u8>) -> Response {
        Response {
            status,
            content_type: ct.into(),
            retry_after: None,
            body: body.into(),
        }
    }

    fn id(t: &str, v: &str, app: Option<&str>) -> Identity {
        Identity {
            id_type: t.into(),
            value: v.into(),
            application_id: app.map(Into::into),
        }
    }

    #[test]
    fn only_kgss_is_kgss() {
        let kgss = [id("CBE", "0809394427", Some("KGSS"))];
        assert!(is_kgss(&[id("CBE", "809394427", Some("KGSS"))], &kgss));
        assert!(!is_kgss(&[id("CBE", "0809394427", None)], &kgss));
        assert!(!is_kgss(&[id("NIHII-HOSPITAL", "71000436", None)], &kgss));
        assert!(!is_kgss(&[], &kgss));
        assert!(!is_kgss(&kgss, &[]));
    }

    #[test]
    fn soap_answers() {
        let ok = KgssResponse::ok(Operation::GetKey, vec![1, 2, 3]).to_xml();
        assert_eq!(
            parse_soap_answer(Operation::GetKey, &answer(200, "text/xml", ok.clone())).unwrap(),
            [1, 2, 3]
        );
        assert!(matches!(
            parse_soap_answer(Operation::GetNewKey, &answer(200, "text/xml", ok)),
            Err(ProtocolError::Malformed(_))
        ));
        let refused = |code: &str| {
            KgssResponse {
                operation: Operation::GetKey,
                id: None,
                status: etee_services::kgss::EteeStatus {
                    code: "403".into(),
                    message: None,
                },
                errors: vec![EteeError {
                    code: code.into(),
                    messages: vec![LangString {
                        lang: None,
                        text: "no".into(),
                    }],
                }],
                sealed_content: None,
            }
            .to_xml()
        };
        let r = |c| parse_soap_answer(Operation::GetKey, &answer(200, "text/xml", refused(c)));
        assert!(matches!(
            r("KGSS_ACCESS_DENIED"),
            Err(ProtocolError::AccessDenied(_))
        ));
        assert!(matches!(
            r("KGSS_UNKNOWN_KEY"),
            Err(ProtocolError::UnknownKey)
        ));
        assert!(matches!(
            r("KGSS_REPLAYED_REQUEST"),
            Err(ProtocolError::Kgss { code, .. }) if code == "KGSS_REPLAYED_REQUEST"
        ));
        assert!(matches!(
            parse_soap_answer(
                Operation::GetKey,
                &answer(200, "text/xml", b"junk".to_vec())
            ),
            Err(ProtocolError::Malformed(_))
        ));
    }

    #[test]
    fn rest_answers() {
        let body = br#"{"keyId":"AAEC","sealedResponse":"BAUG"}"#.to_vec();
        let (sealed, key_id) =
            parse_rest_answer(Operation::GetNewKey, &answer(201, "application/json", body))
                .unwrap();
        assert_eq!((sealed, key_id), (vec![4, 5, 6], Some(vec![0, 1, 2])));
        let problem = Problem::new(404, "KGSS_UNKNOWN_KEY", Some("no such key".into())).to_json();
        assert!(matches!(
            parse_rest_answer(
                Operation::GetKey,
                &answer(404, "application/problem+json", problem)
            ),
            Err(ProtocolError::UnknownKey)
        ));
        assert!(matches!(
            parse_rest_answer(Operation::GetKey, &answer(503, "text/plain", vec![])),
            Err(ProtocolError::Http {
                status: 503,
                problem: None
            })
        ));
        assert!(matches!(
            parse_rest_answer(
                Operation::GetKey,
                &answer(
                    200,
                    "application/json",
                    br#"{"sealedResponse":"!!"}"#.to_vec()
                )
            ),
            Err(ProtocolError::Malformed(_))
        ));
        let req: serde_json::Value = serde_json::from_slice(&rest_request_body(&[1, 2])).unwrap();
        assert_eq!(req, serde_json::json!({"sealedRequest": "AQI="}));
    }

    #[test]
    fn new_keys_do_not_show_their_key() {
        let k = NewKey {
            id: vec![1],
            key: Zeroizing::new(vec![0xAB; 16]),
        };
        let shown = format!("{k:?}");
        assert!(!shown.contains("171") && !shown.to_lowercase().contains("ab, "));
        assert!(shown.contains("<secret>"));
    }
}
