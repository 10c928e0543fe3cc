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
        self.calls: list[list[dict]] = []

    def complete(self, messages, *, log=None) -> LLMReply:
        self.calls.append([dict(m) for m in messages])
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
