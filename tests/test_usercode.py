"""Bring your own model: a user's class file (tests/usermodel/netdef.py), TorchScript without
--arch, the refusal of metadata-named code, pickles from ``__main__``, strict JSON."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import typer
from typer.testing import CliRunner

from kmtools.errors import CheckpointError, ConfigError, UntrustedCheckpointError
from kmtools.models import load_model, save_model
from kmtools.models.usercode import UntrustedCodeError, is_user_ref, parse
from kmtools_cli.main import app
from tests.conftest import strict_loads

NETDEF = Path(__file__).parent / "usermodel" / "netdef.py"
#: The importing of a user file is observable: this one writes a marker when imported.
SPY = '''
from pathlib import Path
Path(__file__).with_name("imported.flag").write_text("yes")
from torch import nn
class Net(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.ReLU())
        self.fc = nn.Linear(8, num_classes)
    def forward(self, x):
        return self.fc(self.body(x))
'''


def cli(*args: object) -> object:
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


def _user_checkpoint(folder: Path) -> Path:
    """model.py (the test's user class) and a plain state dict of it, as a user has them."""
    shutil.copy(NETDEF, folder / "model.py")
    sys.path.insert(0, str(NETDEF.parent))
    try:
        from netdef import Net  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(NETDEF.parent))
    torch.manual_seed(0)
    torch.save({"state_dict": {f"module.{k}": v for k, v in Net().state_dict().items()}}, folder / "model.pt")
    return folder / "model.pt"


def test_arch_references_parse() -> None:
    assert is_user_ref("model.py:Net") and is_user_ref("pkg.sub.mod:Net")
    assert not is_user_ref("torchvision:resnet18") and not is_user_ref("timm:resnet18") and not is_user_ref("smallcnn")
    assert parse("a/b.py:Net", base=Path("/x")).file == Path("/x/a/b.py")
    with pytest.raises(ConfigError, match=r"FILE\.py:ClassName"):
        load_model(NETDEF, arch="model.py:")


def test_user_class_chain_from_the_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """state dict ({"state_dict"} wrapper, module. prefix) -> tailor -> reload -> evaluate ->
    attack -> export, all with --arch model.py:Net, run from the user's folder."""
    ckpt = _user_checkpoint(tmp_path)
    monkeypatch.chdir(tmp_path)
    res = cli("tailor", ckpt.name, "--arch", "model.py:Net", "--arch-kwargs", '{"width": 4}', "--data", "digits",
              "-n", "150", "--epochs", "1", "--export", "", "--out", "run", "-q")
    gauss = tmp_path / "run" / "gauss.safetensors"
    assert gauss.is_file(), res.output  # type: ignore[attr-defined]
    from safetensors import safe_open

    with safe_open(str(gauss), "pt") as f:
        meta = json.loads(f.metadata()["kmtools"])
    assert meta["arch"] == "../model.py:Net"  # relative to the checkpoint's folder
    assert meta["code"]["sha256"] == __import__("hashlib").sha256(NETDEF.read_bytes()).hexdigest()
    assert meta["arch_kwargs"] == {"width": 4, "num_classes": 10}

    refused = cli("evaluate", gauss, "--data", "digits", "-n", "20", "-q")
    assert refused.exit_code == 1  # type: ignore[attr-defined]
    assert "--trust-code" in refused.output and "--arch FILE.py:Net" in refused.output  # type: ignore[attr-defined]

    ok = cli("evaluate", gauss, "--trust-code", "--data", "digits", "-n", "20", "-q", "--format", "json")
    doc = strict_loads(ok.stdout)  # type: ignore[attr-defined]
    assert doc["results"]["n"] == 20 if "n" in doc.get("results", {}) else ok.exit_code == 0  # type: ignore[attr-defined]
    att = cli("attack", "fgsm", gauss, "--arch", "model.py:Net", "--data", "digits", "-n", "10", "--eps", "0.1",
              "-q", "--format", "json")
    assert att.exit_code == 0, att.output  # type: ignore[attr-defined]
    exp = cli("export", gauss, "--arch", "model.py:Net", "--formats", "kmtools,pt2", "--out", "exp", "-q")
    assert exp.exit_code == 0, exp.output  # type: ignore[attr-defined]
    back = load_model(tmp_path / "exp" / "model.safetensors", trust_code=True)
    x = torch.rand(4, 1, 8, 8)
    ref = load_model(gauss, arch="model.py:Net")
    assert torch.allclose(back(x), ref(x), atol=1e-6)
    program = torch.export.load(str(tmp_path / "exp" / "model.pt2")).module()  # self-contained: no model.py
    assert torch.allclose(program(x)[0], ref(x), atol=1e-5)


