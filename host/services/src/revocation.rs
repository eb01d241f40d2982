//! Revocation sources that do I/O: lists that a long-running service (the appliance, the
//! platform) reads from files at start and reads again when they change (an operator's
//! job, or cron, replaces the files with the CAs' current lists, and the service follows
//! without a restart: [`CrlFiles::follow`]), and the HTTP transport of OCSP requests
//! ([`HttpOcsp`]). The one module of this crate that does I/O: the services and the
//! command line need it, and none needs it differently.

use etee_formats::ocsp::{OcspTransport, Online, Responder};
use etee_formats::revocation::{Revocation, RevocationError, RevocationPolicy};
use etee_formats::trust::TrustAnchors;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

/// Why the lists could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CrlFileError {
    #[error("revocation list {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("revocation list {path}: {source}")]
    List {
        path: String,
        source: RevocationError,
    },
    #[error("revocation: {0}")]
    Policy(String),
}

/// Default of `crl_check_seconds`: a replaced list is in use within a minute.
pub const DEFAULT_CRL_CHECK_SECONDS: u64 = 60;

/// The `crl`, `revocation`, `crl_check_seconds` and `ocsp` keys of a service's
/// configuration (and the command line's `--crl`, `--revocation` and `--ocsp`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RevocationConfig {
    /// The lists' files (already made absolute by the caller).
    pub crl: Vec<PathBuf>,
    /// The configured policy; `None`: the default for the sources given.
    pub policy: Option<RevocationPolicy>,
    /// How often the files are looked at.
    pub check_every: Duration,
    /// The OCSP responder asked when neither the message nor a list gives a status.
    pub ocsp: Option<Responder>,
}

impl Default for RevocationConfig {
    fn default() -> Self {
        Self {
            crl: Vec::new(),
            policy: None,
            check_every: Duration::from_secs(DEFAULT_CRL_CHECK_SECONDS),
            ocsp: None,
        }
    }
}

impl RevocationConfig {
    /// Checks the keys as read; the message names the key that is wrong.
    pub fn from_keys(
        crl: Vec<PathBuf>,
        revocation: Option<&str>,
        crl_check_seconds: Option<u64>,
        ocsp: Option<&str>,
    ) -> Result<Self, String> {
        let policy = revocation
            .map(str::parse::<RevocationPolicy>)
            .transpose()
            .map_err(|e| format!("revocation: {e}"))?;
        let ocsp = ocsp
            .map(str::parse::<Responder>)
            .transpose()
            .map_err(|e| format!("ocsp: {e}"))?;
        RevocationPolicy::effective(policy, crl.len(), ocsp.is_some())?;
        let check_every = match crl_check_seconds.unwrap_or(DEFAULT_CRL_CHECK_SECONDS) {
            0 => return Err("crl_check_seconds: at least 1".into()),
            s => Duration::from_secs(s),
        };
        Ok(Self {
            crl,
            policy,
            check_every,
            ocsp,
        })
    }

    /// The policy in force (see [`RevocationPolicy::effective`]).
    pub fn effective_policy(&self) -> Result<RevocationPolicy, CrlFileError> {
        RevocationPolicy::effective(self.policy, self.crl.len(), self.ocsp.is_some())
            .map_err(CrlFileError::Policy)
    }

    /// `anchors` with the lists as they are now and the OCSP responder (for a one-off
    /// command).
    pub fn load(&self, anchors: TrustAnchors) -> Result<TrustAnchors, CrlFileError> {
        let policy = self.effective_policy()?;
        let anchors = CrlFiles::new(self.crl.clone()).load(anchors, policy)?;
        Ok(self.with_online(anchors, move |url, e| log_ocsp_failure(url, e, policy)))
    }

