//! Spooling large bodies to disk, so that memory stays bounded whatever the message size.
//!
//! Unsealed content is known good only once the whole message has been read (the
//! signatures come last), so it waits in a spool until the verdict allows releasing it;
//! a sealed message waits too, so that a failure at the end (a refused signature) becomes
//! an error status instead of a truncated answer.
//!
//! The spool file is anonymous (unlinked as soon as it is created: nothing is left behind
//! by a crash) and encrypted with AES-128-CTR under a random key that lives only in this
//! process, so plaintext never reaches the disk. CTR is enough here: the file is read back
//! only by the process that wrote it, and never across a trust boundary.

use openssl::symm::{Cipher, Crypter, Mode};
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, Write};
use std::path::Path;
use zeroize::Zeroizing;

const BUFFER: usize = 256 * 1024;

fn crypter(key: &[u8], iv: &[u8], mode: Mode) -> io::Result<Crypter> {
    Crypter::new(Cipher::aes_128_ctr(), mode, key, Some(iv)).map_err(io::Error::other)
}

/// A spool being written.
pub struct SpoolWriter {
    out: BufWriter<File>,
    crypter: Crypter,
    key: Zeroizing<[u8; 16]>,
    iv: [u8; 16],
    buf: Vec<u8>,
    len: u64,
}

impl std::fmt::Debug for SpoolWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpoolWriter")
            .field("len", &self.len)
            .finish()
    }
}

impl SpoolWriter {
    /// An anonymous file in `dir` with a fresh key.
    pub fn new(dir: &Path) -> io::Result<Self> {
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
            len: 0,
        })
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
        self.out.flush()?;
        let mut file = self.out.into_inner().map_err(|e| e.into_error())?;
        file.rewind()?;
        Ok(SpoolReader {
            input: BufReader::with_capacity(BUFFER, file),
            crypter: crypter(self.key.as_ref(), &self.iv, Mode::Decrypt)?,
            buf: Vec::new(),
            clear: Vec::new(),
            remaining: self.len,
            len: self.len,
        })
    }
}

impl Write for SpoolWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.resize(data.len() + 16, 0);
        let n = self
            .crypter
            .update(data, &mut self.buf)
            .map_err(io::Error::other)?;
        self.out.write_all(&self.buf[..n])?;
        self.len += data.len() as u64;
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// A finished spool, read back in clear.
pub struct SpoolReader {
    input: BufReader<File>,
    crypter: Crypter,
    buf: Vec<u8>,
    /// Decrypted bytes on their way out (wiped after each read).
    clear: Vec<u8>,
    remaining: u64,
    len: u64,
}

impl std::fmt::Debug for SpoolReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpoolReader")
            .field("len", &self.len)
            .field("remaining", &self.remaining)
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
}

impl Read for SpoolReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 || out.is_empty() {
            return Ok(0);
        }
        let want = out.len().min(BUFFER).min(self.remaining as usize);
        self.buf.resize(want, 0);
        let n = self.input.read(&mut self.buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the spool file is shorter than what was written",
            ));
        }
        // OpenSSL wants room for a block more than the input, even for CTR.
        self.clear.resize(n + 16, 0);
        let m = self
            .crypter
            .update(&self.buf[..n], &mut self.clear)
            .map_err(io::Error::other)?;
        out[..m].copy_from_slice(&self.clear[..m]);
        self.clear.iter_mut().for_each(|b| *b = 0);
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
        let mut w = SpoolWriter::new(dir.path()).unwrap();
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
            let f = w.out.get_mut();
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
    fn an_empty_spool_reads_as_empty() {
        let dir = tempfile::tempdir().unwrap();
        let w = SpoolWriter::new(dir.path()).unwrap();
        assert!(w.is_empty());
        let mut r = w.finish().unwrap();
        let mut back = Vec::new();
        r.read_to_end(&mut back).unwrap();
        assert!(back.is_empty());
    }
}
