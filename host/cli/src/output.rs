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

    pub fn writer(&mut self) -> io::BufWriter<&mut etee_appliance::spool::SpoolWriter> {
        io::BufWriter::with_capacity(256 * 1024, &mut self.spool)
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
        let dir = dest
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let mut file = tempfile::Builder::new()
            .prefix(".etee-")
            .tempfile_in(dir)
            .map_err(failed)?;
        let mut w = io::BufWriter::with_capacity(256 * 1024, file.as_file_mut());
        io::copy(&mut content, &mut w).map_err(failed)?;
        w.flush().map_err(failed)?;
        drop(w);
        file.as_file().sync_all().map_err(failed)?;
        file.persist(&dest).map_err(|e| failed(e.error))?;
        // Make the rename itself durable.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
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
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut builder = tempfile::Builder::new();
    builder.prefix(".etee-");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = if secret { 0o600 } else { 0o644 };
        builder.permissions(std::fs::Permissions::from_mode(mode));
    }
    let mut file = builder.tempfile_in(dir).map_err(failed)?;
    file.write_all(bytes).map_err(failed)?;
    file.as_file().sync_all().map_err(failed)?;
    file.persist(path).map_err(|e| failed(e.error))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
