"""The `autoresearch` command line: options in, one call into the package, a message and an
exit code out. What a command computes lives in the module named for it. (Over 400 lines: click's
option declarations and help texts are the CLI's documentation, kept beside their commands.)
"""

from __future__ import annotations

import functools
import json
import os
import sys
from enum import IntEnum
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from autoresearch.escaping import terminal_text
from autoresearch.ledger import Ledger, LedgerError

console = Console()
err = Console(stderr=True)


class Exit(IntEnum):
    """The command's exit status: what a script calling it can tell apart."""

    OK = 0
    NOT_HELD = 1  # replay --verify: the accepted chain's gain did not hold on fresh seeds
    USER = 2  # a usage error, a bad option, benchmark or spec (click's usage errors are 2 too)
    DATA = 3  # data unavailable, or not the data the spec or run pins
    STORAGE = 4  # the runs folder or the ledger cannot be written
    ISOLATION = 5  # the sandbox cannot run here (and --isolation none was not chosen)
    LLM = 6  # the LLM endpoint cannot be reached or keeps failing


# The names scripts and tests know.
EXIT_USER, EXIT_DATA, EXIT_STORAGE, EXIT_ISOLATION, EXIT_LLM = Exit.USER, Exit.DATA, Exit.STORAGE, Exit.ISOLATION, Exit.LLM


def _fail(message: str, code: Exit) -> None:
    # The message may quote a model's text (git am's stderr names a commit subject): never markup.
    err.print("[bold red]error:[/]", terminal_text(message), highlight=False)
    sys.exit(int(code))


