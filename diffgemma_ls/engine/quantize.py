"""Weight-only bitsandbytes quantization of DiffusionGemma's text model, experts included.

Why not ``BitsAndBytesConfig`` (measured in ``shared/notes/quantization.md``): every text weight of
the encoder is tied to the decoder's, transformers never converts tied keys, and the MoE experts are
packed 3-D tensors rather than ``nn.Linear``. Loading with it quantizes the vision tower and nothing
of the text model, where nearly all parameters live. :func:`quantize_model` instead quantizes the
loaded model in place:

- every text ``nn.Linear`` (attention q/k/v/o, dense MLP, the decoder-only self-conditioning MLP) is
  replaced by one :class:`QuantizedLinear`, and the *same module object* goes into the encoder and the
  decoder wherever the two shared a weight, so each shared weight is quantized and stored once;
- every ``DiffusionGemmaTextExperts`` is replaced by one shared :class:`QuantizedExperts`, which
  quantizes each expert's matrices and dequantizes only the experts the router picked.

Stays in the load dtype, on purpose:

- the token embedding: it is tied to ``lm_head`` and the decoder's self-conditioning reads
  ``embed_tokens.weight`` as a dense matrix, so it must stay a plain float tensor;
- norms, router ``scale``/``per_expert_scale``, ``layer_scalar``: a few thousand values per layer;
- the router projection (``hidden x num_experts``, ~0.05% of the real model): its output goes
  through a top-k, a discontinuous choice that quantization noise would flip, for no memory gain;
- the vision tower: not text and never used for code completion (the loader may drop it instead).

Formats, both from bitsandbytes' functional API (``bitsandbytes.functional``), which has CPU
kernels as well as CUDA/XPU ones, so nothing here depends on the device:

- ``4bit``: NF4 in blocks of 64 with one fp32 absmax per block, i.e. 4.5 bits per weight
  (``quantize_4bit``/``dequantize_4bit``). No double quantization: it would save 0.375 bit per
  weight but its second-level blocks would straddle expert boundaries, so one expert could no
  longer be dequantized on its own.
- ``8bit``: LLM.int8()'s weight format, int8 with one fp32 absmax per output row
  (``int8_vectorwise_quant``/``int8_vectorwise_dequant``): 8 bits plus 32 bits per row.

Why small modules on that API rather than ``bnb.nn.Linear4bit``/``Linear8bitLt``: those keep their
quantization state (absmax, SCB) in Python attributes of the parameter or of a ``MatmulLtState``,
which ``Module.to``/``state_dict``/``named_buffers`` do not see, and ``Int8Params`` only quantizes
when moved *from* the CPU, so a model already on CUDA would silently stay unquantized. Here the
quantized weights and their scales are ordinary buffers, moved and counted like anything else, and
the packed experts (which have no bitsandbytes module at all) use the same layout.

The quantization is weight-only: each forward dequantizes the weight into the activation dtype and
runs a normal matmul, so activations keep full precision (``Linear8bitLt`` would quantize them to
int8 too). It saves memory, not compute: expect forwards to be somewhat slower than unquantized.
The experts loop is data-dependent (like transformers' eager experts), so the quantized model is not
``torch.compile(fullgraph=True)``-able, which only generate's static-cache path asks for.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Literal

import torch
from torch import nn
from transformers import DiffusionGemmaForBlockDiffusion
from transformers.models.diffusion_gemma.modeling_diffusion_gemma import (
    DiffusionGemmaTextExperts,
    DiffusionGemmaTextRouter,
)

if TYPE_CHECKING:
    import bitsandbytes.functional as bnbf

QuantMode = Literal["none", "8bit", "4bit"]
QUANT_MODES: tuple[QuantMode, ...] = ("none", "8bit", "4bit")

NF4_BLOCKSIZE = 64


def _quantize_matrix(weight: torch.Tensor, mode: QuantMode) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize a 2-D weight on its own device; return (packed data, fp32 scales)."""
    import bitsandbytes.functional as bnbf  # here, not at import: ~1 s that unquantized serving skips

    if mode == "4bit":
        data, state = bnbf.quantize_4bit(
            weight.contiguous(), blocksize=NF4_BLOCKSIZE, compress_statistics=False, quant_type="nf4"
        )
        return data, state.absmax
    # bitsandbytes' CUDA kernel takes fp16 only (Int8Params does the same cast); int8 has less
    # precision than fp16 anyway.
    data, scale, _ = bnbf.int8_vectorwise_quant(weight.to(torch.float16))
    return data, scale


