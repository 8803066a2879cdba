"""Reaching the Hugging Face Hub, or knowing at once that it cannot be reached.

Without a network, huggingface_hub retries each request for half a minute or more before
transformers or datasets give up. Before the first hub download, ``offline_if_unreachable``
looks the hub's host up (once per process). When it does not resolve, the libraries switch to
offline mode, as ``HF_HUB_OFFLINE=1`` would have them: a model or data set already in the local
Hugging Face cache loads from there, anything else fails at once, and the error says why.

    why = offline_if_unreachable()   # None: the hub answers, or offline mode was already on
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

log = logging.getLogger(__name__)


@cache
def offline_if_unreachable() -> str | None:
    """Why the hub cannot be reached (its host does not resolve), after switching the
    libraries to offline mode and saying so; None when it can, or when offline mode is on."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return None
    host = urlparse(constants.ENDPOINT).hostname or constants.ENDPOINT
    try:
        socket.getaddrinfo(host, 443)
        return None
    except OSError as e:
        why = f"{host} does not resolve ({e.strerror or e})"
    go_offline()
    log.warning("%s: no network, so only the local Hugging Face cache is read (offline mode)", why)
    return why


def go_offline() -> None:
    """Offline mode for huggingface_hub, transformers and datasets in this process and its
    children (each library reads the switch once, at import)."""
    import datasets
    from huggingface_hub import constants

    os.environ["HF_HUB_OFFLINE"] = "1"
    constants.HF_HUB_OFFLINE = True  # huggingface_hub and transformers
    datasets.config.HF_HUB_OFFLINE = True


@contextlib.contextmanager
def offline_for_the_call() -> Iterator[None]:
    """Offline mode that ``offline_if_unreachable`` switches on inside the block is switched
    off at its end, and the hub is looked up again next time: a Python session's later calls
    (a notebook's) ask the hub anew after a network blip. Offline mode set before the block
    (``HF_HUB_OFFLINE=1``) stays."""
    import datasets
    from huggingface_hub import constants

    before = (os.environ.get("HF_HUB_OFFLINE"), constants.HF_HUB_OFFLINE,
              datasets.config.HF_HUB_OFFLINE)  # fmt: skip
    try:
        yield
    finally:
        if not before[1] and constants.HF_HUB_OFFLINE:
            if before[0] is None:
                os.environ.pop("HF_HUB_OFFLINE", None)
            else:
                os.environ["HF_HUB_OFFLINE"] = before[0]
            constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE = before[1], before[2]
            offline_if_unreachable.cache_clear()


def not_downloadable(why: str) -> str:
    """How an error ends for a hub id that is neither local nor in the cache while the hub
    cannot be reached (``why``: ``offline_if_unreachable``'s reason)."""
    return (f"the hub cannot be reached to download it ({why}); it is not in the local Hugging "
            "Face cache either")  # fmt: skip


def in_cache(repo_id: str, filename: str, repo_type: str = "model") -> bool:
    """Whether ``filename`` of ``repo_id`` (its default revision) is in the local cache."""
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    try:
        return isinstance(try_to_load_from_cache(repo_id, filename, repo_type=repo_type), str)
    except HFValidationError:  # not a repo id at all
        return False


@dataclass
class HubKeys:
    """Uploading a training run's model to the hub, under transformers' keys."""

    push_to_hub: bool = False
    """Upload ``output_dir/final`` (the model, its tokenizer, its evaluation and a model card)
    to the hub when training ends. The repository is created (or found) before training
    starts, so a missing login or network fails at once, not after the run."""
    hub_model_id: str | None = None
    """The repository: ``name`` (under your account) or ``org/name`` (default: output_dir's
    folder name, as transformers names it)."""
    hub_private_repo: bool | None = None
    """Create the repository private (default: the account's or organisation's default)."""
    hub_revision: str | None = None
    """The branch to upload to (created from main if missing; default: main)."""
    hub_strategy: str = "every_save"
    """every_save | end: either way the final model is uploaded when training ends;
    checkpoints (with their optimizer state) stay in output_dir."""

    def hub_checks(self) -> list[tuple[bool, str]]:
        """(holds, message) of each condition the keys must meet."""
        return [
            (
                self.hub_strategy in HUB_STRATEGIES,
                f"hub_strategy must be one of {HUB_STRATEGIES} (the final model is uploaded "
                f"when training ends; upload a checkpoint with `hf upload REPO_ID "
                f"output_dir/<checkpoint>`), not {self.hub_strategy!r}",
            ),
        ]


HUB_STRATEGIES = ("every_save", "end")


class HubUploadError(RuntimeError):
    """The hub refused, or could not be reached for, a repository or an upload."""