def _guard(fn):
    """Turn the errors a user can cause into a clear message and exit code, not a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        # Imported here, not at the top: their modules pull in numpy, pydantic, git and torch's
        # helpers (half a second), and `autoresearch --help` should not wait for them.
        from pydantic import ValidationError

        from autoresearch.benchmark import BenchmarkError
        from autoresearch.datasets import DataMismatch, DataUnavailable
        from autoresearch.envinfo import DeviceUnavailable
        from autoresearch.replay import ReplayError
        from autoresearch.sandbox.executors import ExecutorUnavailable
        from autoresearch.sandbox.isolation import IsolationUnavailable, SandboxUnreadable
        from autoresearch.sandbox.pyview import PackageNotInstalled
        from autoresearch.seeding import SecretError

        try:
            return fn(*args, **kwargs)
        except BenchmarkError as exc:
            _fail(str(exc), Exit.USER)
        except DataUnavailable as exc:
            _fail(f"data unavailable: {exc}", Exit.DATA)
        except DataMismatch as exc:
            _fail(f"data mismatch: {exc}", Exit.DATA)
        except LedgerError as exc:
            _fail(str(exc), Exit.STORAGE)
        except (IsolationUnavailable, SandboxUnreadable, PackageNotInstalled) as exc:
            _fail(str(exc), Exit.ISOLATION)
        except SecretError as exc:
            _fail(str(exc), Exit.USER)
        except ReplayError as exc:
            _fail(f"replay: {exc}", Exit.USER)
        except (DeviceUnavailable, ExecutorUnavailable) as exc:
            _fail(str(exc), Exit.USER)
        except ValidationError as exc:  # options that click let through but the typed run config refuses
            if exc.title != "RunConfig":
                raise
            problems = "; ".join(f"--{'-'.join(str(p) for p in e['loc']).replace('_', '-')}: {e['msg']} "
                                 f"(got {e.get('input')!r})" for e in exc.errors())
            _fail(f"invalid option: {problems}", Exit.USER)
        except OSError as exc:
            # ENOSPC, EROFS, EACCES, EDQUOT; errno None: a short write (numpy's tofile on a full disk)
            if exc.errno in (28, 30, 13, 122) or exc.errno is None:
                _fail(f"storage error: {exc}", Exit.STORAGE)
            raise
        except _LLMError as exc:
            _fail(str(exc), Exit.LLM)

    return wrapper


class _LLMError(RuntimeError):
    pass


def _llm_error_types() -> tuple[type[BaseException], ...]:
    try:
        from autoresearch.agent.llm import LLMUnavailable

        return (LLMUnavailable,)
    except ImportError:
        return ()


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="autoresearch-gate", prog_name="autoresearch")
def main() -> None:
    """autoresearch: an LLM proposes changes to a sandboxed training repo; each change is trained on
    several paired seeds on exactly the incumbent's data, scored by trusted code on a held-out split,
    and accepted only when a statistical gate shows a real improvement.

    \b
    Typical use:
      autoresearch run --idea "adaptive LR optimizer"          # LLM proposals (embedded local model)
      autoresearch run --proposals-file ideas.jsonl             # your own proposals, no LLM
      autoresearch show RUN                                     # decisions and headline
      autoresearch replay RUN --verify                          # re-apply accepted commits, re-verify
    """
    # Number GPUs as nvidia-smi and Ray do (PCI bus order), before torch initialises CUDA: the
    # sandbox pins cuda:N through the driver's PCI-ordered list (sandbox.gpus).
    os.environ["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"


def _resolve_run(run: str, runs_dir: Path) -> Path:
    p = Path(run)
    if (p / "ledger.sqlite").is_file():
        return p
    if (runs_dir / run / "ledger.sqlite").is_file():
        return runs_dir / run
    matches = []
    if runs_dir.is_dir() and "/" not in run and run not in ("", ".", ".."):
        matches = sorted(d for d in runs_dir.iterdir() if d.name.startswith(run) and (d / "ledger.sqlite").is_file())
    if len(matches) == 1:
        return matches[0]
    raise LedgerError(f"no run {run!r} (looked for a run folder and under {runs_dir})")


RUNS_DIR = click.option("--runs-dir", type=click.Path(path_type=Path), default=Path("runs"), show_default=True,
                        envvar="AUTORESEARCH_RUNS_DIR", help="Folder holding run folders.")


@main.command()
@click.option("--benchmark", default="digits-mlp", show_default=True, help="Built-in benchmark name or a benchmark folder.")
@click.option("--idea", help="Research idea for the LLM agent, e.g. 'adaptive LR optimizer'.")
@click.option("--proposals-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="JSON Lines file, one proposal object {title, hypothesis, edits} per line (no LLM).")
@click.option("--proposals", type=int, default=None,
              help="Proposal budget m; the gate tests each at alpha/m. Default: lines in the file, or 8 with --idea.")
@click.option("--stages", default=None, metavar="K1,K2,...",
              help="Cumulative paired seeds at each look of the sequential gate (default: the spec's, 2,4,6,10,16).")
@click.option("--seeds", type=click.IntRange(2, 100), default=None,
              help="A fixed design instead: one look at this many paired seeds (no early stop).")
@click.option("--alpha", type=float, default=None, help="Family-wise false-acceptance rate over the run (default 0.05).")
@click.option("--min-delta", type=float, default=None, help="Smallest improvement worth accepting (default 0).")
@click.option("--no-screen", is_flag=True, hidden=True,
              help="Deprecated, does nothing: the gate's first look replaced the one-seed screen.")
@click.option("--no-verify", is_flag=True, help="Skip re-running the accepted chain on fresh seeds at the end.")
@click.option("--slots", type=click.IntRange(1, 64), default=1, show_default=True, help="Trials run in parallel.")
@click.option("--pipeline/--no-pipeline", default=None,
              help="Overlap proposals: the agent drafts the next one while one is judged, and with N slots up to "
                   "N proposals are in flight; decisions stay sequential, in order, each against the incumbent of "
                   "its turn. Default: on with --proposals-file (it cannot change a decision), off with --idea "
                   "(the agent would draft each proposal one decision earlier).")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True)
@click.option("--ray-address", default=None, help="Ray cluster address (default: start a local one on 127.0.0.1).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--isolation", type=click.Choice(["bubblewrap", "none"]), default="bubblewrap", show_default=True,
              help="bubblewrap: refuse to run proposals where the sandbox cannot run (exit 5). none: run "
                   "LLM-written code unsandboxed with your user's rights, knowingly; every record says so.")
@click.option("--require-isolation", is_flag=True, hidden=True,
              help="Deprecated, does nothing: refusing without bubblewrap is the default now.")
@click.option("--llm-base-url", envvar="AUTORESEARCH_LLM_BASE_URL", default=None,
              help="OpenAI-compatible endpoint (else OPENAI_BASE_URL; else the embedded local model).")
@click.option("--model", envvar="AUTORESEARCH_MODEL", default=None, help="Model name at the endpoint.")
@click.option("--gguf", envvar="AUTORESEARCH_GGUF", type=click.Path(path_type=Path), default=None,
              help="GGUF file for the embedded llama.cpp server (skips the download).")
@click.option("--edit-format", type=click.Choice(["auto", "search-replace", "whole-file"]), default="auto",
              show_default=True, envvar="AUTORESEARCH_EDIT_FORMAT",
              help="How the model writes a change: the complete new content of one file (whole-file), exact "
                   "search/replace edits, or auto: whole-file for a small model and small files.")
@click.option("--max-llm-cost", type=float, default=None, help="Stop starting proposals past this estimated USD cost.")
@click.option("--time-budget", type=float, default=None, help="Stop starting proposals after this many seconds of work (summed over resumes).")
@RUNS_DIR
@_guard
def run(benchmark, idea, proposals_file, proposals, stages, seeds, alpha, min_delta, no_screen, no_verify, slots, pipeline,
        executor, ray_address, device, isolation, require_isolation, llm_base_url, model, gguf, edit_format, max_llm_cost,
        time_budget, runs_dir):
    """Start a run: propose (from an idea or a file), gate, record and report."""
    from autoresearch.config import RunConfig
    from autoresearch.engine import read_proposal_lines

    if bool(idea) == bool(proposals_file):
        raise click.UsageError("give exactly one of --idea or --proposals-file")
    if stages is not None:
        try:
            stages = tuple(int(k) for k in stages.split(","))
        except ValueError:
            raise click.UsageError(f"--stages takes comma-separated seed counts, e.g. 2,4,6,10,16; got {stages!r}") \
                from None
        if seeds is not None:
            raise click.UsageError("give --stages or --seeds, not both")
    if require_isolation and isolation == "none":
        raise click.UsageError("--require-isolation and --isolation none contradict each other")
    if require_isolation:
        err.print("note: --require-isolation is deprecated and does nothing: refusing to run without the "
                  "sandbox is the default now", highlight=False)
    lines: list[str] = []
    if proposals_file:
        try:
            lines = read_proposal_lines(proposals_file.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            raise click.UsageError(f"{proposals_file} is not UTF-8 text") from None
        if not lines:
            raise click.UsageError(f"{proposals_file} holds no proposals")
        if not any(line.lstrip().startswith("{") for line in lines):  # surely the wrong file: train nothing
            raise click.UsageError(f"{proposals_file}: no line is a JSON object; expected JSON Lines, one "
                                   '{"title", "hypothesis", "edits"} object per line')
    config = RunConfig(benchmark=benchmark, runs_dir=runs_dir, idea=idea,
                       proposals=proposals or (len(lines) if lines else 8), stages=stages, seeds=seeds, alpha=alpha,
                       min_delta=min_delta, verify=not no_verify, slots=slots,
                       # Resolved here so that the run's config.json records what was used.
                       pipeline=(not idea) if pipeline is None else pipeline, executor=executor,
                       ray_address=ray_address, device=device, isolation=isolation,
                       llm_base_url=llm_base_url, model=model, gguf=gguf, edit_format=edit_format,
                       max_llm_cost=max_llm_cost,
                       time_budget=time_budget)
    _execute(config, lines=lines, run_dir=None)


ISOLATION_OVERRIDE = click.option(
    "--isolation", type=click.Choice(["bubblewrap", "none"]), default=None,
    help="Override the run's recorded choice for this session only (none: unsandboxed, knowingly; a run "
         "started in the sandbox cannot go on without it).")


@main.command()
@click.argument("run")
@click.option("--slots", type=click.IntRange(1, 64), default=None, help="Override the parallel trial slots.")
@ISOLATION_OVERRIDE
@RUNS_DIR
@_guard
def resume(run, slots, isolation, runs_dir):
    """Continue a run that was stopped or killed; finished trials are not repeated."""
    _execute(None, lines=None, run_dir=_resolve_run(run, runs_dir), slots=slots, isolation=isolation)


UNSANDBOXED = ("isolation none: proposals run WITHOUT a sandbox, with your user's rights (they can read the "
               "run's held-out labels, your files and the network); trust these results as far as you trust the code")


def _open_llm_session(config):
    """The agent's LLM session (agent.loop.open_llm_session); an endpoint that fails is exit 6."""
    from autoresearch.agent.loop import open_llm_session

    try:
        return open_llm_session(config)
    except _llm_error_types() as exc:
        raise _LLMError(str(exc)) from None


