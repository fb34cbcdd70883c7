"""Config: where the YAML tree lives (``conf/``, shipped as the package ``adbench.conf``), reading
one of its groups, validating a composed config (:mod:`.schema`) and building objects from it (:mod:`.build`)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ..errors import unknown_choice

CONF_PACKAGE = "adbench.conf"
CONFIG_PATH = f"pkg://{CONF_PACKAGE}"  # Hydra's search path entry: works from a checkout and from a wheel


def conf_dir() -> Path:
    """The folder holding ``config.yaml`` and the groups (``method/``, ``dataset/`` ...)."""
    return Path(str(resources.files(CONF_PACKAGE)))


def group_choices(group: str) -> list[str]:
    """Option names of one config group, e.g. ``group_choices("method")``."""
    return sorted(p.stem for p in (conf_dir() / group).glob("*.yaml"))


def load_group(group: str, name: str, key: str) -> DictConfig:
    """``conf/<group>/<name>.yaml``; a ConfigError naming ``key`` and the valid options otherwise."""
    path = conf_dir() / group / f"{name}.yaml"
    if not path.is_file():
        raise unknown_choice(key, name, group_choices(group))
    return OmegaConf.load(path)