def hub_repo(cfg: HubKeys, output_dir: str | Path) -> str | None:
    """The full id of the repository ``cfg`` pushes to, created if missing (None: no push).
    Called before training, so that a missing login or network fails before the run."""
    if not cfg.push_to_hub:
        if cfg.hub_model_id:
            log.warning("hub_model_id=%s only names final/README.md's model card without "
                        "push_to_hub=true: nothing is uploaded", cfg.hub_model_id)  # fmt: skip
        return None
    from huggingface_hub import HfApi

    name = cfg.hub_model_id or Path(output_dir).absolute().name
    why = offline_if_unreachable()
    if why:
        final = Path(output_dir) / "final"
        raise HubUploadError(f"push_to_hub: the hub cannot be reached ({why}); upload {final} "
                             f"once it is there with `hf upload {name} {final}` (before "
                             "training: train without push_to_hub)")  # fmt: skip
    api = HfApi()
    try:
        repo_id = api.create_repo(name, private=cfg.hub_private_repo, exist_ok=True).repo_id
        if cfg.hub_revision:
            api.create_branch(repo_id, branch=cfg.hub_revision, exist_ok=True)
    except Exception as e:  # no login, no right to the organisation, a bad name
        why = f"{e} (log in with `hf auth login`, or set HF_TOKEN)"
        raise HubUploadError(f"push_to_hub: cannot create or reach {name!r}: {why}") from e
    return repo_id


def upload_when_done(
    cfg: HubKeys, output_dir: Path, card_of: Callable[[str], str], message: str
) -> Callable[[], str] | None:
    """Write the card ``card_of(name)`` gives as ``output_dir/final/README.md`` (as TRL's
    trainers do, pushed or not: it replaces the empty template PEFT writes beside an adapter;
    ``name`` is hub_model_id, or output_dir's folder name); with ``push_to_hub``, return the
    upload of ``output_dir/final`` with the card of the repository's full id, to run once
    every process is done (``tracking.end_run``'s ``then``): a slow upload never keeps the
    others waiting at a barrier. None without push_to_hub."""
    name = cfg.hub_model_id or Path(output_dir).absolute().name
    readme = Path(output_dir) / "final" / "README.md"
    if not cfg.push_to_hub:  # the card's repository does not exist (yet)
        note = (f"\nNot uploaded: until `hf upload {name} <this folder>`, `from_pretrained` "
                "takes this folder's path in place of the name above.\n")  # fmt: skip
        readme.write_text(card_of(name) + note, encoding="utf-8")
        return None
    readme.write_text(card_of(name), encoding="utf-8")  # the upload names the full repo id

    def upload() -> str:
        repo_id = hub_repo(cfg, output_dir)
        return push_folder(repo_id, Path(output_dir) / "final", cfg, card_of(repo_id), message)

    return upload


def push_folder(repo_id: str, folder: Path, cfg: HubKeys, card: str, message: str) -> str:
    """Write ``card`` as the folder's README.md (replacing the template card PEFT's
    ``save_pretrained`` writes beside an adapter) and upload the folder to ``repo_id``;
    returns the commit's URL. A failed upload says the model is saved locally. An adapter
    whose base is the embedded model's cache folder goes up naming that model's hub id, so
    that it loads on other machines (``hub_adapter``)."""
    import tempfile

    from huggingface_hub import HfApi

    (folder / "README.md").write_text(card, encoding="utf-8")
    try:
        with tempfile.TemporaryDirectory() as staging:
            source = hub_adapter(folder, Path(staging))
            info = HfApi().upload_folder(
                repo_id=repo_id, folder_path=str(source), revision=cfg.hub_revision,
                commit_message=message,
            )  # fmt: skip
    except Exception as e:
        raise HubUploadError(f"push_to_hub: uploading {folder} to {repo_id} failed: {e}; the "
                             f"model is saved there: upload it with `hf upload {repo_id} "
                             f"{folder}`") from e  # fmt: skip
    log.info("uploaded %s to https://huggingface.co/%s", folder, repo_id)
    return str(getattr(info, "commit_url", info))


def model_card(*, repo_id: str, base_model: str | None, datasets: list[str], tags: list[str],
               pipeline_tag: str, library: str, body: str) -> str:  # fmt: skip
    """A model card: the hub's YAML header (names that are hub ids only: a local path is no
    base model the hub knows) and ``body``."""
    import yaml

    header: dict[str, Any] = {"library_name": library, "pipeline_tag": pipeline_tag,
                              "tags": ["distalign", *tags]}  # fmt: skip
    if base_model and is_hub_id(base_model):
        header["base_model"] = base_model
    # a mixture (data.mixture.Mixture) names its hub parts
    named = [n for d in datasets for n in (d.hub_ids() if hasattr(d, "hub_ids") else [d])]
    hub_data = [d for d in named if isinstance(d, str) and is_hub_id(d)]
    if hub_data:
        header["datasets"] = hub_data
    head = yaml.safe_dump(header, sort_keys=False, allow_unicode=True)
    return f"---\n{head}---\n\n# {repo_id.split('/')[-1]}\n\n{body.strip()}\n"


