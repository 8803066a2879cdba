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

Replies keep their text as given. A chat template's reply is a turn of its own, so
``reply_text`` drops its leading whitespace there (the space between "The sky is" and
" blue."); these plain renderings keep it, since it belongs to the text.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


class RenderingError(ValueError):
    """Text the model's rendering cannot take, or a rendering that cannot be had: the user's
    to fix (said in one line by the command line)."""


MARK = "{#- distalign:"  # first line of every template made here: "{#- distalign:<name> -#}"
DEFAULT = "(no template of its own)"  # after the name: given by default, not asked for

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
    "{#- distalign:plain -#}\n" + _SINGLE_TURN + "{BOS}"
    "{{- messages[0]['content'] -}}"
    "{%- if messages | length == 2 -%}{{- messages[1]['content'] -}}"
    + _EOS_AFTER.replace("{reply}", "messages[1]['content']")
    + "{%- endif -%}"
)

HH = (
    "{#- distalign:hh -#}\n{BOS}"
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'user' -%}{{- '\\n\\nHuman: ' + m['content'] -}}"
    "{%- elif m['role'] == 'assistant' -%}"
    "{{- '\\n\\nAssistant:' + (' ' + m['content'] if m['content'] else '') -}}"
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


def built_in_template(name: str, tokenizer, default: bool = False) -> str:
    """The template ``name`` ("plain" or "hh") for ``tokenizer``: with its BOS in front where
    the tokenizer adds one to a text. ``default``: marks a rendering given to a tokenizer
    without a template (not asked for), which data of HH transcripts turn into ``hh``."""
    if name not in BUILT_IN:
        raise RenderingError(f"no built-in rendering {name!r}; there are {sorted(BUILT_IN)}")
    if tokenizer.eos_token is None:
        raise RenderingError(
            f"the {name} rendering ends a reply with the tokenizer's EOS, and this tokenizer has "
            "none: give chat_template_path a Jinja template that ends replies its own way"
        )
    bos = "{{- bos_token -}}" if adds_bos(tokenizer) else ""
    template = BUILT_IN[name].replace("{BOS}", bos)
    if default:
        template = template.replace(f"{MARK}{name} ", f"{MARK}{name} {DEFAULT} ", 1)
    return template


def fit_to_transcripts(tokenizer, transcripts: int, source) -> None:
    """Give a tokenizer that renders plain text by default the ``hh`` rendering when its data
    are Anthropic HH transcripts (``transcripts`` rows of them): that is their own text, which
    TRL trains a base model on, where plain text would lose their turns. A plain rendering
    asked for by name is refused for such data."""
    if not transcripts or rendering_of(tokenizer) != "plain":
        return
    if DEFAULT not in tokenizer.chat_template.split("\n", 1)[0]:
        raise RenderingError(
            f"{source}: Anthropic HH transcripts rendered as plain text would lose their turns: "
            "give chat_template_path: hh (the transcript's own text) or a chat template"
        )
    log.info(
        "%s: Anthropic HH transcripts and a tokenizer without a chat template: rendered as "
        "written, \\n\\nHuman: ...\\n\\nAssistant: ... (chat_template_path: hh)",
        source,
    )
    tokenizer.chat_template = built_in_template("hh", tokenizer, default=True)


def rendering_of(tokenizer) -> str | None:
    """ "plain" or "hh" when the tokenizer's template is one made here, else None (its own)."""
    template = tokenizer.chat_template
    if isinstance(template, str) and template.startswith(MARK):
        name = template[len(MARK) :].split(" ", 1)[0]
        return name if name in BUILT_IN else None
    return None


def reply_text(tokenizer, reply: str) -> str:
    """A reply as the tokenizer's rendering takes it: a chat turn without its leading
    whitespace, which in a text joins it to the prompt; plain text as it is."""
    return reply if rendering_of(tokenizer) == "plain" else reply.lstrip()
