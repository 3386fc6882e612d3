"""A tiny pure-Python stand-in for `mtpx simple-run` (classic and dd secrets only).

It exists to check the interop harness itself (`telethon_interop.py --reference`): if the
harness passes against this and fails against mtpx, the difference is in mtpx.
Usage: python3 ref_proxy.py <bind-host:port> <secret> [--dc-override DC=HOST:PORT ...]
Loopback only; no TLS, no anti-replay, no timeouts beyond the handshake.
"""

import asyncio
import signal
import struct
import sys

from fake_dc import TAGS, client_keys, dc_frame


def parse_secret(text):
    raw = bytes.fromhex(text)
    if len(raw) == 17 and raw[0] == 0xDD:
        return raw[1:], True
    if len(raw) == 16:
        return raw, False
    raise SystemExit("ref_proxy: unsupported secret")


async def pump(src_reader, cipher_in, cipher_out, dst_writer):
    try:
        while True:
            data = await src_reader.read(65536)
            if not data:
                break
            dst_writer.write(cipher_out.apply(cipher_in.apply(data)))
            await dst_writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        dst_writer.close()


async def serve(bind, secret_text, overrides):
    key, dd_only = parse_secret(secret_text)

    async def handle(reader, writer):
        try:
            frame = await asyncio.wait_for(reader.readexactly(64), 10)
        except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError):
            writer.close()
            return
        # the proxy decrypts with the client's encrypt stream and vice versa
        c_dec, c_enc = client_keys(frame, key)
        plain = c_dec.apply(frame)
        tag = TAGS.get(plain[56:60])
        dc = struct.unpack("<h", plain[60:62])[0]
        if tag is None or (dd_only and tag != "padded"):
            print("ref_proxy: reject tag=%s" % plain[56:60].hex(), file=sys.stderr, flush=True)
            writer.close()
            return
        target = overrides.get(dc) or overrides.get(abs(dc))
        if target is None:
            writer.close()
            return
        host, port = target.rsplit(":", 1)
        up_r, up_w = await asyncio.open_connection(host, int(port))
        wire, d_enc, d_dec = dc_frame(tag, abs(dc) or 2)  # PROTOCOL.md 3.2 step 6
        up_w.write(wire)
        await asyncio.gather(pump(reader, c_dec, d_enc, up_w), pump(up_r, d_dec, c_enc, writer))

    host, port = bind.rsplit(":", 1)
    server = await asyncio.start_server(handle, host, int(port))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("ref_proxy listening on %s" % bind, file=sys.stderr, flush=True)
    await stop.wait()
    server.close()


def main(argv):
    overrides = {}
    pos = []
    it = iter(argv)
    for a in it:
        if a == "--dc-override":
            dc, addr = next(it).split("=", 1)
            overrides[int(dc)] = addr
        elif a == "simple-run":
            continue
        else:
            pos.append(a)
    asyncio.run(serve(pos[0], pos[1], overrides))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
