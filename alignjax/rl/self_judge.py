"""The model as its own judge (self-rewarding): an LLM-as-judge prompt, read as a rating.

Self-rewarding language models (Yuan et al. 2024) score their own samples with a judging
prompt and train DPO on the best and the worst. Here the judge is the policy itself, asked
`JUDGE_TEMPLATE` about one (request, response) with a stated criterion, and its score is the
expected rating under its next-token distribution over the digits 1 to 5 (as G-Eval reads a
rating: sum_r r * p(r), the probabilities renormalised over the five digits) from one forward
pass. Yuan et al. sample the judgement three times and average the parsed scores; the
expectation is that average's limit, without the parsing failures of a 135M-parameter model.

`agreement` measures how often the model's ordering of two samples of one prompt agrees with an
independent reward (VADER, a trained reward model): the number to report beside a
self-rewarding run.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from alignjax import data as data_lib
from alignjax import sampler, sharding
from alignjax.evaluate import wilson_interval

JUDGE_TEMPLATE = (
    "Review the user's request and the response below, and rate the response from 1 to 5 on "
    "this criterion: {criterion}\n"
    "1 means it fails the criterion completely, 5 means it meets it perfectly.\n\n"
    "Request: {request}\n\nResponse: {response}\n\n"
    "Reply with the rating only: a single digit from 1 to 5.")

RATINGS = ("1", "2", "3", "4", "5")


def rating_token_ids(tokenizer) -> list[int]:
    """The token ids of the digits 1..5.

    Raises:
      ValueError when a digit is not one token of the tokenizer.
    """
    ids = []
    for r in RATINGS:
        toks = tokenizer(r, add_special_tokens=False).input_ids
        if len(toks) != 1:
            raise ValueError(f"self judge: the rating {r!r} is {len(toks)} tokens of this "
                             "tokenizer; it needs one token per digit")
        ids.append(int(toks[0]))
    return ids


class SelfJudge:
    """Scores (request, response) pairs by the expected rating of a model under the template.

    Args:
      graphdef: the model's structure (scored with whatever parameters are passed in).
      tokenizer: its tokenizer (chat template applied).
      criterion: what a rating of 5 means (e.g. "the review is positive and enthusiastic").
      mesh: the mesh of the run.
      batch: rows per compiled forward (the last batch is padded with copies).
      buckets: judge-prompt lengths compiled for (left padding).
    """

    def __init__(self, graphdef, tokenizer, criterion: str, mesh, *, batch: int = 16,
                 buckets: Sequence[int] = (192, 256, 384)):
        if not criterion.strip():
            raise ValueError("config.self_judge.criterion: empty; say what a rating of 5 means")
        self.tokenizer, self.criterion, self.mesh = tokenizer, criterion, mesh
        self.batch, self.buckets = batch, tuple(buckets)
        self.renderer = data_lib.ChatRenderer(tokenizer)
        digits = jnp.asarray(rating_token_ids(tokenizer), jnp.int32)

        def ratings(params, ids_BP, mask_BP):
            model = nnx.merge(graphdef, params)
            h_BD = model.hidden(ids_BP, mask_BP)[:, -1]  # left-padded: the last position
            w_D5 = model.output_embedding()[:, digits].astype(jnp.float32)
            # log-softmax over the five digits: the full softmax renormalised over them
            logp_B5 = jax.nn.log_softmax(h_BD.astype(jnp.float32) @ w_D5, axis=-1)
            return jnp.exp(logp_B5) @ jnp.arange(1.0, 6.0)

        self._ratings = sharding.under(mesh, jax.jit(ratings))

    def prompt_ids(self, request: str, response: str) -> list[int]:
        text = JUDGE_TEMPLATE.format(criterion=self.criterion, request=request,
                                     response=response)
        chat = self.renderer.prompt([{"role": "user", "content": text}])
        return self.tokenizer(chat, add_special_tokens=False).input_ids

    def __call__(self, params, requests: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        """[N] expected ratings in [1, 5] of the responses to the requests.

        Raises:
          ValueError naming the row when a judge prompt is longer than the largest bucket.
        """
        ids = [self.prompt_ids(q, a) for q, a in zip(requests, responses, strict=True)]
        for i, row in enumerate(ids):
            if len(row) > self.buckets[-1]:
                raise ValueError(f"self judge: row {i}'s judging prompt has {len(row)} tokens, "
                                 f"over the largest bucket {self.buckets[-1]} "
                                 "(config.self_judge.buckets)")
        out = []
        for start in tqdm(range(0, len(ids), self.batch), desc="self judge", unit="batch",
                          leave=False, disable=not sharding.is_main_process()):
            chunk = ids[start:start + self.batch]
            real = len(chunk)
            chunk = chunk + [chunk[-1]] * (self.batch - real)
            ids_BP, mask_BP = sampler.pad_prompts(chunk, self.buckets,
                                                  self.tokenizer.pad_token_id)
            out.append(sharding.to_host(self._ratings(params, ids_BP, mask_BP))[:real])
        return np.concatenate(out).astype(np.float64) if out else np.zeros(0)


def agreement(judged: np.ndarray, true: np.ndarray, n: int, *, tie: float = 1e-9
              ) -> dict[str, float]:
    """How often the judge orders two samples of one prompt as the true reward does.

    Args:
      judged, true: [P * n] scores, prompt-major (rows i * n ... i * n + n - 1 share a prompt).
      n: samples per prompt.
      tie: differences at most this large in the true reward are ties and not counted.

    Returns:
      pairs (compared), agree (count), agreement rate and its 95% Wilson interval, and the
      rate a coin would get (0.5).
    """
    judged, true = np.asarray(judged, np.float64), np.asarray(true, np.float64)
    if judged.shape != true.shape or len(judged) % n:
        raise ValueError(f"agreement: {judged.shape} judged and {true.shape} true scores do "
                         f"not make groups of {n}")
    agree = pairs = 0.0
    for g in range(0, len(true), n):
        for i in range(g, g + n):
            for j in range(i + 1, g + n):
                dt = true[i] - true[j]
                if abs(dt) <= tie:
                    continue
                pairs += 1
                dj = judged[i] - judged[j]
                agree += 1.0 if dj * dt > 0 else (0.5 if dj == 0 else 0.0)
    low, high = wilson_interval(agree, pairs) if pairs else (0.0, 1.0)
    return {"pairs": int(pairs), "agree": agree, "agreement": agree / pairs if pairs else 0.0,
            "agreement_ci95_low": low, "agreement_ci95_high": high, "chance": 0.5}
