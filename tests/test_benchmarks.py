"""The benchmark scripts stay in step with the package: every name they import from distalign
exists, the training-loop functions they wrap to time still exist with the arguments the
wrappers read, and the token counts of the reward-model workload are the pair rendering's.
(The scripts themselves need TRL and run by ``make bench``, not here.)"""

from __future__ import annotations

import ast
import importlib
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _distalign_imports() -> list[tuple[str, str, str]]:
    """(script, module, name) of every ``from distalign... import name`` in the scripts,
    inside functions included."""
    out = []
    for script in sorted(BENCHMARKS.glob("*.py")):
        for node in ast.walk(ast.parse(script.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("distalign"):
                out += [(script.name, node.module, alias.name) for alias in node.names]
    return out


def test_the_scripts_import_from_distalign():
    assert len(_distalign_imports()) >= 5  # the walk finds the imports inside functions


@pytest.mark.parametrize(("script", "module", "name"), _distalign_imports())
def test_every_name_a_benchmark_imports_exists(script, module, name):
    assert hasattr(importlib.import_module(module), name), f"{script}: {module}.{name}"


def test_the_wrapped_training_functions_take_what_the_wrappers_read():
    """rl_vs_trl.py times distalign's RL step by replacing ``score``, ``reference_logprobs``
    and ``log_step`` in ``distalign.rl.train`` (reading ``times``, ``ro`` and ``state`` by
    name); profile_rm_step.py replaces ``distalign.rm.train.train_step``."""
    import inspect

    import distalign.rl.train as rl
    import distalign.rm.train as rm

    for name in ("score", "reference_logprobs", "log_step"):
        assert callable(getattr(rl, name)), name
    assert {"times", "ro", "state"} <= set(inspect.signature(rl.log_step).parameters)
    assert callable(rm.train_step)


def test_rm_workload_lengths_are_the_pair_rendering(monkeypatch, smol_tokenizer):
    from distalign.data.pairs import render_pair_ids

    monkeypatch.syspath_prepend(str(BENCHMARKS))
    sys.modules.pop("rm_throughput", None)
    bench = importlib.import_module("rm_throughput")
    prompt = [{"role": "user", "content": "Name a fruit."}]
    p, c, r = bench._lengths(smol_tokenizer, prompt, "An apple.", "A pear, or a plum.")
    prompt_ids, (chosen_ids, rejected_ids) = render_pair_ids(
        smol_tokenizer, prompt, ("An apple.", "A pear, or a plum.")
    )
    assert (p, c, r) == (len(prompt_ids), len(chosen_ids), len(rejected_ids))
    assert c < r
