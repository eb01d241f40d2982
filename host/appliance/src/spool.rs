//! Spooling bodies, so that memory stays bounded whatever the message size.
//!
//! Unsealed content is known good only once the whole message has been read (the
//! signatures come last), so it waits in a spool until the verdict allows releasing it;
//! a sealed message waits too, so that a failure at the end (a refused signature) becomes
//! an error status instead of a truncated answer.
//!
//! A spool holds its first [`MEMORY_LIMIT`] bytes in memory (wiped when dropped): most
//! messages are small, and a file for each costs more than the rest of the request's
//! service work. Past that it spills to a file. The spool file is anonymous (unlinked as
//! soon as it is created: nothing is left behind by a crash) and encrypted with
//! AES-128-CTR under a random key that lives only in this process, so plaintext never
//! reaches the disk. CTR is enough here: the file is read back only by the process that
//! wrote it, and never across a trust boundary.

use openssl::symm::{Cipher, Crypter, Mode};
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, Write};
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

const BUFFER: usize = 256 * 1024;

/// Bytes a spool keeps in memory before it spills to an encrypted file. With the
/// appliance's default `max_connections` (256) and two spools a request, at most 32 MiB.
pub const MEMORY_LIMIT: usize = 64 * 1024;

fn crypter(key: &[u8], iv: &[u8], mode: Mode) -> io::Result<Crypter> {
    Crypter::new(Cipher::aes_128_ctr(), mode, key, Some(iv)).map_err(io::Error::other)
}

/// Whether spool files can be made in `dir` (one is created and dropped).
pub fn check_dir(dir: &Path) -> io::Result<()> {
    tempfile::tempfile_in(dir).map(drop)
}

/// The encrypted file of a spool that outgrew [`MEMORY_LIMIT`].
struct SpillFile {
    out: BufWriter<File>,
    crypter: Crypter,
    key: Zeroizing<[u8; 16]>,
    iv: [u8; 16],
    buf: Vec<u8>,
}

impl SpillFile {
    /// An anonymous file in `dir` with a fresh key.
    fn new(dir: &Path) -> io::Result<Self> {
        let file = tempfile::tempfile_in(dir)?;
        let mut key = Zeroizing::new([0u8; 16]);
        let mut iv = [0u8; 16];
        openssl::rand::rand_bytes(key.as_mut()).map_err(io::Error::other)?;
        openssl::rand::rand_bytes(&mut iv).map_err(io::Error::other)?;
        Ok(Self {
            out: BufWriter::with_capacity(BUFFER, file),
            crypter: crypter(key.as_ref(), &iv, Mode::Encrypt)?,
            key,
            iv,
            buf: Vec::new(),
        })
    }

    fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        self.buf.resize(data.len() + 16, 0);
        let n = self
            .crypter
            .update(data, &mut self.buf)
            .map_err(io::Error::other)?;
        self.out.write_all(&self.buf[..n])
    }
}

/// A spool being written.
pub struct SpoolWriter {
    dir: PathBuf,
    /// The bytes while they fit in [`MEMORY_LIMIT`].
    memory: Zeroizing<Vec<u8>>,
    file: Option<SpillFile>,
    len: u64,
}

impl std::fmt::Debug for SpoolWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpoolWriter")
            .field("len", &self.len)
            .field("on_disk", &self.file.is_some())
            .finish()
    }
}

