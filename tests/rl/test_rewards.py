"""Reward sources: sequence classifiers distalign did not train (own tokenizer, chat template
or plain rendering, own forward), distalign RMs at their trained lengths, callables with data
columns, the weighted sum, names, and loading without touching the global RNGs."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2ForSequenceClassification,
    PreTrainedTokenizerFast,
)

from distalign.config import ConfigError
from distalign.models.classifier import encode_conversation, render_conversation
from distalign.rl import rewards as rw
from distalign.rl.rewards import (
    CallableReward,
    RewardModelSource,
    RewardOutput,
    RewardSource,
    RewardSum,
    import_callable,
    load_reward_source,
    prompt_columns,
    source_name,
)
from tests.conftest import write_jsonl

WORDS = ["hello", "apple", "river", "stone", "cloud", "paper", "light", "music", "garden", "?"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|endoftext|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)


def _word_tokenizer(specials: list[str], **kwargs) -> PreTrainedTokenizerFast:
    """A word-level tokenizer built offline: its vocabulary shares nothing with SmolLM2's."""
    vocab = {w: i for i, w in enumerate([*specials, *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if "[CLS]" in vocab:
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", 3)]
        )
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", **kwargs)


def build_gpt2_reward_model(path: Path) -> Path:
    """A tiny GPT-2 one-label classifier saved by transformers, with a word-level tokenizer
    that has a chat template and EOS but no pad token (as GPT-2's own)."""
    specials = ["[UNK]", "<|endoftext|>", "<|user|>", "<|assistant|>", "<|system|>"]
    tokenizer = _word_tokenizer(
        specials, eos_token="<|endoftext|>", additional_special_tokens=specials[2:]
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=48, n_embd=16, n_layer=1, n_head=2,
        num_labels=1, initializer_range=0.5, eos_token_id=1, bos_token_id=1,
    )  # fmt: skip
    model = GPT2ForSequenceClassification(config)
    assert model.config.pad_token_id is None
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def build_bert_reward_model(path: Path, num_labels: int = 1) -> Path:
    """A tiny BERT-style classifier (first-token pooling) whose tokenizer has no chat template."""
    tokenizer = _word_tokenizer(
        ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "user", "assistant", ":"],
        pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
    )  # fmt: skip
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=40, num_labels=num_labels,
        pad_token_id=0, initializer_range=0.5,
    )  # fmt: skip
    BertForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def gpt2_rm(tmp_path_factory) -> Path:
    return build_gpt2_reward_model(tmp_path_factory.mktemp("other-rm") / "final")


@pytest.fixture(scope="module")
def bert_rm(tmp_path_factory) -> Path:
    return build_bert_reward_model(tmp_path_factory.mktemp("bert-rm"))


