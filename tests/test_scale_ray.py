"""The Ray executor: a small gated run on a local Ray cluster bound to 127.0.0.1, and a lost
worker's trial recorded as a crash with the reason, never dropped."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from conftest import ADAM, AUTORESEARCH, PYTHON, copy_benchmark

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow

DRIVER = r'''
import json, os, sys
from pathlib import Path
from autoresearch.config import RunConfig
from autoresearch.engine import RunEngine, run_proposal_lines
from autoresearch.sandbox.executors import RayExecutor
sys.path.insert(0, os.environ["AUTORESEARCH_TESTS_DIR"])
from trial_fakes import make_request

def dies(req):  # a worker that is lost mid-trial
    os._exit(1)

bench, runs, proposal = sys.argv[1:4]
executor = RayExecutor(slots=2, max_retries=1)
import ray
assert ray.util.get_node_ip_address() == "127.0.0.1"
# Everything Ray started listens on loopback only.
import subprocess
from pathlib import Path
listeners = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True).stdout.splitlines()
loopback = ("127.0.0.1:", "[::ffff:127.0.0.1]:", "[::1]:")
outside = [l for l in listeners if any(k in l for k in ("raylet", "gcs_server", "ray::"))
           and not l.split()[3].startswith(loopback)]
assert not outside, outside

config = RunConfig(benchmark=bench, runs_dir=Path(runs), seeds=3, proposals=1, verify=False, slots=2,
                   executor="ray", device="cpu")
engine = RunEngine.create(config, executor=executor)
records = run_proposal_lines(engine, [proposal])
engine.finish()
req = make_request(seeds=(7,), workspace="/nonexistent", harness="/nonexistent", work_dir=str(Path(runs) / "lost"),
                   isolation="none")
lost = RayExecutor(slots=2, max_retries=1, trial_fn=dies).map([req])[0]
print("RESULT " + json.dumps({"decisions": [(r.decision, r.reason) for r in records],
                  "seeds": [t.seed for t in records[0].candidate_trials],
                  "statuses": [t.status for t in records[0].candidate_trials],
                  "lost": [lost[0].status.value, lost[0].detail, lost[0].seed]}), flush=True)
executor.shutdown()
'''


def _results(stdout: str) -> list[str]:
    """The JSON after each "RESULT " the driver printed. Ray's log monitor writes "(raylet) ..."
    lines into the same stdout from another thread, and one without its newline ended just before
    the driver's RESULT in a CI run: the marker is looked for anywhere in a line."""
    return [line.split("RESULT ", 1)[1] for line in stdout.splitlines() if "RESULT " in line]


