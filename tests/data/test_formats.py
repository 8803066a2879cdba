"""Row shapes -> the normalised pair: Anthropic-HH transcripts split as TRL does, empty
replies kept and counted, ShareGPT/LLaMA-Factory and UltraFeedback-binarized rows, TRL's
string prompt beside whole conversations."""

from __future__ import annotations

import os
import random
import re

import pytest

from distalign.data import LoadReport, PreferenceFormatError, load_preferences
from distalign.data.formats import common_prefix_length, conversation_text, detect_format
from tests.conftest import write_jsonl

H, A = "\n\nHuman: ", "\n\nAssistant: "


def load(tmp_path, rows, **kwargs):
    report = LoadReport(source="")
    ds = load_preferences(str(write_jsonl(tmp_path / "d.jsonl", rows)), report=report, **kwargs)
    return ds, report


def user(text):
    return {"role": "user", "content": text}


def bot(text):
    return {"role": "assistant", "content": text}


# --- Anthropic HH ------------------------------------------------------------------------


def test_hh_reply_that_writes_a_human_turn_stays_in_the_reply(tmp_path):
    prompt = H + "Name a pet."
    rows = [
        {
            "chosen": prompt + A + "A cat.",
            "rejected": prompt + A + "A rock." + H + "Why?" + A + "Ok.",
        }
    ]
    ds, report = load(tmp_path, rows)
    assert report.format == "hh"
    assert ds[0]["prompt"] == [user("Name a pet.")]
    assert (ds[0]["chosen"], ds[0]["rejected"]) == (
        "A cat.",
        "A rock.\n\nHuman: Why?\n\nAssistant: Ok.",
    )


def test_hh_transcripts_that_part_before_the_last_turn_are_kept_and_counted(tmp_path, caplog):
    """As TRL's hh-rlhf script reads them: the prompt is the shared turns, each reply the rest
    of its transcript; the rows are counted and said, not silently mis-split."""
    rows = [
        {"chosen": H + "hi" + A + "hello" + H + "capital?" + A + "Paris.",
         "rejected": H + "hi" + A + "hey there" + H + "capital?" + A + "London."},
        {"chosen": H + "a" + A + "b", "rejected": H + "a" + A + "c"},
    ]  # fmt: skip
    ds, report = load(tmp_path, rows)
    assert ds[0]["prompt"] == [user("hi")]
    assert ds[0]["chosen"] == "hello" + H + "capital?" + A + "Paris."
    assert report.later_turns == 1 and report.kept == 2
    assert "reply goes on with a '\\n\\nHuman:' turn: 1" in caplog.text
    # a reply that says "Human:" (its first words, or inline) has no turn of its own
    said = [{"chosen": H + "Write a dialogue." + A + "Human: hi. Bot: hello.",
             "rejected": H + "Write a dialogue." + A + "No. Human: hi."}]  # fmt: skip
    (tmp_path / "said").mkdir()
    ds, report = load(tmp_path / "said", said)
    assert (ds[0]["chosen"], report.later_turns) == ("Human: hi. Bot: hello.", 0)
    from distalign.data.formats import holds_hh_turn

    # an empty reply, stripped, followed by the next turns: a turn of its own
    assert holds_hh_turn("Human: more?\n\nAssistant: yes")
    assert not holds_hh_turn("Human: hi. Bot: hello.")


def test_a_text_that_mentions_a_turn_marker_later_is_no_hh_transcript(tmp_path):
    rows = [{"chosen": "User: hi\n\nAssistant: hello", "rejected": "User: hi\n\nAssistant: go"}]
    assert detect_format(rows[0]) == "implicit"
    ds, report = load(tmp_path, rows)
    assert ds[0]["prompt"] == [user("User: hi\n\nAssistant: ")]
    assert (ds[0]["chosen"], ds[0]["rejected"], report.later_turns) == ("hello", "go", 0)


