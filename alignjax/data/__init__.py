"""The data pipeline: read, parse, split, tokenize through the chat template, pack, batch.

The modules in the order the data flows through them (each imports only those above it):

    records.py       example types (SFTExample, PairExample, ...), counter names, as_sft, unpair
    readers.py       files -> raw rows: JSON / JSONL(.gz) / Parquet, hf: datasets
    hh_rlhf.py       HH-RLHF transcripts -> chat messages
    formats.py       raw rows -> examples, one parser per record format (FORMATS)
    tfds_builder.py  prepares local files as a TFDS dataset, and reads it back (optional)
    load.py          load_examples: source names -> examples + counts (readers, then formats)
    embedded.py      data shipped inside the package (the quickstart pairs)
    splits.py        split_examples: the train / held-out examples that `config.data` selects
    chat.py          chat-template rendering with the spans of trained tokens; the Aligner's
                     correction prompts
    truncation.py    what to keep of an over-long example
    tokenization.py  examples -> token ids + trained-token masks (TokenizedData)
    packing.py       several short examples per row, for SFT and corrections
    collate.py       rows -> padded batch arrays, per example kind (COLLATORS)
    pipeline.py      the grain pipeline: shuffle, bucket, batch, shard, checkpointable

    rows = readers.read_rows(path)                 # JSON / JSONL(.gz) / Parquet, hf:, tfds:
    examples, counts = load_examples(path, "hh_rlhf")      # formats.FORMATS; quality counts
    train_ex, eval_ex, counts = split_examples(config, workdir)   # as config.data says
    data = tokenize(examples, tok, max_length=512)         # ids + trained-token masks
    data = pack(data, 512)                                 # optional, SFT / corrections
    it = batch_iterator(data, batch_size=32, seed=0, num_epochs=None, bucket_lengths=(256, 512))
    batch = next(it); state = it.get_state()               # JSON-serialisable, for the checkpoint

Batches are dicts of numpy arrays with fixed names; B is this host's rows (global batch size /
hosts), L a bucket length (`collate.bucket_length`). All arrays are int32 unless noted.

  sft         input_ids [B, L]       token ids, right-padded with the pad id
              attention_mask [B, L]  1 on real tokens, 0 on padding
              loss_mask [B, L]       1 on the tokens to predict (assistant contents + EOS),
                                     aligned with input_ids: log pi(input_ids[:, t]) counts where
                                     loss_mask[:, t] = 1 (column 0 is always 0)
              example_id [B]         index into the examples given to `tokenize`; -1 = padding row
  correction  as sft, plus correction_start [B]: index of the first correction token (the loss
              mask is 1 on the correction and its EOS only). The prompt before it is
              `chat.correction_prompt`: `tokenize(..., template="chat")` (the instruction
              through the chat template) or "aligner" (the authors' training prompt, byte
              for byte; `config.data.template`)
  unpaired    as sft, plus label [B] (bool, True = desirable), for KTO; examples from
              `as_unpaired` add kl_input_ids, kl_attention_mask, kl_loss_mask [B, L]: the
              prompt followed by another prompt's completion (the KL reference point)
  pair        chosen_input_ids, chosen_attention_mask, chosen_loss_mask [B, L], the same with
              rejected_, and example_id [B]. Both halves share L, so a training step can
              concatenate them into one [2B, L] forward pass and split the result after it.
  prompt      input_ids, attention_mask [B, L], LEFT-padded (generation appends on the right);
              example_id [B]
  packed      input_ids, attention_mask, loss_mask [B, L] and
              segment_ids [B, L]             1, 2, ... per packed example, 0 on padding
              positions [B, L]               0, 1, ... restarting at each example
              (pass segment_ids and positions to the model: no attention across examples)

Counts (a `collections.Counter`, names in `records`): rows, malformed_skipped,
identical_pairs_dropped, no_preference_dropped, hh_prompt_from_common_prefix,
empty_response_kept, empty_response_dropped, examples, truncated_prompt, truncated_response,
dropped_too_long, tokenized, packed_rows. Every row read is kept or counted as dropped:
rows = examples + malformed_skipped + identical_pairs_dropped + no_preference_dropped +
empty_response_dropped; a damaged line counts as a row (malformed when skipped).

The real data lives outside the repository: `readers.shared_data_dir()` reads
`$ALIGNJAX_SHARED_DATA` (default `../shared/data` next to the repository root).
"""

from alignjax.data.chat import ALIGNER_INSTRUCTION, ChatRenderer, aligner_prompt, correction_prompt
from alignjax.data.collate import COLLATORS, bucket_length
from alignjax.data.embedded import write_quickstart
from alignjax.data.formats import FORMATS, parse_rows
from alignjax.data.load import load_examples
from alignjax.data.packing import pack
from alignjax.data.pipeline import batch_dataset, batch_iterator, steps_per_epoch
from alignjax.data.readers import read_hf_rows, read_rows, shared_data_dir
from alignjax.data.records import (
    CorrectionExample,
    MalformedRowError,
    PairExample,
    PromptExample,
    SFTExample,
    UnpairedExample,
    as_sft,
    as_unpaired,
    prompts_of,
    unpair,
)
from alignjax.data.splits import resolve_sources, split_examples, tokenize_kwargs
from alignjax.data.tokenization import TokenizedData, tokenize

__all__ = [
    "ALIGNER_INSTRUCTION",
    "COLLATORS",
    "FORMATS",
    "ChatRenderer",
    "CorrectionExample",
    "MalformedRowError",
    "PairExample",
    "PromptExample",
    "SFTExample",
    "TokenizedData",
    "UnpairedExample",
    "aligner_prompt",
    "as_sft",
    "as_unpaired",
    "batch_dataset",
    "batch_iterator",
    "correction_prompt",
    "bucket_length",
    "load_examples",
    "pack",
    "parse_rows",
    "prompts_of",
    "read_hf_rows",
    "read_rows",
    "read_tfds_rows",
    "resolve_sources",
    "shared_data_dir",
    "split_examples",
    "steps_per_epoch",
    "tokenize",
    "tokenize_kwargs",
    "unpair",
    "write_quickstart",
]


def __getattr__(name: str):
    # read_tfds_rows needs the optional tensorflow-datasets: imported when first asked for
    if name == "read_tfds_rows":
        from alignjax.data.tfds_builder import read_tfds_rows

        return read_tfds_rows
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
