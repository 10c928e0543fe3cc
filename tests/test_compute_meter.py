"""The harness's compute count (compute_meter.ComputeMeter) counts the examples that train the model's
weights however the training is spelt: through the model, around it with torch functions on its
weights (``F.linear(x, W)``, ``x @ W.t()``, a broadcast product), on copies of them, or inside a
forward that runs a batch of its own. The budget check reads these counts, so an extra loop in any
of these spellings is over the budget (tests/adversarial runs them through the real gate).

The meter installs global torch hooks and a function mode, so every case runs in a fresh
interpreter (one for all cases), never in the test process."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from conftest import REPO_ROOT

HARNESS = REPO_ROOT / "autoresearch" / "harnesses" / "torch-classifier"

PRELUDE = """
import json, sys
import torch, torch.nn as nn, torch.nn.functional as F
sys.path.insert(0, HARNESS)
import compute_meter
torch.manual_seed(0)
x = torch.randn(100, 64)
y = torch.randint(0, 10, (100,))
results = {}

def case(name):
    def run(body):
        meter = compute_meter.ComputeMeter()
        meter.example_shape = (64,)  # as the harness sets it: one input example's shape
        meter.install()
        global CURRENT
        CURRENT = meter
        net = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
        body(net)
        intact = meter.stop()
        counts = meter.as_dict()
        with torch.no_grad():  # after stop() the function-level count is off (the harness's own code)
            F.linear(x, net[0].weight)
        after = meter.as_dict()
        results[name] = dict(counts, intact=intact, same_after_stop=after == counts)
    return run
"""

CASES = """
@case("model called, 3 passes")
def _(net):
    opt = torch.optim.Adam(net.parameters())
    for _ in range(3):
        loss = F.cross_entropy(net(x), y); opt.zero_grad(); loss.backward(); opt.step()

@case("F.linear on the model's weights")
def _(net):
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    l1, l2 = net[0], net[2]
    for _ in range(3):
        out = F.linear(F.relu(F.linear(x, l1.weight, l1.bias)), l2.weight, l2.bias)
        loss = F.cross_entropy(out, y); opt.zero_grad(); loss.backward(); opt.step()

@case("x @ W.t() with autograd.grad")
def _(net):
    w1, b1, w2, b2 = net.parameters()
    for _ in range(3):
        out = F.relu(x @ w1.t() + b1) @ w2.T + b2
        grads = torch.autograd.grad(F.cross_entropy(out, y), [w1, b1, w2, b2])
        with torch.no_grad():
            for p, g in zip((w1, b1, w2, b2), grads):
                p -= 0.1 * g

@case("a broadcast product instead of a matmul")
def _(net):
    w1, b1, w2, b2 = net.parameters()
    for _ in range(3):
        h = F.relu((x.unsqueeze(-1) * w1.t()).sum(1) + b1)
        F.cross_entropy((h.unsqueeze(-1) * w2.t()).sum(1) + b2, y).backward()

@case("detached copies trained, copied back")
def _(net):
    ws = [p.detach().clone().requires_grad_() for p in net.parameters()]
    for _ in range(3):
        F.cross_entropy(F.linear(F.relu(F.linear(x, ws[0], ws[1])), ws[2], ws[3]), y).backward()
    with torch.no_grad():
        for p, w in zip(net.parameters(), ws):
            p.copy_(w)

@case("p.data with gradients off")
def _(net):
    ws = [p.data for p in net.parameters()]
    with torch.no_grad():
        for _ in range(3):
            F.relu(x @ ws[0].T + ws[1]) @ ws[2].T + ws[3]

@case("torch.func.grad over functional_call")
def _(net):
    from torch.func import functional_call, grad
    params = {k: v.detach() for k, v in net.named_parameters()}
    for _ in range(3):
        grad(lambda p: F.cross_entropy(functional_call(net, p, (x,)), y))(params)

