"""``adbench-predict model=PATH images=FOLDER [out=predictions]`` / ``python -m adbench.predict``: score
new images with a saved model (conf/predict.yaml; see adbench/serving/predict.py)."""

from __future__ import annotations

from omegaconf import DictConfig

from .cli import hydra_command
from .serving.predict import predict_folder


@hydra_command("predict", "adbench-predict")
def main(cfg: DictConfig) -> None:
    predict_folder(cfg.model, cfg.images, cfg.out, cfg.device, cfg.batch_size, cfg.overlays, cfg.threshold, cfg.maps)


if __name__ == "__main__":
    main()
