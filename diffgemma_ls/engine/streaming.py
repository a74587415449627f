"""Load a checkpoint one tensor at a time, quantizing each weight as it arrives.

``from_pretrained`` materializes the whole model in the load dtype before anything can quantize it:
~50 GB of host RAM for DiffusionGemma 26B-A4B in bf16, to end up with ~16 GB of 4-bit weights. Here
the model is built on the meta device (no memory), and each tensor is read from its memory-mapped
safetensors shard, cast, moved to the device and, once a module has all its weights, replaced by its
quantized form (``quantize.quantized_module``), so its full-precision copy is freed at once. Peak host
memory is then about the shard being read plus whatever stays on the host.

Text only: the vision tower (~1 GB in the real checkpoint) is neither read nor kept; a request with
images gets a clear error from ``_NoVision``.

The encoder and the decoder share every text weight (transformers ties them): the checkpoint holds
each once, and ``tie_weights`` makes the encoder's and the decoder's modules hold the same meta
parameter, so one read fills both, and both get the same quantized module.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import accelerate
import torch
from safetensors import safe_open
from torch import nn
from transformers import DiffusionGemmaConfig

from diffgemma_ls.engine.model import CodeDiffusionGemma
from diffgemma_ls.engine.quantize import QuantMode, is_quantization_target, quantized_bytes, quantized_module

VISION_PREFIXES = ("model.encoder.vision_tower.", "model.encoder.embed_vision.")
_DTYPE_BYTES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
}


class MissingWeights(ValueError):
    """The checkpoint lacks weights the model needs."""


class _NoVision(nn.Module):
    """Stands in for the vision tower and its projection, which a text-only server never loads."""

    def forward(self, *args: object, **kwargs: object) -> torch.Tensor:
        raise ValueError("diffgemma-ls loads DiffusionGemma's text model only: images are not served")


@dataclass(frozen=True)
class TensorInfo:
    shard: Path
    dtype: str  # safetensors' name: "BF16", "F32", ...
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * _DTYPE_BYTES.get(self.dtype, 4)


def checkpoint_tensors(path: str | Path) -> dict[str, TensorInfo]:
    """Every tensor of a safetensors checkpoint (one file or sharded), from the headers alone."""
    folder = Path(path)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted({folder / name for name in json.loads(index.read_text())["weight_map"].values()})
    else:
        shards = sorted(folder.glob("*.safetensors"))
    tensors: dict[str, TensorInfo] = {}
    for shard in shards:
        with shard.open("rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(length))
        for name, entry in header.items():
            if name != "__metadata__":
                tensors[name] = TensorInfo(shard, entry["dtype"], tuple(entry["shape"]))
    return tensors


@contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """As ``from_pretrained`` builds a model: buffers created at init take the load dtype."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