def chat(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


PROMPTS = [chat("hello apple ?"), chat("river"), chat("stone cloud paper light music ?")]
REPLIES = ["garden", "light music music light paper", "apple"]


def test_other_rm_scores_with_its_own_chat_template_and_forward(gpt2_rm):
    source = RewardModelSource(str(gpt2_rm), batch_size=2)
    assert source.own_forward and not source.distributional
    assert source.name == "other-rm0"  # the run's folder, not "final"
    tok, model = source.tokenizer, source.model
    # no pad token: EOS, on the tokenizer and the config (HF's pooling looks for it)
    assert tok.pad_token == "<|endoftext|>" and model.config.pad_token_id == tok.eos_token_id
    assert source.max_length == 48  # n_positions
    got = source(PROMPTS, REPLIES).rewards
    for prompt, reply, value in zip(PROMPTS, REPLIES, got, strict=True):
        text = tok.apply_chat_template(
            [*prompt, {"role": "assistant", "content": reply}], tokenize=False
        )
        assert text.startswith("<|user|>") and reply in text  # the RM's own template
        ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
        alone = model(input_ids=ids).logits[0, 0]  # unpadded: no pooling question
        assert value.item() == pytest.approx(alone.item(), abs=1e-5)
    assert got.unique().numel() == 3  # the scores do depend on the text
    # padded batches of mixed lengths give each row's score as alone
    again = RewardModelSource(str(gpt2_rm), batch_size=3)(PROMPTS, REPLIES).rewards
    assert torch.allclose(got, again, atol=1e-5)


def test_plain_rendering_without_a_chat_template(bert_rm):
    source = RewardModelSource(str(bert_rm))
    tok = source.tokenizer
    assert tok.chat_template is None and source.max_length == 40
    conversation = [*chat("hello apple"), {"role": "assistant", "content": "stone ?"}]
    assert render_conversation(tok, conversation) == "user: hello apple\nassistant: stone ?"
    ids = encode_conversation(tok, chat("hello apple"), "stone ?", 40)
    assert ids == tok("user: hello apple\nassistant: stone ?")["input_ids"]
    assert tok.convert_ids_to_tokens([ids[0], ids[-1]]) == ["[CLS]", "[SEP]"]
    # too long: the prompt loses its start, the reply its end; [CLS] and [SEP] stay
    long = encode_conversation(tok, chat("hello " * 20 + "apple"), "stone " * 20, 12)
    assert len(long) == 12
    assert tok.convert_ids_to_tokens(long) == (
        ["[CLS]", "hello", "hello", "apple", "assistant", ":"] + ["stone"] * 5 + ["[SEP]"]
    )
    scores = source(PROMPTS, REPLIES).rewards
    assert scores.shape == (3,) and torch.isfinite(scores).all()


def test_truncation_with_a_chat_template_keeps_the_reply_start(gpt2_rm):
    tok = RewardModelSource(str(gpt2_rm)).tokenizer
    ids = encode_conversation(tok, chat("river " * 30), "apple " + "stone " * 30, 20)
    tokens = tok.convert_ids_to_tokens(ids)
    assert len(ids) == 20 and tokens[:2] == ["river", "river"]  # the prompt cut from the left
    # the prompt keeps half, its end; the reply keeps its start
    assert tokens[8:12] == ["<|endoftext|>", "<|assistant|>", "apple", "stone"]


def test_models_that_are_not_one_label_reward_models_are_refused(tmp_path, tiny_model_dir):
    many = build_bert_reward_model(tmp_path / "three", num_labels=3)
    with pytest.raises(ValueError, match=r"3 labels and no distalign_rm\.json"):
        RewardModelSource(str(many))
    with pytest.raises(ValueError, match="not a sequence-classification model"):
        RewardModelSource(str(tiny_model_dir))  # a causal LM: its score head would be random
    with pytest.raises(ValueError, match="does not exist"):
        load_reward_source(str(tmp_path / "no" / "such" / "rm"))  # a path: no hub look-up
    with pytest.raises(ValueError, match="save_pretrained"):
        load_reward_source(torch.nn.Linear(2, 1))


def test_a_hub_id_is_downloaded_as_safetensors(gpt2_rm, monkeypatch):
    calls = []

    def fake_snapshot_download(repo_id, allow_patterns):
        calls.append((repo_id, allow_patterns))
        return str(gpt2_rm)

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    source = RewardModelSource("someone/tiny-rm")
    assert source.name == "tiny-rm" and source.own_forward
    (repo, patterns), *_ = calls
    assert repo == "someone/tiny-rm" and "*.safetensors" in patterns
    assert not any(p.endswith((".bin", ".pt", ".py")) for p in patterns)  # no pickles, no code


def test_a_distalign_rm_reads_with_its_trained_lengths(tiny_model_dir, tmp_path):
    from distalign.models.reward_model import build_reward_model, save_reward_model, score_replies

    model, tok = build_reward_model(str(tiny_model_dir), "scalar")
    meta = {"head": "scalar", "max_length": 48, "max_prompt_length": 12}
    folder = save_reward_model(model, tok, tmp_path / "rm", meta)
    source = RewardModelSource(str(folder))
    assert not source.own_forward
    assert (source.max_length, source.max_prompt_length) == (48, 12)
    prompts = [chat("apple river stone cloud paper light music garden " * 4)] * 2
    replies = ["stone thanks", "cloud " * 40]
    model, tok = source.model, source.tokenizer
    expected = score_replies(model, tok, prompts, replies, 48, max_prompt_length=12)[:, 0]
    assert torch.allclose(source(prompts, replies).rewards, expected)
    default_split = score_replies(model, tok, prompts, replies, 48)[:, 0]  # prompt ≥ 24 tokens
    assert not torch.allclose(expected, default_split)
    # an explicit length wins; a trained prompt length that no longer fits is dropped
    assert RewardModelSource(str(folder), max_length=10).max_prompt_length is None


def reward_short(prompts, replies):
    return [-len(r.split()) for r in replies]


class ExactAnswer:
    """A callable object that reads the data set's ``answer`` column."""

    def __call__(self, prompts, replies, answer):
        return [float(r.strip() == a) for r, a in zip(replies, answer, strict=True)]


def test_callables_get_the_columns_they_ask_for():
    seen = {}

    def takes_all(prompts, replies, **kwargs):
        seen.update(kwargs)
        return [0.0] * len(replies)

    def takes_none(prompts, replies):
        return [1.0] * len(replies)

    columns = {"answer": ["4", "5"], "source": ["a", "b"]}
    CallableReward(takes_all)([chat("x")] * 2, ["4", "6"], columns=columns)
    assert seen == columns
    assert CallableReward(takes_none)([chat("x")] * 2, ["4", "6"], columns=columns).rewards.tolist()
    exact = CallableReward(ExactAnswer())
    assert exact.name == "ExactAnswer"
    assert exact([chat("x")] * 2, ["4", "6"], columns=columns).rewards.tolist() == [1.0, 0.0]
    with pytest.raises(ValueError, match=r"needs the column\(s\) \['answer'\]"):
        exact([chat("x")], ["4"])
    with pytest.raises(ValueError, match="returned 1 values for 2 replies"):
        CallableReward(lambda p, r: [0.0])([chat("x")] * 2, ["a", "b"])


def test_an_async_reward_function_is_awaited_as_trl_awaits_it():
    import asyncio

    async def slow_length(completions, answer=None, **kwargs):  # TRL's signature
        await asyncio.sleep(0)
        return [float(len(c[0]["content"])) for c in completions]

    out = CallableReward(slow_length)([chat("x")] * 2, ["ab", "abcd"], columns={"answer": [1, 2]})
    assert out.rewards.tolist() == [2.0, 4.0]

    async def inside_a_running_loop():  # a notebook's loop stays as it is
        return CallableReward(slow_length)([chat("x")], ["abc"]).rewards.tolist()

    assert asyncio.run(inside_a_running_loop()) == [3.0]
    # one loop for the run: what a function binds to its loop serves every step
    limit = []

    async def rate_limited(completions, **kwargs):
        limit.append(limit[0] if limit else asyncio.Semaphore(1))

        async def call():  # four calls contend: the semaphore binds to the loop that waits
            async with limit[-1]:
                await asyncio.sleep(0)

        await asyncio.gather(*(call() for _ in range(4)))
        return [1.0] * len(completions)

    for _ in range(2):  # a step, then the next
        assert CallableReward(rate_limited)([chat("x")], ["a"]).rewards.tolist() == [1.0]


class PromptRow(list):
    """What load_prompts would return to pass columns: the messages, plus the row's others."""

    def __init__(self, messages, columns):
        super().__init__(messages)
        self.columns = columns


def test_prompt_columns():
    assert prompt_columns([chat("a"), chat("b")]) is None
    rows = [PromptRow(chat("a"), {"answer": "1"}), chat("b"), PromptRow(chat("c"), {"k": 2})]
    assert prompt_columns(rows) == {"answer": ["1", None, None], "k": [None, None, 2]}
    assert json.loads(json.dumps(rows[0])) == chat("a")  # still a plain list of messages


class FakeDistributional(RewardSource):
    name = "dist"
    distributional = True

    def __call__(self, prompts, replies, reference=None, columns=None):
        p = torch.full((len(replies), 4), 0.25)
        return RewardOutput(torch.ones(len(replies)), p, torch.ones(len(replies)))


def test_weighted_sum_per_source_and_unscored_replies(caplog):
    def maybe(prompts, replies):  # TRL's None: "not mine to score"
        return [None if r == "skip" else 2.0 for r in replies]

    total = RewardSum([CallableReward(reward_short), CallableReward(maybe)], [1.0, 0.5])
    out = total([chat("x")] * 3, ["a b", "skip", "a"], None)
    assert total.names == ["reward_short", "maybe"]
    assert out.rewards.tolist() == [-2 + 1.0, -1.0, -1 + 1.0]
    assert out.per_source["reward_short"].tolist() == [-2, -1, -1]
    assert out.per_source["maybe"][1].isnan()
    # a reply no source scores is NaN (not nansum's 0), and said
    with caplog.at_level("WARNING"):
        alone = RewardSum([CallableReward(maybe)])([chat("x")] * 2, ["skip", "a"])
    assert alone.rewards[0].isnan() and alone.rewards[1] == 2.0
    assert "1 of 2 replies were scored by no reward source" in caplog.text
    with pytest.raises(ValueError, match="reward_weights has 1 values for 2"):
        RewardSum([CallableReward(reward_short)] * 2, [1.0])
    # the same name twice gets a suffix
    assert RewardSum([CallableReward(reward_short)] * 2).names == ["reward_short", "reward_short_2"]
    # a distributional RM keeps its distribution only as the sole source
    sole = RewardSum([FakeDistributional()], [2.0])([chat("x")], ["a"])
    assert sole.distributions.shape == (1, 4) and sole.rewards.tolist() == [2.0]
    both = RewardSum([FakeDistributional(), CallableReward(reward_short)])([chat("x")], ["a"])
    assert both.distributions is None and both.std is None and both.rewards.tolist() == [0.0]


def test_load_reward_source_specs(gpt2_rm):
    one = load_reward_source("tests.rl.test_rewards:reward_short")
    assert isinstance(one, RewardSum) and one.names == ["reward_short"]
    many = load_reward_source(
        [str(gpt2_rm), "tests.rl.test_rewards:reward_short", ExactAnswer()], weights=[1, 2, 3]
    )
    assert many.names == ["other-rm0", "reward_short", "ExactAnswer"]
    assert many.weights == [1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match="cannot import reward function"):
        load_reward_source("tests.rl.test_rewards:no_such_function")


@pytest.mark.parametrize(
    ("spec", "name"),
    [
        ("runs/rm_scalar/final", "rm_scalar"),
        ("runs/rm_scalar/checkpoints/last", "rm_scalar"),
        ("org/reward-model-deberta", "reward-model-deberta"),
        ("pkg.mod:brevity", "brevity"),
        ("my_rm/", "my_rm"),
    ],
)
def test_source_names(spec, name):
    assert source_name(spec) == name


def test_loading_leaves_the_global_rngs(gpt2_rm, monkeypatch):
    """A loader that draws random numbers (a model that initialises something) does not
    move the generators the policy's LoRA init draws from next."""
    original = rw.load_one_source

    def drawing(spec, **kwargs):
        torch.rand(100), random.random(), np.random.rand()
        return original(spec, **kwargs)

    monkeypatch.setattr(rw, "load_one_source", drawing)
    torch.manual_seed(0), random.seed(0), np.random.seed(0)
    expected = torch.rand(3), random.random(), np.random.rand()
    torch.manual_seed(0), random.seed(0), np.random.seed(0)
    load_reward_source(str(gpt2_rm))
    got = torch.rand(3), random.random(), np.random.rand()
    assert torch.equal(got[0], expected[0]) and got[1:] == expected[1:]


def test_the_saved_classifier_loads_with_transformers_alone(gpt2_rm):
    """The test model is what the feature is for: a plain transformers folder."""
    assert not (gpt2_rm / "distalign_rm.json").exists()
    model = AutoModelForSequenceClassification.from_pretrained(gpt2_rm)
    assert model.config.num_labels == 1


def test_rm_score_takes_any_sequence_classifier(gpt2_rm, tmp_path):
    """``rm score`` scores through the same source as ``rl train``: a classifier distalign did
    not train is scored with its own template and length limit."""
    from distalign import api

    rows = tmp_path / "replies.jsonl"
    rows.write_text(
        "".join(
            json.dumps({"prompt": p, "reply": r}) + "\n"
            for p, r in zip(PROMPTS, REPLIES, strict=True)
        )
    )
    out = api.score(model_name_or_path=str(gpt2_rm), input_file=str(rows), device="cpu")
    got = [json.loads(line)["reward"] for line in out.read_text().splitlines()]
    want = RewardModelSource(str(gpt2_rm))(PROMPTS, REPLIES).rewards.tolist()
    assert got == pytest.approx(want, abs=1e-6)


def test_a_reward_module_in_the_working_directory_imports(tmp_path, monkeypatch):
    (tmp_path / "my_judge_for_distalign.py").write_text(
        "def brevity(prompts, replies):\n    return [-len(r) for r in replies]\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    fn = import_callable("my_judge_for_distalign:brevity")
    assert fn([], ["ab", "a"]) == [-2, -1]
    with pytest.raises(ConfigError, match="cannot import reward function"):
        import_callable("no_such_module_anywhere:f")


# --- TRL's reward functions, called as TRL calls them ----------------------------------------


def trl_reward_len(completions, **kwargs):
    """The shape of TRL's documentation: strings for standard prompts."""
    return [-abs(5 - len(c)) for c in completions]


def trl_accuracy(completions, solution, **kwargs):
    """Conversational: each completion is [{"role": "assistant", "content": ...}]."""
    return [float(c[0]["content"] == s) for c, s in zip(completions, solution, strict=True)]


def test_trl_reward_functions_get_trl_s_shapes_and_columns():
    from distalign.data.prompts import PromptRow

    standard = [PromptRow([{"role": "user", "content": "Hi?"}], {"solution": "yes"}, "Hi?")] * 2
    source = rw.load_one_source("tests.rl.test_rewards.trl_reward_len")  # TRL's dotted path
    out = source(standard, ["hello", "hello there"], columns=rw.prompt_columns(standard))
    assert out.rewards.tolist() == [0.0, -6.0]
    chat = [PromptRow([{"role": "user", "content": "Hi?"}], {"solution": "yes"})] * 2
    seen = {}

    def spy(prompts, completions, **kwargs):
        seen.update(prompts=prompts, kwargs=kwargs)
        return trl_accuracy(completions, **kwargs)

    out = rw.CallableReward(spy)(chat, ["yes", "no"], columns=rw.prompt_columns(chat))
    assert out.rewards.tolist() == [1.0, 0.0]
    assert seen["prompts"][0] == [{"role": "user", "content": "Hi?"}]
    assert seen["kwargs"] == {"solution": ["yes", "yes"]}
    with pytest.raises(ValueError, match=r"needs the column\(s\) \['solution'\]"):
        rw.CallableReward(trl_accuracy)([[{"role": "user", "content": "Hi?"}]], ["yes"])


def len_ids(completion_ids, **kwargs):
    """TRL's docs: a reward of the completions' token ids alone."""
    return [float(len(ids)) for ids in completion_ids]


def test_trl_arguments_reach_functions_that_take_them():
    from transformers import TrainerState

    from distalign.data.prompts import PromptRow

    standard = [PromptRow([{"role": "user", "content": "Hi?"}], None, "Hi?")] * 2
    seen = {}

    def curriculum(completions, trainer_state, **kwargs):
        seen["step"] = trainer_state.global_step
        return [float(trainer_state.global_step)] * len(completions)

    def logs(completions, log_metric, log_extra, **kwargs):
        log_metric("mean_chars", sum(map(len, completions)) / len(completions))
        log_extra("shout", [c.upper() for c in completions])
        return [0.0] * len(completions)

    def only_kwargs(**kwargs):
        seen["keys"] = sorted(kwargs)
        return [1.0] * len(kwargs["completions"])

    total = rw.load_reward_source(["tests.rl.test_rewards.len_ids", curriculum, logs, only_kwargs])
    total.trainer_state = TrainerState(global_step=7, max_steps=10)
    out = total(standard, ["ab", "abcd"], completion_ids=[[1, 2], [3, 4, 5]])
    assert out.per_source["len_ids"].tolist() == [2.0, 3.0]
    assert out.per_source["curriculum"].tolist() == [7.0, 7.0] and seen["step"] == 7
    assert seen["keys"] == ["completion_ids", "completions", "log_extra", "log_metric",
                            "prompts", "trainer_state"]  # fmt: skip
    assert total.log.take() == ({"mean_chars": 3.0}, {"shout": ["AB", "ABCD"]})
    assert total.log.take() == ({}, {})  # taken once per step


def test_wrappers_and_distalign_functions_are_not_taken_for_trl_ones():
    def base(prompts, replies):
        return [float(len(r)) for r in replies]

    def wrapper(*args, **kwargs):  # a decorator without functools.wraps
        return base(*args, **kwargs)

    def with_state(prompts, replies, trainer_state=None):  # a column named as TRL's argument
        return base(prompts, replies)

    for function in (wrapper, with_state):
        assert rw.CallableReward(function)(["p"], ["abc"]).rewards.tolist() == [3.0]


def test_trl_built_in_rewards_by_bare_name_need_trl():
    import importlib.util

    if importlib.util.find_spec("trl") is not None:
        pytest.skip("TRL is installed here")
    with pytest.raises(ConfigError, match="'accuracy_reward' is TRL's built-in reward function"):
        rw.load_one_source("accuracy_reward")


def test_a_dotted_reward_path_with_a_typo_says_so():
    with pytest.raises(ConfigError, match="has no attribute 'no_such_function'"):
        rw.load_one_source("tests.rl.test_rewards.no_such_function")
    with pytest.raises(ConfigError, match=r"no module 'trl_not_here.rewards'.*owner/name"):
        rw.load_one_source("trl_not_here.rewards.accuracy_reward")


def test_a_training_run_s_output_dir_means_its_final_model(tmp_path):
    from distalign.models.classifier import model_folder

    (tmp_path / "run" / "final").mkdir(parents=True)
    (tmp_path / "run" / "final" / "config.json").write_text("{}")
    assert model_folder(str(tmp_path / "run")) == tmp_path / "run" / "final"
    (tmp_path / "replies.jsonl").write_text("{}\n")  # a file given as the model: said so
    with pytest.raises(ConfigError, match=r"replies\.jsonl' is a file: give the reward model's"):
        model_folder(str(tmp_path / "replies.jsonl"))


def test_a_trl_lora_reward_model_folder_loads_merged(tiny_model_dir, tmp_path):
    """What TRL's RewardTrainer with a peft_config saves: the adapter (and its score head)."""
    from distalign.models.classifier import load_sequence_classifier
    from distalign.models.load import load_tokenizer
    from distalign.models.lora import add_lora

    torch.manual_seed(0)
    base = AutoModelForSequenceClassification.from_pretrained(str(tiny_model_dir), num_labels=1)
    model = add_lora(base, "SEQ_CLS", r=4, alpha=8, dropout=0.0)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n or "score" in n:
                p.normal_()
    model.config.pad_token_id = 2
    model.save_pretrained(tmp_path / "adapter")
    load_tokenizer(str(tiny_model_dir)).save_pretrained(tmp_path / "adapter")
    assert not (tmp_path / "adapter" / "config.json").exists()
    loaded, _ = load_sequence_classifier(tmp_path / "adapter")
    ids = torch.tensor([[5, 6, 7, 8]])
    torch.testing.assert_close(loaded(ids).logits, model.eval()(ids).logits)
    source = rw.load_one_source(str(tmp_path / "adapter"))  # as rl train's reward=
    out = source([[{"role": "user", "content": "Hi?"}]], ["Hello."])
    assert out.rewards.shape == (1,) and torch.isfinite(out.rewards).all()


def test_a_plain_text_reward_model_refuses_conversations_unless_given_a_template(
    base_model_dir, tiny_model_dir, tmp_path
):
    """A one-label classifier whose tokenizer has no chat template (TRL's reward model of a
    base model): rm eval and rm score refuse message lists, as rm train and TRL do, instead of
    joining prompt and reply with nothing between; chat_template_path gives it one."""
    from distalign.eval.rm import run_rm_eval
    from distalign.models.templates import RenderingError
    from distalign.rm.score import score_file

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(str(base_model_dir), num_labels=1)
    model.config.pad_token_id = 2
    model.save_pretrained(tmp_path / "rm")
    AutoTokenizer.from_pretrained(str(base_model_dir)).save_pretrained(tmp_path / "rm")
    user = [{"role": "user", "content": "Tell me about cats."}]
    pairs = [{"prompt": user, "chosen": [{"role": "assistant", "content": "Cats purr."}],
              "rejected": [{"role": "assistant", "content": "No."}]}] * 2  # fmt: skip
    data = str(write_jsonl(tmp_path / "conv.jsonl", pairs))
    rows = str(write_jsonl(tmp_path / "rows.jsonl", [{"prompt": user, "reply": "Cats purr."}]))
    rm = str(tmp_path / "rm")
    with pytest.raises(RenderingError, match=r"conversational data .* has no chat template"):
        run_rm_eval(rm, data, "train", output=str(tmp_path / "e.json"))
    with pytest.raises(RenderingError, match=r"conversational data .* has no chat template"):
        score_file(rm, rows, str(tmp_path / "s.jsonl"))
    template = str(tiny_model_dir)  # a tokenizer's template, as TRL's chat_template_path
    result = run_rm_eval(rm, data, "train", output=str(tmp_path / "e.json"), chat_template=template)
    out, _ = score_file(rm, rows, str(tmp_path / "s.jsonl"), chat_template=template)
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    text = tokenizer.apply_chat_template(user + pairs[0]["chosen"], tokenize=False)
    ids = torch.tensor([AutoTokenizer.from_pretrained(rm)(text)["input_ids"]])
    expected = model(input_ids=ids).logits[0, 0].item()
    assert json.loads(out.read_text())["reward"] == pytest.approx(expected, abs=1e-4)
    assert result["accuracy"] in (0.0, 1.0)


def test_rm_eval_of_a_classifier_renders_each_rows_tools(tiny_model_dir, tmp_path):
    """As TRL renders a row: its tools go to the classifier's template with its messages."""
    from distalign.eval.rm import run_rm_eval

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(str(tiny_model_dir), num_labels=1)
    model.config.pad_token_id = 2
    model.save_pretrained(tmp_path / "rm")
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    tokenizer.chat_template = (
        "{% if tools %}tools: {{ tools | map(attribute='function.name') | join(',') }}\n"
        "{% endif %}{% for m in messages %}{{ m.role }}: {{ m.content }}<|im_end|>\n"
        "{% endfor %}"
    )
    tokenizer.save_pretrained(tmp_path / "rm")
    tool = {"type": "function", "function": {"name": "weather", "description": "d",
                                             "parameters": {"type": "object"}}}  # fmt: skip
    user = [{"role": "user", "content": "Cold in Oslo?"}]
    pairs = [{"prompt": user, "chosen": [{"role": "assistant", "content": "Yes."}],
              "rejected": [{"role": "assistant", "content": "No idea."}], "tools": [tool]},
             {"prompt": user, "chosen": [{"role": "assistant", "content": "Yes."}],
              "rejected": [{"role": "assistant", "content": "No idea."}]}]  # fmt: skip
    data = str(write_jsonl(tmp_path / "tools.jsonl", pairs))
    result = run_rm_eval(str(tmp_path / "rm"), data, "train", output=str(tmp_path / "e.json"))

    def score(messages, **kw):
        text = tokenizer.apply_chat_template(messages, tokenize=False, **kw)
        return model(input_ids=torch.tensor([tokenizer(text)["input_ids"]])).logits[0, 0]

    margins = [
        score(user + p["chosen"], tools=p.get("tools")) - score(user + p["rejected"],
                                                                tools=p.get("tools"))
        for p in pairs
    ]  # fmt: skip
    assert abs(margins[0] - margins[1]) > 1e-3  # the tools line changes the scores
    assert result["margin"] == pytest.approx(sum(margins).item() / 2, abs=1e-5)


def test_string_data_read_through_a_hub_rms_template_says_how_trl_trained_it(gpt2_rm, caplog):
    """TRL's RewardTrainer trains on string data as plain text whatever the tokenizer's
    template: a reward model distalign did not train, meeting string data, says how to score
    it so (chat_template_path=plain); conversational data, or a template the user chose, not."""
    from distalign.data.load import LoadReport

    strings = LoadReport(source="pairs.jsonl", rows=4)
    with caplog.at_level("WARNING"):
        RewardModelSource(str(gpt2_rm)).fit_rendering(strings, "pairs.jsonl")
    assert "chat_template_path=plain scores it as it was trained" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        conversations = LoadReport(source="chats.jsonl", rows=4, conversations=4)
        RewardModelSource(str(gpt2_rm)).fit_rendering(conversations, "chats.jsonl")
        chosen = RewardModelSource(str(gpt2_rm), chat_template=str(gpt2_rm))
        chosen.fit_rendering(strings, "pairs.jsonl")
        plain = RewardModelSource(str(gpt2_rm), chat_template="plain")
        plain.fit_rendering(strings, "pairs.jsonl")
    assert "chat_template_path=plain" not in caplog.text


THINKING = (  # a template with an argument, as Qwen3's enable_thinking
    "{%- if enable_thinking is defined and not enable_thinking %}/no_think\n{% endif -%}"
    "{%- for m in messages %}<{{ m.role }}>{{ m.content }}</{{ m.role }}>{% endfor -%}"
    "{%- if add_generation_prompt %}<assistant>{% endif -%}"
)


def test_chat_template_kwargs_reach_every_rendering_of_a_run(tiny_model_dir, tmp_path):
    """TRL's GRPO/RLOO render the policy's prompts and the reward model's conversations with
    ``chat_template_kwargs``: so do the sampler, a distalign RM and another classifier."""
    from distalign.config import load_config
    from distalign.models.generate import SamplingConfig, sample_replies
    from distalign.models.load import load_policy
    from distalign.models.reward_model import build_reward_model, save_reward_model
    from distalign.rl.config import RLTrainConfig
    from distalign.rl.train import load_rewards

    off = {"enable_thinking": False}
    model, tok = build_reward_model(str(tiny_model_dir), "scalar")
    tok.chat_template = THINKING
    folder = save_reward_model(model, tok, tmp_path / "rm", {"head": "scalar", "max_length": 48})
    keys = [f"reward={folder}", f"output_dir={tmp_path / 'o'}"]
    cfg = load_config(RLTrainConfig, None, [*keys, "chat_template_kwargs={enable_thinking: false}"])
    assert cfg.chat_template_kwargs == off
    source = load_rewards(cfg, "cpu").sources[0]
    plain = RewardModelSource(str(folder))
    assert source.template_kwargs == off
    got, default = source(PROMPTS, REPLIES).rewards, plain(PROMPTS, REPLIES).rewards
    assert not torch.allclose(got, default)  # the rendering differs: /no_think first
    from distalign.models.reward_model import scored_tokens

    p, r = scored_tokens(source.tokenizer, PROMPTS[0], REPLIES[0], 48, template_kwargs=off)
    assert source.tokenizer.decode(p + r).startswith("/no_think\n<user>")
    assert encode_conversation(source.tokenizer, PROMPTS[0], "x", 48, off) == (
        source.tokenizer("/no_think\n<user>hello apple ?</user><assistant>x</assistant>",
                         add_special_tokens=False)["input_ids"]
    )  # fmt: skip
    policy, ptok = load_policy(str(tiny_model_dir))
    ptok.chat_template = THINKING
    out = sample_replies(policy, ptok, PROMPTS[:1], config=SamplingConfig(
        max_completion_length=2, chat_template_kwargs=off))  # fmt: skip
    assert ptok.decode(out.prompt_ids[0]) == "/no_think\n<user>hello apple ?</user><assistant>"
    with pytest.raises(ValueError, match="chat_template_kwargs must be a mapping"):
        SamplingConfig(chat_template_kwargs=["enable_thinking"])


def test_a_reward_function_returning_other_than_one_number_per_reply_is_named():
    from distalign.rl.rewards import CallableReward, RewardFunctionError

    prompts, replies = [[{"role": "user", "content": "q"}]] * 2, ["a", "b"]
    for returned, said in ((torch.zeros(2, 1), r"array of shape \(2, 1\)"),
                           (3.0, "returned 3.0 for 2 replies"),
                           ([1.0], "returned 1 values for 2 replies"),
                           (["x", 1.0], "a value that is no number")):  # fmt: skip
        reward = CallableReward(lambda p, r, v=returned: v, name="judge")
        with pytest.raises(RewardFunctionError, match=said):
            reward(prompts, replies)
    assert (
        CallableReward(lambda p, r: np.array([1, None], dtype=object))(prompts, replies)
        .rewards[1]
        .isnan()
    )
