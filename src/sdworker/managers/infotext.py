"""A1111's infotext (the "parameters" text of a saved image) and the file hashes it names.

Written as A1111's ``create_infotext`` writes it, so that A1111's PNG Info, sd-parsers and
Civitai read it: the prompt, ``Negative prompt: …`` when there is one, then one line of
``Key: value`` pairs joined by ", ", each value quoted as A1111's ``quote()`` quotes it (a value
holding a comma, a colon or a newline becomes a JSON string). The prompt is the user's as sent:
their own words for textual-inversion triggers (never the worker's private tokens), their own
``<lora:…>`` tags, after one ``<lora:id:weight>`` tag for each LoRA of ``data.loras`` (A1111 knows
LoRAs only as prompt tags). Hashes are A1111's: ``Model hash`` and ``VAE hash`` the first 10 hex
digits of the file's SHA-256, ``Lora hashes`` the first 12 of the kohya "addnet" hash of a
.safetensors LoRA (SHA-256 for other files), ``TI hashes`` the first 12 of the embedding file's
SHA-256. Folders (diffusers layouts) have no A1111 hash and get none.

A NUL character is removed from the infotext: PNG forbids it in text chunks, and readers of the
UTF-16 EXIF comment stop at it. Everything else is kept as written.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..models.hashes import HashCache

if TYPE_CHECKING:
    from .adapters import PlannedLoRA
    from .embeddings import Triggered

log = logging.getLogger(__name__)


def quote(value: Any) -> str:
    """A1111's ``infotext_utils.quote``: a value with ',', ':' or a newline becomes a JSON string."""
    text = fmt(value)
    if "," not in text and "\n" not in text and ":" not in text:
        return text
    return json.dumps(text, ensure_ascii=False)


