"""Config: where the YAML tree lives (``conf/``, shipped as the package ``adbench.conf``), reading
one of its groups, validating a composed config (:mod:`.schema`) and building objects from it (:mod:`.build`)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ..errors import unknown_choice
from .searchpath import plugin_conf_dirs

CONF_PACKAGE = "adbench.conf"
CONFIG_PATH = f"pkg://{CONF_PACKAGE}"  # Hydra's search path entry: works from a checkout and from a wheel


def conf_dir() -> Path:
    """The folder holding ``config.yaml`` and the groups (``method/``, ``dataset/`` ...)."""
    return Path(str(resources.files(CONF_PACKAGE)))


def conf_dirs() -> list[Path]:
    """adbench's config folder, then the installed method plugins' (:mod:`.plugins`)."""
    return [conf_dir(), *plugin_conf_dirs()]


def group_choices(group: str) -> list[str]:
    """Option names of one config group, e.g. ``group_choices("method")`` (plugins' options included)."""
    return sorted({p.stem for folder in conf_dirs() for p in (folder / group).glob("*.yaml")})


def group_file(group: str, name: str) -> Path | None:
    """``<group>/<name>.yaml`` in the first config folder holding it (adbench's own first), None when none does."""
    return next((path for folder in conf_dirs() if (path := folder / group / f"{name}.yaml").is_file()), None)


def load_group(group: str, name: str, key: str) -> DictConfig:
    """``conf/<group>/<name>.yaml``; a ConfigError naming ``key`` and the valid options otherwise."""
    path = group_file(group, name)
    if path is None:
        raise unknown_choice(key, name, group_choices(group))
    return OmegaConf.load(path)
