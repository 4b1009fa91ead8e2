"""Link 5, end to end: the reference pipeline and the suite's CLI give the same numbers.

Datasets are built by cn_clip's own builder, the checkpoint is written the way its training
code writes one, and the reference side runs its own model, dataset classes, top-k scripts
(on the CPU) and scoring functions. Random weights: ViT-B/16, whose random features are far
less collinear than RN50's (DESIGN.md section 4); any prediction that differs must sit on a
score near-tie, otherwise the test fails.
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
import warnings
from argparse import Namespace
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

import qaclip_core
from tests.conftest import require_reference
from tests.datasets_util import (
    build_with_reference,
    make_imagenet,
    reference_functions,
    reference_tr_annotation,
    run_reference_topk,
    sample_images,
    sample_texts,
    write_features,
)
from tests.reference_models import reference_model, save_reference_checkpoint

ARCH = "RN50@RBT3-chinese"  # a real architecture with the cheapest text tower: the test is about the pipeline
CLASSES = ["金毛寻回犬", "“咖啡杯”", "Tesla Model 3"]
NEAR_TIE = 1e-5


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("diff")
    build_with_reference(root / "datasets" / "Flickr30k-CN", "test", sample_images(), sample_texts())
    make_imagenet(root / "datasets", [f"n{i:08d}" for i in range(len(CLASSES))], per_class=3)
    (root / "datasets" / "imagenet" / "label_cn.txt").write_text("\n".join(CLASSES) + "\n", encoding="utf-8")
    ckpt = save_reference_checkpoint(reference_model(ARCH, seed=1), root / "ckpt.pt")
    return root, ckpt


def _reference_model(ckpt: Path):
    require_reference()
    from cn_clip.clip.utils import create_model

    with contextlib.redirect_stdout(io.StringIO()):
        return create_model(ARCH, torch.load(ckpt, map_location="cpu", weights_only=True)).float().eval()


def _cli(*args: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "qaclip_harness", "eval", *args, "--device", "cpu", "--json", "--quiet"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return dict(json.loads(out.stdout.strip().splitlines()[-1]), _stderr=out.stderr)


def _reference_retrieval(root: Path, ckpt: Path, work: Path):
    require_reference()
    from cn_clip.eval.data import EvalImgDataset, EvalTxtDataset
    from cn_clip.eval.evaluation import compute_score
    from cn_clip.eval.evaluation_tr import compute_score as compute_score_tr

    ds = root / "datasets" / "Flickr30k-CN"
    model = _reference_model(ckpt)
    images = EvalImgDataset(str(ds / "lmdb" / "test" / "imgs"), resolution=224)
    texts = EvalTxtDataset(str(ds / "test_texts.jsonl"), max_txt_length=52)
    with torch.no_grad():
        img_ids, img_feats = [], []
        for ids, batch in DataLoader(images, batch_size=8, num_workers=0):
            f = model(batch, None)
            img_ids += ids.tolist()
            img_feats.append(f / f.norm(dim=-1, keepdim=True))
        txt_ids, txt_feats = [], []
        for ids, batch in DataLoader(texts, batch_size=8, num_workers=0):
            f = model(None, batch)
            txt_ids += ids.tolist()
            txt_feats.append(f / f.norm(dim=-1, keepdim=True))
    images.env_imgs.close()  # py-lmdb allows one open environment per file and process
    img_feats, txt_feats = torch.cat(img_feats), torch.cat(txt_feats)
    fi = write_features(work / "imgs.jsonl", "image_id", img_ids, img_feats.numpy())
    ft = write_features(work / "txts.jsonl", "text_id", txt_ids, txt_feats.numpy())
    t2i = run_reference_topk("make_topk_predictions", fi, ft, work / "t2i.jsonl")
    i2t = run_reference_topk("make_topk_predictions_tr", fi, ft, work / "i2t.jsonl")
    reference_tr_annotation(ds / "test_texts.jsonl")
    _, r1, r5, r10 = compute_score(str(ds / "test_texts.jsonl"), str(work / "t2i.jsonl"))
    _, q1, q5, q10 = compute_score_tr(str(ds / "test_texts.tr.jsonl"), str(work / "i2t.jsonl"))
    metrics = {"t2i_r1": r1, "t2i_r5": r5, "t2i_r10": r10, "i2t_r1": q1, "i2t_r5": q5, "i2t_r10": q10}
    scores = txt_feats @ img_feats.t()
    return metrics, t2i, i2t, scores, img_ids, txt_ids


def _diverges_only_at_near_ties(ref_rows, our_rows, key, ranked_key, scores, query_ids, cand_ids):
    qpos = {q: i for i, q in enumerate(query_ids)}
    cpos = {c: i for i, c in enumerate(cand_ids)}
    ours = {r[key]: r[ranked_key] for r in our_rows}
    for row in ref_rows:
        mine = ours[row[key]]
        if mine == row[ranked_key]:
            continue
        at = next(i for i, (a, b) in enumerate(zip(mine, row[ranked_key])) if a != b)
        s = scores[qpos[row[key]]]
        gap = abs(float(s[cpos[mine[at]]] - s[cpos[row[ranked_key][at]]]))
        assert gap < NEAR_TIE, (
            f"{key} {row[key]}: rank {at + 1} differs ({mine} vs {row[ranked_key]}), score gap {gap:.2e}"
        )
        return False
    return True


@pytest.mark.parity
def test_retrieval_cli_equals_reference_pipeline(world, tmp_path):
    root, ckpt = world
    ref_metrics, t2i, i2t, scores, img_ids, txt_ids = _reference_retrieval(root, ckpt, tmp_path)
    dump = tmp_path / "ours"
    ours = _cli(
        "--checkpoint",
        str(ckpt),
        "--arch",
        ARCH,
        "--dataset",
        "flickr30k-cn",
        "--data-root",
        str(root),
        "--batch-size",
        "5",
        "--dump-predictions",
        str(dump),
    )
    assert ours["num_images"] == len(img_ids) and ours["num_texts"] == len(txt_ids)
    our_t2i = [json.loads(x) for x in (dump / "test_predictions.jsonl").read_text().splitlines()]
    our_i2t = [json.loads(x) for x in (dump / "test_tr_predictions.jsonl").read_text().splitlines()]
    same_t2i = _diverges_only_at_near_ties(t2i, our_t2i, "text_id", "image_ids", scores, txt_ids, img_ids)
    same_i2t = _diverges_only_at_near_ties(
        [r for r in i2t if any(r["image_id"] == x["image_id"] for x in our_i2t)],
        our_i2t,
        "image_id",
        "text_ids",
        scores.t(),
        img_ids,
        txt_ids,
    )
    if same_t2i and same_i2t:
        for k, v in ref_metrics.items():
            assert ours[k] == pytest.approx(v, abs=1e-9), k


@pytest.mark.parity
def test_zeroshot_cli_equals_reference_pipeline(world):
    import numpy as np

    require_reference()
    from cn_clip.clip import image_transform, tokenize
    from cn_clip.eval.cvinw_zeroshot_templates import openai_templates
    from cn_clip.eval.data import _preprocess_text
    from torchvision.datasets import ImageFolder

    root, ckpt = world
    ns = {
        "torch": torch,
        "tqdm": lambda x: x,
        "_preprocess_text": _preprocess_text,
        "tokenize": tokenize,
        "float": lambda x: float(np.asarray(x).reshape(())),
    }
    ref = reference_functions("cn_clip.eval.zeroshot_evaluation", ["zero_shot_classifier", "accuracy", "run"], ns)
    args = Namespace(context_length=52, gpu="cpu", index="")
    model = _reference_model(ckpt)
    classifier = ref["zero_shot_classifier"](model, CLASSES, openai_templates, args)
    folder = ImageFolder(str(root / "datasets" / "imagenet" / "test"), transform=image_transform(224))
    top1, probs = ref["run"](model, classifier, DataLoader(folder, batch_size=4), args)
    ours = _cli("--checkpoint", str(ckpt), "--arch", ARCH, "--dataset", "imagenet", "--data-root", str(root))
    assert "label_cn.txt" in ours["_stderr"]  # warned: not the pinned ImageNet label file
    assert ours["num_images"] == len(folder) and ours["num_classes"] == len(CLASSES)

    # per image: our prediction (same runner as the CLI) against the reference's
    from qaclip_harness.backends import NativeEncoder
    from qaclip_harness.data.catalog import get_dataset, locate
    from qaclip_harness.eval.runner import evaluate_card

    encoder = NativeEncoder(qaclip_core.load_checkpoint(ckpt, ARCH), name="x")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        raw = evaluate_card(encoder, locate(get_dataset("imagenet"), root), progress=False).raw
    ref_pred, our_pred = probs.argmax(dim=1), raw["logits"].argmax(dim=1)
    top2 = torch.log(probs).topk(2, dim=1).values  # log-softmax: 100 x cosine, up to a constant
    for i in (ref_pred != our_pred).nonzero().flatten().tolist():
        gap = float(top2[i, 0] - top2[i, 1]) / 100
        assert gap < NEAR_TIE, (
            f"image {i}: class {int(our_pred[i])} vs reference {int(ref_pred[i])}, cosine gap {gap:.2e}"
        )
    mismatches = int((ref_pred != our_pred).sum())
    assert abs(ours["top1"] - top1 * 100) <= 100 * mismatches / len(folder) + 1e-9
