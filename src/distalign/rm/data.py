"""The pairs a reward model trains on: tokenised once (cached by ``datasets``), label-free
off-prompt pairs added on request, batched by length or by prompt for each epoch, and collated
(prompt-shared rows, ratings for the margin and pointwise terms). ``rm/train.py`` is the loop
that consumes them.
"""

from __future__ import annotations

import itertools
import logging
import os

import torch
from datasets import Dataset, Features, Sequence, Value, concatenate_datasets

from distalign.config import order_seed
from distalign.data.formats import (
    TOKEN_COLUMNS,
    PreferenceFormatError,
    common_prefix_length,
    read_number,
)
from distalign.data.load import (
    LoadReport,
    evaluates_on_training_data,
    held_out_or_training,
    hub_options,
    iter_source_rows,
    load_preferences,
    require_pairs,
)
from distalign.data.pairs import (
    PairCollator,
    SharedPrefixCollator,
    length_grouped_batches,
    off_prompt_pairs,
    prompt_grouped_batches,
    silent_note,
    silent_template_inputs,
    templated_note,
    templated_text,
    tokenize_pairs,
    truncate_pair,
)
from distalign.models.templates import fit_rendering
from distalign.rm.config import RMTrainConfig

log = logging.getLogger(__name__)

TRAIN_COLUMNS = ("prompt_ids", "chosen_ids", "rejected_ids", "length", "chosen_score",
                 "rejected_score", "margin")  # fmt: skip
_IDS = Sequence(Value("int64"))
TOKEN_FEATURES = Features({
    "prompt_ids": _IDS, "chosen_ids": _IDS, "rejected_ids": _IDS, "length": Value("int64"),
    "chosen_score": Value("float64"), "rejected_score": Value("float64"),
    "margin": Value("float64"), "source_row": Value("int64"),
})  # fmt: skip


def _token_columns(row) -> tuple[str, str] | None:
    if not isinstance(row, dict):
        return None
    return next((pair for pair in TOKEN_COLUMNS if all(c in row for c in pair)), None)


def _token_ids(value, where: str, field: str, vocab: int) -> list[int]:
    if not isinstance(value, list | tuple) or not value:
        raise PreferenceFormatError(where, field, "expected a non-empty list of token ids")
    if not all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x < vocab for x in value):
        raise PreferenceFormatError(
            where, field, f"expected token ids in [0, {vocab}) of the model's tokenizer"
        )
    return list(value)


def _unpadded(row, column: str, ids: list[int], where: str) -> list[int]:
    """``ids`` without the positions its attention mask leaves out, where the row has one
    (the RewardTrainer's before TRL 0.13: ``attention_mask_chosen`` beside
    ``input_ids_chosen``), so that pre-padded rows are not trained on their padding."""
    name = column.replace("input_ids", "attention_mask")
    mask = row.get(name) if name != column else None
    if mask is None:
        return ids
    if not isinstance(mask, list | tuple) or len(mask) != len(ids):
        raise PreferenceFormatError(where, name, f"expected {len(ids)} 0/1 values, one per id")
    kept = [t for t, m in zip(ids, mask, strict=True) if m]
    if not kept:
        raise PreferenceFormatError(where, name, "masks every token")
    return kept


def _row_ids(row, column: str, where: str, vocab: int) -> list[int]:
    """A tokenised row's ids of ``column``, checked, without its padding (``_unpadded``)."""
    return _unpadded(row, column, _token_ids(row.get(column), where, column, vocab), where)


