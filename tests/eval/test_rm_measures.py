"""Contested pairs in reward-model evaluation: ``p_chosen_by_group`` carried by the loader,
and the AUROC of flagging pairs whose groups' majorities differ, on tiny reward models."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from tests.conftest import write_jsonl

# per pair: (concise, thorough) P(chosen ≻ rejected); contested where one is > ½, one < ½
GROUP_P = [(0.2, 0.7), (0.8, 0.9), (0.6, 0.3), (0.4, 0.45), (0.9, 0.1), (0.55, 0.6)]
CONTESTED = [True, False, True, False, True, False]


def handmade_rows() -> list[dict]:
    from tests.rm.test_train import make_pairs

    rows = make_pairs(len(GROUP_P), seed=3)
    for row, (c, t) in zip(rows, GROUP_P, strict=True):
        row["p_chosen"] = (c + t) / 2
        row["p_chosen_by_group"] = {"concise": c, "thorough": t}
    return rows


def test_load_preferences_carries_p_chosen_by_group(tmp_path):
    from distalign.data.load import load_preferences, p_chosen_by_group

    ds = load_preferences(str(write_jsonl(tmp_path / "test.jsonl", handmade_rows())))
    assert ds[0]["p_chosen_by_group"] == [
        {"group": "concise", "p": 0.2},
        {"group": "thorough", "p": 0.7},
    ]
    np.testing.assert_allclose(p_chosen_by_group(ds), GROUP_P)
    assert p_chosen_by_group(load_preferences(ds)) is not None  # the list form reloads
    one = [{"prompt": "q", "chosen": "a", "rejected": "b"}]
    plain = load_preferences(str(write_jsonl(tmp_path / "plain.jsonl", one)))
    assert plain[0]["p_chosen_by_group"] is None and p_chosen_by_group(plain) is None
    # a CSV cell holds the mapping as JSON
    csv = 'prompt,chosen,rejected,p_chosen_by_group\nq,a,b,"{""g"": 0.25}"\n'
    (tmp_path / "c.csv").write_text(csv)
    assert load_preferences(str(tmp_path / "c.csv"))[0]["p_chosen_by_group"] == [
        {"group": "g", "p": 0.25}
    ]


def test_gold_benchmark_rows_have_group_probabilities():
    from distalign.data.load import load_preferences, p_chosen_by_group

    p = p_chosen_by_group(load_preferences("gold", "test", limit=20))
    assert p.shape == (20, 2) and ((p > 0) & (p < 1)).all()


@pytest.mark.parametrize("bad", [{"g": 1.5}, {"g": "x"}, [0.2, 0.3], {"g": None}])
def test_bad_group_probabilities_name_the_field(tmp_path, bad):
    from distalign.data.formats import PreferenceFormatError
    from distalign.data.load import load_preferences

    row = {"prompt": "q", "chosen": "a", "rejected": "b", "p_chosen_by_group": bad}
    with pytest.raises(PreferenceFormatError, match="p_chosen_by_group"):
        load_preferences(str(write_jsonl(tmp_path / "bad.jsonl", [row])))


@pytest.fixture(scope="module")
def tiny_rms(tiny_model_dir, tmp_path_factory):
    from tests.conftest import train_tiny_reward_models

    out = tmp_path_factory.mktemp("rms")
    return train_tiny_reward_models(tiny_model_dir, out, ("scalar", "categorical"))


def pair_loader(final, data_dir):
    from torch.utils.data import DataLoader

    from distalign.data.load import load_preferences, p_chosen_by_group
    from distalign.data.pairs import PairCollator, tokenize_pairs
    from distalign.models.reward_model import load_reward_model

    model, tokenizer, meta = load_reward_model(str(final), device="cpu")
    ds = tokenize_pairs(load_preferences(str(data_dir), "test"), tokenizer, 64)
    loader = DataLoader(ds, batch_size=4, collate_fn=PairCollator(tokenizer.pad_token_id))
    return model, loader, meta, p_chosen_by_group(ds)


@pytest.mark.parametrize("head", ["scalar", "categorical"])
def test_evaluate_reward_model_reports_contested_detection(tiny_rms, tmp_path, head):
    from distalign.eval.rm import distribution_margin_spread, evaluate_reward_model
    from distalign.metrics import auroc, contested

    write_jsonl(tmp_path / "test.jsonl", handmade_rows())
    model, loader, meta, p = pair_loader(tiny_rms[head], tmp_path)
    args = (model, loader, None, head, meta.get("n_bins", 10))
    plain = evaluate_reward_model(*args)
    outputs: dict = {}
    result = evaluate_reward_model(*args, outputs, p, n_bootstrap=200)
    assert {k: result[k] for k in plain} == plain  # the old keys keep their values
    assert result["contested_share"] == pytest.approx(0.5) and result["contested_pairs"] == 3
    np.testing.assert_array_equal(contested(p), CONTESTED)
    flags = np.array(CONTESTED)
    if head == "scalar":
        margin = (outputs["chosen"] - outputs["rejected"]).double().numpy()
        assert result["contested_detector"] == "-|margin|"
        assert "contested_auroc_spread" not in result
        assert result["contested_auroc"] == result["contested_auroc_margin"]
    else:
        margin, spread = distribution_margin_spread(
            outputs["logp_chosen"], outputs["logp_rejected"]
        )
        assert result["contested_detector"] == "-|margin|/spread"
        assert result["contested_auroc_spread"] == pytest.approx(auroc(spread, flags))
        assert result["contested_auroc"] == pytest.approx(auroc(-np.abs(margin) / spread, flags))
    assert result["contested_auroc_margin"] == pytest.approx(auroc(-np.abs(margin), flags))
    for key in [k for k in result if k.endswith("_ci95")]:
        lo, hi = result[key]
        assert 0 <= lo <= result[key.removesuffix("_ci95")] <= hi <= 1
    json.dumps(result)  # JSON-ready (intervals are lists)


def test_run_rm_eval_writes_contested_keys_only_with_group_probabilities(tiny_rms, tmp_path):
    from distalign.eval.rm import run_rm_eval

    (tmp_path / "groups").mkdir()
    write_jsonl(tmp_path / "groups" / "test.jsonl", handmade_rows())
    result = run_rm_eval(
        str(tiny_rms["categorical"]), str(tmp_path / "groups"), "test", max_length=64,
        output=str(tmp_path / "e.json"),
    )  # fmt: skip
    saved = json.loads((tmp_path / "e.json").read_text())
    assert saved["contested_share"] == 0.5 and not math.isnan(saved["contested_auroc"])
    assert result["contested_auroc_spread_ci95"] == saved["contested_auroc_spread_ci95"]
    (tmp_path / "plain").mkdir()
    rows = [{k: v for k, v in r.items() if k != "p_chosen_by_group"} for r in handmade_rows()]
    write_jsonl(tmp_path / "plain" / "test.jsonl", rows)
    plain = run_rm_eval(
        str(tiny_rms["scalar"]), str(tmp_path / "plain"), "test", max_length=64,
        output=str(tmp_path / "p.json"),
    )  # fmt: skip
    assert not any(k.startswith("contested") for k in plain)
