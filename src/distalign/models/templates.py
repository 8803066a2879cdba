"""Renderings for models without a chat template: TRL's plain text, and Anthropic's transcript.

distalign renders every prompt and reply through ``tokenizer.apply_chat_template``. A base
model (GPT-2, Pythia, a base Llama) has no chat template; TRL trains such a model on
"standard" (string) data as plain text: prompt + reply, with EOS appended to the reply for
reward training, and the tokenizer's own special tokens (a BOS where it adds one). These
templates give a tokenizer that rendering, so the rest of distalign stays one path:

``plain``  prompt + reply + EOS, exactly as TRL's standard data reads. It takes a prompt of one
           user turn (what a string prompt becomes); a conversation of several turns is
           refused at rendering time, as TRL refuses conversational data without a template.
           The default for a tokenizer without a chat template.
``hh``     Anthropic HH-RLHF's transcript ``"\\n\\nHuman: …\\n\\nAssistant: …"`` + EOS: the raw
           text TRL trains a base model on for that data set, multi-turn included.

Either is chosen by name through ``chat_template_path`` and saved with the model as its chat
template, so a saved reward model or policy renders the same way when loaded again, by
distalign or by ``AutoTokenizer`` + ``apply_chat_template``.

Token ids: ``data.pairs`` tokenises the rendered text as TRL's ``tokenizer(text)`` does, the
BOS a tokenizer adds by itself included (``bos_ids``); the templates write none.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


class RenderingError(ValueError):
    """Text the model's rendering cannot take, or a rendering that cannot be had: the user's
    to fix (said in one line by the command line)."""


MARK = "{#- distalign:"  # first line of every template made here: "{#- distalign:<name> -#}"

_SINGLE_TURN = (
    "{%- if messages | length == 0 or messages | length > 2 or messages[0]['role'] != 'user' "
    "or (messages | length == 2 and messages[1]['role'] != 'assistant') -%}"
    "{{- raise_exception('plain-text rendering (a model without a chat template, as TRL renders "
    "standard data) takes a prompt of one user turn; for conversations give chat_template_path: "
    "a Jinja file, a tokenizer with a chat template, or hh for Anthropic HH transcripts') -}}"
    "{%- endif -%}"
)
_EOS_AFTER = "{%- if not {reply}.endswith(eos_token) -%}{{- eos_token -}}{%- endif -%}"  # TRL: once

PLAIN = (
    "{#- distalign:plain -#}\n" + _SINGLE_TURN + "{{- messages[0]['content'] -}}"
    "{%- if messages | length == 2 -%}{{- messages[1]['content'] -}}"
    + _EOS_AFTER.replace("{reply}", "messages[1]['content']")
    + "{%- endif -%}"
)

HH = (
    "{#- distalign:hh -#}\n"
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'user' -%}{{- '\\n\\nHuman: ' + m['content'] -}}"
    "{%- elif m['role'] == 'assistant' -%}"
    "{{- '\\n\\nAssistant:' + (' ' if m['content'][:1] not in ['', ' ', '\\n'] else '') -}}"
    "{{- m['content'] -}}"
    "{%- if loop.last -%}" + _EOS_AFTER.replace("{reply}", "m['content']") + "{%- endif -%}"
    "{%- else -%}{{- raise_exception('the hh rendering has Human and Assistant turns only, got "
    "role ' + m['role']) -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '\\n\\nAssistant:' -}}{%- endif -%}"
)

BUILT_IN = {"plain": PLAIN, "hh": HH}


def adds_bos(tokenizer) -> bool:
    """Whether the tokenizer puts its BOS before a text by itself (Llama, Mistral: yes; GPT-2,
    Pythia, Qwen: no), as TRL's ``tokenizer(text)`` of standard data does."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    return full[:1] == [bos] and full[1 : 1 + len(plain)] == plain


def bos_ids(tokenizer) -> list[int]:
    """What a built-in rendering's token ids begin with: the BOS the tokenizer puts before a
    text by itself, as an id (``data.pairs`` tokenises the rendered text without special
    tokens and adds it: a ``<s>`` written into the text would make a SentencePiece tokenizer
    drop the first word's leading "▁")."""
    return [tokenizer.bos_token_id] if adds_bos(tokenizer) else []


def built_in_template(name: str, tokenizer) -> str:
    """The template ``name`` ("plain" or "hh") for ``tokenizer``. It writes no BOS:
    ``tokenizer(text)`` of its text is TRL's tokenisation, BOS included."""
    if name not in BUILT_IN:
        raise RenderingError(f"no built-in rendering {name!r}; there are {sorted(BUILT_IN)}")
    if tokenizer.eos_token is None:
        raise RenderingError(
            f"the {name} rendering ends a reply with the tokenizer's EOS, and this tokenizer has "
            "none: give chat_template_path a Jinja template that ends replies its own way"
        )
    return BUILT_IN[name]


def fit_rendering(tokenizer, data, source, model: str = "the model") -> None:
    """Fit a plain-text rendering to the data it meets (``data``: a ``LoadReport``'s counts).

    Anthropic HH transcripts turn it into ``hh``: their own text, which is what plain text of
    those strings reads and what TRL trains a base model on (plain text of their turns would
    lose the Human/Assistant markers). Conversational data (message lists) are refused, as
    TRL refuses them without a chat template."""
    if rendering_of(tokenizer) != "plain":
        return
    if data.conversations:
        raise RenderingError(
            f"{source}: {data.conversations} rows of conversational data (message lists), and "
            f"{model} has no chat template: it reads plain text, as TRL's standard data; give "
            "chat_template_path (a Jinja file or a tokenizer's template), as TRL needs one too"
        )
    if data.transcripts:
        log.info(
            "%s: Anthropic HH transcripts and %s, which reads plain text: rendered as written, "
            "\\n\\nHuman: ...\\n\\nAssistant: ... (chat_template_path: hh)", source, model
        )  # fmt: skip
        tokenizer.chat_template = built_in_template("hh", tokenizer)


def rendering_of(tokenizer) -> str | None:
    """ "plain" or "hh" when the tokenizer's template is one made here, else None (its own)."""
    template = tokenizer.chat_template
    if isinstance(template, str) and template.startswith(MARK):
        name = template[len(MARK) :].split(" ", 1)[0]
        return name if name in BUILT_IN else None
    return None
