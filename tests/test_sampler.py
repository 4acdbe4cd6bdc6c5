"""The KV-cache sampler on tiny random models of every family.

References are independent of the sampler: the full forward pass without a cache (itself
checked against transformers in test_models.py), the trainer's `objectives.token_logps`,
transformers' `generate` and its logits warpers (temperature, top-k, top-p, min-p).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from alignjax import models, objectives
from alignjax.draw import draw
from alignjax.models.transformer import KVCache, segment_positions
from alignjax.sampler import GREEDY, SamplingParams, make_sampler, pad_prompts

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from transformers.generation import logits_process as lp  # noqa: E402

LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 8}
FAMILIES = {
    "llama": dict(family="llama"),
    "llama3_rope_scaling": dict(family="llama", rope_scaling=LLAMA3_ROPE, rope_theta=5e5),
    "qwen2_biases": dict(family="qwen2"),
    "mistral_sliding_window": dict(family="mistral"),  # window 8 < the 21-token sequences
}
LENGTHS = (11, 6, 1, 9)  # uneven prompts, left-padded into one bucket of 12
BUCKET = 12


def randomised(cfg, seed=0):
    """A model whose biases and norm weights are random too, so that they are exercised."""
    model = models.build(cfg, seed=seed)
    rng = np.random.default_rng(seed)
    flat = []
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        value = np.asarray(var.get_value())
        if path[-1] == "bias":
            value = rng.normal(0.0, 0.5, value.shape).astype(np.float32)
        elif "norm" in str(path[-2]):
            value = rng.normal(1.0, 0.1, value.shape).astype(np.float32)
        flat.append((path, var.replace(jnp.asarray(value))))
    nnx.update(model, nnx.from_flat_state(flat))
    return model


def prompts(vocab, lengths=LENGTHS, seed=0):
    rng = np.random.default_rng(seed)
    return [list(rng.integers(3, vocab, n)) for n in lengths]


def cached_and_full_logits(model, ids_BP, mask_BP, follow_BT):
    """Logits [B, T, V] of a prefill and T - 1 one-token decode steps teacher-forced on
    `follow_BT`, and the full forward pass's logits at the same positions (one jitted call)."""
    graphdef, params = nnx.split(model)
    b, p = ids_BP.shape
    steps = follow_BT.shape[1]

    @jax.jit
    def run(params, ids_BP, mask_BP, follow_BT):
        m = nnx.merge(graphdef, params)
        w = m.output_embedding()
        key_mask = jnp.concatenate([mask_BP, jnp.ones((b, steps), jnp.int32)], axis=1)
        h, cache = m.hidden_cached(ids_BP, segment_positions(mask_BP), key_mask,
                                   KVCache.zeros(m.cfg, b, p + steps), 0)
        lengths = jnp.sum(mask_BP, axis=1)

        def step(cache, t):
            tok_B1 = jax.lax.dynamic_slice_in_dim(follow_BT, t, 1, axis=1)
            h, cache = m.hidden_cached(tok_B1, (lengths + t)[:, None], key_mask, cache, p + t)
            return cache, h[:, 0] @ w

        _, rest_TBV = jax.lax.scan(step, cache, jnp.arange(steps - 1))
        cached = jnp.concatenate([(h[:, -1] @ w)[:, None], rest_TBV.swapaxes(0, 1)], axis=1)
        full = m(jnp.concatenate([ids_BP, follow_BT], axis=1), key_mask)
        return cached, full[:, p - 1:p - 1 + steps]

    return jax.device_get(run(params, jnp.asarray(ids_BP), jnp.asarray(mask_BP, jnp.int32),
                              jnp.asarray(follow_BT, jnp.int32)))


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_cached_logits_equal_full_forward_every_step(name):
    """Prefill + one-token decode steps give the logits of the full forward pass on the whole
    left-padded sequence, at every step (teacher-forced on random tokens)."""
    cfg = models.tiny_config(**FAMILIES[name])
    model = randomised(cfg)
    ids, mask = pad_prompts(prompts(cfg.vocab_size), (BUCKET,), 0)
    follow = np.random.default_rng(1).integers(3, cfg.vocab_size, (len(ids), 10))
    cached, full = cached_and_full_logits(model, ids, mask, follow)
    diff = np.abs(cached - full)
    print(f"{name}: max |cached - full| logit = {diff.max():.2e}")
    assert diff.max() < 1e-4


