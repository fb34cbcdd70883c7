"""The three commands as a user meets them: --help, bad values (one line, exit 2, before any work),
file permissions, and every command line the README documents."""

from __future__ import annotations

import os
import re
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from adbench.cli import check_overrides
from adbench.config import group_choices
from adbench.data.sources import MVTEC_CATEGORIES

REPO = Path(__file__).resolve().parent.parent
COMMANDS = {"adbench": "config", "adbench-report": "report", "adbench-predict": "predict",
            "python -m adbench": "config", "python -m adbench.report": "report", "python -m adbench.predict": "predict",
            "adbench-import": "import", "python -m adbench.importer": "import"}


def cli(*args: str, cwd: Path, module: str = "adbench") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_help_lists_methods_datasets_categories_and_presets(tmp_path) -> None:
    done = cli("--help", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    for group in ("method", "dataset", "backbone", "experiment"):
        for name in group_choices(group):
            assert any(re.match(rf"\s+{name}\s+\S", line) for line in lines), f"{group} {name} missing from --help"
    mvtec = next(line for line in lines if re.match(r"\s+mvtec\s", line))
    assert all(category in mvtec for category in MVTEC_CATEGORIES)
    assert "--multirun" in done.stdout and "dataset.category=" in done.stdout


@pytest.mark.parametrize(("override", "message"), [
    ("method.coreset_ratio=abc", "method.coreset_ratio='abc': wrong type"),
    ("method.coreset_ratio=0", "method.coreset_ratio=0: must be in (0, 1]"),
    ("method.coreset_ratio=1.5", "method.coreset_ratio=1.5: must be in (0, 1]"),
    ("batch_size=0", "batch_size=0: must be in [1, inf)"),
    ("dataset=folder", "dataset.root, dataset.category: required"),
    ("+dataset.colour=red", "unknown key(s) dataset.colour"),
    ("dataset.colour=red", "unknown key dataset.colour"),
    ("method.colour=red", "unknown key method.colour"),
    ("method=nosuch", "unknown method 'nosuch'; valid: anomalib, cfa"),
    ("dataset=mvtec dataset.category=nope", "unknown dataset.category 'nope'; valid: bottle"),
    ("dataset.crop=300", "dataset.crop=300: must be <= dataset.resize=256"),
    ("dataset.degrade=noise", "dataset.degrade='noise': expected 'kind:severity'"),
    ("device=gpu", "device='gpu'"),
])
def test_bad_values_are_one_line_before_any_work(override, message) -> None:
    assert message in (check_overrides("config", override.split()) or "")


def test_bad_value_exits_2_without_traceback_and_writes_nothing(tmp_path) -> None:
    done = cli("method.coreset_ratio=1.5", "results_dir=res", cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.strip().splitlines() == ["adbench: error: method.coreset_ratio=1.5: must be in (0, 1]"]
    assert not (tmp_path / "res").exists() and not (tmp_path / "outputs").exists()


def test_unwritable_outputs_fail_before_any_work(tmp_path) -> None:
    (tmp_path / "file").write_text("a file where a folder should be")
    for override, key in (("results_dir", "results_dir"), ("cache_dir", "cache_dir"), ("save_model", "save_model")):
        error = check_overrides("config", [f"{override}={tmp_path / 'file' / 'sub' / 'x.safetensors'}"])
        assert error and error.startswith(f"{key}=") and "not writable" in error


def test_report_and_predict_use_the_same_argument_style(tmp_path) -> None:
    assert check_overrides("report", ["results_dir=res", "output=board.md"]) is None
    assert "unknown key colour" in check_overrides("report", ["colour=red"])
    assert check_overrides("predict", ["model=m.safetensors"]) == "images=...: required, no value given"
    done = cli("colour=red", cwd=tmp_path, module="adbench.report")
    assert done.returncode == 2 and done.stderr.strip().startswith("adbench-report: error: unknown key colour")


def test_records_follow_the_umask(tmp_path) -> None:
    from adbench.files import atomic_write_text

    old = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "r.json", "{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def readme_commands() -> list[list[str]]:
    """Every command line in the README's shell blocks that starts with one of ``COMMANDS``."""
    text = (REPO / "README.md").read_text()
    lines = [line.split(" #")[0].strip() for block in re.findall(r"```bash\n(.*?)```", text, re.DOTALL) for line in block.splitlines()]
    commands = []
    for line in lines:
        line = line.split("&&")[-1].strip()
        if any(line == c or line.startswith(c + " ") for c in COMMANDS):
            commands.append(shlex.split(line))
    return commands


def test_readme_documents_commands() -> None:
    names = {" ".join(c[:3]) if c[0] == "python" else c[0] for c in readme_commands()}
    assert {"adbench", "adbench-report", "adbench-predict"} <= {n.replace("python -m ", "").replace(".", "-") for n in names}


@pytest.mark.parametrize("command", readme_commands(), ids=lambda c: " ".join(c)[:60])
def test_every_readme_command_is_valid_as_written(command, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # save_model / results folders are created here
    monkeypatch.setenv("ADBENCH_DATA", str(tmp_path))
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)  # device=cuda commands are checked as on a CUDA machine
    head = " ".join(command[:3]) if command[0] == "python" else command[0]
    args = command[3:] if command[0] == "python" else command[1:]
    assert check_overrides(COMMANDS[head], args) is None, " ".join(command)


def test_wheel_ships_the_config_tree_the_paper_numbers_and_the_commands(tmp_path) -> None:
    import zipfile

    done = subprocess.run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    (wheel,) = tmp_path.glob("adbench-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    conf = {p.relative_to(REPO / "conf").as_posix() for p in (REPO / "conf").rglob("*.yaml")}
    assert {f"adbench/conf/{c}" for c in conf} <= names and "adbench/results/paper_numbers.csv" in names
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    for command in ("adbench = adbench.__main__:main", "adbench-report = adbench.report:main", "adbench-predict = adbench.predict:main",
                    "adbench-import = adbench.importer:main"):
        assert command in entry_points


def test_users_add_their_own_config_folder(tmp_path) -> None:
    (tmp_path / "mine" / "method").mkdir(parents=True)
    (tmp_path / "mine" / "method" / "mypatchcore.yaml").write_text("defaults:\n  - patchcore\n  - _self_\ncoreset_ratio: 0.05\n")
    done = cli("--config-dir", str(tmp_path / "mine"), "method=mypatchcore", "--cfg", "job", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    method = done.stdout[done.stdout.index("method:"):]
    assert "name: patchcore" in method and "coreset_ratio: 0.05" in method
    bad = cli("--config-dir", str(tmp_path / "mine"), "method=mypatchcore", "method.coreset_ratio=2", cwd=tmp_path)
    assert bad.returncode == 2 and "method.coreset_ratio=2: must be in (0, 1]" in bad.stderr
