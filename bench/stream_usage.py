#!/usr/bin/env python3
"""The stream relay's usage tap, its own CPU cost per streamed answer, without sockets.

    python bench/stream_usage.py [--streams 2000] [--tokens 256]

Feeds llama.cpp-shaped chat streams (one chunk per token, then the usage-only chunk and `[DONE]`) through
`UsageTap` as the relay does, read by read, and prints the CPU time per stream: passed through untouched (what the
relay did before), tapped with the usage relayed (the client asked), and tapped with it dropped (the client did
not); plus one parse of every chunk, the cost the tap avoids. Reads come whole (one event each, as engines write
them) and, in a second run, cut every 100 bytes (events split across reads).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from grace_hpc.router.stream_usage import UsageTap  # after the path insert


def stream_reads(tokens: int, cut: int | None) -> list[bytes]:
    head = {"id": "chatcmpl-x", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "system_fingerprint": "b0"}
    events = [b"data: " + json.dumps({**head, "choices": [{"index": 0, "delta": {"content": f" tok{i}"},
                                                           "finish_reason": None}]}).encode() + b"\n\n"
              for i in range(tokens)]
    events.append(b"data: " + json.dumps({**head, "choices": [], "usage": {
        "prompt_tokens": 30, "completion_tokens": tokens, "total_tokens": 30 + tokens}}).encode() + b"\n\n")
    events.append(b"data: [DONE]\n\n")
    if cut is None:
        return events
    data = b"".join(events)
    return [data[i:i + cut] for i in range(0, len(data), cut)]


def cpu_us(streams: int, reads: list[bytes], relay: Callable[[list[bytes]], object]) -> float:
    start = time.process_time()
    for _ in range(streams):
        relay(reads)
    return (time.process_time() - start) / streams * 1e6


def untouched(reads: list[bytes]) -> object:
    return [chunk for chunk in reads]


def tapped(strip: bool) -> Callable[[list[bytes]], object]:
    def relay(reads: list[bytes]) -> object:
        tap = UsageTap(strip)
        out = [tap.feed(chunk) for chunk in reads]
        out.append(tap.end())
        assert tap.usage is not None
        return out
    return relay


def parse_every_chunk(reads: list[bytes]) -> object:
    return [json.loads(c[6:]) for c in reads if c.startswith(b"data: {")]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--streams", type=int, default=2000)
    p.add_argument("--tokens", type=int, default=256)
    args = p.parse_args()
    print(f"CPU per streamed answer of {args.tokens} tokens, {args.streams} streams each (us)")
    for label, cut in (("whole events per read", None), ("reads cut every 100 bytes", 100)):
        reads = stream_reads(args.tokens, cut)
        base = cpu_us(args.streams, reads, untouched)
        kept = cpu_us(args.streams, reads, tapped(strip=False))
        dropped = cpu_us(args.streams, reads, tapped(strip=True))
        line = f"{label:26s} untouched {base:8.1f}  tap, usage relayed {kept:8.1f}  tap, usage dropped {dropped:8.1f}"
        if cut is None:
            line += f"  json per chunk {cpu_us(args.streams, reads, parse_every_chunk):8.1f}"
        print(line)
        print(f"{'':26s} tap overhead per stream: +{kept - base:.1f} / +{dropped - base:.1f} us")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
