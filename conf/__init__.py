"""The YAML config tree, shipped in the wheel as the package ``adbench.conf`` (Hydra: ``pkg://adbench.conf``)."""
