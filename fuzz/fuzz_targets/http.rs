//! The small HTTP/1.x code: `parse_request` (metrics endpoint), `parse_response_head` and
//! `ChunkedDecoder` (list downloads, DoH), `parse_http_url`. Besides not panicking:
//! a complete head is never refused on one of its prefixes (they are all `NeedMore`), and
//! the chunked decoder gives the same body and verdict whether fed at once or in pieces.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mtpx::formats::http::{self, BodyError, ChunkedDecoder, RequestParse, ResponseParse};

/// Body cap for the decoder: small enough for the fuzzer to reach `TooLarge`.
const CAP: usize = 4096;

fn feed_whole(body: &[u8]) -> (Result<usize, BodyError>, Vec<u8>, bool) {
    let mut d = ChunkedDecoder::new(CAP);
    let mut out = Vec::new();
    let r = d.feed(body, &mut out).map(|p| {
        assert!(p.consumed <= body.len());
        assert!(p.done || p.consumed == body.len());
        assert_eq!(p.done, d.is_done());
        p.consumed
    });
    assert!(out.len() <= CAP && d.body_len() == out.len());
    (r, out, d.is_done())
}

fn feed_pieces(body: &[u8], seed: u8) -> (Result<usize, BodyError>, Vec<u8>, bool) {
    let mut d = ChunkedDecoder::new(CAP);
    let mut out = Vec::new();
    let mut pos = 0usize;
    let mut k = u32::from(seed) | 1;
    while pos < body.len() {
        k = k.wrapping_mul(1_103_515_245).wrapping_add(12345);
        let len = (1 + (k >> 16) as usize % 64).min(body.len() - pos);
        match d.feed(&body[pos..pos + len], &mut out) {
            Ok(p) => {
                assert!(p.consumed <= len);
                pos += p.consumed;
                if p.done {
                    break;
                }
                assert_eq!(p.consumed, len);
            }
            Err(e) => {
                assert_eq!(d.feed(b"0\r\n\r\n", &mut out), Err(BodyError::Invalid));
                return (Err(e), out, false);
            }
        }
    }
    (Ok(pos), out, d.is_done())
}

fn chunked(body: &[u8], seed: u8) {
    let whole = feed_whole(body);
    let pieces = feed_pieces(body, seed);
    match (&whole.0, &pieces.0) {
        (Ok(_), Ok(_)) => assert_eq!(whole, pieces),
        (Err(a), Err(b)) => assert_eq!(a, b),
        _ => panic!("whole {:?} vs pieces {:?}", whole.0, pieces.0),
    }
}

fuzz_target!(|data: &[u8]| {
    if let RequestParse::Request { consumed, path, .. } = http::parse_request(data) {
        assert!(consumed <= data.len() && path.starts_with('/'));
        for cut in [0, 1, consumed / 2, consumed.saturating_sub(1)] {
            if cut < consumed {
                assert_eq!(
                    http::parse_request(&data[..cut]),
                    RequestParse::NeedMore,
                    "prefix of {cut} bytes of a valid request"
                );
            }
        }
    }

    match http::parse_response_head(data) {
        ResponseParse::Head {
            consumed,
            chunked: is_chunked,
            ..
        } => {
            assert!(consumed <= data.len());
            for cut in [0, 1, consumed / 2, consumed.saturating_sub(1)] {
                if cut < consumed {
                    assert_eq!(
                        http::parse_response_head(&data[..cut]),
                        ResponseParse::NeedMore,
                        "prefix of {cut} bytes of a valid response head"
                    );
                }
            }
            if is_chunked {
                chunked(&data[consumed..], data[0]);
            }
        }
        ResponseParse::NeedMore | ResponseParse::Invalid => {}
    }

    if let Some((&seed, rest)) = data.split_first() {
        chunked(rest, seed);
    }

    let text = String::from_utf8_lossy(data);
    if let Ok((host, port, path)) = http::parse_http_url(&text) {
        assert!(!host.is_empty() && port != 0 && path.starts_with('/'));
        let _ = http::host_header(&host, port);
        let _ = http::build_get(&host, &path);
    }
});