def _execute(config, *, lines, run_dir, slots=None, isolation=None) -> None:
    from autoresearch.engine import RunEngine, read_proposal_lines, run_proposal_lines
    from autoresearch.live import LiveEvents
    from autoresearch.sandbox.executors import make_executor
    from autoresearch.sandbox.isolation import isolation_level

    llm_errors = _llm_error_types()
    events = LiveEvents(console)
    if run_dir is None:
        isolation_level(config.isolation)  # refuse before an LLM is started or a run folder made
        # Reach the LLM before any training starts: an unreachable endpoint is an immediate, clear error.
        agent_session = _open_llm_session(config) if config.idea else None
        try:
            engine = RunEngine.create(config, executor=make_executor(config), events=events)
        except BaseException:
            if agent_session is not None:
                agent_session.close()
            raise
        if lines:
            (engine.run_dir / "proposals.jsonl").write_text("\n".join(lines) + "\n")
    else:
        engine = RunEngine.open(run_dir, events=events, slots=slots, isolation=isolation)
        engine.executor = make_executor(engine.config)
        config = engine.config
        if (engine.run_dir / "proposals.jsonl").is_file():
            lines = read_proposal_lines((engine.run_dir / "proposals.jsonl").read_text())
        agent_session = _open_llm_session(config) if config.idea and not lines else None
        engine.events.records = engine.records()
    console.print(f"run [bold]{engine.run_id}[/] in {engine.run_dir}  (isolation: {engine.isolation}, "
                  f"device: {engine.device})", highlight=False)
    if engine.isolation == "none":
        err.print(f"[bold red]warning:[/] {UNSANDBOXED}", highlight=False)
    try:
        with events:
            if lines:
                run_proposal_lines(engine, lines)
            else:
                from autoresearch.agent.loop import run_agent

                run_agent(engine, agent_session)
            headline = engine.finish()
    except llm_errors as exc:
        raise _LLMError(str(exc)) from None
    finally:
        if agent_session is not None:
            agent_session.close()
        getattr(engine.executor, "close", lambda: None)()  # the slots' sandboxes started ahead
    console.print(f"\n[bold]headline:[/] {headline.get('detail')}", highlight=False)
    console.print(f"report: {engine.run_dir / 'REPORT.md'}", highlight=False)


