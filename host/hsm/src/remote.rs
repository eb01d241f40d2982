//! The custody core in a separate process: `etee custody serve` holds the PIN and the
//! PKCS#11 sessions and runs the core; `etee` sends it the core's own frames over a Unix
//! socket.
//!
//! - [`serve`]: the server. It opens the token and the audit file exactly as
//!   [`CustodyKeys::open`] does, then serves connections, one thread each. On a connection,
//!   each request is `u32 big-endian length | request frame` and each response `u32
//!   big-endian length | response frame` ([`etee_custody::wire`]); a connection may carry
//!   any number of requests. Frames of different connections go through the one core
//!   concurrently as in-process callers do ([`CustodyKeys::request`]): the core is held
//!   only to admit and to conclude, the HSM calls and the audit syncs overlap.
//!   On SIGTERM or SIGINT it stops accepting, lets every request under way finish and be
//!   answered, locks the core (recorded), removes the socket file and returns.
//! - [`RemoteCustodyKeys`]: the client, a [`PrivateKeyOps`] sending those frames, with the
//!   same error mapping as [`CustodyKeys`]. It keeps a few connections so that concurrent
//!   callers do not wait for each other. An idle connection found broken (the server was
//!   restarted) is replaced and the request sent again, once; each attempt that reached a
//!   core is on its audit chain.
//!
//! Who may connect: the socket file is created with mode 0600 (bound under a temporary
//! name, restricted, then renamed into place, so it is never reachable with wider
//! permissions), so only the server's user (and root) can connect; put it in a directory
//! of mode 0700 as well. When `[custody] allowed_uids` names other users (the appliance's,
//! say), the mode is 0660: put those users in the server's group and the directory at
//! 0750. The kernel's peer credentials (`SO_PEERCRED`) are then checked against the
//! server's own uid and `[custody] allowed_uids`, since a group member or a connected
//! descriptor handed on could be another user.
//!
//! Certificates: the client reads the certificates (public objects: `CKA_PRIVATE` false)
//! from the token in a read-only session **without logging in**, so it needs the module
//! and the token selector of the `[hsm]` table but never the PIN. Which ETK keys exist is
//! taken from the certificates (every certificate with a CKA_ID other than
//! `authentication` and the `ca-…` ids of CA certificates); a certificate without a key
//! behind it is refused by the core like any unknown key.

use crate::config::{CustodyConfig, HsmConfig};
use crate::custody::{
    client_id, decrypt_result, describe_request, describe_result, sign_result, unwrap_request,
    unwrap_result, wrap_request, wrap_result, CustodyKeys,
};
use crate::error::{CkContext, HsmError, Result};
use crate::keys::{self, AUTHENTICATION_ID};
use crate::token::{find_token, Module};
use cryptoki::object::{Attribute, ObjectClass};
use etee_custody::config::{MAX_REQUEST_FRAME, MAX_RESPONSE_FRAME};
use etee_custody::wire::{self, Blob};
use etee_custody::{ClientId, Error as CoreError, KeyFacts, Request, Response};
use etee_formats::cert::Certificate;
use etee_formats::keys::{
    DecryptionKey, KeyError, KeyId, KeyRing, PrivateKeyOps, SignerRef, SigningKey,
};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

/// Writes `u32 BE length | frame`.
pub fn write_frame(stream: &mut impl Write, frame: &[u8]) -> io::Result<()> {
    let len = u32::try_from(frame.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame too long"))?;
    let mut message = Zeroizing::new(Vec::with_capacity(4 + frame.len()));
    message.extend_from_slice(&len.to_be_bytes());
    message.extend_from_slice(frame);
    stream.write_all(&message)?;
    stream.flush()
}

/// Reads `u32 BE length | frame` of at most `max` bytes. `Ok(None)`: the peer closed the
/// connection between frames.
pub fn read_frame(stream: &mut impl Read, max: usize) -> io::Result<Option<Zeroizing<Vec<u8>>>> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < len.len() {
        match stream.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes (at most {max})"),
        ));
    }
    let mut frame = Zeroizing::new(vec![0u8; len]);
    stream.read_exact(&mut frame)?;
    Ok(Some(frame))
}

/// Removes a socket file left behind by a server that is gone; refuses to touch anything
/// else (another file, or a socket a live server answers on).
fn clear_stale_socket(path: &Path) -> Result<()> {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        return Err(HsmError::Config(format!(
            "{}: exists and is not a socket",
            path.display()
        )));
    }
    if UnixStream::connect(path).is_ok() {
        return Err(HsmError::Config(format!(
            "{}: a custody server is already listening there",
            path.display()
        )));
    }
    std::fs::remove_file(path)
        .map_err(|e| HsmError::Config(format!("removing stale {}: {e}", path.display())))
}

/// The socket's mode: the server's user only, or also its group when other uids are
/// allowed (`[custody] allowed_uids`: another user, such as the appliance's, in the
/// server's group). The peer uid check applies either way.
fn socket_mode(allowed_uids: &[u32]) -> u32 {
    if allowed_uids.is_empty() {
        0o600
    } else {
        0o660
    }
}

