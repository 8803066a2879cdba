"""Which distributional head, loss and regulariser make a reward model's spread track the
annotators' disagreement? A search that costs seconds per setting.

    python scripts/spread_search.py extract --model runs/full/rm_scalar/final \\
        --out runs/full/features.npz
    python scripts/spread_search.py search --features runs/full/features.npz
    python scripts/spread_search.py save --features runs/full/features.npz --setting NAME \\
        --model runs/full/rm_scalar/final --out runs/full/rm_ordinal_frozen/final

Training a 135M reward model on the 2,400 benchmark pairs takes about 45 minutes here, so
searching settings end to end is out of reach. Instead ``extract`` runs a trained reward model's
backbone once over every benchmark reply (prompt + reply rendered as the reward model scores
them) and keeps the last token's hidden state, the input of the reward head; ``search`` then
trains distributional heads on those frozen features with distalign's own losses, one setting
at a time, and scores each on the test pairs: accuracy, contested-pair AUROC against the
scalar margin's, and Spearman of each test reply's predicted std with the annotators'
disagreement centred within the prompt (``disagreement``). ``save`` writes the chosen head onto the
backbone as an ordinary distalign reward model folder (``rm eval`` and ``rl train`` load it).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from distalign.data.load import DATA_ALIASES
from distalign.gold.truth import read_jsonl_gz, reply_truth

GOLD = DATA_ALIASES["gold"]


class Passthrough(torch.nn.Module):
    """Stands in for the reward head: returns its input, the hidden state the head would see."""

    def __init__(self, dtype: torch.dtype):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1, dtype=dtype), requires_grad=False)

    def forward(self, x):
        return x


def extract(args) -> None:
    from distalign.models.reward_model import load_reward_model, score_replies

    model, tokenizer, meta = load_reward_model(args.model, device="cpu")
    model.score = Passthrough(model.score.weight.dtype)
    lines = (GOLD / "prompts.jsonl").read_text(encoding="utf-8").splitlines()
    prompts = {p["id"]: p["prompt"] for p in (json.loads(x) for x in lines if x.strip())}
    replies = read_jsonl_gz(GOLD / "replies.jsonl.gz")
    t0 = time.perf_counter()
    feats = score_replies(
        model,
        tokenizer,
        [[{"role": "user", "content": prompts[r["prompt_id"]]}] for r in replies],
        [r["text"] for r in replies],
        max_length=meta.get("max_length", 384),
        max_prompt_length=meta.get("max_prompt_length"),
        batch_size=16,
    )
    np.savez(
        args.out,
        features=feats.float().numpy(),
        prompt_id=np.array([r["prompt_id"] for r in replies]),
        reply_id=np.array([r["reply_id"] for r in replies]),
        model=str(args.model),
    )
    print(f"{len(replies)} replies, {feats.shape[1]} features, {time.perf_counter() - t0:.0f} s")


# --- the search ---------------------------------------------------------------------------------


def pair_table(split: str, index: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(chosen reply index, rejected reply index, P(chosen) per group (N, 2), label p_chosen)."""
    rows = read_jsonl_gz(GOLD / f"{split}.jsonl.gz")
    c = np.array([index[(r["prompt_id"], r["chosen_reply_id"])] for r in rows])
    r_ = np.array([index[(r["prompt_id"], r["rejected_reply_id"])] for r in rows])
    groups = np.array([[r["p_chosen_by_group"][g] for g in ("concise", "thorough")] for r in rows])
    return c, r_, groups, np.array([r["p_chosen"] for r in rows])


