//! The middle-proxy RPC handshake against arbitrary answers, fed in arbitrary pieces the way
//! the I/O layer does (unconsumed bytes offered again). The first input byte picks the
//! chunking. Never a panic; `Connected` only after consuming input; a failure repeats.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mtpx::proto::middle::handshake::{HsParams, HsStep, MeHandshake, OUT_MAX};
use mtpx::proto::middle::process_id;

fuzz_target!(|data: &[u8]| {
    let Some((&seed, replies)) = data.split_first() else {
        return;
    };
    let secret: Vec<u8> = (0..128u32).map(|i| (i * 37 + 11) as u8).collect();
    let p = HsParams {
        secret: &secret,
        ours: "203.0.113.5:41000".parse().expect("literal"),
        theirs: "149.154.175.50:8888".parse().expect("literal"),
        now_unix: 1_700_000_000,
        nonce: [0x5a; 16],
        pid: process_id("203.0.113.5".parse().expect("literal"), 1, 2),
    };
    let mut hs = MeHandshake::new(&p).expect("valid secret");
    let mut out = [0u8; OUT_MAX];
    assert_eq!(hs.start(&mut out), 44);
    let mut pending: Vec<u8> = Vec::new();
    let mut pos = 0usize;
    let mut k = u32::from(seed) | 1;
    loop {
        match hs.handle(&pending, &mut out) {
            HsStep::NeedMore { consumed } => {
                assert!(consumed <= pending.len());
                pending.drain(..consumed);
                if pos == replies.len() {
                    return;
                }
                k = k.wrapping_mul(1_103_515_245).wrapping_add(12345);
                let len = (1 + (k >> 16) as usize % 64).min(replies.len() - pos);
                pending.extend_from_slice(&replies[pos..pos + len]);
                pos += len;
            }
            HsStep::Send { consumed, len } => {
                assert!(consumed <= pending.len() && len == 48);
                pending.drain(..consumed);
            }
            HsStep::Connected { consumed, .. } => {
                assert!(consumed > 0 && consumed <= pending.len());
                return;
            }
            HsStep::Failed(e) => {
                let _ = e.as_str();
                assert!(matches!(hs.handle(&pending, &mut out), HsStep::Failed(_)));
                return;
            }
        }
    }
});
