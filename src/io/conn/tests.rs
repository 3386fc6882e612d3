//! The connection machine without the kernel: scripted fake sockets.

use super::*;

#[test]
fn connection_state_stays_small() {
    // An idle connection costs its slab slot and nothing else (no buffers), so this size
    // is the per-connection memory floor of the proxy (issue: ≤ 2 KiB per idle connection).
    let size = std::mem::size_of::<Option<Conn<mio::net::TcpStream>>>();
    eprintln!(
        "Option<Conn> = {size} bytes, handshake {}, dial {}, relay {}",
        std::mem::size_of::<handshake::Hs>(),
        std::mem::size_of::<dial::Dial<mio::net::TcpStream>>(),
        std::mem::size_of::<relay::Relay<mio::net::TcpStream>>()
    );
    assert!(size <= 640, "Option<Conn> grew to {size} bytes");
}
