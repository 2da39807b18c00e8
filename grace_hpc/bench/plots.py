"""PNG plots of bench documents (matplotlib, the `bench` extra): one file per model, its endpoints as lines.

Left: output tokens/s against load (where the curve flattens is the endpoint's capacity). Right: TTFT and
end-to-end latency percentiles against the same load (where they climb is saturation)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from grace_hpc.bench.report import file_stem
from grace_hpc.errors import ConfigError

X_LABEL = {"closed": "concurrency (requests in flight)", "open": "offered load (requests/s)"}
THROUGHPUT_LABEL = "output tokens/s"
LATENCY_LABEL = "latency (ms)"
#: (metric, percentile, line style) drawn on the latency panel
LATENCY_LINES = (("ttft_ms", "p50", "-"), ("ttft_ms", "p99", ":"), ("e2e_ms", "p50", "--"), ("e2e_ms", "p99", "-."))


def _pyplot():  # type: ignore[no-untyped-def]
    try:
        import matplotlib
    except ModuleNotFoundError as exc:
        raise ConfigError("--plot needs matplotlib: pip install 'grace-hpc[bench]'") from exc
    matplotlib.use("Agg")  # files only: no display on a compute node
    import matplotlib.pyplot as plt

    return plt


def by_model(docs: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for doc in docs:
        for t in doc["targets"]:
            groups.setdefault(t["catalog_model"] or t["model"], []).append(t)
    return groups


def figure(model: str, targets: Sequence[dict[str, Any]]):  # type: ignore[no-untyped-def]
    """The figure for one model (not saved): axes[0] throughput, axes[1] latency, against load."""
    plt = _pyplot()
    fig, (thr, lat) = plt.subplots(1, 2, figsize=(12, 4.8), constrained_layout=True)
    modes = {lv["mode"] for t in targets for lv in t["levels"]}
    for ax in (thr, lat):
        ax.set_xlabel(" / ".join(X_LABEL[m] for m in sorted(modes)))
        ax.grid(True, alpha=0.3)
        if "closed" in modes:
            ax.set_xscale("log", base=2)
            loads = sorted({lv["load"] for t in targets for lv in t["levels"]})
            ax.set_xticks(loads, [f"{x:g}" for x in loads])  # 1, 4, 16, 64 rather than 2^0, 2^2, ...
    thr.set_ylabel(THROUGHPUT_LABEL)
    thr.set_title("throughput vs load")
    lat.set_ylabel(LATENCY_LABEL)
    lat.set_yscale("log")
    lat.set_title("latency percentiles vs load")
    for i, t in enumerate(targets):
        color = f"C{i % 10}"
        label = t["name"] + (f" ({t['gpu_type']})" if t["gpu_type"] else "")
        loads = [lv["load"] for lv in t["levels"]]
        thr.plot(loads, [lv["output_tokens_per_s"] for lv in t["levels"]], "o-", color=color, label=label)
        for metric, pct, style in LATENCY_LINES:
            points = [(lv["load"], lv[metric][pct]) for lv in t["levels"] if lv[metric]]
            if points:
                xs, ys = zip(*points, strict=True)
                lat.plot(xs, ys, style, marker=".", color=color,
                         label=f"{label} {metric.removesuffix('_ms').upper()} {pct}")
    thr.legend(fontsize="small")
    lat.legend(fontsize="x-small", ncol=1 if len(targets) == 1 else 2)
    thr.set_ylim(bottom=0)
    fig.suptitle(f"grace-hpc bench: {model}")
    return fig


def write_plots(docs: Sequence[dict[str, Any]], folder: Path) -> list[Path]:
    """One PNG per model into `folder` (created); returns the paths."""
    plt = _pyplot()
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for model, targets in by_model(docs).items():
        fig = figure(model, targets)
        path = folder / (file_stem(model) + ".png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths
