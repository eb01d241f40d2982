//! A platform on loopback for the tests: a generated PKI (shared by the tests of a binary),
//! a TLS server certificate for `localhost`, an embedded store in a temporary directory
//! with the ETKs of the world registered, and clients.
#![allow(dead_code)] // each test file uses a different part

use etee_formats::cert::Certificate;
use etee_formats::keys::{KeyRing, SigningKey};
use etee_formats::keystore::{ehealth_entries, EhealthKeystore};
use etee_formats::trust::TrustAnchors;
use etee_platform::client::{client_config, Connection};
use etee_platform::kgss::{InsecureMemoryWrapper, Kgss};
use etee_platform::server::{start, Running};
use etee_platform::{Platform, PlatformConfig};
use etee_services::kgss::vocabulary;
use etee_testpki::{Institution, InstitutionSpec, TestPki};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, OnceLock};

/// Bob's NIHII-PHARMACY number.
pub const PHARMACY: &str = "27150201";

/// What every test of a binary shares: keys are slow to make.
pub struct Pki {
    pub pki: TestPki,
    pub server: etee_testpki::Issued,
    pub alice: Institution,
    pub bob: Institution,
    pub kgss: Institution,
    pub app_a: Institution,
    pub app_b: Institution,
    /// A doctor (NIHII11), registered as such, so not a recognised pharmacy.
    pub doctor: Institution,
}

pub fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| {
        let pki = TestPki::generate("platform").unwrap();
        let inst = |spec: InstitutionSpec| pki.institution(&spec).unwrap();
        Pki {
            server: pki.tls_server(&["localhost", "127.0.0.1"]).unwrap(),
            alice: inst(InstitutionSpec::new(
                "NIHII-HOSPITAL",
                "71000436",
                "Alice Hospital",
            )),
            bob: inst(InstitutionSpec::new(
                "NIHII-PHARMACY",
                PHARMACY,
                "Bob Pharmacy",
            )),
            kgss: inst(
                InstitutionSpec::new("CBE", "0809394427", "KGSS").with_application_id("KGSS"),
            ),
            app_a: inst(
                InstitutionSpec::new("CBE", "0406798006", "Two Apps").with_application_id("APP-A"),
            ),
            app_b: inst(
                InstitutionSpec::new("CBE", "0406798006", "Two Apps").with_application_id("APP-B"),
            ),
            doctor: inst(InstitutionSpec::new("NIHII11", "10203040506", "Dr Dirk")),
            pki,
        }
    })
}

/// An institution of another CA (its certificate must not be accepted).
pub fn foreign_institution() -> Institution {
    static FOREIGN: OnceLock<Institution> = OnceLock::new();
    FOREIGN
        .get_or_init(|| {
            let other = TestPki::generate("elsewhere").unwrap();
            other
                .institution(&InstitutionSpec::new(
                    "NIHII-PHARMACY",
                    "12345678",
                    "Stranger",
                ))
                .unwrap()
        })
        .clone()
}

pub fn cert(x: &openssl::x509::X509) -> Certificate {
    Certificate::from_der(&x.to_der().unwrap()).unwrap()
}

/// Where a [`World`] keeps its data.
pub enum Backend {
    /// A file in the world's temporary directory.
    Embedded,
    /// A scratch database on the test PostgreSQL server.
    Postgres(etee_store::scratch::ScratchDatabase),
}

impl Backend {
    /// A scratch PostgreSQL database, or `None` (the test is skipped, with a message) when
    /// no test server is configured.
    pub fn postgres() -> Option<Self> {
        etee_store::scratch::ScratchDatabase::for_tests(etee_testpki::skip::postgres_url())
            .map(Backend::Postgres)
    }
}

/// Runs a scenario `async fn name(w: World)` as two tests, `name::embedded` and
/// `name::postgres` (skipped without a test PostgreSQL server).
#[macro_export]
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn embedded() {
                let w = $crate::common::World::new(stringify!($name), $crate::common::Backend::Embedded).await;
                super::$name(w).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let Some(backend) = $crate::common::Backend::postgres() else { return };
                let w = $crate::common::World::new(stringify!($name), backend).await;
                super::$name(w).await;
            }
        }
    )*};
}

