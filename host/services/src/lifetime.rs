//! How long a service's own certificates have left. eHealth certificates last a few years
//! and their renewal is a procedure with the platform's registration office, so an
//! institution that misses the date stops working at once: receivers refuse what its
//! expired authentication certificate signs (`OUTER_CERTIFICATE_EXPIRED`), senders find no
//! valid ETK for it, TLS callers refuse its server certificate. The appliance and the
//! platform warn at start and once a day from [`WARN_DAYS`] before the end, and export
//! each end date for monitoring ([`render_metrics`]).

use etee_formats::cert::Certificate;
use etee_formats::keys::{KeyRing, SignerRef, SigningKey};
use std::time::Duration;

/// Warnings start this many days before a certificate ends.
pub const WARN_DAYS: i64 = 30;

/// How often a running service looks at its certificates again.
pub const CHECK_EVERY: Duration = Duration::from_secs(24 * 60 * 60);

const DAY: i64 = 24 * 60 * 60;

/// What a certificate is for, which says what its end stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The authentication key's certificate: it signs sealed messages (and, for KGSS, its
    /// answers).
    Authentication,
    /// The newest ETK's encryption certificate: senders seal to it.
    Etk,
    /// The TLS server certificate of the service's listener.
    Tls,
}

impl Role {
    /// The metric label and the word in messages.
    pub fn label(self) -> &'static str {
        match self {
            Self::Authentication => "authentication",
            Self::Etk => "etk",
            Self::Tls => "tls",
        }
    }

    fn consequence(self) -> &'static str {
        match self {
            Self::Authentication => {
                "nothing it signs is accepted (receivers report OUTER_CERTIFICATE_EXPIRED), \
                 so sealing is refused"
            }
            Self::Etk => "senders find no valid ETK to seal to",
            Self::Tls => "TLS callers refuse the connection",
        }
    }
}

/// One of a service's own certificates.
#[derive(Clone, Debug)]
pub struct OwnCertificate {
    pub role: Role,
    pub subject: String,
    pub not_before: i64,
    pub not_after: i64,
}

impl OwnCertificate {
    pub fn of(role: Role, cert: &Certificate) -> Self {
        Self {
            role,
            subject: cert.subject_string(),
            not_before: cert.not_before(),
            not_after: cert.not_after(),
        }
    }

    /// A service's key certificates: its authentication key's (if it has a certificate)
    /// and the newest of its ETK keys' (older ones are kept only to read old messages).
    pub fn of_keys(signer: &SigningKey, ring: &KeyRing) -> Vec<Self> {
        let mut certs = Vec::new();
        if let SignerRef::Certificate { cert, .. } = &signer.signer {
            certs.push(Self::of(Role::Authentication, cert));
        }
        certs.extend(Self::latest(
            Role::Etk,
            ring.keys().iter().filter_map(|k| k.cert.as_ref()),
        ));
        certs
    }

    /// The one of `certs` that ends last (the newest ETK among old ones kept for reading).
    pub fn latest<'a>(
        role: Role,
        certs: impl IntoIterator<Item = &'a Certificate>,
    ) -> Option<Self> {
        certs
            .into_iter()
            .max_by_key(|c| c.not_after())
            .map(|c| Self::of(role, c))
    }

    /// What to tell the operator at `now`: nothing while more than [`WARN_DAYS`] are left;
    /// otherwise when it ends (or ended, or starts) and what that stops.
    pub fn warning(&self, now: i64) -> Option<String> {
        let role = self.role.label();
        let subject = &self.subject;
        let end = etee_formats::rfc3339(self.not_after);
        if now > self.not_after {
            Some(format!(
                "the {role} certificate {subject} expired at {end}: {}; renew it (docs/operations.md, \
                 \"Key rotation\")",
                self.role.consequence()
            ))
        } else if now < self.not_before {
            Some(format!(
                "the {role} certificate {subject} is not valid before {}: check this machine's \
                 clock",
                etee_formats::rfc3339(self.not_before)
            ))
        } else {
            ends_soon(self.not_after, now).map(|left| {
                format!(
                    "the {role} certificate {subject} expires at {end}, {left}: then {}; renew \
                     it before (docs/operations.md, \"Key rotation\")",
                    self.role.consequence()
                )
            })
        }
    }
}

/// `in N days` (`in 1 day`, `in less than a day`) when `not_after` is at most
/// [`WARN_DAYS`] after `now` and not past; otherwise `None` (pure). The one rule of what
/// "ends soon" means, for the warnings and for `etee keys list`.
pub fn ends_soon(not_after: i64, now: i64) -> Option<String> {
    if now > not_after || not_after - now > WARN_DAYS * DAY {
        return None;
    }
    Some(match (not_after - now) / DAY {
        0 => "in less than a day".to_string(),
        1 => "in 1 day".to_string(),
        n => format!("in {n} days"),
    })
}