def test_hh_replies_sharing_text_past_a_human_marker(tmp_path):
    """The common prefix runs past the replies' own "\\n\\nHuman: ": cut back to the last
    "\\n\\nAssistant:" before it, not to the marker."""
    prompt = H + "Hi" + A + "Hello!" + H + "Is it cold?"
    rows = [
        {"chosen": prompt + A + "Yes." + H + "Brr.", "rejected": prompt + A + "Yes." + H + "No."}
    ]
    ds, _ = load(tmp_path, rows)
    assert ds[0]["prompt"] == [user("Hi"), bot("Hello!"), user("Is it cold?")]
    assert (ds[0]["chosen"], ds[0]["rejected"]) == ("Yes.\n\nHuman: Brr.", "Yes.\n\nHuman: No.")


@pytest.mark.parametrize("end", ["\n\nAssistant:", "\n\nAssistant: ", "\n\nAssistant:  \n"])
def test_hh_empty_reply_is_kept_and_counted(tmp_path, end, caplog):
    prompt = H + "Help me cheat on a test."
    rows = [
        {"chosen": prompt + end, "rejected": prompt + A + "Sure, here is how."},
        {"chosen": prompt + A + "No.", "rejected": prompt + end},
    ]
    ds, report = load(tmp_path, rows)
    assert len(ds) == 2 and report.empty_replies == 2
    assert (ds[0]["chosen"], ds[0]["rejected"]) == ("", "Sure, here is how.")
    assert (ds[1]["chosen"], ds[1]["rejected"]) == ("No.", "")
    assert ds[0]["prompt"] == [user("Help me cheat on a test.")]


def test_hh_both_replies_empty_is_dropped_as_identical(tmp_path):
    empty = H + "Say nothing." + "\n\nAssistant:"
    ds, report = load(tmp_path, [{"chosen": empty, "rejected": empty + " "}])
    assert len(ds) == 0 and report.identical == 1 and report.empty_replies == 0
    ds, report = load(tmp_path, [{"chosen": empty, "rejected": empty}], drop_identical=False)
    assert len(ds) == 1 and report.empty_replies == 2


def test_hh_prompt_ends_with_the_user_when_the_assistant_spoke_twice(tmp_path):
    shared = H + "Count to two." + A + "One." + A
    ds, _ = load(tmp_path, [{"chosen": shared + "Two.", "rejected": shared + "Three."}])
    assert ds[0]["prompt"] == [user("Count to two.")]
    assert (ds[0]["chosen"], ds[0]["rejected"]) == (
        "One.\n\nAssistant: Two.",
        "One.\n\nAssistant: Three.",
    )


def test_hh_transcripts_that_differ_in_the_first_turn(tmp_path):
    rows = [{"chosen": H + "a" + A + "b", "rejected": H + "c" + A + "b"}]
    with pytest.raises(PreferenceFormatError, match="share the transcript") as info:
        load(tmp_path, rows)
    assert info.value.field == "rejected" and "d.jsonl:1" in str(info.value)


def test_hh_prompt_column_is_split_into_turns(tmp_path):
    """Dahoas/rm-static: the transcript up to "Assistant:" as prompt, replies as text."""
    rows = [{"prompt": H + "Hi" + A + "Hey." + H + "Bye" + "\n\nAssistant:", "chosen": " Bye!",
             "rejected": " No."}]  # fmt: skip
    ds, report = load(tmp_path, rows)
    assert report.format == "explicit"
    assert ds[0]["prompt"] == [user("Hi"), bot("Hey."), user("Bye")]
    assert (ds[0]["chosen"], ds[0]["rejected"]) == ("Bye!", "No.")
    # replies as assistant messages: the space after "Assistant:" is the transcript's too
    rows[0] = {**rows[0], "chosen": [bot(" Bye!")], "rejected": [bot(" No.")]}
    ds, _ = load(tmp_path, rows)
    assert (ds[0]["chosen"], ds[0]["rejected"]) == ("Bye!", "No.")


