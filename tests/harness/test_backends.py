"""Backends from the entry-point group ``qaclip.backends`` or a ``module:attribute`` reference, and the interface check.

The built-in backends are found through the same entry points as any other package's; an encoder
that breaks the interface (a missing method, the wrong shape or dtype, NaN) is refused in one line
naming its backend, before any evaluation uses it.
"""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from qaclip_core.registry import ModelCard
from qaclip_harness import backends
from qaclip_harness.backends import BackendError, backend, load_encoder, registered

BUILT_IN = {
    "native": "qaclip_harness.backends.native",
    "chineseclip": "qaclip_harness.backends.chineseclip",
    "altclip": "qaclip_harness.backends.altclip",
    "onnx": "qaclip_harness.backends.onnx",
    "zhclip": "qaclip_harness.backends.zhclip",
}


class ToyEncoder:
    """A valid encoder of the documented interface: 8 features from pixel means and token ids."""

    def __init__(self, width: int = 8):
        self.name, self.device, self.dtype, self.width = "toy", torch.device("cpu"), torch.float32, width

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return torch.full((3, 16, 16), sum(image.convert("RGB").resize((4, 4)).getpixel((0, 0))) / 765.0)

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        return torch.tensor([[len(t) % 97 + 1, 2] for t in texts], dtype=torch.long)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return images.flatten(1)[:, : self.width] + torch.arange(self.width)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens.float().sum(1, keepdim=True) + torch.arange(self.width, dtype=torch.float32)


def _card(adapter: str) -> ModelCard:
    return ModelCard("toy-model", "custom", "Toy", "", "", 16, adapter=adapter)


def toy_load(card: Any, checkpoint: Any, device: Any = "cpu", precision: str = "fp32", compile: bool = False) -> Any:
    """A loader as a user writes one: it returns the encoder the card's ``toy`` options ask for."""
    return _MAKERS[Path(checkpoint).name]()


def _broken(**change: Any) -> type:
    return type("Broken", (ToyEncoder,), change)


_MAKERS = {
    "good": ToyEncoder,
    "no-encode-text": lambda: _strip(ToyEncoder(), "encode_text"),
    "3d-features": _broken(encode_image=lambda self, x: x[:, :, :2, 0]),
    "int-features": _broken(encode_text=lambda self, t: t.sum(1, keepdim=True).repeat(1, 8)),
    "nan": _broken(encode_image=lambda self, x: torch.full((x.shape[0], 8), float("nan"))),
    "one-row": _broken(encode_text=lambda self, t: torch.zeros(1, 8)),
    "widths": _broken(encode_text=lambda self, t: torch.zeros(t.shape[0], 5)),
    "float-tokens": _broken(tokenize=lambda self, texts: torch.zeros(len(texts), 4)),
    "2d-pixels": _broken(preprocess=lambda self, im: torch.zeros(16, 16)),
    "sized-pixels": _broken(preprocess=lambda self, im: torch.zeros(3, im.size[0], im.size[1])),
    "numpy": _broken(encode_image=lambda self, x: x.flatten(1)[:, :8].numpy()),
    "raises": _broken(encode_text=lambda self, t: t @ torch.zeros(3, 3)),
    "no-dtype": lambda: _strip(ToyEncoder(), "dtype"),
}


class _Stripped:
    def __init__(self, inner: ToyEncoder, drop: str):
        self._inner, self._drop = inner, drop

    def __getattr__(self, name: str) -> Any:
        if name == self._drop:
            raise AttributeError(name)
        return getattr(self._inner, name)


def _strip(encoder: ToyEncoder, drop: str) -> Any:
    return _Stripped(encoder, drop)


REF = f"{__name__}:toy_load"


def test_the_built_in_backends_are_entry_points_of_the_package():
    """One way in: every built-in backend is registered through qaclip.backends, as another package would."""
    found = registered()
    for name, module in BUILT_IN.items():
        assert found.get(name) == module
        chosen = backend(name)
        assert chosen.module.__name__ == module and callable(chosen.loader)
        assert "entry point qaclip.backends:" + name in chosen.origin and "qaclip-core" in chosen.origin


