"""What can be chosen, one line each: methods, datasets (with their categories), backbones and
experiment presets, read from the YAML files' first comment line (``adbench --help``)."""

from __future__ import annotations

from ..data.sources import categories
from ..plugins import METHODS_GROUP, declared, package_of
from . import conf_dir, group_choices, group_file

COMMON_OVERRIDES = [
    ("method=NAME dataset=NAME backbone=NAME", "pick one option of each group"),
    ("dataset.category=NAME", "the category (see the list above)"),
    ("dataset.root=PATH", "data folder (default $ADBENCH_DATA/<dataset>)"),
    ("method.coreset_ratio=0.01", "any method.* key of conf/method/<name>.yaml"),
    ("seed=0 device=auto|cpu|cuda batch_size=16", "run settings"),
    ("results_dir=results force=true", "where records go; rerun an existing record"),
    ("cache_dir=.cache/features", "share backbone features between the runs of a sweep"),
    ("save_model=PATH.safetensors", "also save the fitted model for adbench-predict"),
    ("--multirun method=patchcore,padim seed=0,1,2", "sweeps (Hydra); experiment=NAME presets"),
    ("--cfg job", "print the composed config and exit"),
]


def describe(group: str, name: str, limit: int = 110) -> str:
    """The first comment line of ``conf/<group>/<name>.yaml`` (``# @package`` lines skipped), cut to ``limit``."""
    for line in group_file(group, name).read_text().splitlines():
        line = line.strip()
        if line.startswith("#") and not line.startswith("# @package"):
            text = line.lstrip("# ").rstrip()
            return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"
        if line and not line.startswith("#"):
            break
    return ""


def _dataset_line(name: str) -> str:
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(group_file("dataset", name))
    options = categories(str(cfg.get("name")))
    default = cfg.get("category")
    if options:
        listed = f"categories: {', '.join(options)}"
    else:
        listed = f"category: {default}" if default else "category: dataset.category=NAME, a folder under dataset.root"
    return f"{describe('dataset', name)} [{listed}]"


def command_help(config_name: str, prog: str) -> str:
    """``--help`` of ``adbench-report`` / ``adbench-predict``: the usage line and each key of ``conf/<config_name>.yaml``
    with its comment (the command's own keys only: no method, dataset or backbone groups)."""
    lines = (conf_dir() / f"{config_name}.yaml").read_text().splitlines()
    usage = lines[0].lstrip("# ").strip() if lines and lines[0].startswith("#") else prog
    keys = []
    for line in lines:
        if line.startswith("defaults:") or line.startswith("hydra:"):
            break
        if line and not line[0].isspace() and not line.startswith("#") and ":" in line:
            key, _, rest = line.partition(":")
            value, _, comment = rest.partition("#")
            keys.append(f"  {key.strip() + '=' + value.strip():<24} {comment.strip()}")
        elif line.strip().startswith("#") and keys:  # a comment's continuation line
            keys[-1] += " " + line.strip().lstrip("# ")
    text = [usage, "", "== Keys (key=value; ??? = required) ==", *keys, "", f"A value with spaces or special characters goes in quotes: "
            f"{prog} 'KEY=\"/my data/x\"'. Hydra's own flags: --hydra-help."]
    return "\n".join(text).replace("$", "$$")


def help_text(prog: str) -> str:
    """The whole ``--help`` page of ``adbench``."""
    width = 18
    lines = [f"{prog}: benchmark memory-bank anomaly detectors. Usage: {prog} [key=value ...] [--multirun ...]", ""]
    plugins = {name: f" [plugin: {package_of(entry)}]" for name, entry in declared(METHODS_GROUP).items()
               if not (conf_dir() / "method" / f"{name}.yaml").is_file()}  # a built-in's name stays the built-in
    for group, title in (("method", "Methods"), ("dataset", "Datasets"), ("backbone", "Backbones"),
                         ("experiment", "Experiment presets, run with --multirun"), ("setting", "Settings")):
        names = group_choices(group)
        if not names:
            continue
        lines.append(f"== {title} ({group}=NAME) ==")
        for name in names:
            text = _dataset_line(name) if group == "dataset" else describe(group, name) + (plugins.get(name, "") if group == "method" else "")
            lines.append(f"  {name:<{width}} {text}")
        lines.append("")
    lines.append("== Most used overrides ==")
    lines += [f"  {key:<46} {text}" for key, text in COMMON_OVERRIDES]
    lines += ["", "Results: adbench-report [results_dir=results]. Saved models: adbench-predict model=PATH images=FOLDER.",
              "Hydra's own flags: --hydra-help."]
    return "\n".join(lines).replace("$", "$$")  # Hydra fills the template with string.Template
