"""Textual inversion: embeddings in the tokenizers and text encoders, triggered by name.

As in A1111, an embedding of the models dirs (kind ``embedding``) is used when its trigger
appears in the prompt or the negative prompt: its file name without suffix, or the token a
diffusers ``learned_embeds`` file names. Matching is case-insensitive (CLIP lowercases) and on
word edges, so ``easynegative`` triggers on ``(EasyNegative:1.2)`` but not on ``easynegatives``.

Formats: A1111 ``emb_params`` / ``string_to_param`` (SD 1.x/2.x), diffusers ``{token: tensor}``,
SDXL ``clip_l`` + ``clip_g`` (one vector set per text encoder), loaded with diffusers'
``load_textual_inversion``.

Tokenizers and text encoders are shared cached objects (SD 1.5 and SDXL often share one CLIP-L),
and an added token stays in them for every later run. So the token is private to the file,
``<ti-name-1a2b3c4d>`` (multi-vector: ``..._1``, ``..._2``, expanded by diffusers'
``maybe_convert_prompt``), and :func:`rewrite` puts it in place of the trigger word, in the prompts
of the runs that chose the embedding only (the encoders' copy of the prompts: the result's
``parameters`` and the infotext keep the user's words). Another run's prompt keeps the plain word, which the
tokenizer reads as before: what a run generates never depends on which embeddings earlier runs
loaded. What was added is recorded per text encoder and per tokenizer: an embedding is added once
per text encoder; a tokenizer that already holds the token (added for another text encoder that
shares it) only gets this encoder's embedding rows filled. An embedding that does not fit (SD 1.5
on SDXL, a width other than the encoder's) is a clear ValidationFailed.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import weakref
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence, Union

from ..errors import ModelLoadFailed, ValidationFailed

if TYPE_CHECKING:
    from .catalog import CatalogItem

log = logging.getLogger(__name__)


def triggers_of(item: "CatalogItem") -> list[str]:
    """The words that trigger an embedding: its file name stem, and a diffusers file's own token."""
    names = [item.path.stem if item.path.suffix else item.path.name]
    token = item.details.get("token") if isinstance(item.details, dict) else None
    if isinstance(token, str) and token.strip() and token.lower() != names[0].lower():
        names.append(token.strip())
    return names


def token_of(item: "CatalogItem") -> str:
    """The file's private token: no user prompt holds it, and A1111's syntax has no character of it."""
    stem = re.sub(r"[^a-z0-9_-]+", "_", triggers_of(item)[0].lower()).strip("_") or "emb"
    return f"<ti-{stem[:40]}-{hashlib.sha1(str(item.path).encode()).hexdigest()[:8]}>"


@lru_cache(maxsize=4096)
def _pattern(word: str) -> re.Pattern[str]:
    return re.compile(r"(?<![\w])" + re.escape(word) + r"(?![\w])", re.IGNORECASE)


@dataclass(frozen=True)
class Triggered:
    """An embedding a prompt triggers, and the word that did it."""

    item: "CatalogItem"
    trigger: str

    @property
    def token(self) -> str:
        return token_of(self.item)


def find_triggers(prompt: str | None, negative: str | None, available: Iterable["CatalogItem"]) -> list["CatalogItem"]:
    """Embeddings of ``available`` whose trigger appears in the prompt or the negative prompt."""
    return [t.item for t in find_triggered(prompt, negative, available)]


def find_triggered(prompt: str | None, negative: str | None, available: Iterable["CatalogItem"]) -> list[Triggered]:
    text = "\n".join(t for t in (prompt, negative) if t)
    out: list[Triggered] = []
    if not text:
        return out
    for item in available:
        if item.kind != "embedding":
            continue
        for word in triggers_of(item):
            if _pattern(word).search(text):
                out.append(Triggered(item, word))
    return out


def _known_misfit(item: "CatalogItem", model_base: str) -> str | None:
    """Why the catalog already knows ``item`` cannot fit a ``model_base`` model (None: it may fit).
    Which bases take single-encoder or clip_l + clip_g embeddings is the families' (Family.embedding_layouts)."""
    from ..families import registry

    fmt = item.details.get("embedding_format") if isinstance(item.details, dict) else None
    base = item.base_model
    model_layout, item_layout = registry.embedding_layout(model_base), registry.embedding_layout(base)
    if fmt == "sdxl" and model_layout == "single":
        return f"embedding {item.model_id!r} is an SDXL embedding; {model_base} models take single-encoder ones"
    if model_layout == "sdxl" and (fmt in ("a1111", "diffusers") or item_layout == "single"):
        label = base if item_layout == "single" else "SD 1.x/2.x"
        return f"embedding {item.model_id!r} is a single-encoder ({label}) embedding; {model_base} models need clip_l + clip_g"
    if item_layout == "single" and model_layout == "single" and base != model_base:
        return f"embedding {item.model_id!r} is a {base} embedding; the model is {model_base}"
    return None


