"""Tokenisation of pairs: chat template, truncation rules (property-tested), collation."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distalign.data.pairs import (
    PairCollator,
    length_grouped_batches,
    off_prompt_pairs,
    render_pair_ids,
    render_prompt_ids,
    tokenize_pair,
    truncate_pair,
)

tokens = st.lists(st.integers(0, 1000), min_size=1, max_size=80)


@st.composite
def truncation_case(draw):
    max_length = draw(st.integers(2, 120))
    max_prompt_length = draw(st.integers(1, max_length - 1))
    prompt = draw(st.lists(st.integers(0, 1000), min_size=0, max_size=150))
    replies = draw(
        st.lists(st.lists(st.integers(0, 1000), min_size=1, max_size=150), min_size=1, max_size=3)
    )
    return prompt, replies, max_length, max_prompt_length


@settings(max_examples=300, deadline=None)
@given(truncation_case())
def test_truncation_rules(case):
    prompt, replies, max_length, max_prompt_length = case
    new_prompt, new_replies = truncate_pair(prompt, replies, max_length, max_prompt_length)
    fits = len(prompt) + max(map(len, replies)) <= max_length
    if fits:  # nothing changes when it fits
        assert new_prompt == prompt and new_replies == replies
    for old, new in zip(replies, new_replies, strict=True):
        assert len(new_prompt) + len(new) <= max_length  # fits
        assert new == old[: len(new)]  # the reply is cut from the right only
        assert len(new) >= 1  # always ends in the reply
    # the prompt is cut from the left only: it is a suffix of the original
    assert new_prompt == (prompt[len(prompt) - len(new_prompt) :] if new_prompt else [])
    # the prompt keeps what the reply does not need, and at least its reserved share
    assert len(new_prompt) >= min(len(prompt), max_prompt_length)
    # the longest reply is cut only when prompt + reply cannot both be kept
    longest = max(map(len, replies))
    if max_length - min(len(prompt), max_prompt_length) >= longest:
        assert max(map(len, new_replies)) == longest


def test_truncation_rejects_bad_limits():
    with pytest.raises(ValueError):
        truncate_pair([1], [[2]], max_length=4, max_prompt_length=4)


def test_prompt_plus_reply_is_the_chat_template(smol_tokenizer):
    messages = [{"role": "user", "content": "Name a fruit."}]
    prompt, (reply,) = render_pair_ids(smol_tokenizer, messages, ["A pear."])
    assert prompt == render_prompt_ids(smol_tokenizer, messages)
    full = smol_tokenizer.apply_chat_template(
        [*messages, {"role": "assistant", "content": "A pear."}], tokenize=True
    )
    full = full["input_ids"] if hasattr(full, "keys") else full
    assert prompt + reply == list(full)  # what TRL trains on and a transformers user scores
    text = smol_tokenizer.decode(prompt + reply)
    assert text.endswith("<|im_start|>assistant\nA pear.<|im_end|>\n")
    assert text.startswith("<|im_start|>system")
    # the end of turn, which is also SmolLM2's pad token, sits inside the reply
    assert reply[-2] == smol_tokenizer.eos_token_id == smol_tokenizer.pad_token_id


def test_long_prompt_drops_oldest_turns_first(smol_tokenizer):
    old_turns = []
    for i in range(6):
        old_turns += [
            {"role": "user", "content": f"Old question number {i} " + "blah " * 20},
            {"role": "assistant", "content": f"Old answer {i} " + "meh " * 20},
        ]
    messages = [*old_turns, {"role": "user", "content": "Final question?"}]
    out = tokenize_pair(smol_tokenizer, messages, "Final answer.", "Other answer.", max_length=200)
    text = smol_tokenizer.decode(out["prompt_ids"] + out["chosen_ids"])
    assert len(out["prompt_ids"]) + len(out["chosen_ids"]) <= 200
    assert "Old question number 0" not in text  # oldest turn went first
    assert "Final question?" in text and text.endswith("Final answer.<|im_end|>\n")
    assert text.startswith("<|im_start|>system")  # dropped whole turns, not cut tokens
    assert out["cut"]  # and says so (rm train counts such pairs)
    assert not tokenize_pair(smol_tokenizer, messages[-1:], "A.", "B.", max_length=200)["cut"]


def test_long_reply_is_cut_from_the_right(smol_tokenizer):
    messages = [{"role": "user", "content": "Count."}]
    reply = " ".join(str(i) for i in range(300))
    out = tokenize_pair(smol_tokenizer, messages, reply, "No.", max_length=64, max_prompt_length=40)
    assert len(out["prompt_ids"]) + len(out["chosen_ids"]) == 64
    assert smol_tokenizer.decode(out["chosen_ids"]).startswith("0 1 2 3")
    assert out["rejected_ids"] == render_pair_ids(smol_tokenizer, messages, ["No."])[1][0]


def test_collator_pads_with_masks():
    feats = [
        {"prompt_ids": [5, 6], "chosen_ids": [7, 2], "rejected_ids": [8]},
        {"prompt_ids": [5], "chosen_ids": [9], "rejected_ids": [10, 11, 2]},
    ]
    batch = PairCollator(pad_token_id=2)(feats)
    assert batch["input_ids"].tolist() == [
        [5, 6, 7, 2],
        [5, 9, 2, 2],
        [5, 6, 8, 2],
        [5, 10, 11, 2],
    ]
    assert batch["attention_mask"].tolist() == [
        [1, 1, 1, 1],
        [1, 1, 0, 0],
        [1, 1, 1, 0],
        [1, 1, 1, 1],
    ]


@given(st.lists(st.integers(1, 500), min_size=1, max_size=300), st.integers(1, 16))
def test_length_grouped_batches_cover_every_index_once(lengths, batch_size):
    batches = length_grouped_batches(lengths, batch_size, seed=0)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(lengths)))
    assert all(1 <= len(b) <= batch_size for b in batches)


@given(st.lists(st.integers(0, 20), min_size=1, max_size=200), st.integers(1, 16))
def test_prompt_grouped_batches_keep_a_prompts_pairs_together(prompts, batch_size):
    from distalign.data.pairs import prompt_grouped_batches

    batches = prompt_grouped_batches(prompts, batch_size, seed=0)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(prompts)))
    assert all(1 <= len(b) <= batch_size for b in batches[:-1]) and batches[-1]
    # in the epoch's order, each prompt's pairs form one contiguous run
    seen = [prompts[i] for i in flat]
    runs = [k for j, k in enumerate(seen) if j == 0 or seen[j - 1] != k]
    assert len(runs) == len(set(prompts))


def test_length_grouping_reduces_padding():
    import random

    rng = random.Random(0)
    lengths = [rng.randint(10, 500) for _ in range(2000)]
    grouped = length_grouped_batches(lengths, 8, seed=0)
    order = list(range(2000))
    rng.shuffle(order)
    plain = [order[i : i + 8] for i in range(0, 2000, 8)]

    def waste(batches):
        return sum(
            max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches
        )

    assert waste(grouped) < 0.2 * waste(plain)


def _pair_rows(n_prompts: int, pairs_each: int) -> list[dict]:
    """Prompt k is [k, k]; its replies are [100k + j] (distinct across prompts)."""
    rows = []
    for k in range(n_prompts):
        for j in range(pairs_each):
            rows.append({"prompt_ids": [k, k], "chosen_ids": [100 * k + 2 * j],
                         "rejected_ids": [100 * k + 2 * j + 1]})  # fmt: skip
    return rows


@settings(max_examples=50, deadline=None)
@given(st.integers(2, 6), st.integers(1, 4), st.integers(0, 30), st.integers(0, 10**6))
def test_off_prompt_pairs_set_an_own_reply_against_another_prompts(n_prompts, each, n, seed):
    rows = _pair_rows(n_prompts, each)
    extra = off_prompt_pairs(rows, n, seed, max_length=64, max_prompt_length=32)
    assert len(extra) == n
    replies_of = {}
    for r in rows:
        replies_of.setdefault(tuple(r["prompt_ids"]), set()).update(
            {tuple(r["chosen_ids"]), tuple(r["rejected_ids"])}
        )
    for e in extra:
        own = replies_of[tuple(e["prompt_ids"])]
        assert tuple(e["chosen_ids"]) in own
        assert tuple(e["rejected_ids"]) not in own
        assert any(tuple(e["rejected_ids"]) in v for v in replies_of.values())
        assert e["length"] == 2 + 1
    assert extra == off_prompt_pairs(rows, n, seed, max_length=64, max_prompt_length=32)


def test_off_prompt_pairs_use_both_sides_and_every_prompt():
    extra = off_prompt_pairs(_pair_rows(3, 2), 600, seed=0, max_length=64, max_prompt_length=32)
    chosen = {e["chosen_ids"][0] for e in extra}
    assert chosen == {0, 1, 2, 3, 100, 101, 102, 103, 200, 201, 202, 203}
    assert {e["rejected_ids"][0] for e in extra} == chosen


def test_off_prompt_pairs_truncate_and_skip_what_teaches_nothing():
    rows = [
        {"prompt_ids": [1] * 10, "chosen_ids": [5] * 30, "rejected_ids": [7]},
        {"prompt_ids": [2] * 3, "chosen_ids": [5] * 30, "rejected_ids": [8] * 40},
    ]
    extra = off_prompt_pairs(rows, 20, seed=1, max_length=24, max_prompt_length=8)
    assert len(extra) == 20
    for e in extra:
        assert e["chosen_ids"] != e["rejected_ids"]  # [5]*30 belongs to both prompts
        assert len(e["prompt_ids"]) + max(len(e["chosen_ids"]), len(e["rejected_ids"])) <= 24
    one_prompt = [{"prompt_ids": [1], "chosen_ids": [2], "rejected_ids": [3]}] * 4
    assert off_prompt_pairs(one_prompt, 5, seed=0, max_length=8, max_prompt_length=4) == []
    # different replies, equal once cut to the 16 tokens the prompt leaves
    cut_equal = [{"prompt_ids": [k] * 8, "chosen_ids": [5] * (16 + 4 * k),
                  "rejected_ids": [5] * (16 + 4 * k)} for k in (0, 1)]  # fmt: skip
    assert off_prompt_pairs(cut_equal, 5, seed=0, max_length=24, max_prompt_length=8) == []
    same = [{"prompt_ids": [k], "chosen_ids": [9], "rejected_ids": [9]} for k in range(3)]
    assert off_prompt_pairs(same, 5, seed=0, max_length=8, max_prompt_length=4) == []
    assert off_prompt_pairs(rows, 0, seed=0, max_length=24, max_prompt_length=8) == []


# A template that writes what TRL hands it beside the messages: tools, tool calls, a tool
# result's call id and a template argument (Qwen3's enable_thinking).
TOOL_TEMPLATE = (
    "{%- if enable_thinking is defined and not enable_thinking %}/no_think\n{% endif -%}"
    "{%- if tools %}<tools>{{ tools | tojson }}</tools>\n{% endif -%}"
    "{%- for m in messages -%}<{{ m.role }}>{{ m.content }}"
    "{%- for c in m.tool_calls or [] %}<call>{{ c.function.name }}"
    "{{ c.function.arguments | tojson }}</call>{% endfor -%}"
    "{%- if m.tool_call_id %}[{{ m.tool_call_id }}]{% endif %}</{{ m.role }}>\n"
    "{%- endfor -%}"
    "{%- if add_generation_prompt %}<assistant>{% endif -%}"
)
WEATHER = [{"type": "function", "function": {"name": "weather", "parameters": {}}}]
CALLING = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"type": "function", "function": {"name": "weather", "arguments": {"city": "Paris"}}}]},
    {"role": "tool", "content": "18C", "tool_call_id": "c1"},
]  # fmt: skip


@pytest.fixture()
def tool_tokenizer(smol_tokenizer):
    import copy

    tokenizer = copy.deepcopy(smol_tokenizer)
    tokenizer.chat_template = TOOL_TEMPLATE
    return tokenizer


def _ids(out):
    return list(out["input_ids"] if hasattr(out, "keys") else out)


@pytest.mark.parametrize("arrow", [False, True])
def test_tool_calls_tools_and_template_arguments_are_rendered_as_trl_does(
    tmp_path, tool_tokenizer, arrow
):
    """TRL's RewardTrainer renders a row's messages whole (tool calls, call ids) with its
    ``tools`` and ``chat_template_kwargs``: prompt + reply is that rendering, token for token.
    Through Arrow a row gets every key of the column's struct (absent ones null): a row
    without tool calls renders as if it had none."""
    import json

    import datasets

    from distalign.data.load import load_preferences
    from distalign.data.pairs import tokenize_pairs
    from tests.conftest import write_jsonl

    rows = [
        {"prompt": CALLING, "chosen": [{"role": "assistant", "content": "It is 18C."}],
         "rejected": [{"role": "assistant", "content": "No idea."}],
         "tools": json.dumps(WEATHER), "chat_template_kwargs": {"enable_thinking": False}},
        {"prompt": [{"role": "user", "content": "Hi"}],
         "chosen": [{"role": "assistant", "content": "Hello!"}],
         "rejected": [{"role": "assistant", "content": "Go away."}],
         "tools": None, "chat_template_kwargs": None},
    ]  # fmt: skip
    source = (
        datasets.Dataset.from_list(rows) if arrow else str(write_jsonl(tmp_path / "d.jsonl", rows))
    )
    pairs = tokenize_pairs(load_preferences(source), tool_tokenizer, max_length=512)
    for row, pair in zip(rows, pairs, strict=True):
        kwargs = {"tools": json.loads(row["tools"])} if row["tools"] else {}
        kwargs.update(row["chat_template_kwargs"] or {})
        for side in ("chosen", "rejected"):
            expected = tool_tokenizer.apply_chat_template(
                [*row["prompt"], *row[side]], tokenize=True, **kwargs
            )
            assert pair["prompt_ids"] + pair[f"{side}_ids"] == _ids(expected)
    text = tool_tokenizer.decode(pairs[0]["prompt_ids"])
    assert text.startswith("/no_think\n<tools>")
    assert '<call>weather{"city": "Paris"}</call>' in text and "18C[c1]</tool>" in text
    assert tool_tokenizer.decode(pairs[1]["prompt_ids"]) == "<user>Hi</user><assistant>"


def test_a_prompt_ending_with_an_assistant_turn_is_read_as_trl_reads_it(tmp_path, smol_tokenizer):
    """TRL's RewardTrainer renders prompt + reply as one conversation, so a prompt may end with
    an assistant turn and the reply is the next turn; RLOO and GRPO render such a prompt with
    the generation prompt after it. Explicit and implicit rows alike; a ShareGPT conversation
    still ends with the user, as LLaMA-Factory's do."""
    from distalign.data.formats import PreferenceFormatError
    from distalign.data.load import load_preferences
    from distalign.data.pairs import tokenize_pairs
    from distalign.data.prompts import load_prompts
    from tests.conftest import write_jsonl

    prompt = [{"role": "user", "content": "Name a colour."},
              {"role": "assistant", "content": "Sure, one colour:"}]  # fmt: skip
    blue, no = [{"role": "assistant", "content": "blue"}], [{"role": "assistant", "content": "no"}]
    rows = [{"prompt": prompt, "chosen": blue, "rejected": no},
            {"chosen": prompt + blue, "rejected": prompt + no}]  # fmt: skip
    for i, row in enumerate(rows):
        pairs = load_preferences(str(write_jsonl(tmp_path / f"{i}.jsonl", [row])))
        assert pairs[0]["prompt"] == prompt and pairs[0]["chosen"] == "blue"
        pair = tokenize_pairs(pairs, smol_tokenizer, max_length=512)[0]
        for side, reply in (("chosen", blue), ("rejected", no)):
            whole = smol_tokenizer.apply_chat_template([*prompt, *reply], tokenize=True)
            assert pair["prompt_ids"] + pair[f"{side}_ids"] == _ids(whole)
    # a reply whose first turn says what the prompt's last one does is that turn and more
    again = [prompt[-1], {"role": "assistant", "content": "blue"}]
    row = {"prompt": prompt, "chosen": again, "rejected": no}
    pair = tokenize_pairs(
        load_preferences(str(write_jsonl(tmp_path / "again.jsonl", [row]))), smol_tokenizer, 512
    )[0]
    whole = smol_tokenizer.apply_chat_template([*prompt, *again], tokenize=True)
    assert pair["prompt_ids"] + pair["chosen_ids"] == _ids(whole)
    path = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": prompt}])
    assert load_prompts(str(path)) == [prompt]
    expected = smol_tokenizer.apply_chat_template(prompt, tokenize=True, add_generation_prompt=True)
    assert render_prompt_ids(smol_tokenizer, prompt) == _ids(expected)
    sharegpt = {
        "conversations": [{"from": "human", "value": "x"}, {"from": "gpt", "value": "y"}],
        "chosen": {"from": "gpt", "value": "a"},
        "rejected": {"from": "gpt", "value": "b"},
    }
    with pytest.raises(PreferenceFormatError, match="end with a user turn"):
        load_preferences(str(write_jsonl(tmp_path / "s.jsonl", [sharegpt])))


