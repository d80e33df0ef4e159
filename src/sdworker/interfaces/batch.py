"""inference.batch_process: many generation requests as one job, run as few batched pipeline calls.

Semantics (the issue 3 report says the same; docs/protocol.md does not cover batches yet):

- plan_all: every item is validated and planned at submit time with GenerationInterface.plan. A
  bad item gets its own error entry (error_code, error, error_details with paths under
  `data.requests[i]`) and never sinks the others. If every item is bad the call still succeeds:
  the result lists one error per item and a warning; nothing is loaded or run. Only a malformed
  envelope (no `requests`, a bad `batch_config`) is a validation_error of the whole call.
- group: items share one diffusers call when everything that diffusers cannot vary per image in
  one call is equal: the model (path), device, mode, width, height, steps, the family's call
  options (guidance_scale; Flux: max_sequence_length and true CFG; HiDream: max_sequence_length),
  the scheduler choice (Flux/HiDream: the sampler and scheduler names), strength
  (img2img/inpainting only) and whether negative_prompt is None (SDXL zeroes the negative
  embedding for None but encodes "" otherwise, so None and text cannot share a call). Prompts,
  negative prompts, seeds and init/mask images go per image as lists. The call is made as the
  model's family makes a single request's (families/: prompt and call arguments, mode pipeline,
  scheduler). Family.batch_modes says which modes batch: SD and Flux (Fill too) every mode,
  HiDream text2img (its only mode). An item whose mode its family does not batch still runs: alone,
  as a group of its own (`alone`), in one call made exactly as its own inference.<mode> request's
  (the prompt and init/mask image as they are, num_images_per_prompt = num_images, its generator
  list), so it gives that request's images; batch_size and dynamic sizing do not split it. An item
  with num_images n expands to n images with seeds seed..seed+n-1, each with its own CPU
  generator (contract section 6). A group's images run in calls of at most batch_size images
  (an item's images may span two calls); with enable_dynamic_sizing fewer, see _images_per_call.
  Items that are invalid on their own are per-item errors; so, still, are items using what only
  a single request carries out (Plan.single_run_only, post_processing): send those alone.
- run: groups of one model run back to back (one resident model: fewer reloads); each finished
  item is encoded and saved as soon as its last image is out. A group that fails (out of memory,
  model_load_failed, ...) fails its items only; cancel and timeout stop the whole job at the next
  step, and with preserve_results the response keeps the finished items (ctx.partial).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from ..dispatch.context import JobContext
from ..managers import modes, optimize
from ..managers.adapters import AdapterManager
from ..managers.denoise import denoiser_of, force_cancel_hooks, generators
from ..managers.runtime import RssSampler
from ..protocol.envelopes import map_inference_type
from ..errors import Cancelled, TimedOut, ValidationFailed, WorkerError, from_validation
from ..schemas.batch import BatchRequest
from ..schemas.generation import GenerationRequest

if TYPE_CHECKING:
    from .generation import GenerationInterface, Plan


@dataclass
class BatchItem:
    index: int
    plan: "Plan | None" = None
    error: WorkerError | None = None


@dataclass
class Group:
    key: tuple
    items: list[BatchItem] = field(default_factory=list)
    #: one item whose mode its family does not batch: one call made as its own request's
    alone: bool = False

    @property
    def images(self) -> list[tuple[BatchItem, int]]:
        """(item, image index within the item), item-major: the order of the pipeline's lists."""
        return [(it, i) for it in self.items for i in range(it.plan.req.num_images)]  # type: ignore[union-attr]


@dataclass
class BatchPlan:
    session_id: str
    items: list[BatchItem]
    groups: list[Group]
    batch_size: int
    dynamic: bool
    threshold: float
    warnings: list[str]

    @property
    def model_id(self) -> str | None:
        for g in self.groups:
            return g.items[0].plan.ref.model_id  # type: ignore[union-attr]
        return None

    @property
    def device(self) -> str | None:
        for g in self.groups:
            return g.items[0].plan.device  # type: ignore[union-attr]
        return None


