"""The three request forms; each request is answered in its own."""

from __future__ import annotations

from enum import Enum


class Form(str, Enum):
    NATIVE = "native"
    JSONRPC = "jsonrpc"
    LEGACY = "legacy"
