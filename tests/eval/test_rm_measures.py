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
    from distalign.disagreement import auroc, contested
    from distalign.eval.rm import distribution_margin_spread, evaluate_reward_model

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
    # with the known P(chosen): the ceiling and the accuracy expected over the label draws
    known = np.array([(c + t) / 2 for c, t in GROUP_P])
    both = evaluate_reward_model(*args, None, p, n_bootstrap=50, p_chosen=known)
    assert both["bayes_ceiling"] == pytest.approx(np.maximum(known, 1 - known).mean())
    if head == "scalar":
        right = np.where(margin > 0, known, np.where(margin < 0, 1 - known, 0.5))
        assert both["accuracy_vs_truth"] == pytest.approx(right.mean())
    assert 0 < both["accuracy_vs_truth"] < 1 and both["accuracy"] == result["accuracy"]
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
    assert saved["bayes_ceiling"] == pytest.approx(np.mean([max(c + t, 2 - c - t) / 2
                                                            for c, t in GROUP_P]))  # fmt: skip
    assert 0 < saved["accuracy_vs_truth"] < 1
    assert result["contested_auroc_spread_ci95"] == saved["contested_auroc_spread_ci95"]
    (tmp_path / "plain").mkdir()
    rows = [{k: v for k, v in r.items() if k != "p_chosen_by_group"} for r in handmade_rows()]
    write_jsonl(tmp_path / "plain" / "test.jsonl", rows)
    plain = run_rm_eval(
        str(tiny_rms["scalar"]), str(tmp_path / "plain"), "test", max_length=64,
        output=str(tmp_path / "p.json"),
    )  # fmt: skip
    assert not any(k.startswith("contested") for k in plain)
    assert "accuracy_vs_truth" in plain and "bayes_ceiling" in plain  # p_chosen alone gives them
    assert "pair_scores" not in plain and not (tmp_path / "p_pair_scores.csv").exists()


def test_rm_eval_writes_pair_scores_that_compare_two_reward_models(tiny_rms, tmp_path):
    from distalign.disagreement import auroc
    from distalign.eval.rm import compare_contested, read_pair_scores, run_rm_eval

    write_jsonl(tmp_path / "test.jsonl", handmade_rows())
    files = {}
    for head in ("scalar", "categorical"):
        result = run_rm_eval(str(tiny_rms[head]), str(tmp_path), "test", max_length=64,
                             output=str(tmp_path / f"{head}.json"))  # fmt: skip
        files[head] = tmp_path / f"{head}_pair_scores.csv"
        assert result["pair_scores"] == str(files[head])
        table = read_pair_scores(files[head])
        assert len(table["margin"]) == 6
        np.testing.assert_array_equal(table["contested"].astype(bool), CONTESTED)
        # each pair's prompt, which the intervals resample (a prompt's pairs together)
        prompts = [json.dumps(r["prompt"]) for r in handmade_rows()]
        same_prompt = np.equal.outer(prompts, prompts)
        np.testing.assert_array_equal(np.equal.outer(table["prompt"], table["prompt"]),
                                      same_prompt)  # fmt: skip
        assert result["contested_bootstrap"] == "clusters"
        # the file's contested score is the head's own detector: its AUROC is the reported one
        assert auroc(table["contested_score"], table["contested"]) == pytest.approx(
            result["contested_auroc"]
        )
    same = compare_contested(files["scalar"], files["scalar"], n=100)
    assert same["difference"] == 0.0 and same["p_not_above"] == 1.0
    both = compare_contested(files["categorical"], files["scalar"], n=100)
    a, b = (read_pair_scores(files[h]) for h in ("categorical", "scalar"))
    flags = a["contested"]
    assert both["difference"] == pytest.approx(
        auroc(a["contested_score"], flags) - auroc(b["contested_score"], flags)
    )
    other = tmp_path / "other.csv"
    other.write_text("pair,margin,contested_score,contested\n0,1.0,0.5,1\n")
    with pytest.raises(ValueError, match="same pairs"):
        compare_contested(files["scalar"], other)