impl SpoolWriter {
    /// A spool that spills to an anonymous file in `dir` if it outgrows memory (the
    /// directory is used only then: a failure to create the file surfaces as a write
    /// error; [`check_dir`] finds an unusable directory beforehand).
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
            memory: Zeroizing::new(Vec::new()),
            file: None,
            len: 0,
        }
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Ends writing; the spool can now be read from its start.
    pub fn finish(mut self) -> io::Result<SpoolReader> {
        let Some(spill) = self.file.take() else {
            let memory = std::mem::take(&mut *self.memory);
            return Ok(SpoolReader {
                source: Source::Memory {
                    bytes: Zeroizing::new(memory),
                    at: 0,
                },
                remaining: self.len,
                len: self.len,
            });
        };
        let SpillFile {
            mut out, key, iv, ..
        } = spill;
        out.flush()?;
        let mut file = out.into_inner().map_err(|e| e.into_error())?;
        file.rewind()?;
        Ok(SpoolReader {
            source: Source::File {
                input: BufReader::with_capacity(BUFFER, file),
                crypter: crypter(key.as_ref(), &iv, Mode::Decrypt)?,
                buf: Vec::new(),
                clear: Vec::new(),
            },
            remaining: self.len,
            len: self.len,
        })
    }
}

impl Write for SpoolWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        match &mut self.file {
            Some(file) => file.write_all(data)?,
            None if self.memory.len() + data.len() <= MEMORY_LIMIT => {
                let need = self.memory.len() + data.len();
                if need > self.memory.capacity() {
                    // Grown by hand: a reallocation would leave the old buffer's bytes in
                    // freed memory; replaced, the old buffer is wiped as it drops.
                    let capacity = need.next_power_of_two().min(MEMORY_LIMIT);
                    let mut grown = Zeroizing::new(Vec::with_capacity(capacity));
                    grown.extend_from_slice(&self.memory);
                    self.memory = grown;
                }
                self.memory.extend_from_slice(data)
            }
            None => {
                // Spill: what memory holds goes first, then the file takes everything.
                let mut file = SpillFile::new(&self.dir)?;
                file.write_all(&self.memory)?;
                file.write_all(data)?;
                // Wiped as it drops.
                self.memory = Zeroizing::new(Vec::new());
                self.file = Some(file);
            }
        }
        self.len += data.len() as u64;
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.file {
            Some(file) => file.out.flush(),
            None => Ok(()),
        }
    }
}

enum Source {
    Memory {
        bytes: Zeroizing<Vec<u8>>,
        at: usize,
    },
    File {
        input: BufReader<File>,
        crypter: Crypter,
        buf: Vec<u8>,
        /// Decrypted bytes on their way out (wiped after each read).
        clear: Vec<u8>,
    },
}

/// A finished spool, read back in clear.
pub struct SpoolReader {
    source: Source,
    remaining: u64,
    len: u64,
}

impl std::fmt::Debug for SpoolReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpoolReader")
            .field("len", &self.len)
            .field("remaining", &self.remaining)
            .field("on_disk", &matches!(self.source, Source::File { .. }))
            .finish()
    }
}

impl SpoolReader {
    /// Total bytes in the spool.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The unread bytes, when the spool never left memory (reading them then costs no
    /// I/O); otherwise the spool back.
    pub fn into_memory(self) -> Result<Vec<u8>, Self> {
        match self.source {
            Source::Memory { mut bytes, at: 0 } => Ok(std::mem::take(&mut *bytes)),
            Source::Memory { bytes, at } => Ok(bytes[at..].to_vec()),
            source => Err(Self { source, ..self }),
        }
    }
}

