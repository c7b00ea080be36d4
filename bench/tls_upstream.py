#!/usr/bin/env python3
"""A stand-in for Twilio in benchmarks: an HTTP/1.1 server over TLS (or
plain TCP) on 127.0.0.1 that answers every request after a fixed think
time, with keep-alive, like Twilio's API answering in tens of ms.

Usage: tls_upstream.py PORT BODY_FILE [--cert CERT --key KEY] [--think-ms 20]

Every request (any method and path) gets `200` with BODY_FILE as an
`application/json` body after --think-ms milliseconds; a request body (by
Content-Length or chunked) is read and discarded first. The connection is
kept open unless the client sends `Connection: close`. Prints `ready` on
stdout once listening. Not a general HTTP server: just enough for curl and
the proxy's upstream client (HTTP/1.1; ALPN offers only http/1.1).
"""

import argparse
import asyncio
import ssl
import sys


async def read_body(reader, headers):
    length = headers.get(b"content-length")
    if length is not None:
        left = int(length)
        while left > 0:
            chunk = await reader.read(min(left, 1 << 16))
            if not chunk:
                raise ConnectionError("body cut short")
            left -= len(chunk)
        return
    if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0].strip(), 16)
            if size == 0:
                # trailers, then the empty line
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass
                return
            await reader.readexactly(size + 2)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("port", type=int)
    ap.add_argument("body_file")
    ap.add_argument("--cert")
    ap.add_argument("--key")
    ap.add_argument("--think-ms", type=float, default=20.0)
    args = ap.parse_args()

    body = open(args.body_file, "rb").read()
    think = args.think_ms / 1000.0
    head = (
        b"HTTP/1.1 200 OK\r\n"
        b"Content-Type: application/json; charset=utf-8\r\n"
        b"Twilio-Request-Id: RQ0123456789abcdef0123456789abcdef\r\n"
        b"X-Home-Region: us1\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n"
    )

    ctx = None
    if args.cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(args.cert, args.key)
        ctx.set_alpn_protocols(["http/1.1"])

    async def handle(reader, writer):
        try:
            while True:
                try:
                    raw = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = raw.split(b"\r\n")
                headers = {}
                for line in lines[1:]:
                    if b":" in line:
                        k, v = line.split(b":", 1)
                        headers[k.strip().lower()] = v.strip()
                await read_body(reader, headers)
                await asyncio.sleep(think)
                close = headers.get(b"connection", b"").lower() == b"close"
                writer.write(
                    head + (b"Connection: close\r\n\r\n" if close else b"\r\n") + body
                )
                await writer.drain()
                if close:
                    return
        except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError, ValueError):
            return
        finally:
            try:
                writer.close()
            except Exception:
                pass

    async def serve():
        server = await asyncio.start_server(
            handle, "127.0.0.1", args.port, ssl=ctx, backlog=1024
        )
        print("ready", flush=True)
        async with server:
            await server.serve_forever()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    sys.exit(main())
