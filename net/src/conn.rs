//! One connection of the reactor: its socket, its buffers, and where it is in the conversation.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::Instant;

use mio::net::TcpStream;

use log::{debug, warn};

use crate::peer::FrameHeader;
use crate::protocol::ProtocolVersion;
use crate::reactor::CloseReason;

/// Bytes read from a socket per `read` call.
pub const READ_CHUNK_BYTES: usize = 16 * 1024;
/// Requests a client pipelines while the host owes it a response are buffered up to this many
/// bytes; past it the reactor stops reading the socket and the kernel applies TCP flow control.
pub const PIPELINE_BYTES_MAX: usize = 64 * 1024;
/// Buffers that grew past this (a large request, a DUMP answer) are shrunk back once empty, so an
/// idle connection holds little memory.
pub const BUFFER_CAPACITY_KEEP_BYTES: usize = 64 * 1024;

/// TLS: records read from the socket per `read_once` call when none yields plaintext
/// (post-handshake messages, a slow handshake); past it the caller comes back.
pub const TLS_READS_PER_CALL_MAX: usize = 16;
/// The first byte of a TLS handshake record.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Writes the session's records to the socket until it has none or the socket is full.
/// Returns whether anything was written.
fn tls_flush(tls: &mut rustls::Connection, stream: &mut TcpStream) -> io::Result<bool> {
    let mut wrote = false;
    // Bounded: the session's buffer is (TLS_BUFFER_BYTES_MAX) and every turn drains some.
    while tls.wants_write() {
        match tls.write_tls(stream) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(_) => wrote = true,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(wrote)
}

/// Where the peer queue writes: the TLS session (then its records to the socket), or the
/// socket.
pub struct ConnWriter<'a> {
    stream: &'a mut TcpStream,
    tls: Option<&'a mut rustls::Connection>,
}

