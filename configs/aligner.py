"""Aligner: SmolLM2-135M-Instruct learns to correct upstream answers.

Data: Aligner-2B corrections of GPT-4 Turbo answers on AlpacaEval.

Command:
  python -m alignjax.main --config configs/aligner.py --workdir runs/aligner

Hardware: 2 CPU cores (float32). Runtime: 15 minutes measured beside the test suite (30 steps of
8 triplets of at most 256 tokens; two evaluations of 100 held-out triplets). Peak RSS 12.8 GB.
Result (measured, experiments/RESULTS.md): the held-out NLL of the corrections given question and
answer (eval/sft/nll, -log mu(y_c | y_o, x) per token) falls from 2.136 to 2.021.
"""

from configs import common


def get_config(arg=None):
    del arg
    c = common.base("aligner")
    c.steps = 30
    c.eval_every = 30
    c.data.train = "shared:aligner/alpaca_eval_aligner-2b_corrects_gpt-4-turbo-2024-04-09.json"
    c.data.format = "alpaca_eval_aligner"
    # the correction prompt: "chat" (the instruction through the chat template) or "aligner"
    # (the authors' training prompt, byte for byte; alignjax.data.chat.correction_prompt)
    c.data.template = "chat"
    c.data.eval_size = 100
    c.data.max_length = 256
    c.data.max_prompt_length = 128
    c.data.buckets = (128, 256)
    c.optim.learning_rate = 2e-5
    c.optim.warmup_steps = 3
    return c
