"""No silent wrong result, no lost work (issue 23): data named by content, records that carry their table's
digest and are checked one by one, sweeps that set a method's own keys, one line and a meaningful exit
code for every failure (sweeps, Ctrl-C, a full disk, outputs, weights, quoting, --help)."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import make_config, run_overrides
from PIL import Image

from adbench.cli import check_overrides, sweep_args
from adbench.data.splits import split_digest
from adbench.data.sources import load_folder, make_synthetic
from adbench.errors import OutputError, WeightsUnavailableError
from adbench.features.backbones import _load_state_dict
from adbench.files import FileFacts
from adbench.migrate import migrate, names_and_sizes_digest
from adbench.results.records import RECORDS_DIR, config_hash, find_record, record_problem, scan_records
from adbench.results.report import write_report

REPO = Path(__file__).resolve().parent.parent
CORPUS = Path(__file__).resolve().parent / "corpus" / "records"
SIZE = 32
FOLDER = ["dataset=folder", "dataset.category=stripes", f"dataset.resize={SIZE}", f"dataset.crop={SIZE}", "device=cpu"]


def cli(*args: str, cwd: Path, module: str = "adbench", env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def as_bmp(root: Path) -> None:
    """Every PNG under ``root`` rewritten as BMP (uncompressed: a changed pixel keeps the file size)."""
    for png in sorted(root.rglob("*.png")):
        Image.open(png).save(png.with_suffix(".bmp"))
        png.unlink()


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """Two real runs (coreset 0.5 and 1.0) on a small BMP folder set: ``base/data``, ``base/results``."""
    base = tmp_path_factory.mktemp("runs")
    make_synthetic(base / "data", n_train=4, n_test=2, size=SIZE)
    as_bmp(base / "data")
    for ratio in (0.5, 1.0):
        run_overrides([*FOLDER, f"dataset.root={base / 'data'}", f"method.coreset_ratio={ratio}"], base / "results")
    return base


def copy_of(runs: Path, tmp_path: Path) -> Path:
    shutil.copytree(runs / "results", tmp_path / "results")
    return tmp_path / "results"


def records_of(results: Path) -> list[Path]:
    return sorted((results / RECORDS_DIR).glob("*.json"))


# --- 1. the data digest covers file contents -------------------------------------------------------------------

def test_a_changed_pixel_of_a_same_size_file_gives_a_new_record(runs, tmp_path, capsys) -> None:
    data = tmp_path / "data"
    shutil.copytree(runs / "data", data)
    results = copy_of(runs, tmp_path)
    overrides = [*FOLDER, f"dataset.root={data}", "method.coreset_ratio=0.5"]
    first = run_overrides(overrides, results)
    assert "not rerun" in capsys.readouterr().out  # the same files in another folder: the record is found
    split = load_folder(str(data), "stripes")
    before, sizes = split_digest(split), names_and_sizes_digest(split)
    image = data / "stripes" / "test" / "good" / "000.bmp"
    size = image.stat().st_size
    pixels = np.asarray(Image.open(image)).copy()
    pixels[: SIZE // 2, : SIZE // 2] = 0  # black out a region, as in the issue
    Image.fromarray(pixels).save(image)
    assert image.stat().st_size == size and names_and_sizes_digest(split) == sizes  # the old digest cannot see it
    assert split_digest(split) != before
    second = run_overrides(overrides, results)
    assert "not rerun" not in capsys.readouterr().out
    assert second["config_hash"] != first["config_hash"] and second["config"]["dataset"]["digest"] != first["config"]["dataset"]["digest"]
    assert len(records_of(results)) == 3


def test_file_digests_are_cached_by_path_size_and_mtime(tmp_path, monkeypatch) -> None:
    path = tmp_path / "image.bmp"
    path.write_bytes(b"pixels" * 100)
    facts = FileFacts(tmp_path / "cache")
    digest = facts.digest(path)
    facts.close()
    assert digest == hashlib.blake2b(b"pixels" * 100, digest_size=16).hexdigest()

    def reread(*_args, **_kwargs):
        raise AssertionError("the file was read again")

    monkeypatch.setattr("adbench.files.hashlib.file_digest", reread)
    facts = FileFacts(tmp_path / "cache")
    assert facts.digest(path) == digest  # a rerun does not re-read the data
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))  # changed in place: read again
    with pytest.raises(AssertionError, match="read again"):
        facts.digest(path)
    facts.close()


# --- 2. and 3. records carry their table's digest; bad records are skipped one by one, named ---------------------

def test_records_store_their_table_digest_and_a_rerun_replaces_a_missing_table(runs, tmp_path, capsys) -> None:
    results = copy_of(runs, tmp_path)
    path = records_of(results)[0]
    record = json.loads(path.read_text())
    table = path.parent / record["per_image"]
    assert record["per_image_sha256"] == hashlib.sha256(table.read_bytes()).hexdigest() and record_problem(path, record) is None
    table.unlink()
    assert find_record(results, record["config_hash"]) is None  # a record without its table is not "existing"
    again = run_overrides([*FOLDER, f"dataset.root={runs / 'data'}", f"method.coreset_ratio={record['config']['method']['coreset_ratio']}"], results)
    assert "not rerun" not in capsys.readouterr().out and again["config_hash"] == record["config_hash"]
    assert table.is_file() and record_problem(path, json.loads(path.read_text())) is None


def test_report_skips_a_damaged_table_and_names_it(runs, tmp_path, capsys) -> None:
    results = copy_of(runs, tmp_path)
    damaged, intact = records_of(results)
    table = damaged.with_name(json.loads(damaged.read_text())["per_image"])
    table.write_bytes(np.random.default_rng(0).bytes(table.stat().st_size))  # same size, random bytes
    text = write_report(results).read_text()
    err = capsys.readouterr().err
    assert f"skipping record {damaged}: its per-image table {table.name} is damaged" in err
    assert f"**Skipped records** (1, counted nowhere below): `{damaged.name}` (its per-image table {table.name} is damaged" in text
    ratio = json.loads(damaged.read_text())["config"]["method"]["coreset_ratio"]
    assert f"coreset_ratio={ratio}" not in text.split("**Skipped records**")[1]  # no row, hence no mark, from it
    assert "from 1 run records" in text and intact.name not in err


def test_report_skips_every_bad_record_of_the_corpus_and_names_each(runs, tmp_path) -> None:
    results = copy_of(runs, tmp_path)
    for path in CORPUS.iterdir():
        shutil.copy(path, results / RECORDS_DIR / path.name)
    done = cli(f"results_dir={results}", cwd=tmp_path, module="adbench.report")
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    text = (results / "LEADERBOARD.md").read_text()
    skipped = sorted(p.name for p in CORPUS.glob("*.json"))
    assert f"**Skipped records** ({len(skipped)}, counted nowhere below)" in text
    for name in skipped:
        assert f"skipping record {results / RECORDS_DIR / name}: " in done.stderr and f"`{name}`" in text
    assert "from 2 run records" in text
    found, left = scan_records(results)
    assert len(found) == 2 and sorted(p.name for p, _ in left) == skipped
    reasons = dict((p.name, r) for p, r in left)
    assert reasons["metric_high.json"] == "metric image_auroc is 'high', not a number or null"
    assert reasons["table_missing.json"].endswith("is missing") and "damaged" in reasons["table_random.json"]


# --- 4. sweeps set a method's own keys ---------------------------------------------------------------------------

def test_a_sweep_sets_each_methods_own_keys_and_refuses_unknown_ones(tmp_path) -> None:
    assert check_overrides("config", ["--multirun", "method=cfa,fcdd", "method.epochs=2"]) is None
    assert sweep_args(["--multirun", "method=cfa,fcdd", "method.epochs=2"])[-1] == "++method.epochs=2"
    assert check_overrides("config", ["--multirun", "method=cfa,patchcore", "method.epochs=2"]).startswith(
        "method=patchcore: unknown key(s) method.epochs; valid: ")
    assert check_overrides("config", ["method.epochs=2"]) == "unknown key method.epochs; adbench --cfg job lists the valid keys"
    data = tmp_path / "data"
    done = cli("--multirun", "method=cfa,fcdd", "method.epochs=1", "dataset=synthetic", f"dataset.root={data}", "dataset.size=32",
               "dataset.resize=32", "dataset.crop=32", "dataset.n_train=4", "dataset.n_test=2", "device=cpu", "figures=0", "quiet=true",
               "results_dir=res", f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    records = [json.loads(p.read_text()) for p in records_of(tmp_path / "res")]
    assert sorted((r["method"], r["config"]["method"]["epochs"]) for r in records) == [("cfa", 1), ("fcdd", 1)]


# --- 5. one line and a meaningful exit code, everywhere ----------------------------------------------------------

def test_an_error_inside_a_sweep_is_one_line_exit_2_and_the_other_records_stay(tmp_path) -> None:
    make_synthetic(tmp_path / "data", category="stripes", n_train=4, n_test=2, size=SIZE)
    make_synthetic(tmp_path / "data", category="broken", n_train=4, n_test=2, size=SIZE)
    mask = next((tmp_path / "data" / "broken" / "ground_truth" / "defect").glob("*.png"))
    Image.new("L", (SIZE + 8, SIZE)).save(mask)  # a mask of the wrong size
    done = cli("--multirun", "dataset=folder", f"dataset.root={tmp_path / 'data'}", "dataset.category=broken,stripes", f"dataset.resize={SIZE}",
               f"dataset.crop={SIZE}", "device=cpu", "figures=0", "quiet=true", "results_dir=res", f"hydra.sweep.dir={tmp_path / 'sweep'}",
               cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and "HYDRA_FULL_ERROR" not in done.stderr
    assert f"adbench: error: mask {mask} is {SIZE + 8}x{SIZE}" in done.stderr
    assert done.stderr.strip().splitlines()[-1] == "adbench: error: 1 job(s) of the sweep failed (named above); the other jobs' records are kept"
    (record,) = records_of(tmp_path / "res")
    assert json.loads(record.read_text())["category"] == "stripes"


def test_ctrl_c_exits_130_without_a_traceback_or_partial_files(tmp_path) -> None:
    args = ["dataset=synthetic", f"dataset.root={tmp_path / 'data'}", "dataset.n_train=150", "dataset.n_test=30", "device=cpu", "results_dir=res"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # SIGINT at its default in the child: a parent that ignores it (a test runner, nohup) would pass SIG_IGN on
    run = subprocess.Popen([sys.executable, "-m", "adbench", *args], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen = b""
    while b"features" not in seen:  # the fit's progress bar: the run is under way
        chunk = run.stderr.read1(4096)
        assert chunk, "the run ended before it could be interrupted"
        seen += chunk
    run.send_signal(signal.SIGINT)
    _, err = run.communicate(timeout=120)
    err = (seen + err).decode()
    assert run.returncode == 130, err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("adbench: interrupted")
    records = tmp_path / "res" / RECORDS_DIR
    assert not records.exists() or not list(records.iterdir())


@pytest.mark.parametrize("where", ["table", "record"])
def test_a_full_disk_is_one_line_and_leaves_no_orphan_table(runs, tmp_path, monkeypatch, where) -> None:
    def full(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    if where == "table":  # the table's writer fails half-way
        def half(path, table):
            Path(path).write_bytes(b"PAR1 partial")
            full()
        monkeypatch.setattr("adbench.runner.write_per_image", half)
    else:  # the table is written, then the disk is full
        monkeypatch.setattr("adbench.results.records.file_sha256", full)
    results = tmp_path / "results"
    with pytest.raises(OutputError, match=r"^cannot write .*\.per_image\.parquet: No space left on device; nothing was written$"):
        run_overrides([*FOLDER, f"dataset.root={runs / 'data'}", "method.coreset_ratio=0.5"], results)
    assert list((results / RECORDS_DIR).iterdir()) == []  # no table, no record, no temporary


def test_report_output_is_checked_first_and_help_lists_each_commands_keys(runs, tmp_path) -> None:
    (tmp_path / "a_file").write_text("")
    done = cli(f"results_dir={runs / 'results'}", f"output={tmp_path / 'a_file' / 'LB.md'}", cwd=tmp_path, module="adbench.report")
    assert done.returncode == 2 and done.stderr.strip().startswith(f"adbench-report: error: output={tmp_path / 'a_file'}: not writable (")
    assert not (runs / "results" / "plots").exists()
    for module, prog, keys in (("adbench.report", "adbench-report", ["results_dir=results", "output=null"]),
                               ("adbench.predict", "adbench-predict", ["model=???", "images=???", "threshold=null", "maps=null"])):
        text = cli("--help", cwd=tmp_path, module=module).stdout
        assert all(key in text for key in keys) and text.startswith(f"{prog}: ")
        assert "method" not in text and "backbone" not in text and "== Methods" not in text
        bad = cli("colour=red", cwd=tmp_path, module=module)
        assert bad.returncode == 2 and bad.stderr.strip() == f"{prog}: error: unknown key colour; {prog} --help lists the valid keys"


def test_unreadable_weights_file_is_one_line(tmp_path) -> None:
    path = tmp_path / "weights.pth"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(WeightsUnavailableError) as caught:
        _load_state_dict(path)
    assert str(caught.value) == f"backbone.weights: cannot read {path}: not a state-dict file (.pth/.pt of tensors, or .safetensors; UnpicklingError)"


def test_unquoted_special_characters_get_a_quoting_hint_and_quoted_paths_work() -> None:
    for args, culprit in ((["dataset.root=/data/é"], "dataset.root=/data/é"), (["dataset.root=/my", "data"], "data")):
        message = check_overrides("config", args)
        assert message.startswith(f"cannot parse argument {culprit!r}: every argument is key=value;") and "'dataset.root=\"/my data/x\"'" in message
    cfg = make_config(["dataset=folder", 'dataset.root="/my data/é (1)"', "dataset.category=x"])
    assert cfg.dataset.root == "/my data/é (1)"
    readme = (REPO / "README.md").read_text()
    assert "adbench dataset=folder 'dataset.root=\"/my data/x\"'" in readme


# --- 7. silent oddities --------------------------------------------------------------------------------------

def test_tag_enters_the_config_hash_and_untagged_hashes_stay() -> None:
    config = {"method": {"name": "patchcore"}, "seed": 0, "tag": None}
    untagged = {k: v for k, v in config.items() if k != "tag"}
    assert config_hash(config) == config_hash(untagged)  # records from before keep their hash
    assert config_hash({**config, "tag": "retry"}) != config_hash(config)


def test_a_run_writes_no_hydra_folder_and_quiet_turns_off_progress_bars(tmp_path) -> None:
    args = ["dataset=synthetic", f"dataset.root={tmp_path / 'data'}", "dataset.size=32", "dataset.resize=32", "dataset.crop=32",
            "dataset.n_train=4", "dataset.n_test=2", "device=cpu", "figures=0", "results_dir=res"]
    loud = cli(*args, cwd=tmp_path)
    assert loud.returncode == 0 and "features" in loud.stderr  # progress bars by default
    quiet = cli(*args, "quiet=true", "force=true", cwd=tmp_path)
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "res"]  # no outputs/, .hydra/ or log file


# --- committed records from before content digests -------------------------------------------------------------

def test_migration_renames_old_records_so_a_rerun_finds_them(runs, tmp_path, capsys) -> None:
    results = copy_of(runs, tmp_path)
    split = load_folder(str(runs / "data"), "stripes")
    for path in records_of(results):  # as the older adbench wrote them: names-and-sizes digest, no table digest
        record = json.loads(path.read_text())
        config = record["config"]
        assert config["dataset"]["root"] == "…/data"  # portable: outside every known folder; here it is
        config["dataset"]["root"] = str(runs / "data")
        config["dataset"]["digest"] = names_and_sizes_digest(split)
        record["config_hash"] = config_hash(config)
        del record["per_image_sha256"]
        old = path.with_name(path.name.replace(path.stem.rsplit("_", 1)[1], record["config_hash"]))
        (path.parent / record["per_image"]).rename(old.with_name(f"{old.stem}.per_image.parquet"))
        record["per_image"] = f"{old.stem}.per_image.parquet"
        path.unlink()
        old.write_text(json.dumps(record))
    moved, left = migrate(results)
    assert left == [] and len(moved) == 2 and sorted(new.name for _, new in moved) == sorted(p.name for p in records_of(runs / "results"))
    assert migrate(results) == ([], [])  # already migrated: left alone
    run_overrides([*FOLDER, f"dataset.root={runs / 'data'}", "method.coreset_ratio=0.5"], results)
    assert "not rerun" in capsys.readouterr().out
    assert all(record_problem(p, json.loads(p.read_text())) is None for p in records_of(results))
