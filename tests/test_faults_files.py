"""Damaged files: checkpoints, safetensors and GGUF cut short or corrupted, a full disk while
saving, and planted pickles. Each is detected and named; a good checkpoint is never lost."""

from __future__ import annotations

import os
import pickle
import re
import resource
import shutil
import signal
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alignjax import checkpoint, models

STATE = {"w": jnp.arange(60_000, dtype=jnp.float32) / 7.0, "b": jnp.ones(3, jnp.bfloat16),
         "step": jnp.int32(0)}


def _state(step: int):
    return jax.tree.map(lambda x: x + step if x.dtype != jnp.bool_ else x, STATE)


def _save(workdir: str, steps=(1, 2), keep: int = 3) -> None:
    c = checkpoint.Checkpointer(workdir, keep=keep, every=1)
    for s in steps:
        c.save(s, _state(s), {"position": s})
    c.close()


def _largest_file(directory: str) -> str:
    files = [os.path.join(r, f) for r, _, fs in os.walk(directory) for f in fs]
    return max(files, key=os.path.getsize)


def _truncate(path: str) -> None:
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def _flip(path: str, at: float = 0.5, n: int = 16) -> None:
    data = bytearray(open(path, "rb").read())
    i = int(len(data) * at)
    data[i:i + n] = bytes(b ^ 0xFF for b in data[i:i + n])
    open(path, "wb").write(bytes(data))


@pytest.mark.parametrize("damage", ["truncate_data", "flip_data", "truncate_manifest",
                                    "truncate_metadata"])
def test_damaged_checkpoint_is_named_and_the_previous_one_restored(tmp_path, capsys, damage):
    _save(str(tmp_path))
    step2 = tmp_path / "checkpoints" / "2"
    target = {"truncate_data": _largest_file(str(step2)),
              "flip_data": _largest_file(str(step2)),
              "truncate_manifest": str(step2 / "state" / "manifest.ocdbt"),
              "truncate_metadata": str(step2 / "state" / "_METADATA")}[damage]
    (_flip if damage == "flip_data" else _truncate)(target)

    c = checkpoint.Checkpointer(str(tmp_path), keep=3, every=1)
    restored, data_state = c.restore(STATE)
    c.close()
    out = capsys.readouterr().out
    assert data_state == {"position": 1}
    for k in STATE:  # exactly step 1's arrays, not step 2's and not garbage
        np.testing.assert_array_equal(np.asarray(restored[k]), np.asarray(_state(1)[k]))
    assert f"{step2}" in out and "falling back" in out and "step 1" in out
    assert not step2.exists() and os.listdir(tmp_path / "corrupt_checkpoints")

    # a step asked for by number is not replaced by another one
    _save(str(tmp_path / "again"))
    _flip(_largest_file(str(tmp_path / "again" / "checkpoints" / "2")))
    c = checkpoint.Checkpointer(str(tmp_path / "again"), keep=3, every=1)
    with pytest.raises(checkpoint.CorruptCheckpointError,
                       match=re.escape(str(tmp_path / "again" / "checkpoints" / "2"))):
        c.restore(STATE, step=2)
    c.close()


def test_no_readable_checkpoint_raises_naming_each(tmp_path):
    _save(str(tmp_path))
    for step in (1, 2):
        _flip(_largest_file(str(tmp_path / "checkpoints" / str(step))))
    c = checkpoint.Checkpointer(str(tmp_path), keep=3, every=1)
    with pytest.raises(checkpoint.CorruptCheckpointError, match="no readable checkpoint") as e:
        c.restore(STATE)
    c.close()
    for step in (1, 2):
        assert str(tmp_path / "checkpoints" / str(step)) in str(e.value)


