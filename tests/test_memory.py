"""The memory plan (alignjax.memory) on a tiny model: exact terms against closed forms."""

import os

import pytest
from test_train import _load, small

from alignjax import memory, models

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def dpo_plan(tiny_model_dir):
    config = small(_load(os.path.join(REPO, "configs", "dpo.py")), tiny_model_dir)
    config.ref_cache = False  # the reference model is held in memory
    config.data.max_length = 32
    config.plan.device_memory_gb = 1e-4
    config.plan.sample_batch, config.plan.sample_length = 4, 48
    return config, memory.plan(config)


def test_exact_terms_follow_the_parameter_count(dpo_plan, tiny_model_dir):
    config, plan = dpo_plan
    cfg = models.load_hf_config(tiny_model_dir)
    terms = plan["terms"]
    p = cfg.num_params() * 4  # float32 master weights, one device
    assert terms["parameters"] == terms["gradients"] == terms["reference model"] == p
    # Adam's mu and nu, its count and the schedule's (int32), the step (int32), the RNG key
    assert terms["optimiser state"] == 2 * p + 4 + 4 + 4 + 8
    # chosen and rejected: input_ids, attention_mask, loss_mask, int32 [B, L]
    assert terms["batch"] == 2 * 3 * config.batch_size * 32 * 4
    # keys and values of every layer, [B, G, S, K] in the compute dtype
    assert terms["KV cache"] == 2 * cfg.num_layers * 4 * cfg.num_kv_heads * 48 * cfg.head_dim * 4
    assert terms["activations"] > 0
    assert plan["total"] == sum(terms.values())


def test_a_plan_over_the_device_memory_names_its_largest_term_and_what_to_change(dpo_plan):
    _, plan = dpo_plan
    assert not plan["fits"]
    assert plan["largest"] == max(plan["terms"], key=plan["terms"].get)
    assert plan["advice"] and any("ref_cache" in a or "remat" in a for a in plan["advice"])
    text = memory.format_plan(plan)
    assert "DOES NOT FIT" in text and f"largest term: {plan['largest']}" in text


def test_kv_cache_shards_rows_over_data_fsdp_and_heads_over_tensor(tiny_model_dir):
    cfg = models.load_hf_config(tiny_model_dir)
    whole = memory.kv_cache_bytes(cfg, {"data": 1, "fsdp": 1, "tensor": 1}, rows=8, slots=26)
    split = memory.kv_cache_bytes(cfg, {"data": 2, "fsdp": 2, "tensor": 2}, rows=8, slots=26)
    assert split * 8 == whole