@main.command()
@click.argument("run")
@click.option("--json", "as_json", is_flag=True, help="Print a stable JSON object instead of tables.")
@RUNS_DIR
@_guard
def show(run, as_json, runs_dir):
    """Show a run: its headline and every proposal's decision."""
    from autoresearch.live import decisions_table
    from autoresearch.reports import run_summary_json
    from autoresearch.run_view import RunView

    view = RunView(_resolve_run(run, runs_dir))  # the records only: no benchmark, data or engine
    summary = run_summary_json(view.row, view.records(), view.isolation)
    if as_json:
        click.echo(json.dumps(summary, indent=2, default=str))
        return
    console.print(f"[bold]{summary['run_id']}[/]  benchmark {summary['benchmark']}  status {summary['status']}  "
                  f"isolation {summary['isolation']}", highlight=False)
    if summary["isolation"] == "none":
        console.print(f"[bold red]{UNSANDBOXED}[/]", highlight=False)
    if summary["idea"]:
        console.print(f"idea: {summary['idea']}", highlight=False)
    console.print(decisions_table(summary["proposals"]))
    headline = summary["headline"]
    if headline:
        console.print(f"headline: {headline.get('detail')}", highlight=False)
    console.print(f"report: {view.run_dir / 'REPORT.md'}", highlight=False)


