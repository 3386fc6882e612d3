#!/usr/bin/env python3
"""Writes seed inputs for the fuzz targets into fuzz/corpus/<target>/ (ignored by git).

Seeds come from the repository's test data (ClientHellos, server flights, configs, netsets,
mtg's JSON vectors) plus a few hand-made inputs. Run from anywhere; existing files are kept.
"""
import base64
import glob
import hashlib
import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CORPUS = os.path.join(HERE, "corpus")


def put(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


def read(path):
    with open(os.path.join(ROOT, path), "rb") as f:
        return f.read()


def b64(s):
    return base64.b64decode(s + "=" * (-len(s) % 4))


def record(kind, payload, version=b"\x03\x03"):
    return bytes([kind]) + version + struct.pack(">H", len(payload)) + payload


def dns_name(name):
    out = b""
    for label in name.split("."):
        out += bytes([len(label)]) + label.encode()
    return out + b"\x00"


def main():
    # FakeTLS ClientHellos: captured ones, mtg's vectors, a hello split over two records.
    hellos = [read(p) for p in sorted(glob.glob(os.path.join(ROOT, "tests/data/tls/*client-hello.bin")))]
    hellos.append(read("src/proto/data/telegram-hello.bin"))
    for p in sorted(glob.glob(os.path.join(ROOT, "tests/data/mtg/mtglib/internal/tls/fake/testdata/*.json"))):
        hellos.append(b64(json.load(open(p))["full"]))
    for i, h in enumerate(hellos):
        put("faketls_client_hello", f"hello{i}", h)
    h = hellos[-1]
    msg = h[5:]
    split = record(0x16, msg[:100], b"\x03\x01") + record(0x16, msg[100:], b"\x03\x01")
    put("faketls_client_hello", "split", split)
    put("faketls_client_hello", "genuine", b"\xffwww.example.com")

    # TLS records from the client after the hello.
    stream = record(0x17, b"hello") + record(0x14, b"\x01") + record(0x17, b"x" * 300)
    put("faketls_records", "stream", b"\x07" + stream)

    # obfuscated2 frames (mtg's vectors) and the genuine-frame mode.
    for i, p in enumerate(sorted(glob.glob(os.path.join(ROOT, "tests/data/mtg/mtglib/internal/obfuscation/testdata/*.json")))):
        put("obfs2_frame", f"mtg{i}", b64(json.load(open(p))["frame"]))
    put("obfs2_frame", "genuine", b"\xff\x01\x02\x00" + bytes(range(64)))

    # The handshake machine: control byte (bit 0 PROXY header, 1 FakeTLS, 2 EOF, 3 genuine
    # start, 4-7 split), then the client's bytes.
    frame_rec = record(0x17, bytes(range(64)) + b"early")
    put("handshake", "ee-genuine", b"\x0a" + frame_rec)
    put("handshake", "ee-genuine-eof", b"\x3e" + frame_rec[:30])
    put("handshake", "dd-genuine", b"\x48" + b"early data")
    put("handshake", "ee-captured", b"\x02" + hellos[0])
    put("handshake", "proxy-v1", b"\x19PROXY TCP4 192.0.2.1 127.0.0.1 5555 443\r\n" + bytes(70))
    put("handshake", "http", b"\x00GET / HTTP/1.1\r\nHost: x\r\n\r\n")

    # PROXY protocol.
    put("proxy_protocol", "v1", "PROXY TCP4 192.0.2.1 198.51.100.7 50000 443\r\nrest")
    put("proxy_protocol", "v1-6", "PROXY TCP6 2001:db8::1 ::1 1 2\r\n")
    put("proxy_protocol", "v1-unknown", "PROXY UNKNOWN\r\n")
    v2 = b"\r\n\r\n\x00\r\nQUIT\n" + b"\x21\x11\x00\x0c" + bytes([192, 0, 2, 1, 198, 51, 100, 7, 0xc3, 0x50, 1, 0xbb])
    put("proxy_protocol", "v2", v2)

    # SOCKS5: control byte, three length bytes, then the server's replies.
    put("socks5_client", "noauth-v4", b"\x00\x00\x00\x00" + b"\x05\x00" + b"\x05\x00\x00\x01\x7f\x00\x00\x01\x01\xbb")
    put("socks5_client", "auth-domain", b"\x06\x05\x03\x03" + b"\x05\x02" + b"\x01\x00" + b"\x05\x00\x00\x03\x04host\x01\xbb")
    put("socks5_client", "url", "socks5h://user:pa%20ss@[::1]:1080/")

    # DNS: a CNAME then an A for example.com; the same for AAAA.
    q = dns_name("example.com")
    for qtype, rdata in ((1, bytes([192, 0, 2, 1])), (28, bytes(15) + b"\x01")):
        head = struct.pack(">HHHHHH", 0x1234, 0x8180, 1, 2, 0, 0)
        question = q + struct.pack(">HH", qtype, 1)
        cname = b"\xc0\x0c" + struct.pack(">HHIH", 5, 1, 300, 6) + b"\x03www\xc0\x0c"
        addr = b"\xc0\x29" + struct.pack(">HHIH", qtype, 1, 60, len(rdata)) + rdata
        put("dns_response", f"type{qtype}", head + question + cname + addr)
    # SNTP: a server reply (stratum 2, T1 echoed, T2 <= T3), a kiss-of-death, a v3 reply with
    # an extension field after the 48 bytes (bytes 48..56 are T4 for the target).
    t1, t2, t3 = 0xE9F0_0000_8000_0000, 0xE9F0_0001_0000_0000, 0xE9F0_0001_0001_0000
    reply = bytes([0x24, 2, 6, 0xEC]) + bytes(8) + b"GPS\0" + struct.pack(">QQQQ", t3, t1, t2, t3)
    put("sntp_response", "reply", reply + struct.pack(">Q", t3 + (1 << 28)))
    put("sntp_response", "kod", bytes([0xE4, 0, 6, 0xEC]) + bytes(8) + b"RATE" + bytes(32))
    put("sntp_response", "v3-ext", bytes([0x1C]) + reply[1:] + struct.pack(">Q", t3 + 1) + bytes(16))
    put("dns_response", "resolv", "nameserver 192.0.2.53\nnameserver fe80::1%2\noptions timeout:3 attempts:2\n")

    # HTTP.
    put("http", "request", "GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n\r\n")
    put("http", "chunked", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n0\r\nT: v\r\n\r\n")
    put("http", "length", "HTTP/1.0 301 Moved\r\nLocation: http://a/\r\nContent-Length: 0\r\n\r\n")
    put("http", "url", "http://[2001:db8::1]:8080/lists/x.netset?v=1#frag")

    # TLS 1.3 client: raw flights, and the server mode (EncryptedExtensions, Finished, data).
    flights = sorted(glob.glob(os.path.join(ROOT, "tests/data/tls/*flight.bin")))
    for i, p in enumerate(flights):
        put("tls13_client", f"raw{i}", b"\x00" + read(p))
        put("tlsprofile_flight", f"flight{i}", read(p))
    ee = b"\x08\x00\x00\x02\x00\x00"
    ops = b"\x01" + struct.pack(">H", len(ee)) + ee + b"\x02\x00\x00"
    ops += b"\x03" + struct.pack(">H", 17) + b"HTTP/1.1 200 OK\r\n"
    ops += b"\x83\x00\x02\x01\x00"  # close_notify (alert inner type)
    put("tls13_client", "server", b"\x03" + ops)

    # Config and lists.
    for p in sorted(glob.glob(os.path.join(ROOT, "tests/data/config/*.toml"))) + [os.path.join(ROOT, "config.example")]:
        put("config", os.path.basename(p), read(p))
    for p in sorted(glob.glob(os.path.join(ROOT, "tests/data/iplist/*.ipset"))):
        put("iplist_secret", os.path.basename(p), read(p))
    put("iplist_secret", "secret-hex", "ee0123456789abcdef0123456789abcdef7777772e6578616d706c652e636f6d")
    put("iplist_secret", "secret-b64", "7gEjRWeJq83vASNFZ4mrze93d3cuZXhhbXBsZS5jb20")
    put("iplist_secret", "secret-dd", "dd0123456789abcdef0123456789abcdef")

    # Users files and the quota state (issue 15).
    example = read("config.example").decode()
    table = example[example.index("# [users.alice]"):]
    table = "\n".join(l[2:] for l in table.splitlines()).replace('"ee..."', '"ee0123456789abcdef0123456789abcdef7777772e6578616d706c652e636f6d"')
    put("users_file", "example", table)
    put("users_file", "quoted", '[users."bob.smith"]\nsecret = "dd0123456789abcdef0123456789abcdef"\nquota = 1000\n'
        '[users.c]\nsecret = "00112233445566778899aabbccddeeff"\nexpires = "2026-01-01T00:00:00+03:00"\n')
    put("users_file", "dotted", '[users]\nx.secret = "dd0123456789abcdef0123456789abcdef"\nusers.y.max-ips = 3\n')
    body = ("mtpx-quota-state 1\n# written by mtpx every few seconds and at shutdown; do not edit "
            "(mtpx users reset-quota)\nwritten 1767225600\nuser alice 123456789 1767225600\n"
            "user bob.smith 0 1764547200\napplied 9f86d081884c7d65\n")
    put("state_file", "state", body + "sha256 " + hashlib.sha256(body.encode()).hexdigest() + "\n")
    put("state_file", "reset", "mtpx-quota-reset 1\nuser alice\n")

    # Telegram's proxy config and the middle-proxy protocol.
    put("proxy_config", "v4", "# c\ndefault 2;\nproxy_for 1 149.154.175.50:8888;\nproxy_for -203 91.105.192.110:443;\nproxy_for 203 91.105.192.110:443;\n")
    put("proxy_config", "v6", "proxy_for 203 [2a0a:f280:203:a:5000::100]:443;\r\ntimeout 300;\n")
    # Plaintext RPC packets for middle_codec: RPC_PROXY_ANS (conn id "conn-id!"), a simple ack.
    def pkt(seq, payload):
        body = struct.pack("<Ii", len(payload) + 12, seq) + payload
        import zlib
        return body + struct.pack("<I", zlib.crc32(body))
    ans = struct.pack("<II", 0x4403DA0D, 0) + b"conn-id!" + b"\x01" * 8
    ack = struct.pack("<I", 0x3BAC409B) + b"conn-id!" + b"\x01\x02\x03\x04"
    # A valid nonce answer for middle_handshake's fixed parameters (its secret is (i*37+11) & 0xff,
    # its time 1_700_000_000): what follows is decrypted as the handshake answer.
    key_select = bytes((i * 37 + 11) & 0xFF for i in range(4))
    nonce = struct.pack("<I", 0x7ACB87AA) + key_select + struct.pack("<II", 1, 1_700_000_000) + b"\x42" * 16
    put("middle_handshake", "nonce", b"\x00" + pkt(-2, nonce) + b"\x00" * 48)
    put("middle_codec", "answers", b"\x01" + pkt(0, ans) + b"\x04\0\0\0" + pkt(1, ack))


if __name__ == "__main__":
    main()
