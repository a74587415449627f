"""Load a DiffusionGemma checkpoint and its tokenizer: offline-first, safetensors only, one clear error.

Anything that goes wrong (missing folder, corrupt weights, a checkpoint of another architecture, a
Hugging Face id that is not in the local cache, not enough memory) becomes a ``ModelLoadError`` whose
message says what to do; the server shows it once and stays up.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoTokenizer, DiffusionGemmaConfig, PreTrainedTokenizerBase

from diffgemma_ls.engine.kinds import DEVICES, QUANTIZE_MODES, ModelLoadError, Quantize
from diffgemma_ls.engine.model import CodeDiffusionGemma
from diffgemma_ls.engine.streaming import MissingWeights, StreamingLoader, TensorInfo, load_checkpoint

log = logging.getLogger(__name__)

__all__ = ["DEVICES", "QUANTIZE_MODES", "LoadedModel", "ModelLoadError", "load_model"]
DEFAULT_MODEL = "default"


@dataclass
class LoadedModel:
    model: CodeDiffusionGemma
    tokenizer: PreTrainedTokenizerBase
    name: str
    path: str
    device: torch.device
    quantization: str


def default_model_path() -> Path:
    """The shipped default model: package data when installed, ``model/default`` in a source checkout."""
    package = Path(__file__).resolve().parents[1]
    installed = package / "default_model"
    if (installed / "config.json").is_file():
        return installed
    return package.parent / "model" / "default"


def resolve_device(device: str) -> torch.device:
    if device not in DEVICES:
        raise ModelLoadError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("device 'cuda' requested but torch sees no CUDA GPU (use --device cpu or auto)")
    if device == "mps" and not torch.backends.mps.is_available():
        raise ModelLoadError("device 'mps' requested but this torch build or machine has no MPS")
    return torch.device(device)


def resolve_model_path(model: str | None, allow_download: bool = False) -> str:
    """A local folder, or a Hugging Face id found in the local cache (downloaded only if allowed)."""
    if model in (None, "", DEFAULT_MODEL):
        path = default_model_path()
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"the default model is missing at {path}; reinstall diffgemma-ls")
        return str(path)
    candidate = Path(model).expanduser()
    looks_like_hub_id = model.count("/") == 1 and not model.startswith((".", "/", "~"))
    if candidate.exists() or not looks_like_hub_id:
        if not candidate.is_dir():
            raise ModelLoadError(f"model path {candidate} is not a folder with a DiffusionGemma checkpoint")
        if not (candidate / "config.json").is_file():
            raise ModelLoadError(f"model folder {candidate} has no config.json")
        return str(candidate.resolve())
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(
            model,
            local_files_only=not allow_download,
            allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt"],
        )
    except Exception as exc:  # the hub raises many types; all mean "not available"
        hint = (
            "it is not in the local Hugging Face cache; fetch it once with `hf download "
            f"{model}` or start with --allow-download"
            if not allow_download
            else f"download failed: {exc}"
        )
        raise ModelLoadError(f"model {model!r} not found: {hint}") from exc


def _check_architecture(path: str, trust_remote_code: bool) -> DiffusionGemmaConfig:
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True, trust_remote_code=trust_remote_code)
    except Exception as exc:
        raise ModelLoadError(f"cannot read the model config in {path}: {exc}") from exc
    if not isinstance(config, DiffusionGemmaConfig):
        raise ModelLoadError(
            f"{path} holds a {getattr(config, 'model_type', '?')!r} model, not DiffusionGemma "
            "(diffgemma-ls serves DiffusionGemmaForBlockDiffusion checkpoints)"
        )
    return config


def _check_memory(loader: StreamingLoader, tensors: dict[str, TensorInfo], device: torch.device) -> None:
    """Refuse a checkpoint that cannot fit before allocating anything for it (sizes from the headers).

    The host needs the shard being read (memory-mapped) and, on the CPU, the model itself; a GPU
    needs the model. ``--quantize`` is counted: 4-bit weights take about 0.28 of bf16's bytes.
    """
    model_bytes, shard_bytes = loader.needed_bytes(tensors)
    on_gpu = device.type == "cuda"
    needs = [("RAM", shard_bytes + (0 if on_gpu else model_bytes), _available_memory())]
    if on_gpu:
        needs.append(("GPU memory", model_bytes, torch.cuda.mem_get_info(device)[0]))
    for what, needed, available in needs:
        if available is None or needed <= available:
            continue
        smaller = [
            f"--quantize {mode} needs about {_size(loader.needed_bytes(tensors, mode)[0])}"
            for mode in ("8bit", "4bit")
            if loader.needed_bytes(tensors, mode)[0] < model_bytes
        ]
        advice = "; ".join(smaller) if smaller else "use a smaller model or a machine with more memory"
        raise ModelLoadError(
            f"the model needs about {_size(needed)} of {what} with --quantize {loader.mode} but "
            f"only {_size(available)} is free; {advice}"
        )


def _size(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 / 10 else f"{n / 2**20:.0f} MiB"


def _available_memory() -> int | None:
    """Free memory, or the room left under RLIMIT_AS when one is set (tests use that to act small)."""
    import resource

    limits = []
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        limits.append(soft - _proc_status_kib("VmSize") * 1024)
    available = _proc_status_kib("MemAvailable", "/proc/meminfo")
    if available:
        limits.append(available * 1024)
    return min(limits) if limits else None


def _proc_status_kib(key: str, path: str = "/proc/self/status") -> int:
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def load_model(
    model: str | None = None,
    *,
    quantize: Quantize = "auto",
    device: str = "auto",
    allow_download: bool = False,
    trust_remote_code: bool = False,
) -> LoadedModel:
    """Load ``model`` (folder, cached Hugging Face id, or None for the shipped default) ready to serve."""
    if quantize not in QUANTIZE_MODES:
        raise ModelLoadError(f"quantize must be one of {', '.join(QUANTIZE_MODES)}, got {quantize!r}")
    torch_device = resolve_device(device)
    if quantize == "auto":
        # 4-bit where the real model lives; on CPU the small default model is faster unquantized
        # (dequantizing costs 1.0-1.4x per forward) and only 20 MB in fp32 (docs/decisions.md)
        quantize = "4bit" if torch_device.type == "cuda" else "none"
    path = resolve_model_path(model, allow_download)
    config = _check_architecture(path, trust_remote_code)
    prequantized = getattr(config, "quantization_config", None) is not None
    # fp32 on CPU: bf16 matmuls are slower there (measured in ../shared/notes/quantization.md).
    dtype = torch.float32 if torch_device.type == "cpu" else torch.bfloat16
    if not any(Path(path).glob("*.safetensors")):
        raise ModelLoadError(f"no .safetensors weights in {path} (pickle checkpoints are not loaded)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            path, local_files_only=True, trust_remote_code=trust_remote_code
        )
        if prequantized:
            # a pre-quantized checkpoint's quantizer places its weights itself
            loaded = CodeDiffusionGemma.from_pretrained(
                path,
                dtype=dtype,
                local_files_only=True,
                use_safetensors=True,
                device_map=str(torch_device),
                trust_remote_code=trust_remote_code,
            ).eval()
        else:
            loaded = load_checkpoint(
                path,
                config,
                dtype,
                quantize,
                torch_device,
                lambda *sizes: _check_memory(*sizes, torch_device),
            )
    except ModelLoadError:
        raise
    except MissingWeights as exc:
        raise ModelLoadError(f"cannot load the model in {path}: {exc}") from exc
    except Exception as exc:
        raise ModelLoadError(f"cannot load the model in {path}: {type(exc).__name__}: {exc}") from exc
    if prequantized:
        quantization = _prequantized_label(config)
        if quantize != "none":
            log.warning("%s is already quantized (%s); --quantize %s ignored", path, quantization, quantize)
    else:
        quantization = quantize
    name = DEFAULT_MODEL if model in (None, "", DEFAULT_MODEL) else model
    return LoadedModel(loaded, tokenizer, name, path, torch_device, quantization)


def _prequantized_label(config: DiffusionGemmaConfig) -> str:
    qc = config.quantization_config
    qc = qc if isinstance(qc, dict) else qc.to_dict()
    bits = "4bit" if qc.get("load_in_4bit") else "8bit" if qc.get("load_in_8bit") else ""
    return " ".join(filter(None, ["prequantized", str(qc.get("quant_method", "")), bits]))
