"""What a diff does, from the code: real edits of the digits-mlp template (pure functions, no training)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autoresearch.describe import CONCEPTS, describe_change, title_claims_unsupported
from conftest import REPO_ROOT

BASE = {p.name: p.read_text() for p in (REPO_ROOT / "baselines" / "digits-mlp" / "repo").glob("*.py")}
SGD = "optimizer = torch.optim.SGD(params, lr=0.01)"
NO_SCHEDULER = "scheduler = None  # e.g. torch.optim.lr_scheduler.<Name>(optimizer, ...)"
COSINE = "scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps_per_epoch * epochs)"


def edit(**changes: list[tuple[str, str]]) -> dict[str, str]:
    """The template with each (old, new) text replaced once in the named file."""
    new = dict(BASE)
    for path, pairs in changes.items():
        for old, replacement in pairs:
            assert new[path].count(old) == 1, (path, old)
            new[path] = new[path].replace(old, replacement)
    return new


LR = edit(**{"optim.py": [("lr=0.01", "lr=0.05")]})
ADAM = edit(**{"optim.py": [(SGD, "optimizer = torch.optim.Adam(params, lr=1e-3)")]})
MOMENTUM = edit(**{"optim.py": [("lr=0.01)", "lr=0.01, momentum=0.9, nesterov=True)")]})
SCHEDULER = edit(**{"optim.py": [(NO_SCHEDULER, COSINE)]})
DROPOUT = edit(**{"model.py": [("nn.ReLU(),\n", "nn.ReLU(),\n        nn.Dropout(0.2),\n")]})
COMMENT = edit(**{"optim.py": [("# e.g.", "# momentum 0.9 and a warm-up would go here, e.g.")]})
BROKEN = edit(**{"train.py": [("            loss.backward()\n", "          loss.backward()\n")]})


def test_sgd_lr_change():
    assert describe_change(BASE, LR) == ["optim.py: SGD lr 0.01 -> 0.05"]


def test_sgd_to_adam_is_a_replaced_call_with_its_arguments():
    assert describe_change(BASE, ADAM) == ["optim.py: torch.optim.SGD -> torch.optim.Adam",
                                           "optim.py: Adam lr 0.01 -> 1e-3"]  # values as written


def test_arguments_added():
    assert describe_change(BASE, MOMENTUM) == ["optim.py: SGD momentum=0.9 added", "optim.py: SGD nesterov=True added"]


def test_adding_a_scheduler():
    assert describe_change(BASE, SCHEDULER) == ["optim.py: call added: torch.optim.lr_scheduler.CosineAnnealingLR"]


def test_adding_dropout_to_the_sequential():
    # The layers after it shift position; only the new call is a fact.
    assert describe_change(BASE, DROPOUT) == ["model.py: call added: nn.Dropout"]


def test_comment_only_and_docstring_only_changes():
    assert describe_change(BASE, COMMENT) == ["optim.py: comments/whitespace only"]
    docstring = edit(**{"optim.py": [("Baseline: plain", "Baseline: simple")]})
    assert describe_change(BASE, docstring) == ["optim.py: docstrings/comments only"]


def test_a_file_that_does_not_parse_falls_back_to_lines():
    (line,) = describe_change(BASE, BROKEN)
    assert line.startswith("train.py: does not parse (unindent does not match") and "line 25" in line
    assert line.endswith("; 1 line(s) added, 1 removed")


def test_calls_replaced_added_and_removed_in_a_training_loop():
    # The 1.5B model's edit from the issue: loss.backward() gone, scheduler.step() in its place.
    swapped = edit(**{"train.py": [("            loss.backward()\n", "            scheduler.step()\n")]})
    assert describe_change(BASE, swapped) == ["train.py: loss.backward -> scheduler.step"]
    dropped = edit(**{"train.py": [("            loss.backward()\n", "")]})
    assert describe_change(BASE, dropped) == ["train.py: call removed: loss.backward"]


def test_layer_size_extra_layers_and_label_smoothing():
    wider = edit(**{"model.py": [("nn.Linear(in_features, 64)", "nn.Linear(in_features, 128)"),
                                 ("nn.Linear(64, num_classes)", "nn.Linear(128, num_classes)")]})
    assert describe_change(BASE, wider) == ["model.py: Linear arg2 64 -> 128", "model.py: Linear arg1 64 -> 128"]
    deeper = edit(**{"model.py": [("nn.Linear(64, num_classes)", "nn.Linear(64, 64),\n        nn.ReLU(),\n"
                                                                  "        nn.Linear(64, num_classes)")]})
    assert describe_change(BASE, deeper) == ["model.py: call added: nn.Linear", "model.py: call added: nn.ReLU"]
    smooth = edit(**{"train.py": [("nn.CrossEntropyLoss()", "nn.CrossEntropyLoss(label_smoothing=0.1)")]})
    assert describe_change(BASE, smooth) == ["train.py: CrossEntropyLoss label_smoothing=0.1 added"]


def test_assigned_constants_and_imports():
    src = "import torch\n\nHIDDEN = 64\nNAME = 'mlp'\n\ndef f():\n    return torch.zeros(HIDDEN)\n"
    new = src.replace("64", "256").replace("'mlp'", "'wide'").replace("import torch\n", "import math\nimport torch\n")
    assert describe_change({"m.py": src}, {"m.py": new}) == [
        "m.py: import added: import math", "m.py: HIDDEN 64 -> 256", "m.py: NAME 'mlp' -> 'wide'"]


def test_definitions_added_removed_and_changed_without_a_finer_fact():
    added = edit(**{"optim.py": [("import torch\n", "import torch\n\n\ndef warmup(step):\n    return min(1.0, step / 100)\n")]})
    assert describe_change(BASE, added) == ["optim.py: function warmup added"]
    assert describe_change(added, BASE) == ["optim.py: function warmup removed"]
    # An operator inside a loop: no call, argument or assignment changed, so the function is named.
    loop = edit(**{"train.py": [("for _epoch in range(epochs):", "for _epoch in range(epochs):\n        if _epoch > 3:\n"
                                "            break")]})
    assert describe_change(BASE, loop) == ["train.py: function fit changed"]


def test_files_in_path_order_new_deleted_and_non_python_files():
    both = edit(**{"train.py": [("nn.CrossEntropyLoss()", "nn.CrossEntropyLoss(label_smoothing=0.1)")],
                   "model.py": [("nn.ReLU(),\n", "nn.ReLU(),\n        nn.Dropout(0.2),\n")]})
    assert describe_change(BASE, both) == ["model.py: call added: nn.Dropout",
                                           "train.py: CrossEntropyLoss label_smoothing=0.1 added"]
    assert describe_change(BASE, both) == describe_change(dict(reversed(BASE.items())), both)  # stable
    grown = BASE | {"aug.py": "import torch\n\ndef noisy(x):\n    return x + 0.1 * torch.randn_like(x)\n",
                    "notes.txt": "a\nb\n"}
    assert describe_change(BASE, grown) == ["aug.py: new file (4 lines)", "notes.txt: new file (2 lines)"]
    assert describe_change(grown, BASE) == ["aug.py: deleted (4 lines)", "notes.txt: deleted (2 lines)"]
    assert describe_change({"notes.txt": "a\nb\n"}, {"notes.txt": "a\nc\nd\n"}) == \
        ["notes.txt: 2 line(s) added, 1 removed"]
    assert describe_change(BASE, dict(BASE)) == ["no change"]


def test_the_same_fact_twice_is_one_line_with_a_count():
    two = {"m.py": "def a():\n    return f(1)\n\ndef b():\n    return f(1)\n"}
    assert describe_change(two, {"m.py": two["m.py"].replace("f(1)", "f(2)")}) == ["m.py: f arg1 1 -> 2 (x2)"]


# --------------------------------------------------------------------------- claims


def test_the_issue_example_is_flagged_for_warm_up_and_decay():
    flags = title_claims_unsupported("Adaptive LR Optimizer with Warm-up and Learning Rate Decay",
                                     "A larger learning rate trains faster.", BASE, LR)
    assert len(flags) == 1
    assert '"Warm-up"' in flags[0] and '"Rate Decay"' in flags[0] and "learning-rate schedule" in flags[0]
    assert flags[0].startswith("the title names")


def test_claims_the_diff_supports_are_not_flagged():
    assert title_claims_unsupported("Cosine annealing schedule", "decay the learning rate", BASE, SCHEDULER) == []
    assert title_claims_unsupported("Switch to Adam", "adaptive steps", BASE, ADAM) == []
    assert title_claims_unsupported("SGD with Nesterov momentum", "", BASE, MOMENTUM) == []
    assert title_claims_unsupported("Add dropout", "dropout regularises the MLP", BASE, DROPOUT) == []
    assert title_claims_unsupported("Higher learning rate", "faster progress", BASE, LR) == []


def test_a_hand_written_warm_up_counts_as_a_schedule():
    by_hand = edit(**{"optim.py": [("    return optimizer, scheduler", "    for group in optimizer.param_groups:\n"
                                    "        group['lr'] = 0.01 * min(1.0, 1 / epochs)\n    return optimizer, scheduler")]})
    assert title_claims_unsupported("Linear warm-up", "", BASE, by_hand) == []


def test_an_lr_constant_is_not_a_schedule_and_an_lr_change_is_not_an_optimizer_change():
    flags = title_claims_unsupported("Momentum", "cosine", BASE, LR)
    assert [f.split(" (")[1].split(")")[0] for f in flags] == ["a learning-rate schedule", "an optimizer change"]
    assert flags[0].startswith('the hypothesis names "cosine"') and flags[1].startswith('the title names "Momentum"')


def test_comments_are_no_evidence():
    flags = title_claims_unsupported("Momentum and warm-up", "", BASE, COMMENT)
    assert len(flags) == 2


def test_both_places_and_weight_decay_is_not_a_schedule():
    flags = title_claims_unsupported("Weight decay", "weight decay shrinks the weights", BASE, LR)
    assert flags == ['the title and hypothesis name "Weight decay" (weight decay), but the diff '
                     'changes no weight_decay argument, AdamW or L2 term']
    adamw = edit(**{"optim.py": [(SGD, "optimizer = torch.optim.AdamW(params, lr=1e-3)")]})
    assert title_claims_unsupported("AdamW with weight decay", "the loss decays faster", BASE, adamw) == []


@pytest.mark.parametrize("title,diff", [
    ("Gaussian noise augmentation", edit(**{"train.py": [("model(x[idx])", "model(x[idx] + 0.1 * torch.randn_like(x[idx]))")]})),
    ("Label smoothing", edit(**{"train.py": [("nn.CrossEntropyLoss()", "nn.CrossEntropyLoss(label_smoothing=0.1)")]})),
    ("Batch normalization", edit(**{"model.py": [("nn.ReLU(),\n", "nn.BatchNorm1d(64),\n        nn.ReLU(),\n")]})),
    ("Wider hidden layer", edit(**{"model.py": [("nn.Linear(in_features, 64)", "nn.Linear(in_features, 128)"),
                                                ("nn.Linear(64, num_classes)", "nn.Linear(128, num_classes)")]})),
    ("Deeper network", edit(**{"model.py": [("nn.Linear(64, num_classes)", "nn.Linear(64, 64),\n        nn.ReLU(),\n"
                                                                             "        nn.Linear(64, num_classes)")]})),
])
def test_each_concept_is_supported_by_its_code_and_flagged_without_it(title, diff):
    assert title_claims_unsupported(title, "", BASE, diff) == []
    assert len(title_claims_unsupported(title, "", BASE, LR)) == 1


def test_a_file_that_does_not_parse_is_searched_line_by_line():
    broken = edit(**{"optim.py": [(SGD, "optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9")]})
    assert describe_change(BASE, broken)[0].startswith("optim.py: does not parse")
    assert title_claims_unsupported("Momentum", "", BASE, broken) == []
    assert len(title_claims_unsupported("Dropout", "", BASE, broken)) == 1


def test_every_concept_has_a_distinct_name():
    assert len({c.name for c in CONCEPTS}) == len(CONCEPTS)


def test_code_nested_deeper_than_the_recursion_limit_falls_back_to_lines():
    deep = "x = " + "+".join(["1"] * 1500) + "\n"  # parses, but ast.dump cannot follow it
    assert describe_change({"a.py": "x = 0\n"}, {"a.py": deep}) == \
        ["a.py: too deeply nested to compare; 1 line(s) added, 1 removed"]
    assert title_claims_unsupported("Dropout", "", {"a.py": "x = 0\n"}, {"a.py": deep})


# Lines a model might write into the template: real code, broken code and noise.
LINES = st.sampled_from(["    optimizer = torch.optim.Adam(params, lr=3e-4)", "x = (", "    return x", "def f(:",
                         "        nn.Dropout(p=0.5),", "scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 5)",
                         "import math", "class Net(nn.Module):", "    pass", "lr = lr * 0.5", "# comment", ""]) | st.text(max_size=30)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=st.sampled_from(sorted(BASE)), at=st.integers(0, 40), lines=st.lists(LINES, max_size=4),
       drop=st.integers(0, 3), title=st.text(max_size=60))
def test_any_edit_is_described_deterministically_without_raising(path, at, lines, drop, title):
    old_lines = BASE[path].splitlines()
    new = BASE | {path: "\n".join(old_lines[:at] + lines + old_lines[at + drop:]) + "\n"}
    described = describe_change(BASE, new)
    assert described == describe_change(dict(BASE), dict(new)) and described
    assert all(isinstance(line, str) and "\n" not in line for line in described)
    assert isinstance(title_claims_unsupported(title, title, BASE, new), list)


def test_an_argument_only_the_replaced_call_had_is_the_new_calls_default():
    """SGD(lr=0.01) -> Adam(): Adam never had lr=0.01; it runs at its own default."""
    old = {"optim.py": "import torch\n\n\ndef f(p):\n    return torch.optim.SGD(p, lr=0.01)\n"}
    swapped = {"optim.py": old["optim.py"].replace("SGD(p, lr=0.01)", "Adam(p)")}
    assert describe_change(old, swapped) == ["optim.py: torch.optim.SGD -> torch.optim.Adam",
                                             "optim.py: Adam lr left at its default (SGD had lr=0.01)"]
    same_class = {"optim.py": old["optim.py"].replace("SGD(p, lr=0.01)", "SGD(p)")}
    assert describe_change(old, same_class) == ["optim.py: SGD lr=0.01 removed"]
