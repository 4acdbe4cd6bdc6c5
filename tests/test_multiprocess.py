"""Several processes joined through jax.distributed (gloo on CPU) train like one process.

Each run is `python -m alignjax.main` on the quickstart config and a tiny random model, on one
global data=2 x fsdp=2 mesh of 4 simulated CPU devices: 1 process with 4 devices, 2 processes
with 2 each, or 4 processes with 1 each. Each process reads only its rows of every global batch
(`sharding.host_rows`); process 0 alone writes metrics.jsonl and the export.

What is compared, and how exactly:
  - the final parameters (the exports, written by process 0 after a gather): bit-identical;
  - the loss and grad norm of every step: within 2 float32 ulps. The step's loss is one sum of
    the 4 devices' partial sums; one process adds them in XLA's in-process all-reduce, several
    processes through gloo (local devices first, then across processes), and float addition is
    not associative, so the last bit may differ (observed: 1 ulp at some steps, 0 at others).
    The gradients are reduced the same way and come out bit-identical here (asserted through
    the parameters).
  - checkpoints: a run written by 2 processes resumes in 1, and one written by 1 resumes in 2;
    the resumed steps and final parameters match the uninterrupted run the same way.

The RL loop (PPO: sampling, the VADER reward, reference, policy and critic forwards, GAE, both
train steps, held-out evaluation, checkpoints, export) runs the same way in 1 and 2 processes:
the same samples token for token, every logged number within float32 rounding, the exported
policies within a thousandth of the learning rate (slow tier, about 200 s).

Per-step losses are printed (run with -s to see them). The default tier runs the 1- and
2-process comparison (about 80 s of compiling and training on 2 cores); the checkpoint
round trips, the 4-process run and the RL loop are marked slow
(`pytest -m slow tests/test_multiprocess.py`).
"""

import json
import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import load_file

from alignjax import metrics as metrics_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEVICES = 4
STEPS = 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


TRAIN_ARGS = [f"--config.steps={STEPS}", "--config.batch_size=8", "--config.eval_batch_size=4",
              "--config.log_every=1", f"--config.eval_every={STEPS}",
              "--config.eval_at_start=False",
              "--config.checkpoint_every=2", "--config.keep_checkpoints=3",
              "--config.mesh.data=2", "--config.mesh.fsdp=2", "--config.mesh.tensor=1"]


