//! `RecordReader::deframe_in_place` over arbitrary chunkings of a record stream: the output
//! must never exceed the input, and (as long as no chunking errs) must equal the output of
//! deframing the whole stream at once.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mtpx::proto::faketls::RecordReader;

fuzz_target!(|data: &[u8]| {
    // The first byte seeds the chunk sizes; the rest is the stream.
    let Some((&seed, stream)) = data.split_first() else {
        return;
    };
    let mut whole = stream.to_vec();
    let mut r = RecordReader::new();
    let whole_res = r.deframe_in_place(&mut whole);
    if let Ok(n) = whole_res {
        assert!(n <= stream.len());
        whole.truncate(n);
    }

    let mut r = RecordReader::new();
    let mut out = Vec::new();
    let mut pos = 0usize;
    let mut k = u32::from(seed) | 1;
    let mut chunked_res = Ok(0);
    while pos < stream.len() {
        k = k.wrapping_mul(1_103_515_245).wrapping_add(12345);
        let len = (1 + (k >> 16) as usize % 700).min(stream.len() - pos);
        let mut chunk = stream[pos..pos + len].to_vec();
        match r.deframe_in_place(&mut chunk) {
            Ok(n) => {
                assert!(n <= len);
                out.extend_from_slice(&chunk[..n]);
            }
            Err(e) => {
                chunked_res = Err(e);
                break;
            }
        }
        pos += len;
    }
    match (whole_res, chunked_res) {
        (Ok(_), Ok(_)) => assert_eq!(out, whole),
        (Err(a), Err(b)) => assert_eq!(a, b),
        (a, b) => panic!("whole: {a:?}, chunked: {b:?}"),
    }
    let _ = r.at_boundary();
});