impl Write for ConnWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[io::IoSlice::new(buf)])
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        let Some(tls) = self.tls.as_deref_mut() else {
            return self.stream.write_vectored(bufs);
        };
        tls_flush(tls, self.stream)?;
        let accepted = tls.writer().write_vectored(bufs)?;
        tls_flush(tls, self.stream)?;
        if accepted == 0 && bufs.iter().any(|b| !b.is_empty()) {
            // The session's buffer is full and the socket takes nothing: wait for writable.
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(accepted)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Where a connection is in its conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for the first word: a client protocol version (or, from issue 6 on, the peer
    /// magic).
    Handshake,
    /// A dqlite client.
    Client(ProtocolVersion),
    /// An inbound peer connection (first word `PEER_MAGIC_V1`) waiting for its hello frame.
    PeerHello,
    /// An inbound peer connection whose hello was valid and answered with CHALLENGE: waiting
    /// for the dialler's AUTH. Nothing reaches the host before it is verified.
    PeerAuthIn {
        /// The sender's node id, as the hello claims it.
        from: u64,
    },
    /// An inbound peer connection from this node, authenticated: its frames go to the host as
    /// `PeerFrame` events. It is only read (the CHALLENGE was its only write).
    PeerIn {
        /// The sender's node id.
        from: u64,
    },
    /// An outbound peer connection whose TCP connect is in progress.
    PeerDialing {
        /// The node dialled.
        to: u64,
    },
    /// An outbound peer connection, connected, greeting and hello sent: waiting for the
    /// acceptor's CHALLENGE. The peer's queue is not written before it is verified.
    PeerAuthOut {
        /// The node dialled.
        to: u64,
    },
    /// An outbound peer connection, authenticated: AUTH, then the peer's send queue. It is only
    /// written; it is read only to notice a close.
    PeerOut {
        /// The node it leads to.
        to: u64,
    },
}

impl Phase {
    /// Whether this is a peer connection (either direction, any stage).
    pub fn is_peer(self) -> bool {
        !matches!(self, Phase::Handshake | Phase::Client(_))
    }
}

/// A peer connection's handshake in progress: what both MACs cover.
#[derive(Debug)]
pub struct PeerHandshake {
    /// The hello payload, exactly as sent (dialler) or received (acceptor).
    pub hello_payload: Vec<u8>,
    /// The acceptor's nonce (acceptor: the one it sent in CHALLENGE).
    pub acceptor_nonce: [u8; crate::peer::NONCE_BYTES],
}

/// The outcome of one socket operation.
#[derive(Debug)]
pub enum IoOutcome {
    /// Progress was made; call again.
    Progress,
    /// The socket would block (or there is nothing to do).
    Blocked,
    /// The peer closed its side (read returned 0).
    Eof,
    /// The socket failed.
    Failed(io::Error),
}

/// A connection's state. Owned by the reactor, never shared.
#[derive(Debug)]
pub struct Conn {
    pub stream: TcpStream,
    pub peer: SocketAddr,
    pub phase: Phase,
    /// Bytes received and not yet consumed as a frame.
    pub inbound: Vec<u8>,
    /// Encoded responses; `outbound[out_offset..]` is not written yet.
    pub outbound: Vec<u8>,
    // Invariant: out_offset <= outbound.len().
    pub out_offset: usize,
    /// A request was delivered to the host and its final response not yet sent. While set, no
    /// further request is parsed: answers go out in request order, and pipelined requests wait
    /// in `inbound` (bounded by PIPELINE_BYTES_MAX).
    pub awaiting_response: bool,
    /// The host sent a non-final ROWS batch and wants `Drained` once it is written.
    pub drain_wanted: bool,
    /// Reading was stopped by a limit; the reactor resumes it without a readiness event.
    pub read_paused: bool,
    /// Close, for this reason, once everything queued is written (after a FAILURE for an
    /// oversized frame, or when the host asked).
    pub close_after_flush: Option<CloseReason>,
    /// A malformed frame was logged at warn level; later ones go to debug.
    pub malformed_logged: bool,
    /// Bytes of `inbound`'s capacity charged to the reactor's client buffer budget.
    pub charged: usize,
    /// Whether the host was told about this connection (Connected), so it must hear of its end.
    pub announced: bool,
    /// Queued on the reactor's flush or revisit list (dedupe flags).
    pub flush_queued: bool,
    pub revisit_queued: bool,
    /// Peer inbound: the header of the frame whose payload is being received; the payload
    /// starts at `inbound[0]`.
    pub in_frame: Option<FrameHeader>,
    /// Peer: the handshake in progress (PeerAuthIn, PeerAuthOut), dropped once authenticated.
    pub handshake: Option<Box<PeerHandshake>>,
    /// The TLS session when the node (or the peer transport) uses TLS: every byte of
    /// `inbound` came out of it and every byte of `outbound` goes into it.
    pub tls: Option<Box<rustls::Connection>>,
    /// TLS: the first byte was checked to be a TLS handshake record (plaintext is refused with a
    /// clear log line rather than a TLS parse error).
    pub tls_first_checked: bool,
    pub accepted_at: Instant,
    /// Last read or write progress.
    pub active_at: Instant,
    /// Last write progress, or when the outbound buffer became non-empty.
    pub write_progress_at: Instant,
}

impl Conn {
    pub fn new(stream: TcpStream, peer: SocketAddr, now: Instant) -> Conn {
        Conn {
            stream,
            peer,
            phase: Phase::Handshake,
            inbound: Vec::with_capacity(READ_CHUNK_BYTES),
            outbound: Vec::new(),
            out_offset: 0,
            awaiting_response: false,
            drain_wanted: false,
            read_paused: false,
            close_after_flush: None,
            malformed_logged: false,
            charged: 0,
            announced: false,
            flush_queued: false,
            revisit_queued: false,
            in_frame: None,
            handshake: None,
            tls: None,
            tls_first_checked: false,
            accepted_at: now,
            active_at: now,
            write_progress_at: now,
        }
    }

    /// Bytes queued and not yet written (TLS: plus one while the session holds unwritten
    /// records, so that "nothing pending" means the socket has everything).
    pub fn out_pending_bytes(&self) -> usize {
        let tls_pending = self.tls.as_ref().is_some_and(|tls| tls.wants_write());
        self.outbound.len() - self.out_offset + usize::from(tls_pending)
    }

    /// Reads one chunk into `inbound`: at most what its capacity has room for (the reactor
    /// grew it for the frame being received), or a chunk when it is full.
    pub fn read_once(&mut self, now: Instant) -> IoOutcome {
        let room = self.inbound.capacity() - self.inbound.len();
        let max = if room == 0 {
            READ_CHUNK_BYTES
        } else {
            room.min(READ_CHUNK_BYTES)
        };
        self.read_once_max(now, max)
    }

    /// Reads at most `max` bytes into `inbound` (the remainder of a large peer frame is read in
    /// larger steps, and never past the frame's end).
    pub fn read_once_max(&mut self, now: Instant, max: usize) -> IoOutcome {
        if self.tls.is_some() {
            return self.tls_read(now, max);
        }
        let len = self.inbound.len();
        self.inbound.resize(len + max, 0);
        let result = self.stream.read(&mut self.inbound[len..]);
        let read = match &result {
            Ok(n) => *n,
            Err(_) => 0,
        };
        self.inbound.truncate(len + read);
        match result {
            Ok(0) => IoOutcome::Eof,
            Ok(_) => {
                self.active_at = now;
                IoOutcome::Progress
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => IoOutcome::Blocked,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => IoOutcome::Progress,
            Err(e) => IoOutcome::Failed(e),
        }
    }

    /// Writes from `outbound` once.
    pub fn write_once(&mut self, now: Instant) -> IoOutcome {
        if self.tls.is_some() {
            return self.tls_write(now);
        }
        if self.out_pending_bytes() == 0 {
            return IoOutcome::Blocked;
        }
        match self.stream.write(&self.outbound[self.out_offset..]) {
            Ok(0) => IoOutcome::Failed(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                self.out_offset += n;
                debug_assert!(self.out_offset <= self.outbound.len());
                self.active_at = now;
                self.write_progress_at = now;
                if self.out_offset == self.outbound.len() {
                    self.outbound.clear();
                    self.out_offset = 0;
                    if self.outbound.capacity() > BUFFER_CAPACITY_KEEP_BYTES {
                        self.outbound.shrink_to(BUFFER_CAPACITY_KEEP_BYTES);
                    }
                }
                IoOutcome::Progress
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => IoOutcome::Blocked,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => IoOutcome::Progress,
            Err(e) => IoOutcome::Failed(e),
        }
    }

    /// TLS: hands queued output to the session, then writes its records to the socket.
    fn tls_write(&mut self, now: Instant) -> IoOutcome {
        let tls = self.tls.as_mut().expect("caller checked");
        let mut progress = false;
        if self.out_offset < self.outbound.len() {
            // The session copies (and encrypts) what fits under its buffer limit.
            match tls.writer().write(&self.outbound[self.out_offset..]) {
                Ok(n) => {
                    self.out_offset += n;
                    progress |= n > 0;
                }
                Err(e) => return IoOutcome::Failed(e),
            }
            if self.out_offset == self.outbound.len() {
                self.outbound.clear();
                self.out_offset = 0;
                if self.outbound.capacity() > BUFFER_CAPACITY_KEEP_BYTES {
                    self.outbound.shrink_to(BUFFER_CAPACITY_KEEP_BYTES);
                }
            }
        }
        match tls_flush(tls, &mut self.stream) {
            Ok(wrote) => progress |= wrote,
            Err(e) => return IoOutcome::Failed(e),
        }
        if progress {
            self.active_at = now;
            self.write_progress_at = now;
            IoOutcome::Progress
        } else {
            IoOutcome::Blocked
        }
    }

    /// TLS: returns decrypted bytes the session holds, else reads records from the socket.
    /// `Progress` means bytes were appended to `inbound` (or the read budget ran out).
    fn tls_read(&mut self, now: Instant, max: usize) -> IoOutcome {
        if !self.tls_first_checked {
            let mut first = [0u8; 1];
            match self.stream.peek(&mut first) {
                Ok(0) => return IoOutcome::Eof,
                Ok(_) if first[0] != TLS_HANDSHAKE_RECORD => {
                    warn!(
                        "{}: not TLS (first byte {:#04x}): this node serves TLS only (use the \
                         cluster certificate, e.g. dqlite -c CERT -k KEY); closing",
                        self.peer, first[0]
                    );
                    return IoOutcome::Failed(io::ErrorKind::InvalidData.into());
                }
                Ok(_) => self.tls_first_checked = true,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return IoOutcome::Blocked,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => return IoOutcome::Progress,
                Err(e) => return IoOutcome::Failed(e),
            }
        }
        let tls = self.tls.as_mut().expect("caller checked");
        // Bounded: every turn reads bytes from the socket or returns.
        for _ in 0..TLS_READS_PER_CALL_MAX {
            let len = self.inbound.len();
            self.inbound.resize(len + max, 0);
            let result = tls.reader().read(&mut self.inbound[len..]);
            let read = *result.as_ref().unwrap_or(&0);
            self.inbound.truncate(len + read);
            match result {
                Ok(0) => return IoOutcome::Eof, // close_notify
                Ok(_) => {
                    self.active_at = now;
                    return IoOutcome::Progress;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // The socket closed without close_notify.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return IoOutcome::Eof,
                Err(e) => return IoOutcome::Failed(e),
            }
            match tls.read_tls(&mut self.stream) {
                Ok(0) => return IoOutcome::Eof,
                Ok(_) => self.active_at = now,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return IoOutcome::Blocked,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return IoOutcome::Failed(e),
            }
            let processed = tls.process_new_packets();
            // Handshake answers and alerts go out now; what the socket does not take waits
            // for its writable event.
            let flushed = tls_flush(tls, &mut self.stream);
            if let Err(e) = processed {
                if tls.is_handshaking() && !self.malformed_logged {
                    warn!("{}: TLS handshake refused: {e}; closing", self.peer);
                    self.malformed_logged = true;
                } else {
                    debug!("{}: TLS: {e}; closing", self.peer);
                }
                return IoOutcome::Failed(io::Error::new(io::ErrorKind::InvalidData, e));
            }
            if let Err(e) = flushed {
                return IoOutcome::Failed(e);
            }
        }
        IoOutcome::Progress
    }

    /// A writer for the peer queue: into the TLS session when there is one, else the socket.
    pub fn queue_writer(&mut self) -> ConnWriter<'_> {
        ConnWriter {
            stream: &mut self.stream,
            tls: self.tls.as_deref_mut(),
        }
    }

    /// Drops the first `count` inbound bytes (a consumed frame) and shrinks a buffer that a
    /// large frame grew.
    pub fn consume_inbound(&mut self, count: usize) {
        self.inbound.drain(..count);
        if self.inbound.is_empty() && self.inbound.capacity() > BUFFER_CAPACITY_KEEP_BYTES {
            self.inbound.shrink_to(READ_CHUNK_BYTES);
        }
    }
}
