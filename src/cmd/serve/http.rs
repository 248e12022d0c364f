//! A small HTTP/1.x server for `/metrics`, `/healthz` and `/readyz`: one
//! thread, one connection at a time, `Connection: close`. Requests are bounded
//! ([`MAX_REQUEST`] bytes of head, no body is read) and so is the time one
//! client may hold the thread ([`CLIENT_DEADLINE`]): a slow or hostile client
//! delays a scrape, never grows memory or blocks shutdown.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// The largest request head read (request line and headers).
pub const MAX_REQUEST: usize = 8192;
/// How long one client may take to send its request and read the answer.
pub const CLIENT_DEADLINE: Duration = Duration::from_secs(5);

#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The path without its query string.
    pub path: String,
    pub accept: Option<String>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum ParseError {
    /// The head is longer than [`MAX_REQUEST`] (431).
    TooLarge,
    /// Not an HTTP/1.x request (400).
    Bad,
}

/// Parses a request head from what was read so far: `Ok(None)` while the
/// head is incomplete.
pub fn parse(buf: &[u8]) -> Result<Option<Request>, ParseError> {
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 4)
        .or_else(|| buf.windows(2).position(|w| w == b"\n\n").map(|p| p + 2));
    let Some(end) = end else {
        return if buf.len() >= MAX_REQUEST {
            Err(ParseError::TooLarge)
        } else {
            Ok(None)
        };
    };
    if end > MAX_REQUEST {
        return Err(ParseError::TooLarge);
    }
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| ParseError::Bad)?;
    let mut lines = head.lines();
    let first = lines.next().ok_or(ParseError::Bad)?;
    let mut parts = first.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ParseError::Bad);
    };
    if !version.starts_with("HTTP/1.")
        || method.is_empty()
        || !method.bytes().all(|b| b.is_ascii_uppercase())
        || !target.starts_with('/')
    {
        return Err(ParseError::Bad);
    }
    let mut accept = None;
    for l in lines {
        let l = l.trim_end_matches('\r');
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':').ok_or(ParseError::Bad)?;
        if k.trim().eq_ignore_ascii_case("accept") {
            accept = Some(v.trim().to_string());
        }
    }
    let path = target.split('?').next().unwrap_or(target).to_string();
    Ok(Some(Request {
        method: method.to_string(),
        path,
        accept,
    }))
}