def token_pairs(cfg: RMTrainConfig, tokenizer, rows, columns: tuple[str, str], source, limit):
    """TRL's tokenised rows (``rows``: (where, row) pairs; ``columns``: their two id
    columns) as pairs: each pair's shared first tokens are its prompt (each reply keeps at
    least one token), cut to max_length as text pairs are. The model reads each sequence as
    given, as TRL does."""
    vocab = len(tokenizer)
    out, skipped, identical, cut = [], 0, 0, 0
    for i, (where, row) in enumerate(rows):
        if limit and len(out) >= limit:
            break
        try:
            if isinstance(row, Exception):  # a line the reader could not parse
                raise row
            if not isinstance(row, dict):
                raise PreferenceFormatError(where, None, f"expected an object, got {row!r}")
            chosen, rejected = (_row_ids(row, c, where, vocab) for c in columns)
            margin = read_number(row, "margin", where)
        except PreferenceFormatError:
            if not cfg.skip_bad_rows:
                raise
            skipped += 1
            continue
        if chosen == rejected:
            identical += 1
            continue
        shared = min(common_prefix_length(chosen, rejected), len(chosen) - 1, len(rejected) - 1)
        cut += max(len(chosen), len(rejected)) > cfg.max_length
        prompt, (c, r) = truncate_pair(
            chosen[:shared], (chosen[shared:], rejected[shared:]), cfg.max_length,
            cfg.max_prompt_length,
        )  # fmt: skip
        out.append({
            "prompt_ids": prompt, "chosen_ids": c, "rejected_ids": r,
            "length": len(prompt) + max(len(c), len(r)), "chosen_score": None,
            "rejected_score": None, "margin": margin,
            "source_row": i,
        })  # fmt: skip
    log.log(
        logging.WARNING if identical or skipped or cut else logging.INFO,
        "%s: %d tokenised pairs (TRL's %s/%s columns); identical (dropped): %d; malformed "
        "(skipped): %d; longer than max_length=%d (cut to fit): %d", source, len(out), *columns,
        identical, skipped, cfg.max_length, cut,
    )  # fmt: skip
    return Dataset.from_list(out, features=TOKEN_FEATURES)


def prepare_pairs(cfg: RMTrainConfig, tokenizer, source, split: str, limit: int, hub: dict,
                  said: set[str] | None = None):  # fmt: skip
    """A split's pairs, tokenised: text rows through ``load_preferences`` and the chat
    template, TRL's tokenised rows as they are (the source is read once either way).
    ``said``: the template inputs already said to be written by nothing (for another split;
    a property of the template, said once), updated."""
    rows = iter_source_rows(source, split, **hub)
    first = next(rows)
    rows = itertools.chain([first], rows)
    columns = _token_columns(first[1])
    if columns is not None:
        return token_pairs(cfg, tokenizer, rows, columns, source, limit)
    report = LoadReport(source=str(source))
    ds = load_preferences(
        source,
        split,
        format=cfg.format,
        skip_bad_rows=cfg.skip_bad_rows,
        limit=limit or None,
        source_rows=rows,
        report=report,
        **hub,
    )
    require_pairs(ds, report)
    fit_rendering(tokenizer, report, source)
    pairs = tokenize_pairs(
        ds, tokenizer, cfg.max_length, cfg.max_prompt_length, num_proc=cfg.dataset_num_proc
    )
    said = set() if said is None else said
    if silent := [s for s in silent_template_inputs(tokenizer, ds) if s not in said]:
        log.warning("%s: %s", source, silent_note(silent, cfg.model_name_or_path))
        said.update(silent)
    if marker := templated_text(tokenizer, ds):
        log.warning("%s: %s", source, templated_note(marker, cfg.model_name_or_path))
    report_cut(pairs, source, cfg.max_length, split)
    return pairs


def report_cut(pairs: Dataset, source, max_length: int, split: str | None = None) -> None:
    """Say how many pairs (of ``split``) were cut to fit ``max_length`` (TRL drops such pairs
    instead)."""
    cut = sum(pairs["cut"]) if len(pairs) else 0
    if cut:
        where = source if isinstance(source, str) else "the data set"
        log.warning(
            "%s%s: %d of %d pairs are longer than max_length=%d and were cut to fit (the "
            "oldest turns, then the prompt's start and the replies' ends)",
            where, f" ({split})" if split else "", cut, len(pairs), max_length,
        )  # fmt: skip


# Pairs an evaluation reads when a run evaluates on its training data (no held-out split) and
# max_eval_samples is 0: a data set of 100,000 pairs in one file would otherwise be scored
# whole at every evaluation (TRL evaluates nothing then). 500 pairs put the accuracy within
# about ±0.045 (95 %), enough to follow training.
TRAINING_EVAL_PAIRS = 500


