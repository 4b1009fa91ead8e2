"""qaclip_harness: the reproduction suite's machinery around the qaclip_core models.

Fetching (``fetch``), data readers and prompts (``data``), backends (``backends``), ONNX export
(``export``) and transformers conversion (``convert``), encoding and evaluation (``eval``),
metrics (``metrics``), checkpoint gates and the probe set (``gates``, ``probe``), expected
numbers (``expected``), reports (``report``), calibration, the embedded fixture (``fixture``),
the pytest session (``suite``) and the ``qaclip`` command (``cli``).

Importing it registers the harness's own model cards (the transformers-format copies, AltCLIP,
the fixture) and the fixture's architecture configs with the core's registry.
"""

from __future__ import annotations

from pathlib import Path

from qaclip_core import __version__ as core_version
from qaclip_core.model.config import add_config_dir
from qaclip_core.registry import register_card_dir

__version__ = core_version

_HERE = Path(__file__).resolve().parent
register_card_dir(_HERE / "cards")
add_config_dir(_HERE / "fixture" / "configs")
