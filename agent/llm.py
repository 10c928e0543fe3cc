"""One OpenAI-compatible chat client for every backend (OpenAI, vLLM, Ollama, LM Studio, llama.cpp).

It asks for output constrained to the edit format in use where the endpoint can do it. A
search-replace reply is one JSON object: llama.cpp's server takes ``{"type": "json_object",
"schema": ...}`` (and turns it into a grammar) and rejects ``json_schema``; OpenAI-style endpoints
take ``{"type": "json_schema", ...}``. A local endpoint is tried in that order, a remote one the
other way round. A whole-file reply is a fenced file, constrained by a GBNF ``grammar`` (a llama.cpp
extension, so local endpoints only). A server that rejects a constraint gets plain prompting
(the parser also reads fenced JSON, SEARCH/REPLACE blocks and fenced files). Transient failures (timeouts, connection errors, 5xx, 429) are retried a
bounded number of times with exponential backoff. Every attempt, failed or not, is handed to a
``log`` callback (the loop writes it to the run's ledger): messages, reply, model, tokens,
latency, estimated cost.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Callable
from urllib.parse import urlparse

from autoresearch.agent.proposal import EditFormat, proposal_schema


class LLMUnavailable(RuntimeError):
    """No usable LLM: unreachable endpoint, missing extra or model file, or a call that kept failing."""


# USD per million (prompt, completion) tokens; longest matching prefix wins. Local servers cost 0.
PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o-mini": (0.15, 0.60), "gpt-4o": (2.50, 10.00), "gpt-4.1-nano": (0.10, 0.40),
    "gpt-4.1-mini": (0.40, 1.60), "gpt-4.1": (2.00, 8.00), "gpt-5-nano": (0.05, 0.40),
    "gpt-5-mini": (0.25, 2.00), "gpt-5": (1.25, 10.00), "o3-mini": (1.10, 4.40), "o4-mini": (1.10, 4.40),
    "o3": (2.00, 8.00),
}
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "0.0.0.0"}


def is_local(base_url: str) -> bool:
    return (urlparse(base_url).hostname or "") in LOCAL_HOSTS


def estimate_cost(model: str, base_url: str, prompt_tokens: int | None, completion_tokens: int | None) -> float | None:
    """Estimated USD for one call: 0 on a local server, None for a remote model not in the table."""
    if is_local(base_url):
        return 0.0
    match = max((k for k in PRICES if model.startswith(k)), key=len, default=None)
    if match is None:
        return None
    p_in, p_out = PRICES[match]
    return ((prompt_tokens or 0) * p_in + (completion_tokens or 0) * p_out) / 1e6


@dataclass
class LLMReply:
    text: str
    prompt_tokens: int | None
    completion_tokens: int | None
    latency_seconds: float
    cost_usd: float | None


LogFn = Callable[..., None]


def resolve_endpoint(config_url: str | None, config_model: str | None) -> tuple[str | None, str | None]:
    """Base URL and model from the config (CLI flags / AUTORESEARCH_*), else OPENAI_BASE_URL."""
    url = config_url or os.environ.get("AUTORESEARCH_LLM_BASE_URL") or os.environ.get("OPENAI_BASE_URL") or None
    model = config_model or os.environ.get("AUTORESEARCH_MODEL") or None
    return url, model


class LLMClient:
    """Chat completions over the ``openai`` package with our own retries, so each attempt is logged."""

    def __init__(self, *, base_url: str, model: str | None = None, api_key: str | None = None,
                 timeout: float = 600.0, max_attempts: int = 3, backoff_seconds: float = 2.0,
                 max_tokens: int = 600, temperature: float = 0.7, json_mode: bool = True,
                 edit_format: EditFormat = "search-replace"):
        import openai

        self.base_url = base_url.rstrip("/")
        self.model = model or ""
        self.timeout = timeout
        self.max_attempts = max(1, max_attempts)
        self.backoff_seconds = backoff_seconds
        self.max_tokens = max_tokens
        self.temperature = temperature
        # A whole-file reply's GBNF grammar (set with the edit format), sent while the server takes it.
        self.grammar: str | None = None
        self.use_grammar = json_mode and is_local(self.base_url)
        # The response_format shapes still to try, best first; empty: plain prompting.
        self.response_modes: list[str] = (["json_object", "json_schema"] if is_local(self.base_url)
                                          else ["json_schema", "json_object"]) if json_mode else []
        # Which reply shape JSON mode constrains the model to; set it once the model is known
        # (proposal.choose_edit_format needs the name that check() may only now have picked).
        self.edit_format = edit_format
        # max_retries=0: the openai package's own retries would hide attempts from the call log.
        self._client = openai.OpenAI(base_url=self.base_url, api_key=api_key or os.environ.get("OPENAI_API_KEY")
                                     or "no-key-needed-for-local-servers", timeout=timeout, max_retries=0)

    @property
    def json_mode(self) -> bool:
        """Whether replies are still asked for in a constrained JSON shape."""
        return bool(self.response_modes)

    def response_format(self) -> dict | None:
        schema = proposal_schema(self.edit_format)
        if not self.response_modes:
            return None
        if self.response_modes[0] == "json_schema":
            return {"type": "json_schema", "json_schema": {"name": self.edit_format.replace("-", "_"), "strict": True,
                                                           "schema": schema}}
        return {"type": "json_object", "schema": schema}

    def check(self, timeout: float = 15.0) -> list[str]:
        """GET /models: raise LLMUnavailable if the endpoint does not answer; pick the model if unset."""
        import openai

        try:
            models = [m.id for m in self._client.with_options(timeout=timeout).models.list()]
        except openai.APIStatusError as exc:
            raise LLMUnavailable(f"the LLM endpoint {self.base_url} answered GET /models with HTTP "
                                 f"{exc.status_code}: {_short(exc)}") from None
        except openai.APIError as exc:
            raise LLMUnavailable(f"cannot reach the LLM endpoint {self.base_url}: {_short(exc)}. Start the server, "
                                 f"or fix --llm-base-url / AUTORESEARCH_LLM_BASE_URL / OPENAI_BASE_URL (unset them "
                                 f"all to use the embedded local model)") from None
        if not self.model:
            if len(models) != 1:
                raise LLMUnavailable(f"the endpoint {self.base_url} serves {len(models)} models "
                                     f"({', '.join(models[:8]) or 'none'}); choose one with --model / AUTORESEARCH_MODEL")
            self.model = models[0]
        return models

    def complete(self, messages: list[dict], *, log: LogFn | None = None,
                 temperature: float | None = None) -> LLMReply:
        """One chat completion; retries transient failures; raises LLMUnavailable when they persist.
        ``temperature``: this call's, in place of the client's."""
        import openai

        last_error = ""
        attempt = 0
        while attempt < self.max_attempts:
            attempt += 1
            kwargs: dict = {"model": self.model, "messages": messages, "max_tokens": self.max_tokens,
                            "temperature": self.temperature if temperature is None else temperature}
            response_format = grammar = None
            if self.edit_format == "whole-file":
                grammar = self.grammar if self.use_grammar else None
                if grammar:
                    kwargs["extra_body"] = {"grammar": grammar}
            else:
                response_format = self.response_format()
                if response_format is not None:
                    kwargs["response_format"] = response_format
            started = time.monotonic()
            try:
                resp = self._client.chat.completions.create(**kwargs)
            except openai.BadRequestError as exc:
                latency = time.monotonic() - started
                self._log(log, messages, None, f"HTTP 400: {_short(exc)}", None, None, latency)
                if (response_format is not None or grammar) and not _is_context_error(exc):
                    # The server does not take this constraint: the next one (or plain prompting) from now on.
                    if grammar:
                        self.use_grammar = False
                    else:
                        self.response_modes.pop(0)
                    attempt -= 1
                    continue
                raise LLMUnavailable(f"the LLM endpoint {self.base_url} rejected the request: {_short(exc)}") from None
            except (openai.APITimeoutError, openai.APIConnectionError, openai.InternalServerError,
                    openai.RateLimitError) as exc:
                latency = time.monotonic() - started
                last_error = f"{type(exc).__name__}: {_short(exc)}"
                self._log(log, messages, None, last_error, None, None, latency)
                if attempt < self.max_attempts:
                    time.sleep(self.backoff_seconds * 2 ** (attempt - 1))
                continue
            except openai.APIStatusError as exc:
                latency = time.monotonic() - started
                self._log(log, messages, None, f"HTTP {exc.status_code}: {_short(exc)}", None, None, latency)
                raise LLMUnavailable(f"the LLM endpoint {self.base_url} refused the call (HTTP {exc.status_code}): "
                                     f"{_short(exc)}") from None
            latency = time.monotonic() - started
            text = (resp.choices[0].message.content or "") if resp.choices else ""
            usage = resp.usage
            pt = usage.prompt_tokens if usage else None
            ct = usage.completion_tokens if usage else None
            cost = estimate_cost(self.model, self.base_url, pt, ct)
            self._log(log, messages, text, None, pt, ct, latency, cost)
            return LLMReply(text=text, prompt_tokens=pt, completion_tokens=ct, latency_seconds=latency, cost_usd=cost)
        raise LLMUnavailable(f"the LLM at {self.base_url} failed {self.max_attempts} time(s) in a row "
                             f"(last: {last_error}); the run is kept: fix the endpoint and `autoresearch resume` it")

    def _log(self, log: LogFn | None, messages, reply, error, pt, ct, latency, cost=None) -> None:
        if log is not None:
            log(model=self.model, base_url=self.base_url, messages_json=json.dumps(messages), reply=reply, error=error,
                prompt_tokens=pt, completion_tokens=ct, latency_seconds=latency, cost_usd=cost)


def _is_context_error(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "context" in text and ("token" in text or "length" in text or "window" in text)


def _short(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text[:limit] + ("…" if len(text) > limit else "")