def _tmpfs(path: str, size: str) -> bool:
    """Mounts a tmpfs of `size` on `path` (needs root); False where that is not allowed."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path],
                          capture_output=True).returncode == 0


@pytest.mark.parametrize("how", ["full_filesystem", "file_size_limit"])
def test_disk_full_while_saving_keeps_the_previous_checkpoint(tmp_path, how):
    """A real failing write: a full tmpfs, or (without root) RLIMIT_FSIZE, which makes the OS
    refuse writes past a size with EFBIG, just as a full disk refuses them with ENOSPC."""
    workdir = str(tmp_path / "run")
    os.makedirs(workdir)
    mounted = how == "full_filesystem" and _tmpfs(workdir, "520k")  # one checkpoint fits
    if how == "full_filesystem" and not mounted:
        pytest.skip("mounting a tmpfs needs root")
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    try:
        c = checkpoint.Checkpointer(workdir, keep=3, every=1)
        assert c.save(1, _state(1), {"position": 1})
        c._check_pending()  # step 1 is complete on disk
        if how == "file_size_limit":
            resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, limits[1]))
        with pytest.raises(checkpoint.CheckpointWriteError) as e:
            for step in (2, 3, 4):
                c.save(step, _state(step), {"position": step})
            c.close()
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        message = str(e.value)
        assert re.search(r"writing checkpoint step [234] to " + re.escape(workdir), message)
        assert ("No space left on device" if mounted else "File too large") in message
        assert "the complete checkpoints are steps [1" in message
        c = checkpoint.Checkpointer(workdir, keep=3, every=1)
        restored, data_state = c.restore(STATE)
        c.close()
        assert data_state["position"] >= 1
        np.testing.assert_array_equal(np.asarray(restored["w"]),
                                      np.asarray(_state(data_state["position"])["w"]))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, old_handler)
        if mounted:
            subprocess.run(["umount", workdir], check=True)


# --- model files -------------------------------------------------------------------------


@pytest.fixture
def model_copy(tiny_model_dir, tmp_path):
    out = str(tmp_path / "model")
    shutil.copytree(tiny_model_dir, out)
    return out


@pytest.mark.parametrize("damage", ["truncate", "flip_header", "empty"])
def test_damaged_safetensors_is_named(model_copy, damage):
    file = os.path.join(model_copy, "model.safetensors")
    if damage == "truncate":
        _truncate(file)
    elif damage == "flip_header":
        _flip(file, at=0.0, n=64)
    else:
        open(file, "wb").close()
    with pytest.raises(ValueError, match=re.escape(file)):
        models.load_pretrained(model_copy)


# GGUFReader takes ~10 s to parse a file cut inside its tensors: that case is slow
@pytest.mark.parametrize("cut", ["header", pytest.param("tensors", marks=pytest.mark.slow)])
def test_truncated_gguf_is_named(tmp_path, cut):
    from alignjax.assets import smollm2_gguf_path

    try:
        src = smollm2_gguf_path()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    dst = str(tmp_path / "cut.gguf")
    n = 4096 if cut == "header" else int(os.path.getsize(src) * 0.3)
    with open(src, "rb") as f, open(dst, "wb") as g:
        g.write(f.read(n))
    with pytest.raises(ValueError, match=re.escape(dst) + r": cannot (read GGUF file|dequant)"):
        models.load_pretrained(dst)


class _Planted:
    """Unpickling this runs code: it creates the file `marker`."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pt", "weights.pkl"])
def test_planted_pickle_is_refused_and_never_run(tmp_path, tiny_model_dir, name):
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    os.remove(model_dir / "model.safetensors")
    marker = tmp_path / "code_ran"
    with open(model_dir / name, "wb") as f:
        pickle.dump(_Planted(str(marker)), f)
    with pytest.raises(FileNotFoundError, match=r"no model\.safetensors") as e:
        models.load_pretrained(str(model_dir))
    if name.endswith((".bin", ".pt")):
        assert "pickled *.bin checkpoints are never loaded" in str(e.value)
    assert not marker.exists()


def test_remote_code_is_never_run(tmp_path, tiny_model_dir):
    """A tokenizer that asks for its own Python class (auto_map) is not imported."""
    import json

    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    marker = tmp_path / "code_ran"
    (model_dir / "evil_tokenizer.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n"
        "from transformers import PreTrainedTokenizerFast\n"
        "class EvilTokenizer(PreTrainedTokenizerFast):\n    pass\n")
    cfg_path = model_dir / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["auto_map"] = {"AutoTokenizer": [None, "evil_tokenizer.EvilTokenizer"]}
    cfg["tokenizer_class"] = "EvilTokenizer"
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(Exception):  # noqa: B017 (transformers' own error, any type)
        models.load_tokenizer(str(model_dir))
    assert not marker.exists()


def test_pickled_data_file_is_refused(tmp_path):
    from alignjax.data.load import load_examples

    marker = tmp_path / "code_ran"
    path = tmp_path / "rows.pkl"
    path.write_bytes(pickle.dumps(_Planted(str(marker))))
    with pytest.raises(ValueError, match=re.escape(str(path)) + ": unknown data file type"):
        load_examples(str(path), "preference")
    path = tmp_path / "rows.jsonl"
    path.write_bytes(pickle.dumps(_Planted(str(marker))))
    with pytest.raises(ValueError, match=re.escape(str(path))):
        load_examples(str(path), "preference")
    assert not marker.exists()
