"""Integration tier: the real `openai` client against a scripted OpenAI-compatible server on
127.0.0.1 (valid, malformed, no edits, protected file, slow past the timeout, 500, a server that
rejects response_format), the embedded server's model download against a local HTTP server, and
a real `autoresearch run --idea` killed with SIGKILL mid-trial and resumed."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import threading
import time
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import git
import pytest

from agent_fakes import (ADAM_REPLY, MALFORMED_REPLY, MOMENTUM_REPLY, NO_EDITS_REPLY, PROTECTED_REPLY,
                         ScriptedServer)
from autoresearch.agent import local_llm
from autoresearch.agent.llm import LLMClient, LLMUnavailable, estimate_cost
from autoresearch.agent.loop import open_llm_session
from autoresearch.agent.proposal import PROPOSAL_SCHEMA, WHOLE_FILE_SCHEMA
from autoresearch.config import RunConfig
from conftest import AUTORESEARCH, copy_benchmark

MESSAGES = [{"role": "user", "content": "propose"}]


def _client(server: ScriptedServer, **kw) -> LLMClient:
    kw.setdefault("timeout", 10)
    kw.setdefault("backoff_seconds", 0.01)
    client = LLMClient(base_url=server.base_url, **kw)
    client.check()
    return client


def _log():
    calls: list[dict] = []
    return calls, lambda **fields: calls.append(fields)


def test_valid_reply_json_mode_and_logging():
    with ScriptedServer([ADAM_REPLY]) as server:
        client = _client(server)
        assert client.model == "scripted-model"
        calls, log = _log()
        reply = client.complete(MESSAGES, log=log)
    assert reply.text == ADAM_REPLY and reply.prompt_tokens == 321 and reply.completion_tokens == 45
    body = server.requests[0]
    assert body["response_format"]["type"] == "json_object" and "edits" in body["response_format"]["schema"]["properties"]
    assert len(calls) == 1 and calls[0]["error"] is None and calls[0]["cost_usd"] == 0.0
    assert json.loads(calls[0]["messages_json"]) == MESSAGES and calls[0]["model"] == "scripted-model"


def test_whole_file_format_sends_its_own_constraint():
    """The edit format is chosen after check() has named the model, so it is read at each call:
    search-replace asks for its JSON schema, whole-file for its grammar (and no JSON mode, which
    would contradict the fenced file the prompt asks for)."""
    whole = "Title: Adam\nHypothesis: h\nFile: optim.py\n```python\nx = 1\n```"
    with ScriptedServer([ADAM_REPLY, whole]) as server:
        client = _client(server)
        client.complete(MESSAGES)
        client.edit_format, client.grammar = "whole-file", "root ::= \"x\"\n"
        client.complete(MESSAGES)
    first, second = server.requests
    assert first["response_format"]["schema"] == PROPOSAL_SCHEMA and "grammar" not in first
    assert second["grammar"] == client.grammar and "response_format" not in second


def test_500_is_retried_with_backoff_then_succeeds():
    with ScriptedServer([("status", 500), ADAM_REPLY]) as server:
        calls, log = _log()
        reply = _client(server).complete(MESSAGES, log=log)
    assert reply.text == ADAM_REPLY and len(calls) == 2
    assert "InternalServerError" in calls[0]["error"] and calls[0]["reply"] is None and calls[1]["error"] is None


def test_persistent_500_is_a_clear_error_after_bounded_attempts():
    with ScriptedServer([("status", 500)] * 5) as server:
        calls, log = _log()
        with pytest.raises(LLMUnavailable, match="failed 3 time"):
            _client(server, max_attempts=3).complete(MESSAGES, log=log)
    assert len(calls) == 3 and server.chat_requests == 3


def test_slow_reply_past_the_timeout_is_retried():
    with ScriptedServer([("sleep", 4, ADAM_REPLY), ADAM_REPLY]) as server:
        calls, log = _log()
        reply = _client(server, timeout=1.0).complete(MESSAGES, log=log)
    assert reply.text == ADAM_REPLY
    assert "Timeout" in calls[0]["error"] and calls[0]["latency_seconds"] >= 0.9 and calls[1]["error"] is None


def test_server_rejecting_response_format_gets_plain_prompting():
    """A local server is asked llama.cpp's way first (json_object + schema), then OpenAI's
    (json_schema), then plainly; the shape that worked is kept for the next calls."""
    fenced = "Here you go:\n```json\n" + MOMENTUM_REPLY + "\n```\n"
    with ScriptedServer([("no_response_format", fenced)] * 4) as server:
        client = _client(server)
        calls, log = _log()
        first = client.complete(MESSAGES, log=log)
        second = client.complete(MESSAGES, log=log)
    assert first.text == fenced and second.text == fenced and client.json_mode is False
    kinds = [body.get("response_format", {}).get("type") for body in server.requests]
    assert kinds == ["json_object", "json_schema", None, None]
    assert server.requests[1]["response_format"]["json_schema"]["schema"] == PROPOSAL_SCHEMA
    assert "400" in calls[0]["error"] and "400" in calls[1]["error"] and len(calls) == 4


def test_whole_file_grammar_is_sent_to_local_servers_and_dropped_when_refused():
    from autoresearch.agent.proposal import whole_file_grammar

    reply = "Title: Adam\nHypothesis: h\nFile: optim.py\n```python\nx = 1\n```"
    with ScriptedServer([("status", 400), reply, reply]) as server:
        client = _client(server)
        client.edit_format, client.grammar = "whole-file", whole_file_grammar(["optim.py"])
        assert client.complete(MESSAGES).text == reply and client.complete(MESSAGES).text == reply
    first, second, third = server.requests
    assert first["grammar"] == client.grammar and "response_format" not in first
    assert "grammar" not in second and "grammar" not in third  # refused once: plain prompting from then on


def test_remote_endpoints_are_asked_for_json_schema_first():
    remote = LLMClient(base_url="https://api.example.invalid/v1", model="gpt-4o-mini")
    remote.edit_format = "whole-file"
    fmt = remote.response_format()
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["schema"] == WHOLE_FILE_SCHEMA
    assert fmt["json_schema"]["strict"] is True
    local = LLMClient(base_url="http://127.0.0.1:1/v1", model="m")
    assert local.response_format() == {"type": "json_object", "schema": PROPOSAL_SCHEMA}


def test_unreachable_endpoint_fails_before_training(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    with pytest.raises(LLMUnavailable, match="cannot reach the LLM endpoint"):
        open_llm_session(RunConfig(idea="x", llm_base_url=url))
    runs = tmp_path / "runs"
    proc = subprocess.run([AUTORESEARCH, "run", "--idea", "adaptive LR optimizer", "--llm-base-url", url,
                           "--runs-dir", str(runs)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 6, proc.stderr
    assert "cannot reach the LLM endpoint" in proc.stderr and not runs.exists()


def test_cost_estimates():
    assert estimate_cost("gpt-4o-mini", "https://api.openai.com/v1", 1_000_000, 0) == pytest.approx(0.15)
    assert estimate_cost("anything", "http://127.0.0.1:8080/v1", 10**6, 10**6) == 0.0
    assert estimate_cost("unknown-model", "https://example.invalid/v1", 10, 10) is None


# --------------------------------------------------------------------------- the embedded model's file


def test_model_download_progress_and_checksum(tmp_path, monkeypatch):
    served = tmp_path / "srv"
    served.mkdir()
    payload = os.urandom(300_000)
    (served / "model.gguf").write_bytes(payload)
    handler = partial(SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a: None  # type: ignore[attr-defined]
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/model.gguf"
        monkeypatch.setenv("AUTORESEARCH_CACHE", str(tmp_path / "cache"))
        monkeypatch.delenv("AUTORESEARCH_GGUF", raising=False)
        with pytest.raises(LLMUnavailable, match="sha256"):
            local_llm.resolve_gguf(url=url, sha256="0" * 64, show_progress=False)
        assert not (tmp_path / "cache" / "models" / local_llm.MODEL_FILE).exists()
        path = local_llm.resolve_gguf(url=url, sha256=hashlib.sha256(payload).hexdigest(), show_progress=True)
        assert path.read_bytes() == payload and path.name == local_llm.MODEL_FILE
        assert local_llm.resolve_gguf(url="http://127.0.0.1:9/never-asked") == path  # cached now
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_missing_model_or_extra_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(tmp_path / "empty"))
    monkeypatch.delenv("AUTORESEARCH_GGUF", raising=False)
    monkeypatch.delenv("AUTORESEARCH_GGUF_URL", raising=False)
    with pytest.raises(LLMUnavailable, match="--gguf PATH or set AUTORESEARCH_GGUF"):
        local_llm.resolve_gguf()  # HF_HUB_OFFLINE=1 (conftest): never reaches for the hub
    with pytest.raises(LLMUnavailable, match="does not exist"):
        local_llm.resolve_gguf(tmp_path / "nope.gguf")
    for var in ("OPENAI_BASE_URL", "AUTORESEARCH_LLM_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(local_llm, "SERVER_MODULES", ("llama_cpp", "surely_not_installed_mod"))
    with pytest.raises(LLMUnavailable, match=r"pip install 'autoresearch-gate\[llm\]'"):
        open_llm_session(RunConfig(idea="x"))
    assert "not installed" in local_llm.describe_local_llm()


def test_the_embedded_server_gets_every_core_unless_trials_share_the_machine(monkeypatch):
    monkeypatch.delenv("AUTORESEARCH_LLM_THREADS", raising=False)
    for var in ("OPENAI_BASE_URL", "AUTORESEARCH_LLM_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(local_llm.os, "cpu_count", lambda: 8)
    assert local_llm.llm_threads(shares_machine=False) == 8
    assert local_llm.llm_threads(shares_machine=True) == 4
    assert local_llm.LocalLLMServer(Path("m.gguf")).threads == 4  # built alone: the cautious default
    asked = []

    def start(gguf=None, *, threads=None):
        asked.append(threads)
        raise LLMUnavailable("stop here")

    monkeypatch.setattr(local_llm, "start_local_server", start)
    for pipeline in (False, True, None):
        with pytest.raises(LLMUnavailable, match="stop here"):
            open_llm_session(RunConfig(idea="x", pipeline=pipeline))
    assert asked == [8, 4, 8]  # --idea runs wait for each reply (no pipelining): all cores
    monkeypatch.setenv("AUTORESEARCH_LLM_THREADS", "3")
    assert local_llm.llm_threads(shares_machine=False) == local_llm.llm_threads(shares_machine=True) == 3


# --------------------------------------------------------------------------- whole runs through HTTP


@pytest.fixture(scope="module")
def tiny_bench(tmp_path_factory) -> Path:
    return copy_benchmark(tmp_path_factory.mktemp("http-bench") / "digits-tiny", epochs=1)


def _run_cli(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([AUTORESEARCH, *map(str, args)], capture_output=True, text=True, timeout=600, **kw)


def test_idea_run_through_http(tiny_bench, tmp_path):
    # parse_retries defaults to 3: a proposal gets at most 4 replies.
    script = [MALFORMED_REPLY, ADAM_REPLY] + [NO_EDITS_REPLY] * 4 + [PROTECTED_REPLY] * 4
    runs = tmp_path / "runs"
    with ScriptedServer(script) as server:
        proc = _run_cli("run", "--idea", "adaptive LR optimizer", "--benchmark", tiny_bench, "--proposals", 3,
                        "--seeds", 2, "--no-verify", "--llm-base-url", server.base_url, "--runs-dir", runs)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert server.chat_requests == 10
    run_dir = next(runs.iterdir())
    show = json.loads(_run_cli("show", run_dir, "--json").stdout)
    reasons = [p["reason"] for p in show["proposals"]]
    assert reasons[0] in ("accepted", "not_better") and reasons[1:] == ["invalid_proposal", "not_editable"]
    assert all(Path(run_dir / p["report"]).is_file() for p in show["proposals"])
    db = sqlite3.connect(run_dir / "ledger.sqlite")
    calls = db.execute("SELECT proposal_idx, attempt, model, prompt_tokens, completion_tokens, cost_usd, reply "
                       "FROM llm_calls ORDER BY id").fetchall()
    assert [(c[0], c[1]) for c in calls] == [(1, 1), (1, 2), (2, 1), (2, 2), (2, 3), (2, 4), (3, 1),
                                                (3, 2), (3, 3), (3, 4)]
    assert all(c[2] == "scripted-model" and c[3] == 321 and c[4] == 45 and c[5] == 0.0 for c in calls)
    report = (run_dir / show["proposals"][0]["report"]).read_text()
    assert "torch.optim.Adam" in report and "2 call(s), 642 prompt + 90 completion tokens" in report


CRASHING_OPTIM = ('"""The optimizer."""\nimport torch\n\n\ndef build_optimizer(params, *, steps_per_epoch: int, '
                  'epochs: int):\n    raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")\n')
ADAM_OPTIM = ('"""The optimizer."""\nimport torch\n\n\ndef build_optimizer(params, *, steps_per_epoch: int, '
              'epochs: int):\n    return torch.optim.Adam(params, lr=1e-3), None\n')
# SGD's rate carried into Adam: the agent writes Adam at its own default and says so in the report.
CARRIED_OPTIM = ADAM_OPTIM.replace("lr=1e-3", "lr=0.01")
UNDEFINED_OPTIM = ADAM_OPTIM.replace("torch.optim.Adam(params", "torch.optim.Adam(parameters")


def _whole(content: str, title: str) -> str:
    return f"Title: {title}\nHypothesis: h\nFile: optim.py\n```python\n{content}```"


@pytest.mark.slow
def test_whole_file_run_repairs_a_smoke_crash_and_never_trains_a_static_failure(tiny_bench, tmp_path):
    """Through HTTP and the CLI: proposal 1 crashes in its smoke run, the traceback goes back to the
    model and the repaired reply is gated; proposal 2 keeps an undefined name through its repair
    rounds and is recorded as static_check without a single trial."""
    script = [_whole(CRASHING_OPTIM, "Adam"), _whole(CARRIED_OPTIM, "Adam")] + [_whole(UNDEFINED_OPTIM, "Adam v2")] * 4
    runs = tmp_path / "runs"
    with ScriptedServer(script) as server:
        proc = _run_cli("run", "--idea", "adaptive LR optimizer", "--benchmark", tiny_bench, "--proposals", 2,
                        "--seeds", 2, "--no-verify", "--edit-format", "whole-file", "--llm-base-url", server.base_url,
                        "--runs-dir", runs)
        requests = server.requests
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # A local endpoint: each request carries the fenced file's grammar (llama.cpp's extension), no JSON mode.
    assert len(requests) == 6 and all('path ::= "model.py" | "optim.py" | "train.py"' in r["grammar"]
                                      and "response_format" not in r for r in requests)
    repair = requests[1]["messages"][-1]["content"]
    assert "short test run" in repair and "mat1 and mat2 shapes" in repair
    assert "undefined name" in requests[3]["messages"][-1]["content"]
    run_dir = next(runs.iterdir())
    show = json.loads(_run_cli("show", run_dir, "--json").stdout)
    first, second = show["proposals"]
    assert first["reason"] in ("accepted", "not_better") and second["reason"] == "static_check"
    db = sqlite3.connect(run_dir / "ledger.sqlite")
    assert db.execute("SELECT COUNT(*) FROM trials WHERE proposal_idx = 2").fetchone()[0] == 0
    report1 = (run_dir / first["report"]).read_text()
    does = report1.split("**What the diff does**")[1].split("**The model's claims**")[0]
    assert "optim.py:" in does and "torch.optim.Adam" in does and "**The model's claims**" in report1
    assert "2 replies, 1 repair round(s): smoke run failed, passed (edit format whole-file" in report1
    assert "the agent's own edits to the model's reply (in the diff): optim.py: Adam at its own default lr=0.001: " \
        "the change kept SGD's lr=0.01" in report1
    assert "+    return torch.optim.Adam(params), None" in report1
    report2 = (run_dir / second["report"]).read_text()
    assert ("4 replies, 3 repair round(s): static check failed, static check failed, static check failed, "
            "static check failed") in report2
    assert "parameters" in report2  # its diff is recorded


def test_sigkill_mid_trial_then_resume(tiny_bench, tmp_path):
    runs = tmp_path / "runs"
    with ScriptedServer([ADAM_REPLY, MOMENTUM_REPLY], default=NO_EDITS_REPLY) as server:
        args = ["run", "--idea", "adaptive LR optimizer", "--benchmark", tiny_bench, "--proposals", 2, "--seeds", 3,
                "--no-verify", "--llm-base-url", server.base_url, "--runs-dir", runs]
        # Killed at a fixed point, not on a timer: proposal 1 trained and committed, the ledger not yet
        # told (every seed of a look is recorded at once, so watching for trial rows raced the finish).
        proc = subprocess.Popen([AUTORESEARCH, *map(str, args)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True, env=dict(os.environ, AUTORESEARCH_FAULT="commit:1"))
        try:
            proc.wait(timeout=400)
        finally:
            if proc.poll() is None:
                proc.kill()
        (ledger,) = list(runs.glob("*/ledger.sqlite"))
        db = sqlite3.connect(ledger, timeout=5)
        before = db.execute("SELECT cache_key, created_at FROM trials WHERE role = 'candidate'").fetchall()
        db.close()
        assert before, "the run never reached a candidate trial"
        assert proc.returncode == -signal.SIGKILL
        db = sqlite3.connect(ledger)
        before_all = db.execute("SELECT cache_key, created_at FROM trials").fetchall()
        assert db.execute("SELECT state FROM proposals WHERE idx = 1").fetchone()[0] != "finished"
        db.close()
        asked_before = server.chat_requests
        assert asked_before == 1
        time.sleep(1.0)  # the killed run's sandboxed child dies with it (die-with-parent / process group)

        res = _run_cli("resume", ledger.parent)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        assert server.chat_requests >= 2

    db = sqlite3.connect(ledger)
    # Proposal 1's stored reply was evaluated again: no second LLM call for it.
    assert [r[0] for r in db.execute("SELECT proposal_idx FROM llm_calls ORDER BY id")][:2] == [1, 2]
    assert db.execute("SELECT COUNT(*) FROM llm_calls WHERE proposal_idx = 1").fetchone()[0] == 1
    after = db.execute("SELECT cache_key, created_at FROM trials").fetchall()
    assert set(before_all) <= set(after)  # nothing finished was lost or re-run (same rows, same times)
    per_code_seed = db.execute("SELECT code_hash, seed, COUNT(*) FROM trials GROUP BY code_hash, seed").fetchall()
    assert all(n == 1 for _, _, n in per_code_seed)
    rows = db.execute("SELECT idx, state, decision, commit_sha, report_path FROM proposals ORDER BY idx").fetchall()
    assert [r[:2] for r in rows] == [(1, "finished"), (2, "finished")]
    cand1 = db.execute("SELECT COUNT(*) FROM trials WHERE proposal_idx = 1").fetchone()[0]
    assert cand1 == 3  # a fixed design (--seeds 3): one look at all three gate seeds
    repo = git.Repo(ledger.parent / "repo")
    for idx, _, decision, sha, report in rows:
        assert repo.commit(f"refs/proposals/{idx:03d}").hexsha == sha
        assert (ledger.parent / report).is_file()
    accepted_shas = [r[3] for r in rows if r[2] == "accepted"]
    chain = [c.hexsha for c in repo.iter_commits("accepted")][::-1][1:]  # without the baseline commit
    assert chain == accepted_shas
    show = json.loads(_run_cli("show", ledger.parent, "--json").stdout)
    assert show["status"] == "finished" and len(show["proposals"]) == 2


def test_embedded_server_that_cannot_load_its_model_is_a_clear_error(tmp_path):
    if local_llm.missing_server_modules():
        pytest.skip("llama-cpp-python[server] is not installed")
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"not a gguf file" * 100)
    server = local_llm.LocalLLMServer(bad, startup_timeout=120)
    with pytest.raises(LLMUnavailable, match="exited with code"):
        server.start()
    assert server.proc is None and not server.log_path.exists()  # stopped and cleaned up on failure
