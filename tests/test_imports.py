"""The core package imports on a login node: no vLLM, no llama.cpp, no torch, no psycopg (they are extras)."""

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

BLOCKER = textwrap.dedent("""
    import importlib.abc, sys
    BLOCKED = {"vllm", "torch", "xllamacpp", "llama_cpp", "transformers", "psycopg"}
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"blocked for this test: {name}")
    sys.meta_path.insert(0, Block())
    import pkgutil, importlib, grace_hpc
    names = [m.name for m in pkgutil.walk_packages(grace_hpc.__path__, "grace_hpc.")]
    for n in names:
        if n.endswith("__main__"):
            continue
        importlib.import_module(n)
    from grace_hpc.cli import build_parser
    build_parser()
    print(len(names), "modules")
""")


def test_every_module_imports_without_engines_or_torch():
    proc = subprocess.run([sys.executable, "-c", BLOCKER], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "modules" in proc.stdout


def test_importing_the_package_starts_nothing_and_reads_no_config(tmp_path):
    code = "import grace_hpc, signal, threading; assert threading.active_count() == 1; " \
           "assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL; print('ok')"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert proc.stdout.strip() == "ok", proc.stderr


def test_every_public_name_resolves_and_the_package_imports_light():
    code = ("import sys, grace_hpc; heavy = {'aiohttp', 'pandas', 'pyarrow', 'submitit'} & set(sys.modules); "
            "assert not heavy, heavy; [getattr(grace_hpc, n) for n in grace_hpc.__all__]; print('ok')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.stdout.strip() == "ok", proc.stderr


def test_the_command_line_imports_no_dataframe_library():
    """pandas and pyarrow cost ~1 s to import: `status`, `plan` and `--help` must not pay it, only `work` does."""
    code = ("import sys; from grace_hpc.cli import build_parser; build_parser(); "
            "heavy = {'pandas', 'pyarrow'} & set(sys.modules); assert not heavy, heavy; print('ok')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.stdout.strip() == "ok", proc.stderr
