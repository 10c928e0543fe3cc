# Evaluation harness: FROZEN (DO NOT CHANGE).
# The sandbox's *predict* phase (protocol 2, see runtime.py beside it), for every trained seed it is
# given: a fresh forked child per seed gets only that seed's checkpoint (copied into its private
# scratch by the kernel) and the inputs it must score, never labels. The inputs are the val and
# test examples mixed, in a secret per-run order, with slightly perturbed copies of the test
# examples; nothing here says which row is which. The child runs the model with gradients off
# (no backward pass, no optimizer step: the predict phase is inference, not a second training
# budget), once over every row and once more over a secret subset in another order and batch
# size: a model whose output for one example depends on the others (test-time adaptation) shows.
# It writes float32 logits (rows = inputs, columns = classes); trusted code outside the sandbox
# checks shape, size and values, un-mixes the rows and alone computes the metric. The phase starts
# while the seeds still train: the runner imports torch and warms up, then waits for its orders.
# Built-in `torch-classifier` harness (see run_train.py beside it).
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compute_meter  # noqa: E402  (the harness's own folder, read-only)
import runtime  # noqa: E402

sys.path.pop(0)


def predict_one(work: str, orders: dict, trial: dict, inputs_np) -> int:
    import numpy as np
    import torch

    config = orders["config"]
    torch.set_num_threads(int(config.get("threads", 1)))
    device = torch.device(config.get("device", "cpu"))
    runtime.seed_everything(trial["key"])
    runtime.install_seed_mixing(trial["key"])
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    meter = compute_meter.ComputeMeter()
    meter.forbid_gradients = True
    meter.example_shape = tuple(int(d) for d in inputs_np.shape[1:])
    meter.install()
    torch.set_grad_enabled(False)  # from here on, candidate code included

    state = torch.load(os.path.join(work, "checkpoint.pt"), map_location=device, weights_only=True)
    model_module = runtime.load_candidate(orders["repo"])
    x = torch.from_numpy(inputs_np)
    net = model_module.build_model(tuple(int(d) for d in x.shape[1:]), int(config["num_classes"])).to(device)
    net.load_state_dict(state)
    net.eval()
    batch = int(orders["batch"])
    started = time.perf_counter()

    def logits_of(rows, size):
        chunks = []
        with torch.inference_mode():
            for start in range(0, len(rows), size):
                part = x[rows[start:start + size]].to(device)
                chunks.append(net(part).float().cpu())
        return torch.cat(chunks).numpy().astype(np.float32) if chunks else np.zeros((0, 0), np.float32)

    every = np.arange(x.shape[0])
    logits = logits_of(every, batch)
    check = logits_of(np.asarray(orders["check_rows"], dtype=np.int64), int(orders["check_batch"]))
    seconds = time.perf_counter() - started
    if not meter.stop():
        return 4  # EXIT_TAMPERED (stop() said why)
    out = os.path.join(work, "out")
    np.save(os.path.join(out, "logits.npy"), logits, allow_pickle=False)
    np.save(os.path.join(out, "check.npy"), check, allow_pickle=False)
    with open(os.path.join(out, "report.json"), "w") as f:
        json.dump({"predict_seconds": seconds, "compute": meter.as_dict()}, f)
    print(f"predict_seconds: {seconds:.3f}")
    return 0


def main() -> int:
    import numpy as np
    import torch  # noqa: F401  (imported once here; every child inherits it)

    # Warm up before the orders come: the trusted side starts this phase while the seeds still
    # train, and hands over the orders (checkpoint offsets) once they have.
    runtime.warm_up(optimizers=False)  # inference only: no optimizer is built here
    orders = runtime.read_orders()
    if not orders["trials"]:  # a sandbox started ahead and never used: nothing to do
        return 0

    inputs_np = np.load(os.path.join(orders["data"], "inputs.npy"), allow_pickle=False)
    runner = runtime.Runner(orders)
    checkpoints = int(orders["checkpoints_fd"])
    for trial in orders["trials"]:
        # Only this seed's checkpoint enters the child's scratch, copied by the kernel.
        work_ready = runner.prepare(int(trial["slot"]), checkpoints, int(trial["offset"]), int(trial["size"]),
                                    "checkpoint.pt")
        seen, work = runner.run(int(trial["slot"]), predict_one, orders, trial, inputs_np, work=work_ready)
        runner.ship(seen, work, ["logits.npy", "check.npy", "report.json"])
        print(f"predict: slot {trial['slot']} done in {seen['seconds']:.2f}s (exit {seen['exit']}, "
              f"signal {seen['signal']}, timed out {seen['timed_out']})", flush=True)
    return 0


if __name__ == "__main__":
    runtime.exit_now(main())
