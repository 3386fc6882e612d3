//! The one module that calls `libc` directly, for what std and mio lack: socket options
//! (keep-alive tuning, listen backlog), signal handling, and the open-files limit.
//!
//! I/O layer. Every `unsafe` block carries a SAFETY comment; nothing else in the crate may use
//! `unsafe` (`#![deny(unsafe_code)]` at the crate root, allowed only here).

#![allow(unsafe_code)]

use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Raises the soft limit of open files to the hard limit. Returns `(soft, hard)` after the call.
pub fn raise_nofile_limit() -> io::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit struct for the duration of the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        let want = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: `want` is a valid rlimit struct; setrlimit only reads it.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) } == 0 {
            lim = want;
        }
    }
    #[allow(clippy::unnecessary_cast)] // rlim_t is not u64 on every target
    Ok((lim.rlim_cur as u64, lim.rlim_max as u64))
}

fn setsockopt_int(fd: i32, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: we pass a pointer to a live i32 and its exact size; the kernel only reads it.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Turns on TCP keep-alive with the given idle time, probe interval and probe count. On a
/// listening socket the settings are inherited by the accepted sockets.
pub fn set_keepalive(
    sock: &impl AsRawFd,
    idle: Duration,
    interval: Duration,
    count: u32,
) -> io::Result<()> {
    let fd = sock.as_raw_fd();
    let secs = |d: Duration| d.as_secs().clamp(1, i32::MAX as u64) as i32;
    setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1)?;
    setsockopt_int(fd, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, secs(idle))?;
    setsockopt_int(fd, libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, secs(interval))?;
    setsockopt_int(
        fd,
        libc::IPPROTO_TCP,
        libc::TCP_KEEPCNT,
        count.clamp(1, 127) as i32,
    )
}

/// Sets `TCP_NODELAY` (on a listening socket, accepted sockets inherit it).
pub fn set_nodelay(sock: &impl AsRawFd) -> io::Result<()> {
    setsockopt_int(sock.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_NODELAY, 1)
}

