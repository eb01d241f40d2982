//! Revocation lists that a long-running service (the appliance, the platform) reads from
//! files at start and reads again when they change: an operator's job (or cron) replaces
//! the files with the CAs' current lists, and the service follows without a restart
//! ([`CrlFiles::follow`]). The one module of this crate that does I/O: both services need
//! it, and neither needs it differently.

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

/// The `crl`, `revocation` and `crl_check_seconds` keys of a service's configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RevocationConfig {
    /// The lists' files (already made absolute by the caller).
    pub crl: Vec<PathBuf>,
    /// The configured policy; `None`: the default for the lists given.
    pub policy: Option<RevocationPolicy>,
    /// How often the files are looked at.
    pub check_every: Duration,
}

impl Default for RevocationConfig {
    fn default() -> Self {
        Self {
            crl: Vec::new(),
            policy: None,
            check_every: Duration::from_secs(DEFAULT_CRL_CHECK_SECONDS),
        }
    }
}

impl RevocationConfig {
    /// Checks the keys as read; the message names the key that is wrong.
    pub fn from_keys(
        crl: Vec<PathBuf>,
        revocation: Option<&str>,
        crl_check_seconds: Option<u64>,
    ) -> Result<Self, String> {
        let policy = revocation
            .map(str::parse::<RevocationPolicy>)
            .transpose()
            .map_err(|e| format!("revocation: {e}"))?;
        RevocationPolicy::effective(policy, crl.len())?;
        let check_every = match crl_check_seconds.unwrap_or(DEFAULT_CRL_CHECK_SECONDS) {
            0 => return Err("crl_check_seconds: at least 1".into()),
            s => Duration::from_secs(s),
        };
        Ok(Self {
            crl,
            policy,
            check_every,
        })
    }

    /// `anchors` with the lists as they are now (for a one-off command).
    pub fn load(&self, anchors: TrustAnchors) -> Result<TrustAnchors, CrlFileError> {
        CrlFiles::new(self.crl.clone()).load(anchors, self.policy)
    }

    /// `anchors` with the lists, and the thread that follows their files (none without
    /// lists): what a service keeps while it runs.
    pub fn start(
        &self,
        anchors: TrustAnchors,
    ) -> Result<(TrustAnchors, Option<Following>), CrlFileError> {
        let files = Arc::new(CrlFiles::new(self.crl.clone()));
        let anchors = files.load(anchors, self.policy)?;
        let following =
            (!self.crl.is_empty()).then(|| files.follow(anchors.clone(), self.check_every));
        Ok((anchors, following))
    }
}

/// What identifies a version of a file without reading it.
type Stamp = (i64, i64, u64, u64);

/// The files, and the versions of them last read.
#[derive(Debug)]
pub struct CrlFiles {
    paths: Vec<PathBuf>,
    read: Mutex<Vec<Option<Stamp>>>,
}

