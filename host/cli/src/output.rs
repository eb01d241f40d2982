//! Where content goes: a file replaced atomically, or standard output; in both cases
//! only once the verdict allows it.

use crate::CliError;
use std::io::{self, Seek, Write};
use std::path::{Path, PathBuf};

/// Content being produced; invisible to readers of the destination until [`Pending::commit`].
pub struct Pending {
    file: tempfile::NamedTempFile,
    dest: Option<PathBuf>,
}

impl Pending {
    /// For `--out FILE`: a temporary file beside it, renamed over it on commit. For
    /// standard output: an anonymous temporary file copied out on commit (so unverified
    /// content never reaches a pipe).
    pub fn new(out: Option<&Path>) -> Result<Self, CliError> {
        let file = match out {
            Some(path) => {
                let dir = path
                    .parent()
                    .filter(|d| !d.as_os_str().is_empty())
                    .unwrap_or(Path::new("."));
                tempfile::Builder::new()
                    .prefix(".etee-")
                    .tempfile_in(dir)
                    .map_err(|source| CliError::File {
                        path: path.display().to_string(),
                        source,
                    })?
            }
            None => tempfile::NamedTempFile::new()?,
        };
        Ok(Self {
            file,
            dest: out.map(Path::to_path_buf),
        })
    }

    pub fn writer(&mut self) -> io::BufWriter<&mut std::fs::File> {
        io::BufWriter::with_capacity(256 * 1024, self.file.as_file_mut())
    }

    /// Makes the content visible: durable rename for a file, copy for standard output.
    pub fn commit(mut self) -> Result<(), CliError> {
        match self.dest.take() {
            Some(dest) => {
                self.file.as_file().sync_all()?;
                self.file.persist(&dest).map_err(|e| CliError::File {
                    path: dest.display().to_string(),
                    source: e.error,
                })?;
                if let Some(dir) = dest.parent().filter(|d| !d.as_os_str().is_empty()) {
                    // Make the rename itself durable.
                    if let Ok(d) = std::fs::File::open(dir) {
                        let _ = d.sync_all();
                    }
                }
            }
            None => {
                let f = self.file.as_file_mut();
                f.rewind()?;
                let stdout = io::stdout();
                let mut lock = stdout.lock();
                io::copy(f, &mut lock)?;
                lock.flush()?;
            }
        }
        Ok(())
    }
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
            let stdout = io::stdout();
            let mut w = io::BufWriter::with_capacity(256 * 1024, stdout.lock());
            produce(&mut w)?;
            w.flush()?;
            Ok(())
        }
    }
}