/// One platform serving on loopback, and what the tests check it with.
pub struct World {
    pub dir: tempfile::TempDir,
    /// Kept until the world is dropped (a scratch database is dropped with it).
    pub backend: Backend,
    pub addr: SocketAddr,
    pub running: Option<Running>,
    pub platform: Arc<Platform>,
    pub anchors: TrustAnchors,
    pub alice: Institution,
    pub bob: Institution,
    pub kgss: Institution,
    pub app_b: Institution,
    pub doctor: Institution,
}

fn write_pem(path: &Path, certs: &[&openssl::x509::X509]) {
    let mut pem = Vec::new();
    for c in certs {
        pem.extend(c.to_pem().unwrap());
    }
    std::fs::write(path, pem).unwrap();
}

impl World {
    /// A platform with an embedded store holding the ETKs of Bob, KGSS and the holder with
    /// two application ids, serving on 127.0.0.1 (a free port).
    pub async fn new(name: &str, backend: Backend) -> World {
        let p = pki();
        let dir = tempfile::Builder::new()
            .prefix(&format!("platform-{name}-"))
            .tempdir()
            .unwrap();
        write_pem(
            &dir.path().join("server.pem"),
            &[&p.server.cert, &p.pki.root.cert],
        );
        std::fs::write(
            dir.path().join("server.key"),
            p.server.key.private_key_to_pem_pkcs8().unwrap(),
        )
        .unwrap();
        write_pem(&dir.path().join("ca.pem"), &[&p.pki.root.cert]);
        let store = match &backend {
            Backend::Embedded => "platform.redb".to_owned(),
            Backend::Postgres(db) => db.url().to_owned(),
        };
        let config = PlatformConfig::from_toml(
            &format!(
                "[platform]\nlisten = \"127.0.0.1:0\"\nstore = \"{store}\"\n\
                 tls_certificate = \"server.pem\"\ntls_key = \"server.key\"\nclient_ca = [\"ca.pem\"]\n\
                 max_body_bytes = 65536\n"
            ),
            dir.path(),
        )
        .unwrap();
        // The store is synchronous (PostgreSQL's client runs a runtime of its own): set it
        // up off the async worker, as the platform does for every request.
        let location = config.store.clone();
        let store = tokio::task::spawn_blocking(move || etee_store::open(&location).unwrap())
            .await
            .unwrap();
        let anchors = TrustAnchors::new(vec![cert(&p.pki.root.cert)]);
        let (store, anchors_for_setup) = (store.clone(), anchors.clone());
        let store = tokio::task::spawn_blocking(move || {
            let anchors = anchors_for_setup;
            let now = etee_platform::unix_now();
            for inst in [&p.bob, &p.kgss, &p.app_a, &p.app_b] {
                etee_platform::etkdepot::register(store.as_ref(), &inst.etk, &anchors, now)
                    .unwrap();
            }
            for inst in [&p.alice, &p.doctor] {
                etee_platform::etkdepot::register(store.as_ref(), &inst.etk, &anchors, now)
                    .unwrap();
            }
            // The attribute registry: Bob is a recognised pharmacy, Dirk a doctor.
            store
                .set_attribute(
                    "NIHII-PHARMACY",
                    PHARMACY,
                    &etee_store::Attribute {
                        namespace: vocabulary::CERTIFIED_NS.into(),
                        name: vocabulary::RECOGNISED_PHARMACY.into(),
                        value: "true".into(),
                    },
                )
                .unwrap();
            store
                .set_attribute(
                    "NIHII11",
                    "10203040506",
                    &etee_store::Attribute {
                        namespace: vocabulary::CERTIFIED_NS.into(),
                        name: vocabulary::DOCTOR_NIHII11.into(),
                        value: "10203040506".into(),
                    },
                )
                .unwrap();
            store
        })
        .await
        .unwrap();
        let kgss = Kgss {
            signer: signer_of(&p.kgss),
            ring: ring_of(&p.kgss),
            wrapper: Arc::new(InsecureMemoryWrapper::new_random()),
            anchors: anchors.clone(),
        };
        let platform = Arc::new(Platform::new(store, config, anchors.clone(), Some(kgss)));
        let running = start(platform.clone()).await.unwrap();
        World {
            addr: running.addr,
            running: Some(running),
            dir,
            backend,
            platform,
            anchors,
            alice: p.alice.clone(),
            bob: p.bob.clone(),
            kgss: p.kgss.clone(),
            app_b: p.app_b.clone(),
            doctor: p.doctor.clone(),
        }
    }

