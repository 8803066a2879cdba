"""The gold judge: deterministic, documented conflict between groups, labels as promised."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from distalign.gold import judge as gold

PROMPTS = ["Explain why the sky is blue.", "List five fruits that are red.", "Name some birds."]
REPLIES = [
    "Sunlight is scattered by air molecules, and blue light is scattered the most.",
    "1. Strawberry\n2. Cherry\n3. Raspberry\n4. Red apple\n5. Pomegranate",
    "Birds birds birds birds birds birds birds birds and",
]


def test_attributes_by_hand():
    a = gold.text_attributes(PROMPTS[1], REPLIES[1])
    assert a["structure"] == 1.0 and a["complete"] == 1.0 and a["repetition"] == 0.0
    b = gold.text_attributes(PROMPTS[2], REPLIES[2])
    assert b["complete"] == 0.0  # stops mid-sentence
    assert b["repetition"] > 0.5
    assert b["structure"] == 0.0  # a list was asked for, none given
    assert gold.text_attributes(PROMPTS[0], REPLIES[1])["structure"] == 0.0  # none asked
    assert gold.text_attributes("q", "Le ciel est bleu à cause de la lumière.")["foreign"] > 0
    assert gold.text_attributes("q", " ".join(["word"] * 1000))["length"] == 4.0  # capped


def test_list_requests_match_the_prompt_tags():
    from distalign.gold.build import PROMPTS_FILE

    rows = [json.loads(line) for line in PROMPTS_FILE.read_text().splitlines()]
    agree = np.mean([gold.asks_for_list(r["prompt"]) == r["wants_list"] for r in rows])
    assert agree >= 0.9


def test_judge_is_deterministic_across_processes():
    here = {k: v.tolist() for k, v in gold.judge(PROMPTS, REPLIES).items()}
    call = f"g.judge({PROMPTS!r}, {REPLIES!r})"
    code = (
        "import json; from distalign.gold import judge as g; "
        f"print(json.dumps({{k: v.tolist() for k, v in {call}.items()}}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    there = json.loads(out.stdout.strip().splitlines()[-1])
    assert there == here  # bit-identical, not merely close
    again = {k: v.tolist() for k, v in gold.judge(PROMPTS, REPLIES).items()}
    assert again == here


def test_groups_conflict_on_length():
    """Same reply, longer: the concise group likes it less, the thorough group more."""
    assert gold.CONFLICT_ATTRIBUTE == "length"
    weights = {g.name: g.weights["length"] for g in gold.GROUPS}
    assert weights["concise"] < 0 < weights["thorough"]
    prompt = "Explain how bees make honey."
    short = (
        "Bees collect nectar, store it in wax cells and fan it with their wings until it thickens."
    )
    extra = (
        " Worker bees carry nectar home in a special honey stomach."
        " Enzymes in their saliva split its sugars into simpler ones."
        " House bees pass the nectar from mouth to mouth, adding more enzymes each time."
        " They spread it thinly across the comb so water evaporates faster."
        " When the water content falls low enough, they cap the cell with fresh wax."
        " A colony can store many kilograms of honey to survive the winter months."
        " Beekeepers harvest only the surplus, leaving enough food for the hive."
    )
    out = gold.judge([prompt, prompt], [short, short + extra])
    assert out["length"][1] > out["length"][0]
    assert out["gold_concise"][1] < out["gold_concise"][0]
    assert out["gold_thorough"][1] > out["gold_thorough"][0]


def test_labels_follow_the_bradley_terry_probability():
    attrs = gold.attributes(PROMPTS[:2], REPLIES[:2])
    a1, a2 = np.repeat(attrs[:1], 20000, 0), np.repeat(attrs[1:2], 20000, 0)
    p, per_group = gold.preference_probabilities(a1, a2)
    labels = gold.draw_labels(a1, a2, np.random.default_rng(0))
    assert labels.mean() == pytest.approx(p[0], abs=0.015)
    shares = np.array([g.share for g in gold.GROUPS])
    assert p[0] == pytest.approx(
        sum(s * per_group[g.name][0] for s, g in zip(shares, gold.GROUPS, strict=True))
    )


def test_population_reward_mixes_groups():
    attrs = gold.attributes(PROMPTS, REPLIES)
    mean, std = gold.population_reward(attrs)
    groups = gold.group_rewards(attrs)
    np.testing.assert_allclose(mean, sum(g.share * groups[g.name] for g in gold.GROUPS))
    assert (std > 0).all()


def test_reward_source_callables():
    chats = [[{"role": "user", "content": p}] for p in PROMPTS]
    mean = gold.gold_reward(chats, REPLIES)
    assert mean == pytest.approx(gold.gold_reward(PROMPTS, REPLIES))
    concise, thorough = (
        gold.gold_reward_concise(PROMPTS, REPLIES),
        gold.gold_reward_thorough(PROMPTS, REPLIES),
    )
    assert mean == pytest.approx([(a + b) / 2 for a, b in zip(concise, thorough, strict=True)])
    assert mean[0] > mean[2]  # a relevant, finished reply beats a repetitive fragment


class FakeEncoder:
    """Records where it was built and the batch sizes it is given; embeds by text length."""

    def __init__(self, device: str):
        self.device, self.batch_sizes = device, []

    def encode(self, texts, batch_size, normalize_embeddings):
        self.batch_sizes.append(batch_size)
        emb = np.array([[len(t) + 1.0, 1.0] for t in texts])
        return emb / np.linalg.norm(emb, axis=1, keepdims=True)


def test_the_encoder_runs_on_the_gpu_with_larger_batches(monkeypatch):
    import torch

    built: dict[str, FakeEncoder] = {}
    monkeypatch.setattr(
        gold, "_encoder", lambda device: built.setdefault(device, FakeEncoder(device))
    )
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    gold.judge(PROMPTS, REPLIES)  # device auto: the GPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    gold.judge(PROMPTS, REPLIES)  # auto without a GPU: the CPU
    gold.judge(PROMPTS, REPLIES, device="cpu")
    assert sorted(built) == ["cpu", "cuda"]
    assert built["cuda"].batch_sizes == [256, 256]  # prompts, then replies
    assert built["cpu"].batch_sizes == [64] * 4


def test_the_judge_turns_tf32_off_while_it_reads_and_restores_it():
    """A run with tf32=true sets it for its whole process; the judge's numbers must not move."""
    import torch

    from distalign.models.load import full_float32

    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    before = (matmul.allow_tf32, cudnn.allow_tf32)
    try:
        matmul.allow_tf32 = cudnn.allow_tf32 = True
        with full_float32():
            assert not matmul.allow_tf32 and not cudnn.allow_tf32
        assert matmul.allow_tf32 and cudnn.allow_tf32
    finally:
        matmul.allow_tf32, cudnn.allow_tf32 = before