def load_pairs(cfg: RMTrainConfig, tokenizer):
    """Training and held-out pairs, tokenised (the config name and revision apply to the
    held-out set when it is the same hub data set)."""
    hub = hub_options(cfg)
    said: set[str] = set()  # what the template writes nothing for, said once
    train = prepare_pairs(cfg, tokenizer, cfg.dataset_name, cfg.dataset_train_split,
                          cfg.max_train_samples, hub, said)  # fmt: skip
    if cfg.off_prompt_pairs:
        train = add_off_prompt_pairs(train, cfg)
    held_out_hub = hub_options(cfg, own=cfg.eval_dataset_name in (None, cfg.dataset_name))
    source = cfg.eval_dataset_name or cfg.dataset_name

    def load_held_out(split):
        limit = cfg.max_eval_samples
        itself = evaluates_on_training_data(
            cfg.dataset_name, cfg.eval_dataset_name, cfg.dataset_train_split, split
        )  # one file, a Dataset, or the training split of a folder without a test split
        if not limit and itself:
            limit = TRAINING_EVAL_PAIRS
            if os.environ.get("RANK", "0") == "0":
                log.warning(
                    "evaluating on the first %d training pairs at most (max_eval_samples "
                    "sets how many), not on every one at each evaluation", limit,
                )  # fmt: skip
        return prepare_pairs(cfg, tokenizer, source, split, limit, held_out_hub, said)

    held_out = held_out_or_training(cfg, RMTrainConfig.dataset_test_split, load_held_out)
    if os.environ.get("RANK", "0") == "0":  # the sizes transformers' Trainer starts with
        log.info("%d training pairs, %d held-out pairs", len(train), len(held_out))
    return train, held_out


def add_off_prompt_pairs(train, cfg: RMTrainConfig):
    """The training pairs (the columns training reads) plus ``off_prompt_pairs`` times as
    many off-prompt pairs, unrated."""
    train = train.select_columns(TRAIN_COLUMNS)
    n = round(cfg.off_prompt_pairs * len(train))
    rows = off_prompt_pairs(
        train.select_columns(list(TRAIN_COLUMNS[:3])).to_list(),
        n,
        cfg.seed,
        cfg.max_length,
        cfg.max_prompt_length,
    )
    extra = [{**r, "chosen_score": None, "rejected_score": None, "margin": None} for r in rows]
    log.info("added %d off-prompt pairs to the %d training pairs", len(extra), len(train))
    if len(extra) < n:
        log.warning("only %d of %d off-prompt pairs found: too few distinct prompts or "
                    "replies", len(extra), n)  # fmt: skip
    if not extra:  # Dataset.from_list([]) cannot take the features
        return train
    return concatenate_datasets([train, Dataset.from_list(extra, features=train.features)])


def make_collator(cfg: RMTrainConfig, tokenizer):
    if cfg.prefix_sharing:
        inner = SharedPrefixCollator(
            tokenizer.pad_token_id, packing=cfg.packing, pad_to_multiple_of=cfg.pad_to_multiple_of
        )
    else:
        inner = PairCollator(tokenizer.pad_token_id, pad_to_multiple_of=cfg.pad_to_multiple_of)
    return _RatingCollator(inner, cfg.margin_scale)


def epoch_batches(ds, cfg: RMTrainConfig, epoch: int) -> list[list[int]]:
    """The batches of one epoch: deterministic in (seed, epoch), so resume can skip ahead."""
    size = cfg.per_device_train_batch_size
    if cfg.group_by_prompt:
        prompts = [tuple(p) for p in ds["prompt_ids"]]
        return prompt_grouped_batches(prompts, size, seed=order_seed(cfg) + epoch)
    if cfg.group_by_length:
        return length_grouped_batches(ds["length"], size, seed=order_seed(cfg) + epoch)
    g = torch.Generator().manual_seed(order_seed(cfg) + epoch)
    order = torch.randperm(len(ds), generator=g).tolist()
    return [order[i : i + size] for i in range(0, len(order), size)]


class _RatingCollator:
    """Adds to the pair batch ``margin`` (N,) for the scalar loss: the data set's own
    ``margin`` column where a pair has one (TRL's), else ``margin_scale`` × the rating
    difference when that is set; and ``rated``/``chosen_rating``/``rejected_rating`` (N,) for
    the pointwise term."""

    def __init__(self, inner, scale: float):
        self.inner, self.scale = inner, scale

    def __call__(self, features):
        batch = self.inner(features)
        rated = [
            f["chosen_score"] is not None and f["rejected_score"] is not None for f in features
        ]
        batch["rated"] = torch.tensor(rated)
        batch["chosen_rating"] = torch.tensor([f["chosen_score"] or 0.0 for f in features])
        batch["rejected_rating"] = torch.tensor([f["rejected_score"] or 0.0 for f in features])
        given = [f.get("margin") for f in features]
        if self.scale or any(m is not None for m in given):
            scaled = [
                self.scale * max(0.0, f["chosen_score"] - f["rejected_score"]) if r else 0.0
                for f, r in zip(features, rated, strict=True)
            ]
            margins = [s if m is None else m for m, s in zip(given, scaled, strict=True)]
            batch["margin"] = torch.tensor(margins, dtype=torch.float32)
        return batch