def figures_table(columns: dict[str, dict[str, Any]]) -> str:
    """A Markdown table of the numbers in each column's figures (one row per measure; nested
    values left out), e.g. ``{"before": {...}, "after": {...}}``; a column without figures
    (None: not evaluated, as with ``eval_on_start=false``) reads "not measured"."""

    def cell(value: Any) -> str:
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    def number(value: Any) -> bool:
        return isinstance(value, int | float) and not isinstance(value, bool)

    names = list(dict.fromkeys(k for c in columns.values() for k, v in (c or {}).items()
                               if number(v)))  # fmt: skip
    if not names:
        return ""
    rows = ["| " + " | ".join(["measure", *columns]) + " |",
            "|" + "---|" * (len(columns) + 1)]  # fmt: skip
    for name in names:
        values = [cell(c[name]) if number((c or {}).get(name)) else "" if c else "not measured"
                  for c in columns.values()]  # fmt: skip
        rows.append("| " + " | ".join([name, *values]) + " |")
    return "\n".join(rows)


def shown(name: Any) -> str:
    """How a card names a model, data set or reward: a hub id as it is, a local path by its
    last part (a card goes public; the user's folders need not), anything else by its name."""
    if not isinstance(name, str):
        return getattr(name, "__name__", type(name).__name__)
    from distalign.data.mixture import FILE_BUILDERS, Mixture  # data imports this module

    if isinstance(name, Mixture):  # a data set mixture: its sources
        return " + ".join(
            f"{p.path} files ({_remote_or_local(p.data_files)})" if p.path in FILE_BUILDERS
            else shown(str(Path(p.path, p.data_dir))) if p.data_dir and Path(p.path).is_dir()
            else shown(p.path) + (f" ({p.data_dir})" if p.data_dir else "")
            for p in name.parts
        )  # fmt: skip
    if is_hub_id(name):
        return name
    if not any(c in name for c in "/\\"):  # a local file or folder by its name, or an alias
        from distalign.data.files import SUFFIXES, strip_gz

        local = Path(name).expanduser().exists() or Path(strip_gz(Path(name))).suffix in SUFFIXES
        return f"{name} (local)" if local else name
    from distalign.rl.rewards import above_generic_folders

    path = Path(name.rstrip("/\\"))  # runs/my_rm/final: my_rm/final, the run's name with it
    return f"{path.relative_to(above_generic_folders(path).parent).as_posix()} (local)"


def _remote_or_local(files: Any) -> str:
    """A builder's data_files on a card: their addresses where they are public, else local."""
    from distalign.data.mixture import files_text, patterns_of

    return files_text(files) if any("://" in f for f in patterns_of(files)) else "local"


def hub_adapter(folder: Path, staging: Path) -> Path:
    """The folder to upload: ``folder`` itself, or, for a PEFT adapter whose
    ``base_model_name_or_path`` is an embedded model's cache folder (``model prepare``'s), a
    copy in ``staging`` whose adapter_config.json names that model's hub id. The local
    ``final/`` keeps the cache folder, which loads without a network."""
    import json
    import shutil

    from distalign.models.load import EMBEDDED_HUB_IDS, embedded_folder

    settings = folder / "adapter_config.json"
    if not settings.is_file():
        return folder
    adapter = json.loads(settings.read_text(encoding="utf-8"))
    base = Path(str(adapter.get("base_model_name_or_path") or "")).expanduser()
    hub_id = next((hub_id for alias, hub_id in EMBEDDED_HUB_IDS.items()
                   if base == embedded_folder(alias)), None)  # fmt: skip
    if hub_id is None:
        return folder
    copy = staging / folder.name
    shutil.copytree(folder, copy)
    adapter["base_model_name_or_path"] = hub_id
    (copy / "adapter_config.json").write_text(json.dumps(adapter, indent=2), encoding="utf-8")
    return copy


def is_hub_id(name: str) -> bool:
    """Whether ``name`` reads as a hub repository id (``org/name``), not a local path."""
    return bool(_HUB_ID.match(name)) and not Path(name).expanduser().exists()


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def base_model_id(name: str) -> str:
    """The hub id a model name stands for: an embedded model's alias, its source on the hub."""
    from distalign.models.load import EMBEDDED_HUB_IDS

    return EMBEDDED_HUB_IDS.get(name.lower(), name)