def test_hh_with_windows_line_ends_reads_as_hh(tmp_path):
    """A transcript saved with CRLF line ends (a CSV from Windows) has the same turns."""
    crlf = H.replace("\n", "\r\n"), A.replace("\n", "\r\n")
    prompt = crlf[0] + "Hi" + crlf[1] + "Hey." + crlf[0] + "Bye"
    rows = [{"chosen": prompt + crlf[1] + "Bye!\r\nSee you.", "rejected": prompt + crlf[1] + "No."}]
    ds, report = load(tmp_path, rows)
    assert report.format == "hh"
    assert ds[0]["prompt"] == [user("Hi"), bot("Hey."), user("Bye")]
    assert (ds[0]["chosen"], ds[0]["rejected"]) == ("Bye!\r\nSee you.", "No.")
    rows = [{"prompt": prompt + "\r\n\r\nAssistant:", "chosen": " Bye!", "rejected": " No."}]
    ds, _ = load(tmp_path, rows)
    assert ds[0]["prompt"] == [user("Hi"), bot("Hey."), user("Bye")]


def test_common_prefix_length_matches_a_character_loop():
    rng = random.Random(0)
    for _ in range(300):
        a = "".join(rng.choice("ab") for _ in range(rng.randrange(0, 700)))
        b = a[: rng.randrange(0, len(a) + 1)] + "".join(
            rng.choice("ab") for _ in range(rng.randrange(0, 5))
        )
        assert common_prefix_length(a, b) == len(os.path.commonprefix([a, b]))  # noqa: RUF071


# --- empty replies in the other formats --------------------------------------------------


@pytest.mark.parametrize(
    "row",
    [
        {"prompt": "q", "chosen": "", "rejected": "b"},
        {"prompt": "q", "chosen": "  ", "rejected": "b"},
        {"prompt": [user("q")], "chosen": [bot("")], "rejected": [bot("b")]},
        {"chosen": [user("q"), bot("")], "rejected": [user("q"), bot("b")]},
        {"conversations": [{"from": "human", "value": "q"}], "chosen": {"from": "gpt", "value": ""},
         "rejected": {"from": "gpt", "value": "b"}},
    ],
)  # fmt: skip
def test_empty_reply_is_data(tmp_path, row):
    ds, report = load(tmp_path, [row])
    assert len(ds) == 1 and ds[0]["chosen"].strip() == "" and ds[0]["rejected"] == "b"
    assert report.empty_replies == 1 and not report.skipped


# --- ShareGPT / LLaMA-Factory ------------------------------------------------------------


def gpt(text):
    return {"from": "gpt", "value": text}


def test_sharegpt_single_messages_with_system_column(tmp_path):
    rows = [
        {"conversations": [{"from": "human", "value": "Hi"}], "chosen": gpt("Hello."),
         "rejected": gpt("Go away."), "system": "Be kind."},
    ]  # fmt: skip
    ds, report = load(tmp_path, rows)
    assert report.format == "sharegpt"
    assert ds[0]["prompt"] == [{"role": "system", "content": "Be kind."}, user("Hi")]
    assert (ds[0]["chosen"], ds[0]["rejected"]) == ("Hello.", "Go away.")


def test_sharegpt_lists_roles_and_system_turn(tmp_path):
    conversation = [
        {"from": "system", "value": "Use tools."},
        {"from": "human", "value": "Weather?"},
        {"from": "function_call", "value": '{"name": "weather"}'},
        {"from": "observation", "value": "rain"},
    ]
    rows = [{"conversations": conversation, "chosen": [gpt("Rain.")], "rejected": [gpt("Sun.")],
             "system": "ignored: the conversation has its own"}]  # fmt: skip
    ds, _ = load(tmp_path, rows)
    assert [m["role"] for m in ds[0]["prompt"]] == ["system", "user", "assistant", "tool"]
    assert ds[0]["prompt"][0]["content"] == "Use tools."
    assert (ds[0]["chosen"], ds[0]["rejected"]) == ("Rain.", "Sun.")


