"""Reward-model evaluation on held-out pairs.

    distalign rm eval --model_name_or_path runs/rm/final --dataset_name gold
    distalign rm eval --model_name_or_path runs/rm/final --device cpu --dtype float32

On a GPU the model runs there in bfloat16 (``device``/``dtype`` auto, docs/gpu.md).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path

import numpy as np
import torch

from distalign.data.mixture import Mixture
from distalign.disagreement import contested, contested_detection, contested_scores
from distalign.metrics import bayes_accuracy, distribution_summary, mixture_summary, reward_summary
from distalign.models.heads import head_log_probs
from distalign.models.reward_model import pair_scores

log = logging.getLogger(__name__)


@torch.no_grad()
def collect_pair_scores(model, loader, accelerator=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Head outputs (N, num_labels) for chosen and rejected over a loader of pair batches.
    Without an ``accelerator`` (whose prepared loader places them), batches are moved to the
    model's device."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    chosen, rejected = [], []
    for batch in loader:
        if accelerator is None:
            batch = {k: v.to(device) for k, v in batch.items()}
        c, r = pair_scores(model, batch)
        if accelerator is not None:
            c, r = accelerator.gather_for_metrics((c.contiguous(), r.contiguous()))
        chosen.append(c.float().cpu())
        rejected.append(r.float().cpu())
    model.train(was_training)
    if not chosen:
        return torch.zeros(0, 1), torch.zeros(0, 1)
    return torch.cat(chosen), torch.cat(rejected)


def evaluate_reward_model(model, loader, accelerator=None, *args, **kwargs) -> dict[str, float]:
    """``pair_metrics`` of the loader's pairs, scored by ``model`` (``collect_pair_scores``);
    the arguments after ``accelerator`` are ``pair_metrics``'s after the scores, and each
    pair's row in its source comes from the loader (``pair_ids``)."""
    chosen, rejected = collect_pair_scores(model, loader, accelerator)
    n = len(chosen)
    return pair_metrics(chosen, rejected, *args, rows=pair_ids(loader, n),
                        clusters=prompt_clusters(loader.dataset, n), **kwargs)  # fmt: skip


