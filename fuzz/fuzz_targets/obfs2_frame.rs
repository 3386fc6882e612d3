//! obfuscated2: the proxy's side of a client's 64-byte frame (the input padded with zeros or
//! trimmed to 64 bytes), the keystreams over the rest of the input, the start checks and the DC
//! side. A random 64-byte frame almost never carries a valid tag, so when the input's first
//! byte says so, a genuine frame is built by `client_frame` from the input's bytes (as the
//! random source) and must be accepted with its tag and DC.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mtpx::proto::obfs2::{self, FRAME_LEN, Tag};
use mtpx::proto::{Rng, XorShift64};

const KEY: [u8; 16] = *b"0123456789abcdef";

/// Randomness taken from the fuzz input, then from a PRNG once the input is used up (so that
/// `client_frame`'s retry loop always ends).
struct InputRng<'a> {
    data: &'a [u8],
    prng: XorShift64,
}

impl Rng for InputRng<'_> {
    fn fill(&mut self, buf: &mut [u8]) {
        let n = buf.len().min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        self.prng.fill(&mut buf[n..]);
    }
}

fn raw(data: &[u8]) {
    let mut frame = [0u8; FRAME_LEN];
    let n = data.len().min(FRAME_LEN);
    frame[..n].copy_from_slice(&data[..n]);
    let rest = data.get(FRAME_LEN..).unwrap_or(&[]);

    let _ = obfs2::is_valid_start(&frame);
    let _ = obfs2::is_forbidden_start(data);
    let _ = obfs2::replay_key(&frame);
    if let Ok(mut hs) = obfs2::client_handshake(&frame, &KEY) {
        let _ = hs.tag.as_str();
        let mut buf = rest.to_vec();
        hs.decrypt.apply_keystream(&mut buf);
        hs.encrypt.apply_keystream(&mut buf);
    }
    // The DC side parses the same layout without a secret.
    if let Ok((tag, _dc, _dec, _enc)) = obfs2::dc_accept(&frame) {
        assert_eq!(Tag::from_bytes(tag.bytes()), Some(tag));
    }
}

fn genuine(data: &[u8]) {
    let [t, d0, d1, rest @ ..] = data else {
        return;
    };
    let tag = [Tag::Abridged, Tag::Intermediate, Tag::Padded][usize::from(*t) % 3];
    let dc = i16::from_le_bytes([*d0, *d1]);
    let mut rng = InputRng {
        data: rest,
        prng: XorShift64(0x5eed),
    };
    let (wire, _enc, _dec) = obfs2::client_frame(&mut rng, &KEY, tag, dc);
    assert!(obfs2::is_valid_start(&wire));
    assert!(!obfs2::is_forbidden_start(&wire));
    let hs = obfs2::client_handshake(&wire, &KEY).expect("a genuine frame is accepted");
    assert_eq!((hs.tag, hs.dc), (tag, dc));
    let mut other = KEY;
    other[0] ^= 1;
    // Under another secret the tag is (almost surely) garbage; it must not panic either way.
    let _ = obfs2::client_handshake(&wire, &other);
    let _ = obfs2::dc_accept(&wire);
}

fuzz_target!(|data: &[u8]| {
    match data.split_first() {
        Some((&0xff, rest)) => genuine(rest),
        _ => raw(data),
    }
});
