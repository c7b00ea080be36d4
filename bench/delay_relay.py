#!/usr/bin/env python3
"""A TCP relay on 127.0.0.1 that adds a network round-trip time, for
benchmarks: what a client far from Twilio sees, without kernel queueing
disciplines (no tc/netem, no root).

Usage: delay_relay.py LISTEN_PORT TARGET_PORT --rtt-ms 20

Every byte is forwarded both ways (it does not look inside: TLS passes
through untouched) and delivered half an RTT after it was read, in order,
like a link whose one-way delay is RTT/2:

- a request's bytes reach the target RTT/2 after the client sent them, the
  answer's bytes reach the client RTT/2 after the target sent them: one RTT
  per exchange, and one per TLS handshake flight pair;
- the TCP handshake: the client's connect to the relay completes at once on
  loopback, so the relay holds the client's first bytes until one full RTT
  after the connection was accepted (SYN, SYN-ACK), then adds RTT/2 as for
  any byte. A new connection therefore costs one RTT before its first
  request leaves, as over a real network.

Not modelled: bandwidth, loss, TCP slow start (the bench's answers are ~1 KB,
inside one initial window). Prints `ready` on stdout once listening.
"""

import argparse
import asyncio
import sys


async def pipe(reader, writer, one_way, not_before):
    """Copy reader to writer, each chunk delivered `one_way` seconds after
    it was read (and not before `not_before`, on the loop's clock)."""
    loop = asyncio.get_running_loop()
    queue = asyncio.Queue()

    async def deliver():
        try:
            while True:
                due, data = await queue.get()
                if data is None:
                    break
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            try:
                if writer.can_write_eof():
                    writer.write_eof()
            except (ConnectionError, OSError):
                pass

    task = asyncio.create_task(deliver())
    try:
        while True:
            data = await reader.read(1 << 16)
            if not data:
                break
            queue.put_nowait((max(loop.time(), not_before) + one_way, data))
    except (ConnectionError, OSError):
        pass
    # The end of the stream travels with the same delay as the data.
    queue.put_nowait((max(loop.time(), not_before) + one_way, None))
    await task


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("listen_port", type=int)
    ap.add_argument("target_port", type=int)
    ap.add_argument("--rtt-ms", type=float, required=True)
    args = ap.parse_args()
    rtt = args.rtt_ms / 1000.0
    one_way = rtt / 2

    async def handle(c_reader, c_writer):
        loop = asyncio.get_running_loop()
        accepted = loop.time()
        try:
            u_reader, u_writer = await asyncio.open_connection(
                "127.0.0.1", args.target_port
            )
        except OSError:
            c_writer.close()
            return
        # The client's bytes wait for the simulated TCP handshake (one RTT).
        up = pipe(c_reader, u_writer, one_way, accepted + rtt)
        down = pipe(u_reader, c_writer, one_way, accepted)
        try:
            await asyncio.gather(up, down)
        finally:
            for w in (c_writer, u_writer):
                try:
                    w.close()
                except Exception:
                    pass

    async def serve():
        server = await asyncio.start_server(
            handle, "127.0.0.1", args.listen_port, backlog=1024
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
