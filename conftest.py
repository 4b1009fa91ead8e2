"""Suite options (each with an environment-variable twin) and the end-of-run report hook."""
from __future__ import annotations

import os

OPTIONS = [
    # (flag, env var, default, help)
    ("--data-root", "QACLIP_DATA_ROOT", None, "Chinese-CLIP ${DATAPATH} (holding datasets/) or the datasets folder itself"),
    ("--checkpoint-dir", "QACLIP_CHECKPOINT_DIR", None, "where checkpoints are looked for and downloaded (default: ~/.cache/qaclip)"),
    ("--device", "QACLIP_DEVICE", "auto", "cpu, cuda, cuda:N or auto (CUDA when available)"),
    ("--precision", "QACLIP_PRECISION", "fp32", "fp32 (as the published numbers), fp16 or bf16"),
    ("--batch-size", "QACLIP_BATCH_SIZE", "64", "image batch size (halved automatically on out-of-memory)"),
    ("--num-workers", "QACLIP_NUM_WORKERS", "auto", "image-decoding threads (auto: one per core, at most 8)"),
    ("--report", "QACLIP_REPORT", None, "folder for report.json and report.md"),
    ("--lock-file", "QACLIP_LOCK_FILE", None,
     "checksum lock file: the first verified download of each file is recorded there, later ones are checked against it"),
    ("--backend", "QACLIP_BACKEND", "pytorch", "pytorch (each model's own) or onnx (exported into the cache, run by ONNX Runtime)"),
    ("--golden-dir", "QACLIP_GOLDEN_DIR", None, "folder of golden probe features for the golden-<model> cases"),
]

FLAGS = [
    # (flag, env var, help): off unless given or the variable is set to something other than 0/false/no
    ("--download", "QACLIP_DOWNLOAD", "also download MUGE, Flickr30K-CN, label_cn.txt and ELEVATER_all.zip (the ELEVATER datasets) when missing"),
    ("--compile", "QACLIP_COMPILE", "run the vision tower through torch.compile"),
    ("--require-data", "QACLIP_REQUIRE_DATA",
     "a reproduction case whose weights or data are missing fails instead of skipping (for runners that have them)"),
    ("--evaluate-any-split", "QACLIP_EVALUATE_ANY_SPLIT",
     "evaluate data whose size is not the published split's anyway; the result is marked not comparable"),
    ("--verify", "QACLIP_VERIFY", "hash every cached checkpoint and archive in full (ignore the .sha256 records)"),
    ("--cpu-peer-throughput", "QACLIP_CPU_PEER_THROUGHPUT",
     "also run the CPU throughput twins of the real architectures from other backends (transformers, ONNX Runtime)"),
    ("--cpu-large-throughput", "QACLIP_CPU_LARGE_THROUGHPUT",
     "also run the CPU throughput cases of the large towers (ViT-L/14, ViT-L/14@336, ViT-H/14, AltCLIP: minutes each)"),
    ("--golden-save", "QACLIP_GOLDEN_SAVE", "golden-<model> cases record their probe features into --golden-dir"),
]


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


def pytest_addoption(parser):
    group = parser.getgroup("qaclip", "QA-CLIP reproduction suite")
    for flag, env, default, help_text in OPTIONS:
        group.addoption(flag, default=os.environ.get(env, default), help=f"{help_text} [env {env}]")
    for flag, env, help_text in FLAGS:
        group.addoption(flag, action="store_true", default=_env_flag(env), help=f"{help_text} [env {env}=1]")


pytest_plugins = ["benchmarks.plugin"]