def select(triggered: Sequence[Triggered], model_base: str) -> tuple[list[Triggered], list[str]]:
    """Plan time: what a run uses of what its prompts trigger.

    An embedding the catalog already knows is for another architecture is left out and its word
    stays plain text (A1111 skips such embeddings too), with a warning; one whose base the catalog
    cannot tell goes on to :meth:`EmbeddingManager.ensure_loaded`, which checks widths exactly.
    Several files with one trigger word: the first is used, with a warning.
    """
    kept: dict[str, Triggered] = {}
    warnings: list[str] = []
    for t in triggered:
        why = _known_misfit(t.item, model_base)
        if why:
            warnings.append(f"{why}; {t.trigger!r} stays plain text")
        elif t.trigger.lower() in kept:
            warnings.append(f"{t.trigger!r} triggers several embeddings; using {kept[t.trigger.lower()].item.model_id!r}, not {t.item.model_id!r}")
        else:
            kept[t.trigger.lower()] = t
    return list(kept.values()), warnings


def appears(word: str, texts: Iterable[str | None]) -> bool:
    """Whether a trigger word is in one of the texts as the user wrote them (the infotext's TI hashes)."""
    return any(t and _pattern(word).search(t) for t in texts)


def rewrite(prompt: str | None, triggered: Sequence[Triggered]) -> str | None:
    """The prompt with each trigger word replaced by its embedding's private token."""
    if not prompt:
        return prompt
    for t in triggered:
        prompt = _pattern(t.trigger).sub(lambda _m, tok=t.token: tok, prompt)
    return prompt


# ---- reading -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Vectors:
    """An embedding's vectors: one [n, dim] tensor per text encoder slot."""

    kind: str  # "single" (SD 1.x/2.x) or "sdxl" (clip_l + clip_g)
    clip_l: Any  # [n, dim] for single; [n, 768-ish] for sdxl
    clip_g: Any = None


def _as_2d(t: Any) -> Any:
    import torch

    if not isinstance(t, torch.Tensor):
        raise ValueError(f"expected a tensor, found {type(t).__name__}")
    t = t.detach().to(torch.float32)
    if t.ndim == 1:
        t = t.unsqueeze(0)
    if t.ndim != 2:
        raise ValueError(f"expected vectors of shape [n, dim], found {tuple(t.shape)}")
    return t


def parse_state(state: dict[str, Any]) -> Vectors:
    """The vectors of an A1111 / diffusers / SDXL embedding state dict."""
    if "clip_l" in state and "clip_g" in state:
        return Vectors("sdxl", _as_2d(state["clip_l"]), _as_2d(state["clip_g"]))
    if "emb_params" in state:
        return Vectors("single", _as_2d(state["emb_params"]))
    params = state.get("string_to_param")
    if isinstance(params, dict) and params:
        return Vectors("single", _as_2d(params.get("*", next(iter(params.values())))))
    flat = [k for k in state if k.startswith("string_to_param.")]  # a flattened A1111 safetensors
    if flat:
        return Vectors("single", _as_2d(state[flat[0]]))
    tensors = {k: v for k, v in state.items() if hasattr(v, "ndim")}
    if len(tensors) == 1:
        return Vectors("single", _as_2d(next(iter(tensors.values()))))
    raise ValueError(f"not a textual-inversion embedding (keys: {', '.join(sorted(state)[:6])})")


def read_embedding(path: Path, embedding_id: str, allow_pickle: bool = False) -> Vectors:
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            state: dict[str, Any] = load_file(str(path), device="cpu")
        else:
            if not allow_pickle:
                raise ModelLoadFailed(f"embedding {embedding_id!r} is a pickle file; start the worker with --allow-pickle to load it")
            import torch

            state = torch.load(str(path), map_location="cpu", weights_only=True)
            if not isinstance(state, dict):
                raise ValueError(f"expected a dict, found {type(state).__name__}")
        return parse_state(state)
    except ModelLoadFailed:
        raise
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadFailed(f"embedding {embedding_id!r} could not be read from {path.name}: {type(exc).__name__}: {exc}") from exc


# ---- loading into a pipeline ---------------------------------------------------------------------------------


class _Registry:
    """object -> {token: embedding key}, forgotten when the object goes (weakly keyed by identity)."""

    def __init__(self) -> None:
        self._data: dict[int, tuple[weakref.ref, dict[str, str]]] = {}

    def get(self, obj: Any) -> dict[str, str]:
        hit = self._data.get(id(obj))
        if hit is not None and hit[0]() is obj:
            return hit[1]
        tokens: dict[str, str] = {}
        key = id(obj)
        self._data[key] = (weakref.ref(obj, lambda _r, k=key: self._data.pop(k, None)), tokens)
        return tokens


def _slots(pipe: Any) -> list[tuple[str, Any, Any]]:
    """(slot, tokenizer, text encoder): clip_l is the first encoder, clip_g SDXL's second."""
    out = []
    for slot, tok, te in (("clip_l", "tokenizer", "text_encoder"), ("clip_g", "tokenizer_2", "text_encoder_2")):
        t, e = getattr(pipe, tok, None), getattr(pipe, te, None)
        if t is not None and e is not None:
            out.append((slot, t, e))
    return out


