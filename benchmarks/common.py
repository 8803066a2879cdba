"""Pieces every benchmark shares: the machine and library versions a result was measured
with, the models it runs on (the real SmolLM2 or, for ``--quick``, a tiny random Llama with
the SmolLM2 tokenizer), one reward-model folder both tools read, and step timing helpers."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import sys
from pathlib import Path

HERE = Path(__file__).parent
RESULTS = HERE / "results"
QUICK_RESULTS = Path("runs/bench_quick/results")  # smoke runs: never beside the real results
DEFAULT_MODEL = "smollm2-135m-instruct"
TINY = "tiny"  # --model tiny: a 2-layer random Llama, for smoke runs only


def machine() -> dict:
    """CPU count and model, RAM, platform: what a number was measured on."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram_gb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                ram_gb = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    info = {
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu,
        "ram_gb": ram_gb,
        "platform": platform.platform(),
    }
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        pass
    return info


def versions() -> dict:
    out = {"python": platform.python_version()}
    for name in ("torch", "transformers", "trl", "peft", "accelerate", "distalign"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def commit() -> str | None:
    """The repository's commit (with "+changes" when the tree differs from it), so a result
    names the code it measured; None outside a git checkout."""
    import subprocess

    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, text=True,
                             capture_output=True, check=True).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "src"], cwd=HERE,
                               text=True, capture_output=True, check=True).stdout  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return None
    return rev + ("+changes" if dirty else "")


def linear_fit(xs: list[float], ys: list[float]) -> dict:
    """Least-squares line y = a + b·x and its R²."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx if sxx else 0.0
    a = my - b * mx
    ss_res = sum((y - a - b * x) ** 2 for x, y in zip(xs, ys, strict=True))
    ss_tot = sum((y - my) ** 2 for y in ys)
    r2 = 1 - ss_res / ss_tot if ss_tot else 1.0
    return {"intercept": a, "slope": b, "r2": r2, "about_linear": r2 >= 0.98}


def environment() -> dict:
    return {"machine": machine(), "versions": {**versions(), "distalign_commit": commit()}}


def add_device_args(ap) -> None:
    """Where both tools of a comparison run, and in what precision: always the same for both."""
    ap.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="auto: the GPU when torch sees one, else the CPU; cpu hides every GPU from both tools",
    )
    ap.add_argument(
        "--bf16",
        action="store_true",
        help="bfloat16 mixed precision (float32 weights) in both tools; default: float32",
    )


def resolve_bench_device(device: str) -> str:
    """``auto``: ``cuda`` when torch sees a GPU, else ``cpu``. ``cuda`` without one: an error."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device here")
    return device


def child_env(device: str) -> dict:
    """The environment a measured child runs in, so that both tools see the same hardware:
    ``cpu`` hides every GPU and tells accelerate to stay on the CPU (an Apple GPU too);
    ``cuda`` shows one GPU, else transformers' Trainer would spread TRL over all of them."""
    if device == "cpu":
        return {"CUDA_VISIBLE_DEVICES": "", "ACCELERATE_USE_CPU": "true"}
    first = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0].strip() or "0"
    return {"CUDA_VISIBLE_DEVICES": first}


def results_dir(quick: bool, device: str = "cpu") -> Path:
    """Where a script writes its results: smoke runs apart, GPU runs in ``results/gpu``, so
    that neither lands beside the CPU suite's files (``run_all.py`` reports those)."""
    if quick:
        return QUICK_RESULTS
    return RESULTS / "gpu" if device == "cuda" else RESULTS


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def python() -> str:
    return sys.executable


def tiny_model(work: Path) -> str:
    """A saved 2-layer random Llama with the SmolLM2 tokenizer (built once per work folder)."""
    out = work / "tiny-llama"
    if (out / "config.json").is_file():
        return str(out)
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from distalign.models.load import load_tokenizer

    tok = load_tokenizer(DEFAULT_MODEL)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return str(out)


def policy_path(model: str, work: Path) -> str:
    """The folder of ``model`` (``tiny``: the tiny random Llama, built in ``work``)."""
    if model == TINY:
        return tiny_model(work)
    from distalign.models.load import resolve_model

    return resolve_model(model)


def reward_model_folder(model: str, work: Path) -> str:
    """One sequence-classification reward model (the policy's backbone + a 1-label head,
    random: timing only), saved with its tokenizer, so that TRL and distalign read the very
    same folder."""
    out = work / f"reward-model-{Path(model).name if model != TINY else TINY}"
    if (out / "config.json").is_file():
        return str(out)
    import torch
    from transformers import AutoModelForSequenceClassification

    from distalign.models.load import load_tokenizer

    path = policy_path(model, work)
    tok = load_tokenizer(path)
    torch.manual_seed(0)
    rm = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=torch.float32)
    rm.config.pad_token_id = tok.pad_token_id
    rm.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return str(out)


def param_count(model_folder: str) -> int:
    """Parameters of a saved causal LM (tied embeddings counted once)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_folder)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def rate(stamps: list[float], per_step: float) -> float | None:
    """Units per second over steps 2..N (the first step is the warm-up)."""
    if len(stamps) < 2 or stamps[-1] <= stamps[0]:
        return None
    return per_step * (len(stamps) - 1) / (stamps[-1] - stamps[0])


def profile_table(prof, rows: int = 30) -> str:
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)