/// Binds `path` with `mode` (0600 or 0660), replacing a stale socket file.
fn bind_private(path: &Path, mode: u32) -> Result<UnixListener> {
    clear_stale_socket(path)?;
    bind_restricted(path, mode)
        .map_err(|e| HsmError::Config(format!("creating socket {}: {e}", path.display())))
}

/// Binds a Unix socket at `path` (which must not exist) that is never reachable with a
/// wider mode than `mode`, whatever the umask: it is bound inside a fresh directory only
/// its owner may enter (0700, beside `path`), given `mode`, then renamed into place.
pub fn bind_restricted(path: &Path, mode: u32) -> io::Result<UnixListener> {
    use std::os::unix::fs::DirBuilderExt;
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "the socket path has no file name",
        )
    })?;
    let private = path.with_file_name(format!(
        ".{}.{}.d",
        name.to_string_lossy(),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&private);
    std::fs::DirBuilder::new().mode(0o700).create(&private)?;
    let tmp = private.join("socket");
    let placed = UnixListener::bind(&tmp).and_then(|listener| {
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
        std::fs::rename(&tmp, path)?;
        Ok(listener)
    });
    let _ = std::fs::remove_dir_all(&private);
    placed
}

/// A server, ready to accept: the core open and unlocked, the socket bound.
pub struct Server {
    keys: CustodyKeys,
    listener: UnixListener,
    socket: PathBuf,
    /// Who may connect: the server's own uid and `[custody] allowed_uids`.
    allowed_uids: Vec<u32>,
    /// Connections served at once; see [`Server::with_connection_limit`].
    max_connections: usize,
    timeouts: PeerTimeouts,
    stop: StopHandle,
    /// The other end of [`StopHandle`]'s wake-up pair, watched beside the listener.
    woken: UnixStream,
}

/// The default of [`Server::with_connection_limit`]: far more than its clients open (one
/// connection per caller working at the same time), and a bound on the threads a
/// misbehaving client of an allowed uid can make the server start.
pub const MAX_CONNECTIONS: usize = 1024;

/// How long the server waits for a peer: for the next byte of a request (a connection
/// silent that long is closed; clients keep a few idle connections and open a new one when
/// they find an idle one closed) and for an answer to be taken (a peer that does not read
/// its answers is dropped, so that it can hold neither a thread nor a stop).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerTimeouts {
    pub idle: Duration,
    pub write: Duration,
}

impl Default for PeerTimeouts {
    fn default() -> Self {
        Self {
            idle: Duration::from_secs(60),
            write: Duration::from_secs(10),
        }
    }
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("keys", &self.keys)
            .field("socket", &self.socket)
            .finish()
    }
}

/// Stops a running [`Server`] from another thread (or a signal handler thread).
#[derive(Clone, Debug)]
pub struct StopHandle {
    stop: Arc<AtomicBool>,
    /// Written to wake the accept loop; a socket pair, so that stopping does not depend on
    /// the socket file (an operator may have removed or replaced it).
    wake: Arc<UnixStream>,
}

impl StopHandle {
    /// Asks the server to stop: no new connections, requests under way are answered.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        // Non-blocking: a full pair already holds a wake-up.
        let _ = (&*self.wake).write(&[1]);
    }
}

/// A connection being served, as the accept loop sees it.
struct Served {
    stream: Arc<UnixStream>,
    /// When its thread began waiting for the peer's next request (milliseconds since the
    /// server started, plus one); 0 while it works on a request.
    waiting_since: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<()>,
}

impl Server {
    /// Opens the token (logging in with the PIN file) and the audit file as
    /// [`CustodyKeys::open`], then binds `socket` (mode 0600, 0660 when `allowed_uids` names
    /// other users; a stale socket file of a dead
    /// server is replaced).
    pub fn bind(hsm: &HsmConfig, custody: &CustodyConfig, socket: &Path) -> Result<Self> {
        Self::with_keys(CustodyKeys::open(hsm, custody)?, custody, socket)
    }

    /// Like [`Self::bind`] with a core opened by the caller (its own policy, say).
    pub fn with_keys(keys: CustodyKeys, custody: &CustodyConfig, socket: &Path) -> Result<Self> {
        let listener = bind_private(socket, socket_mode(&custody.allowed_uids))?;
        let (wake, woken) = UnixStream::pair()
            .and_then(|(wake, woken)| {
                wake.set_nonblocking(true)?;
                listener.set_nonblocking(true)?;
                Ok((wake, woken))
            })
            .map_err(|e| HsmError::Config(format!("preparing socket {}: {e}", socket.display())))?;
        let mut allowed_uids = custody.allowed_uids.clone();
        allowed_uids.push(nix::unistd::getuid().as_raw());
        Ok(Self {
            keys,
            listener,
            socket: socket.to_path_buf(),
            allowed_uids,
            max_connections: MAX_CONNECTIONS,
            timeouts: PeerTimeouts::default(),
            stop: StopHandle {
                stop: Arc::new(AtomicBool::new(false)),
                wake: Arc::new(wake),
            },
            woken,
        })
    }

