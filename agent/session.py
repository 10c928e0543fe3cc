"""A run's LLM session: the configured endpoint, else the embedded llama.cpp server, opened before
any training and closed with the run. Above both agent.llm (the client) and agent.local_llm (the
server), so neither imports the other back.
"""

from __future__ import annotations

from dataclasses import dataclass

from autoresearch.agent.llm import LLMClient, resolve_endpoint


@dataclass
class LLMSession:
    """The client for a run, and the embedded server behind it (if any), which ``close`` stops."""

    client: "LLMClient"
    server: object = None

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None


def open_llm_session(config) -> LLMSession:
    """Reach an LLM before any training: the configured endpoint, else the embedded llama.cpp server."""
    url, model = resolve_endpoint(config.llm_base_url, config.model)
    server = None
    if url is None:
        from autoresearch.agent.local_llm import llm_threads, start_local_server  # lazy: llama_cpp checks

        # Pipelined, trials train while the model writes: the server gets half the cores, else all.
        server = start_local_server(config.gguf, threads=llm_threads(shares_machine=bool(config.pipeline)))
        url = server.base_url
    try:
        client = LLMClient(base_url=url, model=model, timeout=config.llm_timeout)
        client.check()
    except BaseException:
        if server is not None:
            server.stop()
        raise
    return LLMSession(client=client, server=server)
