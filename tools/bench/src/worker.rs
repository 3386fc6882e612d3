//! A load-generator process: commands on stdin, one answer line each on stdout.
//!
//! ```text
//! open N T        open N idle connections (handshake done, DC answered) with T threads
//!                 -> "opened <ok> <failed> <ms>"
//! close T         close all held connections (the DC closes first) -> "closed <n> <ms>"
//! hs MS T MAX     T threads do complete handshakes for MS ms (at most MAX each)
//!                 -> "hs <count> <errors> <latency_us>..."
//! up BYTES C      C connections upload BYTES in total -> "xfer <bytes_ok> <us> <errors>"
//! down BYTES C    same, download
//! quit
//! ```

use std::io::{self, BufRead, Write};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;

/// DC ids the clients spread over (each mapped to a fake DC process by the orchestrator).
const DCS: [i16; 4] = [1, 2, 3, 4];

pub fn run(target: Target) -> io::Result<()> {
    crate::die_with_parent();
    let held: Arc<Mutex<Vec<Client>>> = Arc::new(Mutex::new(Vec::new()));
    let stdin = io::stdin();
    let mut out = io::stdout();
    for line in stdin.lock().lines() {
        let line = line?;
        let w: Vec<&str> = line.split_whitespace().collect();
        let num = |i: usize| -> u64 { w.get(i).and_then(|v| v.parse().ok()).unwrap_or(0) };
        let answer = match w.first().copied() {
            Some("open") => open(&target, &held, num(1) as usize, num(2).max(1) as usize),
            Some("close") => close(&held, num(1).max(1) as usize),
            Some("hs") => handshakes(&target, num(1), num(2).max(1) as usize, num(3)),
            Some("up") => transfer(&target, true, num(1), num(2).max(1) as usize),
            Some("down") => transfer(&target, false, num(1), num(2).max(1) as usize),
            Some("quit") | None => break,
            Some(other) => format!("error unknown command {other}"),
        };
        writeln!(out, "{answer}")?;
        out.flush()?;
    }
    Ok(())
}

/// One idle connection: full handshake, then the DC's answer byte.
fn open_one(t: &Target, i: usize, flags: u8) -> io::Result<Client> {
    let mut c = Client::connect(t, DCS[i % DCS.len()], command(OP_HOLD, flags, 0), 64)?;
    let b = c.recv_exact(1)?;
    if b[0] != HELLO_BYTE {
        return Err(io::Error::other("wrong answer byte"));
    }
    Ok(c)
}

fn open(t: &Target, held: &Arc<Mutex<Vec<Client>>>, n: usize, threads: usize) -> String {
    let start = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let mut hs = Vec::new();
    for _ in 0..threads.min(n.max(1)) {
        let (t, held, next, failed) = (t.clone(), held.clone(), next.clone(), failed.clone());
        hs.push(std::thread::spawn(move || {
            let mut mine = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                match open_one(&t, i, 0) {
                    Ok(c) => mine.push(c),
                    Err(e) => {
                        if failed.fetch_add(1, Ordering::Relaxed) < 3 {
                            eprintln!("worker: open failed: {e}");
                        }
                    }
                }
            }
            held.lock().unwrap_or_else(|p| p.into_inner()).extend(mine);
        }));
    }
    for h in hs {
        let _ = h.join();
    }
    let f = failed.load(Ordering::Relaxed);
    format!("opened {} {} {}", n - f, f, start.elapsed().as_millis())
}

fn close(held: &Arc<Mutex<Vec<Client>>>, threads: usize) -> String {
    let start = Instant::now();
    let all: Vec<Client> = std::mem::take(&mut *held.lock().unwrap_or_else(|p| p.into_inner()));
    let n = all.len();
    let work = Arc::new(Mutex::new(all));
    let mut hs = Vec::new();
    for _ in 0..threads {
        let work = work.clone();
        hs.push(std::thread::spawn(move || {
            let mut out = Vec::with_capacity(64);
            loop {
                let c = work.lock().unwrap_or_else(|p| p.into_inner()).pop();
                let Some(mut c) = c else { break };
                // One byte asks the DC to close first; then wait for the proxy's EOF.
                let _ = c.send(b"Q", &mut out).and_then(|_| c.drain_to_eof());
            }
        }));
    }
    for h in hs {
        let _ = h.join();
    }
    format!("closed {n} {}", start.elapsed().as_millis())
}

