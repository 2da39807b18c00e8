"""`grace-hpc pull`: download models into the shared Hugging Face cache (login node), for offline server jobs."""

from __future__ import annotations

import argparse
from dataclasses import asdict

from grace_hpc.cli.common import add_common, config_dir, print_json


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pull", help="download models into the shared Hugging Face cache (paths.hf_cache) for jobs "
                                    "on nodes without internet")
    add_common(p)
    p.add_argument("models", nargs="+", metavar="MODEL",
                   help="catalog name, or a hub repository id (org/name, or org/name/FILE for one GGUF file)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from grace_hpc.errors import ConfigError
    from grace_hpc.launch.pull import pull

    config = config_dir(args)
    cluster, catalog = config.cluster(), config.catalog()
    if cluster.paths.hf_cache is None:
        raise ConfigError("paths.hf_cache is not set in cluster.yaml: set it to a folder the compute nodes share")
    hf_cache = config.resolve(cluster.paths.hf_cache)
    pulled = []
    for name in args.models:
        try:
            ref = catalog.get(name).hf_id
        except KeyError:
            ref = name
        done = pull(ref, hf_cache)
        pulled.append(done)
        if not args.json:
            print(f"{done.repo}: {len(done.files)} file(s), {done.size_bytes / 2**30:.2f} GiB in {done.snapshot}")
    if args.json:
        print_json([asdict(p) for p in pulled])
    return 0
