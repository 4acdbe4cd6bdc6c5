"""Values aligned to actions (`logprobs.values_before_tokens`) and GAE through a real critic."""

import jax.numpy as jnp
import numpy as np

from alignjax import logprobs, models
from alignjax.losses import gae

CFG = models.tiny_config("llama")


def _critic_and_batch():
    critic = models.build(CFG, head="scalar", seed=3)
    rng = np.random.default_rng(0)
    ids = rng.integers(3, CFG.vocab_size, (2, 9)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, 7:] = 0  # right padding on the second row
    response = np.zeros_like(ids)
    response[0, 4:9] = 1  # prompt of 4 tokens, response of 5
    response[1, 3:7] = 1  # prompt of 3 tokens, response of 4
    return critic, ids, mask, response


def test_value_at_t_is_the_value_of_the_prefix_before_token_t():
    critic, ids, mask, response = _critic_and_batch()
    aligned = np.asarray(logprobs.values_before_tokens(critic(jnp.asarray(ids),
                                                              jnp.asarray(mask))))
    assert np.all(aligned[:, 0] == 0.0)
    for b in range(2):
        span = np.flatnonzero(response[b])
        for t in (span[0], span[len(span) // 2], span[-1]):  # first, middle and last action
            prefix = critic(jnp.asarray(ids[b:b + 1, :t]), jnp.asarray(mask[b:b + 1, :t]))
            np.testing.assert_allclose(aligned[b, t], float(prefix[0, -1]), rtol=1e-5, atol=1e-6)


def _gae_by_hand(rewards, values, gamma, lam):
    """A_t = sum_k (gamma lam)^k delta_{t+k}, delta_t = r_t + gamma V_{t+1} - V_t, V_end = 0."""
    n = len(rewards)
    v_next = np.append(values[1:], 0.0)
    deltas = rewards + gamma * v_next - values
    return np.array([sum((gamma * lam) ** k * deltas[t + k] for k in range(n - t))
                     for t in range(n)])


def test_gae_on_critic_outputs_matches_a_hand_computation():
    critic, ids, mask, response = _critic_and_batch()
    values = np.asarray(critic(jnp.asarray(ids), jnp.asarray(mask)))
    aligned = logprobs.values_before_tokens(jnp.asarray(values))
    rewards = np.zeros(ids.shape, np.float32)
    for b, score in enumerate((1.5, -0.5)):  # the score on the last response token
        rewards[b, np.flatnonzero(response[b])[-1]] = score
    rewards[0, 5] = -0.1  # a per-token penalty inside the response
    gamma, lam = 0.9, 0.8
    adv, ret = gae(jnp.asarray(rewards), aligned, jnp.asarray(response), gamma=gamma, lam=lam)
    for b in range(2):
        span = np.flatnonzero(response[b])
        # V(state before token t): the critic's output at position t - 1
        expected = _gae_by_hand(rewards[b, span], values[b, span - 1], gamma, lam)
        np.testing.assert_allclose(np.asarray(adv)[b, span], expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.asarray(ret)[b, span], expected + values[b, span - 1],
                                   rtol=1e-5, atol=1e-6)
        # without the shift the baseline of each action would be off by one token
        wrong = _gae_by_hand(rewards[b, span], values[b, span], gamma, lam)
        assert np.abs(wrong - expected).max() > 1e-3
