"""Models without a chat template read TRL's plain text; HH transcripts read as written."""

from __future__ import annotations

import json

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import AutoTokenizer, PreTrainedTokenizerFast
from typer.testing import CliRunner

from distalign.cli import USER_ERRORS, app
from distalign.data.load import load_preferences
from distalign.data.pairs import render_text, tokenize_pair, tokenize_pairs
from distalign.models.load import load_tokenizer
from distalign.models.templates import RenderingError, adds_bos, built_in_template, rendering_of
from tests.conftest import write_jsonl


def user(text):
    return {"role": "user", "content": text}


def bot(text):
    return {"role": "assistant", "content": text}


@pytest.fixture(scope="module")
def plain(base_model_dir):
    return load_tokenizer(str(base_model_dir))


def trl_ids(tokenizer, text: str) -> list[int]:
    """What TRL's RewardTrainer trains on for a standard text: EOS appended, then
    ``tokenizer(text)`` with the tokenizer's own special tokens."""
    return tokenizer(text + tokenizer.eos_token)["input_ids"]


def whole(pair: dict, reply: str) -> list[int]:
    return pair["prompt_ids"] + pair[f"{reply}_ids"]


def test_a_tokenizer_without_a_template_reads_trls_standard_text(plain):
    assert rendering_of(plain) == "plain"
    prompt = [user("The sky is")]
    assert render_text(plain, prompt) == "The sky is"
    assert render_text(plain, prompt, " blue.") == "The sky is blue." + plain.eos_token
    pair = tokenize_pair(plain, prompt, " blue.", " green.", max_length=64)
    assert whole(pair, "chosen") == trl_ids(plain, "The sky is blue.")
    assert whole(pair, "rejected") == trl_ids(plain, "The sky is green.")
    # a reply that already ends with EOS gets no second one (TRL's add_eos)
    again = tokenize_pair(plain, prompt, " blue." + plain.eos_token, "", max_length=64)
    assert whole(again, "chosen") == whole(pair, "chosen")
    assert whole(again, "rejected") == trl_ids(plain, "The sky is")


def test_standard_texts_read_as_the_whole_text(plain, smol_tokenizer, tmp_path):
    """Loaded as a user would (implicit and explicit standard rows): plain text is TRL's
    prompt + reply; a chat template's reply turn starts at its word."""
    rows = [
        {"chosen": "Q: 2+2?\n\nA: 4", "rejected": "Q: 2+2?\n\nA: 5"},
        {"chosen": "Paris is the capital.", "rejected": "Rome is the capital."},
        {"chosen": "I like cat food", "rejected": "I like cats"},
    ]
    explicit = [
        {"prompt": "The capital of France is", "chosen": " Paris.", "rejected": " Lyon."},
        {"prompt": "TL;DR:", "chosen": "\n\nshort", "rejected": ""},
        {"prompt": "2+2=", "chosen": "4", "rejected": " 5"},
    ]
    for name, data in (("implicit", rows), ("explicit", explicit)):
        ds = load_preferences(str(write_jsonl(tmp_path / f"{name}.jsonl", data)))
        pairs = tokenize_pairs(ds, plain, max_length=64)
        for pair, row in zip(pairs, data, strict=True):
            prompt = row.get("prompt", "")
            assert whole(pair, "chosen") == trl_ids(plain, prompt + row["chosen"])
            assert whole(pair, "rejected") == trl_ids(plain, prompt + row["rejected"])
    text = render_text(smol_tokenizer, ds[0]["prompt"], ds[0]["chosen"])
    assert "<|im_start|>assistant\nParis.<|im_end|>" in text


def test_tokens_that_merge_across_the_join_read_as_the_whole_text(plain):
    """TRL tokenises each whole text: "The sky is " + "blue." reads " blue", "wa" + "rm"
    reads "warm"; the prompt's ids are then what the whole texts share of its own."""
    for prompt, chosen, rejected in (("The sky is ", "blue.", "green."), ("wa", "rm", "rmth")):
        alone = plain(prompt, add_special_tokens=False)["input_ids"]
        pair = tokenize_pair(plain, [user(prompt)], chosen, rejected, max_length=64)
        assert whole(pair, "chosen") == trl_ids(plain, prompt + chosen)
        assert whole(pair, "rejected") == trl_ids(plain, prompt + rejected)
        assert pair["prompt_ids"] == alone[: len(pair["prompt_ids"])] != alone