def test_bad_tools_and_template_arguments_name_their_field(tmp_path):
    from distalign.data.formats import PreferenceFormatError, normalise_row

    base = {"prompt": "q", "chosen": "a", "rejected": "b"}
    for extra, field in (({"tools": "{not json"}, "tools"), ({"tools": {"a": 1}}, "tools"),
                         ({"chat_template_kwargs": [1]}, "chat_template_kwargs")):  # fmt: skip
        with pytest.raises(PreferenceFormatError) as info:
            normalise_row({**base, **extra}, "explicit", "d.jsonl:1", 0)
        assert info.value.field == field
    row = normalise_row({**base, "tools": "[]", "chat_template_kwargs": {}}, "explicit", "w", 0)
    assert row["template_kwargs"] is None  # TRL: `tools or None`


def test_implicit_conversations_that_differ_in_a_tool_call_part_there(tmp_path):
    """Two conversations share their prompt only as far as every key of every turn agrees: a
    rejected reply that followed another tool call is that call, its result and its answer."""
    from distalign.data.formats import normalise_row, row_reply

    def conversation(city, reply):
        call = {"type": "function", "function": {"name": "weather", "arguments": {"city": city}}}
        return [CALLING[0], {**CALLING[1], "tool_calls": [call]}, CALLING[2],
                {"role": "assistant", "content": reply}]  # fmt: skip

    same = normalise_row({"chosen": conversation("Paris", "18C"),
                          "rejected": conversation("Paris", "?")}, "implicit", "w", 0)  # fmt: skip
    assert same["prompt_extras"] is not None and same["chosen_turns"] is None
    pair = {"chosen": conversation("Paris", "18C"), "rejected": conversation("London", "?")}
    other = normalise_row(pair, "implicit", "w", 0)
    assert other["prompt"] == CALLING[:1] and other["prompt_extras"] is None
    assert row_reply(other, "rejected")[0]["tool_calls"][0]["function"]["arguments"] == {
        "city": "London"}  # fmt: skip
    assert (other["chosen"], other["rejected"]) == ("18C", "?")
    # the same call with other results: both replies start with the call
    results = conversation("Paris", "?")
    results[2] = {**results[2], "content": "19C"}
    parted = normalise_row({"chosen": conversation("Paris", "18C"), "rejected": results},
                           "implicit", "w", 0)  # fmt: skip
    assert parted["prompt"] == CALLING[:1]
    assert [m["role"] for m in row_reply(parted, "rejected")] == ["assistant", "tool", "assistant"]


