"""Prompt sources of rl train, generate and eval compare: the gold benchmark's, a .txt file,
prompt-only rows, a preference set's prompts (once each) and a ``datasets.Dataset``."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import datasets
import pytest

from distalign.data import DataSourceError, PreferenceFormatError
from distalign.data.load import LoadReport
from distalign.data.prompts import load_prompts, without_closing_reply
from tests.conftest import write_jsonl

GOLD_PROMPTS = Path(__file__).parents[2] / "src" / "distalign" / "gold" / "data" / "prompts.jsonl"


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def gold_rows(split: str) -> list[dict]:
    rows = [json.loads(line) for line in GOLD_PROMPTS.read_text().splitlines() if line]
    return [r for r in rows if r["split"] == split]


@pytest.mark.parametrize("split", ["train", "test"])
def test_gold_prompts_by_split(split):
    rows = gold_rows(split)
    prompts = load_prompts("gold", split)
    assert len(prompts) == len(rows) > 0
    assert prompts == [user(r["prompt"]) for r in rows]  # file order, one user turn each


def test_gold_splits_are_disjoint_and_default_to_train():
    train, test = load_prompts("gold"), load_prompts("gold", "test")
    assert len(train) == len(gold_rows("train")) and len(test) == len(gold_rows("test"))
    assert len(train) > len(test)
    assert not {json.dumps(p) for p in train} & {json.dumps(p) for p in test}


def test_gold_pairs_folder_gives_the_split_s_prompts_once_each():
    """The benchmark's pair files, read as a preference source: each test prompt once."""
    prompts = load_prompts(str(GOLD_PROMPTS.parent), "test")
    assert len({json.dumps(p) for p in prompts}) == len(prompts)
    assert {json.dumps(p) for p in prompts} <= {json.dumps(p) for p in load_prompts("gold", "test")}


def test_txt_file_with_bom_and_blank_lines(tmp_path):
    path = tmp_path / "questions.txt"
    path.write_bytes("\ufeffWhy is the sky blue?\n\nName a fruit.\n   \nÇa va ?\n".encode())
    assert load_prompts(str(path)) == [user("Why is the sky blue?"), user("Name a fruit."),
                                       user("Ça va ?")]  # fmt: skip
    assert load_prompts(str(path), None) == load_prompts(str(path), "test")  # no splits


def test_prompt_only_jsonl_with_strings_and_messages(tmp_path):
    chat = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Name a fruit."},
    ]
    path = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "Why?"}, {"prompt": chat}])
    assert load_prompts(str(path)) == [user("Why?"), chat]


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"prompt": [{"role": "system", "content": "x"}]}, "last turn to be the user's"),
        ({"prompt": None}, "null: expected the prompt"),
        ({"text": "x"}, "missing"),
    ],
)
def test_bad_prompt_rows_name_the_line(tmp_path, row, message):
    path = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "ok"}, row])
    with pytest.raises(PreferenceFormatError, match=message) as info:
        load_prompts(str(path))
    assert f"{path}:2" in str(info.value)