    /// [`RevocationConfig::load`], telling `note` (a line of text) of each OCSP question
    /// that got no usable answer, instead of logging it: what a command prints.
    pub fn load_noting(
        &self,
        anchors: TrustAnchors,
        note: impl Fn(&str) + Send + Sync + 'static,
    ) -> Result<TrustAnchors, CrlFileError> {
        let anchors = CrlFiles::new(self.crl.clone()).load(anchors, self.effective_policy()?)?;
        Ok(self.with_online(anchors, move |url, e| note(&format!("OCSP ({url}): {e}"))))
    }

    /// `anchors` with the lists and the OCSP responder, and the thread that follows the
    /// lists' files (none without lists): what a service keeps while it runs.
    pub fn start(
        &self,
        anchors: TrustAnchors,
    ) -> Result<(TrustAnchors, Option<Following>), CrlFileError> {
        let files = Arc::new(CrlFiles::new(self.crl.clone()));
        let policy = self.effective_policy()?;
        let anchors = self.with_online(files.load(anchors, policy)?, move |url, e| {
            log_ocsp_failure(url, e, policy)
        });
        let following =
            (!self.crl.is_empty()).then(|| files.follow(anchors.clone(), self.check_every));
        Ok((anchors, following))
    }

    /// `anchors` asking the configured responder, if any, whose failed questions go to
    /// `observer`.
    fn with_online(
        &self,
        anchors: TrustAnchors,
        observer: impl Fn(&str, &etee_formats::ocsp::OcspError) + Send + Sync + 'static,
    ) -> TrustAnchors {
        match &self.ocsp {
            Some(responder) => {
                let online = Online::new(responder.clone(), Box::new(HttpOcsp::default()))
                    .with_observer(observer);
                let revocation = anchors.revocation().clone().with_online(online);
                anchors.with_revocation(revocation)
            }
            None => anchors,
        }
    }
}

/// A service's log line for an OCSP question that got no usable answer (at most one a
/// certificate, or responder, every 30 s: the client backs off after each failure), with
/// what that means under the `policy` in force.
fn log_ocsp_failure(url: &str, e: &etee_formats::ocsp::OcspError, policy: RevocationPolicy) {
    let meaning = match policy {
        RevocationPolicy::Mandatory => "what needs it is refused (mandatory policy)",
        _ => {
            "the lists decide alone meanwhile (optional policy); a seal, which must carry a \
             good answer for its own certificate, is refused"
        }
    };
    tracing::warn!(
        responder = url,
        "OCSP: {e}; the status it was asked for is unknown: {meaning}"
    );
}

/// OCSP over HTTP (RFC 6960 appendix A.1): a POST of the DER request, with the official
/// library's timeouts (3 s to connect, 3 s to read; spec §1.6) and a bound on the answer.
#[derive(Clone, Debug)]
pub struct HttpOcsp {
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    /// The largest answer read (bytes): an OCSP response for one certificate, with its
    /// responder's certificate, is a few kilobytes.
    pub max_answer: u64,
}

impl Default for HttpOcsp {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(3),
            read_timeout: Duration::from_secs(3),
            max_answer: 64 * 1024,
        }
    }
}

impl OcspTransport for HttpOcsp {
    fn post(&self, url: &str, request: &[u8]) -> Result<Vec<u8>, String> {
        crate::http_client::DerPost {
            content_type: "application/ocsp-request",
            accept: "application/ocsp-response",
            connect_timeout: self.connect_timeout,
            read_timeout: self.read_timeout,
            max_answer: self.max_answer,
        }
        .send(url, request)
    }
}

/// What identifies a version of a file without reading it: modification and change
/// times (a chmod that makes it readable changes the latter), size and inode.
type Stamp = (i64, i64, i64, i64, u64, u64);

/// One file: the version last looked at, and the lists last found good in it (read and
/// checked once; cheap to clone).
#[derive(Clone, Debug, Default)]
struct FileState {
    stamp: Option<Stamp>,
    good: Option<Revocation>,
}

