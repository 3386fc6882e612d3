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
}
