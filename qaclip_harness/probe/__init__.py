"""The probe set: pinned images and captions for checkpoint-only checks (the files beside this module, see MANIFEST.yaml)."""

from qaclip_harness.probe.probe_set import (
    CAPTIONS,
    EXAMPLE_IMAGE,
    IMAGES_DIR,
    MANIFEST,
    PROBE_DIR,
    ProbeDataError,
    ProbeSet,
    load_probe_set,
    read_manifest,
    read_pinned,
    set_digest,
)

__all__ = [
    "CAPTIONS",
    "EXAMPLE_IMAGE",
    "IMAGES_DIR",
    "MANIFEST",
    "PROBE_DIR",
    "ProbeDataError",
    "ProbeSet",
    "load_probe_set",
    "read_manifest",
    "read_pinned",
    "set_digest",
]
