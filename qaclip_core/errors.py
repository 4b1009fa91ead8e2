"""Exceptions raised for bad input: each message names the file, key or line at fault."""
from __future__ import annotations


class QAClipError(Exception):
    """Base class of the package's errors."""


class UnknownModelError(QAClipError, KeyError):
    """A model or architecture name that the registry does not know."""

    def __str__(self) -> str:
        # KeyError would quote the whole message
        return str(self.args[0]) if self.args else ""


class CheckpointError(QAClipError, ValueError):
    """A checkpoint file that cannot be read or does not fit the architecture."""


class ChecksumError(QAClipError, ValueError):
    """A downloaded or cached file whose sha256 is not the expected one."""


class DownloadError(QAClipError, OSError):
    """A file that could not be fetched (offline, unreachable, missing upstream)."""


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


class UnsupportedError(QAClipError):
    """A combination this run cannot do (a backend for another model family, a precision it has no export for)."""
