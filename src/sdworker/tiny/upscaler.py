"""A tiny random-weight upscaler file in a real architecture, for tests and demos (no downloads).

The architecture is Real-ESRGAN's SRVGGNetCompact ("realesr-general-x4v3" and friends): a
3x3 conv, then `num_conv` (conv, PReLU) pairs, a last conv to 3 * scale^2 channels, a pixel
shuffle, plus the nearest-upsampled input. Its keys are the ones the released files use
(`body.N.weight`, `body.N.bias`), so spandrel detects it as "Compact" and the catalog lists it
as kind upscaler, like a downloaded one. With 8 features and 2 convs it holds ~2,500 weights.
"""

from __future__ import annotations

from pathlib import Path


def make_tiny_esrgan(path: str | Path, scale: int = 2, num_feat: int = 8, num_conv: int = 2, seed: int = 0) -> Path:
    """Write a random SRVGGNetCompact upscaler as .safetensors at `path`; returns the path."""
    import torch
    from safetensors.torch import save_file

    if scale not in (1, 2, 3, 4, 8):
        raise ValueError(f"scale {scale} is not one the architecture is trained at (1, 2, 3, 4, 8)")
    gen = torch.Generator("cpu").manual_seed(seed)

    def conv(cin: int, cout: int, gain: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        bound = gain / (cin * 9) ** 0.5  # PyTorch's default init range for a 3x3 conv
        w = (torch.rand(cout, cin, 3, 3, generator=gen) * 2 - 1) * bound
        b = (torch.rand(cout, generator=gen) * 2 - 1) * bound
        return w, b

    state: dict[str, torch.Tensor] = {}
    index = 0
    cin = 3
    for _ in range(num_conv + 1):  # the first conv, then num_conv body convs, each followed by a PReLU
        state[f"body.{index}.weight"], state[f"body.{index}.bias"] = conv(cin, num_feat)
        state[f"body.{index + 1}.weight"] = torch.full((num_feat,), 0.25)  # PReLU's default slope
        index += 2
        cin = num_feat
    # The last conv is kept small, so the output is the upscaled input plus a faint random residual.
    state[f"body.{index}.weight"], state[f"body.{index}.bias"] = conv(num_feat, 3 * scale * scale, gain=0.1)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(out), metadata={"sdworker.tiny": f"compact-x{scale}"})
    return out
