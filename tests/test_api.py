"""The Python API: the README's notebook example runs, ``adbench.run`` returns what the run wrote, a loaded
model's scores match the run's, and its full-resolution maps invert the resize and centre crop."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from torchvision.transforms import functional as TF

import adbench
from adbench.api import Model, overrides_of
from adbench.data.transforms import Transform
from adbench.errors import ConfigError
from adbench.metrics.per_image import read_per_image

REPO = Path(__file__).resolve().parent.parent


def notebook_example() -> str:
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Python API (notebooks)"):]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


def test_readme_notebook_example_runs(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ADBENCH_CACHE", str(tmp_path / "cache"))  # the synthetic images are generated here
    namespace: dict = {}
    exec(compile(notebook_example(), "README.md", "exec"), namespace)
    result, found, worst = namespace["result"], namespace["found"], namespace["worst"]
    record, table = result  # unpacks as (record, table)
    (record_file,) = (tmp_path / "results" / "records").glob("*.json")
    assert record_file.name.startswith("synthetic_stripes_padim_")
    written = read_per_image(record_file.with_name(record["per_image"]))
    assert table.equals(written) and record["metrics"]["image_auroc"] == pytest.approx(roc_auc_score(table.label, table.score))
    # the saved model, loaded and fed the image files, scores them as the run did (same fit: the run held out the same images)
    np.testing.assert_allclose(found.scores, worst.score.to_numpy(), rtol=1e-5)
    assert all(m.shape == (128, 128) for m in found.maps)  # synthetic images are 128 x 128
    assert found.anomalous.dtype == bool and len(found.anomalous) == 3
    assert str(record["metrics"]["image_auroc"])[:6] in capsys.readouterr().out


def test_overrides_follow_hydra_syntax() -> None:
    assert overrides_of({"method__coreset_ratio": 0.01, "force": True, "tag": None, "dataset.root": "/my data/x",
                         "method.layers": ["blocks.2", "blocks.4"]}) == [
        "method.coreset_ratio=0.01", "force=true", "tag=null", "dataset.root='/my data/x'", "method.layers=[blocks.2,blocks.4]"]
    with pytest.raises(ConfigError, match="colour"):
        adbench.run(method="padim", dataset="synthetic", colour="red")


def test_full_resolution_maps_invert_resize_and_centre_crop() -> None:
    """A smooth map taken back to a 300 x 400 image, then through the forward transform (torchvision's resize and
    centre crop), is the map again: the inverse places every pixel where the transform took it from."""
    model = Model.__new__(Model)
    model._transform = Transform(resize=256, crop=224)
    y, x = np.mgrid[0:224, 0:224].astype(np.float32)
    amap = 0.02 * x + 0.05 * y + 3.0
    full = model._full_size(amap, (300, 400))
    assert full.shape == (300, 400)
    forward = TF.center_crop(TF.resize(torch.from_numpy(full)[None], [256, 256], antialias=True), [224, 224])[0].numpy()
    inner = (slice(8, -8), slice(8, -8))  # away from the crop's edge, where the padding is repeated
    np.testing.assert_allclose(forward[inner], amap[inner], atol=0.05)
    # the cropped-off border repeats the nearest scored value: the top-left corner holds the map's corner value
    assert full[0, 0] == pytest.approx(amap[0, 0], abs=0.05)
