r"""compel's prompt syntax (``prompt_syntax: "compel"``) for SD 1.x/2.x and SDXL pipelines.

``compel_prompt_kwargs(pipe, prompt, negative_prompt, clip_skip)`` returns the embeddings kwargs
of the pipeline call, built with compel (https://github.com/damian0815/compel, >= 2.5.1):
``word+`` / ``word-`` (x1.1 / /1.1 per sign), ``(words)1.3``, ``("a", "b").and()`` (conjunction:
the prompts' embeddings concatenated), ``("a", "b").blend(0.7, 0.3)``. Text compel cannot parse as
syntax (an unbalanced parenthesis, say) is taken literally, as compel does; what compel rejects
(``.blend()`` / ``.and()`` with a weight count that does not match the prompts) is a
``validation_error`` (:func:`check_compel`, also run when a request is planned).

What it computes, and that it equals compel's own wrappers
==========================================================
* SD 1.x/2.x: ``Compel(tokenizer, text_encoder, truncate_long_prompts=False)`` over
  ``[prompt, negative]`` in one call, as compel's ``CompelForSD`` does: long prompts become
  several 77-token chunks, and the positive and negative are padded to the same length with
  empty-prompt chunks (compel's ``pad_conditioning_tensors_to_same_length``).
* SDXL: one Compel per text encoder with
  ``ReturnedEmbeddingsType.PENULTIMATE_HIDDEN_STATES_NON_NORMALIZED``, the second with
  ``requires_pooled=True``; each encoder's embeddings padded (with that encoder's empty-prompt
  encoding) to the longer of the two, then concatenated on the feature axis: compel's
  ``CompelForSDXL``. (compel's older list form, ``Compel(tokenizer=[...], text_encoder=[...])``,
  is deprecated, prints to stdout and cannot pad prompts of different lengths: its
  ``EmbeddingsProviderMulti`` has no ``empty_z``.) The pooled embeds are ``text_encoder_2``'s for
  the whole text, truncated to 77 tokens, as compel gives them. A pipeline with only the second
  encoder (the SDXL refiner) uses that one alone.
* ``negative_prompt`` None: the empty prompt through compel, except on SDXL pipelines with
  ``force_zeros_for_empty_prompt``, where the negative embeds are zeros (what diffusers and the
  a1111 syntax do).
* ``clip_skip`` (A1111's: 1 = the last layer): compel can only give the penultimate layer through
  the final layer norm on SD 1.x/2.x (``PENULTIMATE_HIDDEN_STATES_NORMALIZED`` = clip_skip 2), and
  nothing but its fixed layer on SDXL. ``clip_skip`` None or 1 is the default; 2 on SD 1.x/2.x is
  honoured; anything else is a ``validation_error``.
* Multi-vector textual-inversion tokens are expanded per tokenizer (``<tok>`` -> ``<tok>``,
  ``<tok>_1``, …, as diffusers' ``maybe_convert_prompt``), on token ids, so a prompt without
  them tokenizes exactly as plain compel tokenizes it.
* The text encoders are used as they are (nothing is set on them or on the tokenizers: they are
  the worker's shared, cached objects); compel sees them through a thin proxy that reports the
  encoder's execution device (under sequential CPU offload the weights are on ``meta``) and gives
  transformers 5's ``CLIPTextModel`` (which no longer has ``text_model``) the ``text_model``
  attribute compel reads for the final layer norm. The Compel objects are built per call.
* ``.swap()`` (cross-attention control) parses, but diffusers pipelines have no cross-attention
  control: compel returns the original prompt's embeddings, and that is what is used.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from ..errors import ValidationFailed

__all__ = ["check_compel", "compel_clip_skip_problem", "compel_import_problem", "compel_prompt_kwargs", "compel_unavailable"]

log = logging.getLogger(__name__)


def compel_import_problem(quiet: bool = False) -> str | None:
    """None when compel can be used; else why not, as the host should read it.

    "Not installed" is said only when compel itself is missing. Any other failure (a dependency
    missing or too old, a broken install) is reported with its exception and logged on stderr
    with its traceback (unless `quiet`: the caller will try again), so a worker that has compel
    never says it has none. compel imports torch: while another thread is importing torch, the
    import may fail on a half-made module; the caller tries again once that import has finished.
    """
    try:
        import compel  # noqa: F401
        from compel.prompt_parser import PromptParser  # noqa: F401
    except Exception as exc:  # noqa: BLE001  (any import failure: reported, never "not installed" unless it is)
        if isinstance(exc, ModuleNotFoundError) and exc.name == "compel":
            log.warning("prompt_syntax compel asked for, but compel is not installed")
            return "compel is not installed in this worker; use prompt_syntax a1111 or none"
        if not quiet:
            log.error("compel could not be imported", exc_info=True)
        return f"compel could not be imported: {type(exc).__name__}: {exc}"
    return None


def _invalid(path: str, message: str) -> ValidationFailed:
    return ValidationFailed(f"{path}: {message}", [{"path": path, "message": message}])


def compel_unavailable(torch_loading: bool, wait_for_torch: Callable[[], None]) -> str | None:
    """compel_import_problem, tried again (once torch is imported) when it failed while torch was loading."""
    why = compel_import_problem(quiet=torch_loading)
    if why and torch_loading:
        wait_for_torch()
        why = compel_import_problem()
    return why


def compel_clip_skip_problem(clip_skip: int | None, sdxl: bool) -> str | None:
    """Why ``clip_skip`` cannot be used with compel on this kind of model (None: it can)."""
    if clip_skip is None or clip_skip <= 1:
        return None
    if clip_skip == 2 and not sdxl:
        return None
    where = "SDXL (compel uses its fixed penultimate layer there)" if sdxl else "SD 1.x/2.x (compel offers clip_skip 2 at most)"
    return f"clip_skip {clip_skip} cannot be combined with prompt_syntax compel on {where}; use prompt_syntax a1111"


def _parse_problem(text: str) -> str | None:
    import pyparsing
    from compel import Compel
    from compel.prompt_parser import PromptParser

    try:
        Compel.parse_prompt_string(text)
    except (PromptParser.ParsingException, pyparsing.ParseBaseException) as exc:
        return f"compel cannot parse this prompt: {exc}"
    return None


def check_compel(prompt: str, negative_prompt: str | None, clip_skip: int | None, sdxl: bool) -> None:
    """Raise ValidationFailed (all problems) when compel would refuse the prompts or the clip skip."""
    problems = []
    for path, text in (("prompt", prompt), ("negative_prompt", negative_prompt)):
        why = _parse_problem(text) if text else None
        if why:
            problems.append({"path": path, "message": why})
    why = compel_clip_skip_problem(clip_skip, sdxl)
    if why:
        problems.append({"path": "clip_skip", "message": why})
    if problems:
        raise ValidationFailed(f"{problems[0]['path']}: {problems[0]['message']}", problems)


class _Encoder:
    """A text encoder as compel sees it: the module itself, with the execution device as ``device``
    and ``text_model`` falling back to the module (transformers 5's CLIPTextModel has none)."""

    def __init__(self, module: Any, device: Any):
        self._module = module
        self.device = device

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._module(*args, **kwargs)

    @property
    def text_model(self) -> Any:
        return getattr(self._module, "text_model", self._module)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module, name)


