"""Output paths probed before the work, named by what the user set; every write atomic, debris of dead writers removed.

"Read-only" is real here: when the tests run as root (CI does), the probe runs in a child that
first drops the capabilities that let root write anywhere (CAP_DAC_OVERRIDE and friends, from
its bounding set, so the exec'd interpreter never has them): a folder of mode 0o555 is then
read-only for it as for any user.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from qaclip_harness import files, options
from qaclip_harness.suite import options as suite_options

REPO = Path(__file__).resolve().parents[2]


def _dead_pid() -> int:
    return int(
        subprocess.run(
            [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=False
        ).stdout
    )


def _read_only(tmp_path: Path) -> Path:
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    tmp_path.chmod(0o777)
    return folder


def _without_root_overrides() -> None:
    """In the child before exec: drop CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH and CAP_FOWNER from the bounding set."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2, 3):
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def _as_user(code: str, *args: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a child that, even as root, cannot write where the mode bits say no."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        preexec_fn=_without_root_overrides if os.geteuid() == 0 else None,
        cwd=REPO,
        check=False,
    )


# ------------------------------------------------------------------------------------------------
# class 1: outputs probed at configure / parse time, the error naming the flag or the variable


def _get(values: dict):
    defaults = {
        "--num-workers": "0",
        "--backend": "pytorch",
        "--device": "cpu",
        "--precision": "fp32",
        "--batch-size": "8",
        "--resume-chunk": "2048",
    }
    return lambda flag: values.get(flag, defaults.get(flag))


def test_report_folder_holding_a_folder_named_report_json_is_refused_at_configure(tmp_path):
    (tmp_path / "r" / "report.json").mkdir(parents=True)
    with pytest.raises(options.OptionError, match=r"--report .*report\.json is a folder, but the run writes the file"):
        suite_options.validated_options(_get({"--report": str(tmp_path / "r")}))


def test_golden_dir_that_is_a_file_is_refused_and_named_by_its_variable(tmp_path, monkeypatch):
    f = tmp_path / "goldens"
    f.write_text("not a folder")
    with pytest.raises(options.OptionError, match=r"--golden-dir .*expected a folder"):
        suite_options.validated_options(_get({"--golden-dir": str(f), "--golden-save": True}))
    monkeypatch.setenv("QACLIP_GOLDEN_DIR", str(f))
    source = suite_options.option_source(
        SimpleNamespace()
    )  # nothing given on the command line: the value is the variable's
    with pytest.raises(options.OptionError, match=r"^QACLIP_GOLDEN_DIR .*expected a folder"):
        suite_options.validated_options(_get({"--golden-dir": str(f)}), source=source)


def test_device_error_names_the_variable_that_set_it(monkeypatch):
    monkeypatch.setenv("QACLIP_DEVICE", "cuda:7")
    with pytest.raises(options.OptionError, match=r"^QACLIP_DEVICE 'cuda:7'"):
        suite_options.validated_options(
            _get({"--device": "cuda:7"}), source=suite_options.option_source(SimpleNamespace())
        )
    given = suite_options.option_source(SimpleNamespace(qaclip_given={"--device"}))  # given on the command line as well
    with pytest.raises(options.OptionError, match=r"^--device 'cuda:7'"):
        suite_options.validated_options(_get({"--device": "cuda:7"}), source=given)


def test_suite_names_the_variable_end_to_end(tmp_path):
    # pytest takes the default from QACLIP_DEVICE; the usage error must say so
    env = {**os.environ, "QACLIP_DEVICE": "cuda:7"}
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "benchmarks", "--collect-only", "-q", "-p", "no:cacheprovider"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 4 and "QACLIP_DEVICE 'cuda:7'" in out.stderr, out.stderr[-2000:]
    assert "--device 'cuda:7'" not in out.stderr


@pytest.mark.parametrize("backend", ["onnx", "pytorch"])
@pytest.mark.parametrize("mode", [{}, {"--no-cache": True}, {"--cache-read-only": True}, {"--refresh-cache": True}])
def test_a_cache_that_is_a_file_is_named_at_configure_for_every_backend(tmp_path, monkeypatch, backend, mode):
    f = tmp_path / "cache"
    f.write_text("x")
    for value, needle in [(f, r"expected a folder, but .* is a file"), (f / "sub", r"cache/sub: .*cache is a file")]:
        monkeypatch.setenv("QACLIP_CACHE", str(value))
        with pytest.raises(options.OptionError, match=rf"^QACLIP_CACHE .*{needle}"):
            suite_options.validated_options(_get({"--backend": backend, **mode}))