SETTINGS = {  # name -> head, loss settings, optimiser
    "scalar": dict(head="scalar"),  # the baseline: Bradley–Terry on the same features
    "ordinal": dict(head="ordinal"),
    "ordinal_half_ties": dict(head="ordinal", ties="half"),
    "ordinal_entropy_0.05": dict(head="ordinal", entropy_weight=0.05),
    "ordinal_entropy_0.2": dict(head="ordinal", entropy_weight=0.2),
    "ordinal_mlp": dict(head="ordinal", hidden=64),
    "ordinal_mlp_half_ties": dict(head="ordinal", hidden=64, ties="half"),
    "ordinal_400_pairs": dict(head="ordinal", pairs=400),
    "ordinal_wd_0.1": dict(head="ordinal", weight_decay=0.1),
    "ordinal_half_ties_lr_3e-3": dict(head="ordinal", ties="half", lr=3e-3),
    "ordinal_half_ties_400_pairs": dict(head="ordinal", ties="half", pairs=400),
    "ordinal_half_ties_entropy_0.2": dict(head="ordinal", ties="half", entropy_weight=0.2),
    "categorical_half_ties": dict(head="categorical", ties="half"),
    "categorical": dict(head="categorical"),
    "categorical_smooth_0.5": dict(head="categorical", smoothness_weight=0.5),
    "categorical_dpl_0.1": dict(head="categorical", batch_entropy_weight=0.1),
    "mixture_2": dict(head="mixture", k=2),
    "mixture_2_mlp": dict(head="mixture", k=2, hidden=64),
    "mixture_2_uniform": dict(head="mixture", k=2, fixed_shares=True),
    "mixture_2_uniform_centred": dict(head="mixture", k=2, fixed_shares=True, center=0.01),
    "mixture_4": dict(head="mixture", k=4),
    # warm start: both components begin at the backbone's own scalar head (the one-component
    # fit) plus a little noise, then part as the mixture likelihood asks
    "mixture_2_warm": dict(head="mixture", k=2, fixed_shares=True, warm_start=True, epochs=5),
    "mixture_2_warm_20_epochs": dict(
        head="mixture", k=2, fixed_shares=True, warm_start=True, epochs=20
    ),
    "mixture_2_warm_lr_1e-3": dict(
        head="mixture", k=2, fixed_shares=True, warm_start=True, lr=1e-3
    ),
    "gaussian": dict(head="gaussian"),
    "gaussian_mlp": dict(head="gaussian", hidden=64),
}


def make_head(n_in: int, k: int, hidden: int) -> torch.nn.Module:
    if not hidden:
        return torch.nn.Linear(n_in, k, bias=False)  # a Hugging Face score head has no bias
    return torch.nn.Sequential(
        torch.nn.Linear(n_in, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, k)
    )


class MixtureHead(torch.nn.Module):
    """K reward columns from ``inner`` (its K + 1 outputs, the last unused) and K shared
    share-logits: outputs (B, 2K) = [r_1..r_K, logit π_1..π_K]."""

    def __init__(self, inner: torch.nn.Module, k: int):
        super().__init__()
        self.inner, self.k = inner, k
        self.share_logits = torch.nn.Parameter(torch.zeros(k))

    def forward(self, x):
        r = self.inner(x)[:, : self.k]
        return torch.cat([r, self.share_logits.expand(len(x), self.k)], -1)


def distributions(head: str, out: torch.Tensor, n_bins: int):
    """(mean, std, log p or None) per reply from head outputs."""
    from distalign.functionals import expectation, std
    from distalign.models.heads import head_log_probs

    if head == "gaussian":  # DPL's mean-variance head: N(μ, σ²), σ = softplus(s) + 0.05
        return out[:, 0], torch.nn.functional.softplus(out[:, 1]) + 0.05, None
    if head == "scalar":
        return out[:, 0], None, None
    if head == "mixture":  # K Bradley–Terry rewards r_k with shares π_k (last K columns)
        k = (out.shape[1]) // 2
        r, pi = out[:, :k], torch.softmax(out[:, k:], -1)
        mean = (pi * r).sum(-1)
        return mean, ((pi * (r - mean[:, None]) ** 2).sum(-1)).sqrt(), None
    logp = head_log_probs(head, out, n_bins)
    return expectation(logp.exp()), std(logp.exp()), logp


