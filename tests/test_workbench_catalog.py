"""`grace-hpc models add|show|remove` edit configs/models.yaml as text: every other byte and comment stays, a backup
is kept, `--dry-run` writes nothing, an incomplete entry is refused by `plan` until a config.json completes it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from grace_hpc.cli import main
from grace_hpc.config.catalog_edit import checked_edit, remove_entry, write_catalog
from grace_hpc.errors import ConfigError
from tests.test_planner_importers import TINY_CONFIG, write_safetensors
from tests.test_workbench_pages import PAGES

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = (ROOT / "configs" / "models.yaml").read_text(encoding="utf-8")


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    """A copy of the shipped cluster.yaml (with a Hugging Face cache folder) and models.yaml."""
    conf = tmp_path / "configs"
    conf.mkdir()
    cluster = yaml.safe_load((ROOT / "configs" / "cluster.yaml").read_text())
    cluster["paths"]["hf_cache"] = str(tmp_path / "hf")
    (conf / "cluster.yaml").write_text(yaml.safe_dump(cluster))
    (conf / "models.yaml").write_text(SHIPPED)
    return conf


def grace(conf: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main([*args, "--config-dir", str(conf)])
    out = capsys.readouterr()
    return code, out.out, out.err


def comments(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.lstrip().startswith("#")]


def test_adding_a_page_appends_one_block_and_keeps_every_byte_before_it(conf: Path, capsys) -> None:
    code, out, _ = grace(conf, capsys, "models", "add", "--from-page", str(PAGES / "mixtral-8x7b-instruct-v0.1.txt"))
    assert code == 0 and "INCOMPLETE" in out
    text = (conf / "models.yaml").read_text()
    assert text.startswith(SHIPPED) and (conf / "models.yaml.bak").read_text() == SHIPPED
    added = text[len(SHIPPED):]
    assert added.startswith("\nincomplete:\n  # added by `grace-hpc models add`; source: pasted model page of "
                            "https://huggingface.co/mistralai/Mixtral-8x7B-Instruct-v0.1\n  - name: mixtral-8x7b")
    assert yaml.safe_load(text)["incomplete"][0]["moe"] is True
    code, _, _ = grace(conf, capsys, "models", "remove", "mixtral-8x7b-instruct-v0.1")
    assert code == 0 and (conf / "models.yaml").read_text() == SHIPPED  # and back, byte for byte


def test_plan_refuses_an_incomplete_entry_saying_what_is_missing(conf: Path, capsys) -> None:
    grace(conf, capsys, "models", "add", "--from-page", str(PAGES / "tinyllama-1.1b-chat-v1.0-awq.txt"))
    code, _, err = grace(conf, capsys, "plan", "--model", "tinyllama-1.1b-chat-v1.0", "--gpu", "T4")
    assert code == 1
    assert "tinyllama-1.1b-chat-v1.0 is incomplete in models.yaml: its page does not state num_hidden_layers" in err
    assert "--hf-id TinyLlama/TinyLlama-1.1B-Chat-v1.0" in err
    code, out, _ = grace(conf, capsys, "models", "show", "tinyllama-1.1b-chat-v1.0", "--json")
    shown = json.loads(out)
    assert (shown["complete"], shown["plans"]) == (False, []) and "head_dim" in shown["missing"]


def test_a_deployment_naming_an_incomplete_entry_is_refused_too(conf: Path, capsys) -> None:
    grace(conf, capsys, "models", "add", "--from-page", str(PAGES / "mixtral-8x7b-instruct-v0.1.txt"))
    (conf / "deployments").mkdir()
    (conf / "deployments" / "moe.yaml").write_text(
        "name: moe\nservers:\n  - {name: m, partition: h100, models: [mixtral-8x7b-instruct-v0.1]}\n")
    code, _, err = grace(conf, capsys, "plan", "--deployment", "moe")
    assert code == 1 and "mixtral-8x7b-instruct-v0.1 is incomplete" in err


def test_the_cached_config_json_completes_it_keeping_name_license_and_variants(conf: Path, capsys) -> None:
    grace(conf, capsys, "models", "add", "--from-page", str(PAGES / "tinyllama-1.1b-chat-v1.0-awq.txt"))
    snapshot = conf.parent / "hf" / "hub" / "models--TinyLlama--TinyLlama-1.1B-Chat-v1.0" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps(TINY_CONFIG))
    code, out, err = grace(conf, capsys, "models", "add", "--hf-id", "TinyLlama/TinyLlama-1.1B-Chat-v1.0", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["complete"] and result["completed"] == "tinyllama-1.1b-chat-v1.0"
    entry = result["entry"]
    assert (entry["name"], entry["hf_id"], entry["license"]) == ("tinyllama-1.1b-chat-v1.0",
                                                                 "TinyLlama/TinyLlama-1.1B-Chat-v1.0", "apache-2.0")
    assert entry["variants"][0]["hf_id"] == "TheBloke/TinyLlama-1.1B-Chat-v1.0-AWQ" and "weights" not in entry
    catalog = yaml.safe_load((conf / "models.yaml").read_text())
    assert "incomplete" not in catalog  # its last entry gone, the section goes too
    assert [row["partition"] for row in result["plans"]] == ["h100", "a100", "l4", "t4", "cpu"]
    code, plan_out, _ = grace(conf, capsys, "plan", "--model", "tinyllama-1.1b-chat-v1.0", "--gpu", "T4", "--json")
    t4 = next(row for row in result["plans"] if row["partition"] == "t4")
    assert code == 0 and json.loads(plan_out) == t4["plan"]  # the same numbers as `plan --json`


def test_no_cached_config_says_where_it_looked(conf: Path, capsys) -> None:
    code, _, err = grace(conf, capsys, "models", "add", "--hf-id", "acme/absent")
    assert code == 1 and "models--acme--absent" in err and "huggingface-cli download" in err


def test_a_folder_entry_plans_on_every_partition_and_show_and_remove_round_trip(conf: Path, capsys,
                                                                                  tmp_path: Path) -> None:
    folder = tmp_path / "My Tiny"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(TINY_CONFIG))
    write_safetensors(folder / "model.safetensors", {"model.embed_tokens.weight": ("BF16", [1024, 64])})
    code, out, err = grace(conf, capsys, "models", "add", "--from-folder", str(folder), "--license", "mit")
    assert code == 0, err
    assert "added 'my-tiny'" in out and "4 x L4" in out
    code, out, _ = grace(conf, capsys, "models", "show", "my-tiny", "--json")
    assert json.loads(out)["entry"]["weights"] == str(folder.resolve())
    code, out, _ = grace(conf, capsys, "models", "remove", "my-tiny")
    assert code == 0 and (conf / "models.yaml").read_text() == SHIPPED


def test_dry_run_writes_nothing(conf: Path, capsys) -> None:
    before = (conf / "models.yaml").stat()
    code, out, _ = grace(conf, capsys, "models", "add", "--from-page", str(PAGES / "mixtral-8x7b-instruct-v0.1.txt"),
                         "--dry-run")
    assert code == 0 and "dry run" in out
    code, _, _ = grace(conf, capsys, "models", "remove", "gemma-2-2b-it", "--dry-run")
    assert code == 0 and (conf / "models.yaml").read_text() == SHIPPED
    assert (conf / "models.yaml").stat().st_mtime_ns == before.st_mtime_ns and not (conf / "models.yaml.bak").exists()


def test_a_taken_name_is_refused(conf: Path, capsys) -> None:
    code, _, err = grace(conf, capsys, "models", "add", "--from-page", str(PAGES / "qwen2.5-7b-instruct.txt"),
                         "--license", "apache-2.0")
    assert code == 1 and "'qwen2.5-7b-instruct' is already in the catalog" in err and "--name" in err


@pytest.mark.parametrize("name", [m["name"] for m in yaml.safe_load(SHIPPED)["models"]])
def test_removing_any_shipped_entry_cuts_exactly_it_and_its_own_comments(name: str) -> None:
    new, section = remove_entry(SHIPPED, name)
    catalog = checked_edit(SHIPPED, new, section, removed=name)  # the rest parses to exactly the same entries
    assert name not in catalog.names() and len(catalog.models) == len(yaml.safe_load(SHIPPED)["models"]) - 1
    kept, shipped = comments(new), iter(comments(SHIPPED))
    assert all(c in shipped for c in kept)  # a subsequence: comments only dropped, never reordered or changed
    assert len(comments(SHIPPED)) - len(kept) <= 4  # its "# source:" lines (and a section rule above it), no more


def test_a_concurrent_change_is_not_overwritten(conf: Path) -> None:
    path = conf / "models.yaml"
    path.write_text(SHIPPED + "# edited by someone else meanwhile\n")
    with pytest.raises(ConfigError, match="changed while it was being edited"):
        write_catalog(path, SHIPPED, SHIPPED.replace("gemma", "GEMMA"))
    assert path.read_text().endswith("meanwhile\n")


def test_the_catalog_keeps_its_permissions(conf: Path, capsys) -> None:
    (conf / "models.yaml").chmod(0o644)
    grace(conf, capsys, "models", "remove", "bge-m3")
    assert (conf / "models.yaml").stat().st_mode & 0o777 == 0o644


def test_an_unknown_name_points_at_the_catalog_listing(conf: Path, capsys) -> None:
    code, _, err = grace(conf, capsys, "models", "remove", "nope")
    assert code == 1 and "unknown model 'nope'" in err and "`grace-hpc models` lists all" in err


def test_the_repository_catalog_is_untouched_by_these_tests() -> None:
    assert (ROOT / "configs" / "models.yaml").read_text(encoding="utf-8") == SHIPPED
    assert not (ROOT / "configs" / "models.yaml.bak").exists()
