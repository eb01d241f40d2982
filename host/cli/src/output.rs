//! Where content goes: a file replaced atomically, or standard output; in both cases
//! only once the verdict allows it. And standard output itself: every write to it goes
//! through here (or [`outln!`]/[`out!`]), so a reader that goes away (`| head -1`) ends
//! the command quietly with [`CliError::StdoutClosed`] instead of a panic.

use crate::CliError;
use std::fmt;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Writes to standard output (what [`outln!`] and [`out!`] call).
pub fn print(args: fmt::Arguments<'_>) -> Result<(), CliError> {
    io::stdout().lock().write_fmt(args).map_err(stdout_error)
}

/// An error writing to standard output: [`CliError::StdoutClosed`] when the reader went
/// away (`EPIPE`), else an I/O error.
pub fn stdout_error(e: io::Error) -> CliError {
    if e.kind() == io::ErrorKind::BrokenPipe {
        CliError::StdoutClosed
    } else {
        CliError::Io(e)
    }
}

/// Standard output that remembers whether its reader went away, for producers whose
/// errors come back wrapped in their own types (`cms::seal`'s `SealError::Io`).
struct Stdout<'a> {
    inner: io::StdoutLock<'a>,
    closed: bool,
}

impl Stdout<'_> {
    fn new() -> Self {
        Self {
            inner: io::stdout().lock(),
            closed: false,
        }
    }

    fn note<T>(&mut self, r: io::Result<T>) -> io::Result<T> {
        if let Err(e) = &r {
            self.closed |= e.kind() == io::ErrorKind::BrokenPipe;
        }
        r
    }

    /// The outcome of writing: [`CliError::StdoutClosed`] when the reader went away,
    /// whatever error the producer made of it.
    fn outcome(&self, r: Result<(), CliError>) -> Result<(), CliError> {
        if self.closed {
            Err(CliError::StdoutClosed)
        } else {
            r
        }
    }
}

impl Write for Stdout<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let r = self.inner.write(buf);
        self.note(r)
    }

    fn flush(&mut self) -> io::Result<()> {
        let r = self.inner.flush();
        self.note(r)
    }
}

/// Content being produced; invisible to readers of the destination until [`Pending::commit`].
///
/// It waits in a spool: in memory, past 64 KiB in an anonymous file encrypted under a key
/// only this process holds (`etee_appliance::spool`). So unverified content reaches
/// neither a pipe nor, in clear, the disk, and a killed process leaves nothing behind.
pub struct Pending {
    spool: etee_appliance::spool::SpoolWriter,
    /// `--out FILE`; standard output when `None`.
    dest: Option<PathBuf>,
}

impl Pending {
    /// For `--out FILE` the spool is in the file's directory (the same file system), else
    /// in the temporary directory.
    pub fn new(out: Option<&Path>) -> Result<Self, CliError> {
        let dir = match out {
            Some(path) if !is_special(path) => path
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("."))
                .to_path_buf(),
            _ => std::env::temp_dir(),
        };
        etee_appliance::spool::check_dir(&dir).map_err(|source| CliError::File {
            path: dir.display().to_string(),
            source,
        })?;
        Ok(Self {
            spool: etee_appliance::spool::SpoolWriter::new(&dir),
            dest: out.map(Path::to_path_buf),
        })
    }

    /// A buffered writer, for a sealed message (no secret: its many small pieces are
    /// gathered before they reach the spool).
    pub fn writer(&mut self) -> io::BufWriter<&mut etee_appliance::spool::SpoolWriter> {
        io::BufWriter::with_capacity(256 * 1024, &mut self.spool)
    }

    /// The spool itself, for plaintext: it wipes what it holds, where a buffer in front of
    /// it would be freed with the content's last bytes in it (an unseal writes pieces of
    /// tens of KiB).
    pub fn plain_writer(&mut self) -> &mut etee_appliance::spool::SpoolWriter {
        &mut self.spool
    }

    /// Makes the content visible: to standard output, or to a temporary file beside the
    /// destination (mode 0600) made durable and renamed over it.
    pub fn commit(self) -> Result<(), CliError> {
        let mut content = self.spool.finish()?;
        let Some(dest) = self.dest else {
            let mut stdout = Stdout::new();
            let r = io::copy(&mut content, &mut stdout)
                .and_then(|_| stdout.flush())
                .map_err(CliError::Io);
            return stdout.outcome(r);
        };
        let failed = |source| CliError::File {
            path: dest.display().to_string(),
            source,
        };
        if is_special(&dest) {
            let mut out = std::fs::OpenOptions::new()
                .write(true)
                .open(&dest)
                .map_err(failed)?;
            io::copy(&mut content, &mut out).map_err(failed)?;
            return out.flush().map_err(failed);
        }
        refuse_replacing_a_key(&dest)?;
        replace_file(&dest, 0o600, |file| {
            // Through a buffer wiped when dropped: the content may be plaintext.
            let mut buf = zeroize::Zeroizing::new(vec![0u8; 256 * 1024]);
            loop {
                match io::Read::read(&mut content, &mut buf) {
                    Ok(0) => return Ok(()),
                    Ok(n) => file.write_all(&buf[..n])?,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
        })
        .map_err(failed)
    }
}

/// Whether `path` exists and is not a regular file: a device (`/dev/null`, `/dev/stdout`),
/// a FIFO, a directory. Such a destination is written in place (or refused by the system,
/// for a directory): renaming a new file over it would replace it, and for `/dev/null` that
/// breaks the whole machine.
fn is_special(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| !m.is_file())
}

