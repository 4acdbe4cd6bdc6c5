"""The online RL loop end to end on a tiny random model: every algorithm, PPO with an unchanged
policy, and a run killed with SIGKILL that resumes to exactly the uninterrupted metrics.

The runs share a persistent compilation cache (a temporary directory): the sampler and the
forward passes of one run are the same programs in the next, so they compile once.
"""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from jax.experimental.compilation_cache import compilation_cache
from test_train import REPO, _load

from alignjax.rl import loop

ALGORITHMS = ("ppo", "grpo", "rloo", "reinforce")
TINY = {"iterations": 2, "prompts_per_iteration": 2, "samples_per_prompt": 2,
        "eval_prompts": 2, "eval_samples": 2, "max_new_tokens": 6, "prompt_buckets": (64,),
        "sample_every": 1, "checkpoint_every": 1}
_CACHE_KEYS = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
               "jax_persistent_cache_min_entry_size_bytes")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """A persistent compilation cache for this module's runs, in-process and in subprocesses."""
    path = str(tmp_path_factory.mktemp("jax_cache"))
    old = {k: getattr(jax.config, k) for k in _CACHE_KEYS}
    for k, v in zip(_CACHE_KEYS, (path, 0.0, 0), strict=True):
        jax.config.update(k, v)
    compilation_cache.reset_cache()
    yield path
    for k, v in old.items():
        jax.config.update(k, v)
    compilation_cache.reset_cache()


def _config(name, model_dir, **overrides):
    config = _load(os.path.join(REPO, "configs", f"{name}.py"))
    config.model.path = model_dir
    for k, v in {**TINY, **overrides}.items():
        config[k] = v
    return config


def _rows(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def test_ppo_with_an_unchanged_policy_has_ratio_1_and_clips_nothing(tiny_model_dir, cache_dir,
                                                                    tmp_path):
    """Learning rate 0: the rollout policy, the updated policy and the reference coincide, so
    every minibatch of every epoch sees ratio 1, nothing clipped, no KL; the critic still
    learns."""
    config = _config("ppo", tiny_model_dir, epochs=2, minibatches=2)
    config.optim.learning_rate = 0.0
    loop.run(config, str(tmp_path))
    rows = _rows(tmp_path)
    assert [r["step"] for r in rows] == [0, 1, 2]
    for r in rows[1:]:
        assert abs(r["ppo/ratio"] - 1.0) < 1e-5, r
        assert r["ppo/clipfrac"] == 0.0
        assert abs(r["ppo/approx_kl"]) < 1e-7
        for k in ("k1", "k2", "k3"):
            assert abs(r[f"rl/kl_{k}"]) < 1e-4, (k, r)
        assert r["critic/ppo/value_loss"] > 0 and r["critic/train/update_norm"] > 0
        assert r["train/update_norm"] == 0.0
        assert 0 < r["rl/entropy"] < np.log(49152) + 1e-3
        assert all(r[f"time/{p}"] >= 0 for p in ("sampling", "scoring", "reference_forward",
                                                 "policy_forward", "critic_forward",
                                                 "updates"))
    assert abs(rows[-1]["eval/kl"]) < 1e-4 and abs(rows[0]["eval/kl"]) < 1e-4


@pytest.mark.parametrize("name", ALGORITHMS[1:])
def test_each_algorithm_runs_end_to_end(name, tiny_model_dir, cache_dir, tmp_path):
    config = _config(name, tiny_model_dir)
    config.optim.learning_rate = 1e-3  # a random model: large steps, so the policy moves
    last = loop.run(config, str(tmp_path))
    rows = _rows(tmp_path)
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert all(np.isfinite(v) for r in rows for v in r.values())
    assert -1.0 <= last["rl/reward"] <= 1.0 and 0 <= last["rl/eos_fraction"] <= 1
    assert last["rl/response_length"] <= config.max_new_tokens
    assert last["train/update_norm"] > 0
    key = "ppo/clipfrac" if name == "grpo" else "reinforce/advantage"
    assert key in last
    assert abs(last["rl/kl_k1"]) > 0  # the policy moved away from the reference
    assert {"eval/reward", "eval/reward_ci95_low", "eval/kl"} <= set(last)
    assert sorted(os.listdir(tmp_path / "samples")) == ["eval_0.jsonl", "eval_2.jsonl",
                                                        "iter_1.jsonl", "iter_2.jsonl"]
    with open(tmp_path / "samples" / "eval_2.jsonl") as f:  # per-response KL, as averaged
        held_out = [json.loads(line) for line in f]
    assert len(held_out) == config.eval_prompts * config.eval_samples
    np.testing.assert_allclose(np.mean([r["kl"] for r in held_out]), last["eval/kl"],
                               rtol=1e-6, atol=1e-7)
    assert os.path.isdir(tmp_path / "checkpoints" / "2")
    if name == "reinforce":  # a finished run is not trained again
        assert loop.run(config, str(tmp_path))["rl/reward"] == last["rl/reward"]
        assert len(_rows(tmp_path)) == 3


def _command(model_dir, workdir, iterations):
    args = {**TINY, "iterations": iterations, "model.path": model_dir,
            "kl.target": 0.5}  # the adaptive KL controller is part of the resumed state
    return [sys.executable, "-m", "alignjax.main", "--config", "configs/ppo.py",
            "--workdir", workdir,
            *[f"--config.{k}={v}" if not isinstance(v, tuple) else f"--config.{k}={v!r}"
              for k, v in args.items()]]


def _final(workdir):
    return {r["step"]: {k: v for k, v in r.items() if not k.startswith("time/")}
            for r in _rows(workdir)}


@pytest.mark.slow  # three runs in subprocesses: about 80 s of CPU on two cores
def test_sigkill_then_resume_matches_uninterrupted(tiny_model_dir, cache_dir, tmp_path):
    iterations = 5
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": cache_dir,
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
           "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
    straight, killed = str(tmp_path / "straight"), str(tmp_path / "killed")
    subprocess.run(_command(tiny_model_dir, straight, iterations), cwd=REPO, check=True,
                   capture_output=True, env=env)
    proc = subprocess.Popen(_command(tiny_model_dir, killed, iterations), cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = os.path.join(killed, "metrics.jsonl")
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if os.path.exists(metrics) and len(_rows(killed)) >= 3:  # eval and two iterations
            break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    logged = max(_final(killed))
    assert 2 <= logged < iterations, f"killed at iteration {logged}: not mid-run"
    resumed = subprocess.run(_command(tiny_model_dir, killed, iterations), cwd=REPO,
                             check=True, capture_output=True, text=True, env=env)
    assert "resumed from iteration" in resumed.stdout + resumed.stderr
    a, b = _final(straight), _final(killed)
    assert sorted(a) == sorted(b) == list(range(iterations + 1))
    assert len({a[s]["rl/kl_coef"] for s in a if s}) > 1  # the controller moved
    for step in a:
        assert a[step] == b[step], step  # exactly equal, not approximately