def test_judge_file_reads_what_rm_score_reads_and_skips_bad_rows_when_asked(tmp_path):
    from distalign.data.formats import PreferenceFormatError
    from distalign.gold.build import judge_file
    from tests.conftest import write_jsonl

    rows = [
        {"prompt": PROMPTS[0], "reply": REPLIES[0]},
        {
            "conversations": [
                {"from": "human", "value": PROMPTS[1]},
                {"from": "gpt", "value": REPLIES[1]},
            ]
        },  # ShareGPT
        {"prompt": PROMPTS[2], "reply": None},
    ]
    path = write_jsonl(tmp_path / "replies.jsonl", rows)
    with pytest.raises(PreferenceFormatError, match=r"replies.jsonl:3: field 'reply': null"):
        judge_file(str(path), device="cpu")
    out, means = judge_file(str(path), device="cpu", skip_bad_rows=True)
    judged = [json.loads(line) for line in out.read_text().splitlines()]
    assert [j.get("reply") for j in judged] == [REPLIES[0], None]  # rows kept as they were
    direct = gold.judge(PROMPTS[:2], REPLIES[:2], "cpu")
    assert [j["gold_mean"] for j in judged] == pytest.approx(direct["gold_mean"].tolist())
    assert means["gold_mean"] == pytest.approx(float(np.mean(direct["gold_mean"])))