/// Writes a sealed message: atomically to a file, or straight to standard output
/// (a sealed message holds no secret, and sealing either completes or fails with exit 2).
pub fn write_sealed<F>(out: Option<&Path>, produce: F) -> Result<(), CliError>
where
    F: FnOnce(&mut dyn Write) -> Result<(), CliError>,
{
    match out {
        Some(_) => {
            let mut pending = Pending::new(out)?;
            {
                let mut w = pending.writer();
                produce(&mut w)?;
                w.flush()?;
            }
            pending.commit()
        }
        None => {
            // A sealed message is binary: on a terminal it would only garble the screen.
            if io::IsTerminal::is_terminal(&io::stdout()) {
                return Err(CliError::Usage(
                    "the sealed message is binary and standard output is a terminal: give \
                     --out FILE, or redirect standard output to a file or a pipe"
                        .into(),
                ));
            }
            let mut w = io::BufWriter::with_capacity(256 * 1024, Stdout::new());
            let r = produce(&mut w).and_then(|()| w.flush().map_err(CliError::Io));
            w.get_ref().outcome(r)
        }
    }
}

/// Writes a whole file atomically: a temporary file in the same directory, created with
/// its final mode (0600 for a `secret`: never readable by others, not even for a moment),
/// made durable, then renamed over `path` and the rename made durable. A crash leaves the
/// old file or the new one, never a truncated one; a symbolic link at `path` is replaced,
/// not followed.
pub fn write_file(path: &Path, bytes: &[u8], secret: bool) -> Result<(), CliError> {
    let failed = |source| CliError::File {
        path: path.display().to_string(),
        source,
    };
    if is_special(path) {
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(failed)?;
        return out.write_all(bytes).map_err(failed);
    }
    if !is_private_key_pem(bytes) {
        refuse_replacing_a_key(path)?;
    }
    let mode = if secret { 0o600 } else { 0o644 };
    replace_file(path, mode, |file| file.write_all(bytes)).map_err(failed)
}

/// Holds `<path>.lock` exclusively (waiting for it, and saying so) while a command reads,
/// merges and replaces `path`: two runs at once would otherwise each replace the file
/// with their own merge, and one would undo the other. The lock file stays (empty).
pub fn update_lock(path: &Path) -> Result<std::fs::File, CliError> {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".lock");
    let lock_path = path.with_file_name(name);
    let failed = |source| CliError::File {
        path: lock_path.display().to_string(),
        source,
    };
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(failed)?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            eprintln!(
                "etee: {} is being updated by another etee command; waiting for it",
                path.display()
            );
            lock.lock().map_err(failed)?;
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(failed(e)),
    }
    Ok(lock)
}

