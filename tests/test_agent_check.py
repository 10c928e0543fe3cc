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


def test_a_whole_file_missing_only_common_imports_gets_them_added():
    from autoresearch.agent.checks import add_missing_imports
    from autoresearch.agent.proposal import Edit, Proposal

    src = '"""Doc."""\nimport torch\n\ndef f(p):\n    return torch.optim.Adam(p, lr=math.sqrt(1e-6))\n'
    fixed = add_missing_imports(Proposal(title="t", hypothesis="", edits=(Edit("optim.py", "", src),)))
    assert fixed.edits[0].replace == '"""Doc."""\nimport math\nimport torch\n\ndef f(p):\n' \
        '    return torch.optim.Adam(p, lr=math.sqrt(1e-6))\n'
    # Another undefined name as well: left to the model (a repair round says what is missing).
    other = src.replace("lr=", "betas=betas, lr=")
    same = Proposal(title="t", hypothesis="", edits=(Edit("optim.py", "", other),))
    assert add_missing_imports(same) is same