def test_plain_text_refuses_a_conversation_naming_the_row(plain, tmp_path):
    rows = [
        {"prompt": "one turn", "chosen": " a", "rejected": " b"},
        {"prompt": [user("hi"), bot("hello"), user("and?")], "chosen": "x", "rejected": "y"},
    ]
    ds = load_preferences(str(write_jsonl(tmp_path / "pairs.jsonl", rows)))
    with pytest.raises(ValueError, match=r"row 1: .*one user turn.*chat_template_path"):
        tokenize_pairs(ds, plain, max_length=64)


HH_CHOSEN = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Sky colour?\n\nAssistant: Blue."
HH_REJECTED = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Sky colour?\n\nAssistant:"
HH_ROW = {"chosen": HH_CHOSEN, "rejected": HH_REJECTED}


def test_hh_transcripts_read_as_written(base_model_dir, tmp_path):
    source = str(write_jsonl(tmp_path / "hh.jsonl", [HH_ROW]))
    ds = load_preferences(source)
    hh = load_tokenizer(str(base_model_dir), chat_template="hh")
    pair = tokenize_pairs(ds, hh, max_length=64)[0]
    assert whole(pair, "chosen") == trl_ids(hh, HH_CHOSEN)
    assert whole(pair, "rejected") == trl_ids(hh, HH_REJECTED)  # an empty reply
    assert render_text(hh, ds[0]["prompt"]) == HH_REJECTED  # where the policy continues


def test_hh_data_turn_plain_text_into_hh(base_model_dir, tmp_path):
    """TRL trains a base model on HH's raw transcripts: a tokenizer without a template takes
    their own text; what it cannot read is said in one line on the command line."""
    from distalign.data.inspect import inspect_source

    source = str(write_jsonl(tmp_path / "hh.jsonl", [HH_ROW]))
    tokenizer = load_tokenizer(str(base_model_dir))
    assert inspect_source(source, tokenizer).example == HH_CHOSEN + tokenizer.eos_token
    assert rendering_of(tokenizer) == "hh"
    rows = [{"prompt": [user("hi")], "chosen": [bot("a")], "rejected": [bot("b")]}]
    conversations = str(write_jsonl(tmp_path / "conversations.jsonl", rows))
    result = CliRunner().invoke(
        app, ["data", "inspect", conversations, f"model_name_or_path={base_model_dir}"]
    )
    assert isinstance(result.exception, USER_ERRORS)  # main() says it as one "error:" line


def test_hh_prompt_strings_read_as_turns_and_a_base_policy_continues_the_transcript(
    base_model_dir, tmp_path
):
    from distalign.api import generate
    from distalign.data.prompts import load_prompts

    source = str(write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": HH_REJECTED}]))
    assert load_prompts(source) == [[user("Hi"), bot("Hello!"), user("Sky colour?")]]
    rows = generate(model_name_or_path=str(base_model_dir), dataset_name=source,
                    max_completion_length=2, device="cpu")  # fmt: skip
    assert len(rows) == 1  # three turns: plain text would have refused them


def test_a_chat_template_renders_a_reply_as_written(smol_tokenizer, plain, tmp_path):
    """Conversational data as TRL renders it, leading whitespace and all; two texts that share
    a beginning give the prompt the space after it, so the reply turn starts at its word."""
    prompt, reply = [user("Show code.")], "\n```py\nx = 1\n```"
    pair = tokenize_pair(smol_tokenizer, prompt, reply, " A.", max_length=256)
    for field, text in (("chosen", reply), ("rejected", " A.")):
        expected = smol_tokenizer.apply_chat_template([*prompt, bot(text)], tokenize=True)
        expected = expected["input_ids"] if hasattr(expected, "keys") else expected
        assert whole(pair, field) == list(expected)
    rows = [{"chosen": "The sky is blue.", "rejected": "The sky is green."}]
    ds = load_preferences(str(write_jsonl(tmp_path / "pairs.jsonl", rows)))
    text = render_text(smol_tokenizer, ds[0]["prompt"], ds[0]["chosen"])
    assert "<|im_start|>assistant\nblue.<|im_end|>" in text
    # a sampled reply: plain text keeps the space that joins it to the prompt
    from distalign.models.generate import reply_texts

    prompt = plain("The sky is", add_special_tokens=False)["input_ids"]
    ids = plain(" blue.", add_special_tokens=False)["input_ids"]
    assert reply_texts(plain, [ids], [prompt], 1) == [" blue."]
    assert reply_texts(smol_tokenizer, [ids], [prompt], 1) == ["blue."]
    # a SentencePiece reply decoded alone loses its "▁"; after its prompt it keeps the space
    spm = bos_tokenizer()
    spm.chat_template = built_in_template("plain", spm)
    prompt = spm("The sky is", add_special_tokens=False)["input_ids"]
    ids = spm(" blue.", add_special_tokens=False)["input_ids"]
    assert spm.decode(ids) == "blue."
    assert reply_texts(spm, [ids], [prompt], 1) == [" blue."]


def bos_tokenizer() -> PreTrainedTokenizerFast:
    """A Llama-like tokenizer (SentencePiece's "▁" on the first word only, as transformers'
    non-legacy Llama tokenizer) that puts <s> before every text by itself."""
    words = ["<unk>", "<s>", "</s>", "▁The", "The", "▁sky", "▁is", "▁blue.", "blue.", "▁."]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )


