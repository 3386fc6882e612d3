//! mtpx's middle-proxy protocol code against an independent peer: the Python fake middle proxy
//! (tests/interop/fake_me.py, written from the protocol description) over real loopback
//! sockets. The handshake (keys from the proxy secret and both addresses), CRC-32 framing,
//! packet numbers and the ad tag are checked by the fake; packets go through it to the fake DC
//! (which echoes them) and back through mtpx's decoder. Then the middle proxy dies mid-session,
//! and a fresh connection to the next one carries on.
//!
//! The first tests drive the sans-IO handshake and codec directly; the last ones run the
//! proxy itself with an ad tag (clients of every kind through the fake middle proxy to the
//! fake DC, a middle proxy dying mid-session, failover at connect). Every byte crosses a real
//! socket. Loopback only.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use mtpx::proto::middle::codec::{Decoder, Encoder, HEADROOM, SessionParams};
use mtpx::proto::obfs2::Tag;
use mtpx::proto::{Rng, XorShift64};

const AD_TAG: [u8; 16] = *b"sponsored-chan!!";

/// The Python fake middle proxy, killed on drop.
struct FakeMe {
    child: Child,
    stdin: ChildStdin,
    addr: SocketAddr,
    events: Arc<Mutex<Vec<String>>>,
}

impl FakeMe {
    fn start(secret_file: &std::path::Path, dc: SocketAddr, ad_tag: &[u8; 16]) -> FakeMe {
        let python = require_tool("python3");
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/fake_me.py");
        let mut child = Command::new(python)
            .arg(script)
            .arg("--secret-file")
            .arg(secret_file)
            .args(["--dc", &dc.to_string(), "--ad-tag", &hex(ad_tag)])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start fake_me.py");
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        out.read_line(&mut line).expect("first line");
        assert!(
            line.contains("\"listening\""),
            "fake_me.py did not start (is python3-cryptography installed? \
             scripts/test-deps.sh --system installs it): {line:?}"
        );
        let port: u16 = line
            .rsplit(':')
            .next()
            .and_then(|p| p.trim().trim_end_matches('}').trim().parse().ok())
            .expect("port");
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = events.clone();
        std::thread::spawn(move || {
            for l in out.lines().map_while(Result::ok) {
                sink.lock().unwrap().push(l);
            }
        });
        FakeMe {
            stdin: child.stdin.take().expect("stdin"),
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            events,
        }
    }

    fn events(&self) -> Vec<String> {
        self.events.lock().unwrap().clone()
    }

    fn ping(&mut self) {
        writeln!(self.stdin, "ping").expect("tell the fake to ping");
        self.stdin.flush().unwrap();
    }

    fn die(&mut self) {
        writeln!(self.stdin, "die").expect("tell the fake to die");
        self.stdin.flush().unwrap();
        assert!(wait_until(Duration::from_secs(5), || self
            .events()
            .iter()
            .any(|e| e.contains("\"died\""))));
    }
}

impl Drop for FakeMe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// One client session over a fresh connection to `me`.
struct Session {
    stream: TcpStream,
    enc: Encoder,
    dec: Decoder,
    /// Client bytes decoded so far.
    got: Vec<u8>,
    pending: Vec<u8>,
    eof: bool,
}

impl Session {
    fn open(me: SocketAddr, secret: &[u8], tag: Tag, conn_id: u64) -> Session {
        Session::open_with(me, secret, tag, conn_id, AD_TAG)
    }

    fn open_with(
        me: SocketAddr,
        secret: &[u8],
        tag: Tag,
        conn_id: u64,
        ad_tag: [u8; 16],
    ) -> Session {
        let mut stream = TcpStream::connect(me).expect("connect to the fake middle proxy");
        stream.set_nodelay(true).unwrap();
        let (link, rest) = mtpx::background::middle::handshake(
            &mut stream,
            secret,
            (None, None),
            Duration::from_secs(5),
        )
        .expect("middle-proxy handshake");
        let (enc, dec) = link.session(&SessionParams {
            tag,
            conn_id,
            client: "198.51.100.7:50000".parse().unwrap(),
            ours: "127.0.0.1:443".parse().unwrap(),
            ad_tag: Some(ad_tag),
        });
        Session {
            stream,
            enc,
            dec,
            got: Vec::new(),
            pending: rest,
            eof: false,
        }
    }

    /// Encodes and sends client transport bytes (in odd-sized pieces, small output room).
    fn send(&mut self, client_bytes: &[u8]) {
        self.try_send(client_bytes).expect("send");
    }

    fn try_send(&mut self, client_bytes: &[u8]) -> std::io::Result<()> {
        let mut out = vec![0u8; 4000];
        let mut rest = client_bytes;
        while !rest.is_empty() {
            let piece = rest.len().min(777);
            let e = self.enc.encode(&rest[..piece], &mut out).expect("encode");
            self.stream.write_all(&out[..e.written])?;
            rest = &rest[e.consumed..];
        }
        Ok(())
    }

    /// Reads and decodes until `want` client bytes arrived (or EOF / 10 s).
    fn recv(&mut self, want: usize) {
        self.recv_until(|got| got.len() >= want);
    }

