"""The agent's static pre-check catches a change that would crash on an undefined name, so the
model gets a repair round instead of a wasted training run."""

from autoresearch.agent.loop import undefined_names


def test_undefined_name_after_replacing_an_assignment_is_found():
    src = ("import torch\n\ndef build_optimizer(params, *, steps_per_epoch, epochs):\n"
           "    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=3)\n"
           "    return optimizer, scheduler\n")
    found = undefined_names(src, "optim.py")
    assert found and all("optimizer" in f for f in found)


def test_clean_module_has_no_undefined_names():
    src = ("import torch\n\ndef build_optimizer(params, *, steps_per_epoch, epochs):\n"
           "    optimizer = torch.optim.Adam(params, lr=1e-3)\n    return optimizer, None\n")
    assert undefined_names(src, "optim.py") == []


def test_a_missing_module_import_is_named_in_the_repair_message():
    from autoresearch.agent.checks import static_problem

    old = {"optim.py": "import torch\n\ndef f():\n    return torch.zeros(1)\n"}
    new = {"optim.py": "import torch\n\ndef f():\n    return torch.zeros(1) * math.pi\n"}
    problem = static_problem(old, new)
    assert "'math' (line 4)" in problem and "Add at the top of optim.py: import math." in problem