def test_the_bos_a_tokenizer_adds_by_itself_starts_the_text(plain):
    tokenizer = bos_tokenizer()
    assert adds_bos(tokenizer) and not adds_bos(plain)
    tokenizer.chat_template = built_in_template("plain", tokenizer)
    pair = tokenize_pair(tokenizer, [user("The sky is")], " blue.", " .", max_length=16)
    assert whole(pair, "chosen") == trl_ids(tokenizer, "The sky is blue.")
    tokens = tokenizer.convert_ids_to_tokens(whole(pair, "chosen"))
    assert tokens[:3] == ["<s>", "▁The", "▁sky"]  # not "The": the BOS is an id, not text


def test_a_reward_model_saves_its_rendering(base_model_dir, tmp_path):
    from distalign.models.reward_model import build_reward_model

    model, tokenizer = build_reward_model(str(base_model_dir))
    model.save_pretrained(tmp_path / "rm")
    tokenizer.save_pretrained(tmp_path / "rm")
    loaded = AutoTokenizer.from_pretrained(tmp_path / "rm")
    conversation = [user("The sky is"), bot(" blue.")]
    assert loaded.apply_chat_template(conversation, tokenize=False) == (
        "The sky is blue." + loaded.eos_token
    )


def test_a_base_model_trains_a_reward_model_and_a_policy_on_standard_data(base_model_dir, tmp_path):
    """TRL's standard data end to end: string pairs -> rm train; string prompts -> rl train
    against that reward model; both save the plain rendering with their tokenizer."""
    from distalign.rl.config import RLTrainConfig
    from distalign.rl.train import run as rl_run
    from distalign.rm.config import RMTrainConfig
    from distalign.rm.train import run as rm_run
    from tests.rm.test_train import make_pairs

    pairs, prompts = tmp_path / "pairs", tmp_path / "prompts"
    pairs.mkdir(), prompts.mkdir()
    for split, seed in (("train", 0), ("test", 1)):
        rows = [
            {**row, "chosen": " " + row["chosen"], "rejected": " " + row["rejected"]}
            for row in make_pairs(8, seed)
        ]
        write_jsonl(pairs / f"{split}.jsonl", rows)
    rm_cfg = RMTrainConfig(
        model_name_or_path=str(base_model_dir), dataset_name=str(pairs), max_steps=1,
        max_length=64, report_to="none", output_dir=str(tmp_path / "rm"),
    )  # fmt: skip
    rm_run(rm_cfg)
    rm = tmp_path / "rm" / "final"
    assert rendering_of(AutoTokenizer.from_pretrained(rm)) == "plain"

    posts = [{"prompt": f"Post {i}.\nTL;DR:"} for i in range(4)]  # trl-lib/tldr's shape
    for split in ("train", "test"):
        write_jsonl(prompts / f"{split}.jsonl", posts)
    rl_cfg = RLTrainConfig(
        model_name_or_path=str(base_model_dir), reward=str(rm), dataset_name=str(prompts),
        max_steps=1, num_generations=2, per_device_train_batch_size=4,
        gradient_accumulation_steps=1, max_completion_length=4, max_eval_samples=2,
        use_peft=False, eval_steps=0, save_steps=0, report_to="none",
        output_dir=str(tmp_path / "rl"),
    )  # fmt: skip
    rl_run(rl_cfg)
    policy = AutoTokenizer.from_pretrained(tmp_path / "rl" / "final")
    assert render_text(policy, [user("Post 1.\nTL;DR:")]) == "Post 1.\nTL;DR:"


