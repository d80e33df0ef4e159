"""sdworker: a headless diffusion worker that speaks line-delimited JSON over stdio."""

__version__ = "0.1.0"
PROTOCOL_VERSION = 1