def _hf_warped(logits, s: SamplingParams):
    """transformers' warpers, in generate's order, on float32 logits [B, V]."""
    x = torch.tensor(np.asarray(logits, np.float32))
    if s.temperature != 1.0:
        x = lp.TemperatureLogitsWarper(float(s.temperature))(None, x)
    if s.top_k:
        x = lp.TopKLogitsWarper(s.top_k)(None, x)
    if s.top_p < 1.0:
        x = lp.TopPLogitsWarper(s.top_p)(None, x)
    if s.min_p:
        x = lp.MinPLogitsWarper(s.min_p)(None, x)
    return x


@pytest.mark.parametrize("name", ["qwen2_biases", "mistral_sliding_window"])
def test_returned_logps_equal_trainer_and_warped_logps(name):
    """model_logps equal the trainer's token_logps on the sampled sequences (1e-5, float32);
    logps equal the log-softmax of transformers' warped logits at the sampled tokens."""
    cfg = models.tiny_config(**FAMILIES[name])
    model = randomised(cfg, seed=1)
    graphdef, params = nnx.split(model)
    settings = SamplingParams(temperature=0.7, top_k=20, top_p=0.9, min_p=0.02)
    sampler = make_sampler(graphdef, cfg, max_new_tokens=9, prompt_buckets=(BUCKET,),
                           stop_token_ids=(5, 6, 7))
    out = sampler(params, prompts(cfg.vocab_size), jax.random.key(3), settings, n=2)
    batch = out.batch()
    trainer = np.asarray(objectives.token_logps(model, batch))[:, BUCKET:]
    mask = np.asarray(out.mask_BT)
    diff = np.abs(np.asarray(out.model_logps_BT) - trainer * mask)
    print(f"{name}: max |sampler - trainer| log-prob = {diff.max():.2e}")
    assert diff.max() < 1e-5
    full = np.asarray(model(batch["input_ids"], batch["attention_mask"]))
    tokens = np.asarray(out.tokens_BT)
    for t in range(tokens.shape[1]):
        warped = torch.log_softmax(_hf_warped(full[:, BUCKET - 1 + t], settings), dim=-1)
        ref = warped.numpy()[np.arange(len(tokens)), tokens[:, t]]
        np.testing.assert_allclose(np.asarray(out.logps_BT)[:, t], np.where(mask[:, t], ref, 0),
                                   atol=1e-5)
    assert mask.sum() > len(mask)  # rows produced several tokens


# --------------------------------------------------------------------------------------------
# The sampled distribution: first tokens against transformers' warped distribution.
# --------------------------------------------------------------------------------------------

N_SAMPLES = 20_000
DISTRIBUTIONS = {  # settings -> a wrong filter the same samples must reject
    "temperature": (SamplingParams(0.6), SamplingParams(0.7)),
    "top_k": (SamplingParams(1.0, top_k=12), SamplingParams(1.0, top_k=13)),
    "top_p": (SamplingParams(1.0, top_p=0.8), SamplingParams(1.0, top_p=0.85)),
    "min_p": (SamplingParams(1.0, min_p=0.05), SamplingParams(1.0, min_p=0.04)),
    "all_four": (SamplingParams(1.3, top_k=30, top_p=0.9, min_p=0.02),
                 SamplingParams(1.0, top_k=30, top_p=0.9, min_p=0.02)),
}


