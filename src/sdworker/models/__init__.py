"""Model file inspection without loading weights: header reading, kind/base detection, hashes, sidecars.

Nothing here imports torch; safetensors headers are parsed by hand and pickles are never opened.
"""

from .detect import BASE_MODELS, KINDS, Detection, detect, detect_diffusers_folder, detect_file, guess_from_path
from .hashes import HashCache, a1111_model_hash, addnet_hash, lora_shorthash, sha256_file, shorthash
from .info import UnsupportedModelFile, inspect_path, parse_metadata
from .safetensors_header import HeaderError, SafetensorsHeader, TensorInfo, parse_header_bytes, read_header
from .sidecar import SidecarError, sidecar_path

__all__ = [
    "BASE_MODELS",
    "KINDS",
    "Detection",
    "HashCache",
    "HeaderError",
    "SafetensorsHeader",
    "SidecarError",
    "TensorInfo",
    "UnsupportedModelFile",
    "a1111_model_hash",
    "addnet_hash",
    "detect",
    "detect_diffusers_folder",
    "detect_file",
    "guess_from_path",
    "inspect_path",
    "lora_shorthash",
    "parse_header_bytes",
    "parse_metadata",
    "read_header",
    "sha256_file",
    "shorthash",
    "sidecar_path",
]
