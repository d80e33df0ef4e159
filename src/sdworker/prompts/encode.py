r"""Weighted prompt encoding (A1111 semantics) for SD 1.x/2.x and SDXL diffusers pipelines.

``pipeline_prompt_kwargs(pipe, prompt, negative_prompt, clip_skip, syntax)`` is what the
generation job calls: it returns the prompt kwargs of the pipeline call, either the plain text
(``prompt``, ``negative_prompt``; diffusers encodes it itself) or embeddings.

When the plain text is kept
===========================
``syntax == "a1111"`` and :func:`needs_weighting` is false: the prompt and the negative parse to
exactly themselves with weight 1.0 (no brackets, escapes or BREAK), each fits one 75-token chunk,
and ``clip_skip`` is None or 1 (1 = the last layer = what diffusers does anyway). Then the call
is exactly what it was before weighting existed, so pixel parity with plain diffusers holds.
``syntax == "none"`` keeps the text (diffusers truncates past 77 tokens), with ``clip_skip``
passed as diffusers' ``clip_skip`` (``clip_skip - 1``, omitted when that is None). One exception:
on SD1/SD2 pipelines with a clip skip, diffusers' ``encode_prompt`` reads
``text_encoder.text_model``, which transformers 5's ``CLIPTextModel`` no longer has (it raises
AttributeError), so the literal text (one chunk, truncated like diffusers) is encoded here with
the same layers instead.
``syntax == "compel"`` is compel's syntax through compel itself:
:func:`sdworker.prompts.compel_syntax.compel_prompt_kwargs` (embeddings always).

The embeddings path (A1111 ``sd_hijack_clip``)
==============================================
* Parse with :func:`~sdworker.prompts.attention.parse_prompt_attention`, tokenize each piece with
  the encoder's tokenizer (no BOS/EOS; textual-inversion tokens expanded as diffusers does),
  chunk into 75-token chunks (BREAK starts a new chunk; comma backtrack 20, A1111's default),
  wrap each chunk as ``BOS + tokens + EOS`` padded to 77 with the tokenizer's pad token (what
  diffusers pads with: EOS for SD1's CLIP, ``!`` for OpenCLIP = A1111's id 0).
* Each chunk runs through the text encoder on its own; every token's hidden state is multiplied
  by its weight and the chunk's mean is restored: ``z = z * (orig_mean / new_mean)`` (skipped when
  ``new_mean`` is 0, where A1111 would produce NaN). Chunks are concatenated on the sequence
  axis; the prompt and the negative get the same number of chunks (the shorter padded with
  encodings of the empty chunk), and so do SDXL's two encoders.
* Layers, ``clip_skip`` in A1111 terms (1 = last layer, 2 = penultimate), diffusers'
  ``clip_skip`` being ``clip_skip - 1``:
  SD1/SD2: no skip -> ``last_hidden_state`` (after the final layer norm); skip ``d`` ->
  ``hidden_states[-(d + 1)]`` through ``final_layer_norm`` (diffusers' ``encode_prompt``).
  SDXL: no skip -> ``hidden_states[-2]``; skip ``d`` -> ``hidden_states[-(d + 2)]``, no layer norm
  (diffusers' SDXL ``encode_prompt``). Unlike diffusers, which applies ``clip_skip`` to the
  positive prompt only, the skip applies to the negative too (A1111 does). An index past the
  first hidden state is clamped to it.
* SDXL: the encoders' hidden states are concatenated on the feature axis; the pooled embeds are
  ``text_encoder_2``'s projected output for the FIRST chunk (A1111/ComfyUI). With no negative
  prompt and ``force_zeros_for_empty_prompt`` in the pipeline config, the negative embeds and
  pooled embeds are zeros, as in diffusers.
* Embeds have batch 1; the pipeline's ``num_images_per_prompt`` repeats them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .attention import Chunk, chunk_tokens, is_break, pad_chunk, parse_prompt_attention, tokenize_weighted

__all__ = [
    "CHUNK_SIZE",
    "diffusers_clip_skip",
    "encode",
    "encoders",
    "needs_weighting",
    "pipeline_prompt_kwargs",
    "prompt_chunks",
    "token_count",
]

CHUNK_SIZE = 75
COMMA_BACKTRACK = 20
SYNTAXES = ("a1111", "compel", "none")


def diffusers_clip_skip(clip_skip: int | None) -> int | None:
    """A1111's clip_skip (1 = last layer) -> diffusers' (number of layers skipped; None = none)."""
    if clip_skip is None or clip_skip <= 1:
        return None
    return clip_skip - 1


def encoders(pipe: Any) -> list[tuple[str, Any, Any]]:
    """``(tokenizer attribute name, tokenizer, text encoder)`` of the pipeline, in diffusers' order."""
    out = []
    for name, enc in (("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2")):
        tok, te = getattr(pipe, name, None), getattr(pipe, enc, None)
        if tok is not None and te is not None:
            out.append((name, tok, te))
    return out