def loss_of(setting: dict, out_w, out_l, n_bins: int) -> torch.Tensor:
    from distalign.losses import distributional_rm_loss

    head = setting["head"]
    if head == "gaussian":  # −log Φ((μ_w − μ_l) / sqrt(σ_w² + σ_l²))
        mw, sw, _ = distributions(head, out_w, n_bins)
        ml, sl, _ = distributions(head, out_l, n_bins)
        z = (mw - ml) / torch.sqrt(sw**2 + sl**2)
        return -torch.special.log_ndtr(z).mean()
    if head == "scalar":
        return -torch.nn.functional.logsigmoid(out_w[:, 0] - out_l[:, 0]).mean()
    if head == "mixture":  # −log Σ_k π_k σ(r_k(w) − r_k(l)): one annotator judges both
        k = out_w.shape[1] // 2
        log_pi = torch.log_softmax(out_w[:, k:], -1)
        terms = log_pi + torch.nn.functional.logsigmoid(out_w[:, :k] - out_l[:, :k])
        centring = ((out_w[:, :k] + out_l[:, :k]) ** 2).mean()  # TRL's, per component
        return -torch.logsumexp(terms, -1).mean() + setting.get("center", 0.0) * centring
    lw = distributions(head, out_w, n_bins)[2]
    ll = distributions(head, out_l, n_bins)[2]
    loss, _ = distributional_rm_loss(
        lw,
        ll,
        setting.get("ties", "strict"),
        setting.get("entropy_weight", 0.0),
        setting.get("batch_entropy_weight", 0.0),
        setting.get("smoothness_weight", 0.0),
    )
    return loss


def scalar_head(model: str, scale: torch.Tensor) -> torch.Tensor | None:
    """The reward model's own scalar head (H,), on features divided by ``scale``; None when
    the backbone is not a scalar reward model."""
    from distalign.models.reward_model import saved_head

    weight = saved_head(model)
    if weight is None or weight.shape[0] != 1:
        return None
    return weight[0].float() * scale


def fit(
    setting: dict,
    x: torch.Tensor,
    train,
    seed: int,
    n_bins: int,
    epochs: int,
    init: torch.Tensor | None = None,
):
    """Train the setting's head on frozen features; ``init`` (the backbone's scalar head) seeds
    a ``warm_start`` mixture's components. A setting's own ``epochs`` overrides ``epochs``."""
    head_kind = setting["head"]
    epochs = setting.get("epochs", epochs)
    outputs = {"scalar": 1, "ordinal": 2, "gaussian": 2, "categorical": n_bins}
    k = setting.get("k", 2) + 1 if head_kind == "mixture" else outputs[head_kind]
    torch.manual_seed(seed)
    net = make_head(x.shape[1], k, setting.get("hidden", 0))
    if head_kind == "mixture":  # the components' shares: one free logit per component
        net = MixtureHead(net, setting.get("k", 2))
        net.share_logits.requires_grad_(not setting.get("fixed_shares", False))
        if setting.get("warm_start"):
            if init is None:
                raise ValueError("a warm start needs the backbone's scalar head")
            from distalign.models.reward_model import components_from_scalar

            k = setting.get("k", 2)
            with torch.no_grad():
                net.inner.weight[:k] = components_from_scalar(init, k)
    opt = torch.optim.AdamW(
        net.parameters(), lr=setting.get("lr", 1e-2), weight_decay=setting.get("weight_decay", 0.0)
    )
    c, r = train
    n = setting.get("pairs", len(c))
    c, r = torch.as_tensor(c[:n]), torch.as_tensor(r[:n])
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(len(c), generator=g)
        for start in range(0, len(c), 256):
            idx = order[start : start + 256]
            loss = loss_of(setting, net(x[c[idx]]), net(x[r[idx]]), n_bins)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net


def p_greater(setting: dict, out_w, out_l, n_bins: int) -> np.ndarray:
    from distalign.losses import log_prob_greater, log_prob_tie

    if setting["head"] == "scalar":
        return torch.sigmoid(out_w[:, 0] - out_l[:, 0]).numpy()
    if setting["head"] == "mixture":
        k = out_w.shape[1] // 2
        pi = torch.softmax(out_w[:, k:], -1)
        return (pi * torch.sigmoid(out_w[:, :k] - out_l[:, :k])).sum(-1).numpy()
    mw, sw, lw = distributions(setting["head"], out_w, n_bins)
    ml, sl, ll = distributions(setting["head"], out_l, n_bins)
    if lw is None:
        return torch.special.ndtr((mw - ml) / torch.sqrt(sw**2 + sl**2)).numpy()
    return (log_prob_greater(lw, ll).exp() + 0.5 * log_prob_tie(lw, ll).exp()).numpy()