def pair_metrics(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    head: str = "scalar",
    n_bins: int = 10,
    outputs: dict | None = None,
    p_by_group: np.ndarray | None = None,
    n_bootstrap: int = 2000,
    truth=None,
    p_chosen: np.ndarray | None = None,
    rows: np.ndarray | None = None,
    clusters: np.ndarray | None = None,
    ties: str = "strict",
) -> dict[str, float]:
    """Metrics of N pairs from the head outputs (N, num_labels) of their chosen and rejected
    replies. Scalar: accuracy, margin, reward mean/std, ECE.
    Distributional: accuracy by P(R_w > R_l) and by expectation, entropy, unimodal share,
    mean std, ECE. Mixture: ``metrics.mixture_summary``. ``outputs``, when given, receives
    the raw scores / log-probabilities / component rewards.

    ``p_by_group`` (N, G), the known per-group probability that each pair's chosen reply is
    preferred (the gold benchmark's ``p_chosen_by_group``, in the pairs' order; a loader must
    not shuffle), adds how well the model flags contested pairs (the groups' majorities
    differ): ``contested_share``, ``contested_pairs``, ``contested_auroc`` and
    ``contested_auroc_margin`` (and ``contested_auroc_spread`` for a distributional head,
    ``contested_auroc_ratio`` for a mixture, whose detector reads its component margins),
    each with a ``…_ci95`` bootstrap interval (``n_bootstrap`` resamples of the pairs' prompts,
    ``clusters`` (N,): a prompt's pairs share its replies, so they are drawn together; of
    the pairs one by one without it); see ``disagreement.contested_detection``.

    ``p_chosen`` (N,), each pair's known probability that its chosen reply is preferred (the
    gold benchmark's, in the pairs' order), adds ``bayes_ceiling`` and ``accuracy_vs_truth``
    (``metrics.accuracy_vs_truth``: the accuracy without the labels' draw noise).

    ``truth`` (``gold.truth.PairReplies`` of the pairs), for a distributional head,
    adds whether the predicted spread of each distinct reply tracks the annotators'
    disagreement about it (``spread_*``, ``reply_spread_measures``).

    ``rows``: each pair's row in its source (default 0..N−1). ``ties``: how a distributional
    head's ``loss`` counts ties (its training config's ``ties``).

    Every head reports ``loss``, the held-out labels' negative log-likelihood under its own
    preference probability (the training loss without regularisers): what
    ``metric_for_best_model: loss`` chooses by."""
    components = None  # a mixture's component margins (N, K), for its contested detector
    if head == "scalar":
        if outputs is not None:
            outputs.update(chosen=chosen[:, 0], rejected=rejected[:, 0])
        result = reward_summary(chosen[:, 0], rejected[:, 0], p_chosen)
        margin, spread = (chosen[:, 0] - rejected[:, 0]).double().numpy(), None
    elif head == "mixture":
        if outputs is not None:
            outputs.update(components_chosen=chosen, components_rejected=rejected)
        result = mixture_summary(chosen, rejected, p_chosen)
        margin, spread = mixture_margin_spread(chosen, rejected)
        if chosen.shape[1] > 1:
            components = (chosen - rejected).double().numpy()
        if truth is not None:
            result |= mixture_reply_spread_measures(truth, chosen, rejected, outputs)
    else:
        logp_w = head_log_probs(head, chosen, n_bins)
        logp_l = head_log_probs(head, rejected, n_bins)
        if outputs is not None:
            outputs.update(logp_chosen=logp_w, logp_rejected=logp_l)
        result = distribution_summary(logp_w, logp_l, p_chosen=p_chosen, ties=ties)
        margin, spread = distribution_margin_spread(logp_w, logp_l)
        if truth is not None:
            result |= reply_spread_measures(truth, logp_w, logp_l, outputs)
    if p_chosen is not None:  # the best accuracy possible on these pairs
        result["bayes_ceiling"] = bayes_accuracy(p_chosen)
    if p_by_group is not None:
        result |= contested_detection(
            margin, spread, p_by_group, n_bootstrap, components=components, clusters=clusters
        )
        if outputs is not None:  # per pair, to compare reward models on the same pairs
            scores = contested_scores(margin, spread, components)
            outputs["pair_scores"] = {
                "pair": np.arange(len(margin)) if rows is None else rows,
                "margin": margin,
                "contested_score": scores["detector"],
                "contested": contested(p_by_group),
            }
            if clusters is not None:
                outputs["pair_scores"]["prompt"] = clusters
    return result


def prompt_clusters(ds, n: int) -> np.ndarray | None:
    """Each pair's prompt as a number (pairs of one prompt share it), (n,): from the data set's
    ``prompt_id`` (the gold benchmark's) or its ``prompt``; an empty prompt (an implicit-prompt
    pair whose replies share no words) is a prompt of its own for each pair. None when ``ds``
    has neither column or another number of rows (the bootstrap then resamples pairs)."""
    columns = getattr(ds, "column_names", None) or []
    column = next((c for c in ("prompt_id", "prompt") if c in columns), None)
    if column is None or len(ds) != n:
        return None

    def empty(p) -> bool:
        if isinstance(p, list):
            return all(not str(m.get("content") or "").strip() for m in p if isinstance(m, dict))
        return p is None or not str(p).strip()

    keys = [
        json.dumps([i] if column == "prompt" and empty(p) else p, sort_keys=True, default=str)
        for i, p in enumerate(ds[column])
    ]
    return np.unique(keys, return_inverse=True)[1].reshape(-1)


def pair_ids(loader, n: int) -> np.ndarray:
    """Each scored pair's row in its source file (the data set's ``source_row``), or 0..n−1
    when the loader's data set does not carry it."""
    try:
        rows = np.asarray(loader.dataset["source_row"], dtype=np.int64)
    except (KeyError, TypeError, ValueError, AttributeError):
        return np.arange(n)
    return rows if len(rows) == n else np.arange(n)


