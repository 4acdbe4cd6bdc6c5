"""The notebooks run top to bottom in a fresh kernel, and what they compute and plot is right.

Each notebook is executed in memory (the files are never rewritten) by a kernel running this
interpreter, from the repository root, with its runs under a temporary
`ALIGNJAX_NOTEBOOK_WORKDIR`. After the notebook's last cell, one more cell prints the notebook
variables a test names as JSON: the assertions are on those values (the plotted arrays, the
loss curves of the runs, the logit differences), not only on the cells having run.
"""

import ast
import json
import math
import os
import sys

import nbformat
import numpy as np
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

from alignjax import assets

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = os.path.join(REPO, "notebooks")
NAMES = sorted(n for n in os.listdir(NOTEBOOKS) if n.endswith(".ipynb"))
CELL_TIMEOUT_S = 300
# What a notebook may import: the library, its configs, and the tools it plots and compares with.
ALLOWED_IMPORTS = {"alignjax", "configs", "os", "numpy", "matplotlib", "jax", "transformers",
                   "torch"}
_MARK = "__NOTEBOOK_RESULTS__"


def _read(name: str):
    return nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4)


def execute(name: str, workdir: str, **expressions: str) -> tuple[dict, list]:
    """Runs notebook `name`; returns ({key: value of expression}, the executed cells)."""
    nb = _read(name)
    fields = ", ".join(f"{k!r}: _np.asarray({v}).tolist()" for k, v in expressions.items())
    nb.cells.append(nbformat.v4.new_code_cell(
        f"import json as _json, numpy as _np\nprint({_MARK!r} + _json.dumps({{{fields}}}))"))
    # The native kernel spec only: `python -m ipykernel_launcher` with *this* interpreter, never
    # a kernel.json found elsewhere on the machine.
    km = KernelManager(kernel_name="python3",
                       kernel_spec_manager=KernelSpecManager(kernel_dirs=[]))
    assert km.kernel_spec.argv[0] == sys.executable
    env = {**os.environ, "ALIGNJAX_NOTEBOOK_WORKDIR": workdir,
           "PYTHONPATH": os.pathsep.join([REPO, *filter(None, [os.environ.get("PYTHONPATH")])]),
           "MPLBACKEND": "module://matplotlib_inline.backend_inline"}
    client = NotebookClient(nb, km=km, timeout=CELL_TIMEOUT_S, startup_timeout=120,
                            resources={"metadata": {"path": REPO}})
    client.execute(env=env)
    text = "".join(o.get("text", "") for o in nb.cells[-1].outputs if o.output_type == "stream")
    line = next(ln for ln in text.splitlines() if ln.startswith(_MARK))
    return json.loads(line[len(_MARK):]), nb.cells[:-1]


def _images(cells) -> int:
    return sum("image/png" in o.get("data", {}) for c in cells if c.cell_type == "code"
               for o in c.outputs)


def _stdout(cells) -> str:
    return "".join(o.get("text", "") for c in cells if c.cell_type == "code" for o in c.outputs
                   if o.output_type == "stream" and o.name == "stdout")


@pytest.mark.parametrize("name", NAMES)
def test_committed_without_outputs_and_importing_only_the_library(name):
    imported = set()
    for cell in _read(name).cells:
        if cell.cell_type != "code":
            continue
        assert cell.outputs == [] and cell.execution_count is None, f"{name}: clear the outputs"
        for node in ast.walk(ast.parse(cell.source)):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                imported.add(node.module.split(".")[0])
    assert "alignjax" in imported
    assert imported <= ALLOWED_IMPORTS, f"{name} imports {sorted(imported - ALLOWED_IMPORTS)}"


