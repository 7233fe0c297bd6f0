"""timm and torchvision models by their usual names; kmtools files of format 1 keep loading;
``import kmtools`` stays light while exposing the entry points."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from kmtools.errors import CheckpointError, ConfigError
from kmtools.models import load_model, save_model
from kmtools.models.checkpoint import norm_source
from kmtools_cli.main import app
from tests.conftest import strict_loads

timm = pytest.importorskip("timm", reason="timm is the optional [timm] extra (pip install 'kmtools[timm]')")
FIXTURES = Path(__file__).parent / "usermodel"


def test_timm_loads_splits_and_tailors_one_step(tmp_path: Path) -> None:
    """A tiny timm model (random weights, pretrained=False: no download) from a local
    state dict: split at its head, timm's own normalisation, one tailor epoch from the CLI."""
    torch.manual_seed(0)
    net = timm.create_model("test_resnet", pretrained=False, num_classes=10, in_chans=1)
    torch.save(net.state_dict(), tmp_path / "tr.pt")
    model = load_model(tmp_path / "tr.pt", arch="timm:test_resnet")
    assert model.num_classes == 10 and model.head_path == "fc" and model.any_size
    x = torch.rand(3, 1, 32, 32)
    with torch.no_grad():
        net.eval()
        want = net((x - 0.5) / 0.5)  # test_resnet's pretrained_cfg: mean = std = 0.5 per channel
        assert torch.allclose(model(x), want, atol=1e-5)
    assert norm_source(model) == "timm pretrained config"
    assert torch.allclose(load_model(tmp_path / "tr.pt", arch="timm:test_resnet", mean="none")(x), net(x), atol=1e-5)
    res = CliRunner().invoke(app, ["tailor", str(tmp_path / "tr.pt"), "--arch", "timm:test_resnet", "--data", "digits",
                                   "-n", "120", "--epochs", "1", "--export", "", "--out", str(tmp_path / "run"), "-q"])
    gauss = tmp_path / "run" / "gauss.safetensors"
    assert gauss.is_file(), res.output
    back = load_model(gauss)
    assert back.arch == "timm:test_resnet" and back.head_kind == "gauss" and back.input_shape == (1, 8, 8)


def test_timm_missing_gives_the_install_hint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "x.pt")
    monkeypatch.setitem(sys.modules, "timm", None)  # `import timm` raises ImportError
    with pytest.raises(ConfigError, match=r"needs the timm package: pip install 'kmtools\[timm\]'"):
        load_model(tmp_path / "x.pt", arch="timm:resnet18")


def test_torchvision_state_dict_under_the_cifar_name_gets_the_hint(tmp_path: Path) -> None:
    import torchvision

    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), tmp_path / "r18.pt")
    with pytest.raises(CheckpointError, match="the keys fit --arch torchvision:resnet18"):
        load_model(tmp_path / "r18.pt", arch="resnet18")
    tv = load_model(tmp_path / "r18.pt", arch="torchvision:resnet18")
    assert tv.any_size and not tv.normalize.active  # 10 classes: no ImageNet default
    imagenet = torchvision.models.resnet18(num_classes=1000)
    torch.save(imagenet.state_dict(), tmp_path / "r18_1k.pt")
    assert norm_source(load_model(tmp_path / "r18_1k.pt", arch="torchvision:resnet18")).startswith("ImageNet")


def test_format_1_files_from_before_the_split_still_load() -> None:
    """v0_gauss.safetensors was written by the kmtools of commit af4e639 (before this split);
    its outputs on a fixed input were recorded then."""
    model = load_model(FIXTURES / "v0_gauss.safetensors")
    expected = json.loads((FIXTURES / "v0_gauss.json").read_text())
    x = torch.rand(4, *model.input_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = model(x)
    assert model.head_kind == "gauss"
    assert torch.allclose(got, torch.tensor(expected["scores"]), rtol=1e-5, atol=1e-9)


def test_save_records_format_and_refuses_newer(tmp_path: Path) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    model = load_model(FIXTURES / "v0_gauss.safetensors")
    save_model(model, tmp_path / "m.safetensors")
    with safe_open(str(tmp_path / "m.safetensors"), "pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    assert meta["format"] == "kmtools/1"
    meta["format"] = "kmtools/99"
    meta.pop("sha256")
    save_file(tensors, str(tmp_path / "new.safetensors"), metadata=meta)
    with pytest.raises(CheckpointError, match="newer than this kmtools reads"):
        load_model(tmp_path / "new.safetensors")


def test_import_kmtools_is_light_and_exposes_entry_points() -> None:
    code = ("import sys, kmtools; light = 'torch' not in sys.modules; f = kmtools.run_tailor; "
            "import kmtools.tailor, kmtools.evaluate; "
            "print(light, f.__module__, type(kmtools.tailor).__name__, type(kmtools.evaluate).__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", "kmtools.tailor.run", "module", "module"]
    import kmtools

    assert set(kmtools.__all__) == {"KmtoolsError", "__version__", *kmtools._LAZY}
    for name in kmtools.__all__:
        assert getattr(kmtools, name) is not None
    with pytest.raises(AttributeError):
        kmtools.no_such_thing  # noqa: B018


def test_inspect_json_is_strict(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["inspect", str(FIXTURES / "v0_gauss.safetensors"), "--format", "json", "-q"])
    assert strict_loads(res.stdout)["model"]["head_kind"] == "gauss"