def distribution_margin_spread(logp_w, logp_l) -> tuple[np.ndarray, np.ndarray]:
    """E[R_w] − E[R_l] and sqrt(Std[R_w]² + Std[R_l]²) per pair, (N,) each, from the heads'
    log-probabilities (N, n_bins) over the default bin values."""
    from distalign.functionals import expectation, std

    p_w, p_l = logp_w.double().exp(), logp_l.double().exp()
    margin = (expectation(p_w) - expectation(p_l)).numpy()
    spread = (std(p_w) ** 2 + std(p_l) ** 2).sqrt().numpy()
    return margin, spread


def mixture_margin_spread(chosen, rejected) -> tuple[np.ndarray, np.ndarray]:
    """Margin and spread per pair of a mixture head (component rewards (N, K), equal shares):
    the mean and the (population) std over components of the pair's component margins
    r_k(w) − r_k(l). One component judges both replies, so its free constant cancels in its
    margin; the std of a single reply's components would instead measure those constants."""
    margins = (chosen - rejected).double()
    return margins.mean(-1).numpy(), margins.std(-1, unbiased=False).numpy()


def reply_spread_measures(truth, logp_w, logp_l, outputs: dict | None = None) -> dict[str, float]:
    """Per distinct reply of the pairs (``truth``: ``gold.truth.PairReplies``), the predicted
    Std[R] (the mean over the pairs it appears in) against the annotators' disagreement: raw,
    centred within the prompt, and each given reply length (``disagreement.spread_agreement``),
    as ``spread_*`` keys, with ``spread_replies`` the number of replies. ``outputs``, when
    given, receives the points (``spread_points``: predicted and centred per reply)."""
    from distalign.functionals import std

    predicted = per_reply(truth, std(logp_w.double().exp()), std(logp_l.double().exp()))
    return _spread_measures(truth, predicted, outputs)


def mixture_reply_spread_measures(
    truth, chosen: torch.Tensor, rejected: torch.Tensor, outputs: dict | None = None
) -> dict[str, float]:
    """``reply_spread_measures`` for a mixture head (component rewards (N, K) per pair side).
    Each component, like each annotator, is a Bradley–Terry reward fixed only up to a constant
    per prompt, so the predicted spread is centred the same way as the truth: the spread over
    components of each component's reward centred within the prompt (``centred_spread``)."""
    from distalign.disagreement import centred_spread

    components = per_reply(truth, chosen.double(), rejected.double())  # (R, K)
    predicted = centred_spread(components.T, truth.prompt_ids)
    return _spread_measures(truth, predicted, outputs)


def per_reply(truth, chosen: torch.Tensor, rejected: torch.Tensor) -> np.ndarray:
    """Per distinct reply of the pairs (``truth``: ``gold.truth.PairReplies``), the mean of
    its values over the pairs it appears in: (N, ...) per side -> (R, ...)."""
    n = len(truth.prompt_ids)
    shape = tuple(chosen.shape[1:])
    total, count = np.zeros((n, *shape)), np.zeros(n)
    for idx, values in ((truth.chosen, chosen), (truth.rejected, rejected)):
        np.add.at(total, idx, values.numpy())
        np.add.at(count, idx, 1.0)
    return total / np.maximum(count, 1.0).reshape(-1, *([1] * len(shape)))


def _spread_measures(truth, predicted: np.ndarray, outputs: dict | None) -> dict[str, float]:
    from distalign.disagreement import centred_spread, spread_agreement

    n = len(truth.prompt_ids)
    if outputs is not None:
        centred = centred_spread(truth.annotator_rewards, truth.prompt_ids, truth.weights)
        outputs["spread_points"] = {"predicted": predicted.tolist(), "centred": centred.tolist()}
    agreement = spread_agreement(
        predicted, truth.annotator_rewards, truth.prompt_ids, truth.lengths, truth.weights
    )
    return {"spread_replies": n} | {f"spread_{k}": v for k, v in agreement.items()}


