//! Load generator for `bench/run` (std + libc only, no Python): the traffic that
//! the packet-path, per-program, lost-event and memory benchmarks drive through
//! the bench NAT node.
//!
//!   loadgen serve ADDR:PORT [-t THREADS]        accept and close, forever
//!   loadgen conn  ADDR:PORT -d SECS [-t THREADS] connect + close (RST) loop
//!   loadgen syn   ADDR:PORT -d SECS [-r RATE]    non-blocking connect + close:
//!                                                exactly one SYN per socket
//!   loadgen synhold ADDR:PORT -d SECS [-r RATE] non-blocking connect, socket
//!                                                held 1.5 s: one SYN retransmit
//!                                                each (the first RTO is 1 s)
//!   loadgen udp   ADDR -d SECS [-r RATE] [-s SOCKETS] [-n MAXPKTS]
//!                 one datagram per new 5-tuple: SOCKETS source ports x
//!                 65535 destination ports (sendmmsg, batches of 64)
//!
//! Prints one line: `mode=... count=N secs=S rate=R cpu=C` (rate per second;
//! C: CPU seconds of this process, user + system, softirq work it ran included).
//! RATE 0 (the default) is as fast as possible; otherwise the sender paces
//! itself to RATE per second on average.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Opts {
    mode: String,
    target: String,
    secs: f64,
    threads: usize,
    rate: f64,
    sockets: usize,
    max: u64,
}

fn usage() -> ! {
    eprintln!("usage: loadgen serve|conn|syn|synhold|udp ADDR[:PORT] [-d SECS] [-t THREADS] [-r RATE] [-s SOCKETS] [-n MAX]");
    std::process::exit(2)
}

fn parse() -> Opts {
    let a: Vec<String> = std::env::args().skip(1).collect();
    if a.len() < 2 {
        usage();
    }
    let mut o = Opts {
        mode: a[0].clone(),
        target: a[1].clone(),
        secs: 5.0,
        threads: 2,
        rate: 0.0,
        sockets: 16,
        max: u64::MAX,
    };
    let mut i = 2;
    while i + 1 < a.len() {
        let v = &a[i + 1];
        match a[i].as_str() {
            "-d" => o.secs = v.parse().unwrap_or_else(|_| usage()),
            "-t" => o.threads = v.parse().unwrap_or_else(|_| usage()),
            "-r" => o.rate = v.parse().unwrap_or_else(|_| usage()),
            "-s" => o.sockets = v.parse().unwrap_or_else(|_| usage()),
            "-n" => o.max = v.parse().unwrap_or_else(|_| usage()),
            _ => usage(),
        }
        i += 2;
    }
    if i != a.len() {
        usage();
    }
    o
}

/// Sleeps while `done` is ahead of `rate` per second since `t0`.
fn pace(t0: Instant, done: u64, rate: f64) {
    if rate <= 0.0 {
        return;
    }
    let due = Duration::from_secs_f64(done as f64 / rate);
    let el = t0.elapsed();
    if due > el {
        std::thread::sleep(due - el);
    }
}

fn linger0(s: &TcpStream) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket and a correctly sized option value.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &l as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as u32,
        );
    }
}

fn serve(o: &Opts) {
    let l = TcpListener::bind(&o.target).expect("bind");
    let l = Arc::new(l);
    let hs: Vec<_> = (0..o.threads.max(1))
        .map(|_| {
            let l = l.clone();
            std::thread::spawn(move || loop {
                if let Ok((s, _)) = l.accept() {
                    drop(s);
                }
            })
        })
        .collect();
    for h in hs {
        let _ = h.join();
    }
}

