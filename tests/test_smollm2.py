"""The real SmolLM2-135M-Instruct, dequantised from GGUF, against transformers on the same file.

Runs `experiments/smollm2_parity.py` (the script whose table goes in experiments/RESULTS.md)
and checks its numbers, so the reported figures and the test are one computation.
"""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("torch")
pytest.importorskip("accelerate")  # transformers needs it to read GGUF

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("parity") / "results.json"
    subprocess.run([sys.executable, os.path.join(ROOT, "experiments", "smollm2_parity.py"),
                    "--json", str(out), "--max-new-tokens", "24"], check=True, cwd=ROOT)
    return json.loads(out.read_text())


def test_logits_match_transformers(results):
    r = results["ours_vs_transformers"]
    assert r["top1_agreement"] == 1.0
    # float32 through 30 layers, logits of magnitude ~20: 5e-4 absolute is 2.5e-5 relative.
    assert r["max_abs_diff"] < 5e-4
    assert r["mean_abs_diff"] < 5e-5


def test_rope_theta_is_read_from_the_checkpoint(results):
    """SmolLM2-135M uses rope theta 1e5; assuming 1e6 (a common port default) is detectably
    wrong, so the parity above really pins the value read from the GGUF metadata."""
    assert results["rope_theta"] == 1e5
    wrong = results["rope_theta_1e6_vs_transformers"]
    assert wrong["max_abs_diff"] > 1.0 and wrong["top1_agreement"] < 0.99


def test_greedy_continuation_matches_transformers(results):
    g = results["greedy"]
    print(f"\n{g['prompt']!r} -> {g['ours']!r}")
    assert g["same_tokens"], (g["ours"], g["transformers"])
    assert len(g["ours"]) > 20
