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


class DeviceError(QAClipError, ValueError):
    """A device this machine does not have (``cuda`` without a GPU, ``cuda:7`` on a machine with fewer)."""


class CardError(QAClipError, ValueError):
    """A model card file that cannot be read or does not follow the card format."""