@case("a forward that also runs a stored batch")
def _(net):
    class Stash(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = net
            self.big = x.repeat(4, 1)
        def forward(self, v):
            self.extra = self.inner(self.big)
            return self.inner(v)
    Stash()(x[:10]).sum().backward()

@case("a forward that runs a stored batch in batch-sized pieces")
def _(net):
    class Stash(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = net
        def forward(self, v):
            for i in range(4):
                F.linear(x, self.inner[0].weight, self.inner[0].bias)
            return self.inner(v)
    Stash()(x[:10]).sum().backward()

@case("attention heads as slices of one weight")
def _(net):
    class Heads(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(64, 64) / 8)
        def forward(self, v):
            return torch.cat([F.linear(v, self.w[h * 16:(h + 1) * 16]) for h in range(4)], dim=1)
    heads = Heads()
    for _ in range(3):
        heads(x).sum().backward()

@case("inference under inference_mode")
def _(net):
    with torch.inference_mode():
        for _ in range(3):
            net(x)

@case("the model called on the batch behind a singleton dimension")
def _(net):
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    for _ in range(3):
        loss = F.cross_entropy(net(x.unsqueeze(0)).squeeze(0), y); opt.zero_grad(); loss.backward(); opt.step()

@case("F.linear on the batch viewed as [4, 25, 64]")
def _(net):
    for _ in range(3):
        h = F.relu(F.linear(x.view(4, 25, 64), net[0].weight, net[0].bias))
        F.cross_entropy(F.linear(h, net[2].weight, net[2].bias).reshape(100, 10), y).backward()

@case("noise-perturbed copies of the weights")
def _(net):
    for _ in range(3):
        w1, b1, w2, b2 = [p + 1e-3 * torch.randn(p.shape) for p in net.parameters()]
        F.cross_entropy(F.linear(F.relu(F.linear(x, w1, b1)), w2, b2), y).backward()

@case("a compiled model (aot_eager)")
def _(net):
    compiled = torch.compile(net, backend="aot_eager")
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    for _ in range(3):
        loss = F.cross_entropy(compiled(x), y); opt.zero_grad(); loss.backward(); opt.step()

@case("checkpointing")
def _(net):
    from torch.utils.checkpoint import checkpoint
    for _ in range(3):
        F.cross_entropy(checkpoint(net, x, use_reentrant=False), y).backward()

@case("training steps inside a hook of a one-element backward")
def _(net):
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    def hook(grad):
        with torch.enable_grad():
            for _ in range(3):
                loss = F.cross_entropy(net(x), y); opt.zero_grad(); loss.backward(); opt.step()
        return grad
    carrier = torch.zeros((), requires_grad=True)
    carrier.register_hook(hook)
    (carrier * 1.0).backward()

@case("gradients by forward mode (jacfwd), 3 steps")
def _(net):
    from torch.func import functional_call, jacfwd
    params = {k: v.detach() for k, v in net.named_parameters()}
    for _ in range(3):
        jacfwd(lambda p: F.cross_entropy(functional_call(net, p, (x,)), y))(params)

@case("a forward-mode dual level, 3 steps")
def _(net):
    import torch.autograd.forward_ad as fwAD
    for _ in range(3):
        with fwAD.dual_level():
            w = fwAD.make_dual(net[0].weight.detach(), torch.randn_like(net[0].weight))
            fwAD.unpack_dual(F.linear(x, w)).tangent

@case("forward mode in the predict phase")
def _(net):
    from torch.func import jvp
    CURRENT.forbid_gradients = True  # as run_predict sets it
    try:
        jvp(lambda w: F.linear(x, w), (net[0].weight.detach(),), (torch.ones_like(net[0].weight),))
        results["forward mode in the predict phase: refused"] = False
    except RuntimeError as exc:
        results["forward mode in the predict phase: refused"] = "inference only" in str(exc)
    finally:
        CURRENT.forbid_gradients = False  # every meter installed here stays hooked in for the cases after

@case("F.linear in a thread of its own")
def _(net):
    import threading
    def more():
        for _ in range(3):
            F.cross_entropy(F.linear(F.relu(F.linear(x, net[0].weight, net[0].bias)), net[2].weight, net[2].bias),
                            y).backward()
    t = threading.Thread(target=more)
    t.start()
    t.join()

@case("the function mode popped")
def _(net):
    getattr(torch._C, "_pop_torch_" + "function_stack")()
    for _ in range(3):
        F.cross_entropy(F.linear(F.relu(F.linear(x, net[0].weight)), net[2].weight), y).backward()

print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def counts() -> dict:
    script = f"HARNESS = {str(HARNESS)!r}\n" + textwrap.dedent(PRELUDE) + textwrap.dedent(CASES)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", [
    "model called, 3 passes",
    "F.linear on the model's weights",
    "x @ W.t() with autograd.grad",
    "a broadcast product instead of a matmul",
    "detached copies trained, copied back",
    "torch.func.grad over functional_call",
    "attention heads as slices of one weight",
    "F.linear in a thread of its own",
    "the model called on the batch behind a singleton dimension",
    "F.linear on the batch viewed as [4, 25, 64]",
    "noise-perturbed copies of the weights",
    "a compiled model (aot_eager)",
])
def test_three_passes_of_100_count_300_however_spelt(counts, name):
    got = counts[name]
    assert (got["train_examples"], got["other_examples"]) == (300, 0), got
    assert got["intact"] and got["same_after_stop"], got


def test_examples_with_gradients_off_count_as_other(counts):
    for name in ("p.data with gradients off", "inference under inference_mode"):
        got = counts[name]
        assert (got["train_examples"], got["other_examples"]) == (0, 300), (name, got)


@pytest.mark.parametrize("name", ["a forward that also runs a stored batch",
                                  "a forward that runs a stored batch in batch-sized pieces"])
def test_a_forward_that_runs_a_batch_of_its_own_counts_it(counts, name):
    # the call's own 10 rows, and the 400 its weights saw besides
    assert counts[name]["train_examples"] == 410, counts[name]


def test_the_backward_and_optimizer_counts_are_kept(counts):
    got = counts["model called, 3 passes"]
    assert (got["forward_passes"], got["backward_passes"], got["optimizer_steps"]) == (3, 3, 3)


def test_every_gradient_computation_counts(counts):
    """The budget's step limit reads backward_passes: a backward started in another backward's hook
    counts (it trained: 3 steps inside a one-element carrier were 1 before), and so does each
    forward-mode gradient (jacfwd, a dual level), which never reaches autograd's engine.
    Checkpointing (non-reentrant) stays one per step."""
    assert counts["checkpointing"]["backward_passes"] == 3, counts["checkpointing"]
    assert counts["training steps inside a hook of a one-element backward"]["backward_passes"] == 4
    assert counts["gradients by forward mode (jacfwd), 3 steps"]["backward_passes"] == 3
    assert counts["a forward-mode dual level, 3 steps"]["backward_passes"] == 3


def test_the_predict_phase_refuses_forward_mode_gradients(counts):
    assert counts["forward mode in the predict phase: refused"] is True


def test_a_function_mode_taken_off_the_stack_is_found(counts):
    assert counts["the function mode popped"]["intact"] is False