# --- spread of distinct replies vs the annotators' disagreement (gold.truth) ---------------

ATTRS = {  # reply -> attributes; prompt p1 has three replies, p2 two
    ("p1", 0): [0.8, 1.0, 0.0, 0.2, 0.0, 0.0],
    ("p1", 1): [0.7, 0.0, 0.1, 1.5, 0.0, 0.0],
    ("p1", 2): [0.6, 1.0, 0.0, 0.9, 0.0, 0.0],
    ("p2", 0): [0.5, 1.0, 0.0, 0.1, 0.0, 0.0],
    ("p2", 1): [0.9, 0.0, 0.0, 3.0, 0.0, 0.0],
}
PAIRS = [(("p1", 0), ("p1", 1)), (("p1", 2), ("p1", 0)), (("p2", 1), ("p2", 0))]


def write_benchmark(folder, pairs=PAIRS):
    import gzip

    from distalign.gold.judge import ATTRIBUTES

    folder.mkdir(parents=True, exist_ok=True)
    rows = [
        {"prompt": c[0], "chosen": f"{c[0]}-{c[1]}", "rejected": f"{r[0]}-{r[1]}",
         "prompt_id": c[0], "chosen_reply_id": c[1], "rejected_reply_id": r[1],
         "p_chosen": 0.45, "p_chosen_by_group": {"concise": 0.3, "thorough": 0.6}}
        for c, r in pairs
    ]  # fmt: skip
    replies = [
        {"prompt_id": p, "reply_id": i, "tokens": 10 * (j + 1),
         "attributes": dict(zip(ATTRIBUTES, a, strict=True))}
        for j, ((p, i), a) in enumerate(ATTRS.items())
    ]  # fmt: skip
    for name, items in (("test.jsonl.gz", rows), ("replies.jsonl.gz", replies)):
        with gzip.open(folder / name, "wt", encoding="utf-8") as f:
            f.writelines(json.dumps(x) + "\n" for x in items)
    return folder


def test_pair_replies_maps_pairs_to_distinct_replies_and_annotator_rewards(tmp_path):
    from distalign.gold.judge import annotator_rewards, annotator_weights
    from distalign.gold.truth import pair_replies

    folder = write_benchmark(tmp_path / "bench")
    truth = pair_replies(str(folder), "test", [0, 1, 2])
    # first seen first: p1-0, p1-1, p1-2, p2-1, p2-0
    np.testing.assert_array_equal(truth.chosen, [0, 2, 3])
    np.testing.assert_array_equal(truth.rejected, [1, 0, 4])
    assert list(truth.prompt_ids) == ["p1", "p1", "p1", "p2", "p2"]
    np.testing.assert_array_equal(truth.lengths, [10, 20, 30, 50, 40])
    order = [("p1", 0), ("p1", 1), ("p1", 2), ("p2", 1), ("p2", 0)]
    expected = annotator_rewards(np.array([ATTRS[k] for k in order])).T
    np.testing.assert_allclose(truth.annotator_rewards, expected)
    np.testing.assert_allclose(truth.weights, annotator_weights()[2])
    sub = pair_replies(str(folder), "test", [2])  # a subset of rows: only its replies
    assert list(sub.prompt_ids) == ["p2", "p2"] and list(sub.chosen) == [0]
    # no truth where the folder cannot give it
    assert pair_replies(str(tmp_path / "missing"), "test", [0]) is None
    assert pair_replies(str(folder), "train", [0]) is None
    bad = write_benchmark(tmp_path / "bad", pairs=[(("p1", 0), ("p3", 7))])
    assert pair_replies(str(bad), "test", [0]) is None
    assert pair_replies("gold", "test", [0, 1]).annotator_rewards.shape[1] >= 2


