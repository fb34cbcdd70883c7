"""The shared training loop (CFA, ReConPatch, FCDD): fixed epochs, seeded batches, early stopping on held-out items."""

from __future__ import annotations

import pytest
import torch

from adbench.errors import ConfigError
from adbench.methods.training import TrainingLoop, holdout


def test_holdout_is_seeded_disjoint_and_checked() -> None:
    train, val = holdout(10, 0.3, seed=1)
    assert len(val) == 3 and sorted(train.tolist() + val.tolist()) == list(range(10))
    assert torch.equal(holdout(10, 0.3, seed=1)[1], val) and not torch.equal(holdout(10, 0.3, seed=2)[1], val)
    assert len(holdout(10, 0.0, seed=1)[1]) == 0
    with pytest.raises(ConfigError, match="method.val_fraction=0.05"):
        holdout(10, 0.05, seed=1)


def test_fixed_epochs_visit_every_item_once_per_epoch_in_seeded_order() -> None:
    seen: list[list[int]] = []

    def step(batch: torch.Tensor, _: torch.Generator) -> dict[str, float]:
        seen.append(batch.tolist())
        return {"loss": float(len(seen))}

    module = torch.nn.Linear(1, 1)
    info = TrainingLoop(epochs=3, batch_size=4, seed=5).run(module, torch.arange(10), step)
    assert info["epochs_run"] == 3 and info["best_epoch"] == 3 and info["selection"] == "fixed 3 epochs (no model selection)"
    epochs = [sum(seen[i * 3:(i + 1) * 3], []) for i in range(3)]
    assert all(sorted(e) == list(range(10)) for e in epochs) and epochs[0] != epochs[1]
    assert [e["train_loss"] for e in info["history"]] == [2.0, 5.0, 8.0]  # mean of the logged step values
    again: list[list[int]] = []
    TrainingLoop(epochs=3, batch_size=4, seed=5).run(module, torch.arange(10), lambda b, g: again.append(b.tolist()) or {"loss": 0.0})
    assert again == seen


def test_early_stopping_restores_the_best_validation_state() -> None:
    module = torch.nn.Linear(1, 1, bias=False)
    initial = module.weight.item()
    val_losses = iter([3.0, 1.0, 2.0, 4.0, 5.0, 0.5])  # best after epoch 2, then 2 epochs without improvement

    def step(batch: torch.Tensor, _: torch.Generator) -> dict[str, float]:
        with torch.no_grad():
            module.weight += 1.0  # one batch per epoch: weight = initial + epoch
        return {"loss": 0.0}

    info = TrainingLoop(epochs=6, batch_size=8, patience=2).run(module, torch.arange(4), step, torch.arange(4, 6),
                                                                lambda batch: next(val_losses))
    assert (info["epochs_run"], info["best_epoch"]) == (4, 2)
    assert module.weight.item() == pytest.approx(initial + 2.0)
    assert [e["val_loss"] for e in info["history"]] == [3.0, 1.0, 2.0, 4.0]
    assert info["selection"].startswith("early stopping on the loss of 2 validation items")