def symmetric_ece(p_chosen: np.ndarray) -> float:
    """ECE of P(chosen wins), each pair also scored in the swapped order (``metrics``)."""
    from distalign.metrics import expected_calibration_error

    p = torch.as_tensor(p_chosen, dtype=torch.float64)
    both = torch.cat([p, 1 - p])
    return expected_calibration_error(both, torch.cat([torch.ones_like(p), torch.zeros_like(p)]))


def measure(setting, net, x, test, truth, n_bins: int, init=None) -> dict:
    """Accuracy, ECE, contested detection and spread measures on the test pairs; with
    ``init`` (the backbone's own scalar head) also the paired AUROC difference of the head's
    contested detector against that scalar reward model's −|margin| (``vs_scalar_*``)."""
    result = _measure(setting, net, x, test, truth, n_bins)
    if init is not None and setting["head"] != "scalar":
        from distalign.disagreement import contested, paired_auroc_difference

        c, r, groups, _ = test
        with torch.no_grad():
            base = -(x[c] @ init - x[r] @ init).abs().double().numpy()
        diff = paired_auroc_difference(result.pop("_detector"), base, contested(groups), 1000)
        result |= {f"vs_scalar_{k}": v for k, v in diff.items()}
    result.pop("_detector", None)
    return result


def _measure(setting, net, x, test, truth, n_bins: int) -> dict:
    from distalign.disagreement import contested_detection, contested_scores

    c, r, groups, _ = test
    with torch.no_grad():
        out = net(x)
        mean, sd, _ = distributions(setting["head"], out, n_bins)
        pw = p_greater(setting, out[c], out[r], n_bins)
    mean = mean.double().numpy()
    margin = mean[c] - mean[r]
    if sd is None:  # scalar: the margin is all there is
        result = {
            "accuracy": float((margin > 0).mean()),
            "ece": float(symmetric_ece(pw)),
        }
        return result | contested_detection(margin, None, groups, 1000)  # fmt: skip
    result = {
        "accuracy": float(((pw > 0.5) | ((pw == 0.5) & (margin > 0))).mean()),
        "ece": float(symmetric_ece(pw)),
    }
    test_replies = np.unique(np.concatenate([c, r]))
    if setting["head"] == "mixture":
        return result | mixture_measures(out, test, test_replies, truth)
    sd = sd.double().numpy()
    spread = np.sqrt(sd[c] ** 2 + sd[r] ** 2)
    result |= contested_detection(margin, spread, groups, 1000)
    result["_detector"] = contested_scores(margin, spread)["detector"]
    return result | spread_keys(sd[test_replies], truth, test_replies)


def spread_keys(predicted, truth, replies) -> dict:
    from distalign.disagreement import spread_agreement

    agreement = spread_agreement(predicted, truth["rewards"][:, replies],
                                 truth["prompt_ids"][replies], truth["lengths"][replies],
                                 truth["weights"])  # fmt: skip
    return {f"spread_{k}": v for k, v in agreement.items()}


def mixture_measures(out, test, test_replies, truth) -> dict:
    """As ``rm eval`` measures a mixture head (``eval.rm``), with the shares π (learned or
    equal): per pair, the mean and std over components of the component margins (each
    component's free constant cancels in its margin); per reply, the spread over components
    of each component's reward centred within the prompt, as the truth is centred. The
    contested detector is ``disagreement.opposite_leanings`` of the component margins (it weighs
    components equally, learned shares or not). Also the AUROC of the predicted group gap
    |σ(d_1) − σ(d_2)| (diagnostic)."""
    from distalign.disagreement import (
        auroc,
        centred_spread,
        contested,
        contested_detection,
        group_gap,
        opposite_leanings,
    )

    c, r, groups, _ = test
    k = out.shape[1] // 2
    pi = torch.softmax(out[0, k:], -1).double().numpy()
    d = (out[c, :k] - out[r, :k]).double().numpy()  # the components' margins (N, K)
    d_mean = (d * pi).sum(-1)
    d_std = np.sqrt((pi * (d - d_mean[:, None]) ** 2).sum(-1))
    result = contested_detection(d_mean, d_std, groups, 1000, components=d)
    result["_detector"] = opposite_leanings(d)
    result["contested_auroc_gap"] = auroc(group_gap(1 / (1 + np.exp(-d))), contested(groups))
    comps = out[test_replies, :k].double().numpy().T  # (K, R)
    predicted = centred_spread(comps, truth["prompt_ids"][test_replies], pi)
    return result | spread_keys(predicted, truth, test_replies)