fn handshakes(t: &Target, ms: u64, threads: usize, max_each: u64) -> String {
    let deadline = Instant::now() + Duration::from_millis(ms);
    let errors = Arc::new(AtomicU64::new(0));
    let barrier = Arc::new(Barrier::new(threads));
    let mut hs = Vec::new();
    for k in 0..threads {
        let (t, errors, barrier) = (t.clone(), errors.clone(), barrier.clone());
        hs.push(std::thread::spawn(move || {
            let mut lat = Vec::new();
            barrier.wait();
            let mut i = k;
            while Instant::now() < deadline && (lat.len() as u64) < max_each {
                let t0 = Instant::now();
                match open_one(&t, i, FLAG_CLOSE) {
                    Ok(mut c) => {
                        lat.push(t0.elapsed().as_micros() as u64);
                        // The DC closes first; the proxy then ends our side.
                        if c.drain_to_eof().is_err() {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(e) => {
                        if errors.fetch_add(1, Ordering::Relaxed) < 3 {
                            eprintln!("worker: handshake failed: {e}");
                        }
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
                i += threads;
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for h in hs {
        if let Ok(v) = h.join() {
            all.extend(v);
        }
    }
    let mut s = format!("hs {} {}", all.len(), errors.load(Ordering::Relaxed));
    for l in all {
        s.push(' ');
        s.push_str(&l.to_string());
    }
    s
}

fn transfer(t: &Target, up: bool, total: u64, conns: usize) -> String {
    let each = total / conns as u64;
    let barrier = Arc::new(Barrier::new(conns + 1));
    let ok_bytes = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let mut hs = Vec::new();
    for i in 0..conns {
        let (t, barrier, ok_bytes, errors) =
            (t.clone(), barrier.clone(), ok_bytes.clone(), errors.clone());
        hs.push(std::thread::spawn(move || {
            let op = if up { OP_UP } else { OP_DOWN };
            let c = Client::connect(&t, DCS[i % DCS.len()], command(op, 0, each), 4 * CHUNK);
            barrier.wait();
            let r = c.and_then(|mut c| {
                if up {
                    upload(&mut c, each)
                } else {
                    download(&mut c, each)
                }
            });
            match r {
                Ok(()) => {
                    ok_bytes.fetch_add(each, Ordering::Relaxed);
                }
                Err(e) => {
                    if errors.fetch_add(1, Ordering::Relaxed) < 3 {
                        eprintln!("worker: transfer failed: {e}");
                    }
                }
            }
        }));
    }
    barrier.wait();
    let start = Instant::now();
    for h in hs {
        let _ = h.join();
    }
    format!(
        "xfer {} {} {}",
        ok_bytes.load(Ordering::Relaxed),
        start.elapsed().as_micros(),
        errors.load(Ordering::Relaxed)
    )
}

fn upload(c: &mut Client, n: u64) -> io::Result<()> {
    let mut out = Vec::with_capacity(CHUNK + 5 * (CHUNK / RECORD + 1));
    let mut pos = 0u64;
    while pos < n {
        let k = ((n - pos) as usize).min(CHUNK);
        c.send(pattern(pos, k), &mut out)?;
        pos += k as u64;
    }
    let r = c.recv_exact(REPLY_LEN)?;
    let got = u64::from_le_bytes(r[8..16].try_into().unwrap_or([0; 8]));
    if r[0] != 1 || got != n {
        return Err(io::Error::other(format!(
            "DC saw {got} of {n} bytes, pattern ok = {}",
            r[0]
        )));
    }
    c.drain_to_eof()?;
    Ok(())
}

fn download(c: &mut Client, n: u64) -> io::Result<()> {
    let mut pos = 0u64;
    loop {
        let d = c.recv()?;
        if d.is_empty() {
            break;
        }
        if pos + d.len() as u64 > n || !pattern_ok(pos, d) {
            return Err(io::Error::other(format!("download: bad bytes at {pos}")));
        }
        pos += d.len() as u64;
    }
    if pos != n {
        return Err(io::Error::other(format!("download: {pos} of {n} bytes")));
    }
    Ok(())
}
