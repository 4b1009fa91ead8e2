"""Model cards a project writes: the card format (arch or backend, a local checkpoint or a hub repo, optional
sha256 and size), names that clash, and the local checkpoint checked against its pins."""

from __future__ import annotations

import hashlib
import re
import shutil

import pytest

from qaclip_core import registry
from qaclip_core.errors import ChecksumError, DownloadError
from qaclip_core.registry import card_source, get_card, register_cards
from qaclip_harness.fetch.weights import fetch_weights
from qaclip_harness.fixture import CHECKPOINT


@pytest.fixture(autouse=True)
def isolated_registry(monkeypatch):
    """Cards registered by a test vanish after it (the registry is process-wide)."""
    registry.all_cards()
    for name in ("_CARDS", "_ALIASES", "_SOURCES", "_FILES"):
        monkeypatch.setattr(registry, name, dict(getattr(registry, name)))


def _cards(tmp_path, body: str, name: str = "cards.yaml"):
    path = tmp_path / name
    path.write_text(body, encoding="utf-8")
    return path


def test_a_project_card_with_arch_and_a_local_checkpoint(tmp_path):
    (tmp_path / "weights").mkdir()
    shutil.copyfile(CHECKPOINT, tmp_path / "weights" / "mine.pt")
    digest = hashlib.sha256(CHECKPOINT.read_bytes()).hexdigest()
    path = _cards(
        tmp_path,
        f"models:\n  - name: my-tiny\n    arch: ViT-fixture@BERT-fixture\n    checkpoint: weights/mine.pt\n"
        f"    sha256: {digest}\n    size: {CHECKPOINT.stat().st_size}\n",
    )
    (card,) = register_cards(path)
    assert get_card("my-tiny") is card and card_source("my-tiny") == path.resolve()
    assert (card.vision, card.text, card.resolution, card.adapter) == ("ViT-fixture", "BERT-fixture", 64, "native")
    assert (card.family, card.display) == ("custom", "my-tiny")
    assert card.checkpoint == str((tmp_path / "weights" / "mine.pt").resolve())  # relative to the card file
    assert fetch_weights(card) == tmp_path / "weights" / "mine.pt"
    assert register_cards(path) == [card]  # the same file again: nothing registered twice


def test_a_card_with_a_backend_reference_needs_no_architecture(tmp_path):
    (tmp_path / "ckpt").mkdir()
    path = _cards(tmp_path, "models:\n  - {name: my-encoder, backend: 'mypkg.encoders:load', checkpoint: ckpt}\n")
    (card,) = register_cards(path)
    assert (card.adapter, card.resolution, card.arch) == ("mypkg.encoders:load", 0, "@")
    assert fetch_weights(card) == (tmp_path / "ckpt").resolve()


@pytest.mark.parametrize(
    "body, needle",
    [
        (
            "models:\n  - {name: qa-clip-rn50, arch: RN50@RBT3-chinese, checkpoint: x.pt}\n",
            "name 'qa-clip-rn50' is already taken by",
        ),
        (
            "models:\n  - {name: mine, aliases: [ViT-B-16], arch: RN50@RBT3-chinese, checkpoint: x.pt}\n",
            "name 'ViT-B-16' is already taken",
        ),
        (
            "models:\n  - {name: mine, arch: RN50@RBT3-chinese, checkpoint: x.pt, chekpoint: y}\n",
            "unknown keys ['chekpoint']",
        ),
        ("models:\n  - {name: mine, arch: ViT-Q-9@RBT3-chinese, checkpoint: x.pt}\n", "unknown vision tower 'ViT-Q-9'"),
        ("models:\n  - {name: mine, arch: ViT-B-16, checkpoint: x.pt}\n", "arch must be VISION@TEXT"),
        ("models:\n  - {name: mine, checkpoint: x.pt}\n", "card 'mine' needs arch: VISION@TEXT (or vision and text)"),
        (
            "models:\n  - {name: 'my model', arch: RN50@RBT3-chinese, checkpoint: x.pt}\n",
            "name must be letters, digits",
        ),
        ("models:\n  - {name: mine, backend: zhclip, adapter: native, checkpoint: x}\n", "not both"),
        (
            "models:\n  - {name: mine, backend: zhclip, checkpoint: x, hub: {repo: a/b}}\n",
            "checkpoint must be one local path",
        ),
        (
            "models:\n  - {name: mine, backend: zhclip, hub: {repo: a/b, file: c}}\n",
            "hub must be {repo, filename, revision}",
        ),
        ("models:\n  - just-a-name\n", "models[0] must be a mapping (a card)"),
        ("models: {name: mine}\n", "a list under 'models' (models: [<card>, ...])"),
    ],
)
def test_a_bad_card_is_one_line_naming_the_file_and_key(tmp_path, body, needle):
    path = _cards(tmp_path, body)
    with pytest.raises(ValueError, match=re.escape(needle)) as info:
        register_cards(path)
    msg = str(info.value)
    assert needle in msg and str(path.resolve()) in msg and "\n" not in msg, msg


def test_two_project_files_cannot_share_a_name(tmp_path):
    register_cards(_cards(tmp_path, "models:\n  - {name: mine, arch: RN50@RBT3-chinese, checkpoint: x.pt}\n", "a.yaml"))
    with pytest.raises(ValueError, match=r"b\.yaml: card 'mine': name 'mine' is already taken by .*a\.yaml"):
        register_cards(_cards(tmp_path, "models:\n  - {name: mine, backend: zhclip, checkpoint: y}\n", "b.yaml"))


def test_the_local_checkpoint_is_checked_against_the_card(tmp_path):
    shutil.copyfile(CHECKPOINT, tmp_path / "mine.pt")
    size = CHECKPOINT.stat().st_size
    body = "models:\n  - {{name: {n}, arch: ViT-fixture@BERT-fixture, checkpoint: {f}, sha256: {s}, size: {z}}}\n"
    missing = register_cards(_cards(tmp_path, body.format(n="gone", f="absent.pt", s="a" * 64, z=size), "1.yaml"))[0]
    with pytest.raises(DownloadError, match=r"model 'gone' \(card .*1\.yaml\): checkpoint .*absent\.pt not found"):
        fetch_weights(missing)
    wrong_size = register_cards(
        _cards(tmp_path, body.format(n="sized", f="mine.pt", s="a" * 64, z=size + 1), "2.yaml")
    )[0]
    with pytest.raises(ChecksumError, match=rf"{size:,} bytes, but model 'sized'"):
        fetch_weights(wrong_size)
    wrong_sha = register_cards(_cards(tmp_path, body.format(n="hashed", f="mine.pt", s="a" * 64, z=size), "3.yaml"))[0]
    with pytest.raises(ChecksumError, match=r"not the checkpoint the card describes"):
        fetch_weights(wrong_sha)
