"""What :func:`kmtools.tailor.loop.tailor` carries between epochs (``_Run``) and its per-epoch
checkpoints (written atomically; a resumed run gives the same result as an uninterrupted one
with the same seed on the same device)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, Subset

from kmtools.errors import ConfigError
from kmtools.features import extract
from kmtools.models.core import KmModel
from kmtools.tailor import objective as obj
from kmtools.tailor.config import EpochStats, Log, TailorConfig
from kmtools.tailor.training import world as _world


class _Run:
    """What the loop carries between epochs (also what a checkpoint restores)."""

    def __init__(self, cfg: TailorConfig, device: torch.device, amp: bool, cl: bool) -> None:
        self.cfg, self.device, self.amp, self.cl = cfg, device, amp, cl
        self.warm: obj.HeadState | None = None
        self.state: obj.HeadState | None = None  # the head the next epoch trains with
        self.scale = 1.0
        self.history: list[EpochStats] = []
        self.best: dict[str, Any] | None = None
        self.stopped = False
        self.below = 0  # epochs in a row below the accuracy floor
        self.base_val: float | None = None  # the softmax network's validation accuracy

    def feats(self, model: KmModel, data: Dataset[Any], shard: bool) -> tuple[torch.Tensor, torch.Tensor]:
        rank, world = _world()
        if shard and world > 1:
            data = Subset(data, list(range(rank, len(data), world)))  # type: ignore[arg-type]
        fe = extract(model, data, batch_size=max(self.cfg.batch_size, 256), device=self.device,
                     workers=self.cfg.workers,
                     amp=self.amp, channels_last=self.cl)
        return fe.features, fe.labels



def save_checkpoint(path: Path, gm: KmModel, opt: torch.optim.Optimizer, sched: Any, gen: torch.Generator,
                     run: _Run, epoch: int) -> None:
    from kmtools.io import write_with

    def hs(s: obj.HeadState | None) -> dict[str, Any] | None:
        return None if s is None else {"centroids": s.centroids, "offsets": s.offsets, "gamma": s.gamma}

    best = None
    if run.best is not None:
        best = {"key": run.best["key"], "epoch": run.best["epoch"], "backbone": run.best["backbone"],
                "head": run.best["head"].state_dict()}
    state = {
        "backbone": gm.backbone.state_dict(), "head": gm.head.state_dict(),
        "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
        "generator": gen.get_state(), "torch_rng": torch.get_rng_state(),
        "history": [h.to_dict() for h in run.history], "epoch": epoch, "config": run.cfg.to_dict(),
        "warm": hs(run.warm), "state": hs(run.state), "scale": run.scale, "best": best,
        "stopped": run.stopped, "below": run.below, "base_val": run.base_val,
    }
    write_with(path, lambda tmp: torch.save(state, tmp), force=True)



def restore(ckpt: Path | None, gm: KmModel, opt: torch.optim.Optimizer, sched: Any, gen: torch.Generator,
             run: _Run, say: Log) -> int:
    if ckpt is None or not ckpt.is_file():
        raise ConfigError(f"--resume: no checkpoint at {ckpt}: run without --resume first")
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    same = {k: v for k, v in (state.get("config") or {}).items() if k != "workers"}
    if same != {k: v for k, v in run.cfg.to_dict().items() if k != "workers"}:
        raise ConfigError(f"--resume: {ckpt} was written with other options; use the same options or --force")

    def hs(d: dict[str, Any] | None) -> obj.HeadState | None:
        return None if d is None else obj.HeadState(d["centroids"], d["offsets"], float(d["gamma"]))

    run.warm, run.state, run.scale = hs(state["warm"]), hs(state["state"]), float(state["scale"])
    if run.state is not None:
        gm.head = run.state.raw_head(run.scale).to(run.device)
    gm.head.load_state_dict(state["head"])
    gm.backbone.load_state_dict(state["backbone"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    gen.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    run.history = [EpochStats(**h) for h in state["history"]]
    run.stopped, run.base_val = bool(state["stopped"]), state["base_val"]
    run.below = int(state.get("below", 0))
    if state["best"] is not None:
        b = state["best"]
        head = copy.deepcopy(gm.head).cpu()
        head.load_state_dict(b["head"])
        run.best = {"key": b["key"], "epoch": b["epoch"], "backbone": b["backbone"], "head": head}
    say(f"resumed from {ckpt} after epoch {state['epoch']}")
    return int(state["epoch"])