def fmt(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _alias(name: str) -> str:
    """A1111 drops ':' and ',' from a LoRA / embedding name in its hash lists."""
    return name.replace(":", "").replace(",", "")


def prompt_with_loras(prompt: str, loras: Sequence[dict[str, Any]]) -> str:
    """A ``<lora:id:weight>`` tag for each LoRA the request gave in ``data.loras``, then the prompt.

    In front: the worker applies data.loras before the prompt's own tags, so the infotext's prompt
    sent back alone applies them in the same order (the same image, to the last bit).
    """
    tags = [f"<lora:{lr['model_id']}:{fmt(float(lr['weight']))}>" for lr in loras if lr.get("source") == "request"]
    return " ".join(t for t in (*tags, prompt) if t)


def build(p: dict[str, Any]) -> str:
    """The infotext of one image from its result ``parameters`` (with that image's seed)."""
    hires = p.get("hires") or {}
    refiner = p.get("refiner") or {}
    hashes: dict[str, str] = p.get("hashes") or {}
    lora_hashes = ", ".join(f"{_alias(k[5:])}: {v}" for k, v in hashes.items() if k.startswith("lora:"))
    ti_hashes = ", ".join(f"{_alias(k[6:])}: {v}" for k, v in hashes.items() if k.startswith("embed:"))
    vae = p.get("vae") if p.get("vae") not in (None, "model") else None
    pairs: list[tuple[str, Any]] = [
        ("Steps", p.get("steps")),
        ("Sampler", p.get("sampler_name")),
        ("CFG scale", p.get("guidance_scale")),
        ("Seed", p.get("seed")),
        ("Size", f"{p.get('width')}x{p.get('height')}"),
        ("Model hash", hashes.get("model")),
        ("Model", p.get("model_id")),
        ("VAE hash", hashes.get("vae") if vae else None),
        ("VAE", vae),
        ("Denoising strength", p.get("strength", hires.get("denoise"))),
        ("Clip skip", p.get("clip_skip") if (p.get("clip_skip") or 1) > 1 else None),
        ("Hires upscale", hires.get("scale") if hires and not hires.get("resize") else None),
        ("Hires resize", hires.get("resize")),
        ("Hires steps", hires.get("steps")),
        ("Hires upscaler", hires.get("upscaler_name")),
        ("Refiner", refiner.get("model")),
        ("Refiner switch at", refiner.get("switch_at")),
        ("Lora hashes", lora_hashes or None),
        ("TI hashes", ti_hashes or None),
        ("Version", p.get("version")),
    ]
    lines = [prompt_with_loras(p.get("prompt") or "", p.get("loras") or [])]
    if p.get("negative_prompt"):
        lines.append(f"Negative prompt: {p['negative_prompt']}")
    lines.append(", ".join(k if k == v else f"{k}: {quote(v)}" for k, v in pairs if v is not None))
    return clean("\n".join(lines).strip())


def clean(text: str) -> str:
    """What a PNG text chunk and an EXIF comment can hold: no NUL, no lone surrogate."""
    text = text.replace("\x00", "")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text


# ---- hashes ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Resource:
    """A file the infotext names by hash: key ("model", "vae", "lora:<name>", "embed:<name>")."""

    key: str
    path: Path
    algo: str  # "sha256" or "addnet" (HashCache's names)
    length: int  # hex digits A1111 shows


def model_resource(path: Path | None) -> list[Resource]:
    return [Resource("model", path, "sha256", 10)] if path is not None else []


def vae_resource(path: Path | None) -> list[Resource]:
    return [Resource("vae", path, "sha256", 10)] if path is not None else []


def lora_resources(loras: Iterable[tuple[str, Path]]) -> list[Resource]:
    """(name as the infotext prompt writes it, file): addnet hash for .safetensors, as A1111."""
    return [Resource(f"lora:{name}", path, "addnet" if path.suffix.lower() == ".safetensors" else "sha256", 12) for name, path in loras]


def embedding_resources(embeddings: Iterable[tuple[str, Path]]) -> list[Resource]:
    return [Resource(f"embed:{name}", path, "sha256", 12) for name, path in embeddings]


def run_resources(
    model: Path, vae: Path | None, loras: Sequence[PlannedLoRA], embeddings: Sequence[Triggered], texts: Sequence[str | None]
) -> list[Resource]:
    """What a generation's infotext names by hash: the model file, a standalone VAE, each LoRA
    under the name its prompt tag shows, each embedding whose trigger word is in `texts` (the
    prompts as sent; an embedding only named in data.textual_inversions changes nothing)."""
    from .embeddings import appears

    named = [(lr.item.model_id if lr.source == "request" else lr.name, lr.item.path) for lr in loras]
    used = [(t.trigger, t.item.path) for t in embeddings if appears(t.trigger, texts)]
    return model_resource(model) + vae_resource(vae) + lora_resources(named) + embedding_resources(used)


def compute(cache: HashCache, resources: Sequence[Resource]) -> dict[str, str]:
    """The A1111 short hashes of the resources that are files; one that cannot be read is left out."""
    out: dict[str, str] = {}
    for r in resources:
        if r.key in out or not r.path.is_file():
            continue
        try:
            out[r.key] = cache.get(r.path, r.algo)[: r.length]
        except OSError as exc:
            log.warning("cannot hash %s for the infotext: %s", r.path, exc.strerror or exc)
    return out


class Hashing:
    """Hashes computed on a daemon thread while the job loads and denoises (a first hash of a
    multi-GB checkpoint takes seconds; later ones come from the cache). A daemon thread: a worker
    that exits never waits for a hash nobody needs any more."""

    def __init__(self, cache: HashCache, resources: Sequence[Resource]):
        self._result: dict[str, str] = {}
        self._thread = threading.Thread(target=self._run, args=(cache, list(resources)), name="sdworker-hash", daemon=True)
        self._thread.start()

    def _run(self, cache: HashCache, resources: list[Resource]) -> None:
        try:
            self._result = compute(cache, resources)
        except Exception:  # noqa: BLE001  (an infotext without hashes, never a failed job)
            log.exception("hashing for the infotext failed")

    def result(self) -> dict[str, str]:
        self._thread.join()
        return dict(self._result)


_CACHES: dict[str, HashCache] = {}
_CACHES_LOCK = threading.Lock()


def hash_cache_for(data_dir: Path | None) -> HashCache:
    """One HashCache per cache file in the process (model.get_metadata and the infotext share it):
    ``<data-dir>/hashes.json``, or in memory without a data dir."""
    key = str(data_dir) if data_dir is not None else ""
    with _CACHES_LOCK:
        cache = _CACHES.get(key)
        if cache is None:
            cache = _CACHES[key] = HashCache(data_dir / "hashes.json" if data_dir is not None else None)
        return cache
