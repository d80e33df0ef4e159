"""Base-model hints from free text (file names, titles) and from training metadata.

Tensor shapes are the authority; these only fill gaps shapes cannot close (a VAE, a pickle,
Pony vs. plain SDXL, Flux dev vs. schnell for a LoRA) and are kept deliberately narrow. The
rules themselves are the families' (Family.text_hints, arch_prefixes, base_from_version, base_from_flags), asked
through families.registry.
"""

from __future__ import annotations

from typing import Mapping

#: Metadata keys that name the model a LoRA/fine-tune was trained on (not the file's own title).
TRAINING_BASE_KEYS = ("ss_base_model_version", "ss_sd_model_name", "modelspec.architecture")
#: Keys that describe the file itself; only trusted for checkpoints (a LoRA titled "pony" may be
#: a My Little Pony character LoRA for plain SDXL).
TITLE_KEYS = ("modelspec.title", "ss_output_name")


def base_from_text(text: str | None) -> str | None:
    """First base-model id a file name or title names, or None."""
    if not text:
        return None
    from ..families import registry

    lowered = text.lower()
    for pattern, base in registry.text_hints():
        if pattern.search(lowered):
            return base
    return None


def base_from_metadata(metadata: Mapping[str, str]) -> str | None:
    """Base model declared by ModelSpec / kohya training metadata, or None."""
    from ..families import registry

    arch = str(metadata.get("modelspec.architecture", "")).lower()
    for prefix, base in registry.arch_prefixes():
        if arch.startswith(prefix):
            return base
    version = str(metadata.get("ss_base_model_version", "")).lower()
    if version:
        declared = registry.base_from_version(version)
        if declared is not None:
            return declared
    return registry.base_from_flags(metadata)  # kohya's ss_v2


def kind_from_metadata(metadata: Mapping[str, str]) -> str | None:
    """ModelSpec's adapter suffix (``.../lora``, ``.../textual-inversion``) as a kind."""
    arch = str(metadata.get("modelspec.architecture", "")).lower()
    if arch.endswith("/lora") or arch.endswith("/lycoris"):
        return "lora"
    if arch.endswith("/textual-inversion"):
        return "embedding"
    if "ss_network_module" in metadata:
        return "lora"
    return None


def says_pony(metadata: Mapping[str, str], name: str | None, trust_title: bool) -> bool:
    """Whether metadata (and, for checkpoints, the title or file name) says Pony Diffusion."""
    keys = TRAINING_BASE_KEYS + (TITLE_KEYS if trust_title else ())
    texts = [str(metadata.get(k, "")) for k in keys]
    if trust_title and name:
        texts.append(name)
    return any("pony" in t.lower() for t in texts)