    /// A TLS client trusting the platform's CA, with `who`'s authentication certificate
    /// and key as client identity if given.
    pub fn client_config(&self, who: Option<&Institution>) -> Arc<rustls::ClientConfig> {
        let root = CertificateDer::from(pki().pki.root.cert.to_der().unwrap());
        let identity = who.map(|i| {
            let chain = vec![CertificateDer::from(i.auth.cert.to_der().unwrap())];
            let key = PrivateKeyDer::try_from(i.auth.key.private_key_to_pkcs8().unwrap()).unwrap();
            (chain, key)
        });
        client_config(&[root], identity).unwrap()
    }

    pub async fn try_connect(
        &self,
        who: Option<&Institution>,
    ) -> etee_platform::Result<Connection> {
        Connection::open(self.addr, "localhost", self.client_config(who)).await
    }

    pub async fn connect(&self, who: Option<&Institution>) -> Connection {
        self.try_connect(who).await.unwrap()
    }

    /// Sends `head` (a request line and headers, without the blank line that ends them) and
    /// nothing more on a connection of its own, and reads until the platform closes it:
    /// what a client whose body is still to come gets, and how soon.
    pub async fn raw_head(&self, head: &str) -> RawAnswer {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let tcp = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(self.client_config(None))
            .connect(name, tcp)
            .await
            .unwrap();
        let started = std::time::Instant::now();
        tls.write_all(format!("{head}\r\nHost: localhost\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut bytes = Vec::new();
        // A peer closing without close_notify is an error after the bytes read: keep those.
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            tls.read_to_end(&mut bytes),
        )
        .await
        .expect("the platform kept the connection open for 10 s");
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status line in {text:?}"));
        let header = |name: &str| {
            head.lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.trim().to_owned())
        };
        RawAnswer {
            status,
            content_type: header("content-type").unwrap_or_default(),
            connection: header("connection"),
            body: body.as_bytes().to_vec(),
            elapsed: started.elapsed(),
        }
    }

    /// Runs `f` on the platform's store, off the async workers (the store is synchronous).
    pub fn store<T>(&self, f: impl FnOnce(&dyn etee_store::Store) -> T) -> T {
        tokio::task::block_in_place(|| f(self.platform.store.as_ref()))
    }

    /// Serves the same platform again with other limits (e.g. short timeouts); returns
    /// the platform now served.
    pub async fn restart_with(&mut self, limits: etee_platform::config::Limits) -> Arc<Platform> {
        self.restart_configured(|c| c.limits = limits).await
    }

    /// Serves the same platform again with one turn of blocking work and a 100 ms queue
    /// timeout: a test holding that turn (`platform.work.permit()`) makes it busy.
    pub async fn restart_with_one_turn(&mut self) -> Arc<Platform> {
        self.restart_with(etee_platform::config::Limits {
            max_concurrent_work: 1,
            queue_timeout: std::time::Duration::from_millis(100),
            ..Default::default()
        })
        .await
    }

    /// Serves the same platform again with its configuration changed by `change`;
    /// returns the platform now served.
    pub async fn restart_configured(
        &mut self,
        change: impl FnOnce(&mut etee_platform::config::PlatformConfig),
    ) -> Arc<Platform> {
        if let Some(r) = self.running.take() {
            r.stop().await.unwrap();
        }
        let mut config = self.platform.config.clone();
        change(&mut config);
        config.listen = self.addr;
        let platform = Arc::new(Platform::new(
            self.platform.store.clone(),
            config,
            self.platform.anchors.clone(),
            None,
        ));
        let running = start(platform.clone()).await.unwrap();
        self.addr = running.addr;
        self.running = Some(running);
        platform
    }