    /// Serves at most `n` connections at once (at least 1; default [`MAX_CONNECTIONS`]).
    /// When all are taken, a new connection takes the place of the one that has waited
    /// longest for its peer's next request (its peer finds it closed; clients then open
    /// another); when every one is working on a request, the new connection is closed.
    pub fn with_connection_limit(mut self, n: usize) -> Self {
        self.max_connections = n.max(1);
        self
    }

    /// Other [`PeerTimeouts`] than the default (tests).
    pub fn with_peer_timeouts(mut self, timeouts: PeerTimeouts) -> Self {
        self.timeouts = timeouts;
        self
    }

    /// The core behind the socket.
    pub fn keys(&self) -> &CustodyKeys {
        &self.keys
    }

    /// A handle that stops [`Self::run`].
    pub fn stop_handle(&self) -> StopHandle {
        self.stop.clone()
    }

    /// Serves connections, each on its own thread, until stopped through a
    /// [`StopHandle`]; then waits for the requests under way, locks the core (recorded
    /// once the last user of the core is gone) and removes the socket file.
    pub fn run(self) -> Result<()> {
        let started = Instant::now();
        let mut open: Vec<Served> = Vec::new();
        let mut leaving: Vec<Served> = Vec::new();
        loop {
            // A connection, a stop, or a second gone by (finished connections are reaped
            // so that their descriptors do not wait for the next connection).
            let mut watched = [
                PollFd::new(self.listener.as_fd(), PollFlags::POLLIN),
                PollFd::new(self.woken.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut watched, PollTimeout::from(1000u16)) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(HsmError::Invalid(format!("waiting for connections: {e}"))),
            }
            if self.stop.stop.load(Ordering::SeqCst) {
                break;
            }
            open.retain(|c| !c.thread.is_finished());
            leaving.retain(|c| !c.thread.is_finished());
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) =>
                {
                    continue
                }
                Err(e) if accept_error_is_transient(&e) => {
                    // Out of descriptors or memory, or a peer gone before it was accepted:
                    // the connections under way go on; try again shortly.
                    ACCEPT_FAILED.say(|| format!("accepting a connection: {e}"));
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
                Err(e) => return Err(HsmError::Invalid(format!("accepting: {e}"))),
            };
            // The socket's mode is the first gate; the peer's uid, from the kernel, is
            // the second (a descriptor can be passed on to another user's process).
            let uid = match peer_uid(&stream) {
                Ok(uid) if self.allowed_uids.contains(&uid) => uid,
                Ok(uid) => {
                    REFUSED_PEER.say(|| {
                        format!(
                            "refused a connection from uid {uid} (not in [custody] allowed_uids)"
                        )
                    });
                    continue;
                }
                Err(e) => {
                    REFUSED_PEER.say(|| {
                        format!("refused a connection whose peer cannot be identified: {e}")
                    });
                    continue;
                }
            };
            if open.len() >= self.max_connections {
                // The place of the connection that has waited longest for its peer.
                // Taken (marked EVICTED) only if it is still waiting with the same mark:
                // a connection whose request just came in is left to answer it.
                let longest = open
                    .iter()
                    .enumerate()
                    .filter_map(|(i, c)| match c.waiting_since.load(Ordering::SeqCst) {
                        0 | EVICTED => None,
                        since => Some((since, i)),
                    })
                    .min()
                    .filter(|&(since, i)| {
                        open[i]
                            .waiting_since
                            .compare_exchange(since, EVICTED, Ordering::SeqCst, Ordering::SeqCst)
                            .is_ok()
                    });
                let Some((_, i)) = longest else {
                    AT_LIMIT.say(|| {
                        format!(
                            "refused a connection: all {} connections are working on a request (the limit)",
                            open.len()
                        )
                    });
                    continue;
                };
                let evicted = open.swap_remove(i);
                let _ = evicted.stream.shutdown(Shutdown::Both);
                leaving.push(evicted);
                AT_LIMIT.say(|| {
                    format!(
                        "{} connections open (the limit): the one idle longest was closed for a new one",
                        open.len() + 1
                    )
                });
            }
            if let Err(e) = stream.set_nonblocking(false) {
                CLOSED.say(|| format!("a connection of uid {uid} could not be served: {e}"));
                continue;
            }
            let (stream, timeouts) = (Arc::new(stream), self.timeouts);
            let waiting_since = Arc::new(AtomicU64::new(0));
            let (keys, conn, waiting) = (self.keys.clone(), stream.clone(), waiting_since.clone());
            let thread = std::thread::Builder::new()
                .name("etee-custody-conn".into())
                .spawn(move || {
                    let peer = Peer {
                        uid,
                        waiting_since: &waiting,
                        started,
                    };
                    if let Err(e) = serve_connection(&keys, &conn, &peer, timeouts) {
                        CLOSED.say(|| {
                            format!("a connection of uid {uid} closed: {}", describe_io(&e))
                        });
                    }
                    // The peer learns at once that the connection is over, whoever still
                    // holds the descriptor.
                    let _ = conn.shutdown(Shutdown::Both);
                });
            match thread {
                Ok(thread) => open.push(Served {
                    stream,
                    waiting_since,
                    thread,
                }),
                // The connection is dropped; the server and its other connections go on.
                Err(e) => AT_LIMIT.say(|| format!("refused a connection: no thread for it: {e}")),
            }
        }
        // Stopping: a connection's thread ends at its next read, after answering the
        // request under way (an answer its peer does not take ends it after the write
        // timeout). A peer still being served after that (requests it had queued, read
        // back slowly) is cut off.
        let connections: Vec<Served> = open.into_iter().chain(leaving).collect();
        for c in &connections {
            let _ = c.stream.shutdown(Shutdown::Read);
        }
        let grace = Instant::now() + self.timeouts.write + Duration::from_secs(1);
        while Instant::now() < grace && connections.iter().any(|c| !c.thread.is_finished()) {
            std::thread::sleep(Duration::from_millis(20));
        }
        for c in connections {
            if !c.thread.is_finished() {
                let _ = c.stream.shutdown(Shutdown::Both);
            }
            let _ = c.thread.join();
        }
        let _ = std::fs::remove_file(&self.socket);
        Ok(())
    }
}

