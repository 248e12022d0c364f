//! The lab's server: an echo service on a set of ports inside the server
//! netns, stopped by a flag (every wait in it is bounded).

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::topology::{spawn_in, SERVER_IP};

/// A connection lives at most this long on the server side.
const MAX_CONN_LIFE: Duration = Duration::from_secs(120);

pub struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<()>>>,
}

impl Server {
    /// Listens on every port in `ports` of the IPv4 server address in the
    /// netns `ns`; returns once listening.
    pub fn start(ns: &str, ports: Vec<u16>) -> Result<Server> {
        Self::start_at(ns, SERVER_IP.into(), ports)
    }

    /// [`Server::start`] on the given address (the IPv6 one for an IPv6 lab).
    pub fn start_at(ns: &str, ip: IpAddr, ports: Vec<u16>) -> Result<Server> {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel::<Result<()>>();
        let s2 = stop.clone();
        let thread = spawn_in(ns, move || {
            let mut ls = Vec::new();
            for p in &ports {
                match TcpListener::bind(SocketAddr::new(ip, *p)) {
                    Ok(l) => {
                        l.set_nonblocking(true)?;
                        ls.push(l);
                    }
                    Err(e) => {
                        let _ = tx
                            .send(Err(e).with_context(|| format!("server: listening on port {p}")));
                        return Ok(());
                    }
                }
            }
            let _ = tx.send(Ok(()));
            accept_loop(&ls, &s2);
            Ok(())
        });
        let mut srv = Server {
            stop,
            thread: Some(thread),
        };
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => Ok(srv),
            Ok(Err(e)) => Err(e),
            Err(_) => {
                let r = srv.thread.take().map(super::topology::join);
                match r {
                    Some(Err(e)) => Err(e.context("starting the lab server")),
                    _ => anyhow::bail!("the lab server did not start"),
                }
            }
        }
    }
}

fn accept_loop(ls: &[TcpListener], stop: &Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        let mut any = false;
        for l in ls {
            match l.accept() {
                Ok((s, _)) => {
                    any = true;
                    let st = stop.clone();
                    std::thread::spawn(move || echo(s, &st));
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(_) => {}
            }
        }
        if !any {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

fn echo(mut s: TcpStream, stop: &AtomicBool) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
    let t0 = Instant::now();
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::Relaxed) && t0.elapsed() < MAX_CONN_LIFE {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if s.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
