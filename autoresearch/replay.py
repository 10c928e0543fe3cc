"""Replay: re-apply a run's accepted commits with git onto a fresh copy of the benchmark repo,
and optionally re-verify the whole chain against the baseline on fresh seeds."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import git

from autoresearch.records import ACCEPTED, ACTOR, BASELINE_TAG, RunRepo, tree_files


class ReplayError(RuntimeError):
    pass


@dataclass
class ReplayResult:
    path: Path
    applied: list[str] = field(default_factory=list)
    log: list[str] = field(default_factory=list)


def replay_run(run_dir: Path, onto: Path | None) -> ReplayResult:
    from autoresearch.benchmark import load_benchmark
    from autoresearch.outcomes import files_hash
    from autoresearch.ledger import Ledger
    import json

    run_dir = Path(run_dir).resolve()
    ledger = Ledger(run_dir / "ledger.sqlite")
    row = ledger.only_run()
    ledger.close()
    resolved = json.loads(row["config_json"])
    root = resolved.get("benchmark_root")
    bench = load_benchmark(root if root and Path(root).is_dir() else row["benchmark"])
    source = RunRepo(run_dir / "repo")

    target = Path(onto) if onto else run_dir / "replays" / time.strftime("%Y%m%d-%H%M%S")
    if target.exists() and any(target.iterdir()):
        raise ReplayError(f"{target} is not empty; give --onto an empty or new folder")
    target.mkdir(parents=True, exist_ok=True)
    # A fresh copy of the benchmark's editable repo, committed as the baseline.
    files = bench.template_files()
    for rel, data in files.items():
        (target / rel).parent.mkdir(parents=True, exist_ok=True)
        (target / rel).write_bytes(data)
    repo = git.Repo.init(target, initial_branch="main")
    with repo.config_writer() as cfg:
        cfg.set_value("user", "name", ACTOR.name)
        cfg.set_value("user", "email", ACTOR.email)
    repo.git.add("-A")
    repo.git.commit("-m", f"baseline: fresh copy of {bench.name} v{bench.spec.version}")
    # Verification measures against this tag, never a position in the replayed history.
    repo.create_tag(BASELINE_TAG, message="the benchmark's baseline (template) code, as replayed")
    fresh = {p: (target / p).read_text() for p in files}
    if files_hash(fresh) != files_hash(source.files_at(source.baseline)):
        raise ReplayError("the benchmark's template on this machine differs from the run's baseline commit; "
                          "replaying onto it would not reproduce the run")
    result = ReplayResult(path=target)
    chain = source.accepted_chain()
    if chain:
        patches = source.repo.git.format_patch("--stdout", "--binary", f"{BASELINE_TAG}..{ACCEPTED}")
        try:
            # --no-scissors: a user's am.scissors setting must not cut a message at a model's `-- >8 --`.
            repo.git.am("--3way", "--keep-non-patch", "--no-scissors", istream=_as_stream(patches))
        except git.GitCommandError as exc:
            raise ReplayError(f"git am failed: {exc.stderr.strip()}") from None
    check_replayed(source, chain, repo)
    result.applied = chain
    for c in repo.iter_commits(f"{BASELINE_TAG}..HEAD", reverse=True):
        result.log.append(f"{c.hexsha[:10]} {c.summary}")
    result.log.append(f"replayed tree matches the run's accepted tip ({len(chain)} commit(s), each with the tree "
                      "of its accepted commit)")
    return result


def check_replayed(source: RunRepo, chain: list[str], repo: git.Repo) -> None:
    """Exactly one replayed commit per accepted commit, each with its source's tree, in order: a
    commit message that `git am` read as two mails (or a patch it skipped) would otherwise go
    unnoticed as long as the final tree matched."""
    replayed = list(repo.iter_commits(f"{BASELINE_TAG}..HEAD", reverse=True))
    if len(replayed) != len(chain):
        raise ReplayError(f"git am made {len(replayed)} commit(s) of the run's {len(chain)} accepted commit(s); "
                          "a commit message was read as more (or fewer) patches than it is")
    for n, (new, old) in enumerate(zip(replayed, chain), start=1):
        if tree_files(new) != source.files_at(old):
            raise ReplayError(f"replayed commit {n} ({new.hexsha[:10]}) has another tree than accepted commit "
                              f"{old[:10]}")


def _as_stream(text: str):
    import tempfile

    f = tempfile.TemporaryFile()
    f.write(text.encode())
    if not text.endswith("\n"):
        f.write(b"\n")
    f.seek(0)
    return f


def verify_replay(run_dir: Path, result: ReplayResult, *, seed_base: int | None = None, events=None,
                  isolation: str | None = None) -> dict:
    """The replayed chain against the replayed baseline (its `baseline` tag), on seeds none of the run has used.
    ``isolation`` overrides the run's recorded choice (replay --isolation)."""
    from autoresearch.engine import RunEngine

    engine = RunEngine.open(run_dir, events=events, isolation=isolation)
    repo = git.Repo(result.path)
    base_commit = repo.commit(BASELINE_TAG)

    # Seeds none of the run has used and nobody could know in advance: drawn from a fresh secret
    # (or, with --seed-base, consecutive seeds the user chose and the output states).
    from autoresearch.seeding import draw_seeds, new_secret

    count = len(engine.verify_seeds)
    engine.verify_seeds = ([seed_base + i for i in range(count)] if seed_base is not None
                           else draw_seeds(new_secret(), "replay-verify", count))
    headline = engine.verify_chain(final_files=tree_files(repo.head.commit), baseline_files=tree_files(base_commit))
    return headline
