# Evaluation harness: FROZEN (DO NOT CHANGE).
# Proposals may edit only the files listed as `editable` in spec.toml. This file runs the sandbox's
# *train* phase for every seed it is given (protocol 2, see runtime.py beside it): it loads the
# train split (the only data this phase can see) and imports torch once, then, in a fresh forked
# child per seed, seeds every generator from the trial's secret key, imports the editable code,
# hands it the model, the data and the fixed budget, checks the result and writes the checkpoint.
# The score is computed later, outside the sandbox, by trusted code. The same harness serves image
# (uint8 [N, C, H, W]), token-id ([N, L]) and feature-vector ([N, F]) inputs: the editable model
# gets one example's shape and does its own normalisation.
# Shipped as autoresearch's built-in `torch-classifier` harness (autoresearch/harnesses/), shared by
# every benchmark whose spec.toml says `harness = "torch-classifier"`; `init-benchmark` copies it
# into a new benchmark's own harness/.
import hashlib
import json
import math
import os
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compute_meter  # noqa: E402  (the harness's own folder, read-only)
import runtime  # noqa: E402

sys.path.pop(0)  # candidate code must not import the harness's modules by name


def train_one(work: str, orders: dict, trial: dict, x_np, y_np) -> int:
    import torch

    config = orders["config"]
    key = trial["key"]
    torch.set_num_threads(int(config.get("threads", 1)))
    device = torch.device(config.get("device", "cpu"))
    # Per-seed determinism: every generator seeded from the trial's key, deterministic kernels
    # requested. Ops without a deterministic kernel only warn; the warnings are counted and reported.
    runtime.seed_everything(key)
    # Bound before any candidate code is imported, so that patching torch.initial_seed (or the
    # torch.random module) later cannot hide a reseed: this reads the C generator itself.
    default_generator = torch.default_generator
    generator_seed = torch._C.Generator.initial_seed
    expected_seed = generator_seed(default_generator)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True, warn_only=True)
    # The generator handed to `fit` is seeded with a derived value: it does not give the trial's
    # seed away (a table keyed by seed prepared in advance has nothing to match).
    generator = torch._C.Generator()
    generator.manual_seed(runtime.derive(key, "fit"))
    runtime.install_seed_mixing(key)

    holder = {}
    sketches = {}

    def first_training_forward():
        if "net" in holder:
            sketches["first_training_forward"] = runtime.weight_sketch(holder["net"], orders["sketch_key"])

    meter = compute_meter.ComputeMeter(on_first_training_forward=first_training_forward)
    meter.example_shape = tuple(int(d) for d in x_np.shape[1:])
    meter.install()

    model_module = runtime.load_candidate(orders["repo"])
    import train as train_module  # editable

    x = torch.from_numpy(x_np).to(device)
    y = torch.from_numpy(y_np).to(device)
    net = model_module.build_model(tuple(int(d) for d in x.shape[1:]), int(config["num_classes"])).to(device)
    holder["net"] = net
    sketches["init"] = runtime.weight_sketch(net, orders["sketch_key"])

    started = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        info = train_module.fit(net, x, y, epochs=int(config["epochs"]), batch_size=int(config["batch_size"]),
                                generator=generator, device=device) or {}
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    if not meter.stop():
        return 4  # EXIT_TAMPERED (stop() said why)
    nondeterministic = sorted({str(w.message).split(" does not have a deterministic")[0][:120] for w in caught
                               if "deterministic" in str(w.message)})

    # The seed is part of the experiment's definition; code that reseeds the global generator
    # has changed the experiment, not improved the method.
    if generator_seed(default_generator) != expected_seed:
        print("harness: the global torch generator was reseeded by candidate code", file=sys.stderr)
        return 4  # EXIT_TAMPERED, as a literal: candidate code can rebind this module's globals

    final_loss = info.get("final_loss") if isinstance(info, dict) else None
    try:
        final_loss = None if final_loss is None else float(final_loss)
    except (TypeError, ValueError):
        final_loss = float("nan")
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    finite = all(torch.isfinite(t).all().item() for t in state.values() if t.is_floating_point())
    if not finite or (final_loss is not None and not math.isfinite(final_loss)):
        print(f"harness: non-finite training result (final_loss={final_loss}, finite weights={finite})", file=sys.stderr)
        return runtime.EXIT_NONFINITE

    digest = hashlib.sha256()
    for k in sorted(state):
        digest.update(k.encode() + b"\0" + state[k].contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    out = os.path.join(work, "out")
    torch.save(state, os.path.join(out, "checkpoint.pt"))
    report = {
        "train_seconds": seconds,
        "final_loss": final_loss,
        "device": str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
        "checkpoint_sha256": digest.hexdigest(),
        "compute": meter.as_dict(),
        "sketch": sketches,
        "determinism": {"deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
                        "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
                        "nondeterministic_ops": nondeterministic,
                        "bit_reproducible": not nondeterministic},
    }
    with open(os.path.join(out, "report.json"), "w") as f:
        json.dump(report, f)
    print(f"train_seconds: {seconds:.3f}")
    print(f"final_loss: {final_loss}")
    print(f"checkpoint_sha256: {report['checkpoint_sha256']}")
    return 0


def main() -> int:
    import numpy as np
    import torch  # noqa: F401  (imported once here; every child inherits it)

    # Before the orders: the sandbox may be started ahead of its work (the trusted side stages the
    # code version into its read-only repo mount later) and warms up while it waits.
    runtime.warm_up()
    orders = runtime.read_orders()
    if not orders["trials"]:  # a sandbox started ahead and never used: nothing to do
        return 0

    x_np = np.load(os.path.join(orders["data"], "train_x.npy"), allow_pickle=False)
    y_np = np.load(os.path.join(orders["data"], "train_y.npy"), allow_pickle=False)
    runner = runtime.Runner(orders)
    for trial in orders["trials"]:
        seen, work = runner.run(int(trial["slot"]), train_one, orders, trial, x_np, y_np)
        runner.ship(seen, work, ["checkpoint.pt", "report.json"])
        print(f"train: slot {trial['slot']} done in {seen['seconds']:.2f}s (exit {seen['exit']}, "
              f"signal {seen['signal']}, timed out {seen['timed_out']})", flush=True)
    return 0


if __name__ == "__main__":
    runtime.exit_now(main())