def test_empty_source(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    with pytest.raises(DataSourceError, match="no rows"):
        load_prompts(str(path))


PAIRS = [
    {"prompt": "B first?", "chosen": "yes", "rejected": "no"},
    {"prompt": "A second?", "chosen": "1", "rejected": "2"},
    {"prompt": "B first?", "chosen": "sure", "rejected": "never"},
    {"prompt": "C third?", "chosen": "x", "rejected": "y"},
    {"prompt": "A second?", "chosen": "3", "rejected": "4"},
]
UNIQUE = [user("B first?"), user("A second?"), user("C third?")]


def test_preference_file_gives_each_prompt_once_in_order(tmp_path):
    path = write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    assert load_prompts(str(path)) == UNIQUE


def test_standard_text_pairs_give_their_prompts_as_written(tmp_path):
    """A pair reads the space its replies start with as the prompt's; a prompt for sampling
    is the prompt as written, as TRL passes it (and a reward function gets that string)."""
    rows = [{"prompt": "Tell me about chess.", "chosen": " It is old.", "rejected": " No."},
            {"prompt": "The sky is", "chosen": " blue.", "rejected": " green."},
            {"prompt": "Tell me about chess.", "chosen": " Fun.", "rejected": " Dull"}]  # fmt: skip
    prompts = load_prompts(str(write_jsonl(tmp_path / "pairs.jsonl", rows)))
    assert prompts == [user("Tell me about chess."), user("The sky is")]
    assert [p.text for p in prompts] == ["Tell me about chess.", "The sky is"]


def test_a_file_mixing_strings_and_conversations_gives_every_prompt_as_messages(tmp_path):
    """A data set gives reward functions one shape, as TRL's do (a file mixing the two would
    not load there): conversational when any prompt is, whichever rows a batch draws."""
    rows = [{"prompt": "Hi?"}, {"prompt": [{"role": "user", "content": "Bye?"}]}]
    prompts = load_prompts(str(write_jsonl(tmp_path / "prompts.jsonl", rows)))
    assert prompts == [user("Hi?"), user("Bye?")] and [p.text for p in prompts] == [None, None]
    only_text = load_prompts(str(write_jsonl(tmp_path / "text.jsonl", rows[:1])))
    assert [p.text for p in only_text] == ["Hi?"]


def test_load_preferences_own_rows_give_reward_functions_their_pair_alone(tmp_path):
    """The README's Python path (load_preferences, then rl train on it): a reward function
    gets the columns a file of the same pairs gives, not distalign's readings of them."""
    from distalign.data.load import load_preferences

    rows = [{"prompt": "Hi?", "chosen": " Hello.", "rejected": " Go."}]
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    by_path, by_dataset = load_prompts(str(path)), load_prompts(load_preferences(str(path)))
    assert by_path[0].columns == {"chosen": " Hello.", "rejected": " Go."}
    assert set(by_dataset[0].columns) == {"chosen", "rejected"}  # as the Dataset holds them


def test_preference_folder_by_split(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", PAIRS)
    write_jsonl(tmp_path / "test.jsonl", PAIRS[3:])
    assert load_prompts(str(tmp_path)) == UNIQUE
    assert load_prompts(str(tmp_path), "test") == [user("C third?"), user("A second?")]


def test_datasets_objects():
    assert load_prompts(datasets.Dataset.from_list(PAIRS)) == UNIQUE
    prompt_only = datasets.Dataset.from_list([{"prompt": "One?"}, {"prompt": "Two?"}])
    assert load_prompts(prompt_only) == [user("One?"), user("Two?")]
    chats = datasets.Dataset.from_list([{"prompt": user("Hi")}, {"prompt": user("Bye")}])
    assert load_prompts(chats) == [user("Hi"), user("Bye")]


def test_hub_id_reads_the_split(monkeypatch):
    calls = []

    def fake_load_dataset(name, split):
        calls.append((name, split))
        return datasets.Dataset.from_list([{"prompt": "Hub?"}])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert load_prompts("someone/prompts", "validation") == [user("Hub?")]
    assert calls == [("someone/prompts", "validation")]


# --- ShareGPT prompt-only rows, hub config and revision, skipped rows --------------------


def test_sharegpt_prompt_only(tmp_path):
    rows = [
        {"conversations": [{"from": "human", "value": "Why?"}]},
        {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hey"},
                           {"from": "human", "value": "Bye"}], "system": "Be brief."},
        {"conversations": [{"from": "system", "value": "Own."}, {"from": "human", "value": "X"}],
         "system": "Column."},
        {"messages": [{"role": "user", "content": "Role and content."}]},
    ]  # fmt: skip
    path = write_jsonl(tmp_path / "sharegpt.jsonl", rows)
    assert load_prompts(str(path)) == [
        user("Why?"),
        [{"role": "system", "content": "Be brief."}, *user("Hi"),
         {"role": "assistant", "content": "Hey"}, *user("Bye")],
        [{"role": "system", "content": "Own."}, *user("X")],
        user("Role and content."),
    ]  # fmt: skip


def test_sharegpt_sft_conversations_give_the_turns_before_the_reply(tmp_path):
    # LLaMA-Factory's ShareGPT rows close with the reply to learn: prompt = all turns but that
    rows = [
        {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hey"}]},
        {"conversations": [{"from": "human", "value": "A"}, {"from": "gpt", "value": "B"},
                           {"from": "human", "value": "C"}, {"from": "gpt", "value": "D"}],
         "system": "Be brief."},
        {"conversations": [{"from": "human", "value": "Open"}]},
    ]  # fmt: skip
    path = write_jsonl(tmp_path / "sharegpt.jsonl", rows)
    report = LoadReport(source=str(path))
    assert load_prompts(str(path), report=report) == [
        user("Hi"),
        [{"role": "system", "content": "Be brief."}, *user("A"),
         {"role": "assistant", "content": "B"}, *user("C")],
        user("Open"),
    ]  # fmt: skip
    assert (report.rows, report.kept, report.replies_set_aside) == (3, 3, 2)


def test_without_closing_reply():
    hi, hey = user("Hi")[0], {"role": "assistant", "content": "Hey"}
    assert without_closing_reply([hi, hey, hey]) == [hi]
    assert without_closing_reply([hi]) == [hi]
    assert without_closing_reply([hey]) == []


def test_sharegpt_conversation_of_replies_only_names_the_row(tmp_path):
    rows = [
        {"conversations": [{"from": "human", "value": "Hi"}]},
        {"conversations": [{"from": "gpt", "value": "Hey"}]},
    ]
    path = write_jsonl(tmp_path / "sharegpt.jsonl", rows)
    with pytest.raises(PreferenceFormatError, match="no turn before") as info:
        load_prompts(str(path))
    assert info.value.field == "conversations" and f"{path}:2" in str(info.value)


def test_sharegpt_preference_file_gives_its_prompts(tmp_path):
    turn = [{"from": "human", "value": "Hi"}]
    rows = [
        {"conversations": turn, "chosen": {"from": "gpt", "value": "a"},
         "rejected": {"from": "gpt", "value": "b"}},
        {"conversations": turn, "chosen": {"from": "gpt", "value": "c"},
         "rejected": {"from": "gpt", "value": "d"}},
    ]  # fmt: skip
    path = tmp_path / "pairs.json"
    path.write_text(json.dumps(rows))
    assert load_prompts(str(path)) == [user("Hi")]


def test_skip_bad_prompt_rows_with_report(tmp_path):
    from distalign.data import LoadReport

    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "ok"}, "{oops", {"prompt": None}])
    report = LoadReport(source="")
    assert load_prompts(str(path), skip_bad_rows=True, report=report) == [user("ok")]
    assert (report.format, report.rows, report.kept) == ("prompt-only", 3, 1)
    assert sum(report.skipped.values()) == 2