@pytest.fixture(scope="module")
def peaky():
    """A tiny model with logits of standard deviation ~3 (a scaled output matrix), so that the
    filters cut real probability mass; its sampler and the exact next-token logits."""
    cfg = models.tiny_config("llama")
    model = models.build(cfg, seed=4)
    model.lm_head.kernel.set_value(model.lm_head.kernel.get_value() * 20.0)
    graphdef, params = nnx.split(model)
    sampler = make_sampler(graphdef, cfg, max_new_tokens=1, prompt_buckets=(8,),
                           stop_token_ids=())
    prompt = [list(np.random.default_rng(5).integers(3, cfg.vocab_size, 7))]
    logits = np.asarray(model(jnp.asarray(prompt)))[:, -1]
    return sampler, params, prompt, logits


def _chi_square_p(counts, probs):
    """p-value of Pearson's chi-square test of counts against probs (bins with an expected
    count below 5 pooled); 0 when a token of probability 0 was drawn."""
    from scipy import stats

    if counts[probs == 0].sum() > 0:
        return 0.0
    expected = probs / probs.sum() * counts.sum()
    big = expected >= 5
    obs = np.append(counts[big], counts[~big].sum())
    exp = np.append(expected[big], expected[~big].sum())
    obs, exp = obs[exp > 0], exp[exp > 0]
    return float(stats.chi2.sf(np.sum((obs - exp) ** 2 / exp), df=len(exp) - 1))


@pytest.mark.parametrize("case", sorted(DISTRIBUTIONS))
def test_first_token_distribution_matches_transformers_warpers(peaky, case):
    """20,000 first tokens of one prompt: the chi-square test against the exact warped
    distribution accepts (p > 1e-3) and rejects a slightly wrong filter (p < 1e-6)."""
    sampler, params, prompt, logits = peaky
    settings, wrong = DISTRIBUTIONS[case]
    out = sampler(params, prompt, jax.random.key(7), settings, n=N_SAMPLES)
    counts = np.bincount(np.asarray(out.tokens_BT[:, 0]), minlength=logits.shape[-1])

    def exact(s):
        return torch.softmax(_hf_warped(logits, s), dim=-1).numpy()[0].astype(np.float64)

    p_right, p_wrong = exact(settings), exact(wrong)
    tv = 0.5 * np.abs(counts / N_SAMPLES - p_right).sum()
    print(f"{case}: support {int((p_right > 0).sum())}, TV {tv:.4f}, "
          f"p {_chi_square_p(counts, p_right):.3g}, wrong p {_chi_square_p(counts, p_wrong):.3g}")
    assert _chi_square_p(counts, p_right) > 1e-3
    assert _chi_square_p(counts, p_wrong) < 1e-6
    # the sampling log-probs are those of the exact distribution
    np.testing.assert_allclose(np.exp(np.asarray(out.logps_BT[:, 0])),
                               p_right[np.asarray(out.tokens_BT[:, 0])], rtol=1e-4)


def test_top_k_ties_past_the_candidates_keep_every_tied_token():
    """70 tokens tie for the largest logit: transformers' top-k (k=5) keeps all 70, more than
    the lax.top_k candidates hold, so the draw falls back to the whole vocabulary."""
    logits = np.random.default_rng(0).normal(size=(1, 256)).astype(np.float32)
    tied = np.arange(10, 80)
    logits[0, tied] = 9.0
    settings = SamplingParams(1.0, top_k=5)
    assert np.isfinite(np.asarray(_hf_warped(logits, settings))).sum() == 70
    batch = jnp.broadcast_to(jnp.asarray(logits), (N_SAMPLES, 256))
    tok, logp, _ = jax.jit(draw)(batch, settings.arrays(), jax.random.key(0))
    counts = np.bincount(np.asarray(tok), minlength=256)
    assert set(np.flatnonzero(counts)) == set(tied)
    probs = np.zeros(256)
    probs[tied] = 1 / 70
    assert _chi_square_p(counts, probs) > 1e-3
    np.testing.assert_allclose(np.asarray(logp), np.log(1 / 70), rtol=1e-5)


# --------------------------------------------------------------------------------------------
# Greedy against transformers' generate; stops, masks, n samples, seeds, compilations.
# --------------------------------------------------------------------------------------------


