"""Normalised preference rows -> token ids -> padded batches for reward models.

A pair is stored as three token lists: the prompt rendered through the chat template with
the assistant header (``prompt_ids``), and the two replies (``chosen_ids``,
``rejected_ids``) such that ``prompt_ids + chosen_ids`` is the chat-template rendering of the
whole conversation. Keeping the prompt apart lets later code share it between the two
replies (prefix sharing) instead of encoding it twice.

Truncation, when ``prompt + reply`` exceeds ``max_length``:

1. the oldest prompt turns are dropped (a leading system message is kept) while more than
   the last user turn remains;
2. then the prompt is cut from the left and the reply from the right. The prompt keeps at
   least ``min(len(prompt), max_prompt_length)`` tokens and the reply whatever is left, so
   the sequence always ends in (a prefix of) the reply. Chosen and rejected keep the same
   prompt, so the pair stays comparable.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from distalign.data.formats import (
    INSTRUCTION_ROLES,
    JSON_MESSAGES,
    Reply,
    common_prefix_length,
    joined_prompt,
    reply_messages,
    row_reply,
    row_template_kwargs,
)
from distalign.models.templates import BUILT_IN, RenderingError, bos_ids, rendering_of

TemplateArgs = Mapping[str, Any] | None  # apply_chat_template's other arguments: tools, ...


def render_prompt_ids(
    tokenizer, messages: list[dict[str, str]], template_kwargs: TemplateArgs = None
) -> list[int]:
    """Token ids of the prompt through the chat template, ending with the assistant header.
    ``template_kwargs``: the template's other arguments (``tools``, ``enable_thinking``), as
    TRL passes a row's ``tools`` and ``chat_template_kwargs``."""
    return _render(tokenizer, messages, True, template_kwargs, add_generation_prompt=True)


def render_text(
    tokenizer,
    messages: list[dict[str, str]],
    reply: Reply | None = None,
    template_kwargs: TemplateArgs = None,
) -> str:
    """The text the model reads: the prompt ending with the assistant header, or with
    ``reply`` (a text, or the reply's messages) the whole conversation (as
    ``render_pair_ids`` renders it)."""
    if reply is None:
        return _render(tokenizer, messages, False, template_kwargs, add_generation_prompt=True)
    return _render(tokenizer, [*messages, *reply_messages(reply)], False, template_kwargs)


def _render(
    tokenizer,
    messages: list[dict[str, str]],
    tokenize: bool,
    template_kwargs: TemplateArgs = None,
    **kwargs,
) -> Any:
    """``apply_chat_template`` -> text or a list of ids; a template's refusal (``raise_exception``
    in the template) as a RenderingError with its message. A built-in rendering's text is
    tokenised as TRL's ``tokenizer(text)`` does (``models.templates.bos_ids``)."""
    from jinja2.exceptions import TemplateError

    built_in = rendering_of(tokenizer) in BUILT_IN
    try:
        out = tokenizer.apply_chat_template(
            messages, tokenize=tokenize and not built_in, **(template_kwargs or {}), **kwargs
        )
    except TemplateError as e:
        raise RenderingError(f"chat template: {e}") from None
    if not tokenize:
        return out
    if built_in:
        return bos_ids(tokenizer) + tokenizer(out, add_special_tokens=False)["input_ids"]
    # apply_chat_template returns a list, or a BatchEncoding in newer transformers.
    if hasattr(out, "keys") and "input_ids" in out:
        out = out["input_ids"]
    return list(out)


TEMPLATE_INPUTS = {
    "messages": "tool calls (the messages' keys beside role and content)",
    "tools": "tools",
    "kwargs": "chat_template_kwargs",
}


