# Evaluation harness: FROZEN (DO NOT CHANGE).
# The sandbox's *predict* phase: a fresh process that reads the checkpoint read-only and sees the
# inputs of the val and test splits, never their labels. It writes one float32 array of class
# logits per split (rows = examples, columns = classes). Trusted code outside the sandbox checks
# the shape, size and values, and alone computes the metric.
# Built-in `torch-classifier` harness (see run_train.py beside it).
import argparse
import json
import os
import sys


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repo", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--config", required=True)
    args = parser.parse_args()
    config = json.loads(args.config)

    import numpy as np
    import torch

    torch.set_num_threads(int(config.get("threads", 1)))
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    device = torch.device(config.get("device", "cpu"))
    sys.path.insert(0, args.repo)
    import model as model_module  # editable

    state = torch.load(os.path.join(args.checkpoint, "checkpoint.pt"), map_location=device, weights_only=True)
    for split in config["splits"]:
        x = torch.from_numpy(np.load(os.path.join(args.data, f"{split}_x.npy"), allow_pickle=False)).to(device)
        net = model_module.build_model(tuple(int(d) for d in x.shape[1:]), int(config["num_classes"])).to(device)
        net.load_state_dict(state)
        net.eval()
        chunks = []
        with torch.no_grad():
            for start in range(0, x.shape[0], 500):
                chunks.append(net(x[start:start + 500]).float().cpu())
        logits = torch.cat(chunks).numpy().astype(np.float32)
        np.save(os.path.join(args.out, f"{split}.npy"), logits, allow_pickle=False)
    print("predict: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
