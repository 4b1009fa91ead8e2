"""The ``qaclip`` command: ``eval``, ``models``, ``compare-reports``, ``calibrate``, ``export-onnx``."""

from qaclip_harness.cli.commands import main

__all__ = ["main"]