    /// Serves the same store again with other anchors (e.g. with revocation lists) for
    /// the platform and for a new KGSS (a new in-memory wrapping key: keys made before
    /// are lost); the world's platform and anchors become these.
    pub async fn restart_with_anchors(&mut self, anchors: TrustAnchors) {
        if let Some(r) = self.running.take() {
            r.stop().await.unwrap();
        }
        let mut config = self.platform.config.clone();
        config.listen = self.addr;
        let kgss = Kgss {
            signer: signer_of(&self.kgss),
            ring: ring_of(&self.kgss),
            wrapper: Arc::new(InsecureMemoryWrapper::new_random()),
            anchors: anchors.clone(),
        };
        let platform = Arc::new(Platform::new(
            self.platform.store.clone(),
            config,
            anchors.clone(),
            Some(kgss),
        ));
        let running = start(platform.clone()).await.unwrap();
        self.addr = running.addr;
        self.running = Some(running);
        let old = std::mem::replace(&mut self.platform, platform);
        drop_platform(old).await;
        self.anchors = anchors;
    }

    /// Asserts that the platform's `/metrics` (read on a connection of its own) has every
    /// one of `lines`.
    pub async fn metrics_have(&self, lines: &[&str]) {
        let answer = self.connect(None).await.get("/metrics").await.unwrap();
        let metrics = String::from_utf8_lossy(&answer.body);
        for line in lines {
            assert!(metrics.contains(line), "{line} missing from\n{metrics}");
        }
    }

