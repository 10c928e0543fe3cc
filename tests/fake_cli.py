"""`autoresearch` with canned trials (tests/fake_executor.py) in place of sandboxed training: the
tests that check the CLI and the engine's logic through a real process (exit codes, kill -9 and
resume, reports) run it as ``[PYTHON, fake_cli.py, ...]`` where the real command would be.

AUTORESEARCH_FAKE_TRIAL_SECONDS makes each trial request take that long (a moment for a test to
kill the run in); the default is 0. AUTORESEARCH_FAKE_SMOKE_SECONDS: the same for the agent's smoke
runs (default: as trials).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from fake_executor import FakeExecutor  # noqa: E402

from autoresearch.sandbox import executors  # noqa: E402

_smoke = os.environ.get("AUTORESEARCH_FAKE_SMOKE_SECONDS")
executors.run_trials = FakeExecutor(delay=float(os.environ.get("AUTORESEARCH_FAKE_TRIAL_SECONDS", "0")),
                                    smoke_delay=float(_smoke) if _smoke else None).run

from autoresearch.cli import main  # noqa: E402

if __name__ == "__main__":
    main(prog_name="autoresearch")