impl Read for SpoolReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 || out.is_empty() {
            return Ok(0);
        }
        let want = out.len().min(BUFFER).min(self.remaining as usize);
        let m = match &mut self.source {
            Source::Memory { bytes, at } => {
                out[..want].copy_from_slice(&bytes[*at..*at + want]);
                *at += want;
                want
            }
            Source::File {
                input,
                crypter,
                buf,
                clear,
            } => {
                buf.resize(want, 0);
                let n = input.read(&mut buf[..want])?;
                if n == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the spool file is shorter than what was written",
                    ));
                }
                // OpenSSL wants room for a block more than the input, even for CTR.
                clear.resize(n + 16, 0);
                let m = crypter.update(&buf[..n], clear).map_err(io::Error::other)?;
                out[..m].copy_from_slice(&clear[..m]);
                clear.iter_mut().for_each(|b| *b = 0);
                m
            }
        };
        self.remaining -= m as u64;
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_goes_in_comes_out_and_the_disk_never_sees_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = SpoolWriter::new(dir.path());
        let data: Vec<u8> = (0..1_000_003u32).map(|i| (i % 251) as u8).collect();
        for chunk in data.chunks(7919) {
            w.write_all(chunk).unwrap();
        }
        assert_eq!(w.len(), data.len() as u64);
        // Anonymous: nothing in the directory.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        // Encrypted: the file's bytes are not the data.
        let raw = {
            w.flush().unwrap();
            let f = w.file.as_mut().expect("spilled to a file").out.get_mut();
            let mut copy = f.try_clone().unwrap();
            copy.rewind().unwrap();
            let mut raw = Vec::new();
            copy.read_to_end(&mut raw).unwrap();
            raw
        };
        assert_eq!(raw.len(), data.len());
        assert_ne!(&raw[..4096], &data[..4096]);
        let mut r = w.finish().unwrap();
        let mut back = Vec::new();
        let mut small = [0u8; 1000];
        loop {
            let n = r.read(&mut small).unwrap();
            if n == 0 {
                break;
            }
            back.extend_from_slice(&small[..n]);
        }
        assert_eq!(back, data);
    }

    #[test]
    fn a_small_spool_stays_in_memory_and_a_larger_one_spills_intact() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..MEMORY_LIMIT as u32 + 5000)
            .map(|i| (i % 253) as u8)
            .collect();
        // Exactly the limit: memory only, handed out whole without I/O.
        let mut w = SpoolWriter::new(dir.path());
        w.write_all(&data[..MEMORY_LIMIT]).unwrap();
        assert!(w.file.is_none());
        let r = w.finish().unwrap();
        assert_eq!(r.len(), MEMORY_LIMIT as u64);
        assert_eq!(r.into_memory().unwrap(), &data[..MEMORY_LIMIT]);
        // Partly read, then taken: the rest.
        let mut w = SpoolWriter::new(dir.path());
        w.write_all(&data[..100]).unwrap();
        let mut r = w.finish().unwrap();
        let mut first = [0u8; 30];
        r.read_exact(&mut first).unwrap();
        assert_eq!(r.into_memory().unwrap(), &data[30..100]);
        // One byte past the limit, in odd pieces: spilled, and read back the same.
        let mut w = SpoolWriter::new(dir.path());
        for chunk in data[..MEMORY_LIMIT + 1].chunks(3001) {
            w.write_all(chunk).unwrap();
        }
        assert!(w.file.is_some() && w.memory.is_empty());
        w.write_all(&data[MEMORY_LIMIT + 1..]).unwrap();
        let r = w.finish().unwrap();
        let mut r = r
            .into_memory()
            .expect_err("a spilled spool is not in memory");
        let mut back = Vec::new();
        r.read_to_end(&mut back).unwrap();
        assert_eq!(back, data);
    }

    #[test]
    fn an_unusable_spool_directory_is_found_before_any_body() {
        let dir = tempfile::tempdir().unwrap();
        assert!(check_dir(dir.path()).is_ok());
        assert!(check_dir(&dir.path().join("missing")).is_err());
        // A directory we cannot write (unless root, who can).
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let ro = dir.path().join("ro");
            std::fs::create_dir(&ro).unwrap();
            std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o500)).unwrap();
            let root = nix::unistd::Uid::effective().is_root();
            assert_eq!(check_dir(&ro).is_err(), !root);
        }
    }

    #[test]
    fn an_empty_spool_reads_as_empty() {
        let dir = tempfile::tempdir().unwrap();
        let w = SpoolWriter::new(dir.path());
        assert!(w.is_empty());
        let mut r = w.finish().unwrap();
        let mut back = Vec::new();
        r.read_to_end(&mut back).unwrap();
        assert!(back.is_empty());
    }
}