/// What [`CrlFiles::refresh`] did.
#[derive(Debug)]
pub struct Refreshed {
    /// Lists in use now.
    pub lists: usize,
    /// Whether new lists were put in use.
    pub replaced: bool,
    /// Files that changed but could not be used: their previous content stays in use
    /// (each is tried again when it changes again).
    pub problems: Vec<CrlFileError>,
}

/// The files, and what was last read of each.
#[derive(Debug)]
pub struct CrlFiles {
    paths: Vec<PathBuf>,
    state: Mutex<Vec<FileState>>,
}

impl CrlFiles {
    pub fn new(paths: Vec<PathBuf>) -> Self {
        let state = Mutex::new(vec![FileState::default(); paths.len()]);
        Self { paths, state }
    }

    /// `anchors` with the lists of the files under `policy`. Every error is returned: at
    /// start a service must not run without the lists it was given.
    pub fn load(
        &self,
        anchors: TrustAnchors,
        policy: RevocationPolicy,
    ) -> Result<TrustAnchors, CrlFileError> {
        let mut state = Vec::with_capacity(self.paths.len());
        for path in &self.paths {
            // The stamp before the read: a file replaced during the read is read again.
            let stamp = stamp(path);
            let lists = read_one(path, &anchors)?;
            state.push(FileState {
                stamp,
                good: Some(lists),
            });
        }
        let revocation = Revocation::combined(&good_lists(&state), policy);
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = state;
        Ok(anchors.with_revocation(revocation))
    }

    /// Reads again the files that changed since they were last looked at, and puts the
    /// lists in use for every holder of `anchors`' revocation. `Ok(None)`: nothing changed.
    /// A changed file that cannot be used (unreadable, not lists, not signed by its
    /// anchor) is reported in [`Refreshed::problems`] and its previous content stays in
    /// use, without holding back the other files' new lists.
    pub fn refresh(&self, anchors: &TrustAnchors) -> Option<Refreshed> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut problems = Vec::new();
        let mut changed = false;
        for (path, file) in self.paths.iter().zip(state.iter_mut()) {
            let now = stamp(path);
            if now == file.stamp {
                continue;
            }
            file.stamp = now;
            match read_one(path, anchors) {
                Ok(lists) => {
                    file.good = Some(lists);
                    changed = true;
                }
                Err(e) => problems.push(e),
            }
        }
        if !changed {
            *self.state.lock().unwrap_or_else(|e| e.into_inner()) = state;
            if problems.is_empty() {
                return None;
            }
            return Some(Refreshed {
                lists: anchors.revocation().lists(),
                replaced: false,
                problems,
            });
        }
        let lists = anchors.revocation().replace_with(&good_lists(&state));
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = state;
        Some(Refreshed {
            lists,
            replaced: true,
            problems,
        })
    }

    /// A thread that calls [`CrlFiles::refresh`] every `every` and logs what happened: the
    /// lists read again (info), a changed file that cannot be used (a warning, once per
    /// version of the file; its previous content stays in use), a list in use past its
    /// nextUpdate and a partial list (a warning once per list and reading). It stops when
    /// the [`Following`] is dropped.
    pub fn follow(self: Arc<Self>, anchors: TrustAnchors, every: Duration) -> Following {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("etee-crl".into())
            .spawn(move || {
                let mut warned: Vec<String> = Vec::new();
                warn_partial(&anchors);
                loop {
                    if let Some(r) = self.refresh(&anchors) {
                        for e in &r.problems {
                            tracing::warn!(
                                "{e}; its previous content stays in use (it is read again \
                                 when it changes)"
                            );
                        }
                        if r.replaced {
                            tracing::info!(
                                lists = r.lists,
                                "revocation lists read again (their files changed)"
                            );
                            warned.clear();
                            warn_partial(&anchors);
                        }
                    }
                    for issuer in anchors.revocation().unverified() {
                        let key = format!("unverified {issuer}");
                        if !warned.contains(&key) {
                            tracing::warn!(
                                "the revocation list of {issuer} is not signed by the \
                                 certificate's issuer of that name it was checked against \
                                 (damaged, or another CA's): it is not used"
                            );
                            warned.push(key);
                        }
                    }
                    for issuer in anchors.revocation().stale_at(etee_formats::unix_now()) {
                        if !warned.contains(&issuer) {
                            tracing::warn!(
                                "the revocation list of {issuer} is past its nextUpdate: it \
                                 still revokes what it lists, but gives no other status; put a \
                                 current one in its file"
                            );
                            warned.push(issuer);
                        }
                    }
                    if stopped.recv_timeout(every) != Err(mpsc::RecvTimeoutError::Timeout) {
                        return;
                    }
                }
            })
            .ok();
        if thread.is_none() {
            tracing::warn!(
                "revocation lists: no thread to follow their files; they are not read again"
            );
        }
        Following {
            stop: Some(stop),
            thread,
        }
    }
}