def _load_pairs(data, split, limit, data_options, fit):
    """The pairs to evaluate on; none left is an error that gives the load's counts. ``fit``
    fits the model's rendering to the load's report: a plain-text model (no chat template)
    refuses conversational data and reads HH transcripts as written, as ``rm train`` does
    (``fit_rendering``)."""
    from distalign.data.load import LoadReport, load_preferences, require_pairs

    options = dict(data_options or {})
    report = options.pop("report", None) or LoadReport(source=str(data))
    pairs = load_preferences(data, split, limit=limit or None, report=report, **options)
    fit(report)
    return require_pairs(pairs, report)


def run_rm_eval(
    model_dir: str,
    data: str = "gold",
    split: str = "test",
    max_length: int | None = None,
    batch_size: int = 16,
    limit: int = 0,
    output: str | None = None,
    *,
    max_prompt_length: int | None = None,
    device: str = "auto",
    dtype: str = "auto",
    attn_implementation: str = "sdpa",
    data_options: dict | None = None,
    chat_template: str | None = None,
    output_dir: str | None = None,
) -> dict[str, float]:
    """Load a saved reward model, score held-out pairs, write the metrics as JSON (to
    ``output``, else under their usual name in ``output_dir``, else beside a local model).
    ``data_options``: ``load_preferences``'s hub ``name``/``revision`` and ``skip_bad_rows``.
    ``chat_template``: one for a model without its own (``chat_template_path``).

    ``max_length`` and ``max_prompt_length`` default to the reward model's own (saved with
    it), so the scores are those its training evaluation saw. Pairs share their prompt's row
    (one 4-D block mask per row) when the attention kernel takes such a mask; otherwise (flash
    attention) each reply gets its own padded row, which scores the same."""
    from torch.utils.data import DataLoader

    from distalign.data.load import known_p_chosen, p_chosen_by_group
    from distalign.data.pairs import PairCollator, SharedPrefixCollator, tokenize_pairs
    from distalign.gold.truth import pair_replies
    from distalign.models.classifier import model_folder
    from distalign.models.load import prefix_sharing_for, resolve_device_dtype, set_chat_template
    from distalign.models.reward_model import META_FILE, load_reward_model
    from distalign.models.templates import fit_rendering
    from distalign.rl.rewards import source_name

    place, torch_dtype = resolve_device_dtype(device, dtype)
    folder = model_folder(model_dir)  # a run's output_dir: its final/; a hub id: downloaded
    # metrics go beside a local model; a hub model's (in the cache) to the working folder,
    # under its name so that several models evaluated there keep their own files
    local = Path(model_dir).expanduser().is_dir()
    home = Path(output_dir) if output_dir else folder if local else Path(".")
    if home.exists() and not home.is_dir():
        from distalign.config import ConfigError

        raise ConfigError(f"output_dir {home} is a file, not a folder")
    # beside the model its file needs no model's name; in the working folder or output_dir,
    # which several models share, it starts with the model's (a run's: runs/my_rm/final, my_rm)
    named = source_name(model_dir) if local else model_dir.strip("/")
    prefix = "" if local and not output_dir else re.sub(r"[^\w.\-]+", "_", named) + "_"

    def target(name: str) -> Path:  # the metrics file, given its usual name
        return Path(output) if output else _unclaimed(home / (prefix + name), data)

    if not (folder / META_FILE).is_file():  # another tool's reward model (TRL's, the hub's)
        if max_prompt_length:
            log.warning(
                "max_prompt_length does nothing for a reward model distalign did not train: "
                "it reads prompt + reply up to max_length, as rm score does"
            )
        return _eval_other_model(model_dir, data, split, max_length, batch_size, limit, target,
                                 place, torch_dtype, attn_implementation, data_options,
                                 chat_template)  # fmt: skip
    model, tokenizer, meta = load_reward_model(
        folder, device=place, dtype=torch_dtype, attn_implementation=attn_implementation
    )
    set_chat_template(tokenizer, chat_template)
    own = (meta.get("max_length", 512), meta.get("max_prompt_length"))
    max_length = max_length or own[0]
    if not max_prompt_length:  # the model's own, unless a shorter max_length leaves no room
        max_prompt_length = own[1] if own[1] and own[1] < max_length else max_length // 2
    elif max_prompt_length >= max_length:
        raise ValueError(
            f"need max_prompt_length ({max_prompt_length}) < max_length ({max_length})"
        )

    def fit(report):
        fit_rendering(tokenizer, report, data, f"reward model {model_dir}")

    pairs = _load_pairs(data, split, limit, data_options, fit)
    ds = tokenize_pairs(pairs, tokenizer, max_length, max_prompt_length)
    if prefix_sharing_for(attn_implementation, True, "rm eval", model):
        collate = SharedPrefixCollator(tokenizer.pad_token_id)
    else:
        collate = PairCollator(tokenizer.pad_token_id)
    loader = DataLoader(ds, batch_size=batch_size, collate_fn=collate)
    head, n_bins = meta.get("head", "scalar"), meta.get("n_bins", 10)
    outputs: dict = {}
    # the loader keeps the data set's order, so its rows line up with the scored pairs
    p_by_group = p_chosen_by_group(ds)
    truth = pair_replies(data, split, ds["source_row"]) if head != "scalar" else None
    ties = (meta.get("config") or {}).get("ties", "strict")  # as its loss read them
    result = evaluate_reward_model(
        model, loader, None, head, n_bins, outputs, p_by_group, truth=truth,
        p_chosen=known_p_chosen(ds), ties=ties,
    )  # fmt: skip
    result.update({"data": data, "split": split, "model": str(model_dir), "head": head})
    result.update({"device": str(place), "dtype": str(torch_dtype).removeprefix("torch.")})
    result.update({"max_length": max_length, "max_prompt_length": max_prompt_length})
    lengths = None if (max_length, max_prompt_length) == own else (max_length, max_prompt_length)
    return save_eval(result, outputs, target(eval_file_name(data, split, limit, lengths)))


