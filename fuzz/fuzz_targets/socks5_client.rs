//! A SOCKS5 CONNECT negotiation against arbitrary server replies, fed in arbitrary pieces the
//! way the I/O layer does (unconsumed bytes are kept and offered again). The first input byte
//! picks the target kind, the credentials and the chunking; `parse_url` gets the input as text.
#![no_main]

use std::net::SocketAddr;

use libfuzzer_sys::fuzz_target;
use mtpx::proto::socks5::{self, OUT_MAX, Socks5Client, Step, Target};

fn drive(target: Target, auth: Option<(String, String)>, replies: &[u8], seed: u8) {
    let mut c = Socks5Client::new(target, auth);
    let mut out = [0u8; OUT_MAX];
    let n = c.initial(&mut out);
    assert!(n == 3 || n == 4);
    assert_eq!(c.initial(&mut out), 0);

    let mut pending: Vec<u8> = Vec::new();
    let mut pos = 0usize;
    let mut k = u32::from(seed) | 1;
    loop {
        // Offer what is pending; on NeedMore receive the next piece.
        match c.handle(&pending, &mut out) {
            Step::NeedMore => {
                if pos == replies.len() {
                    return;
                }
                k = k.wrapping_mul(1_103_515_245).wrapping_add(12345);
                let len = (1 + (k >> 16) as usize % 16).min(replies.len() - pos);
                pending.extend_from_slice(&replies[pos..pos + len]);
                pos += len;
            }
            Step::Send { consumed, len } => {
                assert!(consumed <= pending.len() && len > 0 && len <= OUT_MAX);
                pending.drain(..consumed);
            }
            Step::Connected { consumed } => {
                assert!(consumed <= pending.len());
                assert!(c.bound().is_some());
                let _ = c.bound().map(ToString::to_string);
                pending.drain(..consumed);
                assert_eq!(
                    c.handle(&pending, &mut out),
                    Step::Connected { consumed: 0 }
                );
                return;
            }
            Step::Failed(e) => {
                let _ = e.as_str();
                assert_eq!(c.handle(&pending, &mut out), Step::Failed(e));
                return;
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(url) = socks5::parse_url(&String::from_utf8_lossy(data)) {
        let _ = format!("{url:?}");
        drive(
            url.server,
            url.auth,
            b"\x05\x02\x01\x00\x05\x00\x00\x01\0\0\0\0\0\0",
            7,
        );
    }

    let Some((&ctl, rest)) = data.split_first() else {
        return;
    };
    // Lengths for the host name and the credentials come from the input too (to reach the
    // BadTarget / CredentialsTooLong paths).
    let (lens, replies) = rest.split_at(rest.len().min(3));
    let len = |i: usize| lens.get(i).map_or(0, |&b| usize::from(b)) * 2;
    let target = match ctl & 3 {
        0 => Target::Ip(SocketAddr::from(([127, 0, 0, 1], 443))),
        1 => Target::Ip("[2001:db8::1]:443".parse().expect("literal")),
        _ => Target::Domain("h".repeat(len(0)), 443),
    };
    let auth = (ctl & 4 != 0).then(|| ("u".repeat(len(1)), "p".repeat(len(2))));
    drive(target, auth, replies, ctl >> 3);
});