def measured_on(cfg: Any, rows: str = "pairs", n: int | None = None) -> str:
    """Where a training config's final figures were measured, for a card: the held-out data,
    or, when there was none, the training data, said as such; ``n``: how many ``rows``."""
    from distalign.data.load import evaluates_on_training_data, held_out_of, split_to_name

    count = "" if n is None else f"{n} "
    held = held_out_of(cfg)
    source, eval_source, _, split = held
    data = eval_source if eval_source is not None else source
    if evaluates_on_training_data(*held):
        name = f"`{shown(data)}`" if isinstance(data, str) else "the Dataset given"
        return f"Measured on the {count}training {rows} ({name}; none were held out)"
    if not isinstance(data, str):  # a Dataset from Python: its own rows, no splits
        return f"Measured on {count}held-out {rows} (the Dataset given as eval_dataset_name)"
    if split_to_name(data, split) is None:  # one file read whole: no split to name
        return f"Measured on {count}held-out {rows} (`{shown(data)}`)"
    return f"Measured on {count}held-out {rows} (`{shown(data)}`, split `{split}`)"


def reward_model_card(cfg: Any, repo_id: str, result: dict[str, Any]) -> str:
    """The model card of a reward model ``rm train`` uploads."""
    base = base_model_id(cfg.model_name_or_path)
    data = shown(cfg.dataset_name) if isinstance(cfg.dataset_name, str) else "a Dataset"
    quoted = f'"{repo_id}"'
    if cfg.use_peft:  # a LoRA adapter and its head, on the base model
        load = (
            "from huggingface_hub import snapshot_download\n"
            "from distalign.models.reward_model import load_reward_model\n\n"
            f"model, tokenizer, meta = load_reward_model(snapshot_download({quoted}))"
        )
    else:
        load = (
            "from transformers import AutoModelForSequenceClassification\n\n"
            f"model = AutoModelForSequenceClassification.from_pretrained({quoted})"
        )
    if cfg.head == "scalar":
        reading = ("One output, the Bradley–Terry reward of the reply, read at the last token "
                   "of the chat template's rendering of the prompt and reply (as TRL's reward "
                   "models).")  # fmt: skip
    else:
        reading = (f"A distributional head ({cfg.head}): its outputs (named in "
                   "`config.id2label`) describe a distribution of rewards over annotators; "
                   f"`distalign rm score model_name_or_path={repo_id} input_file=...` reads "
                   "their mean and spread.")  # fmt: skip
    body = (f"A reward model trained with distalign's `rm train` from `{shown(base)}` on "
            f"`{data}`, {cfg.head} head.\n\n{reading}\n\n```python\n{load}\n```\n\n"
            f"{measured_on(cfg)}:\n\n{figures_table({'value': result})}")  # fmt: skip
    return model_card(repo_id=repo_id, base_model=base, datasets=[cfg.dataset_name],
                      tags=["reward-model", cfg.head], pipeline_tag="text-classification",
                      library="peft" if cfg.use_peft else "transformers", body=body)  # fmt: skip


def policy_card(cfg: Any, repo_id: str, initial: Any, final: Any, prompts: int | None = None
                ) -> str:  # fmt: skip
    """The model card of a policy ``rl train`` uploads (``prompts``: how many held-out prompts
    its figures were measured on)."""
    base = base_model_id(cfg.model_name_or_path)
    data = shown(cfg.dataset_name) if isinstance(cfg.dataset_name, str) else "a Dataset"
    auto = "AutoPeftModelForCausalLM" if cfg.use_peft else "AutoModelForCausalLM"
    where = "peft" if cfg.use_peft else "transformers"
    given = cfg.reward if isinstance(cfg.reward, list | tuple) else [cfg.reward]
    rewards = ", ".join(f"`{shown(r)}`" for r in given if r is not None) or "its reward"
    body = (f"A policy aligned with distalign's `rl train` ({cfg.baseline} "
            f"advantages, loss {cfg.loss_type}) from `{shown(base)}` on the prompts of "
            f"`{data}`, against {rewards}.\n\n```python\nfrom {where} import {auto}\n\n"
            f'model = {auto}.from_pretrained("{repo_id}")\n```\n\n'
            f"{measured_on(cfg, 'prompts', prompts)}, the starting policy and the aligned one:\n\n"
            f"{figures_table({'before': initial, 'after': final})}")  # fmt: skip
    return model_card(repo_id=repo_id, base_model=base, datasets=[cfg.dataset_name],
                      tags=["rlhf", cfg.baseline], pipeline_tag="text-generation",
                      library=where, body=body)  # fmt: skip
