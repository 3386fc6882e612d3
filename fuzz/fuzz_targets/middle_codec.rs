//! The middle-proxy session codec. The decoder gets arbitrary *plaintext* (encrypted here with
//! the link's key, so that every packet state is reachable) in arbitrary pieces; the encoder
//! gets the same bytes as client transport data with arbitrary output room. The first byte
//! picks the client transport, the piece sizes and the room.
//!
//! Besides not panicking: the decoder never writes before `at` nor more than
//! `len + HEADROOM` bytes per call; the encoder writes whole cipher blocks within `out` and
//! never takes more than it was given.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mtpx::proto::XorShift64;
use mtpx::proto::middle::CompactCbc;
use mtpx::proto::middle::codec::{HEADROOM, Link, SessionParams};
use mtpx::proto::obfs2::Tag;

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, rest)) = data.split_first() else {
        return;
    };
    let tag = match ctl % 3 {
        0 => Tag::Abridged,
        1 => Tag::Intermediate,
        _ => Tag::Padded,
    };
    let key = ([3u8; 32], [4u8; 16]);
    let link = Link::from_keys(CompactCbc::new([1; 32], [2; 16]), CompactCbc::new(key.0, key.1));
    let (mut enc, mut dec) = link.session(&SessionParams {
        tag,
        conn_id: u64::from_le_bytes(*b"conn-id!"),
        client: "198.51.100.9:50123".parse().expect("literal"),
        ours: "203.0.113.5:443".parse().expect("literal"),
        ad_tag: (ctl & 8 != 0).then_some([7; 16]),
    });

    // Decoder: the input as plaintext, padded to whole blocks and encrypted.
    let mut wire = rest.to_vec();
    wire.resize(wire.len().div_ceil(16) * 16, 4);
    CompactCbc::new(key.0, key.1).encrypt(&mut wire);
    let piece = 1 + usize::from(ctl >> 4) * 7;
    let mut rng = XorShift64(u64::from(ctl));
    for chunk in wire.chunks(piece) {
        let at = 3;
        let mut buf = vec![0xa5u8; at + HEADROOM + chunk.len()];
        buf[at + HEADROOM..].copy_from_slice(chunk);
        match dec.decode(&mut buf, at, chunk.len(), &mut rng) {
            Ok(d) => {
                assert!(d.out <= chunk.len() + HEADROOM);
                assert!(buf[..at].iter().all(|&b| b == 0xa5));
            }
            Err(e) => {
                let _ = e.as_str();
                break;
            }
        }
    }

    // Encoder: the input as client transport bytes.
    let room = 16 + usize::from(ctl) * 3;
    let mut out = vec![0u8; room];
    let mut pending: &[u8] = rest;
    for _ in 0..4 * rest.len() + 4 {
        match enc.encode(pending, &mut out) {
            Ok(e) => {
                assert!(e.consumed <= pending.len());
                assert!(e.written % 16 == 0 && e.written <= out.len());
                pending = &pending[e.consumed..];
                if e.consumed == 0 && e.written == 0 {
                    break;
                }
            }
            Err(e) => {
                let _ = e.as_str();
                break;
            }
        }
    }
    let _ = enc.close(&mut out);
});