def test_reply_spread_measures_average_a_reply_over_its_pairs(tmp_path):
    import torch

    from distalign.disagreement import centred_spread, spearman
    from distalign.eval.rm import reply_spread_measures
    from distalign.functionals import std
    from distalign.gold.truth import pair_replies

    truth = pair_replies(str(write_benchmark(tmp_path / "b")), "test", [0, 1, 2])
    centred = centred_spread(truth.annotator_rewards, truth.prompt_ids, truth.weights)
    # each reply's predicted distribution: two bins, 1 and 10, apart by its true spread's rank
    rank = np.argsort(np.argsort(centred))

    def logp(idx):
        q = 0.05 + 0.08 * rank[idx]  # more mass on the far bin: a larger std
        p = np.zeros((len(idx), 10))
        p[:, 0], p[:, -1] = 1 - q, q
        return torch.tensor(p).clamp_min(1e-30).log()

    result = reply_spread_measures(truth, logp(truth.chosen), logp(truth.rejected))
    assert result["spread_replies"] == 5
    assert result["spread_spearman_centred"] == pytest.approx(1.0)
    predicted = std(logp(np.arange(5)).exp()).numpy()
    assert result["spread_predicted_vs_length"] == pytest.approx(spearman(predicted, truth.lengths))
    # reply p1-0 sits in two pairs: what counts is the mean of its two predictions
    w, lo = logp(truth.chosen), logp(truth.rejected)
    lo[1] = torch.tensor([0.5] + [0.0] * 8 + [0.5]).log()  # p1-0 as rejected, now wider
    moved = reply_spread_measures(truth, w, lo)
    expected = np.array(predicted)
    expected[0] = (predicted[0] + 4.5) / 2
    assert moved["spread_spearman_centred"] == pytest.approx(spearman(expected, centred))


def test_run_rm_eval_reports_reply_spread_on_a_benchmark_folder(tiny_rms, tmp_path):
    from distalign.eval.rm import run_rm_eval

    folder = write_benchmark(tmp_path / "bench")
    dist = run_rm_eval(str(tiny_rms["categorical"]), str(folder), "test", max_length=64,
                       output=str(tmp_path / "d.json"))  # fmt: skip
    assert dist["spread_replies"] == 5 and -1 <= dist["spread_spearman_centred"] <= 1
    assert (tmp_path / "d_spread.png").is_file() and dist["plot_spread"].endswith("d_spread.png")
    scalar = run_rm_eval(str(tiny_rms["scalar"]), str(folder), "test", max_length=64,
                         output=str(tmp_path / "s.json"))  # fmt: skip
    assert not any(k.startswith("spread_") for k in scalar)


def test_rm_train_reports_reply_spread_when_held_out_on_a_benchmark_folder(
    tiny_model_dir, tmp_path
):
    import shutil

    from distalign.rm.config import RMTrainConfig
    from distalign.rm.train import run

    folder = write_benchmark(tmp_path / "bench")
    shutil.copy(folder / "test.jsonl.gz", folder / "train.jsonl.gz")
    cfg = RMTrainConfig(
        model_name_or_path=str(tiny_model_dir), dataset_name=str(folder), head="ordinal",
        n_bins=5, max_steps=1, max_length=64, max_prompt_length=32, report_to="none",
        output_dir=str(tmp_path / "rm"),
    )  # fmt: skip
    result = run(cfg)
    assert result["spread_replies"] == 5 and "contested_auroc" in result
    saved = json.loads((tmp_path / "rm" / "summary.json").read_text())["eval"]
    assert saved["spread_spearman_centred"] == result["spread_spearman_centred"]
    assert list((tmp_path / "rm" / "final").glob("eval_*_spread.png"))
    # the pairs' known P(chosen): the ceiling and the accuracy against it, logged as well
    logged = [json.loads(line) for line in (tmp_path / "rm" / "metrics.jsonl").open()]
    last = [row for row in logged if "eval/bayes_ceiling" in row][-1]
    assert last["eval/accuracy_vs_truth"] == result["accuracy_vs_truth"]
    assert result["bayes_ceiling"] == pytest.approx(0.55)
    assert 0.45 <= result["accuracy_vs_truth"] <= 0.55  # each pair gives 0.45, 0.55 or ½


