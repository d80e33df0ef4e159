"""How a denoiser's weights are held in memory: the run's dtype, fp8 storage, or quantized at load.

`precision.storage_dtype` ("fp8_e4m3fn", "fp8_e5m2") keeps the UNet/transformer weights in fp8 and
casts each layer to the run's dtype just before it computes (diffusers' layerwise casting): about
half the bytes of bf16 for a small loss of quality, on any device. `precision.quantization` loads
the denoiser quantized (bitsandbytes NF4/int8 on CUDA, torchao int8 weight-only) when the library
is installed. Either way the cache holds that copy under its own key (the weights are changed for
good, so it is never shared with a full-precision copy), and its entry counts the bytes it really
takes, so the memory budgets see the saving.
"""

from __future__ import annotations

import importlib.util
from typing import Any

FULL = "full"
STORAGE_DTYPES = {"fp8_e4m3fn": "float8_e4m3fn", "fp8_e5m2": "float8_e5m2"}
#: quantization -> (python module it needs, pip package, needs CUDA)
QUANTIZATIONS: dict[str, tuple[str, str, bool]] = {
    "bnb_nf4": ("bitsandbytes", "bitsandbytes", True),
    "bnb_int8": ("bitsandbytes", "bitsandbytes", True),
    "torchao_int8wo": ("torchao", "torchao", False),
}


def held_as(dtype: str, weights: str) -> str:
    """The cache's dtype label of a component: "fp32", or "fp32:fp8_e4m3fn" for a changed copy (which
    never stands in for a full-precision one, so it is part of the cache key too)."""
    return dtype if weights == FULL else f"{dtype}:{weights}"


def weights_of(opts: Any) -> str:
    """The weight format a request's precision options ask for ("full", an fp8 name or a quantization)."""
    if getattr(opts, "quantization", "none") != "none":
        return str(opts.quantization)
    storage = getattr(opts, "storage_dtype", "auto")
    return FULL if storage == "auto" else str(storage)


def problems(opts: Any, device: str | None, model_format: str | None) -> list[dict[str, str]]:
    """What keeps the requested weight format from running here: [{path, message}]."""
    out: list[dict[str, str]] = []
    quant = getattr(opts, "quantization", "none")
    storage = getattr(opts, "storage_dtype", "auto")
    if quant != "none" and storage != "auto":
        out.append(_problem("storage_dtype", "choose storage_dtype or quantization, not both (both change how the weights are stored)"))
    which = "quantization" if quant != "none" else "storage_dtype"
    if weights_of(opts) != FULL and model_format == "gguf":
        out.append(_problem(which, "this model's transformer is a GGUF file, quantized already; leave storage_dtype and quantization unset"))
    elif weights_of(opts) != FULL and model_format not in (None, "diffusers"):
        out.append(_problem(which, "needs a diffusers folder model; this model is one file (convert it with model.optimize_model or use a folder)"))
    if quant != "none":
        module, package, cuda_only = QUANTIZATIONS[quant]
        if importlib.util.find_spec(module) is None:
            out.append(_problem("quantization", f"{quant} needs the {package} package, which is not installed in this worker (pip install {package})"))
        elif cuda_only and device is not None and not device.startswith("cuda"):
            out.append(_problem("quantization", f"{quant} needs a CUDA device; this request runs on {device}"))
    return out


def _problem(field: str, message: str) -> dict[str, str]:
    return {"path": f"precision.{field}", "message": message}


def load_kwargs(weights: str, torch: Any, compute_dtype: Any) -> dict[str, Any]:
    """Extra from_pretrained arguments of the weight format (a quantization config, or nothing)."""
    if weights not in QUANTIZATIONS:
        return {}
    import diffusers

    if weights == "bnb_nf4":
        config = diffusers.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute_dtype)
    elif weights == "bnb_int8":
        config = diffusers.BitsAndBytesConfig(load_in_8bit=True)
    else:  # diffusers >= 0.42 takes torchao's config object (the "int8wo" string is gone)
        from torchao.quantization import Int8WeightOnlyConfig

        config = diffusers.TorchAoConfig(Int8WeightOnlyConfig())
    return {"quantization_config": config}


def apply(model: Any, weights: str, torch: Any, compute_dtype: Any) -> None:
    """Put fp8 storage on a loaded denoiser (quantized formats were applied by from_pretrained)."""
    if weights in STORAGE_DTYPES:
        model.enable_layerwise_casting(storage_dtype=getattr(torch, STORAGE_DTYPES[weights]), compute_dtype=compute_dtype)
