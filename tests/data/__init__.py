"""Test data carried in the repository (see MANIFEST.yaml for sources, licences and digests)."""

from pathlib import Path

from qaclip_harness.probe import EXAMPLE_IMAGE  # the README example's image ships with the package (probe set)

DATA_DIR = Path(__file__).parent
LABEL_CN = DATA_DIR / "label_cn.txt"
LABEL_EN = DATA_DIR / "label.txt"
SEED_EXAMPLE = DATA_DIR / "qa_clip_readme_example.py.txt"

__all__ = ["DATA_DIR", "EXAMPLE_IMAGE", "LABEL_CN", "LABEL_EN", "SEED_EXAMPLE"]
