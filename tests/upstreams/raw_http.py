"""An upstream that answers at the byte level, for the proxy's framing edge cases.

    python raw_http.py --port PORT

Paths (the request's body, if any, is read by its Content-Length or chunked):
    /echo, .../echo  200, JSON of the request line and headers as received
    /chunked         200, chunked: three chunks and a trailer
    /badchunk        200, chunked, with a chunk size written as 0x5 (not valid)
    /close           200, no Content-Length: the body ends when the connection closes
    /hints           103 Early Hints, then 200
    /big?n=N         200, N bytes (default 4 MiB) with Content-Length
    /reset           closes the connection without answering
    /garbage         answers with a line that is not HTTP
    /slow?ms=N       waits N ms, then 200
    /seen?path=P     200, JSON {"count": n}: how many requests for path P came in
    anything else    200 "ok"
HEAD gets the same head as GET, without the body.
"""

from __future__ import annotations

import asyncio
import json
import urllib.parse
from collections import Counter

from listen import serve_from_command_line  # beside this script

SEEN: Counter[str] = Counter()  # requests by path, for /seen


def _response(status: str, headers: list[tuple[str, str]], body: bytes = b"") -> bytes:
    head = f"HTTP/1.1 {status}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
    return head.encode("latin-1") + body


async def _chunked_body(reader: asyncio.StreamReader) -> bytes:
    body = b""
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":
                pass  # trailers
            return body
        body += await reader.readexactly(size)
        await reader.readexactly(2)


async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            headers = [tuple(p.strip() for p in line.split(":", 1)) for line in lines[1:]
                       if line]
            length = next((int(v) for k, v in headers if k.lower() == "content-length"), 0)
            chunked = any(k.lower() == "transfer-encoding" and "chunked" in v.lower()
                          for k, v in headers)
            body = await _chunked_body(reader) if chunked else \
                await reader.readexactly(length) if length else b""
            url = urllib.parse.urlsplit(target)
            query = dict(urllib.parse.parse_qsl(url.query))
            head_only = method == "HEAD"
            SEEN[url.path] += 1
            if url.path == "/reset":
                writer.close()
                return
            if url.path == "/garbage":
                writer.write(b"THIS IS NOT HTTP\r\n\r\n")
                writer.close()
                return
            if url.path == "/slow":
                await asyncio.sleep(int(query.get("ms", "1000")) / 1000)
            if url.path == "/seen":
                payload = json.dumps({"count": SEEN[query.get("path", "")]}).encode()
                out = _response("200 OK", [("Content-Type", "application/json"),
                                           ("Content-Length", str(len(payload)))], payload)
            elif url.path.endswith("/echo"):
                payload = json.dumps({"method": method, "target": target, "headers": headers,
                                      "body": body.decode("latin-1")}).encode()
                out = _response("200 OK", [("Content-Type", "application/json"),
                                           ("Content-Length", str(len(payload)))], payload)
            elif url.path == "/chunked":
                out = _response("200 OK", [("Transfer-Encoding", "chunked"),
                                           ("Trailer", "X-Checksum")])
                if not head_only:
                    out += (b"5\r\nhello\r\n1;ext=1\r\n \r\n5\r\nworld\r\n"
                            b"0\r\nX-Checksum: 42\r\n\r\n")
            elif url.path == "/badchunk":
                out = _response("200 OK", [("Transfer-Encoding", "chunked")])
                out += b"0x5\r\nhello\r\n0\r\n\r\n"
            elif url.path == "/close":
                writer.write(_response("200 OK", [("Connection", "close")]))
                if not head_only:
                    writer.write(b"until the end")
                await writer.drain()
                writer.close()
                return
            elif url.path == "/hints":
                out = _response("103 Early Hints", [("Link", "</style.css>; rel=preload")])
                out += _response("200 OK", [("Content-Length", "5")], b"" if head_only
                                 else b"hints")
            elif url.path == "/big":
                n = int(query.get("n", str(4 * 1024 * 1024)))
                out = _response("200 OK", [("Content-Length", str(n))])
                writer.write(out)
                if not head_only:
                    block = bytes(range(256)) * 256
                    sent = 0
                    while sent < n:
                        part = block[: min(len(block), n - sent)]
                        writer.write(part)
                        sent += len(part)
                        await writer.drain()
                continue
            else:
                out = _response("200 OK", [("Content-Length", "2")], b"" if head_only else b"ok")
            if head_only and url.path.endswith("/echo"):
                out = out.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"
            writer.write(out)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


if __name__ == "__main__":
    serve_from_command_line(serve)
