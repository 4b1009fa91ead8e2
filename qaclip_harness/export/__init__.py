"""ONNX export of qaclip_core models and the checks that an export still gives the PyTorch model's features.

``onnx``: the exporter (torch's dynamo-based ``torch.onnx.export``); ``manifest``: what an export
folder holds; ``cache``: exports keyed by checkpoint, opset, precision and package version;
``runtime``: ONNX Runtime sessions and providers; ``parity``: ORT against PyTorch. The
packages (onnx, onnxruntime, onnxscript) are the ``onnx`` extra, imported only when used.
"""

from qaclip_harness.export.deps import INSTALL_HINT, available, require
from qaclip_harness.export.manifest import MANIFEST_NAME, Manifest, read_manifest

__all__ = ["INSTALL_HINT", "MANIFEST_NAME", "Manifest", "available", "read_manifest", "require"]
