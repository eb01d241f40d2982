//! Tests that need something the machine may lack (the shared conformance vectors,
//! `openssl` or `pkcs11-tool` on `PATH`, the test PostgreSQL server) say so and return,
//! unless told that it must be there:
//!
//! - `ETEE_E2E_STRICT` turns every skip into a failure;
//! - `ETEE_TEST_TOOLS_REQUIRED`, which `scripts/test` (the README's test command, CI's)
//!   sets because it installs them, turns the skips for missing tools and for a missing
//!   PostgreSQL into failures, so that a run cannot pass by skipping them; the shared
//!   vectors may still be absent (a user's clone has none), and `ETEE_SKIP_POSTGRES=1`
//!   (the operator's choice, which `scripts/test` honours) lets the PostgreSQL tests skip.
//!
//! One definition for the end-to-end crate (`tests/`) and the crates' own tests.

use std::path::{Path, PathBuf};

/// The variable that turns every skip into a failure (any value but empty and `0`).
pub const STRICT_ENV: &str = "ETEE_E2E_STRICT";

/// The variable saying that the tools and the test PostgreSQL must be there.
pub const TOOLS_ENV: &str = "ETEE_TEST_TOOLS_REQUIRED";

/// The operator's choice to run without PostgreSQL (`scripts/test` starts none then).
pub const SKIP_POSTGRES_ENV: &str = "ETEE_SKIP_POSTGRES";

/// The variable naming the test PostgreSQL server's URL (`scripts/postgres` prints one,
/// `scripts/test` sets it).
pub const POSTGRES_URL_ENV: &str = "ETEE_TEST_POSTGRES_URL";

/// The variable naming the vectors' folder instead of `../shared/vectors` (a relative path
/// is taken from the project root, see [`crate::from_project_root`]).
pub const VECTORS_ENV: &str = "ETEE_VECTORS";

/// Whether `ETEE_E2E_STRICT` is set (to anything but empty or `0`).
pub fn strict() -> bool {
    flag(STRICT_ENV)
}

fn flag(name: &str) -> bool {
    std::env::var_os(name).is_some_and(|v| !v.is_empty() && v != "0")
}

/// What a skipped test lacks.
#[derive(Clone, Copy)]
enum Missing {
    /// A command (`openssl`, `pkcs11-tool`, ...).
    Tool,
    /// The test PostgreSQL server.
    Postgres,
}

/// The variable that forbids skipping for want of `missing`, given which variables are
/// set (`None`: the skip stands).
fn refusal(missing: Missing, set: impl Fn(&str) -> bool) -> Option<&'static str> {
    if set(STRICT_ENV) {
        Some(STRICT_ENV)
    } else if matches!(missing, Missing::Postgres) && set(SKIP_POSTGRES_ENV) {
        None
    } else if set(TOOLS_ENV) {
        Some(TOOLS_ENV)
    } else {
        None
    }
}

/// Reports a test skipped for a missing tool on standard error (`skipping: WHY`), or fails
/// it (panics) under `ETEE_E2E_STRICT` or `ETEE_TEST_TOOLS_REQUIRED`. The caller returns
/// after it.
#[track_caller]
pub fn skip(why: &str) {
    skip_or_fail(why, refusal(Missing::Tool, flag));
}

/// As [`skip`], for a test that needs the test PostgreSQL server, unless
/// `ETEE_SKIP_POSTGRES=1` says the run is without it on purpose.
#[track_caller]
pub fn skip_postgres(why: &str) {
    skip_or_fail(why, refusal(Missing::Postgres, flag));
}

/// The test PostgreSQL server's URL, or `None` after [`skip_postgres`].
#[track_caller]
pub fn postgres_url() -> Option<String> {
    let url = std::env::var(POSTGRES_URL_ENV)
        .ok()
        .filter(|u| !u.is_empty());
    if url.is_none() {
        skip_postgres(&format!(
            "{POSTGRES_URL_ENV} is not set (scripts/test starts a PostgreSQL and sets it; \
             scripts/postgres prints a URL)"
        ));
    }
    url
}

#[track_caller]
fn skip_or_fail(why: &str, refusal: Option<&str>) {
    if let Some(var) = refusal {
        panic!("{var} is set, refusing to skip: {why}");
    }
    eprintln!("skipping: {why} ({STRICT_ENV}=1 makes this a failure)");
}

/// The shared conformance vectors: `ETEE_VECTORS`, else `../shared/vectors` beside the
/// project root. `None` after [`skip`] when the folder (with its `expected-verdicts.json`)
/// is not there, which fails the test under `ETEE_E2E_STRICT`.
#[track_caller]
pub fn shared_vectors() -> Option<PathBuf> {
    let dir = match std::env::var_os(VECTORS_ENV) {
        Some(d) => crate::from_project_root(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/vectors"),
    };
    vectors_in(dir, strict())
}

#[track_caller]
fn vectors_in(dir: PathBuf, strict: bool) -> Option<PathBuf> {
    if dir.join("expected-verdicts.json").is_file() {
        Some(dir)
    } else {
        skip_or_fail(
            &format!(
                "the shared vectors are not in {} (no expected-verdicts.json; set {VECTORS_ENV})",
                dir.display()
            ),
            strict.then_some(STRICT_ENV),
        );
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_skips_are_refused() {
        let with = |vars: &'static [&'static str]| move |v: &str| vars.contains(&v);
        for missing in [Missing::Tool, Missing::Postgres] {
            assert_eq!(refusal(missing, with(&[])), None);
            assert_eq!(refusal(missing, with(&[STRICT_ENV])), Some(STRICT_ENV));
            assert_eq!(refusal(missing, with(&[TOOLS_ENV])), Some(TOOLS_ENV));
            assert_eq!(
                refusal(missing, with(&[STRICT_ENV, SKIP_POSTGRES_ENV, TOOLS_ENV])),
                Some(STRICT_ENV)
            );
        }
        // Running without PostgreSQL on purpose: its tests skip, tools are still required.
        let chosen = with(&[TOOLS_ENV, SKIP_POSTGRES_ENV]);
        assert_eq!(refusal(Missing::Postgres, chosen), None);
        assert_eq!(refusal(Missing::Tool, chosen), Some(TOOLS_ENV));
    }

    #[test]
    fn absent_vectors_skip_unless_strict() {
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(vectors_in(empty.path().to_path_buf(), false), None);
        let strict = std::panic::catch_unwind(|| vectors_in(empty.path().to_path_buf(), true))
            .expect_err("strict must fail");
        let message = crate::panic_message(&*strict);
        assert!(
            message.contains("ETEE_E2E_STRICT is set, refusing to skip")
                && message.contains("shared vectors are not in")
                && message.contains(&empty.path().display().to_string()),
            "{message}"
        );
        std::fs::write(empty.path().join("expected-verdicts.json"), "{}").unwrap();
        for strict in [false, true] {
            assert_eq!(
                vectors_in(empty.path().to_path_buf(), strict).as_deref(),
                Some(empty.path())
            );
        }
    }
}
