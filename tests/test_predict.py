"""``save_model`` in a run, the threshold from held-out training images, and ``python -m adbench.predict``."""

from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_overrides
from PIL import Image
from torchvision.transforms import functional as TF

from adbench.data.dataset import ImageDataset
from adbench.data.samples import Sample
from adbench.data.transforms import Transform
from adbench.errors import ConfigError, DataError
from adbench.serving.model_io import load_model
from adbench.serving.predict import original_resolution, predict_folder

REPO = Path(__file__).resolve().parent.parent
RUN = [
    "dataset=synthetic", "dataset.size=64", "dataset.resize=64", "dataset.crop=64", "dataset.n_train=8", "dataset.n_test=3",
    "device=cpu", "method.coreset_ratio=1.0", "threshold.holdout=0.25",
]  # fmt: skip


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("saved")
    model = base / "model.safetensors"
    record = run_overrides([*RUN, f"dataset.root={base / 'data'}", f"save_model={model}"], base / "results")
    (generated,) = (base / "data").glob("stripes-*")  # the synthetic set's cache folder
    return {"base": base, "model": model, "record": record, "data": generated / "stripes"}


def scores_of(model, paths: list[Path]) -> np.ndarray:
    ds = ImageDataset([Sample(p, 0) for p in paths], model.transform)
    images = torch.stack([ds[i]["image"] for i in range(len(ds))])
    return model.method.predict(images).image_scores


def test_threshold_comes_from_held_out_training_images(saved) -> None:
    record, threshold = saved["record"], saved["record"]["saved_model"]["threshold"]
    train = sorted((saved["data"] / "train" / "good").glob("*.png"))
    held = [p for p in train if p.name in threshold["held_out"]]
    fitted = [p for p in train if p.name not in threshold["held_out"]]
    assert len(held) == 2 and record["n_train"] == len(fitted) == 6
    assert threshold["quantile"] == 1.0 and threshold["image"] == max(threshold["held_out_scores"])
    model = load_model(saved["model"])
    assert model.threshold == threshold
    np.testing.assert_allclose(scores_of(model, held), threshold["held_out_scores"], rtol=1e-5)
    # coreset 1.0 keeps every patch of the fitted images: they score ~0, the held-out ones do not,
    # which shows the threshold images were kept out of the fit
    assert scores_of(model, fitted).max() < 0.05 * min(threshold["held_out_scores"])
    assert threshold["pixel"] is not None and threshold["pixel_floor"] < threshold["pixel"]


def test_saving_run_reruns_only_for_a_new_model_path(saved, capsys) -> None:
    overrides = [*RUN, f"dataset.root={saved['base'] / 'data'}"]
    again = run_overrides([*overrides, f"save_model={saved['model']}"], saved["base"] / "results")
    assert "not rerun" in capsys.readouterr().out and again["config_hash"] == saved["record"]["config_hash"]
    other = saved["base"] / "other.safetensors"
    rerun = run_overrides([*overrides, f"save_model={other}"], saved["base"] / "results")
    assert other.is_file() and rerun["saved_model"]["threshold"] == saved["record"]["saved_model"]["threshold"]
    assert rerun["config_hash"] != run_overrides(overrides, saved["base"] / "plain")["config_hash"]  # full-train run differs


def test_predict_scores_a_messy_folder(saved, tmp_path) -> None:
    folder = tmp_path / "incoming"
    shutil.copytree(saved["data"] / "test", folder)
    (folder / "notes.txt").write_text("not an image")
    (folder / ".hidden.png").write_bytes(b"ignored")
    Image.open(folder / "good" / "000.png").convert("RGB").save(folder / "good" / "000.jpg", quality=95)  # same stem
    out = tmp_path / "out"
    rows = predict_folder(saved["model"], folder, out, device="cpu")
    with open(out / "scores.csv") as handle:
        table = list(csv.DictReader(handle))
    paths = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.suffix in (".png", ".jpg") and not p.name.startswith("."))
    assert [r["path"] for r in table] == paths == [r["path"] for r in rows]
    model = load_model(saved["model"])
    expected = scores_of(model, [folder / p for p in paths])
    scores = np.array([float(r["score"]) for r in table])
    np.testing.assert_allclose(scores, expected, rtol=1e-5)
    threshold = model.threshold["image"]
    assert all(int(r["anomalous"]) == (float(r["score"]) > threshold) for r in table)
    defect = np.array([p.startswith("defect/") for p in paths])
    assert scores[defect].min() > threshold and scores[defect].min() > scores[~defect].max()
    overlays = [out / r["overlay"] for r in table]
    assert len(set(overlays)) == len(overlays) and {"overlays/good/000.png.png", "overlays/good/000.jpg.png"} <= {r["overlay"] for r in table}
    with Image.open(overlays[0]) as picture:
        assert picture.size == (2 * 64, 64) and picture.mode == "RGB"


