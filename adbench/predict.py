"""Entry point only: the console script ``adbench-predict model=PATH images=FOLDER [out=predictions]`` and
``python -m adbench.predict`` (conf/predict.yaml). Scoring new images with a saved model lives in
:func:`adbench.serving.predict.predict_folder`; this module passes it the composed config."""

from __future__ import annotations

from omegaconf import DictConfig

from .cli import hydra_command
from .serving.predict import predict_folder


@hydra_command("predict", "adbench-predict")
def main(cfg: DictConfig) -> None:
    predict_folder(cfg.model, cfg.images, cfg.out, cfg.device, cfg.batch_size, cfg.overlays, cfg.threshold, cfg.maps)


if __name__ == "__main__":
    main()