/// Whether `bytes` hold a PEM private key (`PRIVATE KEY`, `RSA PRIVATE KEY`, `ENCRYPTED
/// PRIVATE KEY`...), in any of their blocks.
fn is_private_key_pem(bytes: &[u8]) -> bool {
    crate::inputs::pem_labels(bytes)
        .iter()
        .any(|l| l.ends_with("PRIVATE KEY"))
}

/// Refuses to replace a file that holds a PEM private key with anything else: an output
/// named after a key file by mistake (`--out key.pem`) would destroy the key.
fn refuse_replacing_a_key(path: &Path) -> Result<(), CliError> {
    use std::io::Read;
    let Ok(file) = std::fs::File::open(path) else {
        return Ok(());
    };
    if !file.metadata().is_ok_and(|m| m.is_file()) {
        return Ok(());
    }
    let mut head = Vec::new();
    let _ = file.take(64 * 1024).read_to_end(&mut head);
    if is_private_key_pem(&head) {
        return Err(CliError::Usage(format!(
            "{} holds a private key: not replaced; write to another file",
            path.display()
        )));
    }
    Ok(())
}

/// Replaces `dest` atomically with what `fill` writes: a new file in the same directory,
/// created with its final `mode`, made durable, renamed over `dest`, the rename made
/// durable. A crash leaves the old file or the new one, never a truncated one; a
/// symbolic link at `dest` is replaced, not followed.
///
/// The new file has no name while it is written (`O_TMPFILE`), so a kill or a power cut
/// meanwhile leaves nothing behind: unsealed content is never left half-written in a
/// stray file. Complete and durable, it gets `dest` as its name at once when `dest` does
/// not exist; else a hidden name `.etee-<random>` first, renamed over `dest` (a kill in
/// that instant leaves the complete file under the hidden name). Where the file system
/// cannot make unnamed files (NFS, some FUSE file systems), a named temporary file
/// `.etee-<random>` is written, removed on every exit but a kill, which leaves it behind
/// as far as it was written.
fn replace_file(
    dest: &Path,
    mode: u32,
    fill: impl FnOnce(&mut std::fs::File) -> io::Result<()>,
) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = dest
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let unnamed = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(nix::libc::O_TMPFILE)
        .mode(mode)
        .open(dir);
    match unnamed {
        Ok(mut file) if Path::new("/proc/self/fd").is_dir() => {
            fill(&mut file)?;
            file.sync_all()?;
            match link_to(&file, dest) {
                Ok(()) => {}
                // Something is there (a file, a symbolic link): replaced by a rename.
                Err(nix::errno::Errno::EEXIST) => {
                    let name = link_unnamed(&file, dir)?;
                    if let Err(e) = std::fs::rename(&name, dest) {
                        let _ = std::fs::remove_file(&name);
                        return Err(e);
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        // No O_TMPFILE here (an older kernel, a file system without it), or no /proc.
        _ => {
            let mut builder = tempfile::Builder::new();
            builder.prefix(".etee-");
            builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(mode));
            let mut file = builder.tempfile_in(dir)?;
            fill(file.as_file_mut())?;
            file.as_file().sync_all()?;
            file.persist(dest).map_err(|e| e.error)?;
        }
    }
    // Without this the rename may not survive a power cut: an error, not a shrug.
    etee_custody::file_sink::sync_dir(dest)
}

/// Gives the unnamed file `file` the name `name` (`EEXIST` when taken: never replaces).
fn link_to(file: &std::fs::File, name: &Path) -> nix::Result<()> {
    use std::os::fd::AsRawFd;
    let source = format!("/proc/self/fd/{}", file.as_raw_fd());
    nix::unistd::linkat(
        nix::fcntl::AT_FDCWD,
        source.as_str(),
        nix::fcntl::AT_FDCWD,
        name,
        nix::fcntl::AtFlags::AT_SYMLINK_FOLLOW,
    )
}

/// Gives the unnamed file `file` a free name `.etee-<random>` in `dir` (its own
/// directory); the path of that name.
fn link_unnamed(file: &std::fs::File, dir: &Path) -> io::Result<PathBuf> {
    for _ in 0..16 {
        let mut random = [0u8; 8];
        openssl::rand::rand_bytes(&mut random).map_err(io::Error::other)?;
        let name = dir.join(format!(".etee-{}", hex::encode(random)));
        match link_to(file, &name) {
            Ok(()) => return Ok(name),
            Err(nix::errno::Errno::EEXIST) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(io::Error::other("no free temporary name"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A private key file is never replaced by another kind of content; a key by a key
    /// is (the test PKI issuing an institution anew).
    #[test]
    fn a_private_key_is_not_replaced_by_other_content() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key.pem");
        let pem = b"-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n";
        std::fs::write(&key, pem).unwrap();
        let err = write_file(&key, b"-----BEGIN CERTIFICATE REQUEST-----\n", false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("holds a private key"), "{err}");
        assert_eq!(std::fs::read(&key).unwrap(), pem);
        let mut pending = Pending::new(Some(&key)).unwrap();
        pending.writer().write_all(b"sealed").unwrap();
        assert!(pending.commit().is_err());
        assert_eq!(std::fs::read(&key).unwrap(), pem);
        let new_key = b"-----BEGIN RSA PRIVATE KEY-----\nMIIB\n-----END RSA PRIVATE KEY-----\n";
        write_file(&key, new_key, true).unwrap();
        assert_eq!(std::fs::read(&key).unwrap(), new_key);
    }

    /// While a file is written it has no name: a kill meanwhile leaves nothing (no stray
    /// half-written plaintext); once complete it replaces the destination.
    #[test]
    fn a_file_being_written_has_no_name_until_complete() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("plain");
        std::fs::write(&dest, b"old").unwrap();
        replace_file(&dest, 0o600, |f| {
            f.write_all(b"half")?;
            let names: Vec<_> = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert_eq!(names, ["plain"], "a name appeared while writing");
            assert_eq!(std::fs::read(&dest).unwrap(), b"old");
            f.write_all(b" and the rest")
        })
        .unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"half and the rest");
        let mode = std::fs::metadata(&dest).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        // A failure while writing leaves the destination as it was, and nothing else.
        let failed = replace_file(&dest, 0o600, |f| {
            f.write_all(b"partial")?;
            Err(io::Error::other("disk full"))
        });
        assert!(failed.is_err());
        assert_eq!(std::fs::read(&dest).unwrap(), b"half and the rest");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    /// A new name is given to the complete file directly; a name that is taken (a file, a
    /// symbolic link, even a dangling one) is replaced, never followed.
    #[test]
    fn write_file_names_new_files_and_replaces_links() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let dir = tempfile::tempdir().unwrap();
        let new = dir.path().join("plain.txt");
        write_file(&new, b"content", true).unwrap();
        let meta = std::fs::metadata(&new).unwrap();
        assert_eq!(std::fs::read(&new).unwrap(), b"content");
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(meta.nlink(), 1, "one name only");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

        let link = dir.path().join("link.txt");
        let elsewhere = dir.path().join("elsewhere.txt");
        std::os::unix::fs::symlink(&elsewhere, &link).unwrap();
        write_file(&link, b"replaced", false).unwrap();
        assert!(std::fs::symlink_metadata(&link).unwrap().is_file());
        assert_eq!(std::fs::read(&link).unwrap(), b"replaced");
        assert!(!elsewhere.exists(), "the link was followed");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    #[test]
    fn write_file_replaces_files_atomically_and_writes_into_fifos() {
        use std::os::unix::fs::{FileTypeExt, PermissionsExt};
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("key.pem");
        std::fs::write(&file, b"old").unwrap();
        write_file(&file, b"new", true).unwrap();
        assert_eq!(std::fs::read(&file).unwrap(), b"new");
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "no temporary file left");

        let fifo = dir.path().join("out.fifo");
        assert!(std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success());
        let reader = {
            let fifo = fifo.clone();
            std::thread::spawn(move || std::fs::read(fifo).unwrap())
        };
        write_file(&fifo, b"through the pipe", false).unwrap();
        assert_eq!(reader.join().unwrap(), b"through the pipe");
        assert!(std::fs::symlink_metadata(&fifo)
            .unwrap()
            .file_type()
            .is_fifo());
    }
}
