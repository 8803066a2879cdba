"""Does another reading of the backbone carry more of what the labels reward than the last token?

    python scripts/pooling_probe.py extract --model runs/full/rm_scalar_lora_r32_lr5e-4/final \\
        --out runs/full/pooling_lora
    python scripts/pooling_probe.py fit runs/full/pooling_lora \\
        --out docs/results/level2/pooling_probe_lora.json
    python scripts/attribute_probe.py --features runs/full/pooling_lora/last_and_mean_mid.npz

A reward model reads its score from the last token's final hidden state. ``attribute_probe.py``
showed that state carries relevance (the cosine of the prompt's and the reply's sentence
embeddings, the attribute the judge weighs most) only in part. ``extract`` runs a backbone once
over every benchmark reply, rendered as the reward model scores it, and writes one features
file per reading, each in ``spread_search.py extract``'s format (``attribute_probe.py`` reads
it):

- ``last``: the last token, final layer (what the head sees today);
- ``mean_reply``: the mean over the reply's tokens, final layer;
- ``last_mid`` and ``mean_reply_mid``: the same at the middle layer;
- ``cosines``: the cosine of the mean prompt state and the mean reply state at every fourth
  layer (a prompt–reply fit the backbone computes for free), and ``last_plus_cos``;
- ``last_and_mean_mid`` and ``all4``: ``last`` with ``mean_reply_mid``; all four vectors.

``fit`` trains, on each reading, what a reward model's head would be: a linear Bradley–Terry
score fitted to the 2,400 training labels (L2 strength by 5-fold cross-validation over training
prompts, on held-out log-loss), and scores the 800 test pairs: accuracy as observed and against
the truth. Unlike ``attribute_probe.py`` it uses only the labels a preference data set has.
``ensemble`` sums standardised test margins of such heads and of saved pair scores (every
combination; picked on the test pairs, so the best is optimistic):

    python scripts/pooling_probe.py ensemble runs/full/pooling_base/last_and_mean_mid.npz \\
        runs/full/pooling_lora/all4.npz docs/results/level2/pair_scores/scalar_*.csv

``--model`` is a distalign reward model folder (full or LoRA) or a policy (``load_policy``
name or path) whose transformer is read as is.

``likelihood --model POLICY --out FOLDER`` reads the SFT model as a language model instead:
per reply, its log-likelihood given the prompt and given an empty prompt (sums, per-token
means, their difference: the pointwise mutual information of reply and prompt), as
``likelihood.npz``, and ``NAME_likelihood.npz`` beside every ``last*.npz`` reading already in
the folder, for ``fit`` to compare:

    python scripts/pooling_probe.py likelihood --out runs/full/pooling_base
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from distalign.data.load import DATA_ALIASES
from distalign.gold.truth import read_jsonl_gz

GOLD = DATA_ALIASES["gold"]


def backbone_of(spec: str):
    """(transformer without head, tokenizer, max_length, max_prompt_length)."""
    path = Path(spec)
    if (path / "distalign_rm.json").is_file():
        from distalign.models.reward_model import load_reward_model

        model, tokenizer, meta = load_reward_model(path, device="cpu")
        if hasattr(model, "merge_and_unload"):
            model = model.merge_and_unload()
        return (
            getattr(model, model.base_model_prefix),
            tokenizer,
            meta.get("max_length", 384),
            meta.get("max_prompt_length"),
        )
    from distalign.models.load import load_policy

    model, tokenizer = load_policy(spec)
    return getattr(model, model.base_model_prefix), tokenizer, 384, None


def benchmark_replies() -> tuple[dict[str, str], list[dict]]:
    """The benchmark's prompts (id -> text) and its 1,600 replies."""
    lines = (GOLD / "prompts.jsonl").read_text(encoding="utf-8").splitlines()
    prompts = {p["id"]: p["prompt"] for p in (json.loads(x) for x in lines if x.strip())}
    return prompts, read_jsonl_gz(GOLD / "replies.jsonl.gz")


@torch.no_grad()
def hidden_states(backbone, pad_token_id: int, seqs: list[list[int]], batch_size: int = 8):
    """(indices into ``seqs``, hidden states: n_layers + 1 of (B, T, H), the last after the
    final norm) per batch, shortest sequences first, right-padded; progress printed."""
    from distalign.data.pairs import pad_sequences

    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = pad_sequences([seqs[i] for i in idx], pad_token_id)
        yield (
            idx,
            backbone(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                output_hidden_states=True,
            ).hidden_states,
        )
        if start // batch_size % 20 == 0:
            print(f"{start + len(idx)}/{len(seqs)}", flush=True)


