"""data inspect's measuring function: prompt-only sources are counted in prompts, hub
options reach the loader, preference sources keep their counts."""

from __future__ import annotations

import json

import datasets
import pytest

from distalign.data import DataSourceError
from distalign.data.inspect import inspect_source
from tests.conftest import write_jsonl


def test_prompt_only_txt(tmp_path, smol_tokenizer):
    path = tmp_path / "q.txt"
    path.write_text("Why?\nHow?\n")
    result = inspect_source(str(path), smol_tokenizer)
    assert result.prompt_only and result.prompts == 2
    assert result.report.format == "prompt-only"
    assert set(result.lengths) == {"prompt"}
    assert result.example.rstrip().endswith("<|im_start|>assistant")


def test_prompt_only_hub_dataset_with_config_and_revision(monkeypatch, smol_tokenizer):
    calls = []

    def fake_load_dataset(path, **kwargs):
        calls.append(kwargs)
        return datasets.Dataset.from_list([{"prompt": "One?"}, {"prompt": "Two?"}])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    result = inspect_source("org/prompts", smol_tokenizer, "test", name="cfg", revision="r1")
    assert result.prompt_only and result.prompts == 2
    assert calls and all(c == {"name": "cfg", "split": "test", "revision": "r1"} for c in calls)


def test_preferences_with_an_empty_reply(tmp_path, smol_tokenizer):
    rows = [{"prompt": "q", "chosen": "", "rejected": "b"}, {"prompt": "r", "chosen": "c",
             "rejected": "d"}]  # fmt: skip
    result = inspect_source(str(write_jsonl(tmp_path / "d.jsonl", rows)), smol_tokenizer)
    assert not result.prompt_only
    assert (result.report.kept, result.report.empty_replies) == (2, 1)
    assert result.lengths["chosen"][100] >= 1  # the empty reply is still its end-of-turn token


def test_empty_file(tmp_path, smol_tokenizer):
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    with pytest.raises(DataSourceError, match="no rows"):
        inspect_source(str(path), smol_tokenizer)


def test_pairs_longer_than_max_length_are_counted(tmp_path, smol_tokenizer):
    rows = [{"prompt": "q", "chosen": "word " * n, "rejected": "b"} for n in (3, 40, 80)]
    path = str(write_jsonl(tmp_path / "d.jsonl", rows))
    lengths = inspect_source(path, smol_tokenizer).lengths["prompt + longer reply"]
    longest = lengths[100]
    result = inspect_source(path, smol_tokenizer, max_length=longest - 1)
    assert (result.too_long, result.measured, result.max_length) == (1, 3, longest - 1)
    assert inspect_source(path, smol_tokenizer, max_length=longest).too_long == 0
    # the count is what rm train's tokenizer cuts
    from distalign.data.pairs import tokenize_pair

    cut = [tokenize_pair(smol_tokenizer, [{"role": "user", "content": "q"}], r["chosen"],
                         r["rejected"], longest - 1)["cut"] for r in rows]  # fmt: skip
    assert cut == [False, False, True]


def test_the_printout_says_the_hh_and_prompt_readings_it_counted(tmp_path, smol_tokenizer):
    from distalign.printing import console, print_inspection

    h, a = "\n\nHuman: ", "\n\nAssistant: "
    rows = [{"chosen": h + "hi" + a + "hello" + h + "more?" + a + "yes",
             "rejected": h + "hi" + a + "hey" + h + "more?" + a + "no"}]  # fmt: skip
    result = inspect_source(str(write_jsonl(tmp_path / "hh.jsonl", rows)), smol_tokenizer)
    with console.capture() as captured:
        print_inspection(result, "hh.jsonl", "smol")
    assert "HH replies that go on with a Human turn (kept): 1" in captured.get()


def test_rated_single_replies_read_as_prompts_say_rm_train_needs_pairs(tmp_path, smol_tokenizer):
    from distalign.printing import console, print_inspection

    rows = [{"prompt": "2+2?", "response": r, "helpfulness": h} for r, h in (("4", 4), ("5", 0))]
    result = inspect_source(str(write_jsonl(tmp_path / "hs2.jsonl", rows)), smol_tokenizer)
    assert result.prompt_only and result.prompts == 2  # a row each, as TRL reads prompts
    assert "HelpSteer2's raw rows" in result.not_pairs
    with console.capture() as captured:
        print_inspection(result, "hs2.jsonl", "smol")
    assert "read as prompts; rm train needs pairs: one rated response per row" in " ".join(
        captured.get().split()
    )
    prompts = inspect_source(str(write_jsonl(tmp_path / "q.jsonl", [{"prompt": "2+2?", "id": 3}])),
                             smol_tokenizer)  # fmt: skip
    assert prompts.prompt_only and prompts.not_pairs is None