    /// Reads and decodes until `done` says so (or EOF / 10 s).
    fn recv_until(&mut self, done: impl Fn(&[u8]) -> bool) {
        let mut rng = XorShift64(3);
        self.stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut buf = vec![0u8; HEADROOM + 5000];
        while !done(&self.got) && !self.eof {
            let n = if self.pending.is_empty() {
                match self.stream.read(&mut buf[HEADROOM..]) {
                    Ok(0) | Err(_) => {
                        self.eof = true;
                        break;
                    }
                    Ok(n) => n,
                }
            } else {
                let n = self.pending.len().min(5000);
                buf[HEADROOM..HEADROOM + n].copy_from_slice(&self.pending[..n]);
                self.pending.drain(..n);
                n
            };
            let d = self.dec.decode(&mut buf, 0, n, &mut rng).expect("decode");
            self.got.extend_from_slice(&buf[..d.out]);
        }
    }
}

fn frame(tag: Tag, payload: &[u8], quickack: bool) -> Vec<u8> {
    let q = if quickack { 0x8000_0000u32 } else { 0 };
    let mut out = match tag {
        Tag::Abridged if payload.len() / 4 < 0x7f => {
            vec![(payload.len() / 4) as u8 | (q >> 24) as u8]
        }
        Tag::Abridged => {
            let mut h = vec![0x7f | (q >> 24) as u8];
            h.extend_from_slice(&((payload.len() / 4) as u32).to_le_bytes()[..3]);
            h
        }
        _ => (payload.len() as u32 | q).to_le_bytes().to_vec(),
    };
    out.extend_from_slice(payload);
    out
}

/// Splits the client stream into (packets, quick-ack tokens); everything must be whole.
fn parse_client(tag: Tag, b: &[u8]) -> (Vec<Vec<u8>>, Vec<u32>) {
    let (packets, acks, rest) = split_client(tag, b);
    assert_eq!(rest, 0, "{rest} bytes of a partial packet");
    (packets, acks)
}

/// [`parse_client`] of what arrived so far (a partial packet at the end is left out).
fn parse_client_partial(tag: Tag, b: &[u8]) -> (Vec<Vec<u8>>, Vec<u32>) {
    let (packets, acks, _) = split_client(tag, b);
    (packets, acks)
}

