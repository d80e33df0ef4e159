"""inference.*: generation jobs and the control plane around them (status, cancel, logs, capabilities).

Each method forwards to its interface: generation, batch, video and upscale plan and run jobs;
sessions answer status and cancel; the worker interface knows devices and capabilities.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from ..dispatch.registry import method
from ..dispatch.work import Work
from ..protocol.envelopes import Call, map_inference_type
from ..errors import ValidationFailed, WorkerError, placed

if TYPE_CHECKING:
    from ..dispatch.registry import Registry
    from ..interfaces.batch import BatchInterface
    from ..interfaces.generation import GenerationInterface
    from ..interfaces.prompts import PromptInterface
    from ..interfaces.sessions import SessionInterface
    from ..interfaces.validation import RequestChecks
    from ..interfaces.worker import WorkerInterface
    from ..schemas.base import NoParams
    from ..schemas.batch import BatchRequest, BatchResult
    from ..schemas.generation import GenerationRequest, GenerationResult, ParsePromptParams, ParsePromptResult, ValidateResult
    from ..schemas.sessions import ActiveSessionsParams, ActiveSessionsResult, CancelParams, CancelResult, Capabilities, DeviceParams, LogsParams, PipelineInfoParams, SessionParams, SessionStatusParams, ValidateParams


# Methods that run a mode under another name.
METHOD_MODES = {"inference.controlnet": "text2img"}


def controlnet_request(req: GenerationRequest) -> GenerationRequest:
    """inference.controlnet is text2img whose controlnets list must not be empty."""
    if not req.controlnets:
        msg = "inference.controlnet needs at least one ControlNet: [{model, image, ...}]"
        raise ValidationFailed(f"controlnets: {msg}", [{"path": "controlnets", "message": msg}])
    return req


class InferenceInstructor:
    def __init__(
        self,
        worker: "WorkerInterface",
        sessions: "SessionInterface",
        generation: Callable[[], "GenerationInterface"],
        batch: Callable[[], "BatchInterface"],
        prompts: Callable[[], "PromptInterface"],
        checks: "RequestChecks",
        registry: "Registry",
    ):
        self.worker = worker
        self.sessions = sessions
        self._generation = generation
        self._batch = batch
        self._prompts = prompts
        self.checks = checks
        self.registry = registry

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
        gen = self._generation()
        plan = gen.plan(req, mode, session_id)
        return Work(
            run=lambda ctx: gen.run(ctx, plan),
            model_id=plan.ref.model_id,
            device_id=self.worker.device_name(plan.device),
            executor="default",  # one model cache per process, so one queue: jobs never overlap
            preview=req.preview,
        )

    @method("inference.batch_process", "batch:BatchRequest", "batch:BatchResult", job=True)
    def batch_process(self, params: BatchRequest, call: Call) -> Work:
        """Many generation requests as one job: compatible items share batched pipeline calls."""

        session_id = params.session_id or call.session_id or call.request_id
        call.session_id = session_id
        batch = self._batch()
        bplan = batch.plan_all(params, session_id)
        device = bplan.device or self.worker.check_device(params.device_id)
        return Work(
            run=lambda ctx: batch.run(ctx, bplan),
            model_id=bplan.model_id,
            device_id=self.worker.device_name(device),
            executor="default",
            preview=params.preview,
        )

    @method("inference.validate_request", "sessions:ValidateParams", "generation:ValidateResult")
    def validate_request(self, params: ValidateParams, call: Call) -> dict:
        """Run every check a generation request gets, without generating."""
        data = params.request if params.request is not None else dict(params.model_extra or {})
        try:
            name = params.method or (map_inference_type(params.inference_type) if params.inference_type else "inference.text2img")
            spec = self.registry.get(name)
            if not spec.job or not name.startswith("inference."):
                raise ValidationFailed(f"{name} is not a generation method", [{"path": "method", "message": "not a generation method"}])
            req = spec.validate(data)
            if name == "inference.controlnet":
                req = controlnet_request(req)  # type: ignore[arg-type]
        except WorkerError as exc:
            return self.checks.invalid(exc)
        mode = METHOD_MODES.get(name, name.split(".", 1)[1])
        return self.checks.validate(req, mode, getattr(req, "session_id", None) or call.request_id)

    @method("inference.parse_prompt", "generation:ParsePromptParams", "generation:ParsePromptResult")
    def parse_prompt(self, params: ParsePromptParams, call: Call) -> dict:
        """A1111 prompt pieces [text, weight]; token and chunk counts when model_id is loaded (never loads it)."""
        return self._prompts().parse(params.prompt, params.model_id)

    # ---- sessions ----------------------------------------------------------------------------------

    @method("inference.get_session_status", "sessions:SessionStatusParams", "sessions:SessionStatusResult", inline=True)
    def get_session_status(self, params: SessionStatusParams, call: Call) -> dict:
        """A session's status and progress; include_metrics/resources/logs add those."""
        p = params
        return self.sessions.status(p.session_id, p.include_progress, p.include_metrics, p.include_resources, p.include_logs)

    @method("inference.cancel_session", "sessions:CancelParams", "sessions:CancelResult", inline=True)
    def cancel_session(self, params: CancelParams, call: Call) -> dict:
        """Drop a queued job or stop a running one at its next step (force: inside the step)."""
        return self.sessions.cancel(params.session_id, params.force_cancel, params.preserve_results)

    @method("inference.get_session_logs", "sessions:LogsParams", "sessions:LogsResult", inline=True)
    def get_session_logs(self, params: LogsParams, call: Call) -> dict:
        """The session's log lines, oldest first (from the ledger, with its transitions, for earlier runs)."""
        return self.sessions.logs(params.session_id, params.level, params.limit)

    @method("inference.get_session_performance", "sessions:SessionParams", "sessions:PerformanceResult", inline=True)
    def get_session_performance(self, params: SessionParams, call: Call) -> dict:
        """Timings of the session so far (queue, load, inference, encode, steps/s)."""
        return self.sessions.performance(params.session_id)

    @method("inference.get_session_resources", "sessions:SessionParams", "sessions:ResourcesResult", inline=True)
    def get_session_resources(self, params: SessionParams, call: Call) -> dict:
        """Peak RSS and VRAM of the session, and the process's memory now."""
        return self.sessions.resources_of(params.session_id)

    @method("inference.get_active_sessions", "sessions:ActiveSessionsParams", "sessions:ActiveSessionsResult", inline=True)
    def get_active_sessions(self, params: ActiveSessionsParams, call: Call) -> dict:
        """Queued and running sessions; include_interrupted adds those earlier runs left unfinished (ledger)."""
        return self.sessions.active(params.device_id, params.include_interrupted)

    @method("inference.get_status", "base:NoParams", "sessions:StatusResult", inline=True)
    def get_status(self, params: NoParams, call: Call) -> dict:
        """The worker's state: idle or busy, queue length, running session, loaded models."""
        return self.worker.status(self.sessions.summary)

    # ---- capabilities --------------------------------------------------------------------------

    @method("inference.get_capabilities", "base:NoParams", "sessions:Capabilities")
    def get_capabilities(self, params: NoParams, call: Call) -> dict:
        """What this worker can do, on which devices."""
        return self.worker.capabilities()

    @method("inference.get_device_capabilities", "sessions:DeviceParams", "sessions:DeviceCapabilities")
    def get_device_capabilities(self, params: DeviceParams, call: Call) -> dict:
        """One device's description and what it can run."""
        return {**self.worker.device(params.device_id), "supported_types": self.worker.supported_types(), **self.worker.limits()}

    @method("inference.get_supported_types", "base:NoParams", "sessions:SupportedTypes", inline=True)
    def get_supported_types(self, params: NoParams, call: Call) -> dict:
        """Generation modes and schedulers this worker accepts."""
        return {"supported_types": self.worker.supported_types(), "schedulers": self.worker.schedulers()}

    @method("inference.get_device_supported_types", "sessions:DeviceParams", "sessions:DeviceSupportedTypes")
    def get_device_supported_types(self, params: DeviceParams, call: Call) -> dict:
        """Generation modes one device accepts."""
        d = self.worker.device(params.device_id)
        return {"device_id": d["device_id"], "supported_types": self.worker.supported_types()}

    @method("inference.get_pipeline_info", "sessions:PipelineInfoParams", "sessions:PipelineInfoResult", inline=True)
    def get_pipeline_info(self, params: PipelineInfoParams, call: Call) -> dict:
        """Loaded pipelines: class, components, scheduler, device, dtype, load time."""
        return self.worker.pipelines_info(params.model_id)