def test_metadata_code_is_not_imported_without_consent(tmp_path: Path) -> None:
    (tmp_path / "spy.py").write_text(SPY)
    flag = tmp_path / "imported.flag"
    sd_model = load_model_from_spy(tmp_path)
    save_model(sd_model, tmp_path / "m.safetensors")
    flag.unlink()
    with pytest.raises(UntrustedCodeError, match="--trust-code"):
        load_model(tmp_path / "m.safetensors")
    assert not flag.exists(), "the refused file's code was imported"
    for mod in [m for m in sys.modules if m.startswith("kmtools_user_") and m.endswith("_spy")]:
        del sys.modules[mod]  # a fresh import, so the marker tells
    assert load_model(tmp_path / "m.safetensors", trust_code=True).num_classes == 3
    assert flag.exists()
    (tmp_path / "spy.py").write_text(SPY + "\n# edited\n")
    with pytest.raises(UntrustedCodeError, match="changed since"):
        load_model(tmp_path / "m.safetensors", trust_code=True)
    with pytest.raises(ConfigError, match="saved from class Net, not Other"):
        load_model(tmp_path / "m.safetensors", arch=f"{tmp_path / 'spy.py'}:Other")
    assert load_model(tmp_path / "m.safetensors", arch=f"{tmp_path / 'spy.py'}:Net").num_classes == 3


def load_model_from_spy(folder: Path) -> object:
    torch.manual_seed(0)
    sd = {"body.1.weight": torch.randn(8, 64), "body.1.bias": torch.zeros(8),
          "fc.weight": torch.randn(3, 8), "fc.bias": torch.zeros(3)}
    torch.save(sd, folder / "spy.pt")
    model = load_model(folder / "spy.pt", arch=f"{folder / 'spy.py'}:Net")
    assert model.input_shape == (64,) and model.num_classes == 3
    return model


def test_torchscript_without_arch_counts_classes_and_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _user_checkpoint(tmp_path)
    monkeypatch.chdir(tmp_path)
    sys.path.insert(0, str(tmp_path))
    try:
        from model import Net  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(tmp_path))
    torch.manual_seed(1)
    torch.jit.save(torch.jit.script(Net(num_classes=10)), str(tmp_path / "scripted.pt"))
    ins = cli("inspect", "scripted.pt", "--format", "json", "-q")
    assert strict_loads(ins.stdout)["model"]["num_classes"] == 10  # type: ignore[attr-defined]
    forced = load_model(tmp_path / "scripted.pt", num_classes=12)  # --num-classes overrides the probe
    assert forced.num_classes == 12
    ev = cli("evaluate", "scripted.pt", "--data", "digits", "-n", "30", "-q", "--format", "json")
    assert ev.exit_code == 0, ev.output  # type: ignore[attr-defined]
    att = cli("attack", "fgsm", "scripted.pt", "--data", "digits", "-n", "10", "--eps", "0.1",
              "-q")
    assert att.exit_code == 0, att.output  # type: ignore[attr-defined]
    cen = cli("centroids", "scripted.pt", "--data", "digits", "-n", "30", "-q")
    assert cen.exit_code == 1 and "--arch FILE.py:Class" in cen.output  # type: ignore[attr-defined]
    cen = cli("centroids", "scripted.pt", "--arch", "model.py:Net", "--data", "digits", "-n", "30", "-q",
              "--out", "c.safetensors")
    assert cen.exit_code == 0, cen.output  # type: ignore[attr-defined]


def test_untrusted_and_main_pickles_get_one_line_fixes(tmp_path: Path) -> None:
    script = f"""
import sys, torch
sys.path.insert(0, {str(NETDEF.parent)!r})
from netdef import Net as Base
class Net(Base):
    pass
torch.save(Net(), {str(tmp_path / 'whole.pt')!r})
"""
    subprocess.run([sys.executable, "-c", script], check=True)
    with pytest.raises(UntrustedCheckpointError, match="--trust-checkpoint"):
        load_model(tmp_path / "whole.pt")
    with pytest.raises(CheckpointError, match=r"from the script that saved it \(__main__\).*--arch FILE.py:Net"):
        load_model(tmp_path / "whole.pt", trust=True)


