"""A run's secret, and everything drawn from it: gate and verification seeds, the per-trial keys
the harness seeds from, the secret order of the predict inputs.

Seeds are part of an experiment's definition, so a candidate must not be able to prepare for them:
with fixed, public seeds (1-5 for the gate, 1001-1005 for verification) a change can be tuned
offline seed by seed, and code can tell a verification run from a gate run. Here every run draws
its own secret; its seeds are drawn from it and look alike whatever they are for, and the sandbox
never sees a seed at all, only a key derived from (secret, seed): candidate and incumbent on the
same seed get the same key (the pairing), and nothing inside the sandbox maps a key back to a seed.
The secret and the seeds are recorded in the ledger (which no sandbox can read), so a run resumes
and replays exactly.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets

SEED_BITS = 31


SECRET_ENV = "AUTORESEARCH_RUN_SECRET"


class SecretError(ValueError):
    """AUTORESEARCH_RUN_SECRET is set but is not a secret."""


def new_secret() -> str:
    """A fresh secret; AUTORESEARCH_RUN_SECRET (64 hex digits, e.g. another run's, from its ledger)
    reuses one instead, to reproduce that run's seeds and predict set exactly."""
    given = os.environ.get(SECRET_ENV, "").strip().lower()
    if given:
        if len(given) != 64 or any(c not in "0123456789abcdef" for c in given):
            raise SecretError(f"{SECRET_ENV} must be 64 hex digits (a run's secret, from its ledger), got "
                              f"{len(given)} characters")
        return given
    return secrets.token_hex(32)


def _digest(secret: str, label: str) -> bytes:
    return hmac.new(bytes.fromhex(secret), label.encode(), hashlib.sha256).digest()


def draw_seeds(secret: str, purpose: str, count: int) -> list[int]:
    """``count`` distinct seeds for ``purpose`` ("gate", "verify", ...), unpredictable without the secret."""
    seeds: list[int] = []
    i = 0
    while len(seeds) < count:
        seed = int.from_bytes(_digest(secret, f"seed|{purpose}|{i}")[:8], "little") % (2**SEED_BITS)
        if seed not in seeds:
            seeds.append(seed)
        i += 1
    return seeds


def trial_key(secret: str, seed: int) -> str:
    """What the harness seeds every generator of one trial from (hex)."""
    return _digest(secret, f"trial|{int(seed)}").hex()


def derived_key(secret: str, purpose: str) -> str:
    """A run-level key for one purpose (e.g. the weight-sketch positions, the predict order)."""
    return _digest(secret, f"key|{purpose}").hex()


def rng_seed(secret: str, purpose: str) -> int:
    """A seed for the trusted side's own numpy generator (predict order, perturbations)."""
    return int.from_bytes(_digest(secret, f"rng|{purpose}")[:16], "little")