def _hf_generate(hf, ids, mask, new, eos):
    with torch.no_grad():
        out = hf.generate(torch.tensor(ids, dtype=torch.long),
                          attention_mask=torch.tensor(mask, dtype=torch.long), do_sample=False,
                          max_new_tokens=new, eos_token_id=eos, pad_token_id=0)
    return out[:, ids.shape[1]:].numpy()


@pytest.mark.parametrize("name", ["llama", "qwen2_biases", "mistral_sliding_window"])
def test_greedy_matches_transformers_generate(name, tmp_path):
    """Left-padded uneven prompts, greedy with transformers' KV cache, stopping at an EOS that
    some rows produce: the same tokens, row by row, and the same stopping points."""
    cfg = models.tiny_config(**FAMILIES[name])
    torch.manual_seed(0)
    hf = transformers.AutoModelForCausalLM.from_config(
        transformers.AutoConfig.for_model(**models.to_hf_config(cfg))).eval()
    hf.save_pretrained(str(tmp_path))
    model, cfg = models.load_hf(str(tmp_path))
    ids, mask = pad_prompts(prompts(cfg.vocab_size, seed=2), (BUCKET,), 0)
    new = 12
    free = _hf_generate(hf, ids, mask, new, eos=None)
    eos = int(free[0, 4])  # row 0 stops at step 4 (or earlier if it appears before)
    ref = _hf_generate(hf, ids, mask, new, eos=eos)
    graphdef, params = nnx.split(model)
    sampler = make_sampler(graphdef, cfg, max_new_tokens=new, prompt_buckets=(BUCKET,),
                           stop_token_ids=(eos,), pad_token_id=0)
    out = sampler(params, {"input_ids": ids, "attention_mask": mask}, 0, GREEDY)
    stops = 0
    for row in range(len(ids)):
        n = int(out.mask_BT[row].sum())
        hits = np.flatnonzero(ref[row] == eos)
        expect = ref[row, :hits[0] + 1] if len(hits) else ref[row]
        np.testing.assert_array_equal(np.asarray(out.tokens_BT[row, :n]), expect, err_msg=row)
        assert out.finish_reasons()[row] == ("stop" if len(hits) else "length")
        stops += bool(len(hits))
    assert stops >= 1


@pytest.fixture(scope="module")
def tiny():
    """A tiny llama and a sampler of 12 tokens that never stops early."""
    cfg = models.tiny_config("llama")
    model = randomised(cfg, seed=2)
    graphdef, params = nnx.split(model)
    free = make_sampler(graphdef, cfg, max_new_tokens=12, prompt_buckets=(BUCKET,),
                        stop_token_ids=(), pad_token_id=0)
    return cfg, free, graphdef, params


def test_stop_tokens_masks_and_early_exit(tiny):
    """A set of stop tokens ends each row at its first stop token (kept, mask 1, then the pad
    id under mask 0), and the decode loop exits once every row has stopped."""
    cfg, sampler, graphdef, params = tiny
    new = sampler.max_new_tokens
    free = sampler(params, prompts(cfg.vocab_size), 0, GREEDY)
    tokens = np.asarray(free.tokens_BT)
    assert int(free.num_steps) == new and free.finish_reasons() == ["length"] * len(tokens)
    stops = sorted({int(t) for t in tokens[:, 2]})  # every row stops by step 2
    out = make_sampler(graphdef, cfg, max_new_tokens=new, prompt_buckets=(BUCKET,),
                       stop_token_ids=stops, pad_token_id=0)(params, prompts(cfg.vocab_size),
                                                             0, GREEDY)
    first = [int(np.flatnonzero(np.isin(row, stops))[0]) for row in tokens]
    assert int(out.num_steps) == max(first) + 1 < new
    for row, f in enumerate(first):
        np.testing.assert_array_equal(np.asarray(out.tokens_BT[row, :f + 1]), tokens[row, :f + 1])
        assert np.all(np.asarray(out.tokens_BT[row, f + 1:]) == 0)
        np.testing.assert_array_equal(np.asarray(out.mask_BT[row]), np.arange(new) <= f)
        assert np.all(np.asarray(out.model_logps_BT[row, f + 1:]) == 0)
    assert out.finish_reasons() == ["stop"] * len(tokens)


