"""The Models page in a real headless Chromium, its own JavaScript calling a real router: paste a real model page,
see the plan on every partition, add it, find it in the catalog API; markup in a pasted page stays text.
Screenshots go to logs/test-artifacts/ (or $GRACE_TEST_ARTIFACTS)."""

from __future__ import annotations

import json
from pathlib import Path

import requests

from grace_hpc.cli import main
from tests.support.browser import Browser
from tests.test_dashboard_browser import ARTIFACTS
from tests.test_dashboard_browser import browser as browser  # the fixture, shared
from tests.test_workbench_api import AUTH, KEY, router
from tests.test_workbench_catalog import conf as conf  # the fixture, shared
from tests.test_workbench_pages import page

# TinyLlama/TinyLlama-1.1B-Chat-v1.0's config.json (its numbers, as in a public copy found with the code search:
# hidden 2048, intermediate 5632, 32/4 heads, 22 layers, vocab 32000 from its Embedding(32000, 2048))
TINYLLAMA_CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 2048, "intermediate_size": 5632,
    "num_attention_heads": 32, "num_hidden_layers": 22, "num_key_value_heads": 4, "vocab_size": 32000,
    "max_position_embeddings": 2048, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
}
HOSTILE = ("acme/evil-1B\nlicense: <img src=x onerror=window.pwned=1><script>window.pwned=2</script>\n"
           "<b>Number of Layers: 4</b>\n")
PLAN_ROW = "return document.querySelector(`#plans tr[data-partition=\"${arguments[0]}\"]`)"


def row_cells(browser: Browser, script: str, *args: str) -> dict[str, str] | None:
    return browser.run(f"const tr = (function() {{ {script} }}).apply(null, arguments); if (!tr) return null;"
                       "const out = {}; tr.querySelectorAll('td').forEach((td) => { out[td.className] = td.textContent; });"
                       "return out;", *args)


def paste(browser: Browser, text: str) -> None:
    browser.run("const t = document.getElementById('page'); t.value = arguments[0];"
                "t.dispatchEvent(new Event('input'));", text)


def test_paste_a_page_see_the_plans_add_it_and_find_it_in_the_catalog_api(conf: Path, browser: Browser,
                                                                           capsys) -> None:
    snapshot = conf.parent / "hf" / "hub" / "models--TinyLlama--TinyLlama-1.1B-Chat-v1.0" / "snapshots" / "main"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps(TINYLLAMA_CONFIG))
    with router(conf) as url:
        browser.open(f"{url}/ui/models.html")
        browser.wait_for("return !document.getElementById('key-form').hidden")  # the catalog call said 401
        browser.run("document.getElementById('key').value = arguments[0];"
                    "document.getElementById('key-form').requestSubmit();", KEY)
        browser.wait_for("return document.querySelectorAll('#catalog tbody tr').length > 30")

        paste(browser, page("tinyllama-1.1b-chat-v1.0-awq.txt"))
        browser.wait_for("return document.querySelectorAll('#plans tbody tr').length === 5")
        assert "tinyllama-1.1b-chat-v1.0" in browser.run("return document.getElementById('parse-status').textContent")
        t4 = row_cells(browser, PLAN_ROW, "t4")
        api = requests.post(f"{url}/api/models/parse", json={"text": page("tinyllama-1.1b-chat-v1.0-awq.txt")},
                            headers=AUTH, timeout=30).json()
        plan = next(r for r in api["plans"] if r["partition"] == "t4")["plan"]
        assert t4["fits"] == "yes" and t4["gpus"] == "2 × T4"
        assert (t4["precision"], t4["weights"], t4["tokens"]) == (
            " ".join(filter(None, (plan["dtype"], plan["quantization"]))), f"{plan['weights_gib_per_gpu']:.1f}",
            str(plan["kv_cache_tokens"]))
        cpu = row_cells(browser, PLAN_ROW, "cpu")  # no GGUF of it for llama.cpp: short, with the planner's levers
        lever = next(r for r in api["plans"] if r["partition"] == "cpu")["lever"]
        assert cpu["fits"] == "no" and cpu["lever"] == lever.removeprefix("what would fit: ")
        h100 = next(r for r in api["plans"] if r["partition"] == "h100")["plan"]
        assert browser.run("return document.getElementById('command').textContent") == (
            "on h100: " + " ".join(h100["argv"]))  # the first partition it fits: the `vllm serve` line
        browser.screenshot(ARTIFACTS / "workbench-models-parsed.png")

        browser.run("document.getElementById('add').click()")
        browser.wait_for("return document.getElementById('add-status').textContent.startsWith('added')")
        browser.wait_for("return document.querySelector('#catalog tr[data-name=\"tinyllama-1.1b-chat-v1.0\"]')")
        listed = requests.get(f"{url}/api/models", headers=AUTH, timeout=30).json()
    added = next(m for m in listed["models"] if m["name"] == "tinyllama-1.1b-chat-v1.0")
    assert added["variants"][0]["hf_id"] == "TheBloke/TinyLlama-1.1B-Chat-v1.0-AWQ"
    assert main(["plan", "--model", "tinyllama-1.1b-chat-v1.0", "--gpu", "T4", "--json", "--config-dir",
                 str(conf)]) == 0
    assert json.loads(capsys.readouterr().out) == plan  # the page showed `plan --json`'s numbers


def test_markup_in_a_pasted_page_shows_as_text_and_never_runs(conf: Path, browser: Browser) -> None:
    with router(conf) as url:
        browser.open(f"{url}/ui/models.html")
        browser.run("sessionStorage.setItem('grace-router-key', arguments[0]); location.reload();", KEY)
        browser.wait_for("return document.querySelectorAll('#catalog tbody tr').length > 30")
        paste(browser, HOSTILE)
        browser.wait_for("return document.getElementById('entry').textContent.includes('<script>')")
        browser.run("document.getElementById('add').click()")
        browser.wait_for("return document.querySelector('#catalog tr[data-name=\"evil-1b\"]')")
        cells = browser.run("return [...document.querySelectorAll('#catalog tr[data-name=\"evil-1b\"] td')]"
                            ".map((td) => td.textContent)")
        assert "<img src=x onerror=window.pwned=1><script>window.pwned=2</script>" in cells
        assert browser.run("return document.querySelectorAll('main img, main script, main b').length") == 0
        assert browser.run("return window.pwned === undefined")
        browser.screenshot(ARTIFACTS / "workbench-models-markup.png")
    assert "<script>window.pwned=2</script>" in (conf / "models.yaml").read_text()  # stored as the text it is