def test_sharegpt_replies_that_repeat_the_conversation(tmp_path):
    conversation = [{"from": "human", "value": "Hi"}]
    rows = [{"conversations": conversation, "chosen": [*conversation, gpt("Hello.")],
             "rejected": [*conversation, gpt("Bye.")]}]  # fmt: skip
    assert load(tmp_path, rows)[0][0]["chosen"] == "Hello."


def test_openai_messages_column(tmp_path):
    rows = [{"messages": [user("Hi")], "chosen": bot("Hello."), "rejected": [bot("Bye.")]}]
    ds, report = load(tmp_path, rows)
    assert report.format == "sharegpt"
    assert ds[0]["prompt"] == [user("Hi")] and ds[0]["rejected"] == "Bye."


@pytest.mark.parametrize(
    ("row", "field", "expected"),
    [
        ({"conversations": [{"from": "bot", "value": "x"}], "chosen": gpt("a"),
          "rejected": gpt("b")}, "conversations[0].from", "expected one of"),
        ({"conversations": [{"from": "human", "value": 3}], "chosen": gpt("a"),
          "rejected": gpt("b")}, "conversations[0].value", "expected a string"),
        ({"conversations": [{"from": "human", "value": "x"}], "chosen": {"from": "human",
          "value": "a"}, "rejected": gpt("b")}, "chosen", "assistant reply"),
        ({"conversations": [{"from": "human", "value": "x"}, gpt("y")], "chosen": gpt("a"),
          "rejected": gpt("b")}, "prompt", "end with a user turn"),
        ({"conversations": [{"from": "human", "value": "x"}], "chosen": gpt("a"),
          "rejected": gpt("b"), "system": 5}, "system", "expected a string"),
    ],
)  # fmt: skip
def test_sharegpt_errors_name_the_field(tmp_path, row, field, expected):
    with pytest.raises(PreferenceFormatError) as info:
        load(tmp_path, [row])
    assert info.value.field == field and expected in str(info.value)
    assert "d.jsonl:1" in str(info.value)


def test_forced_sharegpt(tmp_path):
    rows = [{"prompt": None, "conversations": [{"from": "human", "value": "Hi"}],
             "chosen": gpt("a"), "rejected": gpt("b")}]  # fmt: skip
    ds, report = load(tmp_path, rows, format="sharegpt")
    assert report.format == "sharegpt" and ds[0]["chosen"] == "a"


def test_detection_order():
    conversation = [{"from": "human", "value": "Hi"}]
    assert detect_format(
        {"prompt": "x", "messages": [user("x")], "chosen": [], "rejected": []}
    ) == ("explicit")
    assert (
        detect_format({"conversations": conversation, "chosen": {}, "rejected": {}}) == "sharegpt"
    )
    assert detect_format({"chosen": [user("x"), bot("y")], "rejected": []}) == "implicit"
    assert detect_format({"chosen": H + "x" + A + "y", "rejected": ""}) == "hh"


# --- UltraFeedback-binarized and TRL's implicit prompt beside a string prompt -------------


def test_ultrafeedback_binarized_scores(tmp_path):
    chosen = [user("Name a fruit."), bot("A pear.")]
    rows = [
        {"prompt": "Name a fruit.", "prompt_id": "x1", "chosen": chosen, "messages": chosen,
         "rejected": [user("Name a fruit."), bot("Rocks.")], "score_chosen": 8.5,
         "score_rejected": 3},
    ]  # fmt: skip
    ds, report = load(tmp_path, rows)
    assert report.format == "explicit"
    assert ds[0]["prompt"] == [user("Name a fruit.")]
    assert (ds[0]["chosen"], ds[0]["rejected"]) == ("A pear.", "Rocks.")
    assert (ds[0]["chosen_score"], ds[0]["rejected_score"]) == (8.5, 3.0)