def test_n_samples_and_seed(tiny):
    cfg, sampler, _, params = tiny
    ps = prompts(cfg.vocab_size)
    a = sampler(params, ps, jax.random.key(1), SamplingParams(1.0), n=3)
    b = sampler(params, ps, jax.random.key(1), SamplingParams(1.0), n=3)
    c = sampler(params, ps, jax.random.key(2), SamplingParams(1.0), n=3)
    assert a.tokens_BT.shape == (len(ps) * 3, 12)
    np.testing.assert_array_equal(np.asarray(a.tokens_BT), np.asarray(b.tokens_BT))
    assert not np.array_equal(np.asarray(a.tokens_BT), np.asarray(c.tokens_BT))
    rows = np.asarray(a.tokens_BT).reshape(len(ps), 3, 12)
    assert all(len({tuple(s) for s in r}) > 1 for r in rows)  # the n samples differ
    ids, _ = pad_prompts(ps, (BUCKET,), sampler.pad_token_id)
    np.testing.assert_array_equal(np.asarray(a.prompt_ids_BP), np.repeat(ids, 3, axis=0))
    g = np.asarray(sampler(params, ps, 0, GREEDY, n=3).tokens_BT)
    np.testing.assert_array_equal(g[0::3], g[1::3])
    np.testing.assert_array_equal(g[0::3], g[2::3])


def test_one_compilation_per_bucket(tiny):
    """Prompts of other lengths in the same bucket and other settings reuse the compilation;
    a prompt of the next bucket compiles once more."""
    cfg, _, graphdef, params = tiny
    sampler = make_sampler(graphdef, cfg, max_new_tokens=4, prompt_buckets=(8, 16),
                           stop_token_ids=())
    v = cfg.vocab_size
    sampler(params, prompts(v, (3, 8)), 0, GREEDY)
    sampler(params, prompts(v, (1, 5)), 1, SamplingParams(0.8, top_k=5, top_p=0.9, min_p=0.1))
    sampler(params, prompts(v, (7, 7)), 2, SamplingParams(1.2, top_p=0.5))
    assert sampler.traces == 1
    sampler(params, prompts(v, (9, 2)), 0, GREEDY)
    assert sampler.traces == 2


def test_bad_input_names_the_setting(tiny):
    cfg, _, graphdef, params = tiny
    sampler = make_sampler(graphdef, cfg, max_new_tokens=4, prompt_buckets=(8,),
                           stop_token_ids=())
    with pytest.raises(ValueError, match=r"prompts\[1\] is empty"):
        sampler(params, [[5, 6], []], 0)
    with pytest.raises(ValueError, match=r"prompts\[0\] has 9 tokens.*prompt_buckets=\(8,\)"):
        sampler(params, [list(range(3, 12))], 0)
    with pytest.raises(ValueError, match=r"max_new_tokens=128.*max_position_embeddings=128"):
        make_sampler(graphdef, cfg, max_new_tokens=128)
    long = make_sampler(graphdef, cfg, max_new_tokens=120, prompt_buckets=(16,))
    with pytest.raises(ValueError, match=r"max_new_tokens=120: a prompt of 9 tokens"):
        long(params, [list(range(3, 12))], 0)
    with pytest.raises(ValueError, match=r"prompt_buckets"):
        make_sampler(graphdef, cfg, max_new_tokens=4, prompt_buckets=(0,))
    with pytest.raises(ValueError, match=r"left-padded"):
        sampler(params, {"input_ids": np.ones((1, 4)), "attention_mask": [[1, 1, 0, 0]]}, 0)
    for field, value in (("temperature", -1.0), ("top_k", -2), ("top_p", 0.0), ("min_p", 1.5)):
        with pytest.raises(ValueError, match=f"SamplingParams.{field}"):
            SamplingParams(**{field: value})
    with pytest.raises(ValueError, match=r"n=0"):
        sampler(params, [[5, 6]], 0, n=0)
