# Evaluation harness: FROZEN (DO NOT CHANGE).
# Proposals may edit only the files listed as `editable` in spec.toml. This file runs inside the
# sandbox's *train* phase: it fixes the seed, loads the train split (the only data this phase can
# see), hands the editable code the model, the data and the fixed budget, then checks the result
# and writes the checkpoint. The score is computed later, outside the sandbox, by trusted code.
import argparse
import json
import math
import os
import random
import sys
import time

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
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    # Bound before any candidate code is imported, so that patching torch.initial_seed (or the
    # torch.random module) later cannot hide a reseed: this reads the C generator itself.
    default_generator = torch.default_generator
    generator_seed = torch._C.Generator.initial_seed
    device = torch.device(config.get("device", "cpu"))

    sys.path.insert(0, args.repo)
    import model as model_module  # editable
    import train as train_module  # editable

    x = torch.from_numpy(np.load(os.path.join(args.data, "train_x.npy"), allow_pickle=False)).to(device)
    y = torch.from_numpy(np.load(os.path.join(args.data, "train_y.npy"), allow_pickle=False)).to(device)
    net = model_module.build_model(int(x.shape[1]), int(config["num_classes"])).to(device)
    generator = torch.Generator().manual_seed(args.seed)

    started = time.perf_counter()
    info = train_module.fit(net, x, y, epochs=int(config["epochs"]), batch_size=int(config["batch_size"]),
                            generator=generator, device=device) or {}
    seconds = time.perf_counter() - started

    # The seed is part of the experiment's definition; code that reseeds the global generator
    # has changed the experiment, not improved the method.
    if generator_seed(default_generator) != args.seed:
        print(f"harness: torch seed changed from {args.seed} to {generator_seed(default_generator)}", file=sys.stderr)
        return 4  # EXIT_TAMPERED, as a literal: candidate code can rebind this module's globals

    final_loss = info.get("final_loss") if isinstance(info, dict) else None
    state = net.state_dict()
    finite = all(torch.isfinite(t).all().item() for t in state.values() if t.is_floating_point())
    if not finite or (final_loss is not None and not math.isfinite(float(final_loss))):
        print(f"harness: non-finite training result (final_loss={final_loss}, finite weights={finite})", file=sys.stderr)
        return EXIT_NONFINITE

    torch.save({k: v.detach().cpu() for k, v in state.items()}, os.path.join(args.out, "checkpoint.pt"))
    with open(os.path.join(args.out, "train_report.json"), "w") as f:
        json.dump({"train_seconds": seconds, "final_loss": None if final_loss is None else float(final_loss)}, f)
    print(f"train_seconds: {seconds:.3f}")
    print(f"final_loss: {final_loss}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