impl CrlFiles {
    pub fn new(paths: Vec<PathBuf>) -> Self {
        let read = Mutex::new(vec![None; paths.len()]);
        Self { paths, read }
    }

    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }

    /// `anchors` with the lists of the files under `policy` (the configured one, or none:
    /// see [`RevocationPolicy::effective`]). Every error is returned: at start a service
    /// must not run without the lists it was given.
    pub fn load(
        &self,
        anchors: TrustAnchors,
        policy: Option<RevocationPolicy>,
    ) -> Result<TrustAnchors, CrlFileError> {
        let policy =
            RevocationPolicy::effective(policy, self.paths.len()).map_err(CrlFileError::Policy)?;
        let (files, stamps) = self.read_all()?;
        let revocation = Revocation::new(&files, policy).map_err(|source| CrlFileError::List {
            path: self.joined(),
            source,
        })?;
        revocation
            .check_against(anchors.certs())
            .map_err(|source| CrlFileError::List {
                path: self.joined(),
                source,
            })?;
        *self.read.lock().unwrap_or_else(|e| e.into_inner()) = stamps;
        Ok(anchors.with_revocation(revocation))
    }

    /// Reads the files again if one of them changed since the last read, and puts their
    /// lists in use for every holder of `anchors`' revocation. `Ok(None)`: nothing changed;
    /// `Ok(Some(n))`: `n` lists now in use; an error leaves the lists in use as they were
    /// (and the files are read again at the next call).
    pub fn refresh(&self, anchors: &TrustAnchors) -> Result<Option<usize>, CrlFileError> {
        if self.paths.is_empty() {
            return Ok(None);
        }
        let now: Vec<Option<Stamp>> = self.paths.iter().map(|p| stamp(p)).collect();
        if *self.read.lock().unwrap_or_else(|e| e.into_inner()) == now {
            return Ok(None);
        }
        let (files, stamps) = self.read_all()?;
        let n = anchors
            .revocation()
            .replace(&files, anchors.certs())
            .map_err(|source| CrlFileError::List {
                path: self.joined(),
                source,
            })?;
        *self.read.lock().unwrap_or_else(|e| e.into_inner()) = stamps;
        Ok(Some(n))
    }

    /// A thread that calls [`CrlFiles::refresh`] every `every` and logs what happened: a
    /// list read again (info), a file that cannot be read (warning; the lists in use
    /// stay), a list in use past its nextUpdate (a warning once per list and reading:
    /// under the mandatory policy every status it gave is then unknown, under the optional
    /// one its CA's certificates pass unchecked). It stops when the [`Following`] is
    /// dropped.
    pub fn follow(self: Arc<Self>, anchors: TrustAnchors, every: Duration) -> Following {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("etee-crl".into())
            .spawn(move || {
                let mut warned: Vec<String> = Vec::new();
                loop {
                    match self.refresh(&anchors) {
                        Ok(Some(n)) => {
                            tracing::info!(
                                lists = n,
                                "revocation lists read again (their files changed)"
                            );
                            warned.clear();
                        }
                        Ok(None) => {}
                        Err(e) => tracing::warn!(
                            "{e}; the lists read before stay in use (the files are read again in \
                             {} s)",
                            every.as_secs()
                        ),
                    }
                    for issuer in anchors.revocation().stale_at(etee_formats::unix_now()) {
                        if !warned.contains(&issuer) {
                            tracing::warn!(
                                "the revocation list of {issuer} is past its nextUpdate: it \
                                 gives no status any more; put a current one in its file"
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

    #[allow(clippy::type_complexity)]
    fn read_all(&self) -> Result<(Vec<Vec<u8>>, Vec<Option<Stamp>>), CrlFileError> {
        let mut files = Vec::with_capacity(self.paths.len());
        let mut stamps = Vec::with_capacity(self.paths.len());
        for path in &self.paths {
            // The stamp before the read: a file replaced during the read is read again.
            stamps.push(stamp(path));
            let bytes = std::fs::read(path).map_err(|source| CrlFileError::Read {
                path: path.display().to_string(),
                source,
            })?;
            // Each file on its own first, so that an error names it.
            Revocation::new(std::slice::from_ref(&bytes), RevocationPolicy::Optional).map_err(
                |source| CrlFileError::List {
                    path: path.display().to_string(),
                    source,
                },
            )?;
            files.push(bytes);
        }
        Ok((files, stamps))
    }

    fn joined(&self) -> String {
        self.paths
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
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
    Some((m.mtime(), m.mtime_nsec(), m.len(), m.ino()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use etee_formats::cert::Certificate;
    use etee_testpki::{InstitutionSpec, TestPki};

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
            .load(TrustAnchors::new(vec![cert(&pki.root.cert)]), None)
            .unwrap();
        assert_eq!(anchors.revocation().policy(), RevocationPolicy::Optional);
        let check = || anchors.check(&leaf, &[], now, now);
        assert_eq!(check(), etee_formats::trust::PathCheck::Trusted);
        assert_eq!(files.refresh(&anchors).unwrap(), None, "nothing changed");

        // Replaced (as an operator's job would: a new file renamed over the old one).
        let next = dir.path().join("ca.crl.new");
        std::fs::write(&next, list(true, 2)).unwrap();
        std::fs::rename(&next, &path).unwrap();
        assert_eq!(files.refresh(&anchors).unwrap(), Some(1));
        assert_eq!(check(), etee_formats::trust::PathCheck::Revoked);

        // A broken replacement: an error naming the file, the list in use stays, and it is
        // tried again at the next refresh.
        std::fs::write(&path, b"truncated").unwrap();
        let e = files.refresh(&anchors).unwrap_err().to_string();
        assert!(e.contains("ca.crl"), "{e}");
        assert_eq!(check(), etee_formats::trust::PathCheck::Revoked);
        assert!(files.refresh(&anchors).is_err());
        // A missing file likewise.
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(
            files.refresh(&anchors),
            Err(CrlFileError::Read { .. })
        ));
        std::fs::write(&path, list(false, 3)).unwrap();
        assert_eq!(files.refresh(&anchors).unwrap(), Some(1));
        assert_eq!(check(), etee_formats::trust::PathCheck::Trusted);

        // Followed by a thread: a change is in use within a few intervals, and dropping
        // the thread's handle stops it.
        let following = Arc::new(CrlFiles::new(vec![path.clone()]));
        let anchors = following
            .clone()
            .load(TrustAnchors::new(vec![cert(&pki.root.cert)]), None)
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
            CrlFiles::new(vec![dir.path().join("absent")])
                .load(TrustAnchors::new(vec![cert(&pki.root.cert)]), None),
            Err(CrlFileError::Read { .. })
        ));
        assert!(matches!(
            CrlFiles::new(vec![]).load(TrustAnchors::default(), Some(RevocationPolicy::Mandatory)),
            Err(CrlFileError::Policy(_))
        ));
    }
}