/// The lists of the files last found good, in the files' order.
fn good_lists(state: &[FileState]) -> Vec<Revocation> {
    state.iter().filter_map(|f| f.good.clone()).collect()
}

fn warn_partial(anchors: &TrustAnchors) {
    for issuer in anchors.revocation().incomplete() {
        tracing::warn!(
            "the revocation list of {issuer} is partial (a delta list, one limited to some \
             certificates or reasons, or one with a critical extension etee does not know): \
             what it lists is revoked, but it never gives a certificate's status"
        );
    }
}

/// A file's lists, if it holds revocation lists, those of a trust anchor are signed by it,
/// and none is older than a list of the same issuer in use (at start there is none).
fn read_one(path: &Path, anchors: &TrustAnchors) -> Result<Revocation, CrlFileError> {
    let shown = || path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| CrlFileError::Read {
        path: shown(),
        source,
    })?;
    // The policy of the parts is not used: the lists are put in use by
    // `Revocation::combined` / `replace_with`, under the service's policy.
    Revocation::new(std::slice::from_ref(&bytes), RevocationPolicy::Optional)
        .and_then(|r| {
            r.check_against(anchors.certs())?;
            match anchors.revocation().older_than_in_use(&r) {
                Some(issuer) => Err(RevocationError::Older { issuer }),
                None => Ok(r),
            }
        })
        .map_err(|source| CrlFileError::List {
            path: shown(),
            source,
        })
}

/// Writes the revocation lists' gauges for `GET /metrics` (nothing when revocation is not
/// checked): `{prefix}_revocation_lists` (in use), `{prefix}_revocation_lists_stale` (past
/// their nextUpdate at `now`) and `{prefix}_revocation_next_update_seconds` (the earliest
/// nextUpdate, unix seconds: alert well before it, since a list must be replaced by then).
pub fn render_metrics(out: &mut String, prefix: &str, anchors: &TrustAnchors, now: i64) {
    use crate::metrics::single;
    let revocation = anchors.revocation();
    if revocation.policy() == RevocationPolicy::None {
        return;
    }
    single(
        out,
        &format!("{prefix}_revocation_lists"),
        "Certificate revocation lists in use.",
        "gauge",
        revocation.lists(),
    );
    single(
        out,
        &format!("{prefix}_revocation_lists_stale"),
        "Revocation lists in use past their nextUpdate: replace their files.",
        "gauge",
        revocation.stale_at(now).len(),
    );
    if let Some(next) = revocation.earliest_next_update() {
        single(
            out,
            &format!("{prefix}_revocation_next_update_seconds"),
            "The earliest nextUpdate of the revocation lists in use (unix seconds).",
            "gauge",
            next,
        );
    }
    if let Some(online) = revocation.online() {
        let stats = online.stats();
        for (name, help, value) in [
            ("asked", "Requests sent to the OCSP responder.", stats.asked),
            (
                "failed",
                "OCSP questions without a usable answer (unreachable, error status, an \
                 answer that failed its checks, or not asked during a back-off).",
                stats.failed,
            ),
            (
                "remembered",
                "OCSP questions answered from remembered, still current answers.",
                stats.remembered,
            ),
        ] {
            single(
                out,
                &format!("{prefix}_ocsp_{name}_total"),
                help,
                "counter",
                value,
            );
        }
    }
}