def _is_sdxl(pipe: Any) -> bool:
    return hasattr(pipe, "text_encoder_2")


def _ids(tokenizer: Any, text: str) -> list[int]:
    if not text:
        return []
    return list(tokenizer(text, add_special_tokens=False, truncation=False, verbose=False).input_ids)


def _tokenizers(tokenizer: Any) -> list[Any]:
    return list(tokenizer) if isinstance(tokenizer, (list, tuple)) else [tokenizer]


def prompt_chunks(text: str, tokenizer: Any, pipe: Any = None, literal: bool = False) -> list[Chunk]:
    """The A1111 chunks of ``text`` for one tokenizer (``pipe``: expand textual-inversion tokens).

    ``literal``: no syntax, weight 1.0, truncated to one chunk (what diffusers does with text).
    """
    convert = getattr(pipe, "maybe_convert_prompt", None) if pipe is not None else None

    def tokenize(piece: str) -> list[int]:
        if convert is not None and piece:
            piece = convert(piece, tokenizer)
        return _ids(tokenizer, piece)

    if literal:
        ids = tokenize(text)[:CHUNK_SIZE]
        return [Chunk(ids, [1.0] * len(ids))]
    comma = tokenizer.get_vocab().get(",</w>") if hasattr(tokenizer, "get_vocab") else None
    stream = tokenize_weighted(parse_prompt_attention(text), tokenize)
    return chunk_tokens(stream, CHUNK_SIZE, comma_token=comma, comma_backtrack=COMMA_BACKTRACK)


def token_count(text: str, tokenizer: Any) -> int:
    """Tokens of the parsed prompt (no BOS/EOS, no BREAK markers)."""
    return sum(len(_ids(tokenizer, t)) for t, w in parse_prompt_attention(text) if not is_break((t, w)))


def needs_weighting(prompt: str, negative: str | None, clip_skip: int | None, tokenizer: Any) -> bool:
    """Whether the A1111 embeddings path is needed; False keeps the plain text (exact old behaviour).

    ``tokenizer``: one tokenizer or a list of them (SDXL's two).
    """
    if diffusers_clip_skip(clip_skip) is not None:
        return True
    for text in (prompt, negative):
        if text is None:
            continue
        if parse_prompt_attention(text) != [(text, 1.0)]:
            return True  # weights, escapes, brackets or BREAK
        if any(len(_ids(tok, text)) > CHUNK_SIZE for tok in _tokenizers(tokenizer) if tok is not None):
            return True
    return False


# ---- encoding (torch from here on) -----------------------------------------------------------------


def _device(module: Any) -> Any:
    try:
        from diffusers.utils.torch_utils import get_module_execution_device

        return get_module_execution_device(module)
    except Exception:  # pragma: no cover - older diffusers
        return next(module.parameters()).device


def _encode_chunks(pipe: Any, tokenizer: Any, text_encoder: Any, chunks: list[Chunk], clip_skip: int | None) -> tuple[Any, Any]:
    """``(z [1, 77 * len(chunks), dim], pooled [1, dim] of the first chunk or None)``."""
    import torch

    sdxl = _is_sdxl(pipe)
    skip = diffusers_clip_skip(clip_skip)
    device = _device(text_encoder)
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    use_mask = bool(getattr(text_encoder.config, "use_attention_mask", False))
    zs, pooled = [], None
    for chunk in chunks:
        ids, weights = pad_chunk(chunk, bos, eos, pad, CHUNK_SIZE)
        ids_t = torch.tensor([ids], dtype=torch.long, device=device)
        mask = None
        if use_mask:
            n = len(chunk.tokens) + 2
            mask = torch.tensor([[1] * n + [0] * (len(ids) - n)], dtype=torch.long, device=device)
        out = text_encoder(ids_t, attention_mask=mask, output_hidden_states=True)
        if pooled is None and out[0].ndim == 2:
            pooled = out[0]
        hs = out.hidden_states
        if sdxl:
            z = hs[-min((skip or 0) + 2, len(hs))]
        elif skip is None:
            z = out[0]
        else:
            z = getattr(text_encoder, "text_model", text_encoder).final_layer_norm(hs[-min(skip + 1, len(hs))])
        if any(w != 1.0 for w in weights):
            zf = z.float()
            w = torch.tensor(weights, dtype=torch.float32, device=zf.device).reshape(1, -1, 1)
            orig_mean = zf.mean()
            zf = zf * w
            new_mean = zf.mean()
            if new_mean != 0:
                zf = zf * (orig_mean / new_mean)
            z = zf.to(z.dtype)
        zs.append(z)
    return torch.cat(zs, dim=1), pooled