def test_empty_and_missing_txt(tmp_path):
    path = tmp_path / "blank.txt"
    path.write_text("\n  \n")
    with pytest.raises(DataSourceError, match=r"blank\.txt: no rows"):
        load_prompts(str(path))
    with pytest.raises(DataSourceError, match="no such file"):
        load_prompts(str(tmp_path / "missing.txt"))


def test_hub_config_name_and_revision(monkeypatch):
    calls = []

    def fake_load_dataset(path, **kwargs):
        calls.append((path, kwargs))
        return datasets.Dataset.from_list([{"prompt": "Hub?"}])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert load_prompts("org/prompts", "test", name="math", revision="v1") == [user("Hub?")]
    assert calls == [("org/prompts", {"name": "math", "split": "test", "revision": "v1"})]


def test_prompt_only_rows_keep_their_other_columns(tmp_path):
    import pickle

    from distalign.data.prompts import PromptRow
    from distalign.rl.rewards import prompt_columns

    path = write_jsonl(
        tmp_path / "p.jsonl",
        [
            {"prompt": "2+2?", "answer": "4", "level": 1},
            {"prompt": [{"role": "user", "content": "3+3?"}], "answer": "6"},
        ],
    )
    prompts = load_prompts(str(path))
    assert prompts[0] == [{"role": "user", "content": "2+2?"}]  # still a list of messages
    assert isinstance(prompts[0], PromptRow) and prompts[0].columns == {"answer": "4", "level": 1}
    again = pickle.loads(pickle.dumps(prompts[1]))  # gathered across processes
    assert again == prompts[1] and again.columns == {"answer": "6"}
    assert prompt_columns(prompts) == {"answer": ["4", "6"], "level": [1, None]}


