//! `etee pki ocsp DIR --listen ADDR`: an OCSP responder (RFC 6960) for a local world's
//! CA, over HTTP POST (appendix A.1), so that senders can embed answers and receivers ask
//! (`--ocsp`, `ocsp = "http://…"`) as the official library does with eHealth's
//! responders.
//!
//! It answers from the CA's revocation list (`ca.crl`, made by `etee pki revoke`, read
//! again when it changes): a certificate on it is revoked from its revocation date, any
//! other serial of this CA is good (RFC 6960 §2.2: no certificate with that serial within
//! its validity is revoked). Answers are signed by the CA's key, carry the request's nonce
//! and a nextUpdate `--valid-for` seconds ahead. No list, a list that cannot be read, that
//! the CA did not sign or that is past its nextUpdate gets `internalError` answers, never
//! a good one; a request about another CA's certificates gets `unauthorized`, one with a
//! negative serial number `unknown` for it.

use super::pki::{current_list, open_ca};
use crate::CliError;
use etee_formats::ber::slice::parse_exact;
use etee_formats::ber::tag;
use etee_formats::ocsp::ReadCertId;
use etee_testpki::{ocsp_successful, ocsp_unsuccessful, OcspAnswer, OcspStatus, TestPki};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

#[derive(clap::Args)]
pub struct OcspArgs {
    /// The world's directory (made by `etee pki init`).
    dir: PathBuf,
    /// Where to listen (port 0: any free port; the address is printed).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    listen: String,
    /// How long an answer is current: its nextUpdate is this many seconds ahead.
    #[arg(long, value_name = "SECONDS", default_value_t = 300)]
    valid_for: u32,
}

/// The largest request read (one certificate's request is about 100 bytes).
const MAX_REQUEST: usize = 16 * 1024;
/// Certificates asked about in one request.
const MAX_CERT_IDS: usize = 32;

/// OCSPResponseStatus values (RFC 6960 §4.2.1).
const MALFORMED_REQUEST: u8 = 1;
const INTERNAL_ERROR: u8 = 2;
const UNAUTHORIZED: u8 = 6;

