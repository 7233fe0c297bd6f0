"""Plain supervised training of a softmax classifier (the demo, tests and benchmarks use it
to make a checkpoint to work on; kmtools itself works on already-trained models)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from kmtools.device import autocast
from kmtools.features import loader


def train_classifier(
    model: nn.Module,
    data: Dataset[Any],
    *,
    epochs: int = 10,
    lr: float = 3e-3,
    batch_size: int = 64,
    weight_decay: float = 5e-4,
    device: torch.device | None = None,
    seed: int = 0,
    amp: bool = False,
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[dict[str, float]]:
    """AdamW + OneCycle cross-entropy training; returns per-epoch loss and accuracy."""
    device = device or torch.device("cpu")
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model.to(device).train()
    dl = loader(data, batch_size, device, shuffle=True, generator=g)
    steps = len(dl)  # type: ignore[arg-type]
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps)
    history = []
    for ep in range(epochs):
        tot, correct, loss_sum = 0, 0, 0.0
        for x, y in dl:
            x, y = x.to(device, non_blocking=True), torch.as_tensor(y).to(device, non_blocking=True)
            if augment is not None:
                x = augment(x, g)
            with autocast(device, amp):
                out = model(x)
                loss = nn.functional.cross_entropy(out.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            tot += len(y)
            correct += int((out.argmax(1) == y).sum())
            loss_sum += float(loss.detach()) * len(y)
        history.append({"epoch": ep + 1, "loss": loss_sum / tot, "accuracy": correct / tot})
        if progress:
            progress(ep + 1, epochs)
    model.eval()
    return history
