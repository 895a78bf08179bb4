//! A minimal HTTP/1.1 server for metrics scrapes (`GET /metrics`), in the reactor's loop.
//!
//! One listener ([`Reactor::bind_metrics`]) and at most [`HTTP_CONNECTIONS_MAX`] connections,
//! each serving one request: the request head is read (at most [`HTTP_REQUEST_BYTES_MAX`]
//! bytes, up to the blank line; a body is never read), a `GET` or `HEAD` of `/metrics` becomes
//! [`Event::MetricsRequest`] and the host answers with [`Reactor::metrics_respond`]; anything
//! else is answered here (400, 404, 405, 431). Every answer carries `Connection: close` and the
//! connection is closed once it is written. A connection not done within [`HTTP_TIMEOUT`] is
//! closed. Connections past the limit are accepted and closed at once.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use log::{debug, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};

use super::Event;

/// Connections served at once.
pub const HTTP_CONNECTIONS_MAX: usize = 16;
/// Largest request head (request line and headers) read.
pub const HTTP_REQUEST_BYTES_MAX: usize = 8 * 1024;
/// Time a connection has to send its request and take its answer.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// The listener's token; connections use the tokens just below it.
pub(super) const HTTP_LISTENER: Token = Token(usize::MAX - 1);
/// The lowest token an HTTP connection uses: the reactor's connections stay below it.
pub(super) const HTTP_TOKEN_LOW: usize = usize::MAX - 1 - HTTP_CONNECTIONS_MAX;

/// A metrics scrape waiting for the host's answer. The generation makes a stale id harmless.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MetricsRequestId {
    slot: usize,
    generation: u64,
}

#[derive(Debug)]
struct HttpConn {
    stream: TcpStream,
    peer: SocketAddr,
    generation: u64,
    accepted_at: Instant,
    request: Vec<u8>,
    /// The answer being written, once there is one.
    out: Vec<u8>,
    written: usize,
    /// Whether the answer is known (the host's or our own).
    answered: bool,
    /// Whether the host was told of the request and owes an answer.
    with_host: bool,
    /// Whether the request was HEAD (the answer has no body).
    head: bool,
}

/// The metrics listener and its connections.
#[derive(Debug)]
pub(super) struct HttpServer {
    listener: TcpListener,
    conns: Vec<Option<HttpConn>>,
    generation_next: u64,
    limit_logged: bool,
}

/// What a complete request head asks for.
#[derive(Debug, PartialEq, Eq)]
enum Parsed {
    /// Not complete yet.
    Incomplete,
    /// `GET /metrics` (`head`: HEAD).
    Metrics { head: bool },
    /// An answer given here: status and reason.
    Refuse(u16, &'static str),
}

/// Parses the request head in `bytes` (all that was read so far).
fn parse(bytes: &[u8]) -> Parsed {
    let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") else {
        if bytes.len() >= HTTP_REQUEST_BYTES_MAX {
            return Parsed::Refuse(431, "Request Header Fields Too Large");
        }
        return Parsed::Incomplete;
    };
    let head = &bytes[..end];
    let line_end = head
        .windows(2)
        .position(|w| w == b"\r\n")
        .unwrap_or(head.len());
    let Ok(line) = std::str::from_utf8(&head[..line_end]) else {
        return Parsed::Refuse(400, "Bad Request");
    };
    let mut words = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (words.next(), words.next(), words.next(), words.next())
    else {
        return Parsed::Refuse(400, "Bad Request");
    };
    if !matches!(version, "HTTP/1.1" | "HTTP/1.0") {
        return Parsed::Refuse(400, "Bad Request");
    }
    let path = target.split('?').next().unwrap_or_default();
    if path != "/metrics" {
        return Parsed::Refuse(404, "Not Found");
    }
    match method {
        "GET" => Parsed::Metrics { head: false },
        "HEAD" => Parsed::Metrics { head: true },
        _ => Parsed::Refuse(405, "Method Not Allowed"),
    }
}