def test_a_reply_of_several_turns_is_rendered_as_trl_renders_it(
    tool_tokenizer, smol_tokenizer, tmp_path
):
    """prompt + reply is the rendering of the prompt's messages and the reply's turns (a tool
    call, its result, the answer), token for token, in rm train's tokenisation and in the
    scoring of a classifier distalign did not train."""
    from distalign.data.load import load_preferences
    from distalign.data.pairs import tokenize_pairs
    from distalign.models.classifier import encode_conversation
    from tests.conftest import write_jsonl

    reply = [{**CALLING[1], "content": "Let me look."}, CALLING[2],
             {"role": "assistant", "content": "It is 18C."}]  # fmt: skip
    rows = [{"prompt": CALLING[:1], "chosen": reply,
             "rejected": [{"role": "assistant", "content": "No idea."}]}]  # fmt: skip
    pair = tokenize_pairs(
        load_preferences(str(write_jsonl(tmp_path / "d.jsonl", rows))), tool_tokenizer, 512
    )[0]
    whole = _ids(tool_tokenizer.apply_chat_template([*CALLING[:1], *reply], tokenize=True))
    assert pair["prompt_ids"] + pair["chosen_ids"] == whole
    assert "<call>weather" in tool_tokenizer.decode(pair["chosen_ids"])
    assert encode_conversation(tool_tokenizer, CALLING[:1], reply, 512) == whole
    # a template that writes no tool calls is said to, whichever side calls the tool
    from distalign.data.pairs import silent_template_inputs

    swapped = [{**rows[0], "chosen": rows[0]["rejected"], "rejected": reply}]
    pairs = load_preferences(str(write_jsonl(tmp_path / "s.jsonl", swapped)))
    assert silent_template_inputs(smol_tokenizer, pairs) == [
        "tool calls (the messages' keys beside role and content)"]  # fmt: skip


