"""Run cn_clip 1.6.0's ``zeroshot_evaluation.py`` as the script it is, on the CPU (differential tests).

    python -m tests.reference_zeroshot --datapath ... --label-file ... --dataset <folder> ... (its own arguments)
    python -m tests.reference_zeroshot --runs RUNS.json   (a JSON list of such argument lists, one process)

The script is executed unchanged (``runpy``, as ``__main__``), so its argument handling, its
template choice by ``--dataset``, its label reading, ``ImageFolder``, classifier, scoring and
``index.json`` reordering are the reference's own. Only what ties it to a GPU and to old
libraries is bent, from the outside:

- ``torch.cuda.set_device``, ``Module.cuda`` and ``Tensor.to(<GPU index>)`` do nothing (it moves
  everything to GPU 0);
- ``float`` in its namespace accepts the one-element arrays its ``accuracy`` passes (NumPy 2
  refuses ``float()`` of a 1-d array);
- ``timm`` is stubbed when absent (imported by its training module, unused here).
"""

from __future__ import annotations

import builtins
import json
import runpy
import sys
import types

import numpy as np
import torch


def _float(x):
    if isinstance(x, np.ndarray):
        x = x.reshape(())
    return builtins.float(x)


def _stub_timm() -> None:
    try:
        import timm.data
    except ImportError:
        timm = types.ModuleType("timm")
        timm.data = types.ModuleType("timm.data")
        timm.data.create_transform = lambda *a, **k: None
        sys.modules.setdefault("timm", timm)
        sys.modules.setdefault("timm.data", timm.data)


def _cpu_only() -> None:
    to = torch.Tensor.to

    def to_cpu(self, *args, **kwargs):
        if len(args) == 1 and not kwargs and isinstance(args[0], int) and not isinstance(args[0], bool):
            return self  # a GPU index
        return to(self, *args, **kwargs)

    torch.Tensor.to = to_cpu  # type: ignore[assignment]
    torch.nn.Module.cuda = lambda self, *a, **k: self  # type: ignore[assignment]
    torch.cuda.set_device = lambda *a, **k: None  # type: ignore[assignment]


def run(argv) -> None:
    """Run the reference script once with ``argv``."""
    sys.argv = ["zeroshot_evaluation.py", *argv]
    runpy.run_module(
        "cn_clip.eval.zeroshot_evaluation", run_name="__main__", init_globals={"float": _float}, alter_sys=False
    )


def main(argv) -> None:
    """Run the reference script with ``argv``, or once per argument list of ``--runs FILE``."""
    _stub_timm()
    _cpu_only()
    if argv[:1] == ["--runs"]:
        with open(argv[1], encoding="utf-8") as f:
            runs = json.load(f)
    else:
        runs = [argv]
    for one in runs:
        run(one)


if __name__ == "__main__":
    main(sys.argv[1:])
