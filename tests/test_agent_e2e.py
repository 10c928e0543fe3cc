"""End to end with the REAL embedded model: `autoresearch run --idea ... --proposals 1` on digits-mlp,
llama.cpp's server started and stopped by autoresearch itself. Offline: the GGUF must already be in
the cache (scripts/setup.sh puts it there) or named by AUTORESEARCH_GGUF."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
from pathlib import Path

import pytest

from autoresearch.agent import local_llm
from conftest import AUTORESEARCH

pytestmark = [pytest.mark.llm, pytest.mark.slow]


def _gguf() -> Path | None:
    explicit = os.environ.get("AUTORESEARCH_GGUF")
    path = Path(explicit) if explicit else local_llm.cache_dir() / local_llm.MODEL_FILE
    return path if path.is_file() else None


def test_idea_run_with_the_embedded_model(tmp_path):
    missing = local_llm.missing_server_modules()
    if missing:
        pytest.skip(f"llama-cpp-python[server] is not installed (missing {', '.join(missing)}): "
                    "pip install -e '.[llm]'")
    if _gguf() is None:
        pytest.skip(f"no local GGUF at {local_llm.cache_dir() / local_llm.MODEL_FILE} and AUTORESEARCH_GGUF unset: "
                    "run scripts/setup.sh (or ../shared/tools/fetch-local-llm.sh)")
    runs = tmp_path / "runs"
    env = {k: v for k, v in os.environ.items() if k not in ("AUTORESEARCH_LLM_BASE_URL", "OPENAI_BASE_URL",
                                                             "AUTORESEARCH_MODEL")}
    # One proposal at --seeds 2, no verification, keeps CI short: the assertions are about the real model's path through
    # the product (server, prompt, reply, checks, trials, records), not the gate's power; the agent's
    # loop over many proposals is tested with a fake model and with a real HTTP server.
    proc = subprocess.run([AUTORESEARCH, "run", "--idea", "adaptive LR optimizer", "--proposals", "1",
                           "--benchmark", "digits-mlp", "--seeds", "2", "--no-verify", "--runs-dir", str(runs)],
                          capture_output=True, text=True, timeout=1500, env=env)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    run_dir = next(runs.iterdir())
    show = json.loads(subprocess.run([AUTORESEARCH, "show", str(run_dir), "--json"], capture_output=True, text=True,
                                     timeout=120).stdout)
    assert show["status"] == "finished" and len(show["proposals"]) == 1
    for p in show["proposals"]:
        assert p["decision"] in ("accepted", "rejected") and p["reason"]
        report = (run_dir / p["report"]).read_text()
        assert "## The change" in report and "LLM:" in report
    db = sqlite3.connect(run_dir / "ledger.sqlite")
    calls = db.execute("SELECT model, prompt_tokens, completion_tokens, reply, error, base_url FROM llm_calls").fetchall()
    ok = [c for c in calls if c[4] is None]
    assert ok and all(c[1] > 0 and c[2] > 0 and c[3] for c in ok)
    assert all(c[0] == local_llm.MODEL_ALIAS and c[5].startswith("http://127.0.0.1:") for c in calls)
    hashes = {r[0] for r in db.execute("SELECT prompt_hash FROM proposals")}
    assert len(hashes) == 1 and None not in hashes
    # The embedded server is gone with the run.
    port = calls[0][5].split(":")[2].split("/")[0]
    assert subprocess.run(["bash", "-c", f"exec 3<>/dev/tcp/127.0.0.1/{port}"], capture_output=True).returncode != 0
