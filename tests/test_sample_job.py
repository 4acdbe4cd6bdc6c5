"""`generate` (text in, text out) and the sample job (prompts file -> samples.jsonl), on a tiny
random model that shares the SmolLM2 tokenizer (conftest.tiny_model_dir)."""

import json
import os
import subprocess
import sys

import pytest
from flax import nnx
from test_train import _load

from alignjax import models, sample_job
from alignjax.data.chat import ChatRenderer
from alignjax.sampler import GREEDY, generate, make_sampler

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Tell me more."}]


def test_generate_renders_chats_and_decodes(tiny_model_dir, smollm2_tokenizer):
    tok = smollm2_tokenizer
    model, cfg = models.load_hf(tiny_model_dir)
    texts = generate(model, tok, ["Hi there", CHAT], max_new_tokens=6)
    renderer = ChatRenderer(tok)
    ids = [tok(renderer.prompt([{"role": "user", "content": "Hi there"}]),
               add_special_tokens=False).input_ids,
           tok(renderer.prompt(CHAT), add_special_tokens=False).input_ids]
    graphdef, params = nnx.split(model)
    out = make_sampler(graphdef, cfg, max_new_tokens=6, stop_token_ids=(tok.eos_token_id,),
                       pad_token_id=tok.pad_token_id)(params, ids, 0, GREEDY)
    for row, text in enumerate(texts):
        n = int(out.mask_BT[row].sum())
        assert text == tok.decode(out.tokens_BT[row, :n], skip_special_tokens=True)
    several = generate(model, tok, CHAT, max_new_tokens=6, temperature=1.0, n=3, seed=1)
    assert len(several) == 3 and all(isinstance(t, str) for t in several)  # one chat in
    assert several == generate(model, tok, CHAT, max_new_tokens=6, temperature=1.0, n=3, seed=1)
    assert several != generate(model, tok, CHAT, max_new_tokens=6, temperature=1.0, n=3, seed=2)


def test_model_path_of_a_training_workdir(tiny_model_dir, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")  # a run's resolved config, not a model's
    os.symlink(tiny_model_dir, run / "export")
    assert sample_job.resolve_model_path(str(run)) == str(run / "export")
    assert sample_job.resolve_model_path(tiny_model_dir) == tiny_model_dir
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"config\.model\.path=.*export/"):
        sample_job.resolve_model_path(str(tmp_path / "empty"))


def test_bad_settings_fail_before_loading(tmp_path):
    config = _load(os.path.join(REPO, "configs", "sample.py"))
    config.model.path = str(tmp_path / "missing")
    config.sample.top_p = 1.5
    with pytest.raises(ValueError, match=r"SamplingParams\.top_p"):
        sample_job.run(config, str(tmp_path / "a"))
    config.sample.top_p = 0.9
    config.data.prompts = str(tmp_path / "nope.jsonl")
    with pytest.raises(FileNotFoundError, match=r"config\.data\.prompts"):
        sample_job.run(config, str(tmp_path / "b"))


def test_cli_sample_job_writes_jsonl(tiny_model_dir, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    rows = [{"prompt": "What is the capital of France?"}, {"prompt": "Say hi."},
            {"prompt": CHAT}, {"prompt": "Name three colours and describe each one."},
            {"prompt": "x " * 300}]  # the last is longer than every bucket: dropped, counted
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    workdir = tmp_path / "run"
    cmd = [sys.executable, "-m", "alignjax.main", "--config", "configs/sample.py",
           "--workdir", str(workdir), f"--config.model.path={tiny_model_dir}",
           f"--config.data.prompts={prompts}", "--config.data.format=prompt",
           "--config.data.limit=0", "--config.batch_size=2", "--config.sample.n=2",
           "--config.sample.max_new_tokens=5", "--config.sample.prompt_buckets=(64,)"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False,
                          env={**os.environ, "PYTHONPATH": REPO})
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert summary["prompts"] == 4 and summary["samples"] == 8
    lines = [json.loads(x) for x in (workdir / "samples.jsonl").read_text().splitlines()]
    assert [(x["example_id"], x["sample"]) for x in lines] == [(i, j) for i in range(4)
                                                              for j in range(2)]
    assert lines[4]["prompt"] == CHAT
    for x in lines:
        assert set(x) == {"example_id", "sample", "origin", "prompt", "response",
                          "finish_reason", "num_tokens", "logp", "sample_logp"}
        assert 1 <= x["num_tokens"] <= 5 and x["logp"] < 0 and x["sample_logp"] < 0
        assert x["finish_reason"] in ("stop", "length")
        if x["finish_reason"] == "length":
            assert x["num_tokens"] == 5
    counts = json.loads((workdir / "data_counts.json").read_text())
    assert counts["dropped_too_long"] == 1 and counts["tokenized"] == 4
    assert json.loads((workdir / "config.json").read_text())["job"] == "sample"