/// The thread of [`CrlFiles::follow`]; dropping it stops the thread (and waits for it).
#[derive(Debug)]
pub struct Following {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Following {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    Some((
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec(),
        m.len(),
        m.ino(),
    ))
}

/// Certificates of a presented chain considered beyond the leaf.
const MAX_PRESENTED: usize = 8;

/// The chain a TLS client presented (verified by rustls at the handshake), as its
/// revocation check at each request reads it. The platform and the appliance check their
/// callers with it.
#[derive(Debug)]
pub struct PresentedChain {
    pub leaf: etee_formats::cert::Certificate,
    /// Only the presented certificates that issued the leaf, the one that issued it, and
    /// so on, in issuing order whatever the order presented: a decoy that only bears an
    /// issuer's name could lead OpenSSL's path building astray (it does not try another
    /// candidate), where rustls found the real path. At most 8 (`MAX_PRESENTED`) looked
    /// at; unreadable ones left out.
    pub issuers: Vec<etee_formats::cert::Certificate>,
}

impl PresentedChain {
    /// The chain as presented (leaf first); `None` when the leaf does not parse here.
    pub fn parse(chain: &[impl AsRef<[u8]>]) -> Option<Self> {
        use etee_formats::cert::Certificate;
        let leaf = Certificate::from_der(chain.first()?.as_ref()).ok()?;
        let presented: Vec<Certificate> = chain[1..]
            .iter()
            .take(MAX_PRESENTED)
            .filter_map(|c| Certificate::from_der(c.as_ref()).ok())
            .collect();
        let issuers = etee_formats::trust::issuers_of(&leaf, presented);
        Some(Self { leaf, issuers })
    }

    /// Why the revocation sources of `anchors` refuse this client at `now`, if they do:
    /// its certificate or a CA above it is revoked; or no path to the anchors along which
    /// to look them up is found (the TLS verifier found one at the handshake, so the two
    /// disagree: refused under either policy rather than let the certificate through
    /// unchecked); or, under the mandatory policy, nothing gives its status. Lists change
    /// while a connection is kept alive, so services ask at each request. Policy none:
    /// never. May ask an OCSP responder (blocking): see [`Self::refusal_off_workers`].
    pub fn refusal(&self, anchors: &TrustAnchors, now: i64) -> Option<&'static str> {
        use etee_formats::trust::PathCheck;
        if anchors.revocation().policy() == RevocationPolicy::None {
            return None;
        }
        match anchors.check(&self.leaf, &self.issuers, now, now) {
            PathCheck::Trusted => None,
            PathCheck::Revoked => Some("revoked (by its CA's list or OCSP responder)"),
            PathCheck::StatusUnknown => Some(
                "of unknown status: neither a current list of its CA nor an OCSP answer gives \
                 it (mandatory policy)",
            ),
            PathCheck::Untrusted => {
                Some("of unknown status: no path to client_ca was found to look it up along")
            }
        }
    }

