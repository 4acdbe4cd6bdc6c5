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

Per-step losses are printed (run with -s to see them). The default tier runs the 1- and
2-process comparison (about 80 s of compiling and training on 2 cores); the checkpoint
round trips and the 4-process run are marked slow (`pytest -m slow tests/test_multiprocess.py`).
"""

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


def launch(processes: int, workdir: str, model_dir: str, timeout: int = 400) -> None:
    """Runs the training command in `processes` processes (DEVICES / processes devices each)."""
    port = _free_port()
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": REPO,
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={DEVICES // processes}"}
    command = [sys.executable, "-m", "alignjax.main", "--config", "configs/quickstart.py",
               "--workdir", workdir, f"--config.model.path={model_dir}",
               f"--config.steps={STEPS}", "--config.batch_size=8", "--config.eval_batch_size=4",
               "--config.log_every=1", f"--config.eval_every={STEPS}",
               "--config.eval_at_start=False",
               "--config.checkpoint_every=2", "--config.keep_checkpoints=3",
               "--config.mesh.data=2", "--config.mesh.fsdp=2", "--config.mesh.tensor=1"]
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
