"""The job context moved to jobs/context.py (jobs own what a job sees); this name still imports it."""

from ..jobs.context import JobContext

__all__ = ["JobContext"]