def group_key(plan: "Plan") -> tuple:
    """What must be equal for two images to share one diffusers call (see the module docstring)."""
    req = plan.req
    return (
        str(plan.ref.source),  # a transformer file shares its companion folder's path, not its weights
        plan.device,
        plan.mode,
        plan.width,
        plan.height,
        req.steps,
        tuple(sorted(plan.family.call_kwargs(req, plan).items())),  # guidance_scale; Flux/HiDream: + their options
        plan.scheduler.id if plan.scheduler else None,
        None if plan.family.sd_schedulers else (req.sampler, req.scheduler),  # the family builds the scheduler from these
        req.strength if plan.mode != "text2img" else None,
        req.negative_prompt is None,
        tuple((p.item.model_id, p.weight) for p in plan.loras),  # one LoRA set per diffusers call
        repr(req.optimize),  # one set of speed options per diffusers call
    )


def _prompt_signature(kw: dict[str, Any]) -> tuple:
    """Prompt kwargs with equal signatures can share one call."""
    if "prompt" in kw:
        return ("text", kw.get("negative_prompt") is None, kw.get("clip_skip"))
    return ("embeds",) + tuple((k, tuple(v.shape), str(v.dtype)) for k, v in sorted(kw.items()))


def _batched_prompt_kwargs(torch: Any, kws: list[dict[str, Any]]) -> dict[str, Any]:
    """One call's prompt kwargs from its images' (same signature): text lists, or embeddings stacked."""
    first = kws[0]
    if "prompt" in first:
        out: dict[str, Any] = {"prompt": [kw["prompt"] for kw in kws]}
        if "negative_prompt" in first:  # absent where the pipeline has none (FluxFillPipeline) or it is unused
            out["negative_prompt"] = None if first["negative_prompt"] is None else [kw["negative_prompt"] for kw in kws]
        if "clip_skip" in first:
            out["clip_skip"] = first["clip_skip"]
        return out
    return {k: torch.cat([kw[k] for kw in kws], dim=0) for k in first}


def _error_entry(exc: WorkerError) -> dict[str, Any]:
    return {"error_code": exc.code, "error": exc.message, "error_details": list(exc.details)}


def _reprefix(exc: WorkerError, index: int) -> WorkerError:
    """Point the detail paths of an item's error at the item: data.width -> data.requests[2].width."""
    prefix = f"data.requests[{index}]"
    for d in exc.details:
        path = str(d.get("path", ""))
        if path == "data" or path.startswith("data."):
            d["path"] = prefix + path[4:]
        elif path and not path.startswith(prefix):
            d["path"] = f"{prefix}.{path}"
    return exc


