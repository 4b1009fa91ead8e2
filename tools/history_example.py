"""Three fixture runs kept in a history folder, the third with a deliberate change, and ``qaclip history`` over them.

The change is seeded noise of 30% of each image feature's norm added by the native encoder (as a broken kernel
would), loaded as a plugin; the changed run does not read the feature cache (a plugin is outside the source digest
that keys it, where a real change to the feature path is inside). Each run is the suite on the fixture's retrieval, zero-shot and parity cases with ``--report``, plus
``qaclip eval --dump-predictions`` for the per-query ranks; the first two are kept with ``qaclip keep-run``.
What this prints is the sample in docs/reports.md; tests/harness/test_history_runs.py checks the runs in detail.

    python tools/history_example.py               # about a minute and a half on 2 cores
    python tools/history_example.py --keep DIR    # keep the history folder and the current run in DIR
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SELECTION = (
    "(fixture-shapes-fixture-tiny or fixture-shapes-cls-fixture-tiny or (test_checkpoint_gate and parity-fixture-tiny))"
    " and not fixture-tiny-rn"
)
PERTURB = '''"""The deliberate change: seeded noise of 30% of each image feature's norm."""
import torch

from qaclip_harness.backends import native

_original = native.NativeEncoder.encode_image


@torch.inference_mode()
def _noisy(self, images):
    out = _original(self, images)
    g = torch.Generator().manual_seed(int(images.shape[0]))
    noise = torch.randn(out.shape, generator=g).to(out.dtype)
    return out + 0.3 * out.norm(dim=-1, keepdim=True) * noise / out.shape[-1] ** 0.5


native.NativeEncoder.encode_image = _noisy
'''


def _env(work: Path, changed: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QACLIP_") and k != "GITHUB_STEP_SUMMARY"}
    env.update(HF_HUB_OFFLINE="1", QACLIP_CACHE=str(work / "cache"))
    if changed:
        env["PYTHONPATH"] = os.pathsep.join([str(work / "plugins"), str(REPO)])
    return env


def fixture_run(work: Path, run: Path, data: Path, changed: bool) -> None:
    """One run folder: the suite's report of the selected fixture cases and one case's dumped predictions."""
    from qaclip_harness.fixture import CHECKPOINT

    env = _env(work, changed)
    # the changed run recomputes its features: the change is a plugin, outside the source digest that keys the
    # feature cache (docs/caching.md), where a real change to the feature path would move the key
    extra = ["-p", "perturb", "--no-cache"] if changed else []
    suite = [sys.executable, "-m", "pytest", "benchmarks", "-p", "no:cacheprovider", "-q", "-m", "not throughput"]
    out = subprocess.run(
        [*suite, "-k", SELECTION, *extra, "--report", str(run)],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
        check=False,
    )
    if out.returncode != (1 if changed else 0):
        raise RuntimeError(
            f"the {'changed' if changed else 'unchanged'} fixture run exited {out.returncode}:\n{out.stdout[-3000:]}"
        )
    head = "import perturb; " if changed else ""
    code = f"{head}import sys; from qaclip_harness.cli.commands import main; sys.exit(main(sys.argv[1:]))"
    dump = run / "predictions" / "fixture-shapes-fixture-tiny"
    args = ["--checkpoint", str(CHECKPOINT), "--dataset", "fixture-shapes", "--data-root", str(data), "--device", "cpu"]
    out = subprocess.run(
        [sys.executable, "-c", code, "eval", *args, "--quiet", "--json", "--dump-predictions", str(dump)],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"qaclip eval --dump-predictions exited {out.returncode}:\n{out.stderr[-3000:]}")


def qaclip(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m qaclip_harness ARGS`` from the repository root."""
    return subprocess.run(
        [sys.executable, "-m", "qaclip_harness", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def make_history(work: Path) -> tuple[Path, Path]:
    """(history folder with two kept runs, the changed current run), built under ``work``."""
    from qaclip_harness.fixture.shapes import write_shapes_dataset

    (work / "plugins").mkdir(parents=True, exist_ok=True)
    (work / "plugins" / "perturb.py").write_text(PERTURB, encoding="utf-8")
    data = work / "data"
    (data / "datasets").mkdir(parents=True, exist_ok=True)
    write_shapes_dataset(data)
    store = work / "history"
    for n in (1, 2):  # two runs on main, kept
        fixture_run(work, work / f"run{n}", data, changed=False)
        kept = qaclip("keep-run", str(work / f"run{n}"), str(store), "--name", f"main{n}")
        if kept.returncode != 0:
            raise RuntimeError(f"qaclip keep-run exited {kept.returncode}: {kept.stderr}")
    current = work / "current"
    fixture_run(work, current, data, changed=True)
    return store, current


def main(argv: list[str]) -> int:
    """Build the runs and print ``qaclip history HISTORY CURRENT``; its exit code."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--keep", type=Path, help="build the runs in this folder and keep them")
    args = p.parse_args(argv)
    work = args.keep or Path(tempfile.mkdtemp(prefix="qaclip-history-"))
    try:
        store, current = make_history(work)
        out = qaclip("history", str(store), str(current))
        sys.stdout.write(out.stdout)
        sys.stderr.write(out.stderr)
        return out.returncode
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
