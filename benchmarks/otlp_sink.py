"""A discarding OTLP/HTTP trace endpoint for benchmarks: accepts and counts.

The cheapest collector that still takes every export over the network, so a
benchmark pays the mesh's whole tracing cost (spans made, batched, encoded and
posted) and next to nothing for storing them. ``GET /stats`` answers
``{"requests": n, "bytes": n}``.

    python benchmarks/otlp_sink.py PORT
"""

import sys

from aiohttp import web

stats = {"requests": 0, "bytes": 0}


async def traces(request: web.Request) -> web.Response:
    body = await request.read()
    stats["requests"] += 1
    stats["bytes"] += len(body)
    # An empty ExportTraceServiceResponse is zero bytes of protobuf.
    return web.Response(body=b"", content_type="application/x-protobuf")


async def read_stats(request: web.Request) -> web.Response:
    return web.json_response(stats)


def main() -> None:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.add_routes([web.post("/v1/traces", traces), web.get("/stats", read_stats)])
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None)


if __name__ == "__main__":
    main()
