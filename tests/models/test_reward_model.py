"""Reward model: last-real-token read, padding invariance, save/load, exact prefix sharing."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from distalign.data.pairs import PairCollator, SharedPrefixCollator, tokenize_pair
from distalign.models.reward_model import (
    build_reward_model,
    last_token_index,
    load_reward_model,
    pair_scores,
    save_reward_model,
    sequence_scores,
)

USER = [{"role": "user", "content": "Name a fruit."}]
LONG = [
    {"role": "user", "content": "Tell me about apples. " * 12},
    {"role": "assistant", "content": "Apples are fruit."},
    {"role": "user", "content": "And pears, in a few words?"},
]


@pytest.fixture()
def tiny_rm(tiny_model_dir):
    torch.manual_seed(0)
    return build_reward_model(str(tiny_model_dir), head="scalar")


def _ids(tokenizer, prompt, reply):
    p = tokenize_pair(tokenizer, prompt, reply, "x", max_length=512)
    return p["prompt_ids"] + p["chosen_ids"]


def _score(model, ids):
    t = torch.tensor([ids])
    return sequence_scores(model, t, torch.ones_like(t))[0, 0]


def test_reward_model_pads_with_a_token_other_than_eos(tiny_rm):
    model, tokenizer = tiny_rm
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    assert model.config.pad_token_id == tokenizer.pad_token_id
    assert tokenizer.pad_token not in tokenizer.apply_chat_template(USER, tokenize=False)


def test_last_token_index():
    mask = torch.tensor([[1, 1, 1, 0], [0, 1, 1, 1], [1, 0, 0, 0]])
    assert last_token_index(mask).tolist() == [2, 3, 0]


def test_reward_depends_on_the_reply_although_it_ends_with_pad_eq_eos(tiny_rm):
    model, tokenizer = tiny_rm
    a, b = _ids(tokenizer, USER, "An apple."), _ids(tokenizer, USER, "A banana.")
    # both replies close with <|im_end|> (then the template's line break), the policy's pad
    assert a[-2] == b[-2] == tokenizer.eos_token_id
    with torch.no_grad():
        assert abs(_score(model, a) - _score(model, b)) > 1e-4


def test_alone_equals_inside_a_padded_batch(tiny_rm):
    model, tokenizer = tiny_rm
    seqs = [_ids(tokenizer, USER, "An apple."), _ids(tokenizer, LONG, "Pears are sweet and soft.")]
    with torch.no_grad():
        alone = torch.stack([_score(model, s) for s in seqs])
        feats = [{"prompt_ids": [], "chosen_ids": s, "rejected_ids": s} for s in seqs]
        batch = PairCollator(tokenizer.eos_token_id)(feats)
        batched = sequence_scores(model, batch["input_ids"], batch["attention_mask"])[:2, 0]
    torch.testing.assert_close(batched, alone, atol=1e-4, rtol=0)


def test_save_load_identical_scores_also_through_plain_hf(tiny_rm, tmp_path):
    model, tokenizer = tiny_rm
    texts = [
        tokenizer.apply_chat_template([*USER, {"role": "assistant", "content": r}], tokenize=False)
        for r in ("An apple.", "A ripe banana from the market.")
    ]
    seqs = [_ids(tokenizer, USER, r) for r in ("An apple.", "A ripe banana from the market.")]
    with torch.no_grad():
        before = torch.stack([_score(model, s) for s in seqs])
    save_reward_model(model, tokenizer, tmp_path, {"head": "scalar"})
    loaded, _, meta = load_reward_model(tmp_path)
    assert meta["head"] == "scalar"
    with torch.no_grad():
        after = torch.stack([_score(loaded, s) for s in seqs])
    torch.testing.assert_close(after, before, atol=1e-6, rtol=0)
    # a user with nothing but transformers (the chat template as it is) gets the same scores
    # from a padded batch
    hf = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    hf_tok = AutoTokenizer.from_pretrained(tmp_path)
    enc = hf_tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        hf_scores = hf(**enc).logits[:, 0]
    torch.testing.assert_close(hf_scores, before, atol=1e-4, rtol=0)


def _features(tokenizer):
    cases = [
        (USER, "An apple.", "A chair, obviously not a fruit at all."),
        (LONG, "Pears are sweet.", "No."),
        (USER, "A fig", "A date palm fruit, sticky and sweet, grown in warm places."),
        (USER, "An apple.", "A fig"),  # both replies already in the batch: encoded once
    ]
    return [tokenize_pair(tokenizer, p, c, r, max_length=512) for p, c, r in cases]


@pytest.mark.parametrize("packing", [False, True])
def test_prefix_sharing_is_exact_for_rewards_and_gradients(tiny_rm, packing):
    model, tokenizer = tiny_rm
    feats = _features(tokenizer)
    plain = PairCollator(tokenizer.pad_token_id)(feats)
    shared = SharedPrefixCollator(tokenizer.pad_token_id, packing=packing)(feats)
    if packing:
        assert shared["input_ids"].shape[0] < len(feats)  # pairs really share rows
    # the 3 pairs of USER are one group of its 5 distinct replies; LONG's pair another
    distinct = {(tuple(f["prompt_ids"]), tuple(f[k]) if k != "prompt_ids" else ())
                for f in feats for k in ("prompt_ids", "chosen_ids", "rejected_ids")}  # fmt: skip
    assert shared["token_mask"].sum() == sum(len(p) if not r else len(r) for p, r in distinct)
    assert shared["chosen_index"][3] == shared["chosen_index"][0]

    def run(batch):
        model.zero_grad()
        chosen, rejected = pair_scores(model, batch)
        (chosen.sum() - 2 * rejected.sum()).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return chosen.detach(), rejected.detach(), grads

    c1, r1, g1 = run(plain)
    c2, r2, g2 = run(shared)
    torch.testing.assert_close(c2, c1, atol=1e-4, rtol=0)
    torch.testing.assert_close(r2, r1, atol=1e-4, rtol=0)
    assert g1.keys() == g2.keys()
    for name in g1:
        torch.testing.assert_close(g2[name], g1[name], atol=1e-4, rtol=1e-4, msg=name)


@pytest.mark.parametrize("family", ["gemma2", "mistral", "qwen2"])
def test_prefix_sharing_is_exact_under_a_sliding_window(family, smol_tokenizer):
    # the window (8 tokens, under every pair's length) is the model's, in the block mask too
    from tests.conftest import tiny_family_config

    config, _ = tiny_family_config(family, len(smol_tokenizer))
    config.num_labels = 1
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(config).eval()
    feats = _features(smol_tokenizer)
    with torch.no_grad():
        c1, r1 = pair_scores(model, PairCollator(smol_tokenizer.pad_token_id)(feats))
        shared = SharedPrefixCollator(smol_tokenizer.pad_token_id, packing=True)(feats)
        c2, r2 = pair_scores(model, shared)
    torch.testing.assert_close(c2, c1, atol=1e-4, rtol=0)
    torch.testing.assert_close(r2, r1, atol=1e-4, rtol=0)


def test_shared_prefix_mask_blocks_chosen_from_rejected():
    feats = [{"prompt_ids": [10, 11], "chosen_ids": [12, 13], "rejected_ids": [14]}]
    b = SharedPrefixCollator(pad_token_id=0)(feats)
    m = b["attention_mask"][0, 0]
    assert b["position_ids"][0].tolist() == [0, 1, 2, 3, 2]
    assert m[4].tolist() == [True, True, False, False, True]  # rejected sees prompt + itself
    assert m[3].tolist() == [True, True, True, True, False]
    assert (b["chosen_index"].item(), b["rejected_index"].item()) == (3, 4)


def test_prefix_sharing_under_eager_attention(tiny_rm):
    # eager attention adds the mask to the scores: the boolean mask is converted first
    model, tokenizer = tiny_rm
    feats = _features(tokenizer)
    plain = PairCollator(tokenizer.pad_token_id)(feats)
    shared = SharedPrefixCollator(tokenizer.pad_token_id, packing=True)(feats)
    with torch.no_grad():
        c1, r1 = pair_scores(model, plain)
        model.set_attn_implementation("eager")
        c2, r2 = pair_scores(model, shared)
    torch.testing.assert_close(c2, c1, atol=1e-4, rtol=0)
    torch.testing.assert_close(r2, r1, atol=1e-4, rtol=0)


def test_a_model_trained_with_the_older_rendering_is_flagged(tiny_rm, tmp_path, caplog):
    model, tokenizer = tiny_rm
    save_reward_model(model, tokenizer, tmp_path, {"head": "scalar"})
    with caplog.at_level("WARNING"):
        load_reward_model(tmp_path)
    assert "end-of-turn" not in caplog.text
    meta = json.loads((tmp_path / "distalign_rm.json").read_text())
    assert meta["reply_rendering"] == "chat_template"
    del meta["reply_rendering"]  # as saved before replies kept the template's last tokens
    (tmp_path / "distalign_rm.json").write_text(json.dumps(meta))
    with caplog.at_level("WARNING"):
        load_reward_model(tmp_path)
    assert "end-of-turn token" in caplog.text


def test_scoring_fits_a_long_conversation_as_training_does(smol_tokenizer):
    """A reward model reads a reply at scoring time (RL rewards, rm score) from the tokens it
    was trained on: the oldest turns are dropped before any token is cut from the left."""
    from distalign.models.reward_model import scored_tokens

    reply = "Pears are sweet."
    pair = tokenize_pair(smol_tokenizer, LONG, reply, "Pears.", max_length=64)
    assert pair["cut"]
    prompt, reply_ids = scored_tokens(smol_tokenizer, LONG, reply, max_length=64)
    assert (prompt, reply_ids) == (pair["prompt_ids"], pair["chosen_ids"])
    text = smol_tokenizer.decode(prompt)
    assert "apples" not in text and text.rstrip().endswith("assistant")
    assert "And pears" in text


def test_a_saved_reward_model_replaces_a_model_folder_whole_and_nothing_else(tiny_rm, tmp_path):
    import os
    import stat

    from distalign.models.reward_model import META_FILE

    model, tokenizer = tiny_rm
    out = tmp_path / "final"
    save_reward_model(model, tokenizer, out, {"head": "scalar"})
    (out / "stale.txt").write_text("from an earlier save")
    save_reward_model(model, tokenizer, out, {"head": "scalar"})  # a model folder: replaced
    assert (out / META_FILE).is_file() and not (out / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]  # no .tmp / .old left
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~umask  # readable as any folder made here
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("{}\n")
    with pytest.raises(FileExistsError, match="not a model's"):
        save_reward_model(model, tokenizer, run, {"head": "scalar"})
    assert (run / "metrics.jsonl").is_file()
