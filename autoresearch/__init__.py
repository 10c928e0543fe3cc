"""autoresearch: LLM-proposed changes to a training repo, accepted only through a statistical gate."""

from autoresearch import parse_lock

__version__ = "0.1.0"

parse_lock.install()  # before any thread parses (see parse_lock: a CPython 3.11 race)
