"""Kept for imports from before the split: the agent lives in prompts.py (messages), checks.py
(checks before any trial), graph.py (the LangGraph loop) and llm.py (client and session)."""

from autoresearch.agent.checks import (DuplicateProposal, SmokeFailed, StaticCheckFailed, check_reply,  # noqa: F401
                                       final_verdict, static_problem, undefined_names)
from autoresearch.agent.graph import AgentContext, AgentState, build_graph, run_agent  # noqa: F401
from autoresearch.agent.llm import LLMUnavailable  # noqa: F401
from autoresearch.agent.session import LLMSession, open_llm_session  # noqa: F401
from autoresearch.agent.prompts import (build_messages, example_proposal, history_text,  # noqa: F401
                                        prompt_hash, repair_message)

__all__ = ["LLMSession", "LLMUnavailable", "open_llm_session", "run_agent", "build_graph", "build_messages",
           "check_reply", "prompt_hash", "DuplicateProposal", "StaticCheckFailed", "SmokeFailed"]