    /// [`Self::refusal`] from async code: on tokio's blocking pool when the check may ask
    /// an OCSP responder (a network exchange, up to its timeouts), so that no async worker
    /// waits for it; a check that did not finish refuses.
    pub async fn refusal_off_workers(
        self: &Arc<Self>,
        anchors: &TrustAnchors,
        now: i64,
    ) -> Option<&'static str> {
        if anchors.revocation().online().is_none() {
            return self.refusal(anchors, now);
        }
        let (presented, anchors) = (self.clone(), anchors.clone());
        tokio::task::spawn_blocking(move || presented.refusal(&anchors, now))
            .await
            .unwrap_or(Some(
                "of unknown status: its revocation check did not finish",
            ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etee_formats::cert::Certificate;
    use etee_testpki::{InstitutionSpec, TestPki};

    #[test]
    fn the_lists_gauges_say_how_many_are_in_use_and_when_the_first_goes_stale() {
        let pki = TestPki::generate("crl gauges").unwrap();
        let now = etee_formats::unix_now();
        let root = Certificate::from_der(&pki.root.cert.to_der().unwrap()).unwrap();
        let list = |next_update: i64| {
            pki.crl(&[], 1, now - 60, next_update)
                .unwrap()
                .to_der()
                .unwrap()
        };
        let mut out = String::new();
        render_metrics(&mut out, "x", &TrustAnchors::new(vec![root.clone()]), now);
        assert_eq!(out, "", "no gauges without revocation");
        let anchors = TrustAnchors::new(vec![root]).with_revocation(
            Revocation::new(
                &[list(now + 3600), list(now - 10)],
                RevocationPolicy::Optional,
            )
            .unwrap(),
        );
        render_metrics(&mut out, "x", &anchors, now);
        for line in [
            "x_revocation_lists 2\n".to_string(),
            "x_revocation_lists_stale 1\n".to_string(),
            format!("x_revocation_next_update_seconds {}\n", now - 10),
        ] {
            assert!(out.contains(&line), "{line:?} missing from\n{out}");
        }
    }

    #[test]
    fn lists_are_followed_when_their_files_change() {
        let pki = TestPki::generate("crl files").unwrap();
        let inst = pki
            .institution(&InstitutionSpec::new("NIHII-HOSPITAL", "71000436", "A"))
            .unwrap();
        let now = etee_formats::unix_now();
        let cert = |x: &openssl::x509::X509| Certificate::from_der(&x.to_der().unwrap()).unwrap();
        let leaf = cert(&inst.auth.cert);
        let list = |revoked: bool, number: u64| {
            let serial = inst.auth.cert.serial_number();
            let entries: Vec<_> = if revoked {
                vec![(serial, now - 10)]
            } else {
                vec![]
            };
            pki.crl(&entries, number, now - 60, now + 3600)
                .unwrap()
                .to_der()
                .unwrap()
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.crl");
        std::fs::write(&path, list(false, 1)).unwrap();
        let files = CrlFiles::new(vec![path.clone()]);
        let anchors = files
            .load(
                TrustAnchors::new(vec![cert(&pki.root.cert)]),
                RevocationPolicy::Optional,
            )
            .unwrap();
        assert_eq!(anchors.revocation().policy(), RevocationPolicy::Optional);
        let check = || anchors.check(&leaf, &[], now, now);
        assert_eq!(check(), etee_formats::trust::PathCheck::Trusted);
        assert!(files.refresh(&anchors).is_none(), "nothing changed");
        let replaced = |r: Option<Refreshed>| {
            let r = r.expect("a change");
            assert!(r.problems.is_empty(), "{:?}", r.problems);
            (r.replaced, r.lists)
        };

        // Replaced (as an operator's job would: a new file renamed over the old one).
        let next = dir.path().join("ca.crl.new");
        std::fs::write(&next, list(true, 2)).unwrap();
        std::fs::rename(&next, &path).unwrap();
        assert_eq!(replaced(files.refresh(&anchors)), (true, 1));
        assert_eq!(check(), etee_formats::trust::PathCheck::Revoked);

        // A broken replacement: a problem naming the file, reported once; the list in use
        // stays.
        std::fs::write(&path, b"truncated").unwrap();
        let r = files.refresh(&anchors).expect("a change");
        assert!(!r.replaced);
        let e = r.problems[0].to_string();
        assert!(e.contains("ca.crl"), "{e}");
        assert_eq!(check(), etee_formats::trust::PathCheck::Revoked);
        assert!(files.refresh(&anchors).is_none(), "reported again");
        // A missing file likewise.
        std::fs::remove_file(&path).unwrap();
        let r = files.refresh(&anchors).expect("a change");
        assert!(matches!(r.problems[..], [CrlFileError::Read { .. }]));
        std::fs::write(&path, list(false, 3)).unwrap();
        assert_eq!(replaced(files.refresh(&anchors)), (true, 1));
        assert_eq!(check(), etee_formats::trust::PathCheck::Trusted);

        // A replayed older list (an earlier thisUpdate) would undo the revocation: refused,
        // the list in use stays.
        std::fs::write(&path, list(true, 6)).unwrap();
        assert_eq!(replaced(files.refresh(&anchors)), (true, 1));
        let older = pki
            .crl(&[], 1, now - 7200, now + 3600)
            .unwrap()
            .to_der()
            .unwrap();
        std::fs::write(&path, older).unwrap();
        let r = files.refresh(&anchors).expect("a change");
        assert!(!r.replaced);
        assert!(
            r.problems[0].to_string().contains("older"),
            "{:?}",
            r.problems
        );
        assert_eq!(check(), etee_formats::trust::PathCheck::Revoked);
        std::fs::write(&path, list(false, 7)).unwrap();
        assert_eq!(replaced(files.refresh(&anchors)), (true, 1));
        assert_eq!(check(), etee_formats::trust::PathCheck::Trusted);

        // Two files: a broken one does not hold back the other's new list.
        let other = TestPki::generate("crl files, other CA").unwrap();
        let other_list = |number: u64| {
            other
                .crl(&[], number, now - 60, now + 3600)
                .unwrap()
                .to_der()
                .unwrap()
        };
        let path2 = dir.path().join("other.crl");
        std::fs::write(&path2, other_list(1)).unwrap();
        let two = CrlFiles::new(vec![path.clone(), path2.clone()]);
        let anchors2 = two
            .load(
                TrustAnchors::new(vec![cert(&pki.root.cert), cert(&other.root.cert)]),
                RevocationPolicy::Optional,
            )
            .unwrap();
        std::fs::write(&path2, b"half a list").unwrap();
        std::fs::write(&path, list(true, 5)).unwrap();
        let r = two.refresh(&anchors2).expect("a change");
        assert!(r.replaced && r.lists == 2, "{r:?}");
        assert_eq!(r.problems.len(), 1);
        assert!(r.problems[0].to_string().contains("other.crl"));
        assert_eq!(
            anchors2.check(&leaf, &[], now, now),
            etee_formats::trust::PathCheck::Revoked
        );
        // A chmod alone (which can make an unreadable file readable) changes the stamp,
        // so such a file is read again.
        use std::os::unix::fs::PermissionsExt;
        let before = stamp(&path2);
        std::thread::sleep(Duration::from_millis(20));
        std::fs::set_permissions(&path2, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert_ne!(stamp(&path2), before, "a chmod went unnoticed");

        // Followed by a thread: a change is in use within a few intervals, and dropping
        // the thread's handle stops it.
        let following = Arc::new(CrlFiles::new(vec![path.clone()]));
        let anchors = following
            .clone()
            .load(
                TrustAnchors::new(vec![cert(&pki.root.cert)]),
                RevocationPolicy::Optional,
            )
            .unwrap();
        let thread = following.follow(anchors.clone(), Duration::from_millis(20));
        std::fs::write(&path, list(true, 4)).unwrap();
        let start = std::time::Instant::now();
        while anchors.check(&leaf, &[], now, now) != etee_formats::trust::PathCheck::Revoked {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "the change was not followed"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let start = std::time::Instant::now();
        drop(thread);
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "the thread did not stop"
        );

        // At start, every problem is an error.
        assert!(matches!(
            CrlFiles::new(vec![dir.path().join("absent")]).load(
                TrustAnchors::new(vec![cert(&pki.root.cert)]),
                RevocationPolicy::Optional
            ),
            Err(CrlFileError::Read { .. })
        ));
        assert!(matches!(
            RevocationConfig {
                policy: Some(RevocationPolicy::Mandatory),
                ..Default::default()
            }
            .load(TrustAnchors::default()),
            Err(CrlFileError::Policy(_))
        ));
    }
}