/// How long a client waits for the custody process to take or answer one request before
/// giving up on the connection: far beyond any key use (milliseconds, an audit sync), so
/// that only a stopped or wedged process reaches it, and its callers get an error instead
/// of waiting for ever.
pub const CUSTODY_IO_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// A connection to the custody process with [`CUSTODY_IO_TIMEOUT`] on reads and writes.
fn connect_bounded(socket: &Path, server: &ServerCheck) -> io::Result<UnixStream> {
    let stream = UnixStream::connect(socket)?;
    server.check(&stream)?;
    stream.set_read_timeout(Some(CUSTODY_IO_TIMEOUT))?;
    stream.set_write_timeout(Some(CUSTODY_IO_TIMEOUT))?;
    Ok(stream)
}

/// Which peers a client takes for the custody process: a socket path another user could
/// have bound first (a directory it may write, a server not yet started) must not receive
/// the client's frames or answer them with made-up results.
#[derive(Clone, Debug, PartialEq, Eq)]
enum ServerCheck {
    /// The peer's uid must be this one.
    Uid(u32),
    /// `allowed_uids` names other users and no `server_uid` says which one serves: any.
    Unchecked,
}

impl ServerCheck {
    /// `[custody] server_uid` when set; else, when `allowed_uids` is empty, the client's own
    /// uid (the server serves nobody else then); else unchecked, said once to the operator.
    fn from_config(custody: &CustodyConfig) -> Self {
        let expected = match custody.server_uid {
            Some(uid) => uid,
            None if custody.allowed_uids.is_empty() => nix::unistd::getuid().as_raw(),
            None => {
                crate::warn_operator(
                    "[custody] server_uid is not set: the custody socket's server is not \
                     checked (set it to the custody process's uid)",
                );
                return Self::Unchecked;
            }
        };
        Self::Uid(expected)
    }

    fn check(&self, stream: &UnixStream) -> io::Result<()> {
        let Self::Uid(expected) = *self else {
            return Ok(());
        };
        let uid = peer_uid(stream).map_err(io::Error::from)?;
        if uid == expected {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "served by uid {uid}, not by the custody process's uid {expected} \
                     ([custody] server_uid, or the client's own uid when it is unset and \
                     allowed_uids is empty): nothing was sent"
                ),
            ))
        }
    }
}

/// Accept errors that concern one connection or a passing shortage, not the listener.
fn accept_error_is_transient(e: &io::Error) -> bool {
    use nix::errno::Errno;
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted | io::ErrorKind::WouldBlock
    ) || e.raw_os_error().is_some_and(|code| {
        [
            Errno::EMFILE,
            Errno::ENFILE,
            Errno::ENOBUFS,
            Errno::ENOMEM,
            Errno::EPROTO,
        ]
        .contains(&Errno::from_raw(code))
    })
}

/// The connected peer's user id (SO_PEERCRED).
fn peer_uid(stream: &UnixStream) -> std::result::Result<u32, nix::Error> {
    nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::PeerCredentials)
        .map(|c| c.uid())
}

/// Who is on a connection, for its thread.
struct Peer<'a> {
    uid: u32,
    /// See [`Served::waiting_since`].
    waiting_since: &'a AtomicU64,
    started: Instant,
}

/// [`Served::waiting_since`] of a connection the accept loop has taken for eviction.
const EVICTED: u64 = u64::MAX;

impl Peer<'_> {
    /// Marks the connection as waiting for its peer; returns the mark.
    fn waiting(&self) -> u64 {
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(EVICTED - 2);
        let since = now.saturating_add(1).min(EVICTED - 1);
        self.waiting_since.store(since, Ordering::SeqCst);
        since
    }

    /// Marks the connection as working on a request that came in after `since`; false when
    /// the accept loop took it for eviction meanwhile (the request is then not served: its
    /// answer could not be delivered, and the client sends it again elsewhere).
    fn working(&self, since: u64) -> bool {
        self.waiting_since
            .compare_exchange(since, 0, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    }
}