def test_pairs_with_an_empty_prompt_are_each_their_own_cluster():
    import datasets

    from distalign.eval.rm import prompt_clusters

    empty = [{"role": "user", "content": ""}]
    ds = datasets.Dataset.from_list([
        {"prompt": empty}, {"prompt": empty},
        {"prompt": [{"role": "user", "content": "Hi?"}]},
        {"prompt": [{"role": "user", "content": "Hi?"}]},
    ])  # fmt: skip
    clusters = prompt_clusters(ds, 4)
    assert clusters[2] == clusters[3] and len({*clusters[:2], clusters[2]}) == 3


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ("data/pairs.jsonl", "eval_pairs_test.json"),
        ("pairs.jsonl.gz", "eval_pairs_test.json"),
        ("/tmp/HH.Parquet", "eval_HH_test.json"),
        ("gold", "eval_gold_test.json"),
        ("Anthropic/hh-rlhf", "eval_Anthropic--hh-rlhf_test.json"),
        ("a/test.jsonl", "eval_a_test_test.json"),
        ("runs/v1.2", "eval_runs--v1.2_test.json"),  # not here: a hub id
        (".jsonl", "eval_.jsonl_test.json"),
    ],
)
def test_eval_file_name_drops_data_suffixes(data, expected):
    from distalign.eval.rm import eval_file_name

    assert eval_file_name(data, "test") == expected
    assert eval_file_name(data, "test", first=5, lengths=(64, 32)) == expected.replace(
        "_test.json", "_test_first5_len64-32.json"
    )


def test_the_report_shows_the_held_out_evaluation_and_evaluations_never_collide(tmp_path):
    """An ``rm eval`` of more pairs of the training split is no held-out figure; two data sets
    whose names give one file name get two files."""
    from distalign.eval.rm import _unclaimed
    from distalign.report.runs import main_evaluation

    run = tmp_path / "rm"
    (run / "final").mkdir(parents=True)
    (run / "config.yaml").write_text("dataset_name: pairs\ndataset_test_split: test\n")
    held = {"data": "pairs", "split": "test", "pairs": 16}
    (run / "final" / "eval_pairs_test.json").write_text(json.dumps(held))
    (run / "final" / "eval_pairs_train.json").write_text(
        json.dumps({"data": "pairs", "split": "train", "pairs": 160}))  # fmt: skip
    assert main_evaluation(run)[1] == held
    # the file training wrote, named in summary.json, whatever the config says
    (run / "final" / "eval_other_test.json").write_text(json.dumps({"data": "x", "pairs": 4}))
    (run / "summary.json").write_text(json.dumps({"eval_file": "eval_other_test.json"}))
    assert main_evaluation(run)[1] == {"data": "x", "pairs": 4}
    (run / "summary.json").unlink()
    path = run / "final" / "eval_pairs_test.json"
    assert _unclaimed(path, "pairs") == path  # the same data: replaced, as before
    other = _unclaimed(path, str(tmp_path / "b" / "pairs"))
    assert other.parent == path.parent and other.name.startswith("eval_pairs_test_")
    assert _unclaimed(run / "final" / "new.json", "x") == run / "final" / "new.json"


def test_eval_file_name_keeps_a_split_specs_slices_in_words_a_file_name_takes():
    from distalign.eval.rm import eval_file_name

    named = [eval_file_name("org/hs2", s) for s in ("a[:90%]", "a[90%:]", "a+b", "test[10:20]")]
    assert named == ["eval_org--hs2_a_-90pct.json", "eval_org--hs2_a_90pct-.json",
                     "eval_org--hs2_a_and_b.json", "eval_org--hs2_test_10-20.json"]  # fmt: skip