def load_features(path: str):
    data = np.load(path)
    keys = list(zip(data["prompt_id"].tolist(), data["reply_id"].tolist(), strict=True))
    index = {k: i for i, k in enumerate(keys)}
    x = torch.tensor(data["features"], dtype=torch.float32)
    return x, keys, index, str(data["model"])


def scale_of(x: torch.Tensor, train_idx: np.ndarray) -> torch.Tensor:
    """Per-feature RMS over the training replies: features are divided by it (not centred:
    a Hugging Face score head has no bias to absorb a shift)."""
    return x[train_idx].pow(2).mean(0).sqrt().clamp_min(1e-6)


def gold_truth(keys) -> dict:
    replies = {(r["prompt_id"], r["reply_id"]): r for r in read_jsonl_gz(GOLD / "replies.jsonl.gz")}
    truth = reply_truth(replies, keys)
    return {"rewards": truth["annotator_rewards"], "weights": truth["weights"],
            "prompt_ids": truth["prompt_ids"], "lengths": truth["lengths"]}  # fmt: skip


def prepared(features: str):
    """Scaled features, reply keys, train and test pair tables, the backbone's folder, and
    its scalar head on the scaled features (None when it is not a scalar reward model)."""
    x, keys, index, model = load_features(features)
    train, test = pair_table("train", index), pair_table("test", index)
    train_idx = np.unique(np.concatenate(train[:2]))
    scale = scale_of(x, train_idx)
    return x / scale, keys, train, test, model, scalar_head(model, scale)


def probe(x, truth, train, test, alpha: float = 10.0) -> dict:
    """A diagnostic, not a reward model: ridge regression from the features to each reply's
    centred disagreement, fitted on the training replies *with the truth* (which no reward
    model sees), scored by Spearman on the test replies. High: the backbone's features hold
    what disagreement needs, and the pairwise losses fail to draw it out; low: they do not."""
    from distalign.disagreement import centred_spread, spearman

    target = centred_spread(truth["rewards"], truth["prompt_ids"], truth["weights"])
    tr = np.unique(np.concatenate(train[:2]))
    te = np.unique(np.concatenate(test[:2]))
    a = np.column_stack([x.double().numpy(), np.ones(len(x))])
    w = np.linalg.solve(a[tr].T @ a[tr] + alpha * np.eye(a.shape[1]), a[tr].T @ target[tr])
    pred = a @ w
    return {"ridge_alpha": alpha, "spearman_centred_test": spearman(pred[te], target[te]),
            "spearman_centred_train": spearman(pred[tr], target[tr])}  # fmt: skip


