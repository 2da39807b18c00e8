"""A `llama-server`-compatible entry point on top of xllamacpp (llama.cpp's own HTTP server, prebuilt on PyPI).

    python -m grace_hpc.engines.llamacpp_server -m MODEL.gguf --host H --port P [--alias NAME] [-c CTX] [-np N]
        [--embedding [--pooling mean]] [--chat-template-kwargs JSON]

accepts the subset of llama-server's flags that grace-hpc renders, so a plan's argv runs unchanged with either
binary. The API key is read from $LLAMA_API_KEY (as llama-server does), never from argv: argv is world-readable
in `ps` on a shared node. Runs until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from collections.abc import Sequence

#: llama-server's `--pooling` values (llama.h `llama_pooling_type`)
POOLING = ("none", "mean", "cls", "last", "rank")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="grace-hpc-llama-server", description=__doc__)
    p.add_argument("-m", "--model", required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("-a", "--alias")
    p.add_argument("-c", "--ctx-size", type=int, default=4096)
    p.add_argument("-np", "--parallel", type=int, default=1)
    p.add_argument("-t", "--threads", type=int, default=0, help="0: all CPUs this process may use")
    p.add_argument("-ngl", "--n-gpu-layers", type=int, default=0)
    p.add_argument("--embedding", "--embeddings", action="store_true")
    p.add_argument("--pooling", choices=POOLING, help="default: the model's own (an embedding GGUF declares it)")
    p.add_argument("--chat-template-kwargs", type=json.loads, help="JSON object passed to the chat template")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    import xllamacpp as xlc  # imported here: the core package must import without the cpu extra

    params = xlc.CommonParams()
    params.model.path = args.model
    params.hostnames = [args.host] if isinstance(params.hostnames, list) else args.host
    params.port = args.port
    params.n_ctx = args.ctx_size * args.parallel  # llama-server splits n_ctx over slots; keep ctx per request
    params.n_parallel = args.parallel
    threads = args.threads or len(os.sched_getaffinity(0))
    params.cpuparams.n_threads = threads
    params.cpuparams_batch.n_threads = threads
    params.n_gpu_layers = args.n_gpu_layers
    params.warmup = False
    params.embedding = args.embedding
    if args.pooling:
        params.pooling_type = getattr(xlc.llama_pooling_type, f"LLAMA_POOLING_TYPE_{args.pooling.upper()}")
    if args.chat_template_kwargs is not None:
        params.default_template_kwargs = {k: json.dumps(v) for k, v in args.chat_template_kwargs.items()}
    if args.alias:
        params.model_alias = {args.alias} if isinstance(params.model_alias, set) else args.alias
    key = os.environ.get("LLAMA_API_KEY")
    if key:
        params.api_keys = [key]
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    server = xlc.Server(params)
    print(f"llama.cpp server listening on {args.host}:{args.port} model={args.model}", flush=True)
    stop.wait()
    del server
    print("llama.cpp server stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