/// A whole HTTP answer.
fn answer(status: u16, reason: &str, content_type: &str, body: &[u8], head: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n{}\r\n",
        body.len(),
        if status == 405 {
            "Allow: GET, HEAD\r\n"
        } else {
            ""
        }
    )
    .into_bytes();
    if !head {
        out.extend_from_slice(body);
    }
    out
}

impl HttpServer {
    pub(super) fn bind(registry: &Registry, address: SocketAddr) -> io::Result<HttpServer> {
        let mut listener = TcpListener::bind(address)?;
        registry.register(&mut listener, HTTP_LISTENER, Interest::READABLE)?;
        Ok(HttpServer {
            listener,
            conns: (0..HTTP_CONNECTIONS_MAX).map(|_| None).collect(),
            generation_next: 1,
            limit_logged: false,
        })
    }

    pub(super) fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Whether any connection is open (the reactor's poll must wake for the timeout).
    pub(super) fn has_connections(&self) -> bool {
        self.conns.iter().any(Option::is_some)
    }

    fn token(slot: usize) -> Token {
        Token(HTTP_TOKEN_LOW + slot)
    }

    /// The slot of a connection token, if `token` is one.
    pub(super) fn slot_of(token: Token) -> Option<usize> {
        (token.0 >= HTTP_TOKEN_LOW && token.0 < HTTP_LISTENER.0).then(|| token.0 - HTTP_TOKEN_LOW)
    }

    pub(super) fn accept(&mut self, registry: &Registry) {
        loop {
            let (mut stream, peer) = match self.listener.accept() {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    warn!("metrics listener: accept failed: {e}");
                    return;
                }
            };
            let Some(slot) = self.conns.iter().position(Option::is_none) else {
                if !self.limit_logged {
                    warn!(
                        "metrics listener: {HTTP_CONNECTIONS_MAX} scrapes at once; refusing \
                         {peer}"
                    );
                    self.limit_logged = true;
                }
                continue;
            };
            if let Err(e) = registry.register(
                &mut stream,
                Self::token(slot),
                Interest::READABLE | Interest::WRITABLE,
            ) {
                debug!("metrics listener: register {peer}: {e}");
                continue;
            }
            self.conns[slot] = Some(HttpConn {
                stream,
                peer,
                generation: self.generation_next,
                accepted_at: Instant::now(),
                request: Vec::new(),
                out: Vec::new(),
                written: 0,
                answered: false,
                with_host: false,
                head: false,
            });
            self.generation_next += 1;
        }
    }

    fn close(&mut self, registry: &Registry, slot: usize) {
        if let Some(mut conn) = self.conns[slot].take() {
            let _ = registry.deregister(&mut conn.stream);
            let _ = conn.stream.shutdown(std::net::Shutdown::Both);
            self.limit_logged = false;
        }
    }

    /// Readiness of connection `slot`.
    pub(super) fn ready(
        &mut self,
        registry: &Registry,
        slot: usize,
        readable: bool,
        events: &mut Vec<Event>,
    ) {
        if readable {
            self.read(registry, slot, events);
        }
        self.flush(registry, slot);
    }

    fn read(&mut self, registry: &Registry, slot: usize, events: &mut Vec<Event>) {
        let Some(conn) = self.conns[slot].as_mut() else {
            return;
        };
        if conn.answered || conn.with_host {
            return; // The request is known; a body or pipelined bytes are never read.
        }
        let mut buffer = [0u8; 1024];
        loop {
            let room = HTTP_REQUEST_BYTES_MAX - conn.request.len();
            if room == 0 {
                break;
            }
            let want = room.min(buffer.len());
            match conn.stream.read(&mut buffer[..want]) {
                Ok(0) => return self.close(registry, slot),
                Ok(count) => conn.request.extend_from_slice(&buffer[..count]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    debug!("metrics: reading from {}: {e}", conn.peer);
                    return self.close(registry, slot);
                }
            }
        }
        match parse(&conn.request) {
            Parsed::Incomplete => {}
            Parsed::Metrics { head } => {
                conn.with_host = true;
                conn.head = head;
                events.push(Event::MetricsRequest {
                    request: MetricsRequestId {
                        slot,
                        generation: conn.generation,
                    },
                });
            }
            Parsed::Refuse(status, reason) => {
                debug!("metrics: {} answered {status}", conn.peer);
                let body = format!("{status} {reason}\n");
                conn.out = answer(status, reason, "text/plain", body.as_bytes(), false);
                conn.answered = true;
            }
        }
    }

