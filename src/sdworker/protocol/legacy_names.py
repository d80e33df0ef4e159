"""The legacy action names and inference types a host sends, and the methods they mean."""

from __future__ import annotations

import re
from typing import Any

from ..errors import ValidationFailed

# Legacy action -> method. execute_inference picks its method from inference_type.
LEGACY_ACTIONS: dict[str, str] = {
    "get_all_capabilities": "inference.get_capabilities",
    "get_device_capabilities": "inference.get_device_capabilities",
    "validate_request": "inference.validate_request",
    "get_supported_types": "inference.get_supported_types",
    "get_device_supported_types": "inference.get_device_supported_types",
    "get_session_status": "inference.get_session_status",
    "cancel_session": "inference.cancel_session",
    "get_session_logs": "inference.get_session_logs",
    "get_session_performance": "inference.get_session_performance",
    "get_session_resources": "inference.get_session_resources",
    "get_active_sessions": "inference.get_active_sessions",
    "execute_controlnet": "inference.controlnet",
    "batch_process": "inference.batch_process",
    "get_session_details": "inference.get_session_status",
    "get_comprehensive_status": "inference.get_session_status",
}

# inference_type (case-insensitive, punctuation ignored) -> generation method.
INFERENCE_TYPES: dict[str, str] = {
    "text2img": "inference.text2img",
    "txt2img": "inference.text2img",
    "texttoimage": "inference.text2img",
    "imagegeneration": "inference.text2img",
    "img2img": "inference.img2img",
    "imagetoimage": "inference.img2img",
    "inpainting": "inference.inpainting",
    "inpaint": "inference.inpainting",
    "controlnet": "inference.controlnet",
    "upscale": "inference.upscale",
    "upscaling": "inference.upscale",
    "lora": "inference.lora",
    "text2video": "inference.text2video",
    "texttovideo": "inference.text2video",
    "img2video": "inference.img2video",
    "imagetovideo": "inference.img2video",
}

_NON_ALNUM = re.compile(r"[^a-z0-9]")


def map_inference_type(value: Any) -> str:
    key = _NON_ALNUM.sub("", str(value).lower())
    method = INFERENCE_TYPES.get(key)
    if method is None:
        accepted = sorted(INFERENCE_TYPES)
        raise ValidationFailed(
            f"inference_type {value!r} is not known; use one of {', '.join(accepted)}",
            [{"path": "inference_type", "message": f"unknown inference type {value!r}"}],
            rooted=True,  # an envelope field of the legacy form, named as sent
        )
    return method