pub fn run(args: OcspArgs) -> Result<ExitCode, CliError> {
    let pki = open_ca(&args.dir)?;
    let responder = Arc::new(Responder::new(
        pki,
        args.dir.clone(),
        i64::from(args.valid_for),
    ));
    // A first reading, so that a bad list is reported at start.
    if let Err(e) = responder.revoked(etee_formats::unix_now()) {
        eprintln!("etee pki ocsp: {e}: answering internalError until it is fixed");
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .map_err(|e| CliError::Usage(format!("--listen {}: {e}", args.listen)))?;
        outln!(
            "etee pki ocsp: answering for the CA of {} on http://{}",
            args.dir.display(),
            listener.local_addr()?
        )?;
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("etee pki ocsp: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let responder = responder.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let responder = responder.clone();
                    async move { Ok::<_, std::convert::Infallible>(responder.http(req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10))
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

/// Revoked serials (magnitude) and their revocation times.
type Revoked = Vec<(Vec<u8>, i64)>;

/// The list file as last seen: (modification time, size), or absent.
type Stamp = Option<(SystemTime, u64)>;

struct Responder {
    pki: TestPki,
    /// How a CertID names this CA: (hash algorithm OID content, name hash, key hash),
    /// for SHA-1 and SHA-256.
    names: Vec<(&'static [u8], Vec<u8>, Vec<u8>)>,
    dir: PathBuf,
    valid_for: i64,
    /// The list as last read (the file's stamp then, the entries, the list's nextUpdate).
    list: Mutex<Option<(Stamp, Revoked, Option<i64>)>>,
}

/// `entries` if their list is still current at `now`.
fn current(entries: &Revoked, next_update: Option<i64>, now: i64) -> Result<Revoked, CliError> {
    match next_update {
        Some(next) if next < now => Err(CliError::Usage(format!(
            "the CA's list is past its nextUpdate ({next}): issue it again with `etee pki \
             revoke DIR`"
        ))),
        _ => Ok(entries.clone()),
    }
}

impl Responder {
    fn new(pki: TestPki, dir: PathBuf, valid_for: i64) -> Self {
        let names = [etee_formats::oid::SHA1, etee_formats::oid::SHA256]
            .into_iter()
            .filter_map(|alg| {
                let (name, key) = etee_formats::ocsp::issuer_hashes(alg, &pki.root.cert)?;
                Some((alg, name, key))
            })
            .collect();
        Self {
            pki,
            names,
            dir,
            valid_for,
            list: Mutex::new(None),
        }
    }

    async fn http(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        if req.method() != Method::POST {
            return plain(StatusCode::METHOD_NOT_ALLOWED, "POST an OCSP request\n");
        }
        let body = match Limited::new(req.into_body(), MAX_REQUEST).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => return plain(StatusCode::PAYLOAD_TOO_LARGE, "request too large\n"),
        };
        let (answer, said) = self.answer(&body, etee_formats::unix_now());
        // One line per answer (a closed standard output does not stop the responder).
        let _ = outln!("etee pki ocsp: {said}");
        let mut response = Response::new(Full::new(Bytes::from(answer)));
        response.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("application/ocsp-response"),
        );
        response
    }

    /// The revoked serials of the world's list, read again when its file changed. No
    /// list, or one past its nextUpdate, is an error: nothing is known then.
    fn revoked(&self, now: i64) -> Result<Revoked, CliError> {
        let path = self.dir.join("ca.crl");
        let meta = std::fs::metadata(&path).map_err(|e| {
            CliError::Usage(format!(
                "{}: {e} (issue the CA's list with `etee pki revoke DIR`)",
                path.display()
            ))
        })?;
        let stamp = Some((
            meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            meta.len(),
        ));
        let mut list = self.list.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((seen, entries, next_update)) = list.as_ref() {
            if *seen == stamp {
                return current(entries, *next_update, now);
            }
        }
        let (entries, _, next_update) = current_list(&self.dir, &self.pki, false)?;
        let entries: Revoked = entries
            .iter()
            .filter_map(|(serial, at)| Some((serial.to_bn().ok()?.to_vec(), *at)))
            .collect();
        *list = Some((stamp, entries.clone(), next_update));
        current(&entries, next_update, now)
    }

    /// The OCSPResponse (DER) to `request`, and a line saying what was answered.
    fn answer(&self, request: &[u8], now: i64) -> (Vec<u8>, String) {
        let Some(asked) = Asked::parse(request) else {
            return (
                ocsp_unsuccessful(MALFORMED_REQUEST),
                "malformed request".into(),
            );
        };
        if asked.ids.iter().all(|id| !self.is_ours(id)) {
            return (
                ocsp_unsuccessful(UNAUTHORIZED),
                "unauthorized (no certificate of this CA asked about)".into(),
            );
        }
        let revoked = match self.revoked(now) {
            Ok(r) => r,
            Err(e) => {
                return (
                    ocsp_unsuccessful(INTERNAL_ERROR),
                    format!("internalError ({e})"),
                )
            }
        };
        let mut singles = Vec::new();
        let mut said = Vec::new();
        for id in &asked.ids {
            let Some(serial) = id.id.serial.as_ref().filter(|_| self.is_ours(id)) else {
                singles.push((id.der.clone(), OcspStatus::Unknown));
                said.push("a serial unknown here (another CA's, or negative)".into());
                continue;
            };
            let status = match revoked.iter().find(|(s, _)| s == serial) {
                Some((_, at)) => OcspStatus::Revoked(*at),
                None => OcspStatus::Good,
            };
            said.push(format!(
                "serial {} {}",
                hex::encode(serial),
                if status == OcspStatus::Good {
                    "good"
                } else {
                    "revoked"
                }
            ));
            singles.push((id.der.clone(), status));
        }
        let answer = OcspAnswer {
            nonce: asked.nonce,
            next_update: Some(now + self.valid_for),
            ..OcspAnswer::at(OcspStatus::Good, now)
        };
        match self.pki.ocsp_basic_for(&singles, &answer) {
            Ok(basic) => (ocsp_successful(&basic), said.join(", ")),
            Err(e) => (
                ocsp_unsuccessful(INTERNAL_ERROR),
                format!("internalError (signing: {e})"),
            ),
        }
    }

    /// Whether a CertID names this CA as the issuer (hashes of its name and key, with
    /// the CertID's hash algorithm).
    fn is_ours(&self, id: &AskedId) -> bool {
        let id = &id.id;
        self.names
            .iter()
            .any(|(alg, name, key)| id.alg == *alg && id.name_hash == *name && id.key_hash == *key)
    }
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *r.status_mut() = status;
    r
}

/// What a request asks.
struct Asked {
    ids: Vec<AskedId>,
    /// The nonce extension's value (the OCTET STRING's content inside it).
    nonce: Option<Vec<u8>>,
}

struct AskedId {
    /// The CertID as sent, echoed in the answer.
    der: Vec<u8>,
    id: ReadCertId,
}

impl Asked {
    /// `OCSPRequest { tbsRequest { [0] version?, [1] requestorName?, requestList,
    /// [2] requestExtensions? }, [0] optionalSignature? }`; `None` when malformed.
    fn parse(der: &[u8]) -> Option<Self> {
        let t = parse_exact(der).ok()?;
        let mut request = t.seq().ok()?;
        let mut tbs = request.next(tag::SEQUENCE).ok()?.seq().ok()?;
        tbs.optional(tag::ctx_cons(0)).ok()?;
        tbs.optional(tag::ctx_cons(1)).ok()?;
        let list = tbs.next(tag::SEQUENCE).ok()?;
        let mut ids = Vec::new();
        for r in list.children() {
            let mut r = r.ok()?.seq().ok()?;
            let id = r.next(tag::SEQUENCE).ok()?;
            ids.push(AskedId {
                der: id.raw.to_vec(),
                id: ReadCertId::read(&id).ok()?,
            });
        }
        if ids.is_empty() || ids.len() > MAX_CERT_IDS {
            return None;
        }
        let mut nonce = None;
        if let Some(exts) = tbs.optional(tag::ctx_cons(2)).ok()? {
            for ext in exts.seq().ok()?.next(tag::SEQUENCE).ok()?.children() {
                let ext = ext.ok()?;
                let mut e = ext.seq().ok()?;
                let oid = e.next(tag::OID).ok()?.content;
                e.optional(tag::BOOLEAN).ok()?;
                let value = e.next(tag::OCTET_STRING).ok()?;
                if oid == etee_formats::ocsp::OID_OCSP_NONCE {
                    let inner = parse_exact(value.content).ok()?;
                    nonce = Some(inner.content.to_vec());
                }
            }
        }
        Some(Self { ids, nonce })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etee_formats::ocsp::{self, CertId, Said};
    use etee_testpki::InstitutionSpec;

    fn responder(dir: &std::path::Path) -> (Responder, etee_testpki::Institution) {
        let pki = TestPki::generate("responder").unwrap();
        std::fs::write(dir.join("ca.pem"), pki.root.cert.to_pem().unwrap()).unwrap();
        let inst = pki
            .institution(&InstitutionSpec::new("NIHII-HOSPITAL", "71000436", "A"))
            .unwrap();
        (Responder::new(pki, dir.to_path_buf(), 300), inst)
    }

    #[test]
    fn answers_follow_the_list_and_bad_requests_get_an_error_status() {
        let dir = tempfile::tempdir().unwrap();
        let (r, alice) = responder(dir.path());
        let (cert, issuer) = (&alice.auth.cert, &r.pki.root.cert);
        let now = etee_formats::unix_now();
        let ask = |r: &Responder| {
            let id = CertId::of(cert, issuer).unwrap();
            let (answer, _) = r.answer(&ocsp::request(&id, &[9; 16]), now);
            ocsp::basic_of(&answer).and_then(|b| ocsp::judge(&b, cert, issuer, now))
        };
        // No list yet: nothing is known, and nothing is said good.
        assert!(matches!(
            ask(&r),
            Err(ocsp::OcspError::NotSuccessful("internalError"))
        ));
        let empty = r.pki.crl(&[], 1, now - 60, now + 3600).unwrap();
        std::fs::write(dir.path().join("ca.crl"), empty.to_der().unwrap()).unwrap();
        let good = ask(&r).expect("an answer");
        assert_eq!(good.said, Said::Good);
        assert_eq!(good.nonce.as_deref(), Some(&[9u8; 16][..]));
        assert_eq!(good.next_update, Some(now + 300));

        // Revoked on the list: revoked, read again because the file changed.
        let crl = r
            .pki
            .crl(&[(cert.serial_number(), now - 60)], 1, now - 60, now + 3600)
            .unwrap();
        std::fs::write(dir.path().join("ca.crl"), crl.to_der().unwrap()).unwrap();
        assert_eq!(ask(&r).unwrap().said, Said::Revoked(Some(now - 60)));

        // A damaged list, a list past its nextUpdate, no list: never good.
        let stale = r.pki.crl(&[], 2, now - 7200, now - 3600).unwrap();
        for (bytes, what) in [
            (b"damaged list".to_vec(), "damaged"),
            (stale.to_der().unwrap(), "stale"),
        ] {
            std::fs::write(dir.path().join("ca.crl"), bytes).unwrap();
            assert!(
                matches!(
                    ask(&r),
                    Err(ocsp::OcspError::NotSuccessful("internalError"))
                ),
                "{what}"
            );
        }
        std::fs::remove_file(dir.path().join("ca.crl")).unwrap();
        assert!(matches!(
            ask(&r),
            Err(ocsp::OcspError::NotSuccessful("internalError"))
        ));

        // Another CA's certificate; garbage.
        let other = TestPki::generate("other").unwrap();
        let id = CertId::of(&other.ra.cert, &other.root.cert).unwrap();
        let (answer, _) = r.answer(&ocsp::request(&id, &[1; 16]), now);
        assert!(matches!(
            ocsp::basic_of(&answer),
            Err(ocsp::OcspError::NotSuccessful("unauthorized"))
        ));
        // A negative serial of this CA: unknown, whatever the list says.
        std::fs::write(
            dir.path().join("ca.crl"),
            r.pki
                .crl(&[], 3, now - 60, now + 3600)
                .unwrap()
                .to_der()
                .unwrap(),
        )
        .unwrap();
        {
            use etee_formats::ber::write::{octets, seq, tlv};
            let sha1 = |d: &[u8]| openssl::sha::sha1(d).to_vec();
            let root = &r.pki.root.cert;
            let key = root.public_key().unwrap().rsa().unwrap();
            let cert_id = seq(&[
                &seq(&[
                    &etee_formats::oid::der(etee_formats::oid::SHA1),
                    &tlv(0x05, &[]),
                ]),
                &octets(&sha1(&root.subject_name().to_der().unwrap())),
                &octets(&sha1(&key.public_key_to_der_pkcs1().unwrap())),
                &tlv(0x02, &[0xed, 0xcc]),
            ]);
            let request = seq(&[&seq(&[&seq(&[&seq(&[&cert_id])])])]);
            let (answer, said) = r.answer(&request, now);
            let basic = ocsp::basic_of(&answer).expect("an answer");
            let unknown = [cert_id.as_slice(), &[0x82, 0x00]].concat();
            assert!(
                basic
                    .windows(unknown.len())
                    .any(|w| w == unknown.as_slice()),
                "{said}"
            );
        }
        for junk in [&b""[..], b"\x30\x00", b"not DER at all"] {
            let (answer, _) = r.answer(junk, now);
            assert!(matches!(
                ocsp::basic_of(&answer),
                Err(ocsp::OcspError::NotSuccessful("malformedRequest"))
            ));
        }
    }
}