def test_a_decoder_reward_model_without_a_template_reads_plain_text(tmp_path):
    """A TRL reward model trained on standard data (a Pythia RM of TRL's TL;DR examples) is
    scored on prompt + reply + EOS; a BERT-style classifier keeps its own rendering."""
    from distalign.models.classifier import encode_conversation, load_sequence_classifier
    from tests.rl.test_rewards import build_bert_reward_model, build_gpt2_reward_model

    path = build_gpt2_reward_model(tmp_path / "gpt2")
    saved = AutoTokenizer.from_pretrained(path)
    saved.chat_template = None
    (path / "chat_template.jinja").unlink(missing_ok=True)
    saved.save_pretrained(path)
    _, tokenizer = load_sequence_classifier(path)
    assert rendering_of(tokenizer) == "plain"
    ids = encode_conversation(tokenizer, [user("cloud river ?")], " stone", max_length=48)
    assert ids == tokenizer("cloud river ? stone<|endoftext|>")["input_ids"]
    _, bert = load_sequence_classifier(build_bert_reward_model(tmp_path / "bert"))
    assert bert.chat_template is None


def test_a_lora_reward_model_on_a_base_whose_vocabulary_gains_a_pad_token_loads(tmp_path):
    """A base tokenizer with EOS as its only special token: training adds a pad token past
    the base's vocabulary, which the loader must grow the embedding for before the model's
    config names it."""
    from transformers import LlamaForCausalLM

    from distalign.models.reward_model import load_reward_model, score_replies
    from distalign.rm.config import RMTrainConfig
    from distalign.rm.train import run
    from tests.conftest import tiny_llama_config
    from tests.rm.test_train import WORDS, make_pairs

    words = [*WORDS, "thanks", "stone", "?"]
    vocab = {w: i for i, w in enumerate(["<|endoftext|>", *dict.fromkeys(words)])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>"
    )
    base = tmp_path / "base"
    config = tiny_llama_config(len(vocab), bos_token_id=0, eos_token_id=0, pad_token_id=None)
    LlamaForCausalLM(config).save_pretrained(base)
    tokenizer.save_pretrained(base)
    data = tmp_path / "pairs"
    data.mkdir()
    write_jsonl(data / "train.jsonl", make_pairs(8, 0))
    write_jsonl(data / "test.jsonl", make_pairs(4, 1))
    run(RMTrainConfig(
        model_name_or_path=str(base), dataset_name=str(data), use_peft=True, max_steps=1,
        max_length=64, report_to="none", output_dir=str(tmp_path / "rm"),
    ))  # fmt: skip
    model, loaded, _ = load_reward_model(tmp_path / "rm" / "final")
    assert loaded.pad_token_id == len(vocab)  # added: the base has no other special token
    prompts = [[user("stone ?")]] * 2
    scores = score_replies(model, loaded, prompts, [" thanks", " stone stone stone"])
    assert torch.isfinite(scores).all()


def test_rl_on_hh_prompts_renders_them_as_written_for_a_base_policy_and_reward_model(
    base_model_dir, tmp_path
):
    """HH prompt strings, a base policy and a TRL reward model without a template: both read
    the transcript (multi-turn, which plain text would refuse)."""
    from distalign.rl.config import RLTrainConfig
    from distalign.rl.train import run
    from tests.rl.test_rewards import build_gpt2_reward_model

    rm = build_gpt2_reward_model(tmp_path / "rm")
    saved = AutoTokenizer.from_pretrained(rm)
    saved.chat_template = None
    (rm / "chat_template.jinja").unlink(missing_ok=True)
    saved.save_pretrained(rm)
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    for split in ("train", "test"):
        write_jsonl(prompts / f"{split}.jsonl", [{"prompt": HH_REJECTED}] * 2)
    run(RLTrainConfig(
        model_name_or_path=str(base_model_dir), reward=str(rm), dataset_name=str(prompts),
        max_steps=1, num_generations=2, per_device_train_batch_size=4,
        gradient_accumulation_steps=1, max_completion_length=3, max_eval_samples=1,
        use_peft=False, eval_steps=0, save_steps=0, report_to="none",
        output_dir=str(tmp_path / "rl"),
    ))  # fmt: skip
    policy = AutoTokenizer.from_pretrained(tmp_path / "rl" / "final")
    assert rendering_of(policy) == "hh"