def _eval_other_model(model_dir, data, split, max_length, batch_size, limit,
                      target, place, torch_dtype, attn_implementation, data_options,
                      chat_template) -> dict[str, float]:  # fmt: skip
    """``run_rm_eval`` for a one-label sequence classifier distalign did not train (TRL's
    RewardTrainer saves one): each reply scored with the model's own forward, tokenizer and
    chat template, as ``rm score`` and ``rl train`` read it; the scalar metrics, written to
    ``target(the usual file name)``."""
    from distalign.data.formats import joined_prompt, row_reply
    from distalign.data.load import known_p_chosen, p_chosen_by_group
    from distalign.rl.rewards import RewardModelSource

    source = RewardModelSource(
        model_dir, max_length=max_length, batch_size=batch_size, device=place,
        dtype=torch_dtype, attn_implementation=attn_implementation, chat_template=chat_template,
    )  # fmt: skip
    pairs = _load_pairs(data, split, limit, data_options, lambda r: source.fit_rendering(r, data))
    prompts = [joined_prompt(row) for row in pairs]
    chosen, rejected = torch.empty(len(pairs), 1), torch.empty(len(pairs), 1)
    # each row's tools and chat_template_kwargs go to the template, as TRL renders them: the
    # pairs are scored in groups that share them
    groups: dict[str, list[int]] = {}
    for i, text in enumerate(pairs["template_kwargs"]):
        groups.setdefault(text or "", []).append(i)
    replies = {side: [row_reply(row, side) for row in pairs] for side in ("chosen", "rejected")}
    for text, idx in groups.items():
        source.template_kwargs = json.loads(text) if text else None
        for scored, column in ((chosen, "chosen"), (rejected, "rejected")):
            texts = [replies[column][i] for i in idx]
            scores = source([prompts[i] for i in idx], texts).rewards
            scored[idx] = scores.float().reshape(-1, 1)
    outputs: dict = {}
    rows = np.asarray(pairs["source_row"], dtype=np.int64)
    result = pair_metrics(chosen, rejected, "scalar", outputs=outputs,
                          p_by_group=p_chosen_by_group(pairs), p_chosen=known_p_chosen(pairs),
                          rows=rows, clusters=prompt_clusters(pairs, len(pairs)))  # fmt: skip
    result.update({"data": data, "split": split, "model": str(model_dir), "head": "scalar"})
    result.update({"device": str(place), "dtype": str(torch_dtype).removeprefix("torch.")})
    result.update({"max_length": source.max_length, "max_prompt_length": None})
    lengths = (source.max_length, 0) if max_length else None  # the model's own limit: no tag
    return save_eval(result, outputs, target(eval_file_name(data, split, limit, lengths)))