/// Writes one answer within `timeout` in all: a peer that takes it a few bytes at a
/// time cannot hold the thread longer (the socket's own timeout bounds each write only).
fn write_answer(mut stream: &UnixStream, frame: &[u8], timeout: Duration) -> io::Result<()> {
    let len = u32::try_from(frame.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame too long"))?;
    let mut message = Zeroizing::new(Vec::with_capacity(4 + frame.len()));
    message.extend_from_slice(&len.to_be_bytes());
    message.extend_from_slice(frame);
    let deadline = Instant::now() + timeout;
    let (mut sent, mut shortened) = (0, false);
    while sent < message.len() {
        if sent > 0 {
            // Only after a partial write: the usual answer goes out in one call.
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::ErrorKind::TimedOut.into());
            }
            stream.set_write_timeout(Some(left))?;
            shortened = true;
        }
        match stream.write(&message[sent..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => sent += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    if shortened {
        stream.set_write_timeout(Some(timeout))?;
    }
    Ok(())
}

/// Answers the frames of one connection until the peer closes it (or stalls: see
/// [`PeerTimeouts`]). `Lock` and `Unlock` are refused ([`CoreError::NotServed`]); a frame
/// too long to read is answered `BadFrame`, then the connection is closed.
fn serve_connection(
    keys: &CustodyKeys,
    mut stream: &UnixStream,
    peer: &Peer<'_>,
    timeouts: PeerTimeouts,
) -> io::Result<()> {
    stream.set_read_timeout(Some(timeouts.idle))?;
    stream.set_write_timeout(Some(timeouts.write))?;
    let mut out = Zeroizing::new(vec![0u8; MAX_RESPONSE_FRAME]);
    loop {
        let since = peer.waiting();
        let frame = match read_frame(&mut stream, MAX_REQUEST_FRAME) {
            Ok(Some(frame)) => frame,
            Ok(None) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                // Too long to skip safely: answered, then the connection ends.
                BAD_FRAME.say(|| format!("uid {}: {e}; answered BadFrame", peer.uid));
                let answer = Response::Error(CoreError::BadFrame);
                if let Ok(bytes) = wire::encode_response(&answer, &mut out) {
                    write_answer(stream, bytes, timeouts.write)?;
                }
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        if !peer.working(since) {
            return Ok(());
        }
        let response = match wire::decode_request(&frame) {
            Ok(Request::Lock | Request::Unlock { .. }) => {
                NOT_SERVED.say(|| {
                    format!(
                        "uid {}: refused Lock/Unlock (the custody process locks and unlocks itself)",
                        peer.uid
                    )
                });
                Response::Error(CoreError::NotServed)
            }
            Ok(request) => keys.request(&request),
            Err(e) => {
                let e = CoreError::from(e);
                BAD_FRAME.say(|| format!("uid {}: answered {e:?} to a frame", peer.uid));
                Response::Error(e)
            }
        };
        drop(frame);
        // Every response fits in MAX_RESPONSE_FRAME (pinned by the core's tests).
        let bytes = wire::encode_response(&response, &mut out)
            .map_err(|e| io::Error::other(format!("encoding an answer: {e:?}")))?;
        write_answer(stream, bytes, timeouts.write)?;
    }
}

/// An I/O error as an operator reads it.
fn describe_io(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::UnexpectedEof => "the peer closed it in the middle of a request".into(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            "the peer stalled (no request, or its answer not taken, in time)".into()
        }
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset => {
            "the peer went away before taking its answer".into()
        }
        _ => e.to_string(),
    }
}

/// At most [`LINES_PER_SECOND`] lines a second of one kind on stderr: a peer that connects
/// and closes in a loop must not flood the log (nor, under journald, push out the lines
/// that matter). The lines held back are counted in the next one that is written.
struct Throttled(Mutex<(u64, u32, u64)>);

/// See [`Throttled`].
const LINES_PER_SECOND: u32 = 5;

impl Throttled {
    const fn new() -> Self {
        Self(Mutex::new((0, 0, 0)))
    }

    fn say(&self, line: impl FnOnce() -> String) {
        let second = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut state = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (at, written, held) = &mut *state;
        if *at != second {
            (*at, *written) = (second, 0);
        }
        if *written >= LINES_PER_SECOND {
            *held += 1;
            return;
        }
        *written += 1;
        let held = std::mem::take(held);
        drop(state);
        if held == 0 {
            eprintln!("etee custody: {}", line());
        } else {
            eprintln!("etee custody: {} ({held} more like it held back)", line());
        }
    }
}

static REFUSED_PEER: Throttled = Throttled::new();
static AT_LIMIT: Throttled = Throttled::new();
static ACCEPT_FAILED: Throttled = Throttled::new();
static CLOSED: Throttled = Throttled::new();
static BAD_FRAME: Throttled = Throttled::new();
static NOT_SERVED: Throttled = Throttled::new();

/// `etee custody serve`: [`Server::bind`] then [`Server::run`] until SIGTERM or SIGINT.
pub fn serve(hsm: &HsmConfig, custody: &CustodyConfig, socket: &Path) -> Result<()> {
    let server = Server::bind(hsm, custody, socket)?;
    stop_on_signals(server.stop_handle())?;
    server.run()
}

/// Turns SIGTERM and SIGINT into [`StopHandle::stop`]: the signals are blocked in this
/// thread (and so in every thread started after it) and taken by a thread of their own.
pub fn stop_on_signals(stop: StopHandle) -> Result<()> {
    use nix::sys::signal::{SigSet, Signal};
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    signals
        .thread_block()
        .map_err(|e| HsmError::Invalid(format!("blocking signals: {e}")))?;
    std::thread::Builder::new()
        .name("etee-custody-signals".into())
        .spawn(move || {
            if let Ok(signal) = signals.wait() {
                eprintln!("etee custody: {signal}: finishing the requests under way");
                stop.stop();
            }
        })
        .map_err(|e| HsmError::Invalid(format!("starting the signal thread: {e}")))?;
    Ok(())
}

/// A read-only session on the token, not logged in: what a client of the custody process
/// may read (public objects) without the PIN.
fn public_session(hsm: &HsmConfig) -> Result<cryptoki::session::Session> {
    let module = Module::load(&hsm.module)?;
    let (ctx, _) = module.context();
    let (slot, _) = find_token(&ctx, &hsm.token, &hsm.module)?;
    ctx.open_ro_session(slot).ctx("opening a session")
}

/// The certificates of the token (CKA_ID and certificate), read in a read-only session
/// without logging in.
pub fn public_certificates(hsm: &HsmConfig) -> Result<Vec<(Vec<u8>, Certificate)>> {
    let session = public_session(hsm)?;
    let handles = session
        .find_objects(&[Attribute::Class(ObjectClass::CERTIFICATE)])
        .ctx("finding certificates")?;
    keys::read_certificates(&session, handles)
}

struct RemoteInner {
    socket: PathBuf,
    /// Idle connections (at most [`IDLE_CONNECTIONS`] kept).
    idle: Mutex<Vec<UnixStream>>,
    certs: Vec<(Vec<u8>, Certificate)>,
    /// The token, for what is read without logging in (`None` from
    /// [`RemoteCustodyKeys::with_certificates`]).
    hsm: Option<HsmConfig>,
    /// Checked on every new connection, before a frame is sent.
    server: ServerCheck,
}

/// Idle connections a client keeps for its next requests.
const IDLE_CONNECTIONS: usize = 8;

/// The token's keys through a custody core in another process (`etee custody serve`).
///
/// Each handle speaks for one client id ([`Self::for_client`] makes another handle on the
/// same connections): the server's policy decides per client, and the client is on every
/// audit record.
#[derive(Clone)]
pub struct RemoteCustodyKeys {
    inner: Arc<RemoteInner>,
    client: ClientId,
}

impl std::fmt::Debug for RemoteCustodyKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteCustodyKeys")
            .field("socket", &self.inner.socket)
            .field("client", &self.client)
            .finish()
    }
}