/// `send` with `MSG_MORE`: more bytes follow at once, so the kernel may hold a partial segment
/// until the next send (or [`set_nodelay`], which pushes what is held). `MSG_NOSIGNAL`: a
/// closed peer is an `EPIPE` error, not a signal.
pub fn send_more(sock: &impl AsRawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is a live slice; the kernel reads at most `buf.len()` bytes from it.
    let n = unsafe {
        libc::send(
            sock.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_MORE | libc::MSG_NOSIGNAL,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Sets `SO_LINGER` to {on, 0}: closing the socket then sends a reset (RST) instead of a FIN.
pub fn set_linger_zero(sock: &impl AsRawFd) -> io::Result<()> {
    let lin = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: we pass a pointer to a live `linger` struct and its exact size; the kernel only
    // reads it.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&lin as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Sets `TCP_USER_TIMEOUT`: how long sent data may stay unacknowledged before the kernel
/// drops the connection (bounds the life of a connection to a vanished peer).
pub fn set_user_timeout(sock: &impl AsRawFd, timeout: Duration) -> io::Result<()> {
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    setsockopt_int(
        sock.as_raw_fd(),
        libc::IPPROTO_TCP,
        libc::TCP_USER_TIMEOUT,
        ms,
    )
}

/// Reads an integer socket option (tests read back what was set). Panics on failure.
#[cfg(test)]
pub(crate) fn getsockopt_int(fd: i32, level: i32, name: i32) -> i32 {
    let mut v: i32 = 0;
    let mut len = std::mem::size_of::<i32>() as libc::socklen_t;
    // SAFETY: `v` and `len` are live and writable; the kernel writes at most `len` bytes.
    let rc = unsafe { libc::getsockopt(fd, level, name, (&mut v as *mut i32).cast(), &mut len) };
    assert_eq!(rc, 0, "getsockopt: {}", io::Error::last_os_error());
    v
}

/// Re-issues `listen` with a larger backlog on an already listening socket (Linux updates the
/// backlog in place).
pub fn set_listen_backlog(sock: &impl AsRawFd, backlog: i32) -> io::Result<()> {
    // SAFETY: `listen` takes a file descriptor and an integer; an invalid fd yields an error.
    if unsafe { libc::listen(sock.as_raw_fd(), backlog) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Signals seen since start, as bits: 1 = SIGTERM/SIGINT (stop), 2 = SIGHUP (reload).
static SIGNALS: AtomicUsize = AtomicUsize::new(0);
/// Bit set in [`take_signals`] when SIGTERM or SIGINT arrived.
pub const SIG_STOP: usize = 1;
/// Bit set in [`take_signals`] when SIGHUP arrived.
pub const SIG_RELOAD: usize = 2;

extern "C" fn on_signal(sig: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    let bit = if sig == libc::SIGHUP {
        SIG_RELOAD
    } else {
        SIG_STOP
    };
    SIGNALS.fetch_or(bit, Ordering::SeqCst);
}

/// Installs handlers for SIGTERM, SIGINT and SIGHUP that only record the signal (see
/// [`take_signals`]), and ignores SIGPIPE (a write to a closed socket is an error, not death).
pub fn install_signal_handlers() -> io::Result<()> {
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        // SAFETY: a zeroed sigaction is a valid starting value; we set the handler to an
        // `extern "C"` function that only performs an atomic store, which is async-signal-safe.
        let rc = unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as libc::sighandler_t;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    // SAFETY: setting SIGPIPE to SIG_IGN is always valid.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
    Ok(())
}

/// Returns and clears the signals recorded since the last call ([`SIG_STOP`], [`SIG_RELOAD`]).
pub fn take_signals() -> usize {
    SIGNALS.swap(0, Ordering::SeqCst)
}

/// CPU time (user + system) consumed by this process so far.
pub fn process_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// The static release binary never unwinds: it is built with `panic = "abort"` and its unwind
/// tables are discarded at link time (mk/no-unwind-tables.ld). Yet std's panic hook can still
/// walk the stack for `RUST_BACKTRACE` (gimli, addr2line, a DWARF decompressor, a demangler) and
/// std's precompiled landing pads and personality routine name libunwind's entry points, which
/// links all of libunwind: about 200 KiB of a 1 MiB budget. These definitions stand in for the
/// entry points std uses, as libunwind itself behaves without unwind tables: a stack walk finds
/// no frame (libunwind returns end-of-stack at the first step, so the backtrace was already
/// empty) and nothing is ever unwound. With them in the link, the linker pulls nothing from
/// libunwind.a (a symbol std starts to use one day would pull its member and clash: a link
/// error, never a silent change), and LTO sees that the walk never calls back, dropping the
/// symbolizer. Only under `panic = "abort"`: test builds unwind and keep the real library.
#[cfg(all(panic = "abort", target_env = "musl", target_feature = "crt-static"))]
mod no_unwind {
    use std::ffi::{c_int, c_void};

    const END_OF_STACK: c_int = 5; // _URC_END_OF_STACK

    // SAFETY (for each `no_mangle` below): the names are libunwind's C ABI, with its signatures
    // (std's `unwind` crate declares them so). Under panic = "abort" std calls them only from a
    // stack walk, which the first returns from at once, and from unwinding, which never starts;
    // none dereferences its arguments.
    #[unsafe(no_mangle)]
    extern "C" fn _Unwind_Backtrace(
        _trace: extern "C" fn(*mut c_void, *mut c_void) -> c_int,
        _arg: *mut c_void,
    ) -> c_int {
        END_OF_STACK
    }

    #[unsafe(no_mangle)]
    extern "C" fn _Unwind_Resume(_exception: *mut c_void) -> ! {
        std::process::abort()
    }

    #[unsafe(no_mangle)]
    extern "C" fn _Unwind_GetIP(_ctx: *mut c_void) -> usize {
        0
    }

    #[unsafe(no_mangle)]
    extern "C" fn _Unwind_GetIPInfo(_ctx: *mut c_void, _before: *mut c_int) -> usize {
        0
    }

    #[unsafe(no_mangle)]
    extern "C" fn _Unwind_SetIP(_ctx: *mut c_void, _value: usize) {}

    #[unsafe(no_mangle)]
    extern "C" fn _Unwind_SetGR(_ctx: *mut c_void, _index: c_int, _value: usize) {}

    #[unsafe(no_mangle)]
    extern "C" fn _Unwind_GetLanguageSpecificData(_ctx: *mut c_void) -> *mut c_void {
        std::ptr::null_mut()
    }

    #[unsafe(no_mangle)]
    extern "C" fn _Unwind_GetRegionStart(_ctx: *mut c_void) -> usize {
        0
    }

    #[unsafe(no_mangle)]
    extern "C" fn _Unwind_GetDataRelBase(_ctx: *mut c_void) -> usize {
        0
    }

    #[unsafe(no_mangle)]
    extern "C" fn _Unwind_GetTextRelBase(_ctx: *mut c_void) -> usize {
        0
    }
}

/// std names each spawned thread (`mtpx-worker-0`, `mtpx-log`, …, shown by `top -H` and in
/// panic messages) with `pthread_setname_np(pthread_self(), name)`. musl's version can also name
/// another thread, through `snprintf("/proc/self/task/%d/comm")`, which links musl's whole
/// printf (floating point included): about 11 KiB of the static binary for a path std never
/// takes. This definition replaces it in the static build, for the calling thread only, with
/// the `prctl` musl itself uses for that case; naming another thread returns `ENOTSUP`.
#[cfg(all(target_env = "musl", target_feature = "crt-static"))]
mod thread_name {
    use std::ffi::{c_char, c_int};

    // SAFETY: the name and signature are POSIX's (as the libc crate declares them); the body
    // only hands `name`, a NUL-terminated string per that contract, to the kernel, which reads
    // at most 16 bytes of it.
    #[unsafe(no_mangle)]
    extern "C" fn pthread_setname_np(thread: libc::pthread_t, name: *const c_char) -> c_int {
        // SAFETY: pthread_self has no preconditions.
        if thread != unsafe { libc::pthread_self() } {
            return libc::ENOTSUP;
        }
        // SAFETY: `name` is NUL-terminated (the caller's contract); PR_SET_NAME copies at most
        // 16 bytes of it (truncating, as musl does) and takes no other pointer.
        if unsafe { libc::prctl(libc::PR_SET_NAME, name, 0, 0, 0) } == 0 {
            0
        } else {
            std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EINVAL)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nofile_limit_is_raised_to_hard() {
        let (soft, hard) = raise_nofile_limit().expect("getrlimit");
        assert_eq!(soft, hard);
    }

    #[test]
    fn keepalive_and_backlog_apply_to_real_sockets() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        set_listen_backlog(&l, 4096).unwrap();
        let s = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        set_keepalive(&s, Duration::from_secs(30), Duration::from_secs(10), 3).unwrap();
        set_user_timeout(&s, Duration::from_secs(60)).unwrap();
        // With linger {on, 0}, closing resets the connection: the peer's read fails with
        // ECONNRESET instead of returning EOF.
        let (peer, _) = l.accept().unwrap();
        set_linger_zero(&peer).unwrap();
        drop(peer);
        let mut buf = [0u8; 1];
        let mut s = s;
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let err = std::io::Read::read(&mut s, &mut buf).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
    }

    #[test]
    fn keepalive_on_the_listener_is_inherited_by_accepted_sockets() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        set_keepalive(&l, Duration::from_secs(33), Duration::from_secs(7), 4).unwrap();
        set_nodelay(&l).unwrap();
        let _c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (a, _) = l.accept().unwrap();
        let fd = a.as_raw_fd();
        assert_eq!(getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE), 1);
        assert_eq!(
            getsockopt_int(fd, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE),
            33
        );
        assert_eq!(
            getsockopt_int(fd, libc::IPPROTO_TCP, libc::TCP_KEEPINTVL),
            7
        );
        assert_eq!(getsockopt_int(fd, libc::IPPROTO_TCP, libc::TCP_KEEPCNT), 4);
        assert!(a.nodelay().unwrap());
    }

    #[test]
    fn bytes_sent_with_more_to_follow_arrive_once_pushed() {
        // The relay's contract with the kernel: a partial segment sent with MSG_MORE is held
        // (nothing in flight, so no ACK releases it; Linux sends it after 200 ms) until
        // TCP_NODELAY is set again.
        let unsent = |s: &std::net::TcpStream| {
            let mut n: libc::c_int = 0;
            // SAFETY: SIOCOUTQNSD writes one int to the live `n`.
            let rc = unsafe { libc::ioctl(s.as_raw_fd(), libc::SIOCOUTQNSD as _, &mut n) };
            assert_eq!(rc, 0, "SIOCOUTQNSD: {}", io::Error::last_os_error());
            n
        };
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let s = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut peer, _) = l.accept().unwrap();
        set_nodelay(&s).unwrap();
        assert_eq!(send_more(&s, &[7u8; 1000]).unwrap(), 1000);
        assert_eq!(unsent(&s), 1000, "held by MSG_MORE");
        set_nodelay(&s).unwrap();
        assert_eq!(unsent(&s), 0, "pushed");
        peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 1000];
        std::io::Read::read_exact(&mut peer, &mut buf).unwrap();
        assert_eq!(buf, [7u8; 1000]);
    }

    #[test]
    fn cpu_time_advances() {
        let a = process_cpu_time();
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_add(i * i);
        }
        std::hint::black_box(x);
        assert!(process_cpu_time() > a);
    }
}