/// (whole packets, quick-ack tokens, bytes of a partial packet at the end).
fn split_client(tag: Tag, mut b: &[u8]) -> (Vec<Vec<u8>>, Vec<u32>, usize) {
    let (mut packets, mut acks) = (Vec::new(), Vec::new());
    while b.len() >= 4 || (tag == Tag::Abridged && !b.is_empty() && b[0] < 0x7f) {
        let (hlen, len) = match tag {
            Tag::Abridged if b[0] & 0x80 != 0 => {
                // A quick ack toward an abridged client: the token byte-swapped.
                acks.push(u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
                b = &b[4..];
                continue;
            }
            Tag::Abridged if b[0] == 0x7f => {
                (4, u32::from_le_bytes([b[1], b[2], b[3], 0]) as usize * 4)
            }
            Tag::Abridged => (1, usize::from(b[0]) * 4),
            _ => {
                let v = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                if v & 0x8000_0000 != 0 {
                    acks.push(v);
                    b = &b[4..];
                    continue;
                }
                (4, v as usize)
            }
        };
        if b.len() < hlen + len {
            break;
        }
        // Padded: 0..3 random bytes follow the 4-byte-aligned data.
        let data = if tag == Tag::Padded { len & !3 } else { len };
        packets.push(b[hlen..hlen + data].to_vec());
        b = &b[hlen + len..];
    }
    (packets, acks, b.len())
}

fn payload(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    XorShift64(seed).fill(&mut v);
    v
}

fn secret_file(tag: &str) -> (std::path::PathBuf, Vec<u8>) {
    let secret = payload(99, 128);
    let p = std::env::temp_dir().join(format!("mtpx-me-{tag}-{}", std::process::id()));
    std::fs::write(&p, &secret).unwrap();
    (p, secret)
}

#[test]
fn relays_packets_of_every_transport_through_the_fake_middle_proxy() {
    let dc = FakeDc::start(DcMode::Echo);
    let (sf, secret) = secret_file("relay");
    let me = FakeMe::start(&sf, dc.addr, &AD_TAG);
    for (i, tag) in [Tag::Abridged, Tag::Intermediate, Tag::Padded]
        .into_iter()
        .enumerate()
    {
        let conn_id = 0x5eed_0000 + i as u64;
        let mut s = Session::open(me.addr, &secret, tag, conn_id);
        let mut zero_key = payload(1, 64);
        zero_key[..8].fill(0);
        let packets = [
            zero_key,
            payload(2, 100_000),
            payload(3, 0x7e * 4),
            payload(4, 8),
        ];
        let mut wire = Vec::new();
        for (k, p) in packets.iter().enumerate() {
            wire.extend(frame(tag, p, k == 1));
        }
        s.send(&wire);
        s.recv_until(|b| {
            let (got, acks) = parse_client_partial(tag, b);
            got.len() == packets.len() && acks.len() == 1
        });
        let (got, acks) = parse_client(tag, &s.got);
        assert_eq!(got.len(), packets.len(), "{tag:?}: packets back");
        for (g, p) in got.iter().zip(&packets) {
            assert!(g == p, "{tag:?}: a packet came back different");
        }
        // The quick-ack request was acknowledged.
        assert_eq!(acks.len(), 1, "{tag:?}: one quick ack");
        assert_ne!(acks[0] & 0x8000_0000, 0);
        // Leaving: RPC_CLOSE_CONN, and the fake closes the DC side.
        let mut out = [0u8; 64];
        let n = s.enc.close(&mut out);
        assert_eq!(n, 32);
        s.stream.write_all(&out[..n]).unwrap();
        assert!(wait_until(Duration::from_secs(5), || me
            .events()
            .iter()
            .any(
                |e| e.contains("close_conn") && e.contains(&conn_id.to_string())
            )));
    }
    let events = me.events();
    let reqs: Vec<&String> = events.iter().filter(|e| e.contains("\"req\"")).collect();
    assert_eq!(reqs.len(), 12, "{events:#?}");
    assert!(
        reqs.iter()
            .all(|e| e.contains(&format!("\"ad_tag\": \"{}\"", hex(&AD_TAG)))),
        "{reqs:#?}"
    );
    assert!(
        reqs.iter()
            .all(|e| e.contains("\"client\": \"198.51.100.7:50000\""))
    );
    assert!(
        reqs.iter()
            .all(|e| e.contains("\"ours\": \"127.0.0.1:443\""))
    );
    // Packets are numbered from 0 on each connection.
    assert!(
        reqs[..4]
            .iter()
            .enumerate()
            .all(|(i, e)| e.contains(&format!("\"seq\": {i}")))
    );
    assert!(
        !events.iter().any(|e| e.contains("\"error\"")),
        "{events:#?}"
    );
    assert_eq!(
        events
            .iter()
            .filter(|e| e.contains("\"handshake\""))
            .count(),
        3
    );
    let _ = std::fs::remove_file(&sf);
}

#[test]
fn a_wrong_secret_or_ad_tag_is_refused_by_the_peer() {
    let dc = FakeDc::start(DcMode::Echo);
    let (sf, secret) = secret_file("wrong");
    let me = FakeMe::start(&sf, dc.addr, &AD_TAG);
    // Another secret with the same first 4 bytes (key_select): the keys differ.
    let mut other = secret.clone();
    other[100] ^= 1;
    let mut s = TcpStream::connect(me.addr).unwrap();
    let r =
        mtpx::background::middle::handshake(&mut s, &other, (None, None), Duration::from_secs(5));
    assert!(r.is_err(), "handshake with a wrong secret: {r:?}");
    assert!(wait_until(Duration::from_secs(5), || me
        .events()
        .iter()
        .any(|e| e.contains("wrong keys"))));
    // The right secret with another ad tag: the first request is refused.
    let mut s = Session::open_with(me.addr, &secret, Tag::Intermediate, 7, [0; 16]);
    s.send(&frame(Tag::Intermediate, &payload(5, 16), false));
    s.recv(1);
    assert!(s.eof && s.got.is_empty(), "the fake closed the connection");
    assert!(wait_until(Duration::from_secs(5), || me
        .events()
        .iter()
        .any(|e| e.contains("ad tag 00000000"))));
    let _ = std::fs::remove_file(&sf);
}

#[test]
fn a_middle_proxy_dying_mid_session_ends_the_session_and_the_next_one_serves() {
    let dc = FakeDc::start(DcMode::Echo);
    let (sf, secret) = secret_file("die");
    let mut first = FakeMe::start(&sf, dc.addr, &AD_TAG);
    let second = FakeMe::start(&sf, dc.addr, &AD_TAG);
    let mut s = Session::open(first.addr, &secret, Tag::Intermediate, 1);
    let p = payload(6, 4000);
    s.send(&frame(Tag::Intermediate, &p, false));
    s.recv(p.len() + 4);
    assert_eq!(s.got.len(), p.len() + 4);
    // Dies while the session is open: the connection ends (a reset), nothing more decodes.
    first.die();
    let sent = s.try_send(&frame(Tag::Intermediate, &p, false));
    s.recv(2 * (p.len() + 4));
    assert!(
        s.eof,
        "the dead middle proxy's connection must end (send: {sent:?})"
    );
    assert_eq!(s.got.len(), p.len() + 4);
    assert!(
        TcpStream::connect(first.addr).is_err(),
        "the dead one refuses connections"
    );
    // Failover: the next middle proxy of the list takes a new session.
    let mut s2 = Session::open(second.addr, &secret, Tag::Intermediate, 2);
    s2.send(&frame(Tag::Intermediate, &p, false));
    s2.recv(p.len() + 4);
    let (got, _) = parse_client(Tag::Intermediate, &s2.got);
    assert_eq!(got, [p]);
    let _ = std::fs::remove_file(&sf);
}

/// `mtpx doctor` with an ad tag: the proxy config and secret load from files and a middle
/// proxy answers the RPC handshake; a stale secret fails with a hint.
#[test]
fn doctor_checks_the_middle_proxies_and_the_secret() {
    let dc = FakeDc::start(DcMode::Echo);
    let (sf, secret) = secret_file("doctor");
    let me = FakeMe::start(&sf, dc.addr, &AD_TAG);
    let dir = std::env::temp_dir().join(format!("mtpx-me-doctor-dir-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg_file = dir.join("proxy-config");
    std::fs::write(
        &cfg_file,
        format!(
            "default 2;\nproxy_for 2 {};\nproxy_for 4 127.0.0.1:1;\n",
            me.addr
        ),
    )
    .unwrap();
    let good = dir.join("secret");
    std::fs::write(&good, &secret).unwrap();
    let mut stale = secret.clone();
    stale[64] ^= 0xff;
    let bad = dir.join("stale");
    std::fs::write(&bad, &stale).unwrap();
    let run = |secret_file: &std::path::Path| {
        let text = format!(
            "secret = \"dd0123456789abcdef0123456789abcdef\"\nbind-to = \"127.0.0.1:3128\"\n\
             ad-tag = \"{}\"\nprefer-ip = \"only-ipv4\"\n[network]\n\
             proxy-config-files = [\"{}\"]\nproxy-secret-file = \"{}\"\n",
            hex(&AD_TAG),
            cfg_file.display(),
            secret_file.display()
        );
        let (config, warnings) = mtpx::config::parse(&text).unwrap();
        let mut checks = Vec::new();
        mtpx::doctor::run(&config, &warnings, &Default::default(), |section, c| {
            if section == "Middle proxies" {
                checks.extend_from_slice(c);
            }
        });
        checks
    };
    use mtpx::doctor::Status;
    let checks = run(&good);
    let st: Vec<(String, Status)> = checks.iter().map(|c| (c.name.clone(), c.status)).collect();
    assert_eq!(
        st,
        [
            (cfg_file.display().to_string(), Status::Ok),
            (good.display().to_string(), Status::Ok),
            ("DC 2 middle proxy".to_string(), Status::Ok),
        ],
        "{checks:#?}"
    );
    assert!(
        checks[2].message.contains(&me.addr.to_string()),
        "{checks:#?}"
    );
    assert!(checks[1].message.contains("128 bytes"), "{checks:#?}");
    let checks = run(&bad);
    let last = checks.last().unwrap();
    assert_eq!(last.status, Status::Fail, "{checks:#?}");
    assert!(
        last.hint.as_deref().unwrap_or("").contains("proxy secret"),
        "{last:#?}"
    );
    // Without an ad tag the section has nothing to say.
    let (config, warnings) = mtpx::config::parse(
        "secret = \"dd0123456789abcdef0123456789abcdef\"\nbind-to = \"127.0.0.1:3128\"\n",
    )
    .unwrap();
    let mut n = None;
    mtpx::doctor::run(&config, &warnings, &Default::default(), |section, c| {
        if section == "Middle proxies" {
            n = Some(c.len());
        }
    });
    assert_eq!(n, Some(0));
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(&sf);
}

/// Cost figures for the per-client vs multiplexed decision (docs/ARCHITECTURE.md): state sizes,
/// key derivation CPU, and codec CPU per byte next to direct mode's two CTR passes, in one run.
/// Nothing is asserted about time: `cargo test --release --test middle_proxy
/// measure_middle_proxy_costs -- --ignored --nocapture`.
#[test]
#[ignore = "cost printout, nothing asserted: see its doc comment"]
fn measure_middle_proxy_costs() {
    use mtpx::proto::middle::codec::Link;
    use mtpx::proto::middle::handshake::MeHandshake;
    use mtpx::proto::middle::{CompactCbc, derive_keys, pad_to_block, write_packet};
    use mtpx::proto::obfs2::CompactCtr;
    use std::time::Instant;
    println!(
        "sizes: Encoder {} B, Decoder {} B, Link {} B, MeHandshake {} B, CompactCtr {} B",
        std::mem::size_of::<Encoder>(),
        std::mem::size_of::<Decoder>(),
        std::mem::size_of::<Link>(),
        std::mem::size_of::<MeHandshake>(),
        std::mem::size_of::<CompactCtr>()
    );
    let secret = payload(1, 128);
    let (ours, theirs) = (
        "203.0.113.5:41000".parse().unwrap(),
        "149.154.175.50:8888".parse().unwrap(),
    );
    let n = 5000;
    let t = Instant::now();
    for i in 0..n {
        let _ = derive_keys(&[i as u8; 16], &[1; 16], 5, ours, theirs, &secret);
    }
    println!(
        "key derivation per handshake (both keys: MD5 x4 + SHA-1 x2 over ~200 B): {:.1} us",
        t.elapsed().as_secs_f64() * 1e6 / f64::from(n)
    );
    let mb = 64usize << 20;
    let packet = 16 * 1024;
    let body = payload(7, packet);
    let mut input = Vec::with_capacity(mb + mb / packet * 4);
    while input.len() < mb {
        input.extend(frame(Tag::Intermediate, &body, false));
    }
    let params = SessionParams {
        tag: Tag::Intermediate,
        conn_id: 9,
        client: "198.51.100.7:50000".parse().unwrap(),
        ours: "127.0.0.1:443".parse().unwrap(),
        ad_tag: Some(AD_TAG),
    };
    let keys = || {
        (
            CompactCbc::new([1; 32], [2; 16]),
            CompactCbc::new([3; 32], [4; 16]),
        )
    };
    let (w, r) = keys();
    let (mut enc, _) = Link::from_keys(w, r).session(&params);
    let mut out = vec![0u8; packet + 256];
    let t = Instant::now();
    let mut at = 0;
    while at < input.len() {
        let end = (at + packet).min(input.len());
        let e = enc.encode(&input[at..end], &mut out).unwrap();
        at += e.consumed;
    }
    let up = t.elapsed();
    // The middle proxy's answers: RPC_PROXY_ANS packets under the read key.
    let (_, r) = keys();
    let (_, mut dec) = Link::from_keys(CompactCbc::new([0; 32], [0; 16]), r).session(&params);
    let mut peer = keys().1;
    let mut down = Vec::with_capacity(mb + mb / 10);
    let mut ans = 0x4403_da0du32.to_le_bytes().to_vec();
    ans.extend_from_slice(&[0; 4]);
    ans.extend_from_slice(&9u64.to_le_bytes());
    ans.extend_from_slice(&body);
    let mut pkt = vec![0u8; ans.len() + 32];
    for seq in 0..(mb / packet) as i32 {
        let n = write_packet(&mut pkt, seq, &ans);
        let n = pad_to_block(&mut pkt, n);
        peer.encrypt(&mut pkt[..n]);
        down.extend_from_slice(&pkt[..n]);
    }
    let mut buf = vec![0u8; HEADROOM + packet];
    let mut rng = XorShift64(1);
    let t = Instant::now();
    for chunk in down.chunks(packet) {
        buf[HEADROOM..HEADROOM + chunk.len()].copy_from_slice(chunk);
        dec.decode(&mut buf, 0, chunk.len(), &mut rng).unwrap();
    }
    let dn = t.elapsed();
    let mut a = CompactCtr::new([1; 32], [2; 16], 0);
    let mut b = CompactCtr::new([3; 32], [4; 16], 0);
    let t = Instant::now();
    for chunk in input.chunks_mut(packet) {
        a.apply_keystream(chunk);
        b.apply_keystream(chunk);
    }
    let direct = t.elapsed();
    let rate = |d: Duration| mb as f64 / d.as_secs_f64() / 1e6;
    println!(
        "per byte, 16 KiB packets: encode {:.0} MB/s, decode {:.0} MB/s, direct mode (2 x CTR) \
         {:.0} MB/s; encode {:.2}x and decode {:.2}x the time of direct mode",
        rate(up),
        rate(dn),
        rate(direct),
        up.as_secs_f64() / direct.as_secs_f64(),
        dn.as_secs_f64() / direct.as_secs_f64()
    );
}

// ------------------------------------------------------------------------------------------
// The proxy itself with an ad tag: clients relayed through (fake) middle proxies.

/// A proxy whose clients of `secret` carry [`AD_TAG`]: Telegram's config and the proxy secret
/// from files listing `mes` for DC 2 (the default DC too). Every DC address points at a
/// refused port, so a client reaches the fake DC only through a middle proxy.
fn tagged_proxy(
    secret: &mtpx::proto::secret::Secret,
    proxy_secret: &std::path::Path,
    mes: &[SocketAddr],
    refused: &RefusedPort,
    name: &str,
    tweak: impl FnOnce(&mut mtpx::config::Config),
) -> (mtpx::io::Proxy, std::path::PathBuf) {
    let cfg_file =
        std::env::temp_dir().join(format!("mtpx-me-relay-{name}-{}.conf", std::process::id()));
    let mut text = String::from("default 2;\n");
    for me in mes {
        text.push_str(&format!("proxy_for 2 {me};\n"));
    }
    std::fs::write(&cfg_file, text).unwrap();
    let mut cfg = test_config(secret.clone(), 2, refused);
    cfg.ad_tag = Some(AD_TAG);
    cfg.proxy_config_files = vec![cfg_file.display().to_string()];
    cfg.proxy_secret_file = Some(proxy_secret.display().to_string());
    cfg.timeouts.tcp = Duration::from_secs(2);
    tweak(&mut cfg);
    let proxy = mtpx::io::start(cfg).expect("start proxy");
    assert_eq!(proxy.middle_proxies().len(), mes.len());
    (proxy, cfg_file)
}

/// Sends `packets` (the client's transport framing for `tag`) and checks the echo through the
/// middle proxy and the fake DC.
fn echo_packets(c: &mut TestClient, tag: Tag, packets: &[Vec<u8>]) {
    let mut wire = Vec::new();
    for (k, p) in packets.iter().enumerate() {
        wire.extend(frame(tag, p, k == 1));
    }
    c.send(&wire).expect("send");
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    c.rx.set_read_timeout(Duration::from_secs(10));
    loop {
        let (back, acks) = parse_client_partial(tag, &got);
        if back.len() == packets.len() && acks.len() == 1 {
            break;
        }
        let n = c.rx.recv(&mut buf).expect("echo through the middle proxy");
        assert!(n > 0, "{tag:?}: closed after {} bytes", got.len());
        got.extend_from_slice(&buf[..n]);
    }
    let (back, _) = parse_client(tag, &got);
    assert!(back == packets, "{tag:?}: the packets came back different");
}

fn zero_key_packet() -> Vec<u8> {
    let mut p = payload(1, 64);
    p[..8].fill(0);
    p
}

#[test]
fn clients_with_an_ad_tag_reach_the_dc_through_the_middle_proxy() {
    use mtpx::proto::secret::SecretKind;
    let dc = FakeDc::start(DcMode::Echo);
    let (sf, _) = secret_file("proxy-relay");
    let me = FakeMe::start(&sf, dc.addr, &AD_TAG);
    let refused = RefusedPort::new();
    let cases = [
        (SecretKind::Classic, Tag::Abridged),
        (SecretKind::Classic, Tag::Intermediate),
        (SecretKind::Secure, Tag::Padded),
        (SecretKind::FakeTls, Tag::Padded),
    ];
    let mut reqs_before = 0;
    for (i, (kind, tag)) in cases.into_iter().enumerate() {
        let secret = common::secret(kind, 40 + i as u64);
        let (proxy, cfg_file) = tagged_proxy(&secret, &sf, &[me.addr], &refused, "relay", |_| {});
        let mut opts = ClientOpts::new(tag, 2, 500 + i as u64);
        opts.record_sizes = vec![1000, 17, 16379];
        let mut c = TestClient::connect(proxy.local_addr(), &secret, &opts).expect("handshake");
        let packets = vec![
            zero_key_packet(),
            payload(2, 100_000),
            payload(3, 0x7e * 4),
            payload(4, 8),
        ];
        echo_packets(&mut c, tag, &packets);
        // A second burst on the same session.
        echo_packets(&mut c, tag, &[payload(7, 40), payload(8, 3000)]);
        let stats = proxy.stats();
        assert_eq!(stats.middle_proxy_counters()[0], 1, "{kind:?}: one open");
        // The client leaves: RPC_CLOSE_CONN reaches the middle proxy.
        c.shutdown_write().unwrap();
        assert!(
            wait_until(Duration::from_secs(5), || me
                .events()
                .iter()
                .filter(|e| e.contains("close_conn"))
                .count()
                > i),
            "{kind:?}: no RPC_CLOSE_CONN: {:#?}",
            me.events()
        );
        assert!(wait_until(Duration::from_secs(5), || proxy
            .stats()
            .middle_proxy_counters()[0]
            == 0));
        let events = me.events();
        let reqs: Vec<&String> = events.iter().filter(|e| e.contains("\"req\"")).collect();
        assert_eq!(reqs.len() - reqs_before, 6, "{kind:?}: {events:#?}");
        reqs_before = reqs.len();
        assert!(
            reqs.iter()
                .all(|e| e.contains(&format!("\"ad_tag\": \"{}\"", hex(&AD_TAG)))),
            "{reqs:#?}"
        );
        assert!(
            reqs.iter().all(|e| e.contains("\"client\": \"127.0.0.1:")),
            "{reqs:#?}"
        );
        assert!(
            !events.iter().any(|e| e.contains("\"error\"")),
            "{events:#?}"
        );
        assert_eq!(
            dc.count(),
            i + 1,
            "one DC connection per client, by the fake"
        );
        let [_, reconnects, up, down, lost] = proxy.stats().middle_proxy_counters();
        assert_eq!((reconnects, lost), (0, 0));
        assert!(
            up > 100_000 && down > 100_000,
            "traffic counted: {up} {down}"
        );
        proxy.shutdown();
        let _ = std::fs::remove_file(&cfg_file);
    }
    let _ = std::fs::remove_file(&sf);
}

/// A middle proxy dies while a client's session is open: that client's connection is closed
/// (FIN after what the middle proxy sent), the loss is counted, and a new connection of the
/// client is served by the other middle proxy of the list.
#[test]
fn a_middle_proxy_dying_mid_session_closes_its_clients_and_new_ones_go_elsewhere() {
    use mtpx::proto::secret::SecretKind;
    let dc = FakeDc::start(DcMode::Echo);
    let (sf, _) = secret_file("proxy-die");
    let mut mes = [
        FakeMe::start(&sf, dc.addr, &AD_TAG),
        FakeMe::start(&sf, dc.addr, &AD_TAG),
    ];
    let refused = RefusedPort::new();
    let secret = common::secret(SecretKind::Secure, 61);
    let addrs = [mes[0].addr, mes[1].addr];
    let (proxy, cfg_file) = tagged_proxy(&secret, &sf, &addrs, &refused, "die", |_| {});
    let tag = Tag::Padded;
    let mut c = TestClient::connect(proxy.local_addr(), &secret, &ClientOpts::new(tag, 2, 7))
        .expect("handshake");
    echo_packets(&mut c, tag, &[zero_key_packet(), payload(9, 5000)]);
    // (The fakes' events arrive through a reader thread: wait for them.)
    let served = |m: &FakeMe| m.events().iter().any(|e| e.contains("\"req\""));
    assert!(
        wait_until(Duration::from_secs(5), || mes.iter().any(served)),
        "one middle proxy served"
    );
    let serving = mes
        .iter()
        .position(served)
        .expect("one middle proxy served");
    // Keep-alive: the middle proxy's RPC_PING is answered (RPC_PONG) while the client idles.
    mes[serving].ping();
    assert!(
        wait_until(Duration::from_secs(5), || mes[serving]
            .events()
            .iter()
            .any(|e| e.contains("\"pong\""))),
        "no RPC_PONG: {:#?}",
        mes[serving].events()
    );
    echo_packets(&mut c, tag, &[payload(11, 64), payload(12, 96)]);
    mes[serving].die();
    // The client sees its connection end: EOF, nothing more.
    c.rx.set_read_timeout(Duration::from_secs(5));
    let mut buf = [0u8; 256];
    let r = c.rx.recv(&mut buf);
    assert!(
        matches!(r, Ok(0)),
        "the client's connection must end: {r:?}"
    );
    assert!(wait_until(Duration::from_secs(5), || proxy
        .stats()
        .middle_proxy_counters()[4]
        == 1));
    assert!(wait_until(Duration::from_secs(5), || proxy
        .stats()
        .middle_proxy_counters()[0]
        == 0));
    // The app reconnects: served by the other one (directly, or after the dead one refused).
    for seed in 0..3 {
        let mut c =
            TestClient::connect(proxy.local_addr(), &secret, &ClientOpts::new(tag, 2, seed))
                .expect("handshake");
        echo_packets(&mut c, tag, &[zero_key_packet(), payload(10 + seed, 700)]);
    }
    let other = &mes[1 - serving];
    let handshakes = || {
        other
            .events()
            .iter()
            .filter(|e| e.contains("\"handshake\""))
            .count()
    };
    wait_until(Duration::from_secs(5), || handshakes() >= 3);
    assert_eq!(handshakes(), 3);
    proxy.shutdown();
    let _ = std::fs::remove_file(&cfg_file);
    let _ = std::fs::remove_file(&sf);
}

/// Failover at connect: middle proxies that refuse the connection, answer garbage or stay
/// silent are skipped for the next one of the list (IPv6 ones are tried first: prefer-ipv6).
/// Never through a SOCKS5 upstream (the RPC keys include the address the middle proxy sees).
#[test]
fn failover_to_the_next_middle_proxy_at_connect() {
    use mtpx::proto::secret::SecretKind;
    let dc = FakeDc::start(DcMode::Echo);
    let (sf, _) = secret_file("proxy-failover");
    let good = FakeMe::start(&sf, dc.addr, &AD_TAG);
    // [::1]:port with nothing listening.
    let refused6 = {
        let l = std::net::TcpListener::bind("[::1]:0").expect("bind ::1");
        l.local_addr().unwrap()
    };
    // [::1]:port that reads our nonce and answers garbage.
    let garbage = std::net::TcpListener::bind("[::1]:0").expect("bind ::1");
    let garbage6 = garbage.local_addr().unwrap();
    let served = Arc::new(Mutex::new(0usize));
    let seen = served.clone();
    std::thread::spawn(move || {
        for s in garbage.incoming() {
            let Ok(mut s) = s else { return };
            let mut nonce = [0u8; 44];
            if s.read_exact(&mut nonce).is_ok() {
                let _ = s.write_all(&[0x55; 44]);
                *seen.lock().unwrap() += 1;
            }
        }
    });
    // [::1]:port that accepts and never answers (the 3 s handshake timeout).
    let silent = std::net::TcpListener::bind("[::1]:0").expect("bind ::1");
    let silent6 = silent.local_addr().unwrap();
    std::thread::spawn(move || {
        let held: Vec<_> = silent.incoming().take(2).collect();
        std::thread::sleep(Duration::from_secs(30));
        drop(held);
    });
    let refused = RefusedPort::new();
    let secret = common::secret(SecretKind::Classic, 62);
    // A SOCKS5 upstream that is down: middle proxies are dialled directly all the same (the
    // RPC keys include the address the middle proxy sees).
    let socks = format!("socks5://{}", refused.addr);
    let (proxy, cfg_file) = tagged_proxy(
        &secret,
        &sf,
        &[refused6, garbage6, silent6, good.addr],
        &refused,
        "failover",
        |c| c.proxies = vec![socks],
    );
    for seed in 0..2 {
        let tag = Tag::Intermediate;
        let mut c =
            TestClient::connect(proxy.local_addr(), &secret, &ClientOpts::new(tag, 2, seed))
                .expect("handshake");
        echo_packets(&mut c, tag, &[zero_key_packet(), payload(20 + seed, 3000)]);
    }
    assert_eq!(
        *served.lock().unwrap(),
        2,
        "the garbage one was tried each time"
    );
    let [_, reconnects, ..] = proxy.stats().middle_proxy_counters();
    assert_eq!(reconnects, 2, "both sessions came after failures");
    proxy.shutdown();
    let _ = std::fs::remove_file(&cfg_file);
    let _ = std::fs::remove_file(&sf);
}

/// A user's own ad tag (`[users.NAME] ad-tag`, no top-level one): that user's clients go
/// through the middle proxy with it.
#[test]
fn a_users_own_ad_tag_routes_its_clients_through_the_middle_proxy() {
    use mtpx::proto::secret::SecretKind;
    let dc = FakeDc::start(DcMode::Echo);
    let (sf, _) = secret_file("proxy-user");
    let me = FakeMe::start(&sf, dc.addr, &AD_TAG);
    let refused = RefusedPort::new();
    let secret = common::secret(SecretKind::Secure, 63);
    let cfg_file = std::env::temp_dir().join(format!("mtpx-me-user-{}.conf", std::process::id()));
    std::fs::write(&cfg_file, format!("default 2;\nproxy_for 2 {};\n", me.addr)).unwrap();
    let text = format!(
        "bind-to = \"127.0.0.1:3128\"\n[network]\nproxy-config-files = [\"{}\"]\n\
         proxy-secret-file = \"{}\"\n[users.alice]\nsecret = \"{}\"\nad-tag = \"{}\"\n",
        cfg_file.display(),
        sf.display(),
        secret.to_hex(),
        hex(&AD_TAG)
    );
    let (parsed, warnings) = mtpx::config::parse(&text).expect("config");
    assert_eq!(parsed.ad_tag, None, "no top-level tag");
    // The files are read for the user's tag: not "ignored".
    assert!(
        !warnings.iter().any(|w| w.key.starts_with("network.proxy-")),
        "{warnings:?}"
    );
    let mut cfg = test_config(parsed.secret.clone(), 1, &refused);
    cfg.users = parsed.users.clone();
    cfg.proxy_config_files = parsed.proxy_config_files.clone();
    cfg.proxy_secret_file = parsed.proxy_secret_file.clone();
    let proxy = mtpx::io::start(cfg).expect("start proxy");
    let tag = Tag::Padded;
    let mut c = TestClient::connect(proxy.local_addr(), &secret, &ClientOpts::new(tag, 2, 9))
        .expect("handshake");
    echo_packets(&mut c, tag, &[zero_key_packet(), payload(30, 2000)]);
    assert_eq!(proxy.stats().middle_proxy_counters()[0], 1);
    drop(c);
    proxy.shutdown();
    let _ = std::fs::remove_file(&cfg_file);
    let _ = std::fs::remove_file(&sf);
}

/// Client packets sent in the same write as the obfuscated2 frame (FakeTLS: in records right
/// after the frame's): the handshake re-encrypted them for a DC, the middle route turns them
/// back into the client's bytes (and takes in the records that followed) before encoding.
#[test]
fn packets_sent_with_the_frame_go_through_the_middle_proxy() {
    use mtpx::proto::secret::SecretKind;
    let dc = FakeDc::start(DcMode::Echo);
    let (sf, _) = secret_file("proxy-early");
    let me = FakeMe::start(&sf, dc.addr, &AD_TAG);
    let refused = RefusedPort::new();
    for (i, (kind, tag)) in [
        (SecretKind::FakeTls, Tag::Padded),
        (SecretKind::Secure, Tag::Padded),
        (SecretKind::Classic, Tag::Abridged),
    ]
    .into_iter()
    .enumerate()
    {
        let secret = common::secret(kind, 70 + i as u64);
        let (proxy, cfg_file) = tagged_proxy(&secret, &sf, &[me.addr], &refused, "early", |_| {});
        let first = [zero_key_packet(), payload(40, 3000)];
        let mut opts = ClientOpts::new(tag, 2, 900 + i as u64);
        opts.early = first
            .iter()
            .enumerate()
            .flat_map(|(k, p)| frame(tag, p, k == 1))
            .collect();
        opts.record_sizes = vec![700, 64, 2000];
        let mut c = TestClient::connect(proxy.local_addr(), &secret, &opts).expect("handshake");
        let mut got = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        c.rx.set_read_timeout(Duration::from_secs(10));
        while parse_client_partial(tag, &got).0.len() < first.len() {
            let n = c.rx.recv(&mut buf).expect("echo of the early packets");
            assert!(n > 0, "{kind:?}: closed");
            got.extend_from_slice(&buf[..n]);
        }
        let (back, _) = parse_client(tag, &got);
        assert!(back == first, "{kind:?}: early packets came back different");
        echo_packets(&mut c, tag, &[payload(41, 100), payload(42, 5000)]);
        drop(c);
        proxy.shutdown();
        let _ = std::fs::remove_file(&cfg_file);
    }
    let _ = std::fs::remove_file(&sf);
}
