//! mtpx: a small, fast MTProto proxy for Telegram that hides behind a real website.
//!
//! Layering (see `docs/ARCHITECTURE.md`): [`proto`] is pure protocol logic over byte slices,
//! [`io`] is the mio reactor, [`sys`] is the only module allowed to call `libc` with `unsafe`.

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