fn conn(o: &Opts) -> u64 {
    let addr: SocketAddr = o.target.parse().expect("ADDR:PORT");
    let stop = Arc::new(AtomicBool::new(false));
    let n = Arc::new(AtomicU64::new(0));
    let errs = Arc::new(AtomicU64::new(0));
    let hs: Vec<_> = (0..o.threads.max(1))
        .map(|_| {
            let (stop, n, errs) = (stop.clone(), n.clone(), errs.clone());
            std::thread::spawn(move || {
                let mut local = 0;
                while !stop.load(Ordering::Relaxed) {
                    match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                        Ok(s) => {
                            linger0(&s); // RST on close: no TIME_WAIT, ports recycle
                            drop(s);
                            local += 1;
                        }
                        Err(_) => {
                            errs.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                n.fetch_add(local, Ordering::Relaxed);
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(o.secs));
    stop.store(true, Ordering::Relaxed);
    for h in hs {
        let _ = h.join();
    }
    let e = errs.load(Ordering::Relaxed);
    if e > 0 {
        eprintln!("loadgen: {e} connects failed");
    }
    n.load(Ordering::Relaxed)
}

fn syn(o: &Opts) -> u64 {
    syn_loop(o, None)
}

/// SYN_SENT sockets kept open long enough for one retransmit each.
fn synhold(o: &Opts) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain rlimit calls on a struct owned here.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
    syn_loop(o, Some(Duration::from_millis(1500)))
}

fn syn_loop(o: &Opts, hold: Option<Duration>) -> u64 {
    let mut held: std::collections::VecDeque<(Instant, i32)> = Default::default();
    let addr: SocketAddrV4 = o.target.parse().expect("ADDR:PORT");
    let sa = libc::sockaddr_in {
        sin_family: libc::AF_INET as u16,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*addr.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    let t0 = Instant::now();
    let end = Duration::from_secs_f64(o.secs);
    let mut n = 0u64;
    while n < o.max && t0.elapsed() < end {
        for _ in 0..32 {
            // SAFETY: plain socket calls on a descriptor owned here.
            unsafe {
                let fd = libc::socket(
                    libc::AF_INET,
                    libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                    0,
                );
                if fd < 0 {
                    continue;
                }
                libc::connect(
                    fd,
                    &sa as *const _ as *const libc::sockaddr,
                    std::mem::size_of::<libc::sockaddr_in>() as u32,
                );
                match hold {
                    Some(_) => held.push_back((Instant::now(), fd)),
                    None => {
                        libc::close(fd); // SYN_SENT -> CLOSE: nothing more is sent
                    }
                }
            }
            n += 1;
        }
        if let Some(h) = hold {
            while held.front().is_some_and(|(t, _)| t.elapsed() >= h) {
                if let Some((_, fd)) = held.pop_front() {
                    // SAFETY: a descriptor opened above, closed once.
                    unsafe { libc::close(fd) };
                }
            }
        }
        pace(t0, n, o.rate);
    }
    if let Some(h) = hold {
        // the last sockets retransmit too before they close
        std::thread::sleep(h);
    }
    for (_, fd) in held {
        // SAFETY: a descriptor opened above, closed once.
        unsafe { libc::close(fd) };
    }
    n
}

fn udp(o: &Opts) -> u64 {
    let dst: Ipv4Addr = o.target.parse().expect("ADDR");
    let socks: Vec<UdpSocket> = (0..o.sockets.max(1))
        .map(|_| UdpSocket::bind("0.0.0.0:0").expect("bind"))
        .collect();
    const B: usize = 64;
    let payload = [0u8; 16];
    let mut names: Vec<libc::sockaddr_in> = vec![
        libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from(dst).to_be(),
            },
            sin_zero: [0; 8],
        };
        B
    ];
    let mut iov = [libc::iovec {
        iov_base: payload.as_ptr() as *mut libc::c_void,
        iov_len: payload.len(),
    }];
    // SAFETY: mmsghdr is plain data; zero is a valid starting value.
    let mut msgs: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; B];
    let t0 = Instant::now();
    let end = Duration::from_secs_f64(o.secs);
    let mut n = 0u64; // datagrams handed to the kernel
    let mut i = 0u64; // flow index: socket = i / 65535 % S, dport = 1 + i % 65535
    while n < o.max && t0.elapsed() < end {
        let sock = &socks[(i / 65535) as usize % socks.len()];
        let mut k = 0;
        while k < B && (i + k as u64) / 65535 == i / 65535 {
            names[k].sin_port = (1 + ((i + k as u64) % 65535) as u16).to_be();
            msgs[k].msg_hdr.msg_name = &mut names[k] as *mut _ as *mut libc::c_void;
            msgs[k].msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
            msgs[k].msg_hdr.msg_iov = iov.as_mut_ptr();
            msgs[k].msg_hdr.msg_iovlen = 1;
            k += 1;
        }
        let k = k.min((o.max - n).min(B as u64) as usize);
        // SAFETY: msgs[..k] point at live names/iov for the duration of the call.
        let sent = unsafe { libc::sendmmsg(sock.as_raw_fd(), msgs.as_mut_ptr(), k as u32, 0) };
        if sent > 0 {
            n += sent as u64;
            i += sent as u64;
        } else {
            // ENOBUFS/EAGAIN: the device queue is full; skip this tuple
            i += 1;
            std::thread::yield_now();
        }
        pace(t0, n, o.rate);
    }
    n
}

fn main() {
    let o = parse();
    let t0 = Instant::now();
    let n = match o.mode.as_str() {
        "serve" => {
            serve(&o);
            0
        }
        "conn" => conn(&o),
        "syn" => syn(&o),
        "synhold" => synhold(&o),
        "udp" => udp(&o),
        _ => usage(),
    };
    let secs = t0.elapsed().as_secs_f64();
    // SAFETY: getrusage fills the struct it is given.
    let cpu = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
        tv(ru.ru_utime) + tv(ru.ru_stime)
    };
    println!(
        "mode={} count={n} secs={secs:.3} rate={:.1} cpu={cpu:.3}",
        o.mode,
        n as f64 / secs
    );
}