def test_values_json_has_no_type_for_are_kept_as_their_text(tmp_path):
    """A parquet file's dates in a message's keys or the template's arguments: rendered as
    the text Jinja prints for them, not a crash; a bad JSON cell says why."""
    import datetime

    from distalign.data.formats import (
        PreferenceFormatError,
        joined_prompt,
        normalise_row,
        row_template_kwargs,
    )

    day = datetime.date(2024, 5, 1)
    prompt = [{"role": "user", "content": "q", "sent": day}]
    row = normalise_row({"prompt": prompt, "chosen": "a", "rejected": "b",
                         "chat_template_kwargs": {"today": day}}, "explicit", "w", 0)  # fmt: skip
    assert joined_prompt(row)[0]["sent"] == "2024-05-01"
    assert row_template_kwargs(row) == {"today": "2024-05-01"}
    with pytest.raises(PreferenceFormatError, match=r"chat_template_kwargs.*not JSON"):
        normalise_row({"prompt": "q", "chosen": "a", "rejected": "b",
                       "chat_template_kwargs": '{"a": }'}, "explicit", "w", 0)  # fmt: skip


def test_what_a_template_writes_nothing_for_is_found(tool_tokenizer, smol_tokenizer, tmp_path):
    """SmolLM2's template writes no tool calls, tools or template arguments: said, so a user
    knows the model does not read them; a template that writes them all: nothing to say."""
    import json

    from distalign.data.load import load_preferences
    from distalign.data.pairs import silent_template_inputs
    from tests.conftest import write_jsonl

    calling = {
        "prompt": CALLING,
        "chosen": "It is 18C.",
        "rejected": "No idea.",
        "tools": json.dumps(WEATHER),
        "chat_template_kwargs": {"enable_thinking": 0},
    }
    rows = [{"prompt": "q", "chosen": "a", "rejected": "b"}, calling]
    pairs = load_preferences(str(write_jsonl(tmp_path / "d.jsonl", rows)))
    assert silent_template_inputs(tool_tokenizer, pairs) == []
    said = silent_template_inputs(smol_tokenizer, pairs)
    assert [s.split(" ")[0] for s in said] == ["tool", "tools", "chat_template_kwargs"]
    assert silent_template_inputs(smol_tokenizer, pairs.select([0])) == []


def test_values_no_row_holds_are_refused_naming_their_field():
    from distalign.data.formats import PreferenceFormatError, normalise_row

    base = {"chosen": "a", "rejected": "b"}
    with pytest.raises(PreferenceFormatError) as info:
        normalise_row({**base, "prompt": "q", "tools": [{"f": object()}]}, "explicit", "w", 0)
    assert info.value.field == "tools"
    with pytest.raises(PreferenceFormatError) as info:
        normalise_row({**base, "prompt": [{"role": "user", "content": "q", "x": {1, 2}}]},
                      "explicit", "w", 0)  # fmt: skip
    assert info.value.field == "prompt" and "set" in str(info.value)
