"""inference.validate_request: every check a generation request gets (its plan), without generating."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from ..errors import WorkerError, placed

if TYPE_CHECKING:
    from .batch import BatchInterface
    from .generation import GenerationInterface
    from .upscale import UpscaleInterface
    from .video import VideoInterface


class RequestChecks:
    def __init__(
        self,
        generation: Callable[[], "GenerationInterface"],
        batch: Callable[[], "BatchInterface"],
        video: Callable[[], "VideoInterface"],
        upscale: Callable[[], "UpscaleInterface"],
        device_name: Callable[[str], str],
    ):
        self._generation, self._batch, self._video, self._upscale = generation, batch, video, upscale
        self._device_name = device_name

    def validate(self, req: Any, mode: str, session_id: str) -> dict[str, Any]:
        """`req` is the method's validated params; `mode` the generation mode it runs (or upscale, batch_process)."""
        from ..schemas.batch import BatchRequest
        from ..schemas.postprocess import UpscaleRequest

        try:
            if isinstance(req, UpscaleRequest):
                return self._upscale().validate(req, session_id)
            if isinstance(req, BatchRequest):  # the batch's own checks: every item planned, errors per item
                return self._batch_checks(req, session_id)
            planner: Any = self._video() if mode in ("text2video", "img2video") else self._generation()
            plan = planner.plan(req, mode, session_id)
        except WorkerError as exc:
            return self.invalid(exc)
        normalized = plan.req.model_dump(mode="json")
        for key, sent in (("prompt", getattr(plan, "prompt_as_sent", None)), ("negative_prompt", getattr(plan, "negative_as_sent", None))):
            if sent is not None:  # the user's words, not the encoders' copy (TI tokens in, LoRA tags out)
                normalized[key] = sent
        for key in ("init_image", "mask_image"):
            if normalized.get(key):
                normalized[key] = f"<{len(normalized[key])} chars>"
        for cn in normalized.get("controlnets") or []:
            if cn.get("image"):
                cn["image"] = f"<{len(cn['image'])} chars>"
        normalized.update(seed=plan.seed if req.seed is not None else None, scheduler=plan.scheduler.id if plan.scheduler else None)
        normalized.update(model_id=plan.ref.model_id, width=plan.width, height=plan.height, device_id=self._device_name(plan.device))
        return {"valid": True, "errors": [], "normalized": normalized}

    @staticmethod
    def invalid(exc: WorkerError) -> dict[str, Any]:
        errors = placed(exc, "data")[1] or [{"path": "data", "message": exc.message}]
        return {"valid": False, "errors": [{**e, "error_code": exc.code} for e in errors], "normalized": None}

    def _batch_checks(self, req: Any, session_id: str) -> dict[str, Any]:
        bplan = self._batch().plan_all(req, session_id)
        bad = [it for it in bplan.items if it.error is not None]
        errors = [
            {**d, "error_code": it.error.code}  # type: ignore[union-attr]
            for it in bad
            for d in (it.error.details or [{"path": f"data.requests[{it.index}]", "message": it.error.message}])  # type: ignore[union-attr]
        ]
        summary = {"items": len(bplan.items), "valid_items": len(bplan.items) - len(bad), "groups": len(bplan.groups), "batch_size": bplan.batch_size, "warnings": bplan.warnings}
        return {"valid": not bad, "errors": errors, "normalized": summary}
