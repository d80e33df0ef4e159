"""Each naming family selects the scheduler diffusers' overview table names, and the image equals
plain diffusers with that scheduler (expected classes and flags written out here, independently)."""

from __future__ import annotations

import base64
import io

import diffusers
import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline
from PIL import Image

CASES = [
    ({"scheduler": "DPM++ 2M Karras"}, "DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    ({"sampler": "dpmpp_2m", "scheduler": "karras"}, "DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    ({"scheduler": "DPMSolverMultistepScheduler"}, "DPMSolverMultistepScheduler", {}),
    ({"scheduler": "Euler a"}, "EulerAncestralDiscreteScheduler", {}),
    ({"sampler": "euler_ancestral"}, "EulerAncestralDiscreteScheduler", {}),
    ({"scheduler": "Euler"}, "EulerDiscreteScheduler", {}),
    ({"scheduler": "Heun"}, "HeunDiscreteScheduler", {}),
    ({"scheduler": "DPM2"}, "KDPM2DiscreteScheduler", {}),
    ({"scheduler": "DPM2 a"}, "KDPM2AncestralDiscreteScheduler", {}),
    ({"scheduler": "LMS"}, "LMSDiscreteScheduler", {}),
    ({"scheduler": "DPM++ 2M SDE"}, "DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
    ({"scheduler": "DDIM"}, "DDIMScheduler", {}),
    ({"sampler": "uni_pc"}, "UniPCMultistepScheduler", {}),
    ({"scheduler": "DEIS"}, "DEISMultistepScheduler", {}),
    ({"scheduler": "LCM"}, "LCMScheduler", {}),
    ({"sampler": "euler", "scheduler": "exponential"}, "EulerDiscreteScheduler", {"use_exponential_sigmas": True, "timestep_spacing": "linspace"}),
]


@pytest.fixture(scope="module")
def sd15(models_dir):
    pipe = DiffusionPipeline.from_pretrained(str(models_dir / "tiny-sd15"), safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("names, cls, flags", CASES, ids=[str(c[0]) for c in CASES])
def test_scheduler_parity(worker, sd15, names, cls, flags):
    r = worker.call("inference.text2img", {"model_id": "tiny-sd15", "prompt": "s", "steps": 3, "seed": 8, **names}, timeout=120)
    assert r["success"], r
    assert r["data"]["parameters"]["scheduler"] == cls
    base = dict(sd15.scheduler.config)
    sd15.scheduler = getattr(diffusers, cls).from_config(base, **flags)
    try:
        exp = sd15(prompt="s", num_inference_steps=3, guidance_scale=7.0, generator=[torch.Generator("cpu").manual_seed(8)]).images[0]
    finally:
        sd15.scheduler = diffusers.PNDMScheduler.from_config(base)
    got = np.asarray(Image.open(io.BytesIO(base64.b64decode(r["data"]["images"][0]["base64"]))).convert("RGB"))
    assert np.array_equal(got, np.asarray(exp.convert("RGB")))


def test_unknown_scheduler_lists_accepted(worker):
    r = worker.call("inference.text2img", {"model_id": "tiny-sd15", "scheduler": "Turbo Magic"})
    assert r["error_code"] == "validation_error" and r["error_details"][0]["path"] == "data.scheduler"
    assert "DPM++ 2M Karras" in r["error"] or "accepted" in r["error"].lower()
    types = worker.call("inference.get_supported_types")["data"]
    assert {"text2img", "img2img", "inpainting"} <= set(types["supported_types"])
    assert "DPM++ 2M Karras" in types["schedulers"] and "euler_ancestral" in types["schedulers"]


def test_default_scheduler_is_the_models_own_after_another_ran(worker):
    req = {"model_id": "tiny-sd15", "steps": 3, "seed": 4}
    first = worker.call("inference.text2img", req, timeout=120)["data"]
    worker.call("inference.text2img", {**req, "scheduler": "DPM++ 2M"}, timeout=120)
    again = worker.call("inference.text2img", req, timeout=120)["data"]
    assert again["parameters"]["scheduler"] == first["parameters"]["scheduler"] == "PNDMScheduler"
    assert again["images"][0]["base64"] == first["images"][0]["base64"]


def test_no_flag_leaks_between_requests(worker):
    a = worker.call("inference.text2img", {"model_id": "tiny-sd15", "steps": 3, "seed": 4, "scheduler": "Euler"}, timeout=120)["data"]
    worker.call("inference.text2img", {"model_id": "tiny-sd15", "steps": 3, "seed": 4, "scheduler": "Euler Karras"}, timeout=120)
    b = worker.call("inference.text2img", {"model_id": "tiny-sd15", "steps": 3, "seed": 4, "scheduler": "Euler"}, timeout=120)["data"]
    assert a["images"][0]["base64"] == b["images"][0]["base64"]
    assert b["parameters"]["sampler_name"] == "Euler"
