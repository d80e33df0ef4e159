"""inference.parse_prompt: a prompt's A1111 pieces, and its token counts under a loaded model's tokenizers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..managers.locator import ModelLocator
    from ..managers.pipelines import PipelineManager


class PromptInterface:
    def __init__(self, locator: "ModelLocator", pipelines: "PipelineManager"):
        self.locator = locator
        self.pipelines = pipelines

    def parse(self, prompt: str, model_id: str | None) -> dict[str, Any]:
        """Never loads a model: token counts only when `model_id` is already resident."""
        from ..prompts.attention import parse_prompt_attention

        out: dict[str, Any] = {"chunks": [[t, w] for t, w in parse_prompt_attention(prompt)], "model_loaded": False}
        if model_id is None:
            return out
        ref = self.locator.resolve(model_id)  # an unknown model is a validation error
        lp = next((lp for lp in self.pipelines.loaded() if lp.ref.source == ref.source), None)
        if lp is None:
            return out
        from ..prompts.encode import encoders, prompt_chunks

        out["model_loaded"] = True
        out["token_counts"], out["chunks_per_encoder"] = {}, {}
        for name, tok, _ in encoders(lp.pipe):
            chunks = prompt_chunks(prompt, tok, lp.pipe)
            out["token_counts"][name] = sum(len(c) for c in chunks)
            out["chunks_per_encoder"][name] = len(chunks)
        return out