def encode(
    pipe: Any, prompt: str, negative_prompt: str | None = None, clip_skip: int | None = None, literal: bool = False
) -> dict[str, Any]:
    """The embeds kwargs of the pipeline call for ``prompt`` / ``negative_prompt`` (batch 1).

    ``literal``: take the texts as they are (no syntax, one chunk), as ``prompt_syntax: "none"``.
    """
    import torch

    encs = encoders(pipe)
    if not encs:
        raise ValueError(f"{type(pipe).__name__} has no CLIP text encoder to weight a prompt with")
    sdxl = _is_sdxl(pipe)
    zeros_negative = sdxl and negative_prompt is None and bool(getattr(pipe.config, "force_zeros_for_empty_prompt", False))
    texts = [prompt] if zeros_negative else [prompt, negative_prompt or ""]
    chunked = {name: [prompt_chunks(t, tok, pipe, literal) for t in texts] for name, tok, _ in encs}
    n = max(len(c) for per in chunked.values() for c in per)
    for per in chunked.values():
        for c in per:
            c.extend(Chunk() for _ in range(n - len(c)))

    results: list[tuple[Any, Any]] = []  # per text: (embeds, pooled)
    for i in range(len(texts)):
        zs, pooled = [], None
        for name, tok, te in encs:
            z, p = _encode_chunks(pipe, tok, te, chunked[name][i], clip_skip)
            zs.append(z)
            if pooled is None and p is not None:
                pooled = p
        results.append((torch.cat(zs, dim=-1), pooled))

    te2 = getattr(pipe, "text_encoder_2", None)
    if te2 is not None:
        dtype = te2.dtype
    elif not sdxl and getattr(pipe, "text_encoder", None) is not None:
        dtype = pipe.text_encoder.dtype
    else:
        dtype = pipe.unet.dtype
    device = pipe._execution_device
    pos, pos_pooled = results[0]
    neg: Any
    neg_pooled: Any
    if zeros_negative:
        neg, neg_pooled = torch.zeros_like(pos), (torch.zeros_like(pos_pooled) if pos_pooled is not None else None)
    else:
        neg, neg_pooled = results[1]
    out = {
        "prompt_embeds": pos.to(dtype=dtype, device=device),
        "negative_prompt_embeds": neg.to(dtype=dtype, device=device),
    }
    if sdxl:
        out["pooled_prompt_embeds"] = pos_pooled.to(dtype=dtype, device=device)
        out["negative_pooled_prompt_embeds"] = neg_pooled.to(dtype=dtype, device=device)
    return out


def pipeline_prompt_kwargs(
    pipe: Any, prompt: str, negative_prompt: str | None, clip_skip: int | None = None, syntax: str = "a1111"
) -> dict[str, Any]:
    """The prompt kwargs of the pipeline call (see the module doc)."""
    if syntax == "none":
        skip = diffusers_clip_skip(clip_skip)
        if skip is not None and not _is_sdxl(pipe) and encoders(pipe):
            # diffusers' SD1/SD2 clip_skip reads text_encoder.text_model, which transformers 5's
            # CLIPTextModel no longer has: encode the literal text here (same layers).
            import torch

            with torch.no_grad():
                return encode(pipe, prompt, negative_prompt, clip_skip, literal=True)
        out: dict[str, Any] = {"prompt": prompt, "negative_prompt": negative_prompt}
        if skip is not None:
            out["clip_skip"] = skip
        return out
    if syntax == "compel":
        from .compel_syntax import compel_prompt_kwargs

        return compel_prompt_kwargs(pipe, prompt, negative_prompt, clip_skip)
    if syntax != "a1111":
        raise ValueError(f"prompt_syntax {syntax!r} is not supported here")
    tokenizers: Sequence[Any] = [tok for _, tok, _ in encoders(pipe)]
    if not tokenizers or not needs_weighting(prompt, negative_prompt, clip_skip, list(tokenizers)):
        return {"prompt": prompt, "negative_prompt": negative_prompt}
    import torch

    with torch.no_grad():
        return encode(pipe, prompt, negative_prompt, clip_skip)
