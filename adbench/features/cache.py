"""On-disk cache of backbone feature maps, shared by every method and hyper-parameter setting.

A sweep runs many methods and settings on the same images through the same frozen backbone; the
cache makes it pay for feature extraction once. ``CachedBackbone`` wraps a ``Backbone`` and is
called exactly like it, so methods never know whether features come from the network or the disk.

Key of one cached map: (extractor, layer, image)
- extractor: digest of the backbone name, a SHA-256 fingerprint of every weight and buffer, the
  torch and timm versions, the device type and this file's format version;
- image: SHA-256 of the normalised input tensor (shape, dtype and bytes). Resize, crop,
  normalisation, dataset, category and split all shape that tensor, so a change in any of them is
  a different key by construction: nothing can be served stale.

Layout: ``<cache_dir>/<extractor>/<layer>/<ab>/<image>.safetensors`` (one float tensor (C, h, w))
and ``<cache_dir>/<extractor>/meta.json`` naming the key parts. Files are written atomically
(temporary file + ``os.replace``), so concurrent sweep jobs can share one cache directory.

With ``stage_layers`` the runner extracts every stage of stride 4 and more on a miss (not only
the method's layers) so that one extraction serves every later method, whatever layers it uses.

Only images registered through ``track(loader)`` (the runner's train and test data) are written:
methods that run the backbone on augmented or synthetic images (outlier exposure, crops made on the
fly) get those computed as usual without filling the disk. A backbone whose weights a method has
unfrozen is never served from the cache.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import ConfigError
from ..files import atomic_write, atomic_write_text, content_digest
from .backbones import Backbone

FORMAT_VERSION = 2


def image_keys(images: torch.Tensor) -> list[str]:
    """One content key per image of a (B, 3, H, W) batch."""
    return [content_digest({"image": image})[:32] for image in images]


@cache
def _stages(model_name: str) -> tuple[tuple[str, int], ...]:
    try:
        info = timm.create_model(model_name, pretrained=False, features_only=True).feature_info
    except RuntimeError as exc:
        raise ConfigError(f"backbone.name: unknown timm model {model_name!r} ({exc})") from exc
    return tuple(zip(info.module_name(), info.reduction()))


def stage_layers(model_name: str, layers: Sequence[str | int]) -> tuple[list[str], list[str]]:
    """(every stage of stride >= 4 plus ``layers``, in network order; ``layers`` resolved to names)."""
    names = [name for name, _ in _stages(model_name)]
    wanted = [Backbone._resolve(layer, names) for layer in layers]
    return [name for name, stride in _stages(model_name) if stride >= 4 or name in wanted], wanted


def weights_fingerprint(module: nn.Module) -> str:
    """SHA-256 over every parameter and buffer (names, dtypes, shapes, values)."""
    return content_digest(module.state_dict())


class CachedBackbone(nn.Module):
    """A ``Backbone`` whose ``backbone(images)`` reads layer maps from ``cache_dir`` when present.

    ``layers``: the maps served (default: all the wrapped backbone extracts). On a miss the wrapped
    backbone runs and every layer it extracts is stored, so a later run that wants other layers of
    the same network finds them. Every other attribute (``channels``, ``strides``, ``mean``,
    ``model`` ...) is the wrapped backbone's. ``counts`` tallies images served from disk
    (``hits``), images the network computed (``misses``), maps written (``stored``) and images
    computed without the cache because the weights were unfrozen (``bypassed``).
    """

    def __init__(self, backbone: Backbone, cache_dir: str | Path, layers: Sequence[str] | None = None):
        super().__init__()
        self.inner = backbone
        self.layers = list(layers) if layers is not None else list(backbone.layers)
        if not set(self.layers) <= set(backbone.layers):
            raise ValueError(f"layers {sorted(set(self.layers) - set(backbone.layers))} are not extracted by the backbone ({backbone.layers})")
        self.root = Path(cache_dir).expanduser()
        self.fingerprint = weights_fingerprint(backbone)
        self.counts: Counter[str] = Counter()
        self._registered: set[str] = set()
        self._extractor: dict[str, str] = {}  # device type -> extractor directory name

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            inner = self.__dict__.get("_modules", {}).get("inner")
            if inner is None:
                raise
            return getattr(inner, name)

    # --- keys ----------------------------------------------------------------------------------
    def key_parts(self, device_type: str) -> dict[str, Any]:
        """What the cached maps depend on, besides the image and the layer."""
        return {
            "format": FORMAT_VERSION,
            "model": self.inner.name,
            "weights_sha256": self.fingerprint,
            "torch": torch.__version__,
            "timm": timm.__version__,
            "device": device_type,
        }

    def extractor_dir(self, device_type: str) -> Path:
        """``cache_dir/<extractor digest>``, with its ``meta.json`` written on first use."""
        if device_type not in self._extractor:
            parts = self.key_parts(device_type)
            name = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]
            meta = self.root / name / "meta.json"
            if not meta.is_file():
                atomic_write_text(meta, json.dumps({**parts, "weights_source": self.inner.weights_source}, indent=2) + "\n")
            self._extractor[device_type] = name
        return self.root / self._extractor[device_type]

    def entry(self, device_type: str, layer: str, key: str) -> Path:
        return self.extractor_dir(device_type) / layer / key[:2] / f"{key}.safetensors"

    # --- which images may be written -----------------------------------------------------------
    def register(self, images: torch.Tensor) -> None:
        """Mark these images (dataset images, not augmentations) as worth keeping on disk."""
        self._registered.update(image_keys(images))

    def track(self, batches: Iterable[dict]) -> TrackedBatches:
        """Wrap a data loader so that every image it yields is registered."""
        return TrackedBatches(batches, self)

    # --- the forward pass ----------------------------------------------------------------------
    def _frozen(self) -> bool:
        return not any(p.requires_grad for p in self.inner.parameters())

    def _load(self, device_type: str, key: str) -> dict[str, torch.Tensor] | None:
        maps = {}
        for layer in self.layers:
            path = self.entry(device_type, layer, key)
            if not path.is_file():
                return None
            try:
                maps[layer] = load_file(str(path))["map"]
            except Exception:  # noqa: BLE001 - unreadable (truncated, foreign): drop it, recompute and rewrite
                path.unlink(missing_ok=True)
                return None
        return maps

    def _store(self, device_type: str, key: str, maps: dict[str, torch.Tensor]) -> int:
        """Write the maps not yet on disk; returns how many were written."""
        written = 0
        for layer, value in maps.items():
            path = self.entry(device_type, layer, key)
            if path.is_file():
                continue
            atomic_write(path, lambda tmp, value=value: save_file({"map": value.detach().to("cpu").contiguous()}, str(tmp)))
            written += 1
        return written

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        if not self._frozen():
            self.counts["bypassed"] += len(images)
            computed = self.inner(images)
            return {layer: computed[layer] for layer in self.layers}
        device_type = images.device.type
        keys = image_keys(images)
        found = [self._load(device_type, key) for key in keys]
        missing = [i for i, maps in enumerate(found) if maps is None]
        self.counts["hits"] += len(keys) - len(missing)
        self.counts["misses"] += len(missing)
        if missing:
            computed = self.inner(images if len(missing) == len(keys) else images[missing])
            for row, i in enumerate(missing):
                if keys[i] in self._registered:
                    self.counts["stored"] += self._store(device_type, keys[i], {layer: maps[row] for layer, maps in computed.items()})
                found[i] = {layer: computed[layer][row] for layer in self.layers}
            if len(missing) == len(keys):
                return {layer: computed[layer] for layer in self.layers}
        return {layer: torch.stack([maps[layer].to(images.device) for maps in found]) for layer in self.layers}

    def summary(self) -> dict[str, Any]:
        """Where the cache is: its directory and the extractor sub-directory used (for the run record)."""
        return {"dir": str(self.root), "extractor": next(iter(self._extractor.values()), None)}


class TrackedBatches:
    """A re-iterable view of a data loader that registers each batch's images with the cache."""

    def __init__(self, batches: Iterable[dict], cache: CachedBackbone):
        self.batches, self.cache = batches, cache

    def __iter__(self) -> Iterator[dict]:
        for batch in self.batches:
            self.cache.register(batch["image"])
            yield batch

    def __len__(self) -> int:
        return len(self.batches)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> Any:  # dataset, batch_size, ... of the wrapped loader
        if "batches" not in self.__dict__:
            raise AttributeError(name)
        return getattr(self.batches, name)


def cache_size(cache_dir: str | Path) -> dict[str, Any]:
    """Per extractor: its key parts, number of cached maps and bytes on disk."""
    out = {}
    for meta in sorted(Path(cache_dir).expanduser().glob("*/meta.json")):
        files = list(meta.parent.rglob("*.safetensors"))
        out[meta.parent.name] = {**json.loads(meta.read_text()), "maps": len(files), "bytes": sum(f.stat().st_size for f in files)}
    return out


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Show what a feature cache directory holds.")
    parser.add_argument("cache_dir")
    args = parser.parse_args(argv)
    for name, info in cache_size(args.cache_dir).items():
        print(f"{name}: {info['model']} ({info['weights_source']}, weights {info['weights_sha256'][:12]}, {info['device']}, "
              f"torch {info['torch']}, timm {info['timm']}): {info['maps']} maps, {info['bytes'] / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