    pub async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.stop().await.unwrap();
        }
        // The platform's store (a PostgreSQL pool) must be dropped off the async workers.
        let platform = self.platform.clone();
        drop(self);
        tokio::task::spawn_blocking(move || drop(platform))
            .await
            .unwrap();
    }

    /// Alice's authentication key as a signer.
    pub fn alice_signer(&self) -> SigningKey {
        signer_of(&self.alice)
    }

    /// Bob's ETK key as a key ring.
    pub fn bob_ring(&self) -> KeyRing {
        ring_of(&self.bob)
    }

    /// `openssl cms -verify` accepts the ETK: its RA signature chains to the platform's CA.
    pub fn openssl_accepts(&self, etk: &[u8]) {
        let path = self.dir.path().join("check.etk");
        std::fs::write(&path, etk).unwrap();
        let out = std::process::Command::new("openssl")
            .args(["cms", "-verify", "-inform", "DER", "-purpose", "any", "-in"])
            .arg(&path)
            .arg("-CAfile")
            .arg(self.dir.path().join("ca.pem"))
            .args(["-out", "/dev/null"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl cms -verify: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// What [`World::raw_head`] read.
#[derive(Debug)]
pub struct RawAnswer {
    pub status: u16,
    pub content_type: String,
    pub connection: Option<String>,
    pub body: Vec<u8>,
    /// From the request's sending to the connection's end.
    pub elapsed: std::time::Duration,
}

/// An institution's keys as its eHealth keystore holds them (the alias convention of
/// `EhealthKeystore`, software keys: the platform tests are about the services; the HSM
/// path has its own tests).
pub fn keystore_of(inst: &Institution) -> EhealthKeystore {
    let auth_chain = std::iter::once(&inst.auth.cert).chain(&inst.chain).cloned();
    let entries = ehealth_entries(
        inst.auth.key.clone(),
        auth_chain.collect(),
        inst.etk_key.clone(),
        inst.etk_cert.clone(),
    );
    EhealthKeystore::from_entries(entries.unwrap()).unwrap()
}

/// An institution's authentication key as a signer.
pub fn signer_of(inst: &Institution) -> SigningKey {
    keystore_of(inst).authentication().unwrap()
}

/// An institution's ETK key as a key ring.
pub fn ring_of(inst: &Institution) -> KeyRing {
    keystore_of(inst).key_ring()
}

/// An institution with Alice's identity (NIHII-HOSPITAL 71000436) issued by another CA: its
/// certificate names the right holder but must not be trusted.
pub fn foreign_alice() -> Institution {
    static IMPOSTOR: OnceLock<Institution> = OnceLock::new();
    IMPOSTOR
        .get_or_init(|| {
            let other = TestPki::generate("impostors").unwrap();
            other
                .institution(&InstitutionSpec::new(
                    "NIHII-HOSPITAL",
                    "71000436",
                    "Alice Hospital",
                ))
                .unwrap()
        })
        .clone()
}

impl Drop for World {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // A failing test unwinds on an async worker, where dropping a PostgreSQL store
            // panics again (its client blocks on a runtime of its own) and aborts the
            // whole binary: the store is leaked instead, so that the failure is reported
            // and the other tests run (the scratch database is dropped WITH (FORCE)).
            std::mem::forget(self.platform.store.clone());
        }
    }
}

/// Drops a platform the test held (one `restart_with` returned) off the async workers: a
/// PostgreSQL store must not be dropped on one (see [`World::stop`]).
pub async fn drop_platform(platform: Arc<Platform>) {
    tokio::task::spawn_blocking(move || drop(platform))
        .await
        .unwrap();
}

/// An event the platform logged (targets `etee…`): its level and its text (message and
/// fields, `name=value`).
#[derive(Clone, Debug)]
pub struct Logged {
    pub level: tracing::Level,
    pub text: String,
}

/// Every event logged in this test binary from the first call on (a global subscriber:
/// the platform logs from tokio's workers and blocking pool, not the test's thread).
pub fn logged() -> Vec<Logged> {
    logs().lock().unwrap().clone()
}

fn logs() -> &'static std::sync::Mutex<Vec<Logged>> {
    use tracing::field::{Field, Visit};
    use tracing::span;
    static LOGS: OnceLock<&'static std::sync::Mutex<Vec<Logged>>> = OnceLock::new();
    struct Capture(&'static std::sync::Mutex<Vec<Logged>>);
    struct Text(String);
    impl Visit for Text {
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            self.0.push_str(&format!(" {}={value:?}", field.name()));
        }
    }
    impl tracing::Subscriber for Capture {
        fn enabled(&self, m: &tracing::Metadata<'_>) -> bool {
            m.target().starts_with("etee")
        }
        fn new_span(&self, _: &span::Attributes<'_>) -> span::Id {
            span::Id::from_u64(1)
        }
        fn record(&self, _: &span::Id, _: &span::Record<'_>) {}
        fn record_follows_from(&self, _: &span::Id, _: &span::Id) {}
        fn event(&self, event: &tracing::Event<'_>) {
            let mut text = Text(String::new());
            event.record(&mut text);
            self.0.lock().unwrap().push(Logged {
                level: *event.metadata().level(),
                text: text.0,
            });
        }
        fn enter(&self, _: &span::Id) {}
        fn exit(&self, _: &span::Id) {}
    }
    LOGS.get_or_init(|| {
        let logs = Box::leak(Box::new(std::sync::Mutex::new(Vec::new())));
        tracing::subscriber::set_global_default(Capture(logs)).unwrap();
        logs
    })
}

/// Starts capturing for [`logged`].
pub fn capture_logs() {
    logs();
}

/// `payload` in the envelope a WCF client of the `_X509` binding sends (the header's
/// content is not evaluated: the token and the times are placeholders).
pub fn wcf_envelope(payload: &str) -> Vec<u8> {
    format!(
        r#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" xmlns:u="http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd"><s:Header><o:Security s:mustUnderstand="1" xmlns:o="http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"><u:Timestamp u:Id="_0"><u:Created>2026-12-06T10:00:00.000Z</u:Created><u:Expires>2026-12-06T10:05:00.000Z</u:Expires></u:Timestamp><o:BinarySecurityToken u:Id="uuid-1" ValueType="http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-x509-token-profile-1.0#X509v3" EncodingType="http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-soap-message-security-1.0#Base64Binary">TUlJQg==</o:BinarySecurityToken></o:Security></s:Header><s:Body u:Id="_1" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:xsd="http://www.w3.org/2001/XMLSchema">{payload}</s:Body></s:Envelope>"#
    )
    .into_bytes()
}