def readings(backbone, tokenizer, prompts, replies, max_length, max_prompt_length, batch_size=8):
    from distalign.models.reward_model import scored_tokens

    seqs, n_prompt = [], []
    for prompt, reply in zip(prompts, replies, strict=True):
        p, r = scored_tokens(tokenizer, prompt, reply, max_length, max_prompt_length)
        seqs.append(p + r)
        n_prompt.append(len(p))
    n_layers = backbone.config.num_hidden_layers
    mid = n_layers // 2
    cos_layers = list(range(4, n_layers + 1, 4))
    out = {k: [None] * len(seqs) for k in ("last", "mean_reply", "last_mid", "mean_reply_mid")}
    cos = [None] * len(seqs)
    for idx, hs in hidden_states(backbone, tokenizer.pad_token_id, seqs, batch_size):
        for row, i in enumerate(idx):
            # right padding: real tokens are 0 .. n-1, the prompt 0 .. n_prompt-1
            n = len(seqs[i])
            p = n_prompt[i]
            out["last"][i] = hs[-1][row, n - 1]
            out["mean_reply"][i] = hs[-1][row, p:n].mean(0)
            out["last_mid"][i] = hs[mid][row, n - 1]
            out["mean_reply_mid"][i] = hs[mid][row, p:n].mean(0)
            cos[i] = torch.stack(
                [
                    torch.cosine_similarity(hs[k][row, :p].mean(0), hs[k][row, p:n].mean(0), dim=0)
                    for k in cos_layers
                ]
            )
    feats = {k: torch.stack(v).float().numpy() for k, v in out.items()}
    feats["cosines"] = torch.stack(cos).float().numpy()
    return feats


def extract(args) -> None:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    backbone, tokenizer, max_length, max_prompt_length = backbone_of(args.model)
    backbone.eval()
    prompts, replies = benchmark_replies()
    t0 = time.perf_counter()
    feats = readings(
        backbone,
        tokenizer,
        [[{"role": "user", "content": prompts[r["prompt_id"]]}] for r in replies],
        [r["text"] for r in replies],
        max_length,
        max_prompt_length,
    )
    feats["last_plus_cos"] = np.concatenate([feats["last"], feats["cosines"]], 1)
    feats["last_and_mean_mid"] = np.concatenate([feats["last"], feats["mean_reply_mid"]], 1)
    feats["all4"] = np.concatenate(
        [feats[k] for k in ("last", "mean_reply_mid", "last_mid", "mean_reply")], 1
    )
    save_readings(args.out, feats, replies, args.model)
    print(f"{len(replies)} replies, {time.perf_counter() - t0:.0f} s -> {args.out}")


def save_readings(out: Path, feats: dict[str, np.ndarray], replies: list[dict], model) -> None:
    """One ``NAME.npz`` per reading in ``out``, with the replies' ids (the format ``fit`` and
    ``attribute_probe.py`` read)."""
    out.mkdir(parents=True, exist_ok=True)
    ids = dict(
        prompt_id=np.array([r["prompt_id"] for r in replies]),
        reply_id=np.array([r["reply_id"] for r in replies]),
        model=str(model),
    )
    for name, x in feats.items():
        np.savez(out / f"{name}.npz", features=x, **ids)


@torch.no_grad()
def reply_logprobs(model, tokenizer, prompts, replies, batch_size=8) -> list[np.ndarray]:
    """Per reply, the log-probability of each of its tokens (as the chat template renders
    it) under ``model`` given its chat prompt."""
    from distalign.data.pairs import pad_sequences
    from distalign.models.reward_model import scored_tokens

    seqs, starts = [], []
    for prompt, reply in zip(prompts, replies, strict=True):
        p, r = scored_tokens(tokenizer, prompt, reply, 1024, 512)
        seqs.append(p + r)
        starts.append(len(p))
    out = [None] * len(seqs)
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = pad_sequences([seqs[i] for i in idx], tokenizer.pad_token_id)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        logp = torch.log_softmax(logits[:, :-1].float(), -1)
        logp = logp.gather(-1, batch["input_ids"][:, 1:, None])[..., 0]  # (B, T-1)
        for row, i in enumerate(idx):
            out[i] = logp[row, starts[i] - 1 : len(seqs[i]) - 1].numpy()
    return out