def test_a_reference_loads_and_the_encoder_passes_the_check(tmp_path):
    encoder = load_encoder(_card(REF), tmp_path / "good")
    assert isinstance(encoder, ToyEncoder)
    assert backend(REF).origin == "module:attribute reference"


@pytest.mark.parametrize(
    "checkpoint, needle",
    [
        ("no-encode-text", "has no encode_text"),
        ("no-dtype", "has no dtype"),
        ("3d-features", "encode_image returned shape [2, 3, 2] for 2 inputs, expected [2, D]"),
        ("int-features", "encode_text returned dtype torch.int64, expected a floating-point tensor"),
        ("nan", "encode_image returned NaN or infinite values"),
        ("one-row", "encode_text returned shape [1, 8] for 2 inputs"),
        ("widths", "encode_image gives 8 features and encode_text 5"),
        ("float-tokens", "tokenize returned shape [2, 4] torch.float32"),
        ("2d-pixels", "preprocess returned shape [16, 16]"),
        ("sized-pixels", "preprocess returned shapes [3, 40, 48] and [3, 70, 30]"),
        ("numpy", "encode_image returned ndarray, expected a torch.Tensor"),
        ("raises", "encode_text raised RuntimeError"),
    ],
)
def test_a_broken_encoder_is_refused_in_one_line_naming_its_backend(tmp_path, checkpoint, needle):
    with pytest.raises(BackendError) as info:
        load_encoder(_card(REF), tmp_path / checkpoint)
    msg = str(info.value)
    assert needle in msg, msg
    assert msg.startswith(f"backend {REF!r} (module:attribute reference) for model 'toy-model'") and "\n" not in msg


@pytest.mark.parametrize(
    "ref, needle",
    [
        ("no_such_backend", "unknown backend 'no_such_backend': not an entry point of the group qaclip.backends"),
        ("qaclip_no_such_module:load", "no module named 'qaclip_no_such_module'"),
        (f"{__name__}:no_such_loader", f"{__name__} has no attribute 'no_such_loader'"),
        (f"{__name__}:BUILT_IN", "is a dict; expected a callable load(card, checkpoint"),
        ("qaclip_harness:backends", "is a module without a load function"),
        ("not a:reference", "a reference must read module:attribute"),
        (":load", "a reference must read module:attribute"),
    ],
)
def test_a_backend_that_cannot_be_resolved_is_one_line(ref, needle):
    with pytest.raises(BackendError) as info:
        backend(ref)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_the_unknown_name_message_lists_the_registered_backends():
    with pytest.raises(BackendError, match=r"registered: altclip, chineseclip, native, onnx, zhclip"):
        backend("nativ")


def test_an_installed_package_registers_its_encoder(tmp_path, monkeypatch):
    """A distribution on sys.path with an entry point of qaclip.backends: its name resolves like a built-in's."""
    pkg = tmp_path / "toy_backend_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        textwrap.dedent(
            f"""
            from {__name__} import ToyEncoder

            def load(card, checkpoint, device="cpu", precision="fp32", compile=False):
                return ToyEncoder(width=6)
            """
        ),
        encoding="utf-8",
    )
    info = tmp_path / "toy_backend_pkg-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-backend-pkg\nVersion: 1.0\n", encoding="utf-8")
    (info / "entry_points.txt").write_text("[qaclip.backends]\ntoy = toy_backend_pkg:load\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    backends.refresh()
    try:
        assert registered()["toy"] == "toy_backend_pkg:load"
        chosen = backend("toy")
        assert "of toy-backend-pkg 1.0" in chosen.origin
        assert load_encoder(_card("toy"), tmp_path).encode_text(torch.ones(2, 2, dtype=torch.long)).shape == (2, 6)
    finally:
        sys.modules.pop("toy_backend_pkg", None)
        monkeypatch.undo()
        backends.refresh()
    with pytest.raises(BackendError, match="unknown backend 'toy'"):
        backend("toy")