@main.command(name="list")
@RUNS_DIR
@_guard
def list_runs(runs_dir):
    """List runs under the runs folder."""
    table = Table()
    for col in ("run", "benchmark", "status", "proposals", "accepted", "idea"):
        table.add_column(col)
    for d in sorted(runs_dir.glob("*/ledger.sqlite")) if runs_dir.is_dir() else []:
        ledger = Ledger(d)
        try:
            row = ledger.only_run()
            props = ledger.proposals(row["id"])
            table.add_row(row["id"], row["benchmark"], row["status"], str(len(props)),
                          str(sum(p["decision"] == "accepted" for p in props)), (row["idea"] or "")[:40])
        finally:
            ledger.close()
    console.print(table)


@main.command()
@click.option("--json", "as_json", is_flag=True)
@_guard
def benchmarks(as_json):
    """List the built-in benchmarks and their editable files."""
    from autoresearch.benchmark import catalogue

    items = catalogue()
    if as_json:
        click.echo(json.dumps(items, indent=2))
        return
    for it in items:
        console.print(f"[bold]{it['name']}[/] v{it['version']}: {it['description']}", highlight=False)
        d = it["data"]
        where = f"{d['dataset']}@{str(d['revision'])[:12]} from the Hugging Face hub" if d["needs_hub"] else \
            f"{d['source']}, offline"
        pins = "fingerprints pinned" if d["pinned"] else \
            f"fingerprints NOT pinned: run `autoresearch init-benchmark DEST --from {it['name']}` first"
        console.print(f"    data: {where}; {', '.join(f'{k} {v:,}' for k, v in d['sizes'].items())}; {pins}",
                      highlight=False)
        console.print(f"    harness (frozen): {it['harness']}", highlight=False)
        for p in it["editable"]:
            console.print(f"    editable: {p}", highlight=False)


