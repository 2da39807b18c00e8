#!/usr/bin/env python3
"""The usage ledger's own CPU cost per request, without sockets: what bench/router.py --ledger measures through a
loaded machine's noise.

    python bench/ledger.py [--requests 50000] [--ledger PATH|postgresql://...]

Runs the router's per-request user hooks (open, admit, finish) N times with the ledger off, then on (its writer
thread committing a batch every 0.2 s), and prints the process CPU time per request of each (both threads).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from grace_hpc.ledger import LedgerWriter, open_ledger  # after the path insert
from grace_hpc.registry.records import EndpointRecord
from grace_hpc.router.users import Users

ENDPOINT = EndpointRecord(id="e-1", model="m", served_model_name="m", engine="llama.cpp", host="h", port=1,
                          base_url="http://h:1/v1", started_at=0, heartbeat_at=0, partition="t4")
USAGE = {"prompt_tokens": 12, "completion_tokens": 40}


def cpu_us_per_request(n: int, writer: LedgerWriter | None) -> float:
    users = Users(writer=writer)
    start = time.process_time()
    for _ in range(n):
        tab = users.open(None)
        users.admit(tab, "code", None, {}, 3)
        users.finish(tab, 200, endpoint=ENDPOINT, usage=USAGE)
    if writer is not None:
        writer.close()  # the last batch's commit is part of the cost
    return (time.process_time() - start) / n * 1e6


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=50_000)
    p.add_argument("--ledger", help="a SQLite path or postgresql:// DSN (default: SQLite in a temp folder)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        target = args.ledger or str(Path(tmp) / "ledger.sqlite")
        off = cpu_us_per_request(args.requests, None)
        on = cpu_us_per_request(args.requests, LedgerWriter(open_ledger(target)))
    print(f"CPU per request, user hooks only: ledger off {off:.1f} us, on {on:.1f} us (+{on - off:.1f} us); "
          "a proxied request costs 230-460 us of CPU (docs/router.md)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
