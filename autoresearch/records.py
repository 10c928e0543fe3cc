"""The run's git repository: the baseline commit, one commit per proposal on its own ref
(``refs/proposals/NNN``), and branch ``accepted`` holding only accepted commits, in order.

Commits are built with GitPython's object database and a throwaway index, never through the
working tree, and each ref moves in one atomic update at the end: a run killed mid-commit
leaves at worst an unreferenced object, and committing the same proposal again reuses its ref.
"""

from __future__ import annotations

import functools
import io
import os
import tempfile
import threading
from pathlib import Path

import git
from git.index.typ import BaseIndexEntry
from gitdb import IStream

ACTOR = git.Actor("autoresearch", "autoresearch@localhost")
ACCEPTED = "accepted"
BASELINE_TAG = "baseline"


def tree_files(commit: git.Commit) -> dict[str, str]:
    """Every file of a commit's tree, by path, as text."""
    return {blob.path: blob.data_stream.read().decode("utf-8")
            for blob in commit.tree.traverse() if blob.type == "blob"}


def proposal_ref(idx: int) -> str:
    return f"refs/proposals/{idx:03d}"


def _locked(method):
    """GitPython's object database talks to one long-lived `git cat-file` process per repo: two
    threads (the pipeline's judge and the agent reading the incumbent) must not interleave on it."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with self.lock:
            return method(self, *args, **kwargs)

    return wrapper


class RunRepo:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.repo = git.Repo(self.path)
        self.lock = threading.RLock()

    @classmethod
    def create(cls, path: Path, files: dict[str, bytes], message: str) -> "RunRepo":
        path.mkdir(parents=True, exist_ok=True)
        repo = git.Repo.init(path, initial_branch=ACCEPTED)
        with repo.config_writer() as cfg:
            cfg.set_value("user", "name", ACTOR.name)
            cfg.set_value("user", "email", ACTOR.email)
        self = cls(path)
        sha = self._commit_tree(files, message, parents=[])
        repo.create_tag(BASELINE_TAG, ref=sha, message="the benchmark's baseline (template) code")
        git.Reference.create(repo, f"refs/heads/{ACCEPTED}", sha)
        repo.git.reset("--hard", ACCEPTED)
        return self

    # ------------------------------------------------------------------ reading

    @property
    @_locked
    def baseline(self) -> str:
        return self.repo.tags[BASELINE_TAG].commit.hexsha

    @property
    @_locked
    def accepted_tip(self) -> str:
        return self.repo.commit(ACCEPTED).hexsha

    @_locked
    def files_at(self, sha: str) -> dict[str, str]:
        return tree_files(self.repo.commit(sha))

    @_locked
    def accepted_chain(self) -> list[str]:
        """Accepted proposal commits, oldest first (the baseline excluded)."""
        return [c.hexsha for c in reversed(list(self.repo.iter_commits(f"{BASELINE_TAG}..{ACCEPTED}")))]

    @_locked
    def ref_sha(self, ref: str) -> str | None:
        try:
            return self.repo.commit(ref).hexsha
        except (git.BadName, ValueError):
            return None

    # ------------------------------------------------------------------ writing

    def _commit_tree(self, files: dict[str, bytes | str], message: str, parents: list[str]) -> str:
        fd, index_path = tempfile.mkstemp(prefix="index-", dir=self.repo.git_dir)
        os.close(fd)
        os.unlink(index_path)
        try:
            index = git.IndexFile(self.repo, file_path=index_path)
            entries = []
            for rel, data in sorted(files.items()):
                raw = data.encode("utf-8") if isinstance(data, str) else data
                stream = self.repo.odb.store(IStream("blob", len(raw), io.BytesIO(raw)))
                entries.append(BaseIndexEntry((0o100644, stream.binsha, 0, rel)))
            if entries:
                index.add(entries, write=False)
            tree = index.write_tree()
        finally:
            if os.path.exists(index_path):
                os.unlink(index_path)
        commit = git.Commit.create_from_tree(
            self.repo, tree, message, parent_commits=[self.repo.commit(p) for p in parents], head=False,
            author=ACTOR, committer=ACTOR)
        return commit.hexsha

    @_locked
    def commit_proposal(self, idx: int, parent: str, files: dict[str, str] | None, message: str) -> str:
        """One commit per proposal on refs/proposals/NNN (files None: an empty commit for a change
        that could not be applied). Idempotent: an existing ref is returned as it is."""
        ref = proposal_ref(idx)
        existing = self.ref_sha(ref)
        if existing is not None:
            return existing
        tree_files = files if files is not None else self.files_at(parent)
        sha = self._commit_tree(tree_files, message, parents=[parent])
        git.Reference.create(self.repo, ref, sha, force=True)
        return sha

    @_locked
    def advance_accepted(self, sha: str) -> None:
        """Fast-forward ``accepted`` to an accepted proposal whose parent is its tip."""
        commit = self.repo.commit(sha)
        tip = self.accepted_tip
        if tip == sha:
            return
        if [p.hexsha for p in commit.parents] != [tip]:
            raise RuntimeError(f"commit {sha[:10]} is not a child of the accepted tip {tip[:10]}")
        git.Reference.create(self.repo, f"refs/heads/{ACCEPTED}", sha, force=True)
        self.repo.git.reset("--hard", ACCEPTED)

    @_locked
    def retract_accepted(self, sha: str, parent: str) -> None:
        """Move ``accepted`` back from its tip ``sha`` to ``parent`` (a proposal that could not be
        recorded in full is not accepted after all)."""
        if self.accepted_tip != sha or [p.hexsha for p in self.repo.commit(sha).parents] != [parent]:
            raise RuntimeError(f"commit {sha[:10]} is not the accepted tip on top of {parent[:10]}")
        git.Reference.create(self.repo, f"refs/heads/{ACCEPTED}", parent, force=True)
        self.repo.git.reset("--hard", ACCEPTED)