def test_a_preference_sets_prompts_carry_their_rows_columns(tmp_path):
    """rl train on a preference set: a reward function gets the data set's other columns (of
    each prompt's first row), and a string prompt as its string, as TRL passes them."""
    reply = [{"role": "assistant", "content": "Blue."}]
    rows = [
        {"prompt": "Sky?", "chosen": reply, "rejected": [{"role": "assistant", "content": "Red."}],
         "score_chosen": 9.0, "id": "a"},
        {"prompt": "Sky?", "chosen": reply, "rejected": [{"role": "assistant", "content": "No"}],
         "score_chosen": 7.0, "id": "b"},
        {"prompt": "Sea?", "chosen": "Wet.", "rejected": "Dry.", "score_chosen": 1.0, "id": "c"},
    ]  # fmt: skip
    prompts = load_prompts(str(write_jsonl(tmp_path / "uf.jsonl", rows)))
    assert [p.text for p in prompts] == ["Sky?", "Sea?"]  # each once, as written
    assert prompts[0].columns["id"] == "a" and prompts[0].columns["chosen"] == reply
    assert prompts[1].columns["score_chosen"] == 1.0 and "prompt" not in prompts[1].columns


def test_a_prompt_source_without_a_prompt_column_says_where_prompts_are_read_from(tmp_path):
    path = tmp_path / "gsm8k.jsonl"
    path.write_text('{"question": "What is 2+2?", "answer": "4"}\n')
    with pytest.raises(PreferenceFormatError, match=r"gsm8k.jsonl:1: no prompt in columns "
                       r"\['answer', 'question'\].*rename `question` to `prompt`"):  # fmt: skip
        load_prompts(str(path))


def test_a_pair_of_alike_replies_read_for_its_prompt_is_no_drop_to_speak_of(tmp_path, caplog):
    rows = [{"prompt": "Hi", "chosen": "Yo", "rejected": "Yo"}, {"prompt": "Bye", "chosen": "a",
                                                                "rejected": "b"}]  # fmt: skip
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    report = LoadReport(source=str(path))
    with caplog.at_level(logging.WARNING):
        prompts = load_prompts(str(path), report=report)
    assert [p[0]["content"] for p in prompts] == ["Hi", "Bye"]  # kept, as prompts
    assert report.identical == 0 and "identical" not in caplog.text


def test_an_empty_sharegpt_conversation_is_said_as_such(tmp_path):
    turns = [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Yo"}]
    path = tmp_path / "sg.json"
    path.write_text(json.dumps([{"id": "a", "conversations": turns},
                                {"id": "b", "conversations": []}]))  # fmt: skip
    with pytest.raises(PreferenceFormatError, match="row 1: field 'conversations': expected"):
        load_prompts(str(path))  # it blamed a missing 'prompt' field
    assert load_prompts(str(path), skip_bad_rows=True) == [[{"role": "user", "content": "Hi"}]]


def test_a_conversation_saved_as_text_is_said_not_read_as_one_user_turn(tmp_path):
    turns = [{"role": "user", "content": "Hi"}]
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps({"messages": turns}) + "\n"
                    + json.dumps({"messages": json.dumps(turns)}) + "\n")  # fmt: skip
    with pytest.raises(
        PreferenceFormatError,
        match=r"m.jsonl:2: field 'messages': expected a list "
        r"of messages, got text \(JSON text of messages: load the column with",
    ):
        load_prompts(str(path))  # fmt: skip


def test_a_text_file_of_prompts_takes_a_slice_and_refuses_hub_options(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("a\nb\nc\n")
    assert [p[0]["content"] for p in load_prompts(str(path), "train[-2:]")] == ["b", "c"]
    with pytest.raises(DataSourceError, match="applies to hub datasets only"):
        load_prompts(str(path), name="main")  # it was ignored