def search(args) -> None:
    x, keys, train, test, model, init = prepared(args.features)
    truth = gold_truth(keys)
    probes = [probe(x, truth, train, test, a) for a in (1.0, 10.0, 100.0)]
    for p in probes:
        print(
            f"probe (ridge α {p['ridge_alpha']:g}, fitted on the truth): ρ centred on test "
            f"{p['spearman_centred_test']:+.3f} (train {p['spearman_centred_train']:+.3f})"
        )
    results = {}
    names = args.only or list(SETTINGS)
    for name in names:
        setting = SETTINGS[name]
        if setting.get("warm_start") and init is None:
            print(f"{name:30} skipped: {model} is not a scalar reward model to warm-start from")
            continue
        per_seed = []
        t0 = time.perf_counter()
        for seed in range(args.seeds):
            net = fit(setting, x, train[:2], seed, args.n_bins, args.epochs, init)
            per_seed.append(measure(setting, net, x, test, truth, args.n_bins, init))
        keys_ = [k for k, v in per_seed[0].items() if isinstance(v, float)]
        mean = {k: float(np.mean([m[k] for m in per_seed])) for k in keys_}
        results[name] = {"setting": setting, "mean": mean, "seeds": per_seed}

        def get(key, mean=mean):
            return mean.get(key, float("nan"))

        print(f"{name:30} acc {mean['accuracy']:.3f}  AUROC {mean['contested_auroc']:.3f} "
              f"(margin {mean['contested_auroc_margin']:.3f}, spread "
              f"{get('contested_auroc_spread'):.3f}, −|Δ|/σ {get('contested_auroc_ratio'):.3f}, "
              f"gap {get('contested_auroc_gap'):.3f})  "
              f"ρ centred {get('spread_spearman_centred'):+.3f} | length "
              f"{get('spread_partial_centred_given_length'):+.3f}  ρ raw "
              f"{get('spread_spearman_raw'):+.3f}  vs scalar RM {get('vs_scalar_difference'):+.3f} "
              f"[{get('vs_scalar_lo'):+.3f}, {get('vs_scalar_hi'):+.3f}]"
              + f"  [{time.perf_counter() - t0:.0f} s]",
              flush=True)  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    payload = {"features_of": model, "epochs": args.epochs, "seeds": args.seeds,
               "n_bins": args.n_bins, "probe": probes, "results": results}  # fmt: skip
    (out / "spread_search.json").write_text(json.dumps(payload, indent=2) + "\n")


def save(args) -> None:
    """The chosen setting's head (seed 0), trained on all training pairs, on the backbone."""
    from distalign.models.reward_model import load_reward_model, read_meta, save_reward_model

    setting = SETTINGS[args.setting]
    if setting.get("hidden") or setting["head"] == "gaussian":
        raise SystemExit("only a linear head fits a reward-model folder (ordinal, categorical, "
                         "scalar, or a mixture with equal shares)")  # fmt: skip
    if setting["head"] == "mixture" and not setting.get("fixed_shares"):
        raise SystemExit("a distalign mixture head has equal shares: pick a *_uniform setting")
    x, _, train, _, model, init = prepared(args.features)
    raw, *_ = load_features(args.features)
    train_idx = np.unique(np.concatenate(train[:2]))
    scale = scale_of(raw, train_idx)
    if setting.get("warm_start") and init is None:
        raise SystemExit(f"{args.setting} warm-starts from a scalar reward model: {model} is not")
    net = fit(setting, x, train[:2], 0, args.n_bins, args.epochs, init)
    model, tokenizer, meta = load_reward_model(args.model, device="cpu")
    if setting["head"] == "mixture":  # its K reward columns (the inner layer's last is unused)
        weight = net.inner.weight.data[: setting.get("k", 2)]
    else:
        weight = net.weight.data
    k = weight.shape[0]
    head = torch.nn.Linear(weight.shape[1], k, bias=False)
    head.weight.data = weight / scale  # the features' scaling folded into the head
    model.score = head
    model.config.num_labels = k
    model.num_labels = k
    meta = read_meta(args.model) | {
        "head": setting["head"],
        "n_bins": args.n_bins,
        "n_components": k,
        "frozen_backbone_head": {"setting": args.setting, "epochs": args.epochs, **setting},
    }
    meta.pop("eval", None)
    save_reward_model(model, tokenizer, args.out, meta)
    print(f"wrote {args.out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    e = sub.add_parser("extract")
    e.add_argument("--model", required=True)
    e.add_argument("--out", required=True)
    for name in ("search", "save"):
        s = sub.add_parser(name)
        s.add_argument("--features", required=True)
        s.add_argument("--epochs", type=int, default=40)
        s.add_argument("--n-bins", type=int, default=10)
        if name == "search":
            s.add_argument("--seeds", type=int, default=2)
            s.add_argument("--only", nargs="*")
            s.add_argument("--out", default="docs/results/level2")
        else:
            s.add_argument("--setting", required=True)
            s.add_argument("--model", required=True)
            s.add_argument("--out", required=True)
    args = ap.parse_args()
    {"extract": extract, "search": search, "save": save}[args.command](args)


if __name__ == "__main__":
    main()
