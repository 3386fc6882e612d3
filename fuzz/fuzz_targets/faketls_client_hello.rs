//! The FakeTLS handshake as the proxy runs it on a client's first bytes: reassemble the
//! ClientHello from records (`read_client_hello`, also on prefixes: a decision made on a prefix
//! must not change when more bytes arrive), parse it, verify it against a fixed secret, and
//! answer it (`write_server_hello_as`) the way `io::conn` does. A second mode builds a genuine
//! Telegram-shaped hello for a fuzzed host and checks it verifies. Every parsed hello also gets
//! its JA4 fingerprint, and is answered with the built-in template and with an X25519MLKEM768
//! one (a real OpenSSL 3.5 site's): the post-quantum share only for a hello that offered one.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mtpx::proto::XorShift64;
use mtpx::proto::faketls::{self, HelloRead};
use mtpx::proto::tlsprofile::{self, GROUP_X25519, GROUP_X25519_MLKEM768, HelloKind};

const KEY: [u8; 16] = *b"0123456789abcdef";
const HOST: &[u8] = b"www.example.com";
const NOW: u64 = 1_700_000_000;
const TOLERANCE: u64 = 300;
/// What `io::worker` gives `read_client_hello` (buf_size.max(32 KiB)).
const SCRATCH: usize = 32 * 1024;

const PQ_FLIGHT: &[u8] = include_bytes!("../../tests/data/tls/openssl35-pq-flight.bin");

fn answer(hello: &faketls::ClientHello, scratch: &mut [u8]) {
    let pq = tlsprofile::parse_server_flight(PQ_FLIGHT).expect("the capture parses");
    answer_as(hello, scratch, &Default::default());
    answer_as(hello, scratch, &pq.server_hello);
}

fn answer_as(
    hello: &faketls::ClientHello,
    scratch: &mut [u8],
    template: &tlsprofile::ServerHelloTemplate,
) {
    let template = *template;
    let mut rng = XorShift64(1);
    let room = faketls::noise_room(&template, hello.session_id_len, scratch.len());
    let n = faketls::write_server_hello_as(
        scratch,
        hello,
        &KEY,
        &mut rng,
        &template,
        room.min(4000),
        &[9; 32],
    );
    assert!(n > 0 && n <= scratch.len());
    let flight = scratch[..n].to_vec();
    assert_eq!(
        faketls::verify_server_flight(&flight, &hello.random, &KEY),
        Ok(Some(n))
    );
    // Never a group the client did not offer.
    let o = tlsprofile::parse_server_flight(&flight).expect("our flight parses");
    let want = if hello.kind() == HelloKind::PostQuantum
        && template.key_share_group() == Some(GROUP_X25519_MLKEM768)
    {
        GROUP_X25519_MLKEM768
    } else {
        GROUP_X25519
    };
    assert_eq!(o.server_hello.key_share_group(), Some(want));
}

fn check_hello(msg: &[u8], scratch: &mut [u8]) {
    let fp = mtpx::proto::ja4::fingerprint(msg);
    assert!(fp.is_none_or(|f| f.iter().all(u8::is_ascii_graphic)));
    let Ok(hello) = faketls::parse_client_hello(msg) else {
        return;
    };
    let _ = hello.session_id();
    let _ = hello.offers(0x1301);
    let _ = hello.sni_names(msg).count();
    let verdict = faketls::verify_client_hello(&hello, msg, &KEY, HOST, NOW, TOLERANCE);
    let _ = faketls::verify_client_hello(&hello, msg, &KEY, b"", 0, u64::MAX);
    if verdict.is_ok() {
        answer(&hello, scratch);
    }
}

fn raw(data: &[u8]) {
    let mut scratch = vec![0u8; SCRATCH];
    let full = faketls::read_client_hello(data, &mut scratch);
    // A few prefixes: whatever they decide (other than NeedMore) the whole input decides too.
    let mut cut = 0usize;
    for &b in data.iter().take(8) {
        cut = (cut + usize::from(b) + 1).min(data.len());
        let mut s = vec![0u8; SCRATCH];
        let part = faketls::read_client_hello(&data[..cut], &mut s);
        if part != HelloRead::NeedMore {
            assert_eq!(part, full, "prefix of {cut} bytes decided differently");
        }
    }
    if let HelloRead::Complete { consumed, msg_len } = full {
        assert!(consumed <= data.len() && msg_len <= scratch.len());
        let msg = scratch[..msg_len].to_vec();
        check_hello(&msg, &mut scratch);
    }
    // The input as a bare handshake message, too.
    check_hello(data, &mut scratch);
}

fn genuine(data: &[u8]) {
    let host = String::from_utf8_lossy(data);
    let host = host.trim_matches('\0');
    if host.len() > 253 {
        return;
    }
    let mut rng = XorShift64(u64::from(data.len() as u32) | 1);
    let rec = faketls::telegram_hello(&mut rng, &KEY, host, NOW as u32);
    let mut scratch = vec![0u8; SCRATCH];
    let HelloRead::Complete { consumed, msg_len } = faketls::read_client_hello(&rec, &mut scratch)
    else {
        panic!("telegram_hello for {host:?} does not read back");
    };
    assert_eq!(consumed, rec.len());
    let msg = scratch[..msg_len].to_vec();
    let hello = faketls::parse_client_hello(&msg).expect("telegram_hello parses");
    assert_eq!(
        faketls::verify_client_hello(&hello, &msg, &KEY, host.as_bytes(), NOW, TOLERANCE),
        Ok(NOW as u32)
    );
    answer(&hello, &mut scratch);
}

fuzz_target!(|data: &[u8]| {
    match data.split_first() {
        Some((&0xff, rest)) => genuine(rest),
        _ => raw(data),
    }
});