def likelihood(args) -> None:
    from distalign.models.load import load_policy

    model, tokenizer = load_policy(args.model)
    model.eval()
    prompts, replies = benchmark_replies()
    texts = [r["text"] for r in replies]
    t0 = time.perf_counter()
    given = reply_logprobs(
        model, tokenizer, [[{"role": "user", "content": prompts[r["prompt_id"]]}] for r in replies],
        texts,
    )  # fmt: skip
    empty = [[{"role": "user", "content": ""}]] * len(texts)
    alone = reply_logprobs(model, tokenizer, empty, texts)
    # given, alone: sums and per-token means; their difference (PMI), summed and per token
    x = np.array([[g.sum(), a.sum(), g.mean(), a.mean(), g.sum() - a.sum(), (g - a).mean()]
                  for g, a in zip(given, alone, strict=True)])  # fmt: skip
    ids = dict(
        prompt_id=np.array([r["prompt_id"] for r in replies]),
        reply_id=np.array([r["reply_id"] for r in replies]),
    )
    args.out.mkdir(parents=True, exist_ok=True)
    np.savez(args.out / "likelihood.npz", features=x, model=str(args.model), **ids)
    for path in sorted(args.out.glob("last*.npz")):
        if path.stem.endswith("_likelihood"):
            continue
        data = np.load(path, allow_pickle=False)
        assert (data["prompt_id"] == ids["prompt_id"]).all(), path  # the same replies, in order
        combined = np.concatenate([data["features"], x], 1)
        np.savez(args.out / f"{path.stem}_likelihood.npz", features=combined,
                 model=str(data["model"]), **ids)  # fmt: skip
    print(f"{len(replies)} replies, {time.perf_counter() - t0:.0f} s -> {args.out}")


# --- a Bradley–Terry head on each reading ---------------------------------------------------------

L2 = (1.0, 10.0, 100.0, 1000.0, 10000.0)


def pair_differences(x: np.ndarray, index: dict, rows: list[dict]) -> np.ndarray:
    """Features of the chosen reply minus the rejected one's, (pairs, D)."""
    return np.array(
        [
            x[index[(r["prompt_id"], r["chosen_reply_id"])]]
            - x[index[(r["prompt_id"], r["rejected_reply_id"])]]
            for r in rows
        ]
    )


def fit_head(d: np.ndarray, l2: float) -> np.ndarray:
    """Weights minimising the Bradley–Terry loss of chosen-minus-rejected features ``d``
    (every label says the first is preferred) plus ``l2`` |w|²."""
    from scipy.optimize import minimize

    def loss(w):
        z = d @ w
        grad = -(d.T @ (1.0 / (1.0 + np.exp(z)))) + 2 * l2 * w
        return np.logaddexp(0.0, -z).sum() + l2 * w @ w, grad

    return minimize(loss, np.zeros(d.shape[1]), jac=True, method="L-BFGS-B").x


def choose_l2(d: np.ndarray, prompts: np.ndarray, folds: int = 5) -> float:
    """The strength in ``L2`` with the least held-out log-loss over folds of whole prompts."""
    from attribute_probe import group_folds  # scripts/

    fold = group_folds(prompts, folds)
    losses = []
    for l2 in L2:
        held_out = 0.0
        for k in range(folds):
            w = fit_head(d[fold != k], l2)
            held_out += float(np.logaddexp(0.0, -(d[fold == k] @ w)).sum())
        losses.append(held_out)
    return L2[int(np.argmin(losses))]