def test_text_already_rendered_through_the_chat_template_is_said(tmp_path, smol_tokenizer):
    """String data run through TRL's maybe_apply_chat_template before saving holds the
    template's turn tokens; rendered through the template again it nests, so it is said. Text
    without them, and a model rendering plain text, say nothing."""
    import copy

    from distalign.data.pairs import template_markers, templated_note
    from distalign.models.templates import built_in_template

    chat = [{"role": "user", "content": "What is 2+2?"}]
    prompt = smol_tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    rows = [{"prompt": prompt, "chosen": "4<|im_end|>\n", "rejected": "5<|im_end|>\n"}]
    path = write_jsonl(tmp_path / "templated.jsonl", rows)
    # SmolLM2's BOS and EOS are its turn tokens: its user turn's header is what marks a turn
    assert "<|im_start|>user" in template_markers(smol_tokenizer)
    assert smol_tokenizer.eos_token not in template_markers(smol_tokenizer)
    found = inspect_source(str(path), smol_tokenizer).templated
    assert found in template_markers(smol_tokenizer)
    assert "chat_template_path=plain" in templated_note(found, "m")
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": prompt}])
    assert inspect_source(str(prompts), smol_tokenizer).templated is not None
    clean = [{"prompt": "2+2?", "chosen": "4", "rejected": "5"}]
    assert (
        inspect_source(str(write_jsonl(tmp_path / "c.jsonl", clean)), smol_tokenizer).templated
        is None
    )
    plain = copy.deepcopy(smol_tokenizer)
    plain.chat_template = built_in_template("plain", plain)
    assert template_markers(plain) == []


def test_a_pair_missing_one_reply_in_the_first_row_is_a_broken_pair_not_a_prompt(
    tmp_path, smol_tokenizer
):
    rows = [{"prompt": "Q0", "rejected": "B"}, *[{"prompt": f"Q{i}", "chosen": "A",
                                                  "rejected": "B"} for i in (1, 2)]]  # fmt: skip
    path = str(write_jsonl(tmp_path / "pairs.jsonl", rows))
    result = inspect_source(path, smol_tokenizer, skip_bad_rows=True)  # as rm train reads it
    assert not result.prompt_only and result.report.kept == 2
    assert sum(result.report.skipped.values()) == 1


def test_helpsteer2_preference_rows_read_as_prompts_get_their_hint(tmp_path, smol_tokenizer):
    rows = [{"prompt": "Q", "response_1": "A", "response_2": "B", "preference_strength": -2}]
    result = inspect_source(str(write_jsonl(tmp_path / "pref.jsonl", rows)), smol_tokenizer)
    assert result.prompt_only and "HelpSteer2's preference file" in result.not_pairs


def test_messages_saved_as_json_text_are_said(tmp_path, smol_tokenizer):
    """A message list stored as a string in JSONL or Parquet is read as the text it is (as
    TRL reads it): said, with how to give the turns."""
    from distalign.data.pairs import templated_note

    turn = json.dumps([{"role": "assistant", "content": "A0"}])
    rows = [{"prompt": "Q", "chosen": turn, "rejected": "B"}]
    found = inspect_source(str(write_jsonl(tmp_path / "s.jsonl", rows)), smol_tokenizer).templated
    assert found == '[{"role"' and "json.loads" in templated_note(found, "smol")
    keys = json.dumps([{"content": "A0", "role": "assistant"}])  # sort_keys, or ShareGPT's
    sharegpt = json.dumps([{"from": "gpt", "value": "A0"}])
    for text in (keys, sharegpt):
        rows = [{"prompt": "Q", "chosen": text, "rejected": "B"}]
        assert inspect_source(
            str(write_jsonl(tmp_path / "k.jsonl", rows)), smol_tokenizer
        ).templated
    plain = [
        {"prompt": "Q", "chosen": "[1, 2] is a list", "rejected": "B"},
        {"prompt": "Q", "chosen": '[{"x": 1}] is JSON, not messages', "rejected": "B"},
    ]
    assert (
        inspect_source(str(write_jsonl(tmp_path / "p.jsonl", plain)), smol_tokenizer).templated
        is None
    )
