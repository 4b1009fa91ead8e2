"""The harness's exceptions (the core's, for checkpoints, checksums and downloads, live in qaclip_core.errors)."""

from __future__ import annotations

from qaclip_core.errors import QAClipError


class DatasetError(QAClipError, ValueError):
    """Evaluation data that is missing, malformed or inconsistent."""


class MissingDependencyError(QAClipError, ImportError):
    """An optional package a model or feature needs is not installed (the message names it and its extra)."""

    def __init__(self, message: str, package: str = "", extra: str = ""):
        super().__init__(message)
        self.package = package
        self.extra = extra


class ExportError(QAClipError, ValueError):
    """An ONNX export that cannot be made, or an export folder that is missing, damaged or not the one asked for."""


class ExportParityError(ExportError):
    """A fresh ONNX export whose features disagree with the eager model's (the export parity gate's verdict)."""


class UnsupportedError(QAClipError):
    """A combination this run cannot do (a backend for another model family, a precision it has no export for)."""