def _dequantize_matrix(
    data: torch.Tensor, scale: torch.Tensor, shape: tuple[int, int], mode: QuantMode, dtype: torch.dtype
) -> torch.Tensor:
    """Inverse of :func:`_quantize_matrix`, straight into the compute dtype."""
    import bitsandbytes.functional as bnbf

    # A later model.to(dtype) also casts the fp32 scales; the CUDA kernels read them as fp32.
    scale = scale.float()
    if mode == "4bit":
        # A QuantState, not dequantize_4bit(absmax=, out=): the `out` variant has no CPU kernel in
        # bitsandbytes 0.50.
        state = bnbf.QuantState(
            absmax=scale, shape=torch.Size(shape), dtype=dtype, blocksize=NF4_BLOCKSIZE, quant_type="nf4"
        )
        return bnbf.dequantize_4bit(data, quant_state=state)
    return bnbf.int8_vectorwise_dequant(data, scale).to(dtype)


class QuantizedLinear(nn.Module):
    """``nn.Linear`` with an NF4 or int8 weight held in buffers; the bias stays in full precision."""

    def __init__(
        self,
        weight_data: torch.Tensor,
        weight_scale: torch.Tensor,
        in_features: int,
        out_features: int,
        mode: QuantMode,
        bias: nn.Parameter | None,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.mode = mode
        self.register_buffer("weight_data", weight_data)
        self.register_buffer("weight_scale", weight_scale)
        self.bias = bias

    def dequantized_weight(self, dtype: torch.dtype) -> torch.Tensor:
        return _dequantize_matrix(
            self.weight_data, self.weight_scale, (self.out_features, self.in_features), self.mode, dtype
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return nn.functional.linear(x, self.dequantized_weight(x.dtype), bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, mode={self.mode}"


class QuantizedExperts(nn.Module):
    """Drop-in for ``DiffusionGemmaTextExperts`` with each expert's matrices quantized separately.

    Buffers ``{gate_up_proj,down_proj}_{data,scale}`` stack the per-expert quantized data, so the
    forward dequantizes exactly the experts that the router selected for some token.
    """

    def __init__(
        self, experts: DiffusionGemmaTextExperts, mode: QuantMode, device: torch.device | None = None
    ) -> None:
        super().__init__()
        self.num_experts = experts.num_experts
        self.mode = mode
        self.act_fn = experts.act_fn
        self.gate_up_shape = (2 * experts.intermediate_dim, experts.hidden_dim)
        self.down_shape = (experts.hidden_dim, experts.intermediate_dim)
        for name in ("gate_up_proj", "down_proj"):
            packed = getattr(experts, name).detach()
            # One expert at a time bounds the temporary full-precision copies to one expert's size.
            pieces = [_quantize_matrix(packed[e].to(device), mode) for e in range(self.num_experts)]
            self.register_buffer(f"{name}_data", torch.stack([data for data, _ in pieces]))
            self.register_buffer(f"{name}_scale", torch.stack([scale for _, scale in pieces]))

    def expert_weight(self, name: Literal["gate_up_proj", "down_proj"], expert: int, dtype: torch.dtype):
        shape = self.gate_up_shape if name == "gate_up_proj" else self.down_shape
        data = getattr(self, f"{name}_data")[expert]
        scale = getattr(self, f"{name}_scale")[expert]
        return _dequantize_matrix(data, scale, shape, self.mode, dtype)

    def forward(
        self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor
    ) -> torch.Tensor:
        """Same maths as transformers' eager experts forward: weighted sum over each token's top-k."""
        final_hidden_states = torch.zeros_like(hidden_states)
        dtype = hidden_states.dtype
        for expert in torch.unique(top_k_index).tolist():
            token_idx, top_k_pos = torch.where(top_k_index == expert)
            current = hidden_states[token_idx]
            gate, up = nn.functional.linear(current, self.expert_weight("gate_up_proj", expert, dtype)).chunk(
                2, dim=-1
            )
            current = nn.functional.linear(
                self.act_fn(gate) * up, self.expert_weight("down_proj", expert, dtype)
            )
            current = current * top_k_weights[token_idx, top_k_pos, None]
            final_hidden_states.index_add_(0, token_idx, current.to(dtype))
        return final_hidden_states

    def extra_repr(self) -> str:
        return f"num_experts={self.num_experts}, mode={self.mode}"


def is_quantization_target(parent: nn.Module, child: nn.Module) -> bool:
    """Whether ``child`` (a module of the text model) is stored quantized: see the module docstring."""
    if isinstance(child, DiffusionGemmaTextExperts):
        return True
    return type(child) is nn.Linear and not isinstance(parent, DiffusionGemmaTextRouter)


def quantized_module(child: nn.Module, mode: QuantMode, device: torch.device | None) -> nn.Module:
    """The quantized replacement of a target module, quantized on ``device`` (or where its weights are)."""
    if isinstance(child, DiffusionGemmaTextExperts):
        return QuantizedExperts(child, mode, device)
    data, scale = _quantize_matrix(child.weight.detach().to(device), mode)
    return QuantizedLinear(data, scale, child.in_features, child.out_features, mode, child.bias)


def quantized_bytes(shape: tuple[int, ...], mode: QuantMode) -> int:
    """Bytes a weight of ``shape`` takes once quantized (data and scales), for the loader's memory check."""
    elements = math.prod(shape)
    if mode == "4bit":
        return elements // 2 + 4 * math.ceil(elements / NF4_BLOCKSIZE)
    return elements + 4 * (elements // shape[-1])  # int8, one fp32 scale per row


def _text_roots(model: DiffusionGemmaForBlockDiffusion) -> tuple[nn.Module, nn.Module]:
    """The text encoder and the decoder: the modules whose weights are (mostly) shared."""
    return model.model.encoder.language_model, model.model.decoder


def quantize_model(
    model: DiffusionGemmaForBlockDiffusion, mode: QuantMode, *, device: torch.device | str | None = None
) -> None:
    """Quantize the text model of a loaded DiffusionGemma in place (see the module docstring).

    Without ``device``, each weight is quantized on the device it is on. With it, each weight is
    copied there one at a time, quantized there, and the whole model ends up there: a model in CPU
    RAM goes to a GPU too small for its full-precision weights (26B-A4B: 50 GB in bf16, ~16 GB in
    4-bit), and is quantized by the GPU's kernels: bitsandbytes 0.50 has no native CPU kernel for
    4-bit quantization, and its PyTorch fallback does ~14M weights/s per core (half an hour for
    26B-A4B). The full-precision originals are freed layer by layer as their modules are replaced.
    """
    if mode not in QUANT_MODES:
        raise ValueError(f"mode must be one of {', '.join(QUANT_MODES)}, got {mode!r}")
    if mode == "none":
        if device is not None:
            model.to(device)
        return
    target = torch.device(device) if device is not None else None
    encoder, decoder = _text_roots(model)
    modules = [*encoder.modules(), *decoder.modules()]
    if any(isinstance(m, QuantizedLinear | QuantizedExperts) for m in modules):
        raise RuntimeError("the model is already quantized")
    if any(p.is_meta for m in modules for p in m.parameters(recurse=False)):
        raise ValueError("cannot quantize weights on the meta device: load the model first")
    del modules  # it would keep every full-precision weight alive to the end

    # Keyed by the ids of the original (shared) parameters, so that the encoder and the decoder get
    # the same replacement wherever they shared weights, and separate ones where they did not. The
    # ids cannot be reused while we look them up: all those parameters existed together at the start.
    replacements: dict[tuple[int, ...], nn.Module] = {}

    def replacement(parent: nn.Module, child: nn.Module) -> nn.Module | None:
        if not is_quantization_target(parent, child):
            return None
        key = tuple(id(p) for p in child.parameters(recurse=False))
        if key not in replacements:
            replacements[key] = quantized_module(child, mode, target)
        return replacements[key]

    def convert(module: nn.Module) -> None:
        for name, child in list(module.named_children()):
            new = replacement(module, child)
            if new is not None:
                setattr(module, name, new)
            else:
                convert(child)

    with torch.no_grad():
        # Layer i of the encoder and of the decoder together: a shared full-precision weight is freed
        # once both of its modules are replaced, so peak memory stays near the unquantized model's.
        for encoder_layer, decoder_layer in zip(encoder.layers, decoder.layers, strict=True):
            convert(encoder_layer)
            convert(decoder_layer)
        convert(encoder)  # what is outside the layers (the decoder's self-conditioning)
        convert(decoder)
    if target is not None:
        model.to(target)


@dataclass(frozen=True)
class ModelReport:
    """What a model holds, for logs and the server's status; see :func:`describe_model`."""

    quantization: str
    params_by_dtype: dict[str, int]
    text_weight_elements: int
    quantized_elements: int
    quantized_fraction: float
    quantized_weight_bytes: int
    footprint_bytes: int

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class _TextWeight:
    """One logical weight: its element count, whether it is stored quantized, and its storage."""

    elements: int
    quantized: bool
    tensors: tuple[torch.Tensor, ...]


class _NoSuchLayer(nn.Module):
    """Stands for bitsandbytes' own layers while nothing has imported bitsandbytes: no module is one."""


def _bnb_layers() -> tuple[type[nn.Module], type[nn.Module]]:
    """``bnb.nn.Linear4bit`` and ``Linear8bitLt`` if loaded (a pre-quantized checkpoint loads them)."""
    bnb = sys.modules.get("bitsandbytes")
    return (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt) if bnb is not None else (_NoSuchLayer, _NoSuchLayer)


def _quant_state_tensors(state: bnbf.QuantState | None) -> Iterator[torch.Tensor]:
    """The tensors a bitsandbytes 4-bit QuantState keeps outside the module's buffers."""
    if state is None:
        return
    for tensor in (state.absmax, state.code, state.offset):
        if isinstance(tensor, torch.Tensor):
            yield tensor
    yield from _quant_state_tensors(state.state2)


def _bnb_extra_tensors(module: nn.Module) -> Iterator[torch.Tensor]:
    """Quantization state that bitsandbytes modules hide from ``named_buffers``."""
    linear4, linear8 = _bnb_layers()
    if isinstance(module, linear4):
        yield from _quant_state_tensors(getattr(module.weight, "quant_state", None))
    elif isinstance(module, linear8):
        for tensor in (getattr(module.weight, "SCB", None), module.state.SCB):
            if tensor is not None:
                yield tensor


def _module_weights(module: nn.Module) -> Iterator[_TextWeight]:
    """The logical weights directly owned by ``module`` (not by its children)."""
    linear4, linear8 = _bnb_layers()
    if isinstance(module, QuantizedLinear):
        yield _TextWeight(
            module.in_features * module.out_features, True, (module.weight_data, module.weight_scale)
        )
    elif isinstance(module, QuantizedExperts):
        for name, shape in (("gate_up_proj", module.gate_up_shape), ("down_proj", module.down_shape)):
            tensors = (getattr(module, f"{name}_data"), getattr(module, f"{name}_scale"))
            yield _TextWeight(module.num_experts * math.prod(shape), True, tensors)
    elif isinstance(module, linear4) and getattr(module.weight, "quant_state", None) is not None:
        elements = math.prod(module.weight.quant_state.shape)
        yield _TextWeight(elements, True, (module.weight, *_bnb_extra_tensors(module)))
    elif isinstance(module, linear8) and module.weight.dtype == torch.int8:
        yield _TextWeight(module.weight.numel(), True, (module.weight, *_bnb_extra_tensors(module)))
    for name, param in module.named_parameters(recurse=False):
        if not (name == "weight" and isinstance(module, linear4 | linear8)):
            yield _TextWeight(param.numel(), False, (param,))


def _storage_key(tensor: torch.Tensor) -> tuple[object, ...]:
    # Meta tensors all report data_ptr 0; they are not resident, so tell them apart by identity.
    if tensor.is_meta:
        return ("meta", id(tensor))
    return (tensor.device, tensor.untyped_storage().data_ptr())


def _tensor_key(tensor: torch.Tensor) -> tuple[object, ...]:
    return (*_storage_key(tensor), tensor.storage_offset(), tensor.dtype, tensor.numel())


def _all_tensors(model: nn.Module) -> Iterator[torch.Tensor]:
    yield from model.parameters()
    yield from model.buffers()
    for module in model.modules():
        yield from _bnb_extra_tensors(module)


def _quantization_label(model: nn.Module) -> str:
    linear4, linear8 = _bnb_layers()
    labels = set()
    for module in model.modules():
        if isinstance(module, QuantizedLinear | QuantizedExperts):
            labels.add(module.mode)
        elif isinstance(module, linear4):
            labels.add("bnb-4bit")
        elif isinstance(module, linear8):
            labels.add("bnb-8bit")
    return "+".join(sorted(labels)) or "none"


def describe_model(model: DiffusionGemmaForBlockDiffusion) -> ModelReport:
    """Report what is stored, so that "quantized" is measured rather than assumed.

    - ``params_by_dtype``: stored elements of all parameters and buffers (where the quantized
      weights live) by dtype, each tensor once; packed NF4 holds two weights per ``uint8``.
    - ``text_weight_elements``: logical elements of the text model's weights (parameters and
      quantized weights of the encoder's text model and the decoder, experts included, embeddings
      excluded), a weight shared by encoder and decoder counted once.
    - ``quantized_fraction``: ``quantized_elements / text_weight_elements``, the share of those
      stored in a 4- or 8-bit format (ours or bitsandbytes' modules).
    - ``quantized_weight_bytes``: bytes of the quantized weights' storage plus their scales.
    - ``footprint_bytes``: bytes resident for every parameter, buffer and bitsandbytes quant state
      of the whole model, each storage counted once.
    """
    weights: dict[tuple[object, ...], _TextWeight] = {}
    seen_modules: set[int] = set()
    for root in _text_roots(model):
        for module in root.modules():
            if id(module) in seen_modules or isinstance(module, nn.Embedding):
                continue
            seen_modules.add(id(module))
            for weight in _module_weights(module):
                weights.setdefault(_tensor_key(weight.tensors[0]), weight)
    text_elements = sum(w.elements for w in weights.values())
    quantized = [w for w in weights.values() if w.quantized]
    quantized_elements = sum(w.elements for w in quantized)
    quantized_storages = {_storage_key(t): t for w in quantized for t in w.tensors if not t.is_meta}

    by_dtype: dict[str, int] = {}
    storages: dict[tuple[object, ...], int] = {}
    for tensor in {_tensor_key(t): t for t in _all_tensors(model)}.values():
        dtype = str(tensor.dtype).removeprefix("torch.")
        by_dtype[dtype] = by_dtype.get(dtype, 0) + tensor.numel()
        if not tensor.is_meta:
            storages[_storage_key(tensor)] = tensor.untyped_storage().nbytes()

    return ModelReport(
        quantization=_quantization_label(model),
        params_by_dtype=dict(sorted(by_dtype.items())),
        text_weight_elements=text_elements,
        quantized_elements=quantized_elements,
        quantized_fraction=quantized_elements / text_elements if text_elements else 0.0,
        quantized_weight_bytes=sum(t.untyped_storage().nbytes() for t in quantized_storages.values()),
        footprint_bytes=sum(storages.values()),
    )