@pytest.mark.parametrize("value", ["abc", "-1", "nan", "inf", "-inf", "1e400", " "])
def test_the_cache_budget_is_checked_at_configure(monkeypatch, tmp_path, value):
    monkeypatch.setenv("QACLIP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("QACLIP_CACHE_BUDGET_GB", value)
    if not value.strip():  # unset: the default
        suite_options.validated_options(_get({}))
        return
    with pytest.raises(options.OptionError, match=rf"^QACLIP_CACHE_BUDGET_GB '{value}': expected a"):
        suite_options.validated_options(_get({}))


def test_a_cache_under_a_read_only_folder_is_named_at_configure(tmp_path):
    """Written in use and refresh mode (the default backend too), so probed then; read-only mode only reads it."""
    folder = _read_only(tmp_path)
    code = (
        "import os, sys\nfrom qaclip_harness import options\nfrom qaclip_harness.suite import options as so\n"
        "os.environ['QACLIP_CACHE'] = sys.argv[1]\n"
        "get = {'--num-workers': '0', '--backend': 'pytorch', '--device': 'cpu', '--precision': 'fp32', "
        "'--batch-size': '8', '--resume-chunk': '2048', sys.argv[2]: True}.get\n"
        "try:\n    so.validated_options(get)\n    print('accepted')\nexcept options.OptionError as e:\n    print(e)\n"
    )
    for flag in ("--refresh-cache", "--none"):
        out = _as_user(code, str(folder / "cache"), flag)
        assert out.stdout.startswith("QACLIP_CACHE ") and "Permission denied" in out.stdout, out.stdout + out.stderr
    out = _as_user(code, str(folder / "cache"), "--cache-read-only")
    assert out.stdout.strip() == "accepted", out.stdout + out.stderr
    assert sorted(folder.iterdir()) == []


def test_lock_file_under_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(options.OptionError, match=r"--lock-file .*is a file, not a folder"):
        suite_options.validated_options(_get({"--lock-file": str(tmp_path / "f" / "lock.json")}))
    with pytest.raises(options.OptionError, match=r"--lock-file .*expected a file path, but .* is a folder"):
        suite_options.validated_options(_get({"--lock-file": str(tmp_path)}))


@pytest.mark.parametrize("check", ["new_output_folder", "output_file"])
def test_a_read_only_folder_is_refused_before_any_work(tmp_path, check):
    folder = _read_only(tmp_path)
    target = folder if check == "new_output_folder" else folder / "out.yaml"
    code = (
        "import sys; from qaclip_harness import options\n"
        f"try:\n    options.{check}(sys.argv[1], '--out')\nexcept options.OptionError as e:\n    print(e)\n"
    )
    out = _as_user(code, str(target))
    assert "--out" in out.stdout and "is not writable" in out.stdout, out.stdout + out.stderr
    assert sorted(folder.iterdir()) == []


def test_cli_outputs_fail_at_parse_time(tmp_path, capsys, monkeypatch):
    import qaclip_harness.export.onnx as onnx_export
    from qaclip_harness.cli import commands as cli
    from qaclip_harness.fixture import CHECKPOINT

    monkeypatch.setattr(onnx_export, "export_checkpoint", lambda *a, **k: pytest.fail("the export started"))
    existing = tmp_path / "existing.file"
    existing.write_text("x")
    for argv, needle in [
        (["export-onnx", "--checkpoint", str(CHECKPOINT), "--out", str(existing)], "--out"),
        (["calibrate", "--out", str(tmp_path)], "--out"),
        (["calibrate", "--out", str(existing / "c.yaml")], "--out"),
    ]:
        with pytest.raises(SystemExit) as e:
            cli.main(argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and needle in err and "Traceback" not in err, err


# ------------------------------------------------------------------------------------------------
# class 2: atomic writes, stale temporaries removed by the next run of the same writer


def _full_disk(monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", full)


def test_report_is_written_atomically_and_stale_temporaries_go(tmp_path, monkeypatch):
    from qaclip_harness.report.tables import CaseResult, write_reports

    stale = tmp_path / f".report.json.{_dead_pid()}.tmp"
    stale.write_text('{"meta": {}, "resu')  # what a killed writer left
    results = [CaseResult(dataset="d", model="m", status="passed", measured={"top1": 1.0})]
    write_reports(results, tmp_path, {"precision": "fp32"})
    assert not stale.exists() and json.loads((tmp_path / "report.json").read_text())["results"][0]["model"] == "m"
    before = (tmp_path / "report.json").read_text()
    _full_disk(monkeypatch)
    with pytest.raises(files.OutputError, match=r"report\.json: no space left on the device"):
        write_reports(results * 2, tmp_path, {"precision": "fp16"})
    assert (tmp_path / "report.json").read_text() == before  # the old report, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json", "report.md"]


def test_interrupted_report_says_so(tmp_path):
    from qaclip_harness.report.tables import CaseResult, write_reports

    results = [
        CaseResult(dataset="d", model="a", status="passed"),
        CaseResult(dataset="d", model="b", status="interrupted", reason="the run was interrupted"),
    ]
    write_reports(results, tmp_path, {"interrupted": True})
    md = (tmp_path / "report.md").read_text()
    assert "The run was interrupted" in md and "interrupted (Ctrl-C) while running" in md
    assert json.loads((tmp_path / "report.json").read_text())["meta"]["interrupted"] is True


def test_golden_save_is_atomic_and_cleans_up(tmp_path, monkeypatch):
    import torch

    from qaclip_harness.gates.features import ProbeFeatures
    from qaclip_harness.gates.golden import save_golden
    from qaclip_harness.probe import load_probe_set

    probe = load_probe_set()
    feats = ProbeFeatures(
        list(probe.image_names),
        list(probe.captions),
        torch.zeros(len(probe.images), 4),
        torch.zeros(len(probe.captions), 4),
    )
    ckpt = tmp_path / "m.pt"
    ckpt.write_bytes(b"w")
    store = tmp_path / "goldens"
    store.mkdir()
    stale = store / f".m-fp32-cpu.pt.{_dead_pid()}.tmp"
    stale.write_bytes(b"half a golden")
    save_golden(store, "m", "fp32", "cpu", feats, ckpt, probe)
    assert not stale.exists()
    _full_disk(monkeypatch)
    with pytest.raises(files.OutputError, match=r"m-fp16-cpu\.pt: no space left"):
        save_golden(store, "m", "fp16", "cpu", feats, ckpt, probe)
    assert sorted(p.name for p in store.iterdir() if not p.name.endswith(".lock")) == ["m-fp32-cpu.pt", "manifest.json"]


def test_export_folder_is_a_pid_temporary_and_a_killed_ones_is_removed(tmp_path, monkeypatch):
    import qaclip_harness.export.onnx as onnx_export
    from qaclip_core.model.clip import create_model
    from qaclip_harness.errors import ExportError
    from qaclip_harness.fixture import ARCH

    monkeypatch.setattr(onnx_export, "require", lambda *names: [None] * len(names))
    monkeypatch.setattr(onnx_export, "check_opset", lambda opset: opset)
    killed = tmp_path / f".key.{_dead_pid()}.tmpdir"
    killed.mkdir()
    (killed / "image.onnx.data").write_bytes(b"\0" * 1000)  # the partial export of a kill -9
    used = []

    def exporter(module, example, path, *a, **k):
        used.append(path.parent)
        raise ExportError("stopped here")

    monkeypatch.setattr(onnx_export, "_export_tower", exporter)
    with pytest.raises(ExportError, match="stopped here"):
        onnx_export.export_model(create_model(ARCH), tmp_path / "key")
    assert used == [files.temp_path(tmp_path / "key", folder=True)]
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # the stale one and its own: both gone


def test_lock_file_write_is_atomic_and_named(tmp_path, monkeypatch):
    from qaclip_core.lockfile import ChecksumLock, LockFileError

    lock = ChecksumLock(tmp_path / "qaclip.lock.json")
    stale = tmp_path / f".qaclip.lock.json.{_dead_pid()}.tmp"
    stale.write_text("{")
    lock.record("a", "0" * 64, 1)
    assert not stale.exists()
    before = lock.path.read_text()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("qaclip_core.lockfile.os.fsync", full)
    with pytest.raises(LockFileError, match=r"cannot write the lock file .*qaclip\.lock\.json: No space left"):
        lock.record("b", "1" * 64, 2)
    assert lock.path.read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["qaclip.lock.json", "qaclip.lock.json.lock"]


def test_calibration_and_predictions_are_written_atomically(tmp_path, monkeypatch):
    from qaclip_harness.calibrate import write_calibration
    from qaclip_harness.eval.zeroshot import write_zeroshot_predictions

    path = write_calibration({"cases": {}}, tmp_path / "c.yaml")
    before = path.read_text()
    _full_disk(monkeypatch)
    with pytest.raises(files.OutputError, match=r"c\.yaml: no space left"):
        write_calibration({"cases": {"x": 1}}, path)
    assert path.read_text() == before
    with pytest.raises(files.OutputError, match=r"kitti\.json: no space left"):
        write_zeroshot_predictions({"logits": [[0.0, 1.0]], "folder": "kitti"}, tmp_path, "m")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml"]


# ------------------------------------------------------------------------------------------------
# class 7: calibrate with every case skipped, Ctrl-C in the CLI


def test_calibrate_with_every_case_skipped_fails_unless_asked(tmp_path, capsys, monkeypatch):
    import qaclip_harness.calibrate as calibrate
    from qaclip_harness.cli import commands as cli

    monkeypatch.setattr(
        calibrate,
        "calibrate",
        lambda cases, *a, **k: {
            "environment": {},
            "runs": ["fp32"],
            "cases": {},
            "skipped": {c.id: "no weights" for c in cases},
        },
    )
    out = tmp_path / "cal.yaml"
    argv = [
        "calibrate",
        "--out",
        str(out),
        "--expected-dir",
        str(REPO / "expected"),
        "--case",
        "muge",
        "--device",
        "cpu",
    ]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert "were skipped" in err and "nothing was calibrated" in err and not out.exists()
    assert cli.main([*argv, "--allow-empty"]) == 0 and out.exists()


def test_ctrl_c_in_the_cli_is_one_line_and_exit_130(tmp_path):
    # a real SIGINT, delivered while the command works
    code = (
        "import os, signal, time, sys\n"
        # a child started from a background job inherits SIGINT ignored; a terminal's Ctrl-C is not
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "import qaclip_harness.cli.commands as cli\n"
        "def work(args):\n    os.kill(os.getpid(), signal.SIGINT)\n    time.sleep(30)\n"
        "cli._calibrate = work\n"
        "sys.exit(cli.main(['calibrate', '--out', sys.argv[1]]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "c.yaml")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        check=False,
    )
    assert out.returncode == 130, out.stderr
    assert out.stderr.strip() == "qaclip: interrupted (Ctrl-C)"


def test_a_report_cut_by_a_file_size_limit_leaves_the_old_one_whole(tmp_path):
    # ulimit -f in a child while the report is written: the old report.json stays valid, no temporary stays
    code = (
        "import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "from qaclip_harness.report.tables import CaseResult, write_reports\n"
        "from qaclip_harness.files import OutputError\n"
        "rows = [CaseResult(dataset='d', model=f'm{i}', status='passed', reason='x' * 200) for i in range(50)]\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (2048, 2048))\n"
        "try:\n    write_reports(rows, sys.argv[1], {'precision': 'fp32'})\n"
        "except OutputError as e:\n    print(e)\n"
    )
    (tmp_path / "report.json").write_text('{"meta": {}, "environment": {}, "results": []}')
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=300, cwd=REPO, check=False
    )
    assert "report.json: file too large" in out.stdout, out.stdout + out.stderr
    assert json.loads((tmp_path / "report.json").read_text()) == {"meta": {}, "environment": {}, "results": []}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_fixture_data_cut_by_a_file_size_limit_is_one_error_and_leaves_nothing(tmp_path):
    """A full disk (here ulimit -f in a child) while the fixture data is generated into the cache: an OutputError naming
    the cache entry, no raw lmdb.Error, no .<key>.<pid>.tmpdir left; a later run removes a killed run's temporary."""
    code = (
        "import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "from pathlib import Path\n"
        "from qaclip_harness.suite.fixture_data import fixture_data\n"
        "from qaclip_harness.files import OutputError\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))\n"
        "try:\n    fixture_data('use', Path(sys.argv[1]), Path(sys.argv[1]) / 'scratch')\n"
        "except OutputError as e:\n    print('OutputError:', e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=300, cwd=REPO, check=False
    )
    assert out.stdout.startswith("OutputError: cannot write the fixture data into " + str(tmp_path / "fixture-data")), (
        out.stdout + out.stderr
    )
    assert "Traceback" not in out.stderr
    assert list((tmp_path / "fixture-data").iterdir()) == []
    from qaclip_harness.suite.fixture_data import fixture_data

    killed = tmp_path / "fixture-data" / f".{'0' * 32}.{_dead_pid()}.tmpdir"  # a run killed while generating
    (killed / "Shapes-CN").mkdir(parents=True)
    final = fixture_data("use", tmp_path, tmp_path / "scratch")
    assert sorted(p.name for p in (tmp_path / "fixture-data").iterdir()) == [final.name]