def test_trl_margin_column_is_kept_and_checked(tmp_path):
    rows = [{"prompt": "a?", "chosen": "yes", "rejected": "no", "margin": 0.5},
            {"prompt": "b?", "chosen": "yes", "rejected": "no", "margin": None},
            {"prompt": "c?", "chosen": "yes", "rejected": "no"}]  # fmt: skip
    ds, _ = load(tmp_path, rows)
    assert ds["margin"] == [0.5, None, None]
    with pytest.raises(PreferenceFormatError, match=r"jsonl:1: field 'margin': expected a num"):
        load(tmp_path, [{"prompt": "a?", "chosen": "yes", "rejected": "no", "margin": "big"}])


def test_string_prompt_beside_whole_conversations_uses_their_shared_turns(tmp_path):
    """TRL's maybe_extract_prompt: a string prompt next to conversational replies is ignored."""
    history = [user("Hi"), bot("Hello."), user("Name a fruit.")]
    rows = [{"prompt": "Name a fruit.", "chosen": [*history, bot("A fig.")],
             "rejected": [*history, bot("No.")]}]  # fmt: skip
    ds, _ = load(tmp_path, rows)
    assert ds[0]["prompt"] == history
    assert (ds[0]["chosen"], ds[0]["rejected"]) == ("A fig.", "No.")


def test_a_string_prompt_the_conversations_replace_is_counted_and_rl_reads_the_same(
    tmp_path, caplog
):
    from distalign.data.prompts import load_prompts

    turn = [user("q")]
    rows = [{"prompt": "something else", "chosen": [*turn, bot("a")],
             "rejected": [*turn, bot("b")]},
            {"prompt": "q2", "chosen": [user("q2"), bot("a")],
             "rejected": [user("q2"), bot("b")]}]  # fmt: skip
    ds, report = load(tmp_path, rows)
    assert ds["prompt"] == [turn, [user("q2")]] and report.prompts_replaced == 1
    assert "not the prompt column: 1" in caplog.text
    # rl train's prompts are rm train's: the conversations' turns, not the column's text
    prompts = load_prompts(str(tmp_path / "d.jsonl"))
    assert [list(p) for p in prompts] == [turn, [user("q2")]]


def test_developer_and_ipython_roles_and_text_parts_go_to_the_template(tmp_path):
    prompt = [{"role": "developer", "content": "Be brief."},
              {"role": "user", "content": [{"type": "text", "text": "Weather?"},
                                           {"type": "text", "text": "In Oslo."}]},
              {"role": "assistant", "content": "", "tool_calls": [{"type": "function",
               "function": {"name": "weather", "arguments": {"city": "Oslo"}}}]},
              {"role": "ipython", "content": "-3 C"}]  # fmt: skip
    ds, _ = load(tmp_path, [{"prompt": prompt, "chosen": [bot("Cold.")], "rejected": [bot("?")]}])
    assert [m["role"] for m in ds[0]["prompt"]] == ["developer", "user", "assistant", "ipython"]
    assert ds[0]["prompt"][1]["content"] == "Weather?\nIn Oslo."
    image = [{"role": "user", "content": [{"type": "image", "url": "x.png"}]}]
    with pytest.raises(PreferenceFormatError, match="other than text"):
        load(tmp_path, [{"prompt": image, "chosen": "a", "rejected": "b"}])


def test_replies_from_different_conversations_are_refused(tmp_path):
    rows = [{"prompt": "Name a fruit.", "chosen": [user("a"), bot("A fig.")],
             "rejected": [user("b"), bot("No.")]}]  # fmt: skip
    with pytest.raises(PreferenceFormatError, match="share every turn before their replies"):
        load(tmp_path, rows)
    # beside a prompt of messages, a reply's turns before the answer repeat the prompt
    rows = [{"prompt": [user("Name a fruit.")], "chosen": [user("a"), bot("A fig.")],
             "rejected": bot("No.")}]  # fmt: skip
    with pytest.raises(PreferenceFormatError, match="repeat the prompt"):
        load(tmp_path, rows)


