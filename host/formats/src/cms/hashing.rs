//! Digests that move to a worker thread when content is large.
//!
//! A large seal or unseal is bound by AES plus two SHA-256 passes (inner and outer
//! content). Each pass is independent of the other and of the cipher, so each runs on a
//! thread of its own once the content passes [`INLINE_LIMIT`]: the caller's thread then
//! only parses, frames and encrypts. Small messages never start a thread.

use super::algorithms::{Digest, MultiHasher};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::thread::JoinHandle;
use zeroize::Zeroizing;

/// A block on its way to the worker: wiped when freed, as it may be plaintext (the inner
/// content of a seal or an unseal).
type Block = Zeroizing<Vec<u8>>;

/// Bytes hashed on the caller's thread before the work moves to a worker.
pub const INLINE_LIMIT: usize = 1 << 20;
/// Size of the blocks handed to the worker.
const BLOCK: usize = 256 * 1024;
/// Blocks in flight per worker: bounds memory at `(DEPTH + 2) × BLOCK`.
const DEPTH: usize = 4;

/// A [`MultiHasher`] that hands its work to a thread past [`INLINE_LIMIT`] bytes.
pub struct OffloadHasher {
    state: State,
    seen: usize,
}

enum State {
    Inline(MultiHasher),
    Worker {
        pending: Block,
        tx: SyncSender<Block>,
        worker: JoinHandle<Vec<(Digest, Vec<u8>)>>,
    },
    Done,
}

impl OffloadHasher {
    pub fn new(algs: &[Digest]) -> Self {
        Self {
            state: State::Inline(MultiHasher::new(algs)),
            seen: 0,
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        self.seen = self.seen.saturating_add(data.len());
        match &mut self.state {
            State::Inline(h) => {
                h.update(data);
                if self.seen > INLINE_LIMIT {
                    self.start_worker();
                }
            }
            State::Worker { pending, tx, .. } => {
                let mut data = data;
                while !data.is_empty() {
                    let take = (BLOCK - pending.len()).min(data.len());
                    pending.extend_from_slice(&data[..take]);
                    data = &data[take..];
                    if pending.len() == BLOCK {
                        let full =
                            std::mem::replace(pending, Zeroizing::new(Vec::with_capacity(BLOCK)));
                        if tx.send(full).is_err() {
                            // The worker is gone (it cannot fail on its own); finish() reports it.
                            return;
                        }
                    }
                }
            }
            State::Done => {}
        }
    }

    fn start_worker(&mut self) {
        let State::Inline(mut hasher) = std::mem::replace(&mut self.state, State::Done) else {
            return;
        };
        let (tx, rx) = sync_channel::<Block>(DEPTH);
        let spawned = std::thread::Builder::new()
            .name("etee-digest".into())
            .spawn(move || {
                for block in rx {
                    hasher.update(&block);
                }
                hasher.finish()
            });
        self.state = match spawned {
            Ok(worker) => State::Worker {
                pending: Zeroizing::new(Vec::with_capacity(BLOCK)),
                tx,
                worker,
            },
            // No thread to be had: stay inline. The hasher moved into the failed closure,
            // so this cannot happen silently; treat it as a broken digest.
            Err(_) => State::Done,
        };
    }

    /// The digests of everything passed to [`Self::update`]; empty if a worker failed,
    /// which makes every signature check fail rather than pass.
    pub fn finish(self) -> Vec<(Digest, Vec<u8>)> {
        match self.state {
            State::Inline(h) => h.finish(),
            State::Worker {
                pending,
                tx,
                worker,
            } => {
                let sent = pending.is_empty() || tx.send(pending).is_ok();
                drop(tx);
                match worker.join() {
                    Ok(d) if sent => d,
                    _ => Vec::new(),
                }
            }
            State::Done => Vec::new(),
        }
    }

    /// The SHA-256 digest, for the sealer (which asks for SHA-256 only).
    pub fn finish_sha256(self) -> Option<[u8; 32]> {
        self.finish()
            .into_iter()
            .find(|(d, _)| *d == Digest::Sha256)
            .and_then(|(_, v)| v.try_into().ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_and_inline_agree() {
        let data: Vec<u8> = (0..(3 * INLINE_LIMIT + 12345))
            .map(|i| (i * 7) as u8)
            .collect();
        let mut h = OffloadHasher::new(&[Digest::Sha256, Digest::Sha1]);
        for chunk in data.chunks(70_001) {
            h.update(chunk);
        }
        let got = h.finish();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].1, Digest::Sha256.digest(&data));
        assert_eq!(got[1].1, Digest::Sha1.digest(&data));
        let mut small = OffloadHasher::new(&[Digest::Sha256]);
        small.update(b"abc");
        assert_eq!(
            small.finish_sha256().unwrap().to_vec(),
            Digest::Sha256.digest(b"abc")
        );
    }
}