def eval_file_name(
    data: str, split: str, first: int = 0, lengths: tuple[int, int] | None = None
) -> str:
    """``eval_<data>_<split>.json``, with ``_first<N>`` for the first N pairs and
    ``_len<L>-<P>`` for other max_length / max_prompt_length than the model's own: only an
    evaluation as training ran it replaces the one training wrote (the report reads that).
    A split spec's slices are kept in words a file name takes (``_split_tag``).
    ``<data>`` is the file's or folder's name without a data file's suffix (``pairs.jsonl``
    and ``pairs.jsonl.gz`` give ``pairs``; a split's name keeps its folder's: ``a/test.jsonl``
    gives ``a_test``), a hub id with ``--`` for its slash (``org--name``), or ``datasets``
    for a mixture."""
    first_part = f"_first{first}" if first else ""
    length_part = f"_len{lengths[0]}-{lengths[1]}" if lengths else ""
    path = Path(data)
    stem = _DATA_SUFFIX.sub("", path.name) or path.name
    if isinstance(data, Mixture):  # a data set mixture, not a path
        stem = "datasets"
    elif stem.lower() in _SPLIT_NAMES and path.parent.name:  # a/test.jsonl, b/test.jsonl
        stem = f"{path.parent.name}_{stem}"
    elif data.count("/") == 1 and stem == path.name and not path.exists():  # a hub id
        stem = data.replace("/", "--")
    return f"eval_{stem}_{_split_tag(split)}{first_part}{length_part}.json"


def _split_tag(split: str) -> str:
    """A split spec as a file name's part, the same on every system: ``test`` stays,
    ``train[:90%]`` is ``train_-90pct``, ``train[90%:]`` ``train_90pct-``, ``a+b`` ``a_and_b``."""
    tag = split.replace("%", "pct").replace(":", "-").replace("+", "_and_")
    return re.sub(r"[^\w.-]+", "_", tag).strip("_")


_DATA_SUFFIX = re.compile(r"\.(jsonl|json|csv|tsv|parquet|arrow|txt)(\.(gz|bz2|xz|zst))?$", re.I)
_SPLIT_NAMES = {"train", "test", "validation", "valid", "val", "dev", "eval"}


def _unclaimed(path: Path, data: str) -> Path:
    """``path``, unless it holds the evaluation of other data (two folders of one name): then
    a name with a short hash of ``data`` added, so that neither replaces the other."""
    from distalign.data.load import same_source

    try:
        saved = json.loads(path.read_text(encoding="utf-8")).get("data")
    except (OSError, ValueError, AttributeError):
        return path
    if saved is None or same_source(saved, data):
        return path
    local = Path(data).expanduser()
    where = str(local.resolve()) if local.exists() else data  # a hub id as it is
    digest = hashlib.sha1(where.encode()).hexdigest()[:8]
    log.warning("%s holds the evaluation of %s: this one of %s goes beside it", path, saved, data)
    return path.with_name(f"{path.stem}_{digest}{path.suffix}")


