"""inference.*: generation jobs and the control plane around them (status, cancel, logs, capabilities)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from ..dispatch.registry import method
from ..dispatch.work import Work
from ..managers import schedulers
from ..managers.modes import MODES
from ..jobs.sessions import Session, iso
from ..protocol.envelopes import Call, map_inference_type
from ..errors import ValidationFailed, WorkerError, placed

from .postprocess import PostprocessInstructor

if TYPE_CHECKING:
    from ..schemas.base import NoParams
    from ..schemas.batch import BatchRequest, BatchResult
    from ..schemas.generation import GenerationRequest, GenerationResult, ParsePromptParams, ParsePromptResult, ValidateResult
    from ..schemas.postprocess import UpscaleRequest
    from ..schemas.sessions import ActiveSessionsParams, ActiveSessionsResult, CancelParams, CancelResult, Capabilities, DeviceParams, LogsParams, PipelineInfoParams, SessionParams, SessionStatusParams, ValidateParams
    from ..app import App


# Methods that run a mode under another name.
METHOD_MODES = {"inference.controlnet": "text2img"}


def controlnet_request(req: GenerationRequest) -> GenerationRequest:
    """inference.controlnet is text2img whose controlnets list must not be empty."""
    if not req.controlnets:
        msg = "inference.controlnet needs at least one ControlNet: [{model, image, ...}]"
        raise ValidationFailed(f"controlnets: {msg}", [{"path": "controlnets", "message": msg}])
    return req


def _supported_base_models() -> tuple[str, ...]:
    from ..families import supported_base_models  # the family modules load after the ready event

    return supported_base_models()


class InferenceInstructor:
    def __init__(self, app: "App"):
        self.app = app

    # ---- generation ------------------------------------------------------------------------------

    @method("inference.text2img", "generation:GenerationRequest", "generation:GenerationResult", job=True)
    def text2img(self, params: GenerationRequest, call: Call) -> Work:
        """Generate images from a prompt."""
        return self._work(params, call, "text2img")

    @method("inference.img2img", "generation:GenerationRequest", "generation:GenerationResult", job=True)
    def img2img(self, params: GenerationRequest, call: Call) -> Work:
        """Generate from an init image (init_image, strength)."""
        return self._work(params, call, "img2img")

    @method("inference.inpainting", "generation:GenerationRequest", "generation:GenerationResult", job=True)
    def inpainting(self, params: GenerationRequest, call: Call) -> Work:
        """Repaint the white part of mask_image in init_image; works with regular checkpoints."""
        return self._work(params, call, "inpainting")

    @method("inference.controlnet", "generation:GenerationRequest", "generation:GenerationResult", job=True)
    def controlnet(self, params: GenerationRequest, call: Call) -> Work:
        """text2img guided by ControlNets: controlnets [{model, image, conditioning_scale, preprocessor, start, end}] is required."""
        return self._work(controlnet_request(params), call, "text2img")

    def _work(self, req: GenerationRequest, call: Call, mode: str) -> Work:
        session_id = req.session_id or call.session_id or call.request_id
        call.session_id = session_id
        gen = self.app.generation
        plan = gen.plan(req, mode, session_id)
        return Work(
            run=lambda ctx: gen.run(ctx, plan),
            model_id=plan.ref.model_id,
            device_id=self.app.runtime.device_name(plan.device),
            executor="default",  # one model cache per process, so one queue: jobs never overlap
            preview=req.preview,
        )

    @method("inference.batch_process", "batch:BatchRequest", "batch:BatchResult", job=True)
    def batch_process(self, params: BatchRequest, call: Call) -> Work:
        """Many generation requests as one job: compatible items share batched pipeline calls."""

        session_id = params.session_id or call.session_id or call.request_id
        call.session_id = session_id
        batch = self.app.batch
        bplan = batch.plan_all(params, session_id)
        device = bplan.device or self.app.runtime.check_device(params.device_id)
        return Work(
            run=lambda ctx: batch.run(ctx, bplan),
            model_id=bplan.model_id,
            device_id=self.app.runtime.device_name(device),
            executor="default",
            preview=params.preview,
        )

    @method("inference.validate_request", "sessions:ValidateParams", "generation:ValidateResult")
    def validate_request(self, params: ValidateParams, call: Call) -> dict:
        """Run every check a generation request gets, without generating."""
        data = params.request if params.request is not None else dict(params.model_extra or {})
        try:
            name = params.method or (map_inference_type(params.inference_type) if params.inference_type else "inference.text2img")
            spec = self.app.registry.get(name)
            if not spec.job or not name.startswith("inference."):
                raise ValidationFailed(f"{name} is not a generation method", [{"path": "method", "message": "not a generation method"}])
            req = spec.validate(data)
            from ..schemas.batch import BatchRequest
            from ..schemas.postprocess import UpscaleRequest

            if isinstance(req, UpscaleRequest):
                return PostprocessInstructor(self.app).validate(req, req.session_id or call.request_id)
            if isinstance(req, BatchRequest):  # the batch's own checks: every item planned, errors per item
                bplan = self.app.batch.plan_all(req, req.session_id or call.request_id)
                bad = [it for it in bplan.items if it.error is not None]
                errors = [
                    {**d, "error_code": it.error.code}  # type: ignore[union-attr]
                    for it in bad
                    for d in (it.error.details or [{"path": f"data.requests[{it.index}]", "message": it.error.message}])  # type: ignore[union-attr]
                ]
                summary = {"items": len(bplan.items), "valid_items": len(bplan.items) - len(bad), "groups": len(bplan.groups), "batch_size": bplan.batch_size, "warnings": bplan.warnings}
                return {"valid": not bad, "errors": errors, "normalized": summary}
            if name == "inference.controlnet":
                req = controlnet_request(req)  # type: ignore[arg-type]
            mode = METHOD_MODES.get(name, name.split(".", 1)[1])
            planner = self.app.video if mode in ("text2video", "img2video") else self.app.generation  # video: interfaces.video
            plan = planner.plan(req, mode, req.session_id or call.request_id)  # type: ignore[arg-type]
        except WorkerError as exc:
            errors = placed(exc, "data")[1] or [{"path": "data", "message": exc.message}]
            return {"valid": False, "errors": [{**e, "error_code": exc.code} for e in errors], "normalized": None}
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
        normalized.update(model_id=plan.ref.model_id, width=plan.width, height=plan.height, device_id=self.app.runtime.device_name(plan.device))
        return {"valid": True, "errors": [], "normalized": normalized}

    @method("inference.parse_prompt", "generation:ParsePromptParams", "generation:ParsePromptResult")
    def parse_prompt(self, params: ParsePromptParams, call: Call) -> dict:
        """A1111 prompt pieces [text, weight]; token and chunk counts when model_id is loaded (never loads it)."""
        from ..prompts.attention import parse_prompt_attention

        out: dict[str, Any] = {"chunks": [[t, w] for t, w in parse_prompt_attention(params.prompt)], "model_loaded": False}
        if params.model_id is None:
            return out
        ref = self.app.locator.resolve(params.model_id)  # an unknown model is a validation error
        lp = next((lp for lp in self.app.pipelines.loaded() if lp.ref.source == ref.source), None)
        if lp is None:
            return out
        from ..prompts.encode import encoders, prompt_chunks

        out["model_loaded"] = True
        out["token_counts"], out["chunks_per_encoder"] = {}, {}
        for name, tok, _ in encoders(lp.pipe):
            chunks = prompt_chunks(params.prompt, tok, lp.pipe)
            out["token_counts"][name] = sum(len(c) for c in chunks)
            out["chunks_per_encoder"][name] = len(chunks)
        return out

    # ---- sessions ----------------------------------------------------------------------------------

    def _session(self, session_id: str) -> Session:
        s = self.app.sessions.get(session_id)
        if s is None:
            raise self._unknown(session_id)
        return s

    @staticmethod
    def _unknown(session_id: str) -> ValidationFailed:
        return ValidationFailed(
            f"no session {session_id!r} in this worker's memory or its session ledger",
            [{"path": "session_id", "message": "unknown session"}],
        )

    def _job_key(self, key: str) -> str:
        """A session id, or the request id of an active job (JSON-RPC's $/cancelRequest names requests)."""
        if self.app.sessions.get(key) is None:
            for s in self.app.sessions.active():
                if s.request_id == key:
                    return s.session_id
        return key

    def _recorded(self, session_id: str) -> dict[str, Any] | None:
        """A session this run does not hold (an earlier run's, or one trimmed from memory), from the ledger."""
        if self.app.sessions.get(session_id) is not None:
            return None
        ledger = getattr(self.app, "ledger", None)
        rec = ledger.lookup(session_id) if ledger is not None else None
        if rec is None:
            raise self._unknown(session_id)
        return rec

    def _summary(self, s: Session) -> dict[str, Any]:
        return s.summary(self.app.engine.queue_position(s))

    @method("inference.get_session_status", "sessions:SessionStatusParams", "sessions:SessionStatusResult")
    def get_session_status(self, params: SessionStatusParams, call: Call) -> dict:
        """A session's status and progress; include_metrics/resources/logs add those."""
        rec = self._recorded(params.session_id)
        if rec is not None:  # from the ledger: same shape, plus source/run_id/pid
            performance, logs = rec.pop("performance"), rec.pop("logs")
            rec.pop("request")
            if not params.include_progress:
                rec.pop("progress")
            if params.include_metrics:
                rec["performance"] = performance
            if params.include_resources:
                rec["resources"] = {"device": rec["device_id"]}
            if params.include_logs:
                rec["logs"] = logs
            return rec
        s = self._session(params.session_id)
        out = self._summary(s)
        if not params.include_progress:
            out.pop("progress")
        if params.include_metrics:
            out["performance"] = dict(s.performance)
        if params.include_resources:
            out["resources"] = self._resources(s)
        if params.include_logs:
            out["logs"] = list(s.logs)
        out["transitions"] = [{"status": t["status"], "time": iso(t["time"])} for t in s.transitions]
        return out

    @method("inference.cancel_session", "sessions:CancelParams", "sessions:CancelResult")
    def cancel_session(self, params: CancelParams, call: Call) -> dict:
        """Drop a queued job or stop a running one at its next step (force: inside the step)."""
        key = self._job_key(params.session_id)
        rec = self._recorded(key)
        if rec is not None:  # an earlier run's session: nothing left to stop
            return {"session_id": rec["session_id"], "cancelled": False, "status": rec["status"], "action": "not_active", "step": rec["progress"]["step"]}
        s = self._session(key)
        action = self.app.engine.cancel(s.session_id, force=params.force_cancel, preserve=params.preserve_results)
        return {"session_id": s.session_id, "cancelled": action != "not_active", "status": s.status, "action": action, "step": s.step}

    @method("inference.get_session_logs", "sessions:LogsParams", "sessions:LogsResult")
    def get_session_logs(self, params: LogsParams, call: Call) -> dict:
        """The session's log lines, oldest first (from the ledger, with its transitions, for earlier runs)."""
        rec = self._recorded(params.session_id)
        if rec is not None:
            logs = [e for e in rec["logs"] if params.level is None or e.get("level") == params.level.lower()]
            return {
                "session_id": rec["session_id"],
                "status": rec["status"],
                "logs": logs[-params.limit :],
                "count": len(logs),
                "transitions": rec["transitions"],
                "source": "ledger",
            }
        s = self._session(params.session_id)
        logs = [e for e in s.logs if params.level is None or e["level"] == params.level.lower()]
        return {"session_id": s.session_id, "logs": logs[-params.limit :], "count": len(logs)}

    @method("inference.get_session_performance", "sessions:SessionParams", "sessions:PerformanceResult")
    def get_session_performance(self, params: SessionParams, call: Call) -> dict:
        """Timings of the session so far (queue, load, inference, encode, steps/s)."""
        rec = self._recorded(params.session_id)
        if rec is not None:
            return {"session_id": rec["session_id"], "status": rec["status"], "performance": rec["performance"], "source": "ledger"}
        s = self._session(params.session_id)
        return {"session_id": s.session_id, "status": s.status, "performance": dict(s.performance)}

    @method("inference.get_session_resources", "sessions:SessionParams", "sessions:ResourcesResult")
    def get_session_resources(self, params: SessionParams, call: Call) -> dict:
        """Peak RSS and VRAM of the session, and the process's memory now."""
        s = self._session(params.session_id)
        return {"session_id": s.session_id, "status": s.status, "resources": self._resources(s)}

    def _resources(self, s: Session) -> dict[str, Any]:
        import psutil

        now = psutil.Process().memory_info().rss
        return {**s.resources, "device": s.device_id, "rss_mb": round(now / 2**20, 1)}

    @method("inference.get_active_sessions", "sessions:ActiveSessionsParams", "sessions:ActiveSessionsResult")
    def get_active_sessions(self, params: ActiveSessionsParams, call: Call) -> dict:
        """Queued and running sessions; include_interrupted adds those earlier runs left unfinished (ledger)."""
        active = [s for s in self.app.sessions.active() if params.device_id in (None, s.device_id)]
        out: dict[str, Any] = {"sessions": [self._summary(s) for s in active], "count": len(active)}
        if params.include_interrupted:
            out["interrupted"] = self.app.ledger.interrupted()
        return out

    @method("inference.get_status", "base:NoParams", "sessions:StatusResult")
    def get_status(self, params: NoParams, call: Call) -> dict:
        """The worker's state: idle or busy, queue length, running session, loaded models."""
        running = self.app.engine.running()
        return {
            "status": "busy" if running else ("starting" if not self.app.runtime.ready else "idle"),
            "accepting_jobs": self.app.engine.accepting,
            "queue_length": self.app.engine.queued_count(),
            "running": [self._summary(s) for s in running],
            "loaded_models": [lp.ref.model_id for lp in self.app.pipelines.loaded()],
            "device": self.app.runtime.device,
            "uptime_s": round(time.monotonic() - self.app.started, 3),
        }

    # ---- capabilities --------------------------------------------------------------------------

    def _types(self) -> list[str]:
        return [*MODES, "text2video", "img2video"]

    @method("inference.get_capabilities", "base:NoParams", "sessions:Capabilities", needs_runtime=True)
    def get_capabilities(self, params: NoParams, call: Call) -> dict:
        """What this worker can do, on which devices."""
        s = self.app.settings
        return {
            "supported_types": self._types(),
            "max_concurrent": 1,
            "max_batch_size": s.max_batch_size,
            "max_resolution": {"width": s.max_resolution, "height": s.max_resolution},
            "devices": self.app.runtime.devices(),
            "schedulers": schedulers.accepted_names(),
            "base_models": list(_supported_base_models()),
        }

    def _device(self, device_id: str | None) -> dict[str, Any]:
        self.app.runtime.wait()
        wanted = self.app.runtime.device_name(self.app.runtime.check_device(device_id))
        for d in self.app.runtime.devices():
            if d["device_id"] == wanted:
                return d
        raise ValidationFailed(f"device {device_id!r} is not available", [{"path": "device_id", "message": "unknown device"}])

    @method("inference.get_device_capabilities", "sessions:DeviceParams", "sessions:DeviceCapabilities", needs_runtime=True)
    def get_device_capabilities(self, params: DeviceParams, call: Call) -> dict:
        """One device's description and what it can run."""
        s = self.app.settings
        return {
            **self._device(params.device_id),
            "supported_types": self._types(),
            "max_concurrent": 1,
            "max_batch_size": s.max_batch_size,
            "max_resolution": {"width": s.max_resolution, "height": s.max_resolution},
        }

    @method("inference.get_supported_types", "base:NoParams", "sessions:SupportedTypes")
    def get_supported_types(self, params: NoParams, call: Call) -> dict:
        """Generation modes and schedulers this worker accepts."""
        return {"supported_types": self._types(), "schedulers": schedulers.accepted_names()}

    @method("inference.get_device_supported_types", "sessions:DeviceParams", "sessions:DeviceSupportedTypes", needs_runtime=True)
    def get_device_supported_types(self, params: DeviceParams, call: Call) -> dict:
        """Generation modes one device accepts."""
        d = self._device(params.device_id)
        return {"device_id": d["device_id"], "supported_types": self._types()}

    @method("inference.get_pipeline_info", "sessions:PipelineInfoParams", "sessions:PipelineInfoResult")
    def get_pipeline_info(self, params: PipelineInfoParams, call: Call) -> dict:
        """Loaded pipelines: class, components, scheduler, device, dtype, load time."""
        out = []
        for lp in self.app.pipelines.loaded():
            if params.model_id and lp.ref.model_id != params.model_id:
                continue
            components = {k: type(v).__name__ for k, v in lp.pipe.components.items() if v is not None}
            out.append(
                {
                    "model_id": lp.ref.model_id,
                    "base_model": lp.ref.base_model,
                    "pipeline_class": type(lp.pipe).__name__,
                    "modes": sorted(lp.modes),
                    "scheduler": type(lp.pipe.scheduler).__name__,
                    "components": components,
                    "device": lp.device,
                    "dtype": lp.dtype,
                    "load_ms": lp.load_ms,
                    "runs": lp.runs,
                }
            )
        return {"pipelines": out, "count": len(out)}