class BatchInterface:
    def __init__(self, gen: "GenerationInterface"):
        self.gen = gen

    # ---- planning (on the reader thread, before queueing) -----------------------------------------

    def plan_all(self, params: BatchRequest, session_id: str) -> BatchPlan:
        warnings: list[str] = []
        items: list[BatchItem] = []
        for i, raw in enumerate(params.requests):
            try:
                plan = self._plan_one(raw, i, params, session_id)
                items.append(BatchItem(i, plan=plan))
            except WorkerError as exc:
                items.append(BatchItem(i, error=_reprefix(exc, i)))
        cfg = params.batch_config
        limit = self.gen.settings.max_batch_size
        batch_size = cfg.batch_size
        if batch_size > limit:
            warnings.append(f"batch_size {batch_size} is over this worker's max_batch_size; using {limit}")
            batch_size = limit
        if cfg.parallel_processing:
            warnings.append("parallel_processing is ignored: one device runs one pipeline call at a time")
        groups = self.group([it for it in items if it.plan is not None])
        for g in groups:
            if g.alone:
                plan = g.items[0].plan
                assert plan is not None
                batched = ", ".join(plan.family.batch_modes) or "no mode"
                warnings.append(
                    f"item {g.items[0].index}: {plan.mode} on {plan.ref.base_model} models does not batch (batch_process batches {batched} there); "
                    "it runs alone, as its own request would"
                )
        if not groups:
            warnings.append("no request of the batch is valid; nothing was run (see each item's error)")
        return BatchPlan(session_id, items, groups, batch_size, cfg.enable_dynamic_sizing, cfg.memory_threshold, warnings)

    def _plan_one(self, raw: Any, i: int, params: BatchRequest, session_id: str) -> "Plan":
        if not isinstance(raw, dict):
            raise ValidationFailed("a batch item must be an object", [{"path": "data", "message": "expected an object"}])
        data = dict(raw)
        kinds = {k: data.pop(k) for k in ("type", "mode", "inference_type") if k in data}
        mode = "text2img"
        if kinds:
            names = {map_inference_type(v).split(".", 1)[1] for v in kinds.values()}
            if len(names) > 1:
                raise ValidationFailed(f"conflicting modes {sorted(names)}", [{"path": "data.type", "message": "conflicting type/mode"}])
            mode = names.pop()
            if mode not in modes.MODES:
                raise ValidationFailed(
                    f"{mode} cannot run in a batch; use one of {', '.join(modes.MODES)}",
                    [{"path": "data.type", "message": f"unsupported in a batch: {mode}"}],
                )
        data.pop("session_id", None)  # the batch is one session; items are named <session>-<index>
        if params.device_id is not None:
            data.setdefault("device_id", params.device_id)
        try:
            req = GenerationRequest.model_validate(data)
        except ValidationError as exc:
            raise from_validation(exc, "data") from None
        plan = self.gen.plan(req, mode, f"{session_id}-{i}")
        alone = plan.single_run_only + (["post_processing"] if req.post_processing else [])
        if alone:  # batched pipeline calls carry none of these: say so rather than drop them
            msg = f"{', '.join(alone)} cannot run inside batch_process; send this item as its own request"
            raise ValidationFailed(f"data.{alone[0]}: {msg}", [{"path": f"data.{name}", "message": msg} for name in alone])
        return plan

    @staticmethod
    def group(items: list[BatchItem]) -> list[Group]:
        """Compatible items together, in request order; groups of one model back to back. An item whose
        mode its family does not batch (Family.batch_modes) is a group of its own."""
        by_key: dict[tuple, Group] = {}
        for it in items:
            assert it.plan is not None
            key = group_key(it.plan)
            alone = it.plan.mode not in it.plan.family.batch_modes
            if alone:
                key += (("alone", it.index),)
            by_key.setdefault(key, Group(key, alone=alone)).items.append(it)
        models: list[str] = []
        for key in by_key:
            if key[0] not in models:
                models.append(key[0])
        return sorted(by_key.values(), key=lambda g: models.index(g.key[0]))  # stable: request order within a model

    # ---- memory ----------------------------------------------------------------------------------

    @staticmethod
    def estimate_image_bytes(pipe: Any, plan: "Plan") -> int:
        """A rough, deliberately simple estimate of one image's working memory in a call.

        With T = latent positions ((W/f) x (H/f), f the VAE scale factor) and C the UNet's first block
        width: T*C*40 elements of UNet activations (the skip connections and intermediates of the
        full-resolution level; lower levels add less), plus T*T*8 for one attention score matrix of 8
        heads (the largest single tensor when attention is not memory-efficient), both doubled under
        classifier-free guidance; plus W*H*128*3 elements for the VAE decoder's full-resolution level.
        Times the element size of the UNet's dtype. Not a measurement: an order of magnitude that
        keeps a large batch from being tried where it clearly cannot fit.
        """
        f = int(getattr(pipe, "vae_scale_factor", 8) or 8)
        t = (plan.width // f) * (plan.height // f)
        unet = getattr(pipe, "unet", None)
        channels = 320  # Flux, HiDream (no UNet): C stays 320
        elem = int(getattr(getattr(denoiser_of(pipe), "dtype", None), "itemsize", 4))
        if unet is not None:
            channels = int(list(getattr(unet.config, "block_out_channels", [320]))[0])
        cfg = 2 if plan.req.guidance_scale > 1.0 else 1
        elements = cfg * (t * channels * 40 + t * t * 8) + plan.width * plan.height * 128 * 3
        return elements * elem

    def available_bytes(self, device: str) -> int:
        torch = self.gen.runtime.torch
        if device.startswith("cuda") and torch is not None:
            free, _total = torch.cuda.mem_get_info(torch.device(device))
            return int(free)
        import psutil

        return int(psutil.virtual_memory().available)

    def _images_per_call(self, bplan: BatchPlan, pipe: Any, plan: "Plan", device: str, notes: list[dict[str, Any]], warnings: list[str], g: int) -> int:
        if not bplan.dynamic:
            return bplan.batch_size
        per_image = self.estimate_image_bytes(pipe, plan)
        free = self.available_bytes(device)
        fit = max(1, int(bplan.threshold * free // max(per_image, 1)))
        size = min(bplan.batch_size, fit)
        notes.append({"group": g, "estimated_mb_per_image": round(per_image / 2**20, 1), "available_mb": round(free / 2**20, 1), "images_per_call": size})
        if size < bplan.batch_size:
            warnings.append(
                f"group {g}: {size} image(s) per call instead of {bplan.batch_size}: about {per_image / 2**20:.0f} MB per image "
                f"against {bplan.threshold:g} of {free / 2**20:.0f} MB free"
            )
        return size

    # ---- the job ---------------------------------------------------------------------------------

    def run(self, ctx: JobContext, bplan: BatchPlan) -> dict[str, Any]:
        t_start = time.perf_counter()
        gen, perf = self.gen, ctx.session.performance
        warnings = list(bplan.warnings)
        done: dict[int, dict[str, Any]] = {}  # item index -> its finished entry
        for it in bplan.items:
            if it.error is not None:
                done[it.index] = {"index": it.index, "success": False, "error": _error_entry(it.error)}
        stats: dict[str, Any] = {"load": 0.0, "inference": 0.0, "encode": 0.0, "save": 0.0, "steps": 0, "calls": [], "memory": []}
        rss = RssSampler()
        rss.sample()
        device = None
        try:
            if bplan.groups:
                gen.runtime.wait()
                device = gen.runtime.device_name(gen.runtime.check_device(bplan.groups[0].items[0].plan.device))  # type: ignore[union-attr]
                ctx.session.device_id = device
                gen.runtime.reset_peak(device)
            expected = [self._call_steps(g) * self._calls(g, bplan.batch_size) for g in bplan.groups]
            ctx.session.total_steps = sum(expected)
            ctx.start_steps()
            steps_before = 0
            for gi, grp in enumerate(bplan.groups):
                ctx.check_cancelled()
                reached = steps_before + expected[gi]
                try:
                    reached = self._run_group(ctx, bplan, gi, grp, done, warnings, stats, rss, steps_before, sum(expected[gi + 1 :]))
                except (Cancelled, TimedOut):
                    raise
                except Exception as exc:  # this group's items fail; the other groups still run
                    from ..jobs.executor import classify

                    err = classify(exc)
                    if not isinstance(exc, WorkerError):
                        import logging

                        logging.getLogger(__name__).exception("batch group %d failed", gi)
                    ctx.log(f"group {gi} failed: {err.message}", "error")
                    for it in grp.items:
                        done.setdefault(it.index, {"index": it.index, "success": False, "error": _error_entry(err)})
                steps_before = reached
        except (Cancelled, TimedOut) as exc:
            kept = self._result(ctx, bplan, done, warnings, stats, rss, t_start, exc.code)
            ctx.partial = kept
            if ctx.session.preserve_results:
                exc.data = kept
            raise
        return self._result(ctx, bplan, done, warnings, stats, rss, t_start, None)

    @staticmethod
    def _calls(grp: Group, per_call: int) -> int:
        """Calls the group should take, before memory says (an item running alone: one)."""
        return 1 if grp.alone else math.ceil(len(grp.images) / per_call)

    @staticmethod
    def _call_steps(grp: Group) -> int:
        """Steps one call of the group reports, before the scheduler says (order-2 samplers report more)."""
        plan = grp.items[0].plan
        assert plan is not None
        return plan.req.steps if plan.mode == "text2img" else max(1, min(int(plan.req.steps * plan.req.strength), plan.req.steps))

    def _run_group(
        self,
        ctx: JobContext,
        bplan: BatchPlan,
        gi: int,
        grp: Group,
        done: dict[int, dict[str, Any]],
        warnings: list[str],
        stats: dict[str, Any],
        rss: RssSampler,
        steps_before: int,
        steps_after: int,
    ) -> int:
        """Run one group's calls with its LoRAs and embeddings on its pipeline; returns the overall step count reached."""
        gen = self.gen
        first = grp.items[0].plan
        assert first is not None
        device = gen.runtime.device_name(gen.runtime.check_device(first.device))
        if ctx.session.status != "loading":
            ctx.set_status("loading")
        with gen.pipelines.use(first.ref, device, gen.runtime.dtype_name) as (loaded, report):
            stats["load"] += report.ms / 1000
            ctx.log(f"group {gi}: model {first.ref.model_id} {'loaded' if report.fresh else 'from the cache'}, {len(grp.items)} item(s)")
            pipe = first.family.mode_pipeline(gen.pipelines, loaded, first.mode)
            for it in grp.items:
                warnings.extend(gen.embeddings.ensure_loaded(pipe, it.plan.embeddings, first.ref.model_id))  # type: ignore[union-attr]
            uses = AdapterManager.load(gen.loras, first.loras)  # the same for every item: group_key holds the set
            with gen.adapters.applied(pipe, uses, first.ref.model_id, first.ref.base_model) as more:
                warnings.extend(more)
                return self._run_group_calls(ctx, bplan, gi, grp, done, warnings, stats, rss, steps_before, steps_after, loaded)

    def _run_group_calls(
        self,
        ctx: JobContext,
        bplan: BatchPlan,
        gi: int,
        grp: Group,
        done: dict[int, dict[str, Any]],
        warnings: list[str],
        stats: dict[str, Any],
        rss: RssSampler,
        steps_before: int,
        steps_after: int,
        loaded: Any,
    ) -> int:
        gen = self.gen
        torch = gen.runtime.torch
        first_item = grp.items[0]
        first = first_item.plan
        assert first is not None
        device = loaded.device
        pipe = first.family.mode_pipeline(gen.pipelines, loaded, first.mode)
        ctx.check_cancelled()
        rss.sample()
        # an item running alone: all its images in one call, as its own request makes them
        per_call = len(grp.images) if grp.alone else self._images_per_call(bplan, pipe, first, device, stats["memory"], warnings, gi)
        if ctx.session.status != "running":
            ctx.set_status("running")
        # The prompt kwargs of each item, exactly as a single request gets them (its family's; SD:
        # prompts.encode): plain text (diffusers encodes it; lists batch it) or weighted embeddings
        # (concatenated on the batch axis). Images whose kwargs cannot share a call (text vs embeds,
        # other embedding lengths or clip skip) run in separate calls of the group.
        kws = {it.index: it.plan.family.prompt_kwargs(pipe, it.plan.req) for it in grp.items}  # type: ignore[union-attr]
        subs: dict[tuple, list[tuple[BatchItem, int]]] = {}
        for entry in grp.images:
            subs.setdefault(_prompt_signature(kws[entry[0].index]), []).append(entry)
        chunks = [imgs[i : i + per_call] for imgs in subs.values() for i in range(0, len(imgs), per_call)]
        call_steps = self._call_steps(grp)
        pending: dict[int, list[Any]] = {}  # item index -> PIL images so far
        offset = steps_before
        for ci, chunk in enumerate(chunks):
            ctx.check_cancelled()
            if grp.alone:  # GenerationInterface._denoise's call: the item's own prompt and images, n per prompt
                prompt_kwargs = kws[first_item.index]
                gens = generators(torch, first.seed, len(chunk))
                inputs = first.inputs or modes.ModeInputs()
                per_prompt = len(chunk)
            else:  # prompts, generators and init/mask images as lists, one entry per image
                prompt_kwargs = _batched_prompt_kwargs(torch, [kws[it.index] for it, _ in chunk])
                gens = [torch.Generator("cpu").manual_seed(it.plan.seed + i) for it, i in chunk]  # type: ignore[union-attr]
                inputs = modes.ModeInputs()
                if first.mode != "text2img":
                    inputs = modes.ModeInputs(
                        [it.plan.inputs.init_image for it, _ in chunk],  # type: ignore[union-attr]
                        [it.plan.inputs.mask_image for it, _ in chunk] if first.mode == "inpainting" else None,  # type: ignore[union-attr]
                    )
                per_prompt = 1
            remaining = call_steps * (len(chunks) - ci - 1) + steps_after
            extra = {
                "item_index": chunk[0][0].index,
                "item_indices": sorted({it.index for it, _ in chunk}),
                "group": gi,
                "groups": len(bplan.groups),
                "call": ci,
                "batch_images": len(chunk),
            }

            def callback(p: Any, step_index: int, timestep: Any, kwargs: dict, _off: int = offset, _rem: int = remaining, _extra: dict = extra) -> dict:
                total = int(getattr(p, "_num_timesteps", 0) or call_steps)
                ctx.progress(_off + step_index + 1, _off + total + _rem, image_index=chunk[0][1], extra=_extra)
                rss.sample()
                ctx.check_cancelled()
                return kwargs

            own = first.family.scheduler_for(first.req, loaded.scheduler_config)  # HiDream builds its own
            pipe.scheduler = own if own is not None else gen.pipelines.fresh_scheduler(loaded, first.scheduler)
            t_inf = time.perf_counter()
            opt = optimize.optimized(pipe, first.req.optimize, gen.settings.optimize, ctx.session.performance, gen.settings.data_dir, bool(first.loras))
            with opt, force_cancel_hooks(denoiser_of(pipe), ctx), torch.inference_mode():
                out = pipe(
                    **prompt_kwargs,
                    **modes.call_kwargs(first.mode, inputs, first.width, first.height, first.req.strength),
                    **first.family.mode_kwargs(first),
                    **first.family.call_kwargs(first.req, first),  # equal across the group (group_key)
                    num_inference_steps=first.req.steps,
                    num_images_per_prompt=per_prompt,
                    generator=gens,
                    callback_on_step_end=callback,
                    output_type="pil",
                )
            took = time.perf_counter() - t_inf
            loaded.runs += 1
            ran = int(getattr(pipe, "_num_timesteps", 0) or call_steps)
            offset += ran
            stats["inference"] += took
            stats["steps"] += ran
            stats["calls"].append(len(chunk))
            ctx.log(f"group {gi} call {ci}: denoised {len(chunk)} image(s) in {took:.2f}s")
            for (it, i), img in zip(chunk, out.images):
                pending.setdefault(it.index, []).append(img)
                plan = it.plan
                assert plan is not None
                if len(pending[it.index]) == plan.req.num_images:
                    self._deliver(ctx, it, pending.pop(it.index), pipe, gi, done, stats, grp.alone)
            rss.sample()
        return offset

    def _deliver(
        self, ctx: JobContext, it: BatchItem, pils: list[Any], pipe: Any, gi: int, done: dict[int, dict[str, Any]], stats: dict[str, Any], alone: bool
    ) -> None:
        plan = it.plan
        assert plan is not None
        params = self.gen._effective(plan, pipe)
        images, encode_s, save_s = self.gen._deliver(pils, plan, params, ctx)
        stats["encode"] += encode_s
        stats["save"] += save_s
        # batch_alone: the item's mode does not batch on its family; it ran in its own call
        done[it.index] = {"index": it.index, "success": True, "images": images, "parameters": {**params, "batch_group": gi, "batch_alone": alone}}

    def _result(
        self,
        ctx: JobContext,
        bplan: BatchPlan,
        done: dict[int, dict[str, Any]],
        warnings: list[str],
        stats: dict[str, Any],
        rss: RssSampler,
        t_start: float,
        stopped: str | None,
    ) -> dict[str, Any]:
        items = []
        for it in bplan.items:
            entry = done.get(it.index)
            if entry is None:
                code = stopped or "internal_error"
                why = "the job was stopped before this item finished" if stopped else "this item produced no images"
                entry = {"index": it.index, "success": False, "error": {"error_code": code, "error": why, "error_details": []}}
            items.append(entry)
        perf = ctx.session.performance
        device = ctx.session.device_id
        inference_s = stats["inference"]
        perf.update(
            load_ms=round(stats["load"] * 1000, 2),
            inference_ms=round(inference_s * 1000, 2),
            encode_ms=round(stats["encode"] * 1000, 2),
            postprocess_ms=round(stats["save"] * 1000, 2),
            steps_per_second=round(stats["steps"] / inference_s, 3) if inference_s > 0 else 0.0,
            peak_vram_mb=self.gen.runtime.peak_vram_mb(device) if bplan.groups and self.gen.runtime.ready else None,
            peak_rss_mb=rss.peak_mb,
            groups=len(bplan.groups),
            pipeline_calls=len(stats["calls"]),
            images=sum(stats["calls"]),
            batch_sizes=list(stats["calls"]),
            items_succeeded=sum(1 for e in items if e["success"]),
            items_failed=sum(1 for e in items if not e["success"]),
        )
        if stats["memory"]:
            perf["memory_estimates"] = list(stats["memory"])
        perf["total_ms"] = round(perf.get("queue_ms", 0.0) + (time.perf_counter() - t_start) * 1000, 2)
        ctx.session.resources.update(peak_rss_mb=rss.peak_mb, peak_vram_mb=perf["peak_vram_mb"], device=device)
        return {"items": items, "session_id": ctx.session.session_id, "performance": dict(perf), "warnings": list(warnings)}