def predict_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "adbench.predict", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_predict_errors_name_the_problem(saved, tmp_path) -> None:
    folder, empty = tmp_path / "imgs", tmp_path / "empty"
    folder.mkdir()
    empty.mkdir()
    (tmp_path / "blocked").write_text("a file where the output folder should go")
    bad_args = {
        (f"model={tmp_path / 'nope.safetensors'}", f"images={saved['data'] / 'test'}"): "does not exist",
        (f"model={saved['model']}",): "images=...: required",
        (f"model={saved['model']}", f"images={folder}", "colour=red"): "colour",
        (f"model={saved['model']}", f"images={folder}", "batch_size=0"): "batch_size=0: must be an integer >= 1",
        (f"model={saved['model']}", f"images={saved['data'] / 'test'}", f"out={tmp_path / 'blocked' / 'out'}"): "not writable",
        (f"model={saved['model']}", f"images={empty}"): "no image files",
    }
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    bad_args[(f"model={saved['model']}", f"images={folder}")] = f"cannot read image {folder / 'broken.png'}"
    for args, message in bad_args.items():
        done = predict_cli(*args, cwd=tmp_path)
        last = done.stderr.strip().splitlines()[-1]  # progress bars may precede it
        assert done.returncode == 2 and last.startswith("adbench-predict: error: ") and message in last, (args, done.stderr)
        assert "Traceback" not in done.stderr


def test_predict_command_line(saved, tmp_path) -> None:
    done = predict_cli(f"model={saved['model']}", f"images={saved['data'] / 'test' / 'defect'}", "out=out", "overlays=false", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    table = list(csv.DictReader(open(tmp_path / "out" / "scores.csv")))
    assert len(table) == 3 and all(r["anomalous"] == "1" and r["overlay"] == "" for r in table)
    assert "3 above threshold" in done.stdout and not (tmp_path / "out" / "overlays").exists()


def test_unreadable_images_are_skipped_named_and_the_call_fails_at_the_end(saved, tmp_path) -> None:
    folder = tmp_path / "incoming"
    shutil.copytree(saved["data"] / "test" / "good", folder)
    broken = folder / "zz_broken.png"
    broken.write_bytes((folder / "000.png").read_bytes()[:200])  # truncated
    with pytest.raises(DataError, match=re.escape(f"1 unreadable image(s) skipped (the others were scored): cannot read image {broken}")):
        predict_folder(saved["model"], folder, tmp_path / "out", device="cpu")
    table = list(csv.DictReader(open(tmp_path / "out" / "scores.csv")))
    assert sorted(r["path"] for r in table) == sorted(p.name for p in folder.glob("*.png") if p != broken)


def test_threshold_override_and_the_few_held_out_images_warning(saved, tmp_path, capsys) -> None:
    folder = saved["data"] / "test"
    rows = predict_folder(saved["model"], folder, tmp_path / "saved", device="cpu", overlays=False)
    held_out = saved["record"]["saved_model"]["threshold"]["held_out"]
    assert len(held_out) == 2 and "comes from 2 held-out image(s) (fewer than 10)" in capsys.readouterr().err
    scores = np.array([r["score"] for r in rows])
    middle = float(np.median(scores))
    forced = predict_folder(saved["model"], folder, tmp_path / "forced", device="cpu", overlays=False, threshold=middle)
    assert [r["anomalous"] for r in forced] == [int(s > middle) for s in scores] and {r["threshold"] for r in forced} == {middle}
    assert "held-out" not in capsys.readouterr().err  # an explicit threshold: no warning about the saved one
    with pytest.raises(ConfigError, match="threshold='high': must be a number"):
        predict_folder(saved["model"], folder, tmp_path / "x", threshold="high")


def test_maps_at_the_original_resolution_invert_the_models_view(saved, tmp_path) -> None:
    source = saved["data"] / "test" / "defect" / "001.png"
    picture = Image.open(source).convert("RGB").resize((96, 80))  # not square: the model's view squeezes it
    folder = tmp_path / "incoming"
    folder.mkdir()
    picture.save(folder / "wide.png")
    model = load_model(saved["model"])
    crop = Transform(64, 48, model.transform.mean, model.transform.std)  # a centre crop: the map misses the border
    amap = np.random.default_rng(0).random((48, 48)).astype(np.float32)
    full = original_resolution(amap, crop, (96, 80))
    assert full.shape == (80, 96) and np.isnan(full[0]).all() and np.isnan(full[:, 0]).all() and np.isfinite(full[40, 48])
    # forward again with torchvision (the model's own transform) on the seen part: back to the map, up to interpolation
    view = TF.center_crop(TF.resize(torch.from_numpy(np.nan_to_num(full, nan=0.0))[None], [64, 64], antialias=False), [48, 48])[0].numpy()
    assert np.corrcoef(view[4:-4, 4:-4].ravel(), amap[4:-4, 4:-4].ravel())[0, 1] > 0.9
    rows = predict_folder(saved["model"], folder, tmp_path / "out", device="cpu", maps="npy")
    written = np.load(tmp_path / "out" / rows[0]["map"])
    assert rows[0]["map"] == "maps/wide.npy" and written.shape == (80, 96) and np.isfinite(written).all()  # resize 64 = crop 64


def test_a_second_call_replaces_the_outputs_of_the_first(saved, tmp_path) -> None:
    out = tmp_path / "out"
    predict_folder(saved["model"], saved["data"] / "test", out, device="cpu")
    stale = out / "overlays" / "defect" / "000.png"
    assert stale.is_file()
    (out / "mine.txt").write_text("not ours: kept")
    predict_folder(saved["model"], saved["data"] / "test" / "good", out, device="cpu", maps="tiff")
    assert not stale.exists() and not (out / "overlays" / "defect").exists() and (out / "mine.txt").is_file()
    assert len(list((out / "maps").glob("*.tiff"))) == 3 and not list(out.glob(".adbench-predict.*"))
    with Image.open(next((out / "maps").glob("*.tiff"))) as tiff:
        assert tiff.mode == "F" and tiff.size == (64, 64)
