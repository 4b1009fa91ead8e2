"""The probe set: a few pinned images and captions for checkpoint-only checks (see MANIFEST.yaml)."""
from pathlib import Path

PROBE_DIR = Path(__file__).parent
EXAMPLE_IMAGE = PROBE_DIR / "images" / "pokemon.jpeg"

__all__ = ["EXAMPLE_IMAGE", "PROBE_DIR"]
