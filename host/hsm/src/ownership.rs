//! Files a command run as root leaves where a service user must read them.
//!
//! SoftHSM stores each token object as a file owned by whoever created it, mode 0600, and
//! silently skips the files it cannot read: a key generated or imported by root into a
//! token directory that belongs to the service's user exists for root and not for the
//! service. The audit chain's files are alike (a new segment, a torn tail kept aside).
//! After an administrative command, [`root_owned_warnings`] says what root left behind.

use crate::config::Config;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Where SoftHSM reads its configuration when `SOFTHSM2_CONF` is not set.
const SOFTHSM_DEFAULT_CONF: &str = "/etc/softhsm/softhsm2.conf";

/// Warnings, for a command that ran as root: files owned by root inside the SoftHSM token
/// directory (when the module is SoftHSM) or beside the audit file, whose directory
/// belongs to another user. Empty when not run as root or nothing is out of place; what
/// cannot be read is passed over (a warning, not a check that could fail a command).
pub fn root_owned_warnings(config: &Config) -> Vec<String> {
    if !nix::unistd::geteuid().is_root() {
        return Vec::new();
    }
    let mut out = Vec::new();
    if is_softhsm(&config.hsm.module) {
        let conf = std::env::var_os("SOFTHSM2_CONF")
            .map(PathBuf::from)
            .unwrap_or_else(|| SOFTHSM_DEFAULT_CONF.into());
        let token_dir = std::fs::read_to_string(&conf)
            .ok()
            .and_then(|text| softhsm_token_dir(&text));
        if let Some(dir) = token_dir {
            out.extend(warning(&dir, "SoftHSM token", |_| true));
        }
    }
    let audit = &config.custody.audit_file;
    if let (Some(dir), Some(name)) = (audit.parent(), audit.file_name()) {
        let name = name.to_string_lossy().into_owned();
        out.extend(warning(dir, "audit chain", |path| {
            path.file_name()
                .is_some_and(|f| f.to_string_lossy().starts_with(&name))
        }));
    }
    out
}

fn is_softhsm(module: &Path) -> bool {
    module
        .file_name()
        .is_some_and(|f| f.to_string_lossy().contains("softhsm"))
}

/// `directories.tokendir` of a `softhsm2.conf`.
fn softhsm_token_dir(conf: &str) -> Option<PathBuf> {
    conf.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (key, value) = l.split_once('=')?;
            (key.trim() == "directories.tokendir").then(|| PathBuf::from(value.trim()))
        })
}

/// The warning for `dir` when it belongs to another user than root and holds files (two
/// levels deep: a token's directory and its objects) that root owns and `pick` selects.
fn warning(dir: &Path, what: &str, pick: impl Fn(&Path) -> bool) -> Option<String> {
    let owner = std::fs::metadata(dir).ok()?;
    if owner.uid() == 0 {
        return None;
    }
    let mut found = Vec::new();
    root_owned(dir, 2, &pick, &mut found);
    let first = found.first()?;
    Some(format!(
        "{} file(s) of the {what} in {} belong to root (this command ran as root), such as \
         {}, while the directory belongs to uid {}: that user cannot read them (a SoftHSM \
         token silently leaves out its objects it cannot read). Run `chown -R {}:{} {}` \
         before the service uses them, and run such commands as the service's user \
         (`runuser -u USER -- etee …`)",
        found.len(),
        dir.display(),
        first.display(),
        owner.uid(),
        owner.uid(),
        owner.gid(),
        dir.display(),
    ))
}

fn root_owned(dir: &Path, depth: u8, pick: &impl Fn(&Path) -> bool, found: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.uid() == 0 && pick(&path) {
            found.push(path.clone());
        }
        if meta.is_dir() && depth > 1 {
            root_owned(&path, depth - 1, pick, found);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_directory_is_read_from_softhsm2_conf() {
        let conf = "# SoftHSM v2 configuration file\n# directories.tokendir = /nowhere\n\
                    directories.tokendir = /var/lib/etee/tokens \nobjectstore.backend = file\n";
        assert_eq!(
            softhsm_token_dir(conf),
            Some(PathBuf::from("/var/lib/etee/tokens"))
        );
        assert_eq!(softhsm_token_dir("objectstore.backend = file\n"), None);
        assert!(is_softhsm(Path::new("/usr/lib/softhsm/libsofthsm2.so")));
        assert!(!is_softhsm(Path::new("/opt/vendor/libcryptoki.so")));
    }

    /// Run as root (as CI and this project's rigs are): a directory given to another uid,
    /// with a root-owned file in a subdirectory, is reported with the chown to run; the
    /// same directory owned by root is not.
    #[test]
    fn root_owned_files_in_another_users_directory_are_reported() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root (chown)");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("tokens");
        let token = dir.join("5f2c");
        std::fs::create_dir_all(&token).unwrap();
        std::fs::write(token.join("key.object"), b"x").unwrap();
        assert_eq!(warning(&dir, "SoftHSM token", |_| true), None);
        let service = nix::unistd::Uid::from_raw(65534);
        let group = nix::unistd::Gid::from_raw(65534);
        nix::unistd::chown(&dir, Some(service), Some(group)).unwrap();
        let said = warning(&dir, "SoftHSM token", |_| true).expect("a warning");
        assert!(
            said.starts_with("2 file(s) of the SoftHSM token in")
                && said.contains("uid 65534")
                && said.contains(&format!("chown -R 65534:65534 {}", dir.display())),
            "{said}"
        );
        // Given back to the service's user: nothing to say.
        nix::unistd::chown(&token, Some(service), Some(group)).unwrap();
        nix::unistd::chown(&token.join("key.object"), Some(service), Some(group)).unwrap();
        assert_eq!(warning(&dir, "SoftHSM token", |_| true), None);
    }
}