def test_01_losses(tmp_path):
    r, cells = execute("01_losses.ipynb", str(tmp_path), beta="beta", eps="eps",
                       margins="margins",
                       **{k: f"curves[{n!r}]" for k, n in
                          (("dpo", "DPO"), ("cdpo", "cDPO"), ("robust", "robust DPO"),
                           ("ipo", "IPO"), ("hinge", "hinge"), ("kto_d", "KTO desirable"))},
                       batch_dpo="[float(scored['DPO'][2][0]), scored['DPO'][0].mean()]",
                       pair_dpo_loss="scored['DPO'][0]",
                       pair_chosen_reward="beta * (policy_chosen - ref_chosen)",
                       pair_margin="(policy_chosen - ref_chosen)"
                                   " - (policy_rejected - ref_rejected)")
    beta, eps, margins = r["beta"], r["eps"], np.asarray(r["margins"])
    step = margins[1] - margins[0]
    assert _images(cells) >= 1
    assert all(np.all(np.isfinite(r[k])) for k in ("dpo", "cdpo", "robust", "ipo", "hinge"))
    # DPO's gradient weight at zero margin is beta / 2, and its loss there log 2.
    dpo_loss, dpo_weight = map(np.asarray, r["dpo"])
    np.testing.assert_allclose(np.interp(0.0, margins, dpo_weight), beta / 2, rtol=1e-5)
    np.testing.assert_allclose(np.interp(0.0, margins, dpo_loss), math.log(2), rtol=1e-4)
    assert np.all(np.diff(dpo_loss) < 0) and np.all(dpo_weight > 0)
    # IPO's loss is minimised at the margin 1 / (2 tau), where its weight changes sign.
    ipo_loss, ipo_weight = map(np.asarray, r["ipo"])
    target = 1 / (2 * beta)
    assert margins[0] + step < target < margins[-1] - step
    assert abs(margins[np.argmin(ipo_loss)] - target) <= step / 2 + 1e-9
    below, above = margins < target - step / 2, margins > target + step / 2
    assert ipo_weight[below].min() > 0 > ipo_weight[above].max()
    # cDPO pulls large margins back past log((1 - eps) / eps) / beta; robust DPO never does.
    cdpo_weight, robust_weight = np.asarray(r["cdpo"][1]), np.asarray(r["robust"][1])
    crossing = math.log((1 - eps) / eps) / beta
    assert np.all(cdpo_weight[margins > crossing + step] < 0)
    assert np.all(cdpo_weight[margins < crossing - step] > 0)
    assert np.all(robust_weight > 0)
    # The hinge stops at beta * Delta = 1; a desirable KTO example is pushed hardest at r = z.
    hinge_weight = np.asarray(r["hinge"][1])
    assert np.all(hinge_weight[beta * margins > 1 + 1e-6] == 0)
    np.testing.assert_allclose(hinge_weight[beta * margins < 1 - 1e-6], beta, rtol=1e-6)
    kto_weight = np.asarray(r["kto_d"][1])
    assert abs(margins[np.argmax(kto_weight)]) <= step / 2 + 1e-9
    # The table: the batch loss is the mean of the per-pair column, and pair 2 is the note's
    # example: chosen reward below zero, positive margin, DPO loss below log 2.
    np.testing.assert_allclose(*r["batch_dpo"], rtol=1e-6)
    assert r["pair_chosen_reward"][1] < 0 < r["pair_margin"][1]
    assert r["pair_dpo_loss"][1] < math.log(2)
    table = [ln.split()[0] for ln in _stdout(cells).splitlines() if ln.strip()]
    assert [t for t in table if t in ("1", "2", "3", "4", "batch")] == ["1", "2", "3", "4", "batch"]


@pytest.fixture(scope="module")
def dpo_notebook(tmp_path_factory, shared_data):
    """Notebook 02 run once; notebook 03 reads its workdir."""
    del shared_data  # skips without the real data
    try:
        assets.smollm2_gguf_path()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    root = str(tmp_path_factory.mktemp("notebook_runs"))
    results, cells = execute(
        "02_dpo_in_a_notebook.ipynb", root, beta="config.loss.beta", steps="config.steps",
        dpo_loss="dpo_loss", ipo_loss="ipo_loss",
        objectives="[_json.load(open(os.path.join(run_dir, n, 'config.json')))['objective'] "
                   "for n in ('dpo', 'ipo')]")
    return root, results, cells


def test_02_dpo_then_ipo_from_the_notebook(dpo_notebook):
    _, r, cells = dpo_notebook
    assert _images(cells) >= 1
    assert r["objectives"] == ["dpo", "ipo"]  # the one-cell swap changed the objective
    dpo_loss, ipo_loss = np.asarray(r["dpo_loss"]), np.asarray(r["ipo_loss"])
    assert len(dpo_loss) == len(ipo_loss) == r["steps"]
    # Step 1 is scored before any update: the policy is the reference, so Delta = 0.
    np.testing.assert_allclose(dpo_loss[0], math.log(2), rtol=1e-5)
    target = (1 / (2 * r["beta"])) ** 2
    np.testing.assert_allclose(ipo_loss[0], target, rtol=1e-5)
    # Both losses fall over the run, the swapped-in IPO one too (a point is a batch of 8 pairs).
    assert ipo_loss[-3:].mean() < 0.7 * ipo_loss[0]
    assert dpo_loss[-3:].mean() < 0.7 * dpo_loss[0]


def test_03_inspect_the_workdir(dpo_notebook):
    root, notebook2, _ = dpo_notebook
    r, cells = execute("03_inspect_workdir.ipynb", root, steps="checkpoints",
                       logged="sorted(rows)", export_diff="export_max_abs_diff",
                       restored_diff="restored_max_abs_diff", restored_step="restored_step",
                       generations="[len(g) for g in generated]", max_new="max_new_tokens")
    assert _images(cells) >= 1
    final = notebook2["steps"]
    assert r["logged"][-1] == final and r["steps"][-1] == final
    assert r["restored_step"] == final
    # The exported model in transformers gives alignjax's logits; the last checkpoint is it.
    assert r["export_diff"] < 1e-4
    assert r["restored_diff"] < 1e-6
    assert len(r["generations"]) >= 2
    assert all(0 < n <= r["max_new"] for n in r["generations"])
