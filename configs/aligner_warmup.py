"""Aligner with the copy warm-up: identity corrections (x, y_o, y_o) first, then (x, y_o, y_c).

Data: Aligner-2B corrections of GPT-4 Turbo answers on AlpacaEval; 100 triplets held out.
`aligner.copy_warmup_steps` steps on the training triplets with an `aligner.copy_share` fraction
of their corrections replaced by the answer itself, then `steps` steps on the corrections; the
copy rate (held-out corrections identical to their input answer, greedy decoding) is measured
before, after the warm-up and at the end (workdir/copy_rate.json; alignjax/aligner.py).

Command:
  python -m alignjax.main --config configs/aligner_warmup.py --workdir runs/aligner_warmup

Hardware: 2 CPU cores (float32). Measured (experiments/RESULTS.md, "Aligner end to end"; commit
63b15cc, 26 min): copy rate on the 13 held-out triplets whose answer is under 128 tokens 7.7%
before, 15.4% after the warm-up, 7.7% at the end; held-out correction NLL 2.080 after the
warm-up, 2.027 at the end. tests/test_aligner_job.py runs the job on a tiny random model.
"""

import ml_collections

from configs import aligner


def get_config(arg=None):
    del arg
    c = aligner.get_config()
    c.job = "aligner_train"
    c.steps = 20  # on the corrections, after the warm-up
    c.batch_size = 8
    c.eval_batch_size = 8
    c.eval_every = 20
    c.eval_at_start = False
    c.checkpoint_every = 10
    c.data.eval_size = 100  # held out: never trained on; aligner_stack corrects their answers
    c.data.max_length = 256
    c.data.max_prompt_length = 128
    c.data.buckets = (128, 256)
    c.aligner = ml_collections.ConfigDict()
    c.aligner.copy_warmup_steps = 10  # 0: no warm-up
    c.aligner.copy_share = 1.0  # of the warm-up triplets, the fraction made identity copies
    c.aligner.copy_eval_size = 16  # held-out triplets decoded for the copy rate (of those
    # whose answer is shorter than max_new_tokens)
    c.aligner.max_new_tokens = 128
    c.aligner.prompt_buckets = (128, 256)  # longer prompts keep their end
    c.aligner.sample_batch = 8
    return c
