//! mtpx: a small, fast MTProto proxy for Telegram that hides behind a real website.
//!
//! Layering (see `docs/ARCHITECTURE.md`): [`proto`] is the relay's pure protocol logic over
//! byte slices and [`formats`] the other pure formats; [`io`] is the event loop (mio reactor)
//! and [`background`] the threads beside it; [`sys`] is the only module allowed to call `libc`
//! with `unsafe`.

#![deny(unsafe_code)]
#![warn(unreachable_pub)]

pub mod background;
pub mod cli;
pub mod config;
pub mod doctor;
pub mod formats;
pub mod io;
pub mod links;
pub mod log;
pub mod proto;
pub mod sys;

/// Test helpers the pure modules may use without reading the clock themselves.
#[cfg(test)]
pub(crate) mod testing {
    /// A base time for tests of pure code, which then only adds `Duration`s to it.
    pub(crate) fn t0() -> std::time::Instant {
        std::time::Instant::now()
    }

    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    /// A fresh directory under the system's temporary one, removed on drop.
    pub(crate) struct TempDir(pub(crate) std::path::PathBuf);

    impl TempDir {
        pub(crate) fn new(tag: &str) -> TempDir {
            static NEXT: AtomicU64 = AtomicU64::new(1);
            let p = std::env::temp_dir().join(format!(
                "mtpx-{tag}-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }

        /// Writes `data` to `name` in it; returns the file's path.
        pub(crate) fn file(&self, name: &str, data: impl AsRef<[u8]>) -> String {
            let p = self.0.join(name);
            std::fs::write(&p, data).unwrap();
            p.display().to_string()
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Serves `responses` in turn, one per connection, on 127.0.0.1; returns the URL base and
    /// a handle that yields the requests' heads.
    pub(crate) fn http_server(
        responses: Vec<Vec<u8>>,
    ) -> (String, std::thread::JoinHandle<Vec<String>>) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let h = std::thread::spawn(move || {
            let mut requests = Vec::new();
            for r in responses {
                let (mut s, _) = l.accept().unwrap();
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut req = Vec::new();
                let mut b = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut b) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => req.extend_from_slice(&b[..n]),
                    }
                }
                requests.push(String::from_utf8_lossy(&req).into_owned());
                let _ = s.write_all(&r);
            }
            requests
        });
        (format!("http://{addr}"), h)
    }
}