def save_eval(result: dict, outputs: dict, path: Path) -> dict:
    """Write an evaluation as JSON; a distributional one also gets its plots (the predicted
    distributions of a few pairs, and histograms of E[R] and Std[R]) beside it."""
    result = dict(result)
    path.parent.mkdir(parents=True, exist_ok=True)  # made once there is something to write
    if "logp_chosen" in outputs:
        from distalign.report.plots import plot_distribution_grid, plot_expectation_std_histograms

        stem = str(path.with_suffix(""))
        w, r = outputs["logp_chosen"], outputs["logp_rejected"]
        result["plot_grid"] = str(plot_distribution_grid(w, r, stem + "_pairs.png"))
        result["plot_hist"] = str(plot_expectation_std_histograms(w, r, stem + "_hist.png"))
    if "spread_points" in outputs:  # predicted std against the annotators' disagreement
        from distalign.report.plots import spread_vs_disagreement

        points = outputs["spread_points"]
        held_out = {"policy": ["held-out replies"] * len(points["predicted"]), **points}
        png = spread_vs_disagreement({result.get("head", "model"): held_out}, {})
        if png is not None:
            spread_png = Path(str(path.with_suffix("")) + "_spread.png")
            spread_png.write_bytes(png)
            result["plot_spread"] = str(spread_png)
    if "pair_scores" in outputs:
        pairs = Path(str(path.with_suffix("")) + "_pair_scores.csv")
        write_pair_scores(outputs["pair_scores"], pairs)
        result["pair_scores"] = str(pairs)
    path.write_text(json.dumps(result, indent=2) + "\n")
    result["written_to"] = str(path)
    return result


def write_pair_scores(columns: dict[str, np.ndarray], path: Path) -> None:
    """One row per scored pair, in the data set's order: its source row (``pair``), its
    margin, its contested score (the head's own detector, higher = more likely contested) and
    whether it is contested. ``compare_contested`` reads two such files."""
    import csv

    names = list(columns)
    with open(path, "w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(names)
        for row in zip(*(columns[n] for n in names), strict=True):
            out.writerow(
                [int(v) if isinstance(v, (np.bool_, np.integer)) else repr(float(v)) for v in row]
            )


def read_pair_scores(path: str | Path) -> dict[str, np.ndarray]:
    import csv

    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{path}: no pairs")
    return {k: np.array([float(r[k]) for r in rows]) for k in rows[0]}


def margins_by_pair(path: str | Path, n: int) -> np.ndarray:
    """The margins of a pair-score file placed at their pairs' indices, (n,) float64; a pair
    the file does not score is NaN."""
    scores = read_pair_scores(path)
    margin = np.full(n, np.nan)
    margin[scores["pair"].astype(int)] = scores["margin"]
    return margin


def compare_contested(a: str | Path, b: str | Path, n: int = 2000) -> dict[str, float]:
    """Does reward model A flag contested pairs better than B? Two ``…_pair_scores.csv`` files
    of the same pairs (``rm eval`` writes one beside its JSON);
    ``disagreement.paired_auroc_difference`` of their contested scores: AUROC(A) − AUROC(B),
    paired bootstrap interval (resampling prompts where both files name each pair's prompt,
    else pairs), and the share of resamples in which A does not beat B."""
    from distalign.disagreement import paired_auroc_difference

    sa, sb = read_pair_scores(a), read_pair_scores(b)
    same = len(sa["pair"]) == len(sb["pair"]) and (sa["pair"] == sb["pair"]).all()
    if not same or (sa["contested"] != sb["contested"]).any():
        raise ValueError(f"{a} and {b} do not score the same pairs")
    both = "prompt" in sa and "prompt" in sb and (sa["prompt"] == sb["prompt"]).all()
    return paired_auroc_difference(
        sa["contested_score"], sb["contested_score"], sa["contested"].astype(bool), n,
        clusters=sa["prompt"] if both else None,
    )  # fmt: skip
