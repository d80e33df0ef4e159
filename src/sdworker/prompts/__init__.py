"""Prompt syntax: A1111 attention weights (``(word:1.2)``, ``[word]``, ``BREAK``) and 75-token chunks.

See :mod:`sdworker.prompts.attention` for the exact rules. Pure Python: importing this package
loads neither torch nor a tokenizer.
"""

from .attention import (
    BREAK,
    ROUND_MULTIPLIER,
    SQUARE_MULTIPLIER,
    Chunk,
    chunk_tokens,
    is_break,
    pad_chunk,
    parse_prompt_attention,
    plain_text,
    tokenize_weighted,
)

__all__ = [
    "BREAK",
    "Chunk",
    "ROUND_MULTIPLIER",
    "SQUARE_MULTIPLIER",
    "chunk_tokens",
    "is_break",
    "pad_chunk",
    "parse_prompt_attention",
    "plain_text",
    "tokenize_weighted",
]