impl RemoteCustodyKeys {
    /// Reads the token's certificates (no login) and connects to the server at `socket`.
    pub fn open(hsm: &HsmConfig, custody: &CustodyConfig, socket: &Path) -> Result<Self> {
        let certs = public_certificates(hsm)?;
        let mut keys = Self::with_certificates(certs, custody, socket)?;
        if let Some(inner) = Arc::get_mut(&mut keys.inner) {
            inner.hsm = Some(hsm.clone());
        }
        Ok(keys)
    }

    /// Like [`Self::open`] with certificates of the caller's (CKA_ID, certificate).
    pub fn with_certificates(
        certs: Vec<(Vec<u8>, Certificate)>,
        custody: &CustodyConfig,
        socket: &Path,
    ) -> Result<Self> {
        let server = ServerCheck::from_config(custody);
        let stream =
            connect_bounded(socket, &server).map_err(|e| HsmError::CustodyUnreachable {
                socket: socket.to_path_buf(),
                reason: e.to_string(),
            })?;
        Ok(Self {
            inner: Arc::new(RemoteInner {
                socket: socket.to_path_buf(),
                idle: Mutex::new(vec![stream]),
                certs,
                hsm: None,
                server,
            }),
            client: client_id(&custody.client)?,
        })
    }

    /// A handle on the same custody process that speaks for `client` (see
    /// [`CustodyKeys::for_client`]).
    pub fn for_client(&self, client: &str) -> Result<Self> {
        Ok(Self {
            inner: self.inner.clone(),
            client: client_id(client)?,
        })
    }

    /// The client id this handle speaks for.
    pub fn client(&self) -> &ClientId {
        &self.client
    }

    /// Where the custody process's audit chain stands.
    pub fn audit_head(&self) -> Result<etee_custody::AuditHead, KeyError> {
        match self.request(&Request::AuditHead)? {
            Response::AuditHead(head) => Ok(head),
            _ => Err(KeyError::Unavailable(
                "custody process: unexpected answer to AuditHead".into(),
            )),
        }
    }

