"""Typed configuration of a run. Strict: an unknown key is an error, not a silent default."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class RunConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    benchmark: str = Field(default="digits-mlp", description="built-in benchmark name or a benchmark folder")
    runs_dir: Path = Field(default=Path("runs"), description="where run folders are created")
    idea: str | None = Field(default=None, description="the research idea the agent pursues")
    proposals: int = Field(default=8, ge=1, le=10_000, description="proposal budget m (the gate tests at alpha/m)")
    stages: tuple[int, ...] | None = Field(default=None, description="cumulative paired seeds at each look of the "
                                           "sequential gate (default: the spec's, 2,4,6,10,16)")
    seeds: int | None = Field(default=None, ge=2, le=100, description="a fixed design instead: one look at this many "
                              "paired seeds (at alpha/m, no early stop)")
    alpha: float | None = Field(default=None, gt=0, lt=1, description="family-wise error over the run")
    min_delta: float | None = Field(default=None, description="smallest improvement worth accepting")
    verify: bool = Field(default=True, description="re-run the accepted chain on fresh seeds at the end")
    slots: int = Field(default=1, ge=1, le=64, description="trials run in parallel")
    pipeline: bool | None = Field(
        default=None, description="proposals overlap: the agent drafts the next while one is judged, and "
        "with N slots up to N are in flight, judged in order (autoresearch.pipeline). None: on for a "
        "proposals file, where it cannot change a decision; off for the agent, where drafting ahead "
        "changes what the agent has seen")
    executor: Literal["local", "ray"] = "local"
    ray_address: str | None = None
    device: str = Field(default="auto", pattern=r"^(auto|cpu|cuda|cuda:\d+)$", description="auto, cpu, cuda or cuda:N")
    isolation: Literal["bubblewrap", "none"] = Field(
        default="bubblewrap", description="bubblewrap: refuse to run proposals where the sandbox cannot run; "
        "none: run them unsandboxed with the user's rights (the user's explicit choice, stated in every record)")
    # Agent settings (used with --idea).
    llm_base_url: str | None = None
    model: str | None = None
    gguf: Path | None = None
    max_llm_cost: float | None = Field(default=None, ge=0)
    time_budget: float | None = Field(default=None, gt=0, description="seconds; stop starting proposals after it")
    llm_timeout: float = Field(default=600.0, gt=0)
    parse_retries: int = Field(default=3, ge=0, le=10, description="repair rounds per proposal: replies asked "
                               "again after a failed parse, static check or smoke run")
    edit_format: Literal["auto", "search-replace", "whole-file"] = Field(
        default="auto", description="how the model writes a change: whole-file (the complete new content of one "
        "file), search-replace (exact text and its replacement), or auto: whole-file for a small model and "
        "small files, search-replace otherwise")

    @model_validator(mode="after")
    def _one_design(self):
        if self.stages is not None and self.seeds is not None:
            raise ValueError("give the gate's stages or a fixed number of seeds, not both")
        return self

    @model_validator(mode="before")
    @classmethod
    def _map_require_isolation(cls, data):
        """Runs recorded before `isolation` existed hold `require_isolation`: True meant "bubblewrap or
        refuse", False "bubblewrap where it works", and both now read as the default, `bubblewrap`
        (going on without a sandbox takes `--isolation none`, as for any run, which then wins)."""
        if not isinstance(data, dict) or "require_isolation" not in data:
            return data
        data = dict(data)
        old = data.pop("require_isolation")
        if not isinstance(old, bool):
            raise ValueError(f"require_isolation must be true or false, got {old!r}")
        data.setdefault("isolation", "bubblewrap")
        return data