def _plain(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages without their keys beside role and content."""
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def silent_template_inputs(tokenizer, pairs, limit: int = 200) -> list[str]:
    """What normalised pairs give the chat template beside roles and contents (tool calls and
    other message keys of the prompt or a reply, tools, template arguments) that this
    tokenizer's template writes nothing for, as ``TEMPLATE_INPUTS`` names them: rendering a
    pair with and without it gives the same text, on the first of the first ``limit`` pairs
    that has it. SmolLM2's template writes no tool calls; TRL renders through the same
    template, so the model reads them no more there, but a user should know."""
    columns = getattr(pairs, "column_names", None) or []
    given = ("prompt_extras", "template_kwargs", "chosen_turns", "rejected_turns")
    if not len(pairs) or not any(c in columns for c in given):
        return []
    found: dict[str, bool] = {}
    for row in pairs.select(range(min(limit, len(pairs)))):
        messages, kwargs = joined_prompt(row), row_template_kwargs(row)
        replies = [reply_messages(row_reply(row, side)) for side in ("chosen", "rejected")]
        # the reply with keys beside role and content, where one has them (a tool call is
        # often on one side only)
        reply = next((r for r in replies if _plain(r) != r), replies[0])
        without = {}
        if row.get("prompt_extras") or _plain(reply) != reply:
            without["messages"] = (_plain(messages), _plain(reply), kwargs)
        if "tools" in kwargs:
            without["tools"] = (messages, reply, {k: v for k, v in kwargs.items() if k != "tools"})
        if set(kwargs) - {"tools"}:
            without["kwargs"] = (messages, reply, {k: v for k, v in kwargs.items() if k == "tools"})
        todo = {what: args for what, args in without.items() if what not in found}
        if not todo:
            continue
        try:
            full = render_text(tokenizer, messages, reply, template_kwargs=kwargs)
            for what, (m, r, kw) in todo.items():
                found[what] = render_text(tokenizer, m, r, template_kwargs=kw) == full
        except RenderingError:
            continue
        if len(found) == len(TEMPLATE_INPUTS):
            break
    return [TEMPLATE_INPUTS[k] for k in TEMPLATE_INPUTS if found.get(k)]


def silent_note(silent: list[str], model: str) -> str:
    """What a model's chat template writes nothing for, said (``silent_template_inputs``)."""
    return (
        f"the chat template of {model} writes nothing for the rows' {', '.join(silent)}: the "
        "model does not read them (TRL renders through the same template); a model whose "
        "template writes them (Qwen2.5, Llama 3.1) does"
    )


def template_markers(tokenizer) -> list[str]:
    """The special tokens a tokenizer's own chat template writes around turns (``<|im_start|>``,
    ``<|start_header_id|>``, …): those in its rendering of a short conversation; [] for a
    model without a template of its own (plain text, HH transcripts: data may hold anything)."""
    if rendering_of(tokenizer) is not None or not getattr(tokenizer, "chat_template", None):
        return []
    question, answer = "Q7zq", "A9vw"  # found once each in the rendering
    chat = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    try:
        text = tokenizer.apply_chat_template(chat, tokenize=False)
    except Exception:  # a template that needs more than this: nothing to look for
        return []
    specials = set(tokenizer.all_special_tokens) | {
        t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values() if t.special
    }
    specials = {t for t in specials if len(t) > 1 and t in text}
    # BOS, EOS, padding: text may well write "<s>" or "</s>"; the user turn's header (the last
    # special token before its text, with what follows it: "<|im_start|>user") it does not
    plain = {tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token, tokenizer.unk_token}
    markers = specials - plain
    at = text.find(question)
    starts = [text.rfind(t, 0, at) for t in specials] if at > 0 else []
    if starts and max(starts) >= 0:
        header = text[max(starts) : at].strip()
        if header not in specials:  # a role's name after the token
            markers.add(header)
    return sorted(markers)


def templated_text(tokenizer, pairs, limit: int = 200) -> str | None:
    """A special token of the tokenizer's chat template found in the text of the first
    ``limit`` normalised rows (prompt turns and replies): text already rendered through a
    template, which rendering through it again nests (TRL tokenises string data as written);
    or the start of a message list's JSON text (``[{"role": …``: messages saved as a string,
    read as the text they are); None where no row holds either."""
    markers = template_markers(tokenizer) or []
    if not len(pairs):
        return None
    columns = getattr(pairs, "column_names", None) or list(pairs[0])
    for row in pairs.select(range(min(limit, len(pairs)))) if hasattr(pairs, "select") else pairs:
        texts = [m["content"] for m in row["prompt"]]
        texts += [row[c] for c in ("chosen", "rejected") if c in columns and row[c]]
        if any(JSON_MESSAGES.match(t) for t in texts):
            return '[{"role"'
        for marker in markers:
            if any(marker in t for t in texts):
                return marker
    return None


def templated_note(marker: str, model: str) -> str:
    """``templated_text`` said."""
    if marker == '[{"role"':
        return (
            'the data\'s text holds JSON text of messages ([{"role": …}]: a list saved as a '
            "string), which is read as the text it is, as TRL reads it; load the column with "
            "json.loads to give the turns as messages"
        )
    return (
        f"the data's text holds {marker!r}, a token the chat template of {model} writes around "
        "turns: it looks rendered through a chat template already, and is rendered through it "
        "again (TRL tokenises string data as written); give chat_template_path=plain to read "
        "it as written, or give the data as messages"
    )


def render_pair_ids(
    tokenizer,
    messages: list[dict[str, str]],
    replies: Sequence[Reply],
    template_kwargs: TemplateArgs = None,
) -> tuple[list[int], list[list[int]]]:
    """(prompt ids, each reply's ids) such that prompt + reply is exactly the rendering of
    ``messages`` + that assistant ``reply`` (a text, or the reply's messages: a tool call,
    its result and the answer are rendered as turns of the reply).

    Everything the template writes is kept, the end of turn and what follows it included
    (SmolLM2: ``<|im_end|>`` and a line break), so prompt + reply is exactly
    ``apply_chat_template(messages + [reply])``: what TRL's RewardTrainer trains on and what
    a user scoring with transformers feeds the model, so the reward is read at the same token.
    The prompt's ids are its own rendering; in a built-in rendering's plain text, whose
    tokens may merge across the join ("The sky is " + "blue." reads " blue"), they are what
    the whole texts share of it, since TRL tokenises each whole text.
    """
    prompt = render_prompt_ids(tokenizer, messages, template_kwargs)
    fulls = [_render(tokenizer, [*messages, *reply_messages(r)], True, template_kwargs)
             for r in replies]  # fmt: skip
    n = len(prompt)
    if any(full[:n] != prompt for full in fulls):
        if rendering_of(tokenizer) is None:
            raise RenderingError(
                "the chat template does not render the prompt as a prefix of prompt + reply; "
                "distalign needs that to score replies"
            )
        n = min(common_prefix_length(prompt, full) for full in fulls)
    return prompt[:n], [full[n:] for full in fulls]


def truncate_pair(
    prompt: Sequence[int],
    replies: Sequence[Sequence[int]],
    max_length: int,
    max_prompt_length: int,
) -> tuple[list[int], list[list[int]]]:
    """Cut the prompt from the left and each reply from the right to fit ``max_length``.

    All replies share the returned prompt. Pure function on token lists (property-tested).
    """
    if not 0 < max_prompt_length < max_length:
        raise ValueError(
            f"need 0 < max_prompt_length ({max_prompt_length}) < max_length ({max_length})"
        )
    longest = max(len(r) for r in replies)
    if len(prompt) + longest <= max_length:
        return list(prompt), [list(r) for r in replies]
    keep_prompt = max(max_length - longest, min(len(prompt), max_prompt_length))
    keep_reply = max_length - keep_prompt
    new_prompt = list(prompt[len(prompt) - keep_prompt :]) if keep_prompt else []
    return new_prompt, [list(r[:keep_reply]) for r in replies]


def _drop_oldest_turn(messages: list[dict[str, str]]) -> list[dict[str, str]] | None:
    """The messages without their oldest non-system exchange (None: one user turn left)."""
    start = 1 if messages and messages[0]["role"] in INSTRUCTION_ROLES else 0
    users = [i for i, m in enumerate(messages) if m["role"] == "user" and i >= start]
    if len(users) <= 1:
        return None
    return messages[:start] + messages[users[1] :]


def fit_replies(
    tokenizer,
    messages: list[dict[str, str]],
    replies: Sequence[Reply],
    max_length: int,
    max_prompt_length: int | None = None,
    template_kwargs: TemplateArgs = None,
) -> tuple[list[int], list[list[int]], bool]:
    """(prompt ids, each reply's ids, cut) of ``messages`` and its replies, fitted to
    ``max_length`` as a reward model reads them, in training and in scoring alike: the oldest
    turns are dropped first (the system message and the last user turn stay), then the
    prompt's start and the replies' ends are cut (``truncate_pair``; ``max_prompt_length``
    defaults to half of ``max_length``). ``cut``: whether anything was dropped or cut."""
    max_prompt_length = max_prompt_length or max_length // 2
    cut = False
    while True:
        p, ids = render_pair_ids(tokenizer, messages, replies, template_kwargs)
        if len(p) + max(len(r) for r in ids) <= max_length:
            break
        cut, shorter = True, _drop_oldest_turn(messages)
        if shorter is None:
            break
        messages = shorter
    p, ids = truncate_pair(p, ids, max_length, max_prompt_length)
    return p, ids, cut


def tokenize_pair(
    tokenizer,
    prompt: list[dict[str, str]],
    chosen: Reply,
    rejected: Reply,
    max_length: int,
    max_prompt_length: int | None = None,
    template_kwargs: TemplateArgs = None,
) -> dict[str, list[int]]:
    """One normalised pair -> ``prompt_ids``, ``chosen_ids``, ``rejected_ids`` (fitted by
    ``fit_replies``: the oldest turns first, then the prompt's start and the replies' ends),
    and ``cut``: whether anything was cut to fit ``max_length``."""
    p, (c, r), cut = fit_replies(
        tokenizer, prompt, (chosen, rejected), max_length, max_prompt_length, template_kwargs
    )
    return {"prompt_ids": p, "chosen_ids": c, "rejected_ids": r, "cut": cut}


def tokenize_pairs(
    dataset, tokenizer, max_length: int, max_prompt_length: int | None = None, num_proc=None
):
    """``datasets.Dataset`` of normalised pairs -> same rows plus token ids and ``length``. Each
    prompt is rendered with its messages' tool calls and its row's tools and template
    arguments (``prompt_extras``, ``template_kwargs``), and each reply with its own turns
    (``chosen_turns``), as TRL's RewardTrainer renders them."""

    def fn(row):
        try:
            out = tokenize_pair(
                tokenizer, joined_prompt(row), row_reply(row, "chosen"),
                row_reply(row, "rejected"), max_length, max_prompt_length,
                row_template_kwargs(row),
            )  # fmt: skip
        except RenderingError as e:
            raise RenderingError(f"row {row.get('source_row', '?')}: {e}") from None
        out["length"] = len(out["prompt_ids"]) + max(
            len(out["chosen_ids"]), len(out["rejected_ids"])
        )
        return out

    return dataset.map(fn, num_proc=num_proc, desc="tokenising pairs")


class PairCollator:
    """Pad a list of tokenised pairs into one batch: the B chosen rows, then the B rejected.

    Returns ``input_ids`` and ``attention_mask`` of shape (2B, T), right-padded to the longest
    row in the batch (dynamic padding). The pad id is irrelevant to every computation: real
    tokens are those with ``attention_mask == 1``.
    """

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None):
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        seqs = [f["prompt_ids"] + f["chosen_ids"] for f in features]
        seqs += [f["prompt_ids"] + f["rejected_ids"] for f in features]
        return pad_sequences(seqs, self.pad_token_id, self.pad_to_multiple_of)


