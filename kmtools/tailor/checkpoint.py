"""Per-epoch checkpoints of :func:`kmtools.tailor.loop.tailor` (written atomically; a resumed
run gives the same result as an uninterrupted one with the same seed on the same device)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from kmtools.errors import ConfigError
from kmtools.models.core import KmModel
from kmtools.tailor import objective as obj
from kmtools.tailor.config import EpochStats

if TYPE_CHECKING:
    from kmtools.tailor.loop import Log, _Run


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