def test_undetectable_row_names_the_missing_column():
    with pytest.raises(ValueError, match=r"lack 'rejected'$"):
        detect_format({"prompt": "p", "chosen": "a"})
    with pytest.raises(ValueError, match=r"lack 'chosen' and 'rejected'$"):
        detect_format({"prompt": "p"})
    # public shapes that are not pairs say what makes them pairs
    shapes = [
        ({"instruction": "q", "completions": [{"response": "a", "overall_score": 3}]},
         "UltraFeedback's raw rows"),
        ({"prompt": "q", "completion": "a", "label": True}, "TRL's KTO shape"),
        ({"input": {"messages": []}, "preferred_output": [], "non_preferred_output": []},
         "rename input.messages to prompt"),
        ({"question": "q", "response_j": "a", "response_k": "b"}, "stack-exchange-paired"),
        ({"prompt": "q", "response": "a", "helpfulness": 3}, "HelpSteer2's raw rows"),
    ]  # fmt: skip
    for row, hint in shapes:
        with pytest.raises(ValueError, match=re.escape(hint)):
            detect_format(row)


# --- TRL's standard implicit prompt: two texts, no prompt column --------------------------


def test_two_texts_split_at_the_end_of_their_shared_words(tmp_path):
    rows = [
        {"chosen": "The sky is blue.", "rejected": "The sky is green."},
        {"chosen": "Paris is the capital.", "rejected": "Rome is the capital."},  # shares nothing
        {"chosen": "Say yes please", "rejected": "Say yes"},  # one the beginning of the other
        {"chosen": "The answer is 12.", "rejected": "The answer is 15."},  # inside a word
        {"chosen": "I think 12", "rejected": "I think 123"},  # a word of one, not the other
        {"chosen": "I like cat food", "rejected": "I like cats"},
    ]
    assert detect_format(rows[0]) == "implicit"
    ds, report = load(tmp_path, rows)
    # the whitespace both share after the prompt stays with it: prompt + reply is the text
    assert ds[0]["prompt"] == [user("The sky is ")]
    assert (ds[0]["chosen"], ds[0]["rejected"]) == ("blue.", "green.")
    assert ds[1]["prompt"] == [user("")]
    assert (ds[1]["chosen"], ds[1]["rejected"]) == ("Paris is the capital.", "Rome is the capital.")
    assert ds[2]["prompt"] == [user("Say yes")] and (ds[2]["chosen"], ds[2]["rejected"]) == (
        " please",
        "",
    )
    assert ds[3]["prompt"] == [user("The answer is ")]
    assert (ds[3]["chosen"], ds[3]["rejected"]) == ("12.", "15.")
    assert [ds[i]["prompt"] for i in (4, 5)] == [[user("I think ")], [user("I like ")]]
    assert (ds[4]["chosen"], ds[4]["rejected"], ds[5]["rejected"]) == ("12", "123", "cats")
    for row, source in zip(ds, rows, strict=True):
        assert row["prompt"][0]["content"] + row["chosen"] == source["chosen"]
        assert row["prompt"][0]["content"] + row["rejected"] == source["rejected"]
    assert (report.kept, report.empty_replies, report.empty_prompts) == (6, 1, 1)


def test_two_texts_beside_a_message_list_name_the_field(tmp_path):
    with pytest.raises(PreferenceFormatError, match="rejected"):
        load(tmp_path, [{"chosen": "a b", "rejected": [user("a"), bot("c")]}])


def test_tokenised_rows_point_to_rm_train():
    with pytest.raises(ValueError, match="rm train` reads them"):
        detect_format({"chosen_ids": [1, 2], "rejected_ids": [1, 3]})


def test_a_report_shows_every_turn_of_a_conversation_prompt():
    assert conversation_text("Plain text?") == "Plain text?"
    assert conversation_text([user("One turn?")]) == "One turn?"
    chat = [{"role": "system", "content": "Be brief."}, user("Hi"),
            {"role": "assistant", "content": "Hello."}, user("Shorter, please.")]  # fmt: skip
    assert conversation_text(chat) == (
        "system: Be brief.\n\nuser: Hi\n\nassistant: Hello.\n\nuser: Shorter, please."
    )
