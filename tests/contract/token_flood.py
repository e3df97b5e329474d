"""A wrong-secret flood on `/oauth/token`: many keep-alive connections to a loopback edge.

Run as `python -m tests.contract.token_flood PORT CONNECTIONS SECONDS`; prints the count of
each answer's status as JSON when done. Only loopback addresses are accepted, and it runs
for a bounded time: the flood is a test of this stack, never of another host.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections import Counter

HOST = "127.0.0.1"
BODY = b"grant_type=client_credentials&client_id=no-such-client&client_secret=nope"
REQUEST = (
    b"POST /oauth/token HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    b"Content-Type: application/x-www-form-urlencoded\r\n"
    b"Content-Length: " + str(len(BODY)).encode() + b"\r\n\r\n" + BODY
)
MAX_SECONDS = 120.0


async def _connection(port: int, until: float, statuses: Counter[int]) -> None:
    while time.monotonic() < until:
        try:
            reader, writer = await asyncio.open_connection(HOST, port)
        except OSError:
            statuses[0] += 1
            await asyncio.sleep(0.01)
            continue
        try:
            while time.monotonic() < until:
                writer.write(REQUEST)
                head = await asyncio.wait_for(
                    reader.readuntil(b"\r\n\r\n"), timeout=until - time.monotonic() + 1
                )
                lines = head.decode("latin-1").split("\r\n")
                length = 0
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value)
                await reader.readexactly(length)
                statuses[int(lines[0].split()[1])] += 1
                if any(line.lower() == "connection: close" for line in lines):
                    break
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError):
            statuses[-1] += 1
        finally:
            writer.close()


async def flood(port: int, connections: int, seconds: float) -> Counter[int]:
    statuses: Counter[int] = Counter()
    until = time.monotonic() + min(seconds, MAX_SECONDS)
    await asyncio.gather(*(_connection(port, until, statuses) for _ in range(connections)))
    return statuses


def main() -> None:
    # The attacker's CPU is not the server's: on a small shared machine the generator yields
    # to the stack under test, so what is measured is the stack, not this loop.
    os.nice(10)
    port, connections, seconds = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    statuses = asyncio.run(flood(port, connections, seconds))
    print(json.dumps({str(status): count for status, count in sorted(statuses.items())}))


if __name__ == "__main__":
    main()