def _ti_manager(tokenizer: Any) -> Any:
    """compel's textual-inversion hook for one tokenizer: expand multi-vector tokens on token ids."""
    from compel import BaseTextualInversionManager

    class _Expand(BaseTextualInversionManager):
        def expand_textual_inversion_token_ids_if_necessary(self, token_ids: list[int]) -> list[int]:
            added = getattr(tokenizer, "added_tokens_encoder", None) or {}
            if not added:
                return token_ids
            out: list[int] = []
            for tid in token_ids:
                out.append(tid)
                token = tokenizer.convert_ids_to_tokens(tid)
                if token in added:
                    i = 1
                    while f"{token}_{i}" in added:
                        out.append(added[f"{token}_{i}"])
                        i += 1
            return out

    return _Expand()


def compel_prompt_kwargs(pipe: Any, prompt: str, negative_prompt: str | None, clip_skip: int | None = None) -> dict[str, Any]:
    """The embeds kwargs of the pipeline call for ``prompt`` / ``negative_prompt`` in compel's syntax
    (batch 1; the pipeline's ``num_images_per_prompt`` repeats them). See the module doc."""
    import pyparsing
    import torch
    from compel import Compel, ReturnedEmbeddingsType
    from compel.prompt_parser import PromptParser

    from .encode import _device, _is_sdxl, encoders

    encs = encoders(pipe)
    if not encs:
        raise ValueError(f"{type(pipe).__name__} has no CLIP text encoder for compel")
    sdxl = _is_sdxl(pipe)
    check_compel(prompt, negative_prompt, clip_skip, sdxl)
    zeros_negative = sdxl and negative_prompt is None and bool(getattr(pipe.config, "force_zeros_for_empty_prompt", False))
    texts = [prompt] if zeros_negative else [prompt, negative_prompt or ""]

    if sdxl:
        kind = ReturnedEmbeddingsType.PENULTIMATE_HIDDEN_STATES_NON_NORMALIZED
    elif clip_skip == 2:
        kind = ReturnedEmbeddingsType.PENULTIMATE_HIDDEN_STATES_NORMALIZED
    else:
        kind = ReturnedEmbeddingsType.LAST_HIDDEN_STATES_NORMALIZED

    try:
        with torch.no_grad():
            parts, pooled = [], None
            for name, tok, te in encs:
                device = _device(te)
                wants_pooled = sdxl and name == "tokenizer_2"
                c = Compel(
                    tokenizer=tok,
                    text_encoder=_Encoder(te, device),
                    textual_inversion_manager=_ti_manager(tok),
                    truncate_long_prompts=False,
                    returned_embeddings_type=kind,
                    requires_pooled=wants_pooled,
                    device=device,
                )
                if wants_pooled:
                    z, pooled = c(texts)
                else:
                    z = c(texts)
                parts.append((c, z, wants_pooled))
            longest = max(z.shape[1] for _, z, _ in parts)
            zs = []
            for c, z, wants_pooled in parts:  # pad each encoder's embeds to the longest (CompelForSDXL)
                if z.shape[1] < longest:
                    pad = c([""])[0] if wants_pooled else c([""])
                    pad = pad.repeat(z.shape[0], (longest - z.shape[1]) // pad.shape[1], 1)
                    z = torch.cat([z, pad], dim=1)
                zs.append(z)
            embeds = torch.cat(zs, dim=-1)
    except (PromptParser.ParsingException, pyparsing.ParseBaseException) as exc:  # pragma: no cover - check_compel ran
        raise _invalid("prompt", f"compel cannot parse this prompt: {exc}") from exc

    te2 = getattr(pipe, "text_encoder_2", None)
    if te2 is not None:
        dtype = te2.dtype
    elif getattr(pipe, "text_encoder", None) is not None:
        dtype = pipe.text_encoder.dtype
    else:  # pragma: no cover - encoders() found one
        dtype = pipe.unet.dtype
    device = pipe._execution_device
    pos = embeds[0:1]
    neg = torch.zeros_like(pos) if zeros_negative else embeds[1:2]
    out = {
        "prompt_embeds": pos.to(dtype=dtype, device=device),
        "negative_prompt_embeds": neg.to(dtype=dtype, device=device),
    }
    if sdxl:
        assert pooled is not None
        pos_pooled = pooled[0:1]
        neg_pooled = torch.zeros_like(pos_pooled) if zeros_negative else pooled[1:2]
        out["pooled_prompt_embeds"] = pos_pooled.to(dtype=dtype, device=device)
        out["negative_pooled_prompt_embeds"] = neg_pooled.to(dtype=dtype, device=device)
    return out
