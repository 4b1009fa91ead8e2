"""Measure the float noise the checkpoint-only gates must tolerate (the evidence in qaclip_harness/gates/tolerances.yaml).

    python tools/gate_noise.py                       # RN50, ViT-B/16 and the fixture, on this machine's CPU
    python tools/gate_noise.py --device cuda --archs ViT-B-16@RoBERTa-wwm-ext-base-chinese

For each architecture a model with every float tensor random (tests/reference_models.py) is
encoded on the probe set:

* parity: qaclip_core against cn_clip on the same checkpoint, fp32 (TF32 off), per tower max |delta|;
* golden: at each precision, two correct computations of the same weights that differ only in
  kernel order (fast paths on and batches of 32, against fast paths off and batches of 1), per
  tower max |delta| and 1 - min cosine.

Prints one line per measurement; needs cn_clip for the parity part (skipped without it).
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from qaclip_core.checkpoint import load_checkpoint  # noqa: E402
from qaclip_harness.backends import NativeEncoder  # noqa: E402
from qaclip_harness.gates.drift import TOWERS, tower_drift  # noqa: E402
from qaclip_harness.gates.features import EncoderSource, probe_features, tf32  # noqa: E402
from qaclip_harness.probe import load_probe_set  # noqa: E402
from tests.reference_models import reference_model, save_reference_checkpoint  # noqa: E402

ARCHS = ["RN50@RBT3-chinese", "ViT-B-16@RoBERTa-wwm-ext-base-chinese", "ViT-fixture@BERT-fixture"]


def _drifts(a, b):
    return {t: tower_drift(t, a.tower(t)[0], b.tower(t)[0], b.tower(t)[1]) for t in TOWERS}


def _line(what: str, drifts) -> str:
    return what + "  " + "  ".join(f"{t}: max|Δ| {d.max_abs:.2e} 1-cos {1 - d.min_cos:.2e}" for t, d in drifts.items())


def main(argv=None) -> int:
    """Print the measurements."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=ARCHS)
    parser.add_argument("--precisions", nargs="+", default=["fp32", "fp16", "bf16"])
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    probe = load_probe_set()
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.archs:
            ckpt = save_reference_checkpoint(reference_model(arch, seed=7), Path(tmp) / "random.pt")
            gc.collect()
            try:
                from qaclip_harness.backends.reference import CnClipReference

                with tf32(False):
                    ref = probe_features(CnClipReference(arch, ckpt, device=args.device), probe)
                    ours = probe_features(
                        EncoderSource(NativeEncoder(load_checkpoint(ckpt, arch, device=args.device))), probe
                    )
                print(_line(f"parity  {arch} fp32", _drifts(ours, ref)), flush=True)
            except ImportError as e:
                print(f"parity  {arch}: skipped ({e})")
            for precision in args.precisions:
                model = load_checkpoint(ckpt, arch, device=args.device, precision=precision)
                fast = probe_features(EncoderSource(NativeEncoder(model), batch_size=32), probe)
                model.use_fast_paths(False)
                plain = probe_features(EncoderSource(NativeEncoder(model), batch_size=1, text_batch_size=1), probe)
                print(_line(f"golden  {arch} {precision}", _drifts(fast, plain)), flush=True)
                del model
                gc.collect()
    return 0


if __name__ == "__main__":
    sys.exit(main())
