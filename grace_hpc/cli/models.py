"""`grace-hpc models`: list the model catalog; `models add|show|remove` edit it (the workbench, docs/workbench.md).

    models                                     the catalog (configs/models.yaml)
    models add --from-page FILE|-              an entry from pasted model-page text (incomplete: no config.json)
    models add --from-folder DIR|FILE.gguf     an entry from a local Hugging Face folder or .gguf file
    models add --hf-id ORG/NAME                an entry from config.json in paths.hf_cache
    models show NAME                           the entry and its plan on every partition
    models remove NAME                         cut it out of models.yaml (a backup is kept)
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

import yaml

from grace_hpc.cli.common import add_common, config_dir, console, print_json
from grace_hpc.errors import ConfigError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the model catalog (configs/models.yaml); add, show or remove entries")
    add_common(p)
    p.set_defaults(handler=run)
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    add = actions.add_parser("add", help="add a model from a pasted page, a local folder/.gguf or the HF cache")
    add_common(add)
    source = add.add_mutually_exclusive_group(required=True)
    source.add_argument("--from-page", metavar="FILE|-", help="text copied from a Hugging Face model page ('-': stdin)")
    source.add_argument("--from-folder", metavar="DIR|FILE", type=Path,
                        help="a local Hugging Face folder (config.json + safetensors) or a .gguf file")
    source.add_argument("--hf-id", metavar="ORG/NAME", help="a model whose config.json is in cluster.yaml's "
                        "paths.hf_cache")
    add.add_argument("--name", help="catalog name (default: from the model id, folder or file name)")
    add.add_argument("--model-id", help="the page's repository, when the page does not say it")
    add.add_argument("--license", help="license id, when the source does not say it")
    add.add_argument("--bits", type=int, help="weight bits of a quantized checkpoint, when the page does not say")
    add.add_argument("--dry-run", action="store_true", help="show the entry and its plans; write nothing")
    add.set_defaults(handler=run_add)
    show = actions.add_parser("show", help="an entry and its plan on every partition of cluster.yaml")
    add_common(show)
    show.add_argument("name")
    show.set_defaults(handler=run_show)
    remove = actions.add_parser("remove", help="remove an entry from models.yaml (keeps models.yaml.bak)")
    add_common(remove)
    remove.add_argument("name")
    remove.add_argument("--dry-run", action="store_true", help="say what would be removed; write nothing")
    remove.set_defaults(handler=run_remove)


def run(args: argparse.Namespace) -> int:
    catalog = config_dir(args).catalog()
    if args.json:
        print_json([m.model_dump(mode="json") for m in catalog.models])
        return 0
    from rich.table import Table

    table = Table(title=f"{len(catalog.models)} models" + (f", {len(catalog.incomplete)} incomplete (`models show "
                                                           "NAME` says what they lack)" if catalog.incomplete else ""))
    for col in ("name", "hf id", "task", "layers", "hidden", "heads/kv", "ctx", "MoE", "license"):
        table.add_column(col, overflow="fold")  # names are copied into commands: wrapped, never cut with "…"
    for m in catalog.models:
        a = m.architecture
        moe = f"{a.moe.experts_per_token}/{a.moe.num_experts}" if a.moe else ""
        table.add_row(
            m.name, m.hf_id, m.task.value, str(a.num_hidden_layers), str(a.hidden_size),
            f"{a.num_attention_heads}/{a.num_key_value_heads}", str(m.context_length), moe, m.license,
        )
    for i in catalog.incomplete:
        table.add_row(i.name, i.hf_id, i.task.value, "incomplete", "", "", str(i.context_length or ""),
                      "yes" if i.moe else "", i.license)
    console().print(table)
    return 0


def _page_text(arg: str) -> str:
    if arg == "-":
        return sys.stdin.read()
    try:
        return Path(arg).read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise ConfigError(f"{arg}: cannot read the page text ({exc.strerror})") from exc


def run_add(args: argparse.Namespace) -> int:
    from grace_hpc.workbench import (
        Overrides,
        add_entry,
        describe,
        entry_from_cache,
        entry_from_page_or_cache,
        entry_from_path,
    )

    configs = config_dir(args)
    cluster = configs.cluster()
    over = Overrides(name=args.name, model_id=args.model_id, license=args.license, bits=args.bits)
    if args.from_page:
        entry = entry_from_page_or_cache(_page_text(args.from_page), cluster, configs, over)
    elif args.from_folder:
        entry = entry_from_path(args.from_folder, over)
    else:
        entry = entry_from_cache(args.hf_id, cluster, configs, over)
    edit = add_entry(configs, entry, dry_run=args.dry_run)
    result = {**describe(edit.entry, cluster), "written": not args.dry_run, "completed": edit.completed,
              "backup": str(edit.backup) if edit.backup else None}
    if args.json:
        print_json(result)
        return 0
    _print_described(result)
    where = configs.root / "models.yaml"
    done = (f"dry run: {where} unchanged" if args.dry_run
            else f"added {edit.entry.name!r} to {where} (previous file: {edit.backup})")
    if edit.completed:
        done += f"; it completes the incomplete entry {edit.completed!r}"
    print(done)
    return 0


def run_show(args: argparse.Namespace) -> int:
    from grace_hpc.workbench import describe

    configs = config_dir(args)
    catalog = configs.catalog()
    entry = next((m for m in (*catalog.models, *catalog.incomplete) if m.name == args.name), None)
    if entry is None:
        raise ConfigError(catalog.unknown_model(args.name, str(configs.root / "models.yaml")))
    result = describe(entry, configs.cluster())
    if args.json:
        print_json(result)
    else:
        _print_described(result)
    return 0


def run_remove(args: argparse.Namespace) -> int:
    from grace_hpc.workbench import remove_named

    configs = config_dir(args)
    edit = remove_named(configs, args.name, dry_run=args.dry_run)
    if args.json:
        print_json({"removed": edit.entry.name, "written": not args.dry_run,
                    "backup": str(edit.backup) if edit.backup else None})
    elif args.dry_run:
        print(f"dry run: would remove {edit.entry.name!r} from {configs.root / 'models.yaml'}")
    else:
        print(f"removed {edit.entry.name!r} from {configs.root / 'models.yaml'} (previous file: {edit.backup})")
    return 0


def _print_described(result: dict[str, Any]) -> None:
    from rich.table import Table

    out = console()
    out.print(yaml.safe_dump(result["entry"], sort_keys=False).rstrip(), markup=False, highlight=False)
    if not result["complete"]:
        out.print(f"INCOMPLETE: {result['reason']}", markup=False, highlight=False)
        return
    table = Table(title="plan on every partition of cluster.yaml (`plan --model NAME --gpu GPU` for the details)")
    for col in ("partition", "GPUs", "fits", "engine, precision", "TP", "ctx", "weights GiB/GPU", "KV tokens",
                "if short: cheapest levers"):
        table.add_column(col)
    for row in result["plans"]:
        p = row["plan"]
        table.add_row(
            row["partition"], f"{row['gpus_per_node']} x {row['gpu']}" if row["gpus_per_node"] else row["gpu"],
            "yes" if row["fits"] else "NO",
            f"{p['engine']} {p['dtype']} {p['quantization'] or ''}".strip(), str(p["tensor_parallel_size"]),
            str(p["max_model_len"]), f"{p['weights_gib_per_gpu']:.1f}", str(p["kv_cache_tokens"]),
            (row["lever"] or "").removeprefix("what would fit: "),
        )
    out.print(table)
    first = next((row for row in result["plans"] if row["fits"]), None)
    if first is not None:
        # one line whatever the width: it is copied into a terminal
        out.print(f"command on {first['partition']}: {shlex.join(first['plan']['argv'])}", markup=False,
                  highlight=False, soft_wrap=True)
