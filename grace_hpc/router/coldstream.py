"""A streamed request that waits for a model's first replica (`cold_start_wait_s`) gets its answer started at once.

The response headers (200, `text/event-stream`) go out when the wait begins, then an SSE comment line every
`coldstart.KEEPALIVE_S` (5 s) saying what the request waits for (`: waiting for a replica of coder (job 123
PENDING: Resources)`), so no read timeout of the client or of a proxy in between closes it. SSE parsers skip
comment lines (WHATWG HTML, "Server-sent events": a line starting with a colon is ignored; the official openai
client's `SSEDecoder` does the same). Once a replica is ready the upstream's stream is relayed into this response
(upstream.py). When the wait ends without one, the status can no longer change: the stream ends with the error the
non-streamed request would have had, as an SSE `data:` event in the OpenAI error shape, which the openai client
raises as an `APIError`.
"""

from __future__ import annotations

from aiohttp import web

from grace_hpc.router import pending
from grace_hpc.router.state import REQUEST_ID
from grace_hpc.router.upstream import StreamProgress, end_stream


class Keepalive:
    """The wait's tick (coldstart.wait_for_replica calls it every few seconds): the first one starts the client's
    stream in `progress.begun`, each one writes a comment. False once the client has gone."""

    def __init__(self, request: web.Request, request_id: str, model: str, progress: StreamProgress) -> None:
        self.request, self.request_id, self.model, self.progress = request, request_id, model, progress

    async def __call__(self) -> bool:
        out = self.progress.begun
        try:
            if out is None:
                out = web.StreamResponse(status=200, headers={
                    REQUEST_ID: self.request_id, "Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
                await out.prepare(self.request)
                self.progress.begun = out
            text = pending.describe(self.model, await pending.job_table(self.request.app))
            await out.write(b": " + text.encode() + b"\n\n")
        except ConnectionError:  # the client hung up (aiohttp raises ConnectionResetError or its subclass)
            return False
        return True


async def end_with(out: web.StreamResponse, refused: web.Response) -> web.StreamResponse:
    """End the started stream `out` with the JSON error `refused` (what a non-streamed request gets) as its last
    event; the status stays the 200 already sent, the access log and metrics keep `refused`'s."""
    await end_stream(out, (refused.text or "").encode())
    return out