def test_ray_executor_runs_a_gated_run_on_loopback(tmp_path):
    bench = copy_benchmark(tmp_path / "bench", epochs=5)
    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", AUTORESEARCH_TESTS_DIR=str(Path(__file__).parent))
    out = subprocess.run([PYTHON, "-c", DRIVER, str(bench), str(tmp_path / "runs"), ADAM], capture_output=True,
                         text=True, timeout=600, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    lines = _results(out.stdout)
    assert lines, out.stdout[-3000:] + out.stderr[-3000:]
    result = json.loads(lines[-1])
    assert result["decisions"] == [["accepted", "accepted"]]
    assert len(result["seeds"]) == 3 and result["statuses"] == ["ok", "ok", "ok"]
    status, detail, seed = result["lost"]
    assert status == "crash" and seed == 7 and "ray task failed on 2 attempt(s)" in detail


JOIN = r'''
import json, sys
from autoresearch.sandbox.executors import RayExecutor
import os
from autoresearch.sandbox.trial import TrialOutput, TrialStatus
sys.path.insert(0, os.environ["AUTORESEARCH_TESTS_DIR"])
from trial_fakes import make_request

def echo(req):
    import os
    return [TrialOutput(seed=s, status=TrialStatus.OK, detail=f"pid {os.getpid()}", isolation="none") for s in req.seeds]

executor = RayExecutor(address=sys.argv[1], trial_fn=echo)
import ray
assert ray.util.get_node_ip_address() == "127.0.0.1"
req = make_request(seeds=(3,), isolation="none")
out = executor.map([req])[0]
print("RESULT " + json.dumps([out[0].status.value, out[0].seed, out[0].detail]), flush=True)
'''


def test_ray_address_joins_an_existing_loopback_cluster_and_a_dead_one_is_a_clear_error(tmp_path):
    import shutil
    import signal
    import socket
    import tempfile
    import time

    from autoresearch.agent.local_llm import free_port

    # Ray >= 2.59 makes `ray start` clusters require a token: the driver must carry the same one.
    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", AUTORESEARCH_TESTS_DIR=str(Path(__file__).parent),
               RAY_AUTH_MODE="token",
               RAY_AUTH_TOKEN=os.urandom(16).hex())
    props = tmp_path / "one.jsonl"
    props.write_text(ADAM + "\n")
    # Nothing listens there: a clear error at once, no Ray process started, no traffic but loopback.
    dead = subprocess.run([AUTORESEARCH, "run", "--executor", "ray", "--ray-address", f"127.0.0.1:{free_port()}",
                           "--proposals-file", str(props), "--runs-dir", str(tmp_path / "runs")],
                          capture_output=True, text=True, timeout=60, env=env)
    assert dead.returncode == 2 and "no Ray cluster answers" in dead.stderr and "Traceback" not in dead.stderr

    port = free_port()
    ray_bin = os.path.join(os.path.dirname(PYTHON), "ray")
    # A private Ray temp dir (short: Ray's socket paths must fit 107 bytes): the head's session files
    # and its ray_current_cluster pointer must not outlive this test in the machine's /tmp/ray.
    ray_tmp = tempfile.mkdtemp(prefix="rayt", dir="/tmp")
    env["RAY_TMPDIR"] = ray_tmp
    head = subprocess.Popen([ray_bin, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}",
                             f"--temp-dir={ray_tmp}", "--num-cpus=1", "--include-dashboard=false",
                             "--disable-usage-stats"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=tmp_path,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline and head.poll() is None, "ray head did not start"
                time.sleep(1)
        out = subprocess.run([PYTHON, "-c", JOIN, f"127.0.0.1:{port}"], capture_output=True, text=True,
                             timeout=300, env=env, cwd=tmp_path)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
        status, seed, detail = json.loads(_results(out.stdout)[-1])
        assert status == "ok" and seed == 3 and detail.startswith("pid ")
        # The wrong token: a clear error naming the fix, not Ray's traceback.
        wrong = subprocess.run([AUTORESEARCH, "run", "--executor", "ray", "--ray-address", f"127.0.0.1:{port}",
                                "--proposals-file", str(props), "--runs-dir", str(tmp_path / "runs2")],
                               capture_output=True, text=True, timeout=300,
                               env=dict(env, RAY_AUTH_TOKEN=os.urandom(16).hex()))
        assert wrong.returncode == 2, wrong.stderr[-3000:]
        assert "could not join the Ray cluster" in wrong.stderr and "Traceback" not in wrong.stderr
    finally:
        # SIGTERM makes `ray start --block` shut down gracefully, which took 33 s here; this cluster
        # holds nothing to save, so its processes are killed: the head's group, then anything whose
        # command line names its private temp dir (raylet, gcs_server, workers, wherever they went).
        os.killpg(head.pid, signal.SIGKILL)
        head.wait(timeout=60)
        deadline = time.monotonic() + 30
        while left := _processes_naming(ray_tmp):
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            assert time.monotonic() < deadline, f"Ray processes outlived the test: {left}"
            time.sleep(0.2)
        shutil.rmtree(ray_tmp, ignore_errors=True)


def _processes_naming(text: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if text.encode() in cmdline:
                found.append(int(entry))
    return found
