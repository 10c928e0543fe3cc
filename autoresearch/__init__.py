"""autoresearch: LLM-proposed changes to a training repo, accepted only through a statistical gate."""

__version__ = "0.1.0"