def fit(args) -> None:
    from margin_attributes import accuracies  # scripts/

    from distalign.metrics import bootstrap_interval, expected_correct

    train = read_jsonl_gz(GOLD / "train.jsonl.gz")
    test = read_jsonl_gz(GOLD / "test.jsonl.gz")
    p_chosen = np.array([r["p_chosen"] for r in test])
    train_prompts = np.array([r["prompt_id"] for r in train])
    test_prompts = np.array([r["prompt_id"] for r in test])
    results, right = {}, {}
    for path in sorted(args.folder.glob("*.npz")):
        data = np.load(path, allow_pickle=False)
        keys = zip(data["prompt_id"], data["reply_id"], strict=True)
        index = {(str(p), int(r)): i for i, (p, r) in enumerate(keys)}
        x = data["features"].astype(np.float64)
        x = (x - x.mean(0)) / (x.std(0) + 1e-6)
        d_train = pair_differences(x, index, train)
        l2 = choose_l2(d_train, train_prompts)
        margin = pair_differences(x, index, test) @ fit_head(d_train, l2)
        acc = accuracies(margin, p_chosen)
        m = torch.as_tensor(margin)
        right[path.stem] = expected_correct(m, torch.zeros_like(m), p_chosen).numpy()
        results[path.stem] = {"features": int(x.shape[1]), "l2": l2, **acc}
        print(
            f"{path.stem:18s} {x.shape[1]:5d} features, l2 {l2:g}: accuracy "
            f"{acc['accuracy']:.3f}, against the truth {acc['accuracy_vs_truth']:.3f}"
        )
    # each reading against the last token's, resampling test prompts (their pairs go together)
    for name, r in right.items():
        diff = r - right["last"]
        per_prompt = np.array([diff[test_prompts == q].mean() for q in np.unique(test_prompts)])
        lo, hi = bootstrap_interval(per_prompt, 2000)
        results[name]["vs_last_truth"] = {"difference": float(diff.mean()), "ci95": [lo, hi]}
        print(
            f"{name:18s} against the truth minus last's: {diff.mean():+.3f} [{lo:+.3f}, {hi:+.3f}]"
        )
    if args.out:
        model = str(np.load(next(args.folder.glob("*.npz")))["model"])
        args.out.write_text(json.dumps({"model": model, "readings": results}, indent=2) + "\n")


def ensemble(args) -> None:
    """Sums of standardised test margins: heads fitted on readings (``FOLDER/NAME.npz``,
    strength 1000, the one cross-validation chose for these) and saved pair scores (.csv)."""
    import csv
    import itertools

    from distalign.metrics import expected_correct

    train = read_jsonl_gz(GOLD / "train.jsonl.gz")
    test = read_jsonl_gz(GOLD / "test.jsonl.gz")
    p_chosen = np.array([r["p_chosen"] for r in test])
    views = {}
    for spec in args.views:
        path = Path(spec)
        if path.suffix == ".csv":
            margin = np.full(len(test), np.nan)
            for row in csv.DictReader(path.open(encoding="utf-8")):
                margin[int(row["pair"])] = float(row["margin"])
        else:
            data = np.load(path, allow_pickle=False)
            keys = zip(data["prompt_id"], data["reply_id"], strict=True)
            index = {(str(a), int(b)): i for i, (a, b) in enumerate(keys)}
            x = data["features"].astype(np.float64)
            x = (x - x.mean(0)) / (x.std(0) + 1e-6)
            w = fit_head(pair_differences(x, index, train), 1000.0)
            margin = pair_differences(x, index, test) @ w
        views[f"{path.parent.name}/{path.stem}"] = margin / np.nanstd(margin)

    def truth(margin: np.ndarray) -> float:
        m = torch.as_tensor(margin)
        return float(expected_correct(m, torch.zeros_like(m), p_chosen).mean())

    for r in range(1, len(views) + 1):
        scored = [(truth(sum(views[k] for k in c)), c) for c in itertools.combinations(views, r)]
        a, best = max(scored)
        named = " + ".join(best)
        print(f"best of {len(scored):3d} sums of {r}: {a:.3f} against the truth: {named}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("extract", help="one features file per reading")
    ex.add_argument("--model", required=True)
    ex.add_argument("--out", type=Path, required=True, help="folder for the .npz files")
    fi = sub.add_parser("fit", help="a Bradley–Terry head on each reading, on the test pairs")
    fi.add_argument("folder", type=Path)
    fi.add_argument("--out", type=Path, default=None)
    li = sub.add_parser("likelihood", help="the SFT model's log-likelihood of each reply")
    li.add_argument("--model", default="smollm2-135m-instruct")
    li.add_argument("--out", type=Path, required=True, help="a folder of readings (.npz)")
    en = sub.add_parser("ensemble", help="sums of standardised margins, on the test pairs")
    en.add_argument("views", nargs="+", help="readings (.npz) and pair scores (.csv)")
    args = ap.parse_args()
    commands = {"extract": extract, "likelihood": likelihood, "fit": fit, "ensemble": ensemble}
    commands[args.command](args)


if __name__ == "__main__":
    main()
