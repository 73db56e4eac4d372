"""An upstream that answers every request with the exact bytes it received, and who it is.

    python recorder.py --port PORT

For tests/test_differential.py: what one proxy path sent upstream, byte for byte,
compared with what the other sent. Every request, at any path and with any method,
gets `200 OK` and a JSON body (to HEAD: no body, the same JSON in base64 in an
`X-Recorded` field):

    {"service": $WAKEGATE_SERVICE, "environment": $WAKEGATE_ENVIRONMENT,
     "address": "127.0.0.1:PORT", where it listens,
     "method": the request line's first word,
     "head": the request head as received (up to, without, the blank line),
     "body": the body as received (chunked framing included), "chunked": bool,
     "problem": null, or why the recorder could not read the request}

bytes as latin-1 strings. The body is read by `Transfer-Encoding: chunked` (any
field of that name whose value contains "chunked"), else by the first Content-Length,
else there is none: what a lenient upstream does. Each answer says `Connection:
close` and the connection is then closed, so every request is recorded on a
connection of its own and no example's bytes can leak into the next one's.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os

from listen import serve_from_command_line  # beside this script

MAX_HEAD = 64 * 1024
READ_DEADLINE = 10.0  # a request the proxy never finishes sending is given up on


async def _chunked(reader: asyncio.StreamReader) -> bytes:
    raw = b""
    while True:
        line = await reader.readuntil(b"\r\n")
        raw += line
        size = int(line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
                raw += line  # trailers
            return raw + line
        raw += await reader.readexactly(size + 2)


async def _read(reader: asyncio.StreamReader) -> dict[str, object]:
    head = (await reader.readuntil(b"\r\n\r\n"))[:-4]
    chunked, length = False, 0
    seen_length = False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
        elif name == b"content-length" and not seen_length:
            seen_length = True
            length = int(value.strip())
    body = await _chunked(reader) if chunked else \
        await reader.readexactly(length) if length else b""
    return {"method": head.split(b" ", 1)[0].decode("latin-1"),
            "head": head.decode("latin-1"), "body": body.decode("latin-1"),
            "chunked": chunked, "problem": None}


async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        try:
            record = await asyncio.wait_for(_read(reader), READ_DEADLINE)
        except (ValueError, asyncio.LimitOverrunError, TimeoutError) as exc:
            record = {"method": "", "head": "", "body": "", "chunked": False,
                      "problem": f"{type(exc).__name__}: {exc}"}
        record["service"] = os.environ.get("WAKEGATE_SERVICE", "")
        record["environment"] = os.environ.get("WAKEGATE_ENVIRONMENT", "")
        host, port = writer.get_extra_info("sockname")[:2]
        record["address"] = f"{host}:{port}"
        payload = json.dumps(record).encode()
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        if record["method"] == "HEAD":
            head += b"X-Recorded: " + base64.b64encode(payload) + b"\r\n"
        writer.write(head + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(payload)
                     + (b"" if record["method"] == "HEAD" else payload))
        await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass  # the proxy went away (a readiness probe, a client that left)
    finally:
        writer.close()


if __name__ == "__main__":
    serve_from_command_line(serve, limit=MAX_HEAD)