def launch(processes: int, workdir: str, model_dir: str, timeout: int = 400, *,
           config: str = "configs/quickstart.py", args=TRAIN_ARGS) -> None:
    """Runs `python -m alignjax.main --config <config> <args>` (the training command by default)
    in `processes` processes (DEVICES / processes devices each)."""
    port = _free_port()
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": REPO,
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={DEVICES // processes}"}
    command = [sys.executable, "-m", "alignjax.main", "--config", config,
               "--workdir", workdir, f"--config.model.path={model_dir}", *args]
    procs, logs = [], []
    for i in range(processes):
        extra = ([f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={processes}",
                  f"--process_id={i}"] if processes > 1 else [])
        log = open(f"{workdir}.{i}.log", "w")
        logs.append(log)
        procs.append(subprocess.Popen(command + extra, cwd=REPO, env=env, stdout=log,
                                      stderr=subprocess.STDOUT))
    try:
        codes = [p.wait(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        for log in logs:
            log.close()
    for i, code in enumerate(codes):
        if code:
            with open(f"{workdir}.{i}.log") as f:
                pytest.fail(f"process {i} of {processes} exited {code}:\n{f.read()[-4000:]}")


def resume_copy(src: str, dst: str) -> str:
    """A copy of a finished run cut back to its step-2 checkpoint (as if killed after it)."""
    shutil.copytree(src, dst)
    for name in ("checkpoints/4", "best", "export"):
        shutil.rmtree(os.path.join(dst, name), ignore_errors=True)
    return dst


def train_rows(workdir: str) -> dict[int, dict]:
    return {r["step"]: r for r in metrics_lib.read_metrics(workdir) if "train/loss" in r}


def params(workdir: str) -> dict[str, np.ndarray]:
    return load_file(os.path.join(workdir, "export", "model.safetensors"))


def assert_same_run(got: str, want: str, steps) -> None:
    a, b = train_rows(got), train_rows(want)
    assert sorted(a) == sorted(b) == list(steps), (sorted(a), sorted(b))
    for step in steps:
        for key in ("train/loss", "train/grad_norm"):
            np.testing.assert_array_max_ulp(np.float32(a[step][key]), np.float32(b[step][key]),
                                            maxulp=2)
    pa, pb = params(got), params(want)
    assert sorted(pa) == sorted(pb)
    for name in pa:
        np.testing.assert_array_equal(pa[name], pb[name], err_msg=name)


def show(label: str, workdir: str) -> None:
    rows = train_rows(workdir)
    print(f"\n{label}: " + ", ".join(f"step {s} loss {rows[s]['train/loss']:.9f}"
                                     for s in sorted(rows)))


@pytest.fixture(scope="module")
def runs(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("multiprocess")
    out = {n: str(root / f"p{n}") for n in (1, 2)}
    for n, workdir in out.items():
        launch(n, workdir, tiny_model_dir)
        show(f"{n} process(es)", workdir)
    return root, out


def test_two_processes_train_exactly_like_one(runs):
    _, out = runs
    assert_same_run(out[2], out[1], range(1, STEPS + 1))
    # process 0 alone writes the metrics, once per step
    steps = [r["step"] for r in metrics_lib.read_metrics(out[2])]
    assert steps == sorted(set(steps)) and steps[-1] == STEPS


@pytest.mark.slow
def test_checkpoint_of_two_processes_resumes_in_one(runs, tiny_model_dir):
    root, out = runs
    workdir = resume_copy(out[2], str(root / "from2to1"))
    launch(1, workdir, tiny_model_dir)
    with open(f"{workdir}.0.log") as f:
        assert "resumed from step 2" in f.read()
    assert_same_run(workdir, out[1], range(1, STEPS + 1))


@pytest.mark.slow
def test_checkpoint_of_one_process_resumes_in_two(runs, tiny_model_dir):
    root, out = runs
    workdir = resume_copy(out[1], str(root / "from1to2"))
    launch(2, workdir, tiny_model_dir)
    with open(f"{workdir}.0.log") as f:
        assert "resumed from step 2" in f.read()
    assert_same_run(workdir, out[1], range(1, STEPS + 1))


@pytest.mark.slow
def test_four_processes_train_exactly_like_one(runs, tiny_model_dir):
    root, out = runs
    workdir = str(root / "p4")
    launch(4, workdir, tiny_model_dir)
    show("4 processes", workdir)
    assert_same_run(workdir, out[1], range(1, STEPS + 1))


# ----------------------------------------------------------------------------- the RL loop

RL_ITERATIONS = 2
RL_LR = 1e-3


def launch_rl(processes: int, workdir: str, model_dir: str, timeout: int = 600) -> None:
    """PPO (sampler, VADER reward, reference, policy and critic forwards, GAE, both train
    steps, held-out evaluation, checkpoints, export) in `processes` processes."""
    launch(processes, workdir, model_dir, timeout, config="configs/ppo.py", args=[
        f"--config.iterations={RL_ITERATIONS}", "--config.prompts_per_iteration=4",
        "--config.samples_per_prompt=2", "--config.eval_prompts=4", "--config.eval_samples=2",
        "--config.max_new_tokens=6", "--config.prompt_buckets=(64,)", "--config.epochs=1",
        "--config.minibatches=1", "--config.micro_batches=1", "--config.sample_every=1",
        "--config.checkpoint_every=1", "--config.export=True", "--config.temperature=1.0",
        f"--config.optim.learning_rate={RL_LR}", f"--config.critic.learning_rate={RL_LR}",
        "--config.mesh.data=2", "--config.mesh.fsdp=2", "--config.mesh.tensor=1"])


def _jsonl(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.mark.slow
def test_rl_loop_runs_in_two_processes_like_one(tiny_model_dir, tmp_path):
    """The RL loop on the same global mesh in 1 and 2 processes: the same samples (token for
    token), rewards and held-out evaluation; every logged number within float32 rounding of
    the gloo reductions; the exported policies equal."""
    runs = {n: str(tmp_path / f"rl{n}") for n in (1, 2)}
    for n, workdir in runs.items():
        launch_rl(n, workdir, tiny_model_dir)
    one, two = (metrics_lib.read_metrics(runs[n]) for n in (1, 2))
    assert [r["step"] for r in one] == [r["step"] for r in two] == list(
        range(RL_ITERATIONS + 1))
    worst = 0.0
    for a, b in zip(one, two, strict=True):
        assert sorted(a) == sorted(b)
        for key in a:
            if key.startswith("time/") or key == "step":
                continue
            x, y = np.float64(a[key]), np.float64(b[key])
            worst = max(worst, abs(x - y) / max(abs(x), 1e-3))
            np.testing.assert_allclose(y, x, rtol=1e-5, atol=1e-6, err_msg=f"{key} {a['step']}")
    print(f"\nRL, 1 vs 2 processes: largest relative difference of a logged number {worst:.2e}")
    for it in range(1, RL_ITERATIONS + 1):
        a, b = (_jsonl(os.path.join(runs[n], "samples", f"iter_{it}.jsonl")) for n in (1, 2))
        assert [r["response"] for r in a] == [r["response"] for r in b]
        assert [r["reward"] for r in a] == [r["reward"] for r in b]
        show_rl = ", ".join(f"{r['reward']:.4f}" for r in a)
        print(f"iteration {it}: rewards {show_rl}")
    for step in (0, RL_ITERATIONS):
        a, b = (_jsonl(os.path.join(runs[n], "samples", f"eval_{step}.jsonl")) for n in (1, 2))
        assert [r["response"] for r in a] == [r["response"] for r in b]
    # Adam divides each gradient element by its running RMS, so where a gradient is near 0 the
    # last-bit difference of its gloo sum changes the step by a fraction of the learning rate:
    # the bound is in units of lr * steps, and the run must have moved the parameters by more.
    pa, pb, p0 = params(runs[1]), params(runs[2]), load_file(
        os.path.join(tiny_model_dir, "model.safetensors"))
    assert sorted(pa) == sorted(pb)
    budget = RL_LR * RL_ITERATIONS
    apart = max(float(np.abs(pa[k] - pb[k]).max()) for k in pa)
    moved = max(float(np.abs(pa[k] - p0[k]).max()) for k in pa if k in p0)
    print(f"exported policies: largest difference {apart:.2e}, largest update {moved:.2e}, "
          f"lr x steps {budget:.0e}")
    assert moved > 0.5 * budget
    assert apart <= 1e-3 * budget
    assert not os.path.exists(os.path.join(runs[2], "samples", "iter_1.jsonl.tmp"))