@main.command()
def doctor():
    """Check what this machine offers: isolation, cgroups, GPU, versions, the local LLM."""
    from autoresearch import envinfo
    from autoresearch.benchmark import load_benchmark
    from autoresearch.sandbox import isolation as iso
    from autoresearch.sandbox.cgroups import describe_cgroups

    bw = iso.bubblewrap_path()
    console.print(f"bubblewrap: {bw} ({'works' if iso.bubblewrap_works() else 'installed but NOT usable'})" if bw else
                  f"bubblewrap: NOT installed; install it: {iso.install_hint()}", highlight=False)
    userns = iso.user_namespace_problem() or ("allowed" if iso.bubblewrap_works() else "not switched off by a sysctl")
    console.print(f"user namespaces: {userns}", highlight=False)
    problem = iso.isolation_problem()
    console.print("run: proposals run in the bubblewrap sandbox" if problem is None else
                  f"run: REFUSES to run proposals (exit {int(Exit.ISOLATION)}): {problem}; or pass --isolation none "
                  "to run them unsandboxed with your user's rights, knowingly", highlight=False)
    console.print(describe_cgroups(), highlight=False)
    budget = load_benchmark("digits-mlp").spec.budget
    limits = iso.Limits(memory_bytes=budget.memory_mb * 2**20, max_processes=budget.max_processes)
    for label, gpu in (("a CPU trial", False), ("a GPU trial", True)):
        console.print(f"limits of {label} (digits-mlp budget): " + "; ".join(iso.expected_limit_notes(limits, gpu=gpu)),
                      highlight=False)
    import torch

    console.print(f"device cpu: {envinfo.device_description('cpu')}", highlight=False)
    if torch.cuda.is_available():
        from autoresearch.sandbox.executors import pinning

        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            pinned = pinning(f"cuda:{i}", exists=lambda _node: True)  # what a trial on it would be given
            node = next((d for d in pinned.devices if d.removeprefix("/dev/nvidia").isdigit()), "no device node found")
            console.print(f"device cuda:{i}: {p.name}, {p.total_memory / 2**30:.0f} GiB, compute {p.major}.{p.minor}, "
                          f"PCI {pinned.config.get('gpu_bus_id', '?')} (a trial on it sees only {node}, "
                          f"CUDA_VISIBLE_DEVICES={pinned.env['CUDA_VISIBLE_DEVICES']})", highlight=False)
        console.print(f"trials run on: cuda, one GPU per slot (--slots {torch.cuda.device_count()}); torch CUDA "
                      f"{torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}", highlight=False)
    else:
        console.print("GPU: none (CUDA not available); trials run on CPU slots (--slots N)", highlight=False)
    for k, v in envinfo.versions().items():
        console.print(f"{k}: {v}", highlight=False)
    try:
        from autoresearch.agent.local_llm import describe_local_llm

        console.print(describe_local_llm(), highlight=False)
    except ImportError:
        pass


@main.command()
@click.argument("run")
@click.option("--onto", type=click.Path(path_type=Path), default=None,
              help="Folder for the replayed checkout (default: a fresh copy under the run folder).")
@click.option("--verify", is_flag=True, help="Re-run the whole accepted chain against the baseline on fresh seeds.")
@click.option("--seed-base", type=int, default=None, help="First fresh seed for --verify (default: spec verify base + 1000).")
@ISOLATION_OVERRIDE
@RUNS_DIR
@_guard
def replay(run, onto, verify, seed_base, isolation, runs_dir):
    """Apply the run's accepted commits onto a fresh checkout of the benchmark repo with git."""
    from autoresearch.replay import replay_run, verify_replay

    run_dir = _resolve_run(run, runs_dir)
    result = replay_run(run_dir, onto)
    console.print(f"replayed {len(result.applied)} accepted commit(s) onto {result.path}", highlight=False)
    for line in result.log:  # commit subjects: a model's titles
        console.print(terminal_text(f"  {line}"), highlight=False)
    if verify:
        from autoresearch.live import LiveEvents

        events = LiveEvents(console)
        with events:
            headline = verify_replay(run_dir, result, seed_base=seed_base, events=events, isolation=isolation)
        console.print(f"[bold]verification:[/] {headline['detail']}", highlight=False)
        if headline.get("verified") and not headline.get("holds"):
            sys.exit(int(Exit.NOT_HELD))


@main.command(name="init-benchmark")
@click.argument("dest", type=click.Path(file_okay=False, path_type=Path))
@click.option("--from", "template", default="digits-mlp", show_default=True,
              help="Built-in benchmark or folder to copy (spec, frozen harness, editable repo); the copy "
                   "holds its own harness/.")
@click.option("--revision", default=None, help="Pin this hub dataset revision (40-hex commit) in the copy.")
@_guard
def init_benchmark(dest, template, revision):
    """Scaffold a benchmark folder from a template and pin its split fingerprints computed here."""
    from autoresearch.scaffold import init_benchmark as scaffold

    fingerprints = scaffold(dest, template, revision=revision)
    console.print(f"benchmark folder {dest} (from {template}); pinned fingerprints:", highlight=False)
    for split, digest in fingerprints.items():
        console.print(f"  {split}: {digest}", highlight=False)
    console.print(f"edit {dest / 'repo'} and {dest / 'spec.toml'}, then: autoresearch run --benchmark {dest} ...",
                  highlight=False)


if __name__ == "__main__":
    main()
