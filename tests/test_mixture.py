"""The mixture-of-Bradley–Terry head: its loss, functionals over per-reply atoms, its metrics
and spread measure (hand-made cases), and the head end to end (train, save, load, score)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from distalign import functionals as fn
from distalign.losses import bradley_terry_loss, mixture_preference_loss, mixture_rm_loss
from tests.eval.test_rm_measures import write_benchmark


def test_mixture_loss_is_bradley_terry_with_one_component():
    w, lo = torch.tensor([[1.0], [-2.0], [30.0]]), torch.tensor([[0.5], [1.0], [-30.0]])
    assert torch.allclose(mixture_preference_loss(w, lo), bradley_terry_loss(w[:, 0], lo[:, 0]))


def test_mixture_loss_matches_the_mixture_likelihood():
    w = torch.tensor([[2.0, -1.0, 0.0], [0.0, 0.0, 0.0]])
    lo = torch.tensor([[0.0, 1.0, 0.0], [5.0, -5.0, 0.0]])
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    expected = [
        -math.log((sig(2.0) + sig(-2.0) + sig(0.0)) / 3),
        -math.log((sig(-5.0) + sig(5.0) + sig(0.0)) / 3),
    ]
    assert mixture_preference_loss(w, lo).tolist() == pytest.approx(expected)
    shares = torch.tensor([0.5, 0.25, 0.25])
    first = -math.log(0.5 * sig(2.0) + 0.25 * sig(-2.0) + 0.25 * sig(0.0))
    assert mixture_preference_loss(w, lo, shares)[0].item() == pytest.approx(first)
    # both rows give P(w ≻ l) exactly ½ (σ(x) + σ(−x) = 1): ties, each counting half, as
    # held-out accuracy counts them
    loss, metrics = mixture_rm_loss(w, lo)
    assert loss.item() == pytest.approx(sum(expected) / 2)
    assert metrics["accuracy"].item() == 0.5
    assert metrics["margin"].item() == pytest.approx(((2 - 2 + 0) + (-5 + 5 + 0)) / 6)
    spread = torch.tensor([[2.0, -2.0, 0.0], [-5.0, 5.0, 0.0]]).std(-1, unbiased=False).mean()
    assert metrics["component_spread"].item() == pytest.approx(spread.item())


def test_mixture_loss_is_stable_for_huge_margins():
    w = torch.tensor([[1e4, -1e4]], requires_grad=True)
    lo = torch.zeros(1, 2)
    loss = mixture_preference_loss(w, lo)
    loss.backward()
    assert torch.isfinite(loss) and loss.item() == pytest.approx(math.log(2))
    assert torch.isfinite(w.grad).all()


def brute_cvar(atoms: list[float], alpha: float) -> float:
    """CVaR of equally likely atoms by splitting each into 1000 equal pieces."""
    pieces = sorted(a for a in atoms for _ in range(1000))
    n = round(alpha * len(pieces))
    return sum(pieces[:n]) / n


def test_functionals_over_per_row_atoms_match_brute_force():
    atoms = torch.tensor([[3.0, -1.0, 2.0, 0.5], [0.0, 0.0, 1.0, -4.0]])
    p = torch.full_like(atoms, 0.25)
    assert fn.expectation(p, atoms).tolist() == pytest.approx(atoms.mean(-1).tolist())
    assert fn.std(p, atoms).tolist() == pytest.approx(atoms.std(-1, unbiased=False).tolist())
    for alpha in (0.25, 0.5, 0.6, 1.0):
        got = fn.cvar(p, alpha, atoms).tolist()
        assert got == pytest.approx([brute_cvar(a, alpha) for a in atoms.tolist()], abs=1e-3)
    assert fn.quantile(p, 0.5, atoms).tolist() == [0.5, 0.0]  # lower median
    assert fn.quantile(p, 0.3, atoms).tolist() == [0.5, 0.0]
    assert fn.quantile(p, 0.25, atoms).tolist() == [-1.0, -4.0]
    # shared bins still work as before
    bins = torch.tensor([[0.5, 0.5, 0.0]])
    assert fn.cvar(bins, 0.5).item() == pytest.approx(1.0)
    assert fn.quantile(bins, 0.75).item() == 2.0


def test_mixture_win_probability_is_the_models_own_preference():
    a, b = torch.tensor([[1.0, -2.0]]), torch.tensor([[0.0, 0.0]])
    expected = (torch.sigmoid(torch.tensor(1.0)) + torch.sigmoid(torch.tensor(-2.0))) / 2
    assert fn.mixture_win_probability(a, b).item() == pytest.approx(expected.item())
    assert fn.mixture_win_probability(a, a).item() == pytest.approx(0.5)
    # each component's offset cancels: the same constant on both replies changes nothing
    shift = torch.tensor([[7.0, -3.0]])
    assert fn.mixture_win_probability(a + shift, b + shift).item() == pytest.approx(expected.item())
    p = torch.full_like(a, 0.5)
    by_name = fn.apply_functional("win_probability", p, p_ref=b, values=a)
    assert by_name.item() == pytest.approx(expected.item())


def test_mixture_summary_on_hand_made_pairs():
    from distalign.metrics import mixture_summary

    chosen = torch.tensor([[2.0, 2.0], [1.0, -3.0], [0.0, 0.0]])
    rejected = torch.tensor([[0.0, 0.0], [0.0, 0.0], [1.0, 1.0]])
    out = mixture_summary(chosen, rejected)
    # P(w ≻ l): σ(2) (win), (σ(1) + σ(−3))/2 < ½ (loss), σ(−1) (loss)
    assert out["accuracy"] == pytest.approx(1 / 3)
    assert out["accuracy_expectation"] == pytest.approx(1 / 3)  # means 2 > 0, −1 < 0, 0 < 1
    assert out["component_spread"] == pytest.approx((0 + 2 + 0) / 3)
    assert out["pairs"] == 3 and 0 <= out["ece"] <= 1
    # the labels' negative log-likelihood: −log P(w ≻ l) of each pair, averaged
    s = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    nll = [-math.log(s(2)), -math.log((s(1) + s(-3)) / 2), -math.log(s(-1))]
    assert out["loss"] == pytest.approx(sum(nll) / 3)
    assert math.isnan(mixture_summary(chosen[:0], rejected[:0])["loss"])


def test_mixture_spread_is_centred_within_the_prompt(tmp_path):
    from distalign.disagreement import centred_spread, spread_agreement
    from distalign.eval.rm import mixture_reply_spread_measures
    from distalign.gold.truth import pair_replies

    truth = pair_replies(str(write_benchmark(tmp_path / "b")), "test", [0, 1, 2])
    rng = np.random.default_rng(0)
    parts = rng.normal(size=(len(truth.prompt_ids), 2))  # each distinct reply's components

    def side(idx, offsets=(0.0, 0.0)):
        return torch.tensor(parts[idx] + np.array(offsets))

    outputs: dict = {}
    result = mixture_reply_spread_measures(truth, side(truth.chosen), side(truth.rejected), outputs)
    predicted = centred_spread(parts.T, truth.prompt_ids)
    np.testing.assert_allclose(outputs["spread_points"]["predicted"], predicted)
    expected = spread_agreement(predicted, truth.annotator_rewards, truth.prompt_ids,
                                truth.lengths, truth.weights)  # fmt: skip
    assert result["spread_replies"] == 5
    assert result["spread_spearman_centred"] == pytest.approx(expected["spearman_centred"])
    # a constant per component (all Bradley–Terry can leave free) changes no prediction
    moved: dict = {}
    mixture_reply_spread_measures(
        truth, side(truth.chosen, (5.0, -9.0)), side(truth.rejected, (5.0, -9.0)), moved
    )
    np.testing.assert_allclose(moved["spread_points"]["predicted"], predicted, atol=1e-12)


@pytest.fixture(scope="module")
def mixture_rm(tiny_model_dir, tmp_path_factory):
    import shutil

    from distalign.rm.config import RMTrainConfig
    from distalign.rm.train import run

    tmp = tmp_path_factory.mktemp("mixture")
    folder = write_benchmark(tmp / "bench")
    shutil.copy(folder / "test.jsonl.gz", folder / "train.jsonl.gz")
    cfg = RMTrainConfig(
        model_name_or_path=str(tiny_model_dir), dataset_name=str(folder), head="mixture",
        n_components=3, max_steps=2, max_length=64, max_prompt_length=32, report_to="none",
        output_dir=str(tmp / "rm"), learning_rate=1e-3,
    )  # fmt: skip
    return run(cfg), tmp / "rm", folder


def test_rm_train_with_a_mixture_head_saves_k_components_and_its_measures(mixture_rm):
    from transformers import AutoModelForSequenceClassification

    result, out, _ = mixture_rm
    assert result["pairs"] == 3 and "component_spread" in result
    assert result["spread_replies"] == 5 and "contested_auroc_spread" in result
    assert result["contested_detector"] == "opposite leanings of the components"
    assert "contested_auroc_ratio" in result  # −|mean margin| / spread, kept beside it
    meta = json.loads((out / "final" / "distalign_rm.json").read_text())
    assert meta["head"] == "mixture" and meta["n_components"] == 3
    model = AutoModelForSequenceClassification.from_pretrained(out / "final")
    assert model.config.num_labels == 3  # plain transformers loads the K component rewards
    assert list((out / "final").glob("eval_*_spread.png"))
    log = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("train/mixture_loss" in row for row in log)


def test_a_mixture_reward_model_scores_with_functionals_over_its_components(mixture_rm, tmp_path):
    from distalign.rl.rewards import RewardModelSource
    from distalign.rm.score import score_file

    _, out, _ = mixture_rm
    prompts = [[{"role": "user", "content": "p1"}]] * 2
    replies = ["a short reply", "a much longer reply with more words in it"]
    mean = RewardModelSource(str(out / "final"), device="cpu", dtype="float32")
    cvar = RewardModelSource(str(out / "final"), functional="cvar", alpha=1 / 3, device="cpu",
                             dtype="float32")  # fmt: skip
    components = mean.distributions(prompts, replies)
    assert components.shape == (2, 3)
    got = mean(prompts, replies)
    assert torch.allclose(got.rewards, components.mean(-1), atol=1e-6)
    assert got.std is None  # raw components have no comparable spread (free constants)
    # CVaR over the lowest third of three equal atoms: the lowest component's gain over the
    # SFT reply (each component's constant cancels in the gain)
    assert cvar.needs_reference and not mean.needs_reference
    ref = mean.distributions(prompts[:1], ["an SFT reply"]).repeat(2, 1)
    gains = components - ref
    scored = cvar(prompts, replies, ref)
    assert torch.allclose(scored.rewards, gains.min(-1).values, atol=1e-6)
    assert torch.allclose(scored.std, gains.std(-1, unbiased=False), atol=1e-6)
    with pytest.raises(ValueError, match="SFT reply"):
        cvar(prompts, replies)
    rows = tmp_path / "r.jsonl"
    rows.write_text("".join(json.dumps({"prompt": "p1", "completion": r}) + "\n" for r in replies))
    path, n = score_file(str(out / "final"), str(rows), None, device="cpu", dtype="float32")
    scored = [json.loads(x) for x in path.read_text().splitlines()]
    assert n == 2 and len(scored[0]["components"]) == 3 and "cvar" not in scored[0]
    assert scored[0]["reward"] == pytest.approx(float(components[0].mean()), abs=1e-5)


def test_rl_train_against_a_mixture_rm_through_its_worst_component(
    mixture_rm, tiny_model_dir, tmp_path
):
    from distalign.rl.train import run
    from tests.rl.test_train import config

    _, out, _ = mixture_rm
    kw = dict(use_peft=True, max_steps=1, num_generations=2, per_device_train_batch_size=4,
              gradient_accumulation_steps=1, beta=0.1, max_eval_samples=2)  # fmt: skip
    result = run(config(tiny_model_dir, tmp_path, reward=str(out / "final"), functional="cvar",
                        alpha=0.5, **kw))  # fmt: skip
    assert torch.isfinite(torch.tensor(result["final"]["reward"]))
    rows = [json.loads(x) for x in (tmp_path / "rl" / "history.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(len(r["distribution"]) == 3 for r in rows)


def test_mixture_pair_spread_ignores_each_components_constant():
    from distalign.eval.rm import mixture_margin_spread

    chosen = torch.tensor([[1.0, 3.0], [0.0, 0.0]])
    rejected = torch.tensor([[0.0, 0.0], [2.0, -2.0]])
    margin, spread = mixture_margin_spread(chosen, rejected)
    assert margin.tolist() == pytest.approx([2.0, 0.0])
    assert spread.tolist() == pytest.approx([1.0, 2.0])  # std of (1, 3) and of (−2, 2)
    shift = torch.tensor([100.0, -50.0])
    assert mixture_margin_spread(chosen + shift, rejected + shift)[1].tolist() == pytest.approx(
        spread.tolist()
    )


def test_rm_train_refuses_settings_a_mixture_head_ignores():
    from distalign.rm.config import RMTrainConfig

    with pytest.raises(ValueError, match="entropy_weight"):
        RMTrainConfig(head="mixture", entropy_weight=0.1, report_to="none")


@pytest.fixture(scope="module")
def scalar_rm(tiny_model_dir, tmp_path_factory):
    from tests.conftest import train_tiny_reward_models

    out = tmp_path_factory.mktemp("scalar")
    return train_tiny_reward_models(tiny_model_dir, out, ("scalar", "categorical"))


def test_a_mixture_warm_starts_from_a_scalar_reward_model(scalar_rm, tiny_model_dir):
    from distalign.models.reward_model import build_reward_model, saved_head

    saved = saved_head(scalar_rm["scalar"])
    assert saved.shape[0] == 1 and saved_head(tiny_model_dir) is None  # a causal LM has none
    torch.manual_seed(0)
    model, _ = build_reward_model(str(scalar_rm["scalar"]), "mixture", n_components=3)
    weight = model.score.weight.detach()
    assert weight.shape == (3, saved.shape[1])
    rms = saved.pow(2).mean().sqrt()
    noise = weight - saved  # each component = the scalar head + noise of 0.1 × its RMS
    assert float(noise.pow(2).mean().sqrt()) == pytest.approx(float(0.1 * rms), rel=0.2)
    assert not torch.equal(weight[0], weight[1])  # the components can part


def test_training_goes_on_from_a_reward_models_own_head(scalar_rm, tiny_model_dir):
    from distalign.models.reward_model import build_reward_model, saved_head

    for head, kw in (("scalar", {}), ("categorical", {"n_bins": 5})):
        model, _ = build_reward_model(str(scalar_rm[head]), head, **kw)
        assert torch.equal(model.score.weight.detach(), saved_head(scalar_rm[head]))
    # a head of another kind or size is replaced by a new, small one
    model, _ = build_reward_model(str(scalar_rm["categorical"]), "ordinal")
    assert model.score.weight.shape[0] == 2
    model, _ = build_reward_model(str(scalar_rm["scalar"]), "categorical", n_bins=7)
    assert model.score.weight.shape[0] == 7 and model.score.weight.abs().max() < 1


def test_rm_train_warm_starts_a_mixture_and_it_reloads(scalar_rm, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from distalign.models.reward_model import load_reward_model, saved_head
    from distalign.rm.config import RMTrainConfig
    from distalign.rm.train import run

    data = scalar_rm["scalar"].parent.parent / "pairs"
    head = saved_head(scalar_rm["scalar"])[0]
    for peft in (False, True):
        out = tmp_path / f"rm_{peft}"
        cfg = RMTrainConfig(
            model_name_or_path=str(scalar_rm["scalar"]), dataset_name=str(data), head="mixture",
            n_components=2, max_steps=1, max_length=64, max_prompt_length=32, report_to="none",
            output_dir=str(out), use_peft=peft,
        )  # fmt: skip
        run(cfg)
        model, _, meta = load_reward_model(out / "final")  # LoRA: its base has 1 label
        weight = model.score.weight if not peft else model.base_model.model.score.weight
        assert meta["n_components"] == 2 and weight.shape[0] == 2
        # each component still points where the scalar head did (a fresh head would not)
        cos = torch.nn.functional.cosine_similarity(weight.detach(), head[None], dim=-1)
        assert (cos > 0.9).all(), cos
        if not peft:
            plain = AutoModelForSequenceClassification.from_pretrained(out / "final")
            assert plain.config.num_labels == 2


def test_rm_train_refuses_a_lora_folder_as_its_backbone(tmp_path):
    from distalign.models.reward_model import build_reward_model

    (tmp_path / "adapter_config.json").write_text('{"base_model_name_or_path": "x"}')
    with pytest.raises(ValueError, match="LoRA adapter: train from its base model"):
        build_reward_model(str(tmp_path), "mixture")