class StreamingLoader:
    """A meta-device model filled tensor by tensor: ``needed_bytes`` first (allocates nothing), ``load``."""

    def __init__(self, config: DiffusionGemmaConfig, dtype: torch.dtype, mode: QuantMode):
        self.dtype = dtype
        self.mode = mode
        with _default_dtype(dtype), accelerate.init_empty_weights(include_buffers=False):
            model = CodeDiffusionGemma(config)
        model.model.encoder.vision_tower = _NoVision()
        model.model.encoder.embed_vision = _NoVision()
        model.tie_weights()
        self.model = model
        self._parameters = dict(model.named_parameters(remove_duplicate=False))
        self._buffers = dict(model.named_buffers(remove_duplicate=False))
        # where each (meta) parameter sits, under every name it has, and each target module's parents
        self._holders: dict[int, list[tuple[nn.Module, str]]] = {}
        for name, param in self._parameters.items():
            module_name, _, attr = name.rpartition(".")
            self._holders.setdefault(id(param), []).append((model.get_submodule(module_name), attr))
        self._parents: dict[int, list[tuple[nn.Module, str]]] = {}
        text = {*model.model.encoder.language_model.modules(), *model.model.decoder.modules()}
        for name, module in model.named_modules(remove_duplicate=False):
            parent_name, _, attr = name.rpartition(".")
            parent = model.get_submodule(parent_name) if name else None
            if parent is not None and module in text and is_quantization_target(parent, module):
                self._parents.setdefault(id(module), []).append((parent, attr))

    def weight_shapes(self) -> dict[str, tuple[int, ...]]:
        """Each weight once (under its first name, as a checkpoint stores it): what ``load`` needs."""
        return {name: tuple(param.shape) for name, param in self.model.named_parameters()}

    def _is_target(self, name: str) -> bool:
        param = self._parameters.get(name)
        return param is not None and any(
            id(module) in self._parents for module, _ in self._holders[id(param)]
        )

    def needed_bytes(self, tensors: dict[str, TensorInfo], mode: QuantMode | None = None) -> tuple[int, int]:
        """(model bytes once loaded and quantized by ``mode``, default this load's; largest shard's bytes)."""
        mode = mode or self.mode
        model = 0
        for name, info in tensors.items():
            if mode != "none" and self._is_target(name):
                model += quantized_bytes(info.shape, mode)
            else:
                elements = math.prod(info.shape)
                floating = info.dtype.startswith(("F", "BF"))
                model += elements * (self.dtype.itemsize if floating else _DTYPE_BYTES.get(info.dtype, 4))
        shards: dict[Path, int] = {}
        for info in tensors.values():
            shards[info.shard] = shards.get(info.shard, 0) + info.nbytes
        return model, max(shards.values(), default=0)

    @torch.no_grad()
    def load(self, tensors: Iterable[tuple[str, torch.Tensor]], device: torch.device) -> CodeDiffusionGemma:
        """Place each tensor as it comes; quantize each target module as soon as it is complete."""
        target = device if self.mode != "none" else None
        for name, tensor in tensors:
            if name not in self._parameters and name not in self._buffers:
                raise MissingWeights(f"the checkpoint has a tensor this architecture does not: {name}")
            if tensor.is_floating_point():
                tensor = tensor.to(self.dtype)
            if name in self._buffers:
                self._buffers[name].copy_(tensor)
            else:
                self._place(name, tensor if target is not None else tensor.to(device), target)
            del tensor
        missing = [name for name, param in self.model.named_parameters() if param.is_meta]
        if missing:
            raise MissingWeights(
                f"the checkpoint lacks {len(missing)} weights, e.g. {', '.join(missing[:5])}"
            )
        self.model.to(device)  # buffers, and what stays in full precision
        return self.model.eval().requires_grad_(False)

    def _place(self, name: str, tensor: torch.Tensor, target: torch.device | None) -> None:
        """Put a tensor wherever its parameter is held, then quantize the modules it completed."""
        param = self._parameters[name]
        new = nn.Parameter(tensor, requires_grad=False)
        holders = self._holders.pop(id(param), [])
        for module, attr in holders:
            module._parameters[attr] = new
        if target is None:
            return
        # the encoder's and the decoder's module of one shared weight: one quantized module for both
        complete = [
            module
            for module, _ in holders
            if id(module) in self._parents and not any(p.is_meta for p in module.parameters(recurse=False))
        ]
        if complete:
            replacement = quantized_module(complete[0], self.mode, target)
            for module in complete:
                for parent, attr in self._parents.pop(id(module)):
                    setattr(parent, attr, replacement)


def read_checkpoint(tensors: dict[str, TensorInfo]) -> Iterator[tuple[str, torch.Tensor]]:
    """The tensors, shard by shard, each read from the memory-mapped file only when it is asked for."""
    by_shard: dict[Path, list[str]] = {}
    for name, info in tensors.items():
        by_shard.setdefault(info.shard, []).append(name)
    for shard, names in sorted(by_shard.items()):
        with safe_open(str(shard), framework="pt", device="cpu") as f:
            for name in names:
                yield name, f.get_tensor(name)


def load_checkpoint(
    path: str | Path,
    config: DiffusionGemmaConfig,
    dtype: torch.dtype,
    mode: QuantMode,
    device: torch.device,
    check: Callable[[StreamingLoader, dict[str, TensorInfo]], None] | None = None,
) -> CodeDiffusionGemma:
    """A checkpoint folder's text model, loaded by ``StreamingLoader``; ``check`` sees it before any read."""
    loader = StreamingLoader(config, dtype, mode)
    tensors = {
        name: info for name, info in checkpoint_tensors(path).items() if not name.startswith(VISION_PREFIXES)
    }
    if check is not None:
        check(loader, tensors)
    model = loader.load(read_checkpoint(tensors), device)
    if (Path(path) / "generation_config.json").is_file():
        model.generation_config = type(model.generation_config).from_pretrained(path, local_files_only=True)
    return model