def _width(text_encoder: Any) -> int:
    return int(text_encoder.get_input_embeddings().weight.shape[-1])


class EmbeddingManager:
    def __init__(self, allow_pickle: bool = False):
        self.allow_pickle = allow_pickle
        self._lock = threading.RLock()
        self._encoders = _Registry()  # text encoder -> {token: path key}
        self._tokenizers = _Registry()  # tokenizer -> {token: path key}
        self._vectors: dict[str, Vectors] = {}  # path key -> vectors (small; read once)
        self.loads = 0  # embeddings added to a text encoder

    def _read(self, item: "CatalogItem") -> Vectors:
        key = f"{item.path}:{item.size_bytes}:{item.mtime}"
        vec = self._vectors.get(key)
        if vec is None:
            vec = self._vectors[key] = read_embedding(item.path, item.model_id, self.allow_pickle)
        return vec

    def ensure_loaded(
        self, pipe: Any, items: Sequence[Union["CatalogItem", Triggered]], model_id: str = "", field_path: str = "prompt"
    ) -> list[str]:
        """Add these embeddings (catalog items or :class:`Triggered`) to the pipeline's tokenizers and
        text encoders under their private tokens, each once; a misfit is a ValidationFailed."""
        warnings: list[str] = []
        if not items:
            return warnings
        with self._lock:
            slots = _slots(pipe)
            if not slots:
                raise ValidationFailed(f"{field_path}: {type(pipe).__name__} has no text encoder for embeddings")
            for x in items:
                item = x.item if isinstance(x, Triggered) else x
                vec = self._read(item)
                problem = self._misfit(vec, slots)
                if problem:
                    message = f"embedding {item.model_id!r} {problem}" + (f" (model {model_id!r})" if model_id else "")
                    raise ValidationFailed(f"{field_path}: {message}", [{"path": field_path, "message": message}])
                self._load(pipe, slots, token_of(item), item, vec, field_path)
        return warnings

    @staticmethod
    def _misfit(vec: Vectors, slots: list[tuple[str, Any, Any]]) -> str | None:
        names = [s for s, _t, _e in slots]
        if vec.kind == "sdxl" and "clip_g" not in names:
            return "is an SDXL embedding (clip_l + clip_g); this model has one text encoder"
        if vec.kind == "single" and "clip_g" in names:
            return f"is a single-encoder (SD 1.x/2.x) embedding of width {vec.clip_l.shape[-1]}; SDXL needs clip_l + clip_g"
        for slot, _tok, te in slots:
            got = (vec.clip_l if slot == "clip_l" else vec.clip_g).shape[-1]
            want = _width(te)
            if got != want:
                return f"has {slot} vectors of width {got}; the model's text encoder ({slot}) takes {want}"
        return None

    def _load(self, pipe: Any, slots: list[tuple[str, Any, Any]], token: str, item: "CatalogItem", vec: Vectors, field_path: str) -> None:
        key = str(item.path)
        for slot, tokenizer, te in slots:
            vectors = vec.clip_l if slot == "clip_l" else vec.clip_g
            tokens = [token] + [f"{token}_{i}" for i in range(1, vectors.shape[0])]
            have = self._encoders.get(te)
            if have.get(token) == key:
                continue  # this embedding is in this text encoder already
            if token in have:  # another file with the same private token: a hash collision
                raise ModelLoadFailed(f"embedding {item.model_id!r}: token {token!r} is taken by {have[token]}")
            added = self._tokenizers.get(tokenizer)
            vocab = tokenizer.get_vocab()
            if any(t in vocab and added.get(t) != key for t in tokens):
                clash = next(t for t in tokens if t in vocab and added.get(t) != key)
                raise ValidationFailed(
                    f"{field_path}: embedding {item.model_id!r} cannot be added as {clash!r}: the tokenizer already has that token; rename the file",
                    [{"path": field_path, "message": f"{clash!r} is already a token"}],
                )
            if all(t in vocab for t in tokens):
                self._fill(tokenizer, te, tokens, vectors)  # added for another encoder sharing this tokenizer
            else:
                try:
                    pipe.load_textual_inversion(vectors, token=token, tokenizer=tokenizer, text_encoder=te)
                except Exception as exc:  # noqa: BLE001
                    raise ModelLoadFailed(f"embedding {item.model_id!r} could not be added as {token!r}: {exc}") from exc
            for t in tokens:
                added[t] = key
            have[token] = key
            self.loads += 1
            log.info("embedding %s added as %r (%d vector(s)) to %s", item.model_id, token, len(tokens), slot)

    @staticmethod
    def _fill(tokenizer: Any, te: Any, tokens: list[str], vectors: Any) -> None:
        """This text encoder's rows for tokens its (shared) tokenizer already has."""
        import torch

        ids = tokenizer.convert_tokens_to_ids(tokens)
        if te.get_input_embeddings().weight.shape[0] < len(tokenizer):
            te.resize_token_embeddings(len(tokenizer))
        weight = te.get_input_embeddings().weight
        with torch.no_grad():
            for i, row in zip(ids, vectors):
                weight[i] = row.to(dtype=weight.dtype, device=weight.device)