def test_eval_compare_reads_hh_prompts_as_written_for_a_base_model(base_model_dir, tmp_path):
    from distalign.eval.config import CompareConfig
    from distalign.eval.policy import run_compare
    from tests.eval.test_compare import JUDGE

    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": HH_REJECTED, "bonus": 0}] * 2)
    cfg = CompareConfig(
        sft=str(base_model_dir), dataset_name=str(prompts), judge=JUDGE, bootstrap=20,
        max_completion_length=2, output_dir=str(tmp_path / "cmp"),
    )  # fmt: skip
    assert run_compare(cfg)["policies"]["sft"]["judge_win_rate"] == 0.5  # three turns: no refusal


def test_plain_text_reads_hh_data_as_written_and_refuses_conversations(base_model_dir, tmp_path):
    """The plain text of an HH transcript is the transcript: any plain rendering, a trained
    model's included, turns into hh for such data. Message lists need a chat template, as in
    TRL, even of one turn: plain text would glue prompt and reply."""
    from distalign.data.inspect import inspect_source
    from distalign.data.load import LoadReport
    from distalign.models.templates import fit_rendering

    load_tokenizer(str(base_model_dir)).save_pretrained(tmp_path / "trained")
    saved = AutoTokenizer.from_pretrained(tmp_path / "trained")
    assert rendering_of(saved) == "plain"
    fit_rendering(saved, LoadReport(source="hh.jsonl", transcripts=3), "hh.jsonl")
    assert rendering_of(saved) == "hh"
    rows = [{"prompt": [user("hi")], "chosen": [bot("hello")], "rejected": [bot("bye")]}]
    source = str(write_jsonl(tmp_path / "conversations.jsonl", rows))
    with pytest.raises(RenderingError, match=r"1 rows of conversational data.*chat_template_path"):
        inspect_source(source, load_tokenizer(str(base_model_dir)))


def test_rm_score_reads_an_hh_prompt_string_as_its_turns(base_model_dir, tmp_path, caplog):
    """TRL's prompt/completion rows with an HH transcript as the prompt: scored on the
    transcript + completion + EOS, not the transcript wrapped in turns again."""
    from distalign.models.reward_model import load_reward_model
    from distalign.rm.config import RMTrainConfig
    from distalign.rm.score import score_file
    from distalign.rm.train import run

    source = str(write_jsonl(tmp_path / "hh.jsonl", [HH_ROW] * 4))

    run(RMTrainConfig(
        model_name_or_path=str(base_model_dir), dataset_name=source, eval_dataset_name=source,
        dataset_test_split="train", max_steps=1, max_length=64, report_to="none",
        output_dir=str(tmp_path / "rm"),
    ))  # fmt: skip
    rm = tmp_path / "rm" / "final"
    rows = [{"prompt": HH_REJECTED, "completion": " Blue."}]
    out, n = score_file(str(rm), str(write_jsonl(tmp_path / "score.jsonl", rows)), None)
    model, tokenizer, _ = load_reward_model(rm)
    ids = torch.tensor([tokenizer(HH_CHOSEN + tokenizer.eos_token)["input_ids"]])
    expected = model(input_ids=ids).logits[0, 0].item()
    scored = [json.loads(line) for line in out.read_text().splitlines()]
    assert n == 1 and scored[0]["reward"] == pytest.approx(expected, abs=1e-5)
    # a row longer than the model's max_length, and a reward column of the input: both said
    rows = [{"prompt": "Sky?", "completion": " blue" * 80, "reward": 1.0}, *rows]
    with caplog.at_level("WARNING"):
        score_file(str(rm), str(write_jsonl(tmp_path / "long.jsonl", rows)), None)
    assert "1 of 2 rows are longer than max_length=64 tokens" in caplog.text
    assert "column(s) reward are replaced" in caplog.text


