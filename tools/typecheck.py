"""Run mypy with the project's configuration (pyproject.toml) inside the environment that has the dependencies.

mypy has to see torch, numpy, transformers, onnx and the rest to check the code against them, and they make a
multi-GB environment. Rather than build a second one for the type checker, mypy is installed into the tests
environment (the ``typecheck`` extra, which ``tox -e tests`` installs) and run there: this script, the
pre-commit hook and ``tox -e lint``, finds that interpreter:

1. ``QACLIP_TYPECHECK_PYTHON`` (tox -e lint sets it to its tests environment's interpreter), else
2. ``.tox/tests`` of this checkout (what ``python -m tox -e tests --notest`` creates), else
3. the interpreter running this script, if mypy is importable there (``pip install -e ".[test,typecheck]"``).

    python tools/typecheck.py            # the whole configured tree: qaclip_core strict, harness and suite default
    python tools/typecheck.py qaclip_core/tokenizer.py
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SETUP = 'python -m tox -e tests --notest (or pip install -e ".[test,typecheck]" in your environment)'


def _has_mypy(python: str) -> bool:
    try:
        out = subprocess.run([python, "-c", "import mypy"], capture_output=True, timeout=120, check=False)
    except OSError:
        return False
    return out.returncode == 0


def find_python() -> tuple[str | None, str]:
    """(the interpreter to run mypy with, or None; what was looked at, for the error message)."""
    named = os.environ.get("QACLIP_TYPECHECK_PYTHON", "").strip()
    if named:
        return (named if _has_mypy(named) else None), f"QACLIP_TYPECHECK_PYTHON={named}"
    tox_env = REPO / ".tox" / "tests"
    for candidate in (tox_env / "bin" / "python", tox_env / "Scripts" / "python.exe"):
        if candidate.is_file() and _has_mypy(str(candidate)):
            return str(candidate), str(candidate)
    if _has_mypy(sys.executable):
        return sys.executable, sys.executable
    return None, f"{tox_env} and {sys.executable}"


def main(argv: list[str]) -> int:
    """Run mypy over ``argv`` (default: the files pyproject.toml names); mypy's exit code."""
    python, looked = find_python()
    if python is None:
        print(
            f"typecheck: no Python environment with mypy and the project's dependencies ({looked}); "
            f"create the tests environment first: {SETUP}",
            file=sys.stderr,
        )
        return 2
    return subprocess.run([python, "-m", "mypy", *argv], cwd=REPO, check=False).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
