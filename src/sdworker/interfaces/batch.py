"""inference.batch_process: many generation requests as one job, run as few batched pipeline calls.

Semantics (docs/protocol.md does not cover batches yet): plan_all and group are batch_plan's
(items checked at submit time, errors per item; compatible items grouped into shared calls).

The job (run): groups of one model run back to back (one resident model: fewer reloads); each
finished item is encoded and saved as soon as its last image is out. A group that fails (out of
memory, model_load_failed, ...) fails its items only; cancel and timeout stop the whole job at the
next step, and with preserve_results the response keeps the finished items (ctx.partial). Every
call goes through the pipeline runner (managers.runner), as a single request's does.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

from ..errors import Cancelled, TimedOut, WorkerError
from ..managers import modes
from ..managers.adapters import AdapterManager
from ..managers.denoise import generators
from ..managers.runner import Steps, ran
from ..managers.runtime import RssSampler
from .batch_plan import BatchItem, BatchPlan, BatchPlanning, Group, _error_entry

if TYPE_CHECKING:
    from ..jobs.context import JobContext
    from .generation import GenerationInterface


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


class BatchInterface(BatchPlanning):
    def __init__(self, gen: GenerationInterface):
        self.gen = gen

    # ---- the job ---------------------------------------------------------------------------------

    def run(self, ctx: JobContext, bplan: BatchPlan) -> dict[str, Any]:
        t_start = time.perf_counter()
        gen = self.gen
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

            own = first.family.scheduler_for(first.req, loaded.scheduler_config)  # HiDream builds its own
            pipe.scheduler = own if own is not None else gen.pipelines.fresh_scheduler(loaded, first.scheduler)
            kwargs = {
                **prompt_kwargs,
                **modes.call_kwargs(first.mode, inputs, first.width, first.height, first.req.strength),
                **first.family.mode_kwargs(first),
                **first.family.call_kwargs(first.req, first),  # equal across the group (group_key)
                "num_inference_steps": first.req.steps,
                "num_images_per_prompt": per_prompt,
                "generator": gens,
                "output_type": "pil",
            }

            def total(n: int, _off: int = offset, _rem: int = remaining) -> int:
                return _off + (n or call_steps) + _rem

            steps = Steps(total, offset, chunk[0][1], extra)
            t_inf = time.perf_counter()
            # a batch's requests carry the default precision (Plan.single_run_only): no offload, no drill
            out = gen.runner.call(ctx, pipe, kwargs, steps, rss=rss, request=first.req, device=device, drill=False)
            took = time.perf_counter() - t_inf
            loaded.runs += 1
            done_steps = ran(pipe) or call_steps
            offset += done_steps
            stats["inference"] += took
            stats["steps"] += done_steps
            stats["calls"].append(len(chunk))
            ctx.log(f"group {gi} call {ci}: denoised {len(chunk)} image(s) in {took:.2f}s")
            for (it, _), img in zip(chunk, out.images):
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