def pad_sequences(
    seqs: Sequence[Sequence[int]], pad_token_id: int, pad_to_multiple_of: int | None = None
) -> dict[str, torch.Tensor]:
    """Right-pad token lists -> ``input_ids`` and ``attention_mask``, both (N, T) int64."""
    length = max(len(s) for s in seqs)
    if pad_to_multiple_of:
        length = -(-length // pad_to_multiple_of) * pad_to_multiple_of
    input_ids = torch.full((len(seqs), length), pad_token_id, dtype=torch.long)  # (N, T)
    attention_mask = torch.zeros((len(seqs), length), dtype=torch.long)  # (N, T)
    for i, s in enumerate(seqs):
        input_ids[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
        attention_mask[i, : len(s)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def length_grouped_batches(
    lengths: Sequence[int], batch_size: int, seed: int, mega_batch_factor: int = 32
) -> list[list[int]]:
    """Shuffled batches of indices whose lengths are close, to waste less compute on padding.

    Indices are shuffled, cut into mega-batches of ``mega_batch_factor * batch_size``, sorted
    by length inside each, then cut into batches; the batch order is shuffled again so long
    and short batches alternate. Every index appears exactly once.
    """
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    mega = batch_size * mega_batch_factor
    batches = []
    for start in range(0, len(order), mega):
        chunk = sorted(order[start : start + mega], key=lambda i: -lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def prompt_grouped_batches(prompts: Sequence, batch_size: int, seed: int) -> list[list[int]]:
    """Shuffled batches in which the pairs of a prompt sit together: prompts in random order,
    each prompt's pairs in random order, cut into batches of ``batch_size`` (a prompt may
    straddle two). ``prompts``: any hashable key of each pair's prompt. Every index appears
    exactly once."""
    rng = random.Random(seed)
    by_prompt: dict = {}
    for i, key in enumerate(prompts):
        by_prompt.setdefault(key, []).append(i)
    keys = list(by_prompt)
    rng.shuffle(keys)
    order = []
    for key in keys:
        members = by_prompt[key]
        rng.shuffle(members)
        order += members
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def pack_rows(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """First-fit decreasing: item indices grouped into rows whose lengths sum ≤ capacity.

    An item longer than ``capacity`` gets a row of its own.
    """
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        for r, free in enumerate(room):
            if lengths[i] <= free:
                rows[r].append(i)
                room[r] -= lengths[i]
                break
        else:
            rows.append([i])
            room.append(capacity - lengths[i])
    return rows


def build_shared_rows(
    groups: Sequence[tuple[Sequence[int], Sequence[Sequence[int]]]],
    pad_token_id: int,
    packing: bool = False,
    pad_to_multiple_of: int | None = None,
) -> dict[str, Any]:
    """Rows where several replies share one prompt: ``prompt + reply_1 + … + reply_k``.

    Each reply's position ids restart where the prompt ends, and a block attention mask lets a
    reply see the prompt and its own earlier tokens only, so every token is computed exactly
    as in its own ``prompt + reply`` sequence while the prompt is encoded once. With
    ``packing``, several groups share a row (first-fit, rows no longer than the longest group).

    Args:
        groups: (prompt ids, [reply ids, ...]) per group; replies non-empty.
    Returns:
        ``input_ids``, ``position_ids``, ``token_mask`` (R, T); ``attention_mask`` (R, 1, T, T)
        bool (True: may attend); ``reply_start`` and ``reply_length`` (N,) flat index
        (row·T + column) of each reply's first token and its length, replies in group order;
        ``prompt_last`` (G,) flat index of each group's last prompt token.
    """
    lengths = [len(p) + sum(len(r) for r in replies) for p, replies in groups]
    rows = pack_rows(lengths, max(lengths)) if packing else [[i] for i in range(len(groups))]
    width = max(sum(lengths[i] for i in row) for row in rows)
    if pad_to_multiple_of:
        width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    n_rows = len(rows)
    input_ids = torch.full((n_rows, width), pad_token_id, dtype=torch.long)
    position_ids = torch.zeros((n_rows, width), dtype=torch.long)
    block = torch.full((n_rows, width), -1, dtype=torch.long)  # group of each token
    part = torch.zeros((n_rows, width), dtype=torch.long)  # 0 prompt, j + 1 reply j
    reply_start: list[list[int]] = [[] for _ in groups]
    reply_length: list[list[int]] = [[] for _ in groups]
    prompt_last = [0] * len(groups)
    for r, row in enumerate(rows):
        start = 0
        for g in row:
            prompt, replies = groups[g]
            p = len(prompt)
            input_ids[r, start : start + p] = torch.as_tensor(list(prompt), dtype=torch.long)
            position_ids[r, start : start + p] = torch.arange(p)
            block[r, start : start + lengths[g]] = g
            prompt_last[g] = r * width + start + p - 1
            at = start + p
            for j, reply in enumerate(replies):
                n = len(reply)
                input_ids[r, at : at + n] = torch.as_tensor(list(reply), dtype=torch.long)
                position_ids[r, at : at + n] = torch.arange(p, p + n)  # restart after the prompt
                part[r, at : at + n] = j + 1
                reply_start[g].append(r * width + at)
                reply_length[g].append(n)
                at += n
            start += lengths[g]
    real = block >= 0  # (R, T)
    causal = torch.ones((width, width), dtype=torch.bool).tril()  # (T, T)
    same_block = block[:, :, None] == block[:, None, :]  # (R, T, T)
    # a key is visible if it is in the prompt or in the query's own reply
    same_part = (part[:, None, :] == 0) | (part[:, :, None] == part[:, None, :])
    mask = causal & same_block & same_part & real[:, :, None] & real[:, None, :]
    # padding queries attend to themselves only, so no softmax row is empty (NaN)
    mask |= torch.eye(width, dtype=torch.bool) & ~real[:, :, None]
    return {
        "input_ids": input_ids,
        "position_ids": position_ids,
        "attention_mask": mask[:, None],  # (R, 1, T, T)
        "token_mask": real.long(),
        "reply_start": torch.tensor([s for g in reply_start for s in g], dtype=torch.long),
        "reply_length": torch.tensor([n for g in reply_length for n in g], dtype=torch.long),
        "prompt_last": torch.tensor(prompt_last, dtype=torch.long),
    }


class SharedPrefixCollator:
    """Pairs as single sequences ``prompt + chosen + rejected`` sharing the prompt (exact; see
    ``build_shared_rows``). Pairs of the batch with the same prompt share one group, and a
    reply that appears in several of them is encoded once (a prompt with 4 replies and its 6
    pairs is one row of 4 replies), still exactly. Returns its tensors plus ``chosen_index`` /
    ``rejected_index`` (N,): flat indices of each reply's last token, where the reward is
    read."""

    def __init__(
        self, pad_token_id: int, packing: bool = False, pad_to_multiple_of: int | None = None
    ):
        self.pad_token_id = pad_token_id
        self.packing = packing
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        groups, slots = shared_groups(features)
        out = build_shared_rows(groups, self.pad_token_id, self.packing, self.pad_to_multiple_of)
        last = out.pop("reply_start") + out.pop("reply_length") - 1  # replies in group order
        del out["prompt_last"]
        out["chosen_index"], out["rejected_index"] = last[slots[:, 0]], last[slots[:, 1]]
        return out


def shared_groups(features: list[dict[str, Any]]):
    """Pairs -> groups (prompt ids, distinct replies), one per distinct prompt in first-seen
    order, and ``slots`` (N, 2): each pair's chosen and rejected reply as an index into the
    replies of all groups, flattened in group order."""
    groups: dict[tuple, list] = {}  # prompt -> {reply: index within the group}
    keys = []
    for f in features:
        replies = groups.setdefault(tuple(f["prompt_ids"]), {})
        for side in ("chosen_ids", "rejected_ids"):
            replies.setdefault(tuple(f[side]), len(replies))
        keys.append(tuple(f["prompt_ids"]))
    offset, start = 0, {}
    for prompt, replies in groups.items():
        start[prompt], offset = offset, offset + len(replies)
    slots = torch.tensor(
        [
            [start[k] + groups[k][tuple(f[side])] for side in ("chosen_ids", "rejected_ids")]
            for k, f in zip(keys, features, strict=True)
        ],
        dtype=torch.long,
    ).reshape(-1, 2)
    return [(list(p), [list(r) for r in replies]) for p, replies in groups.items()], slots


def off_prompt_pairs(
    rows: Sequence[dict[str, Any]], n: int, seed: int, max_length: int, max_prompt_length: int
) -> list[dict[str, Any]]:
    """``n`` extra pairs in which a reply to the prompt beats a reply to another prompt.

    Label-free augmentation after RRM (Liu et al., 2024, "RRM: Robust Reward Model Training
    Mitigates Reward Hacking"): whatever the annotators thought of a prompt's two replies,
    either fits its prompt better than a reply written for a different one. Such pairs teach
    the model to read the reply against its prompt rather than on its own.

    Each extra pair takes a random row i, one of its two replies at random as ``chosen``, and
    as ``rejected`` a random reply of a random row j whose prompt differs (compared as token
    ids), under row i's prompt; the pair is truncated again to ``max_length`` (the prompt
    from the left, token-wise) and dropped if its two replies are then equal. Deterministic
    in ``seed``. ``rows``: tokenised pairs (``prompt_ids``, ``chosen_ids``,
    ``rejected_ids``). Returns rows with those three keys and ``length``: fewer than ``n``
    (or none) only when such replies are (almost) never found.
    """
    if n <= 0 or not rows:
        return []
    prompts = [tuple(r["prompt_ids"]) for r in rows]
    if len(set(prompts)) < 2:
        return []
    rng = random.Random(f"off_prompt:{seed}")  # not the batch order's stream
    sides = ("chosen_ids", "rejected_ids")
    out: list[dict[str, Any]] = []
    tries = 0
    while len(out) < n and tries < 100 * n:  # rejection sampling; gives up on degenerate data
        tries += 1
        i, j = rng.randrange(len(rows)), rng.randrange(len(rows))
        own, other = rows[i][rng.choice(sides)], rows[j][rng.choice(sides)]
        if prompts[j] == prompts[i]:
            continue
        p, (c, r) = truncate_pair(prompts[i], (own, other), max_length, max_prompt_length)
        if c == r:
            continue  # a reply both prompts got, or equal once cut (nothing to learn)
        length = len(p) + max(len(c), len(r))
        out.append({"prompt_ids": p, "chosen_ids": c, "rejected_ids": r, "length": length})
    return out
