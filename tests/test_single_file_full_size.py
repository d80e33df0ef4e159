"""Full-size SD 1.5 and SDXL single files (random weights) load and generate with no tokenizer anywhere.

Too heavy for CI (SDXL: a 7 GB file, ~15 GB of RAM while loading): runs only with
``SDWORKER_SLOW=1``. The files are written in the original civitai key layout from the
packaged real configs, tensor by tensor, so writing one needs no more memory than its largest
tensor. The worker gets an empty ``HF_HOME``, the Hub switched off and no tokenizer folder:
the tokenizers must come from the packaged CLIP vocabulary.
``SDWORKER_SLOW_DTYPE`` (default fp16) is the dtype of the file and of the run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import Worker

pytestmark = pytest.mark.skipif(os.environ.get("SDWORKER_SLOW") != "1", reason="set SDWORKER_SLOW=1 (10+ GB of disk and RAM)")

DTYPE = os.environ.get("SDWORKER_SLOW_DTYPE", "fp16")
_ST_DTYPE = {"fp16": "F16", "bf16": "BF16", "fp32": "F32"}


def _original_shapes(config_set: str) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a real-size original-layout checkpoint, from meta-device models (no memory)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from sdworker.managers.single_file import config_set_dir
    from sdworker.tiny.single_file import pipeline_to_original

    folder = config_set_dir(config_set)

    class Parts:
        text_encoder_2 = None

    parts = Parts()
    with torch.device("meta"):
        parts.unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet"))
        parts.vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae"))
        parts.text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder"))
        if (folder / "text_encoder_2").is_dir():
            parts.text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(folder / "text_encoder_2"))
    return {k: tuple(v.shape) for k, v in pipeline_to_original(parts).items()}


def _random(key: str, shape: tuple[int, ...], seed: int):
    """Small random weights; norms start at 1/0 so activations stay finite in half precision."""
    import torch

    if len(shape) == 1 and ("norm" in key or ".ln_" in key or key.endswith(("ln_final.weight", "ln_final.bias"))):
        return torch.ones(shape) if key.endswith("weight") else torch.zeros(shape)
    if key.endswith("bias"):
        return torch.zeros(shape)
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 0.02


def write_random_checkpoint(config_set: str, path: Path, dtype: str = DTYPE) -> Path:
    """A real-size original-layout .safetensors of random weights, written tensor by tensor."""
    import torch

    torch_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[dtype]
    size = torch.tensor([], dtype=torch_dtype).element_size()
    shapes = _original_shapes(config_set)
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for key in sorted(shapes):
        n = size
        for d in shapes[key]:
            n *= d
        header[key] = {"dtype": _ST_DTYPE[dtype], "shape": list(shapes[key]), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as fh:
        fh.write(len(raw).to_bytes(8, "little") + raw)
        for i, key in enumerate(sorted(shapes)):
            t = _random(key, shapes[key], i).to(torch_dtype).contiguous()
            fh.write(t.view(torch.uint8).numpy().tobytes())
    return path


@pytest.mark.parametrize("config_set,base,gib", [("sd15", "sd_1_5", 6), ("sdxl", "sdxl", 16)])
def test_full_size_single_file_needs_no_tokenizer_files(config_set: str, base: str, gib: int, tmp_path: Path) -> None:
    import psutil

    if psutil.virtual_memory().available < gib * 2**30:
        pytest.skip(f"needs {gib} GiB of free RAM")
    models, hf_home = tmp_path / "models", tmp_path / "hf-home"
    models.mkdir()
    hf_home.mkdir()
    write_random_checkpoint(config_set, models / f"full-{config_set}.safetensors")
    env = {"HF_HOME": str(hf_home), "HF_HUB_CACHE": str(hf_home / "hub"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    w = Worker(["--models-dir", str(models), "--output-dir", str(tmp_path / "out")], env=env)
    try:
        item = w.call("model.get_model_info", {"model_id": f"full-{config_set}"})["data"]
        assert item["base_model"] == base, item
        req = {"model_id": f"full-{config_set}", "prompt": "a photo of a cat", "steps": 1, "width": 64, "height": 64,
               "seed": 1, "precision": {"dtype": DTYPE}}
        r = w.call("inference.text2img", req, timeout=3600)
        assert r["success"], (r, w.stderr()[-3000:])
        assert (r["data"]["images"][0]["width"], r["data"]["images"][0]["height"]) == (64, 64)
        parsed = w.call("inference.parse_prompt", {"prompt": "a photo of a cat", "model_id": f"full-{config_set}"})["data"]
        names = ["tokenizer", "tokenizer_2"] if config_set == "sdxl" else ["tokenizer"]
        assert parsed["token_counts"] == {n: 5 for n in names}  # CLIP: a, photo, of, a, cat
        assert not list(hf_home.rglob("*.json")) and not list(models.rglob("*.json"))
    finally:
        w.kill()
