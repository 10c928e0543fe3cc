"""Fakes for the agent tests: a queue-driven fake model (unit tier) and a scripted
OpenAI-compatible HTTP server on 127.0.0.1 (integration tier). Neither touches the network."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from autoresearch.agent.llm import LLMReply, LLMUnavailable

ADAM_REPLY = json.dumps({"title": "Adam optimizer", "hypothesis": "adaptive steps converge faster in 10 epochs",
                         "edits": [{"path": "optim.py", "search": "optimizer = torch.optim.SGD(params, lr=0.01)",
                                    "replace": "optimizer = torch.optim.Adam(params, lr=1e-3)"}]})
MOMENTUM_REPLY = json.dumps({"title": "SGD with momentum", "hypothesis": "momentum speeds up SGD",
                             "edits": [{"path": "optim.py", "search": "optimizer = torch.optim.SGD(params, lr=0.01)",
                                        "replace": "optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9)"}]})
NO_EDITS_REPLY = json.dumps({"title": "Nothing", "hypothesis": "no change", "edits": []})
PROTECTED_REPLY = json.dumps({"title": "Edit the harness", "hypothesis": "score myself",
                              "edits": [{"path": "../harness/run_train.py", "search": "", "replace": "print(1)"}]})
MALFORMED_REPLY = '{"title": "broken", "edits": [ {"path": "optim.py", '


class FakeLLM:
    """Same interface as LLMClient: ``complete(messages, log=...)`` pops the next scripted reply."""

    def __init__(self, replies: list[str], *, cost: float = 0.0, model: str = "fake-model"):
        self.replies = list(replies)
        self.cost = cost
        self.model = model
        self.base_url = "fake://queue"
        self.edit_format = "search-replace"  # set by the loop, as on LLMClient
        self.max_tokens = 600
        self.calls: list[list[dict]] = []
        self.temperatures: list[float | None] = []  # what the loop asked for each call (None: the client's)

    def complete(self, messages, *, log=None, temperature=None) -> LLMReply:
        self.calls.append([dict(m) for m in messages])
        self.temperatures.append(temperature)
        if not self.replies:
            raise LLMUnavailable("the fake LLM's queue is empty")
        text = self.replies.pop(0)
        if log is not None:
            log(model=self.model, base_url=self.base_url, messages_json=json.dumps(messages), reply=text, error=None,
                prompt_tokens=100, completion_tokens=20, latency_seconds=0.01, cost_usd=self.cost)
        return LLMReply(text=text, prompt_tokens=100, completion_tokens=20, latency_seconds=0.01, cost_usd=self.cost)


class ScriptedServer:
    """An OpenAI-compatible server in a thread. ``script`` is a list of actions, one per chat call:
    a string (reply text), ("status", code), ("sleep", seconds, text), ("no_response_format", text):
    a 400 whenever the request carries response_format, else the text. When the script runs out,
    ``default`` (a reply text) is used, or 503 if None."""

    def __init__(self, script=None, *, default: str | None = None, model: str = "scripted-model"):
        self.script = list(script or [])
        self.default = default
        self.model = model
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, code: int, obj: dict) -> None:
                body = json.dumps(obj).encode()
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def do_GET(self):
                if self.path.rstrip("/").endswith("/models"):
                    self._send(200, {"object": "list", "data": [{"id": outer.model, "object": "model"}]})
                else:
                    self._send(404, {"error": {"message": "not found"}})

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                with outer.lock:
                    outer.requests.append(body)
                    action = outer.script.pop(0) if outer.script else None
                if action is None:
                    if outer.default is None:
                        return self._send(503, {"error": {"message": "script exhausted"}})
                    action = outer.default
                if isinstance(action, tuple) and action[0] == "no_response_format":
                    if "response_format" in body:
                        return self._send(400, {"error": {"message": "response_format is not supported"}})
                    action = action[1]
                if isinstance(action, tuple) and action[0] == "status":
                    return self._send(action[1], {"error": {"message": f"scripted {action[1]}"}})
                if isinstance(action, tuple) and action[0] == "sleep":
                    time.sleep(action[1])
                    action = action[2]
                self._send(200, {
                    "id": "chatcmpl-test", "object": "chat.completion", "created": int(time.time()),
                    "model": outer.model,
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": action}}],
                    "usage": {"prompt_tokens": 321, "completion_tokens": 45, "total_tokens": 366}})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    @property
    def chat_requests(self) -> int:
        with self.lock:
            return len(self.requests)

    def __enter__(self) -> "ScriptedServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# --------------------------------------------------------------------------- a fake port (no engine)

DIGITS_FILES = {
    "optim.py": ('"""The optimizer. Editable: proposals may change the update rule and the learning-rate schedule."""\n'
                 "import torch\n\n\n"
                 "def build_optimizer(params, *, steps_per_epoch: int, epochs: int):\n"
                 "    optimizer = torch.optim.SGD(params, lr=0.01)\n"
                 "    scheduler = None\n"
                 "    return optimizer, scheduler\n"),
    "model.py": ('"""The network. Editable: proposals may change the architecture."""\n'
                 "import torch.nn as nn\n\n\n"
                 "def build_model(input_shape, num_classes):\n"
                 "    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, num_classes))\n"),
}
ADAM_OPTIM = DIGITS_FILES["optim.py"].replace("torch.optim.SGD(params, lr=0.01)", "torch.optim.Adam(params, lr=1e-3)")


def whole_file(content: str, title: str = "Adam optimizer", path: str = "optim.py") -> str:
    """A whole-file reply in the fenced form the prompt (and the grammar) asks for."""
    return f"Title: {title}\nHypothesis: adaptive steps\nFile: {path}\n```python\n{content.rstrip()}\n```"


class FakeSmoke:
    def __init__(self, ok: bool = True, status: str = "ok", error: str = ""):
        self.ok, self.status, self.error = ok, status, error


class FakePort:
    """An AgentPort with no engine: files in a dict, evaluate() "trains" nothing and accepts every
    Proposal without a precheck (or as ``decide`` says), smoke results come from a queue."""

    def __init__(self, *, files=None, proposals: int = 3, repair_rounds: int = 1, edit_format: str = "auto",
                 idea: str = "adaptive LR optimizer", smoke=None, decide=None, max_llm_cost=None, time_budget=None):
        from autoresearch.agent_port import AgentSettings, Task

        self.files = dict(files or DIGITS_FILES)
        self.settings = AgentSettings(idea=idea, proposals=proposals, repair_rounds=repair_rounds,
                                      edit_format=edit_format, max_llm_cost=max_llm_cost, time_budget=time_budget)
        self.task = Task(benchmark="digits-mlp v2", description="Classify digits.", editable=tuple(sorted(self.files)),
                         metric="accuracy (higher is better)", budget="10 epochs")
        self.smoke_results = list(smoke or [])
        self.smoked: list[dict] = []
        self.decide = decide or (lambda idx, proposal: ("accepted", "accepted", 0.93, 0.62))
        self.evaluated: list[tuple] = []   # (idx, raw, parsed)
        self.past: list = []
        self.calls: list[dict] = []
        self.rounds: list = []
        self.stages: list[str] = []
        self.summary: dict | None = None
        self.stored: tuple[int, str] | None = None  # a pending reply (resume)
        self.elapsed = 0.0

    def change_hash(self, files):
        return json.dumps(sorted(files.items()))

    def incumbent(self):
        return dict(self.files)

    def ensure_baseline(self):
        pass

    def history(self):
        return list(self.past)

    def pending(self):
        from autoresearch.agent_port import Pending

        return Pending(*self.stored) if self.stored else None

    def next_index(self):
        return len(self.evaluated) + 1

    def budget(self):
        from autoresearch.agent_port import BudgetState

        return BudgetState(decided=len(self.evaluated), limit=self.settings.proposals,
                           cost_usd=sum(c.get("cost_usd") or 0 for c in self.calls), elapsed_seconds=self.elapsed)

    def smoke(self, files):
        self.smoked.append(dict(files))
        return self.smoke_results.pop(0) if self.smoke_results else FakeSmoke()

    def evaluate(self, idx, raw, parsed, *, prompt_hash):
        """Records a PastProposal as EnginePort.history would: an accepted change becomes the incumbent."""
        from autoresearch.agent.proposal import Proposal, ProposalRejected, apply_proposal
        from autoresearch.agent_port import PastProposal
        from autoresearch.describe import describe_change

        self.evaluated.append((idx, raw, parsed))
        self.stored = None
        title = parsed.title if isinstance(parsed, Proposal) else f"invalid proposal #{idx}"
        new, changes, val = None, (), (None, None)
        if isinstance(parsed, Proposal):
            try:
                new = apply_proposal(self.files, parsed, list(self.task.editable))
                changes = tuple(describe_change(self.files, new))
            except ProposalRejected as exc:
                parsed = exc
        if isinstance(parsed, Proposal) and parsed.precheck is not None:
            decision, reason, detail = "rejected", parsed.precheck.reason, str(parsed.precheck)
        elif isinstance(parsed, ProposalRejected):
            decision, reason, detail = "rejected", parsed.reason, str(parsed)
        else:
            decision, reason, *val = self.decide(idx, parsed)
            detail = "test figures here: 0.9876"  # a gate's detail: must never reach the model
        self.past.append(PastProposal(idx=idx, title=title, decision=decision, reason=reason,
                                      detail=detail if reason not in ("accepted", "not_better") else "",
                                      changes=changes, val_candidate=val[0], val_incumbent=val[1],
                                      seeds=2 if val[0] is not None else 0,
                                      change_hash=self.change_hash(new) if new else None))
        if decision == "accepted" and new:
            self.files = new
        return reason

    def log_llm_call(self, idx, attempt, **fields):
        self.calls.append({"idx": idx, "attempt": attempt, **fields})

    def llm_totals(self, idx=None):
        calls = [c for c in self.calls if idx is None or c["idx"] == idx]
        return {"calls": len(calls), "prompt_tokens": sum(c["prompt_tokens"] or 0 for c in calls),
                "completion_tokens": sum(c["completion_tokens"] or 0 for c in calls),
                "cost_usd": sum(c["cost_usd"] or 0 for c in calls),
                "latency_seconds": sum(c["latency_seconds"] for c in calls)}

    def note_round(self, entry):
        self.rounds.append(entry)

    def stage(self, text):
        self.stages.append(text)

    def save_summary(self, summary):
        self.summary = summary