/// At start and then every [`CHECK_EVERY`], for ever: [`log_warnings`] of `certs`. The
/// caller ends it by dropping (or aborting) the future.
pub async fn warn_daily(certs: &[OwnCertificate]) {
    loop {
        log_warnings(certs, etee_formats::unix_now());
        tokio::time::sleep(CHECK_EVERY).await;
    }
}

/// Logs the warnings of `certs` at `now` (an expired or not yet valid certificate as an
/// error).
pub fn log_warnings(certs: &[OwnCertificate], now: i64) {
    for c in certs {
        if let Some(text) = c.warning(now) {
            if now > c.not_after || now < c.not_before {
                tracing::error!("{text}");
            } else {
                tracing::warn!("{text}");
            }
        }
    }
}

/// `{prefix}_certificate_expiry_timestamp_seconds{certificate="authentication|etk|tls"}`:
/// each certificate's `notAfter` (unix seconds), for an alert such as
/// `… - time() < 30 * 86400`.
pub fn render_metrics(out: &mut String, prefix: &str, certs: &[OwnCertificate]) {
    use std::fmt::Write;
    if certs.is_empty() {
        return;
    }
    let name = format!("{prefix}_certificate_expiry_timestamp_seconds");
    let _ = writeln!(
        out,
        "# HELP {name} When the service's own certificate of each role ends (notAfter, unix \
         seconds).\n# TYPE {name} gauge"
    );
    for c in certs {
        let _ = writeln!(
            out,
            "{name}{{certificate=\"{}\"}} {}",
            c.role.label(),
            c.not_after
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(role: Role, not_before: i64, not_after: i64) -> OwnCertificate {
        OwnCertificate {
            role,
            subject: "CN=Alice".into(),
            not_before,
            not_after,
        }
    }

    #[test]
    fn warnings_start_thirty_days_before_the_end() {
        let now = 1_800_000_000;
        let c = cert(Role::Authentication, now - 400 * DAY, now + 31 * DAY);
        assert_eq!(c.warning(now), None);
        let c = cert(Role::Authentication, now - 400 * DAY, now + WARN_DAYS * DAY);
        let text = c.warning(now).expect("thirty days left");
        assert!(text.contains("in 30 days"), "{text}");
        assert!(
            text.contains("CN=Alice") && text.contains("authentication"),
            "{text}"
        );
        assert!(text.contains(&etee_formats::rfc3339(c.not_after)), "{text}");
        let text = cert(Role::Etk, now - DAY, now + DAY + 5)
            .warning(now)
            .unwrap();
        assert!(
            text.contains("in 1 day") && text.contains("no valid ETK"),
            "{text}"
        );
        let text = cert(Role::Tls, now - DAY, now + 60).warning(now).unwrap();
        assert!(
            text.contains("less than a day") && text.contains("TLS"),
            "{text}"
        );
        // Its last second is still valid.
        let text = cert(Role::Tls, now - DAY, now).warning(now).unwrap();
        assert!(text.contains("less than a day"), "{text}");
    }

    #[test]
    fn ended_and_future_certificates_say_so() {
        let now = 1_800_000_000;
        let text = cert(Role::Authentication, now - DAY, now - 1)
            .warning(now)
            .unwrap();
        assert!(
            text.contains("expired at") && text.contains("OUTER_CERTIFICATE_EXPIRED"),
            "{text}"
        );
        assert!(text.contains("renew"), "{text}");
        let text = cert(Role::Etk, now + 1, now + 400 * DAY)
            .warning(now)
            .unwrap();
        assert!(
            text.contains("not valid before") && text.contains("clock"),
            "{text}"
        );
    }

    #[test]
    fn the_metric_has_one_sample_per_certificate() {
        let mut out = String::new();
        render_metrics(&mut out, "x", &[]);
        assert_eq!(out, "", "no certificates, no family");
        render_metrics(
            &mut out,
            "x",
            &[
                cert(Role::Authentication, 0, 100),
                cert(Role::Etk, 0, 200),
                cert(Role::Tls, 0, 300),
            ],
        );
        assert!(
            out.contains("# TYPE x_certificate_expiry_timestamp_seconds gauge\n"),
            "{out}"
        );
        for line in [
            "x_certificate_expiry_timestamp_seconds{certificate=\"authentication\"} 100\n",
            "x_certificate_expiry_timestamp_seconds{certificate=\"etk\"} 200\n",
            "x_certificate_expiry_timestamp_seconds{certificate=\"tls\"} 300\n",
        ] {
            assert!(out.contains(line), "{line} in {out}");
        }
    }
}
