# Evaluation harness: FROZEN (DO NOT CHANGE).
# Proposals may edit only the files listed as `editable` in spec.toml. This file runs inside the
# sandbox's *train* phase: it fixes the seed and the determinism settings, loads the train split
# (the only data this phase can see), hands the editable code the model, the data and the fixed
# budget, then checks the result and writes the checkpoint. The score is computed later, outside
# the sandbox, by trusted code. The same harness serves image (uint8 [N, C, H, W]), token-id
# ([N, L]) and feature-vector ([N, F]) inputs: the editable model gets the input shape and does its
# own normalisation.
# Shipped as autoresearch's built-in `torch-classifier` harness (autoresearch/harnesses/), shared by
# every benchmark whose spec.toml says `harness = "torch-classifier"`; `init-benchmark` copies it
# into a new benchmark's own harness/.
import argparse
import hashlib
import json
import math
import os
import random
import sys
import time
import warnings

EXIT_NONFINITE = 3
EXIT_TAMPERED = 4


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repo", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--config", required=True, help="JSON: epochs, batch_size, threads, device, num_classes")
    args = parser.parse_args()
    config = json.loads(args.config)

    import numpy as np
    import torch

    torch.set_num_threads(int(config.get("threads", 1)))
    device = torch.device(config.get("device", "cpu"))
    # Per-seed determinism: every generator seeded, deterministic kernels requested. Ops without a
    # deterministic kernel only warn; the warnings are counted and reported (not bit-reproducible then).
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    # Bound before any candidate code is imported, so that patching torch.initial_seed (or the
    # torch.random module) later cannot hide a reseed: this reads the C generator itself.
    default_generator = torch.default_generator
    generator_seed = torch._C.Generator.initial_seed
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True, warn_only=True)

    sys.path.insert(0, args.repo)
    import model as model_module  # editable
    import train as train_module  # editable

    x = torch.from_numpy(np.load(os.path.join(args.data, "train_x.npy"), allow_pickle=False)).to(device)
    y = torch.from_numpy(np.load(os.path.join(args.data, "train_y.npy"), allow_pickle=False)).to(device)
    net = model_module.build_model(tuple(int(d) for d in x.shape[1:]), int(config["num_classes"])).to(device)
    generator = torch.Generator().manual_seed(args.seed)

    started = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        info = train_module.fit(net, x, y, epochs=int(config["epochs"]), batch_size=int(config["batch_size"]),
                                generator=generator, device=device) or {}
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    nondeterministic = sorted({str(w.message).split(" does not have a deterministic")[0][:120] for w in caught
                               if "deterministic" in str(w.message)})

    # The seed is part of the experiment's definition; code that reseeds the global generator
    # has changed the experiment, not improved the method.
    if generator_seed(default_generator) != args.seed:
        print(f"harness: torch seed changed from {args.seed} to {generator_seed(default_generator)}", file=sys.stderr)
        return 4  # EXIT_TAMPERED, as a literal: candidate code can rebind this module's globals

    final_loss = info.get("final_loss") if isinstance(info, dict) else None
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    finite = all(torch.isfinite(t).all().item() for t in state.values() if t.is_floating_point())
    if not finite or (final_loss is not None and not math.isfinite(float(final_loss))):
        print(f"harness: non-finite training result (final_loss={final_loss}, finite weights={finite})", file=sys.stderr)
        return EXIT_NONFINITE

    digest = hashlib.sha256()
    for k in sorted(state):
        digest.update(k.encode() + b"\0" + state[k].contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    torch.save(state, os.path.join(args.out, "checkpoint.pt"))
    report = {
        "train_seconds": seconds,
        "final_loss": None if final_loss is None else float(final_loss),
        "device": str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
        "checkpoint_sha256": digest.hexdigest(),
        "determinism": {"deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
                        "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
                        "nondeterministic_ops": nondeterministic,
                        "bit_reproducible": not nondeterministic},
    }
    with open(os.path.join(args.out, "train_report.json"), "w") as f:
        json.dump(report, f)
    print(f"train_seconds: {seconds:.3f}")
    print(f"final_loss: {final_loss}")
    print(f"checkpoint_sha256: {report['checkpoint_sha256']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
