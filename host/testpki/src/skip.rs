//! Tests that need something the machine may lack (the shared conformance vectors,
//! `openssl` or `pkcs11-tool` on `PATH`) say so and return, unless `ETEE_E2E_STRICT` is set:
//! then they fail, so that a CI run cannot pass by skipping. One definition for the
//! end-to-end crate (`tests/`) and the crates' own tests (`host/hsm`, `host/formats`).

use std::path::{Path, PathBuf};

/// The variable that turns every skip into a failure (any value but empty and `0`).
pub const STRICT_ENV: &str = "ETEE_E2E_STRICT";

/// The variable naming the vectors' folder instead of `../shared/vectors` (a relative path
/// is taken from the project root, see [`crate::from_project_root`]).
pub const VECTORS_ENV: &str = "ETEE_VECTORS";

/// Whether `ETEE_E2E_STRICT` is set (to anything but empty or `0`).
pub fn strict() -> bool {
    std::env::var_os(STRICT_ENV).is_some_and(|v| !v.is_empty() && v != "0")
}

/// Reports a skipped test on standard error (`skipping: WHY`), or fails it (panics) under
/// `ETEE_E2E_STRICT`. The caller returns after it.
#[track_caller]
pub fn skip(why: &str) {
    skip_or_fail(why, strict());
}

#[track_caller]
fn skip_or_fail(why: &str, strict: bool) {
    if strict {
        panic!("{STRICT_ENV} is set, refusing to skip: {why}");
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
            strict,
        );
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