    fn flush(&mut self, registry: &Registry, slot: usize) {
        let Some(conn) = self.conns[slot].as_mut() else {
            return;
        };
        if !conn.answered {
            return;
        }
        while conn.written < conn.out.len() {
            match conn.stream.write(&conn.out[conn.written..]) {
                Ok(0) => return self.close(registry, slot),
                Ok(count) => conn.written += count,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    debug!("metrics: writing to {}: {e}", conn.peer);
                    return self.close(registry, slot);
                }
            }
        }
        self.close(registry, slot);
    }

    /// The host's answer to a metrics request; false if the connection is gone.
    pub(super) fn respond(
        &mut self,
        registry: &Registry,
        request: MetricsRequestId,
        content_type: &str,
        body: &[u8],
    ) -> bool {
        let Some(conn) = self.conns.get_mut(request.slot).and_then(Option::as_mut) else {
            return false;
        };
        if conn.generation != request.generation || !conn.with_host || conn.answered {
            return false;
        }
        conn.out = answer(200, "OK", content_type, body, conn.head);
        conn.answered = true;
        self.flush(registry, request.slot);
        true
    }

    /// Closes connections past [`HTTP_TIMEOUT`].
    pub(super) fn sweep(&mut self, registry: &Registry, now: Instant) {
        for slot in 0..self.conns.len() {
            let expired = self.conns[slot]
                .as_ref()
                .is_some_and(|c| now.duration_since(c.accepted_at) > HTTP_TIMEOUT);
            if expired {
                debug!("metrics: connection timed out");
                self.close(registry, slot);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_parse_accepts_only_get_or_head_of_metrics() {
        assert_eq!(
            parse(b"GET /metrics HTTP/1.1\r\nHost: x"),
            Parsed::Incomplete
        );
        assert_eq!(
            parse(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Parsed::Metrics { head: false }
        );
        assert_eq!(
            parse(b"HEAD /metrics?x=1 HTTP/1.0\r\n\r\n"),
            Parsed::Metrics { head: true }
        );
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\n\r\n"),
            Parsed::Refuse(404, "Not Found")
        );
        assert!(matches!(
            parse(b"POST /metrics HTTP/1.1\r\n\r\n"),
            Parsed::Refuse(405, _)
        ));
        assert!(matches!(
            parse(b"GET /metrics\r\n\r\n"),
            Parsed::Refuse(400, _)
        ));
        assert!(matches!(
            parse(b"GET /metrics SPDY/3\r\n\r\n"),
            Parsed::Refuse(400, _)
        ));
        assert!(matches!(
            parse(b"\xff\xfe /metrics HTTP/1.1\r\n\r\n"),
            Parsed::Refuse(400, _)
        ));
        let long = vec![b'a'; HTTP_REQUEST_BYTES_MAX];
        assert!(matches!(parse(&long), Parsed::Refuse(431, _)));
    }

    #[test]
    fn test_answer_has_length_and_close() {
        let text = String::from_utf8(answer(200, "OK", "text/plain", b"abc", false)).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(text.contains("Content-Length: 3\r\n"));
        assert!(text.contains("Connection: close\r\n"));
        assert!(text.ends_with("\r\n\r\nabc"));
        let head = answer(200, "OK", "text/plain", b"abc", true);
        assert!(head.ends_with(b"\r\n\r\n"));
    }
}
