//! What the process does to itself before anything else: its memory holds PINs, keystore
//! passwords, KGSS keys and plaintext, so it must not end up in a core file, nor be read
//! by another process of the same user through `ptrace` or `/proc/PID/mem`.

/// Set to `1` to keep core dumps and same-user debugging (a developer's machine).
pub const ALLOW_ENV: &str = "ETEE_ALLOW_CORE_DUMPS";

/// What [`keep_memory_private`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Hardening {
    /// No core file, and not dumpable: only root (`CAP_SYS_PTRACE`) may inspect the process.
    Applied,
    /// [`ALLOW_ENV`] asked to leave the process as it was.
    Skipped,
}

/// Core file size limit 0 (soft and hard, so that nothing in the process raises it
/// again; inherited by child processes) and `PR_SET_DUMPABLE` 0, which also makes
/// `/proc/PID/{mem,environ,fd,…}` and `ptrace` refuse other processes of the same user.
/// The process's own `/proc/self` keeps working. A failure is returned for a warning: the
/// command still runs (these calls fail only under a sandbox that forbids them).
pub fn keep_memory_private(allow: Option<&std::ffi::OsStr>) -> Result<Hardening, String> {
    if allow.is_some_and(|v| v == "1") {
        return Ok(Hardening::Skipped);
    }
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Err(e) = setrlimit(Resource::RLIMIT_CORE, 0, 0) {
        // A syscall filter may refuse the call where the limit is already 0 (systemd's
        // `LimitCORE=0` beside a filter without `@resources`): nothing is missing then.
        if getrlimit(Resource::RLIMIT_CORE) != Ok((0, 0)) {
            return Err(format!("cannot turn core dumps off (RLIMIT_CORE): {e}"));
        }
    }
    nix::sys::prctl::set_dumpable(false)
        .map_err(|e| format!("cannot make the process undumpable (PR_SET_DUMPABLE): {e}"))?;
    Ok(Hardening::Applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs in a child process of its own (this test binary again), so that the other
    /// tests keep a normal process.
    #[test]
    fn the_process_turns_core_dumps_and_debuggers_away() {
        const CHILD: &str = "ETEE_HARDENING_TEST_CHILD";
        if std::env::var_os(CHILD).is_some() {
            assert_eq!(
                keep_memory_private(Some("0".as_ref())),
                Ok(Hardening::Applied)
            );
            assert!(!nix::sys::prctl::get_dumpable().unwrap());
            let (soft, hard) =
                nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_CORE).unwrap();
            assert_eq!((soft, hard), (0, 0));
            // The process's own /proc entries still answer it (the output code links
            // unnamed files through /proc/self/fd).
            assert!(std::fs::read_dir("/proc/self/fd").unwrap().count() > 0);
            return;
        }
        assert_eq!(
            keep_memory_private(Some("1".as_ref())),
            Ok(Hardening::Skipped)
        );
        assert!(nix::sys::prctl::get_dumpable().unwrap(), "left as it was");
        let me = std::env::current_exe().unwrap();
        let out = std::process::Command::new(me)
            .args([
                "--exact",
                "hardening::tests::the_process_turns_core_dumps_and_debuggers_away",
                "--nocapture",
            ])
            .env(CHILD, "1")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("1 passed"));
    }
}