/// An answer: status, content type, body.
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl Response {
    pub fn text(status: u16, body: impl Into<String>) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// Binds `addr`, with an error that says what to do when the port is taken.
pub fn bind(addr: &str) -> Result<TcpListener> {
    let sa: SocketAddr = addr.parse().with_context(|| {
        format!("--listen {addr}: not an address:port (e.g. 127.0.0.1:9808, 0.0.0.0:9808)")
    })?;
    match TcpListener::bind(sa) {
        Ok(l) => {
            l.set_nonblocking(true)
                .context("setting the listening socket non-blocking")?;
            Ok(l)
        }
        Err(e) if e.kind() == ErrorKind::AddrInUse => Err(anyhow::anyhow!(
            "cannot listen on {sa}: the port is taken (another ctrace serve or exporter?): stop it or choose another with --listen"
        )),
        Err(e) => Err(e).with_context(|| format!("cannot listen on {sa}")),
    }
}

/// Serves until `done` is set, answering each request with `handle`.
pub fn serve(listener: TcpListener, done: Arc<AtomicBool>, handle: impl Fn(&Request) -> Response) {
    while !done.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((s, _)) => {
                // a failed client is its own problem, never the server's
                let _ = one(s, &handle);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

fn one(mut s: TcpStream, handle: &impl Fn(&Request) -> Response) -> std::io::Result<()> {
    s.set_nonblocking(false)?;
    let deadline = Instant::now() + CLIENT_DEADLINE;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let req = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return write(&mut s, &Response::text(408, "request timeout\n"), false);
        }
        s.set_read_timeout(Some(left))?;
        let n = match s.read(&mut chunk) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {
                return write(&mut s, &Response::text(408, "request timeout\n"), false);
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        buf.extend_from_slice(&chunk[..n]);
        match parse(&buf) {
            Ok(Some(r)) => break r,
            Ok(None) => {}
            Err(ParseError::TooLarge) => {
                return write(&mut s, &Response::text(431, "request too large\n"), false)
            }
            Err(ParseError::Bad) => {
                return write(&mut s, &Response::text(400, "bad request\n"), false)
            }
        }
    };
    s.set_write_timeout(Some(
        deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(100)),
    ))?;
    let resp = if req.method == "GET" || req.method == "HEAD" {
        handle(&req)
    } else {
        Response::text(405, "only GET and HEAD\n")
    };
    write(&mut s, &resp, req.method == "HEAD")
}

fn write(s: &mut TcpStream, r: &Response, head_only: bool) -> std::io::Result<()> {
    let head =
        format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n{}\r\n",
        r.status,
        reason(r.status),
        r.content_type,
        r.body.len(),
        if r.status == 405 { "Allow: GET, HEAD\r\n" } else { "" },
    );
    s.write_all(head.as_bytes())?;
    if !head_only {
        s.write_all(r.body.as_bytes())?;
    }
    s.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_requests_and_bounds_them() {
        let r = parse(
            b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\nACCEPT: application/openmetrics-text\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        assert_eq!(r.method, "GET");
        assert_eq!(r.path, "/metrics");
        assert_eq!(r.accept.as_deref(), Some("application/openmetrics-text"));
        // incomplete: wait for more
        assert_eq!(parse(b"GET /metrics HTTP/1.1\r\nHost"), Ok(None));
        // bare LF line ends are accepted
        assert!(parse(b"GET / HTTP/1.0\n\n").unwrap().is_some());
        // too large, with or without an end
        let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
        big.resize(MAX_REQUEST, b'a');
        assert_eq!(parse(&big), Err(ParseError::TooLarge));
        big.extend_from_slice(b"\r\n\r\n");
        assert_eq!(parse(&big), Err(ParseError::TooLarge));
        // not HTTP
        for bad in [
            &b"\x16\x03\x01\x02\x00\r\n\r\n"[..],
            b"GET\r\n\r\n",
            b"GET / HTTP/2\r\n\r\n",
            b"GET metrics HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1 extra\r\n\r\n",
            b"GET / HTTP/1.1\r\nno colon\r\n\r\n",
            b"get / HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(
                parse(bad),
                Err(ParseError::Bad),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    /// A real socket: answers, a client that sends nothing is cut off after
    /// the deadline, a flood of bytes gets 431, and the server stops on `done`.
    #[test]
    fn serves_one_thread_and_stops() {
        let l = bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        // the same port again: the clear error
        let e = bind(&addr.to_string()).unwrap_err().to_string();
        assert!(e.contains("port is taken"), "{e}");
        let done = Arc::new(AtomicBool::new(false));
        let d = done.clone();
        let t = std::thread::spawn(move || {
            serve(l, d, |r| Response::text(200, format!("path {}\n", r.path)))
        });
        let get = |req: &[u8]| {
            let mut c = TcpStream::connect(addr).unwrap();
            c.write_all(req).unwrap();
            let mut s = String::new();
            let _ = c.read_to_string(&mut s);
            s
        };
        let s = get(b"GET /healthz HTTP/1.1\r\n\r\n");
        assert!(s.starts_with("HTTP/1.1 200 OK\r\n"), "{s}");
        assert!(s.ends_with("path /healthz\n"));
        let s = get(b"HEAD /x HTTP/1.1\r\n\r\n");
        assert!(
            s.contains("Content-Length: 8\r\n") && s.ends_with("\r\n\r\n"),
            "{s}"
        );
        assert!(get(b"POST / HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405"));
        // exactly the bound, so that nothing is left unread (no RST)
        let flood = vec![b'a'; MAX_REQUEST];
        assert!(get(&flood).starts_with("HTTP/1.1 431"));
        done.store(true, Ordering::Relaxed);
        t.join().unwrap();
    }
}
