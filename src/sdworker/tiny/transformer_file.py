"""A tiny model's transformer as one file: .safetensors, or .gguf quantized like city96's files.

Real Flux / HiDream / Wan transformers are shared as one file (managers.transformer_files); this
writes the tiny ones the same way, from a tiny diffusers folder, so tests load them through the
very code real files take. GGUF files get Q8_0 for every 2-D weight whose rows split into 32-value
blocks (Q8_0's block) and keep the rest (biases, norms, odd widths) in F32, which is what the
public GGUF conversions do for small tensors. `prefix` writes ComfyUI's "model.diffusion_model."
key prefix, which diffusers' single-file loader strips.
"""

from __future__ import annotations

from pathlib import Path

ORIGINAL_PREFIX = "model.diffusion_model."
_Q8_BLOCK = 32


def _state(source: Path, component: str) -> dict:
    """A model folder's `component` weights, or a transformer .safetensors file's."""
    from safetensors.torch import load_file

    files = [source] if source.is_file() else sorted((source / component).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{source}/{component} has no .safetensors weights")
    state: dict = {}
    for f in files:
        state.update(load_file(str(f)))
    return state


def save_transformer_file(source: str | Path, out: str | Path, prefix: str = "", component: str = "transformer") -> Path:
    """Write the transformer of `source` (a tiny model folder, or a transformer .safetensors file) to
    `out` (.safetensors or .gguf, by its suffix); `component` "transformer_2": Wan 2.2's low-noise expert."""
    source, out = Path(source), Path(out)
    state = {prefix + k: v for k, v in _state(source, component).items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".gguf":
        from ..models.detect import detect

        family = detect({k: tuple(v.shape) for k, v in state.items()}).details.get("family", "unknown")
        _write_gguf(state, out, family)  # general.architecture, as the public files set it ("flux", "wan", ...)
    elif out.suffix.lower() == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(out))
    else:
        raise ValueError(f"{out.name}: write a .safetensors or a .gguf file")
    return out


def _write_gguf(state: dict, out: Path, arch: str) -> None:
    import gguf

    writer = gguf.GGUFWriter(str(out), arch)
    for name, tensor in state.items():
        values = tensor.float().numpy()
        if values.ndim == 2 and values.shape[-1] % _Q8_BLOCK == 0:
            packed = gguf.quants.quantize(values, gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(name, packed, raw_shape=packed.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(name, values)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