def test_strict_json_fixture_catches_nan() -> None:
    """The autouse fixture (tests/conftest.py) fails a CLI test whose JSON holds NaN."""
    tiny = typer.Typer()

    @tiny.command()
    def show(format: str = "human") -> None:
        typer.echo(json.dumps({"auroc": float("nan")}))

    with pytest.raises(AssertionError, match="non-strict JSON"):
        CliRunner().invoke(tiny, ["--format", "json"])
    from kmtools.io import dumps

    assert strict_loads(dumps({"a": float("nan"), "b": [float("-inf"), 1.0]})) == {"a": None, "b": [None, 1.0]}


def _pickle_whole(folder: Path, from_main: bool) -> Path:
    """A whole pickled Net: from an importable package ``userpkg.netmod`` or from ``__main__``."""
    pkg = folder / "userpkg"
    pkg.mkdir(exist_ok=True)
    (pkg / "__init__.py").write_text("")
    shutil.copy(NETDEF, pkg / "netmod.py")
    if from_main:
        body = "from userpkg.netmod import Net as Base\nclass Net(Base):\n    pass\n"
    else:
        body = "from userpkg.netmod import Net\n"
    out = folder / ("main.pt" if from_main else "whole.pt")
    script = (f"import sys, torch\nsys.path.insert(0, {str(folder)!r})\n{body}"
              f"torch.manual_seed(0)\ntorch.save(Net(), {str(out)!r})\n")
    subprocess.run([sys.executable, "-c", script], check=True)
    return out


def test_cli_tailors_and_saves_a_pickled_importable_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--trust-checkpoint with a whole module whose class is importable: tailor trains it and saves
    a kmtools file naming userpkg.netmod:Net, which evaluate then loads only with --trust-code (or
    --arch again); the any-size class adopts the data's 8×8 digits."""
    whole = _pickle_whole(tmp_path, from_main=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "t"
    res = cli("tailor", whole, "--data", "digits", "-n", "300", "--epochs", "1", "--export", "", "--max-drop", "100",
              "--out", out, "-q")
    assert res.exit_code == 1 and "--trust-checkpoint" in res.output  # type: ignore[attr-defined]
    res = cli("tailor", whole, "--trust-checkpoint", "--data", "digits", "-n", "300", "--epochs", "1", "--export", "",
              "--max-drop", "100", "--out", out, "-q", "-f", "json")
    assert res.exit_code == 0, res.output  # type: ignore[attr-defined]
    doc = json.loads(res.stdout)  # type: ignore[attr-defined]
    assert doc["model"]["arch"] == "userpkg.netmod:Net" and doc["data"]["input_shape"] == [1, 8, 8]
    saved = out / "gauss.safetensors"
    ev = cli("evaluate", saved, "--data", "digits", "-n", "60", "--ood", "none", "-q")
    assert ev.exit_code == 1 and "--trust-code" in ev.output  # type: ignore[attr-defined]
    ev = cli("evaluate", saved, "--trust-code", "--data", "digits", "-n", "60", "--ood", "none", "-q", "-f", "json")
    assert ev.exit_code == 0, ev.output  # type: ignore[attr-defined]
    assert json.loads(ev.stdout)["model"]["head_kind"] == "gauss"  # type: ignore[attr-defined]


def test_cli_refuses_a_module_pickled_from_main_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pickled = _pickle_whole(tmp_path, from_main=True)
    monkeypatch.syspath_prepend(str(tmp_path))
    res = cli("tailor", pickled, "--trust-checkpoint", "--data", "digits", "--epochs", "1", "--out", tmp_path / "t")
    assert res.exit_code == 1
    lines = res.stderr.strip().splitlines()  # type: ignore[attr-defined]
    assert len(lines) == 1, lines
    assert "from the script that saved it (__main__)" in lines[0]
    assert "save its state_dict() instead and pass --arch FILE.py:Net" in lines[0]
    assert not (tmp_path / "t").exists()