def test_a_pythia_style_vocabulary_lends_its_padding_token():
    """GPT-NeoX tokenizers (Pythia) carry an unused <|padding|>: the pad distinct from EOS is
    taken from the vocabulary, so the embedding does not grow."""
    from distalign.models.reward_model import distinct_pad_token

    vocab = {w: i for i, w in enumerate(["<|endoftext|>", "<|padding|>", "sky", "blue"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )  # fmt: skip
    tokenizer.chat_template = built_in_template("plain", tokenizer)
    assert distinct_pad_token(tokenizer) == "<|padding|>" and len(tokenizer) == 4


def test_a_plain_text_reward_model_scoring_a_chat_policy_is_warned(
    tiny_model_dir, tmp_path, caplog
):
    import logging

    from distalign.rl.config import RLTrainConfig
    from distalign.rl.train import run
    from tests.rl.test_rewards import build_gpt2_reward_model

    rm = build_gpt2_reward_model(tmp_path / "rm")
    saved = AutoTokenizer.from_pretrained(rm)
    saved.chat_template = None
    (rm / "chat_template.jinja").unlink(missing_ok=True)
    saved.save_pretrained(rm)
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "cloud river ?"}] * 2)
    with caplog.at_level(logging.WARNING, logger="distalign.rl.train"):
        run(RLTrainConfig(
            model_name_or_path=str(tiny_model_dir), reward=str(rm), dataset_name=str(prompts),
            eval_dataset_name=str(prompts), dataset_test_split="train", max_steps=1,
            num_generations=2, per_device_train_batch_size=4, gradient_accumulation_steps=1,
            max_completion_length=2, max_eval_samples=1, use_peft=False, eval_steps=0,
            save_steps=0, report_to="none", output_dir=str(tmp_path / "rl"),
        ))  # fmt: skip
    assert "a reward model reads plain text" in caplog.text


def test_rm_score_reads_standard_text_as_rm_train_and_rm_eval_do(tiny_model_dir, tmp_path):
    """TRL's standard text (" Cats are…" after "Tell me about cats."): the reply's leading space
    goes with the prompt in rm train and rm eval; rm score reads one reply the same way, so
    its margins are rm eval's. An HH prompt's reply loses the space after "Assistant:" too."""
    from statistics import fmean

    from distalign.eval.rm import run_rm_eval
    from distalign.rm.config import RMTrainConfig
    from distalign.rm.score import score_file
    from distalign.rm.train import run

    topics = ["cats", "rivers", "chess", "bread", "trains", "music"]
    pairs = [{"prompt": f"Tell me about {t}.", "chosen": f" {t.title()} are worth a look.",
              "rejected": " No."} for t in topics]  # fmt: skip
    pairs += [
        {
            "prompt": f"\n\nHuman: Name a {t}.\n\nAssistant:",
            "chosen": f" A {t}: oak.",
            "rejected": " Go.",
        }
        for t in ("tree", "plant")
    ]  # fmt: skip (Dahoas)
    source = str(write_jsonl(tmp_path / "std.jsonl", pairs))
    run(RMTrainConfig(
        model_name_or_path=str(tiny_model_dir), dataset_name=source, eval_dataset_name=source,
        dataset_test_split="train", max_steps=2, max_length=64, report_to="none",
        learning_rate=1e-2, output_dir=str(tmp_path / "rm"),
    ))  # fmt: skip
    rm = str(tmp_path / "rm" / "final")
    margin = run_rm_eval(rm, source, "train", output=str(tmp_path / "eval.json"))["margin"]
    rows = [{"prompt": p["prompt"], "reply": p[s]} for p in pairs for s in ("chosen", "rejected")]
    out, _ = score_file(rm, str(write_jsonl(tmp_path / "score.jsonl", rows)), None)
    rewards = [json.loads(line)["reward"] for line in out.read_text().splitlines()]
    assert fmean(rewards[0::2]) - fmean(rewards[1::2]) == pytest.approx(margin, abs=1e-5)
    # rm eval takes rm train's format key: these rows are no HH transcripts
    from distalign.api import evaluate_reward_model
    from distalign.data.formats import PreferenceFormatError

    with pytest.raises(PreferenceFormatError):
        evaluate_reward_model(model_name_or_path=rm, dataset_name=source, format="hh")
