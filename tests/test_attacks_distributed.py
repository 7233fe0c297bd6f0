"""``kmtools attack`` under torchrun: two gloo ranks on the CPU split the inputs, append to
their own record files, and rank 0 writes the same records and summary as one process."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from typer.testing import CliRunner

from kmtools_cli.main import app
from tests.helpers import digits_model


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rank(rank: int, world: int, port: int, argv: list[str]) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    from kmtools_cli.main import app as rank_app

    try:
        rank_app(argv, standalone_mode=False)
    except SystemExit as exc:  # pragma: no cover - reported through the exit code
        if exc.code:
            raise


@pytest.mark.slow  # two spawned processes import torch: ~15 s, more on a busy CPU
def test_two_gloo_ranks_shard_inputs_and_match_one_process(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    digits_model(tmp_path, epochs=4)
    model = tmp_path / "digits.safetensors"
    args = ["attack", "onepixel", str(model), "--popsize", "12", "--steps", "3", "-n", "8", "--data", "digits",
            "--device", "cpu", "-q", "--format", "json"]
    one = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "one")], catch_exceptions=False)
    assert one.exit_code == 0, one.output
    mp.start_processes(_rank, args=(2, _free_port(), [*args, "--out", str(tmp_path / "two")]), nprocs=2,
                       join=True, start_method="spawn")
    two = tmp_path / "two"
    assert (two / "attack-onepixel.jsonl").read_bytes() == (tmp_path / "one" / "attack-onepixel.jsonl").read_bytes()
    assert not list(two.glob("*.rank*.jsonl"))
    doc = json.loads((two / "attack-onepixel.json").read_text())
    assert doc["run"]["world_size"] == 2
    assert doc["results"]["onepixel"] == json.loads(one.stdout)["results"]["onepixel"] | {
        "settings": doc["results"]["onepixel"]["settings"]
    }
