"""The one training loop of the methods that learn something (CFA, ReConPatch, FCDD).

Epochs over seeded random batches of item indices (images, cached feature maps), an optional
validation split held out of the *training* items with early stopping on its loss (the test set is
never seen), and a progress bar per epoch with its ETA. What one step does is the method's.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import ConfigError

# (batch of item indices, the loop's generator) -> logged values of the step; "loss" required
TrainStep = Callable[[torch.Tensor, torch.Generator], dict[str, float]]
ValLoss = Callable[[torch.Tensor], float]  # batch of validation item indices -> mean loss


def holdout(n: int, fraction: float, seed: int, key: str = "method.val_fraction") -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted (training, validation) indices of ``n`` items; ``fraction`` of them, drawn with ``seed``, validate."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = math.floor(n * fraction)
    if fraction and not 0 < n_val < n:
        raise ConfigError(f"{key}={fraction} leaves no validation or no training item of {n}")
    return order[n_val:].sort().values, order[:n_val].sort().values


@dataclass
class TrainingLoop:
    """``epochs`` passes over the training items in batches of ``batch_size`` (reshuffled each epoch).

    With validation items, the model is evaluated after every epoch, the state of ``module`` with the
    lowest validation loss is restored at the end, and training stops after ``patience`` epochs
    without improvement.
    """

    epochs: int
    batch_size: int
    seed: int = 0
    patience: int = 3
    desc: str = "train"
    history: list[dict[str, Any]] = field(default_factory=list)

    def run(
        self,
        module: nn.Module,
        train: torch.Tensor,
        step: TrainStep,
        val: torch.Tensor | None = None,
        val_loss: ValLoss | None = None,
        end_of_epoch: Callable[[int], None] | None = None,
    ) -> dict[str, Any]:
        """Train; returns what the record keeps (epochs run, best epoch, seconds, per-epoch history)."""
        validate = val is not None and len(val) > 0 and val_loss is not None
        generator = torch.Generator().manual_seed(self.seed)
        best_loss, best_epoch, best_state = math.inf, 0, None
        self.history = []
        start = time.perf_counter()
        bar = tqdm(range(1, self.epochs + 1), desc=self.desc, unit="epoch", leave=False)
        for epoch in bar:
            module.train()
            logged: dict[str, list[float]] = {}
            for batch in train[torch.randperm(len(train), generator=generator)].split(self.batch_size):
                for key, value in step(batch, generator).items():
                    logged.setdefault(key, []).append(float(value))
            entry: dict[str, Any] = {"epoch": epoch, **{f"train_{k}": float(np.mean(v)) for k, v in logged.items()}}
            if end_of_epoch is not None:
                end_of_epoch(epoch)
            if validate:
                module.eval()
                with torch.no_grad():
                    parts = [(val_loss(b), len(b)) for b in val.split(self.batch_size)]
                entry["val_loss"] = sum(loss * n for loss, n in parts) / len(val)
                if entry["val_loss"] < best_loss:
                    best_loss, best_epoch = entry["val_loss"], epoch
                    best_state = {k: v.detach().clone() for k, v in module.state_dict().items()}
            self.history.append(entry)
            bar.set_postfix(loss=f"{entry.get('train_loss', math.nan):.4g}", **({"val": f"{entry['val_loss']:.4g}"} if validate else {}))
            if validate and epoch - best_epoch >= self.patience:
                break
        bar.close()
        module.eval()
        if best_state is not None:
            module.load_state_dict(best_state)
        runs = len(self.history)
        return {
            "selection": self.selection(len(val) if validate else 0),
            "epochs_run": runs,
            "best_epoch": best_epoch if validate else runs,
            "train_seconds": round(time.perf_counter() - start, 3),
            "history": [{k: round(v, 6) if isinstance(v, float) else v for k, v in e.items()} for e in self.history],
        }

    def selection(self, n_val: int) -> str:
        """How the trained state was chosen, in words (kept in the record)."""
        if n_val:
            return f"early stopping on the loss of {n_val} validation items held out of the training set (patience {self.patience})"
        return f"fixed {self.epochs} epoch{'s' * (self.epochs != 1)} (no model selection)"