    /// Sends one request and reads the response, on an idle connection or a new one. An
    /// idle connection found broken (a restarted server) is replaced and the request sent
    /// again, once; a new connection that fails is not retried.
    pub fn request(&self, request: &Request) -> Result<Response, KeyError> {
        let unavailable = |what: String| KeyError::Unavailable(format!("custody process: {what}"));
        let mut buf = Zeroizing::new(vec![0u8; MAX_REQUEST_FRAME]);
        let frame =
            wire::encode_request(request, &mut buf).map_err(|e| unavailable(e.to_string()))?;
        let failed = |e: io::Error| unavailable(format!("{}: {e}", self.inner.socket.display()));
        loop {
            let (mut stream, reused) = match self.idle().pop() {
                Some(s) => (s, true),
                None => (
                    connect_bounded(&self.inner.socket, &self.inner.server).map_err(failed)?,
                    false,
                ),
            };
            let exchanged = write_frame(&mut stream, frame).and_then(|()| {
                read_frame(&mut stream, MAX_RESPONSE_FRAME)?
                    .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))
            });
            match exchanged {
                Ok(response) => {
                    let mut idle = self.idle();
                    if idle.len() < IDLE_CONNECTIONS {
                        idle.push(stream);
                    }
                    drop(idle);
                    return wire::decode_response(&response)
                        .map_err(|e| unavailable(e.to_string()));
                }
                // Every idle connection may be stale after a restart: drop them all, and
                // send again on a new one. Not after a timeout: the process is there but
                // does not answer, and the request may yet be served.
                Err(e)
                    if reused
                        && !matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                        ) =>
                {
                    self.idle().clear()
                }
                Err(e) => return Err(failed(e)),
            }
        }
    }

    /// [`CustodyKeys::describe_key`] through the custody process.
    pub fn describe_key(&self, key_id: &str) -> Result<KeyFacts, KeyError> {
        let request = describe_request(self.client.clone(), key_id)?;
        describe_result(self.request(&request)?, key_id)
    }

    /// The public key (SubjectPublicKeyInfo DER) of key `key_id`, read without logging in:
    /// from the token's public key object with that CKA_ID (or label), else from its
    /// certificate.
    pub fn public_key_der(&self, key_id: &str) -> Result<Vec<u8>> {
        let session = public_session(self.hsm()?)?;
        for by in [
            Attribute::Id(key_id.as_bytes().to_vec()),
            Attribute::Label(key_id.as_bytes().to_vec()),
        ] {
            let found = session
                .find_objects(&[Attribute::Class(ObjectClass::PUBLIC_KEY), by])
                .ctx("finding a public key")?;
            if let Some(handle) = found.first() {
                return keys::public_key_der(&session, *handle);
            }
        }
        let cert = self
            .inner
            .certs
            .iter()
            .find(|(id, _)| id.as_slice() == key_id.as_bytes())
            .map(|(_, c)| c)
            .ok_or_else(|| {
                HsmError::Invalid(format!(
                    "the token has no public key or certificate {key_id:?} readable without \
                     logging in"
                ))
            })?;
        Ok(cert.public_key()?.public_key_to_der()?)
    }

    /// The token as it is now (`C_GetTokenInfo`, no login).
    pub fn token_summary(&self) -> Result<crate::TokenSummary> {
        crate::token_summary(self.hsm()?)
    }

    fn hsm(&self) -> Result<&HsmConfig> {
        self.inner.hsm.as_ref().ok_or_else(|| {
            HsmError::Config("this custody client was made without the [hsm] table".into())
        })
    }

    /// [`CustodyKeys::wrap_secret`] through the custody process.
    pub fn wrap_secret(&self, key_id: &str, secret: &[u8]) -> Result<Vec<u8>, KeyError> {
        let request = wrap_request(self.client.clone(), key_id, secret)?;
        wrap_result(self.request(&request)?, key_id)
    }

    /// [`CustodyKeys::unwrap_secret`] through the custody process (the same uniform
    /// [`KeyError::DecryptFailed`] for every failure of the blob).
    pub fn unwrap_secret(
        &self,
        key_id: &str,
        wrapped: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        let request = unwrap_request(self.client.clone(), key_id, wrapped)?;
        unwrap_result(self.request(&request)?, key_id)
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<UnixStream>> {
        self.inner
            .idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The authentication key (certificate and chain from the token), used through the
    /// custody process.
    pub fn signing_key(&self) -> Result<SigningKey> {
        let certs = &self.inner.certs;
        let cert = certs
            .iter()
            .find(|(id, _)| id == AUTHENTICATION_ID.as_bytes())
            .map(|(_, c)| c.clone())
            .ok_or_else(|| HsmError::NoCertificate(AUTHENTICATION_ID.into()))?;
        let all: Vec<_> = certs.iter().map(|(_, c)| c.clone()).collect();
        let chain = keys::chain_for(&cert, &all);
        Ok(SigningKey {
            ops: Arc::new(self.clone()),
            key: KeyId(AUTHENTICATION_ID.into()),
            signer: SignerRef::Certificate { cert, chain },
        })
    }

    /// A decryption key for every ETK certificate in the token, used through the custody
    /// process.
    pub fn decryption_keys(&self) -> Result<Vec<DecryptionKey>> {
        let ops: Arc<dyn PrivateKeyOps> = Arc::new(self.clone());
        Ok(self
            .inner
            .certs
            .iter()
            .filter(|(id, cert)| {
                id.as_slice() != AUTHENTICATION_ID.as_bytes()
                    && !id.starts_with(b"ca-")
                    && !cert.is_ca()
            })
            .map(|(id, cert)| DecryptionKey {
                ops: ops.clone(),
                key: KeyId(String::from_utf8_lossy(id).into_owned()),
                serial: cert.serial().to_vec(),
                cert: Some(cert.clone()),
                ski: None,
                modulus_bits: cert.key_bits(),
            })
            .collect())
    }

    /// [`Self::decryption_keys`] as a [`KeyRing`].
    pub fn key_ring(&self) -> Result<KeyRing> {
        let mut ring = KeyRing::new();
        ring.extend(self.decryption_keys()?);
        Ok(ring)
    }
}

impl PrivateKeyOps for RemoteCustodyKeys {
    fn sign_pss_sha256(&self, key: &KeyId, digest: &[u8; 32]) -> Result<Vec<u8>, KeyError> {
        let core_key = etee_custody::KeyId::new(key.0.as_bytes())
            .ok_or_else(|| KeyError::UnknownKey(key.clone()))?;
        let request = Request::SignPssSha256 {
            client: self.client.clone(),
            key: core_key,
            digest: *digest,
        };
        sign_result(self.request(&request)?, key)
    }

    fn decrypt_pkcs1v15(&self, key: &KeyId, blob: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        let core_key = etee_custody::KeyId::new(key.0.as_bytes()).ok_or(KeyError::DecryptFailed)?;
        let blob = Blob::from_slice(blob).map_err(|_| KeyError::DecryptFailed)?;
        let request = Request::DecryptPkcs1v15 {
            client: self.client.clone(),
            key: core_key,
            blob,
        };
        decrypt_result(self.request(&request)?, key)
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn clients_check_who_serves_the_socket() {
        let me = nix::unistd::getuid().as_raw();
        let mut custody = crate::config::Config::from_toml(
            "[hsm]\ntoken_label = \"t\"\npin_file = \"/p\"\n",
            Path::new("/"),
        )
        .unwrap()
        .custody;
        assert_eq!(ServerCheck::from_config(&custody), ServerCheck::Uid(me));
        custody.allowed_uids = vec![me + 1];
        assert_eq!(ServerCheck::from_config(&custody), ServerCheck::Unchecked);
        custody.server_uid = Some(me + 7);
        assert_eq!(ServerCheck::from_config(&custody), ServerCheck::Uid(me + 7));

        let (a, _b) = UnixStream::pair().unwrap();
        assert!(ServerCheck::Uid(me).check(&a).is_ok());
        assert!(ServerCheck::Unchecked.check(&a).is_ok());
        let e = ServerCheck::Uid(me + 7).check(&a).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        assert!(
            e.to_string().contains(&format!("served by uid {me}")),
            "{e}"
        );
    }

    #[test]
    fn the_peer_uid_comes_from_the_kernel() {
        let (a, b) = UnixStream::pair().unwrap();
        let me = nix::unistd::getuid().as_raw();
        assert_eq!(peer_uid(&a).unwrap(), me);
        assert_eq!(peer_uid(&b).unwrap(), me);
    }

    use super::*;

    #[test]
    fn frames_round_trip_and_are_bounded() {
        let mut buf = Vec::new();
        write_frame(&mut buf, b"abc").unwrap();
        write_frame(&mut buf, b"").unwrap();
        assert_eq!(&buf[..7], &[0, 0, 0, 3, b'a', b'b', b'c']);
        let mut r = &buf[..];
        assert_eq!(&read_frame(&mut r, 10).unwrap().unwrap()[..], b"abc");
        assert_eq!(&read_frame(&mut r, 10).unwrap().unwrap()[..], b"");
        assert!(read_frame(&mut r, 10).unwrap().is_none());
        // Too long, truncated length, truncated body.
        assert!(read_frame(&mut &[0, 0, 0, 11][..], 10).is_err());
        assert!(read_frame(&mut &[0, 0][..], 10).is_err());
        assert!(read_frame(&mut &[0, 0, 0, 2, 1][..], 10).is_err());
    }

    #[test]
    fn socket_is_private_and_stale_sockets_are_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.sock");
        let listener = bind_private(&path, socket_mode(&[])).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // A live server: refused.
        assert!(bind_private(&path, 0o600).is_err());
        drop(listener);
        // Gone: the stale file is replaced; with other uids allowed, the group may connect.
        let _listener = bind_private(&path, socket_mode(&[1234])).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o660);
        // Not a socket: left alone.
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        assert!(bind_private(&file, 0o600).is_err());
        assert_eq!(std::fs::read(&file).unwrap(), b"x");
        // The private directory the socket was bound in is gone.
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["c.sock", "f"]);
    }
}
