"""``kmtools export``: .pt2 (torch.export) and ONNX parity with the eager model, dynamic
batch, files that run without kmtools, no clobbering, kmtools round trip, the CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from kmtools.errors import ConfigError, OutputExistsError
from kmtools.export import ExportError, ExportResult, export, output_paths, parse_formats
from kmtools.models import GaussHead, KmModel, load_model, save_model, wrap, zoo
from kmtools.report.schema import validate
from tests.helpers import tiny_mlp_model

ort = pytest.importorskip("onnxruntime")

BATCHES = (1, 7, 33)


def _smallcnn() -> KmModel:
    """Untrained SmallCNN with non-trivial BatchNorm statistics and input normalisation."""
    torch.manual_seed(0)
    net = zoo.create("smallcnn", width=8, num_classes=10).eval()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return wrap(net, arch="smallcnn", arch_kwargs={"num_classes": 10, "in_channels": 1, "width": 8},
                input_shape=(1, 8, 8), mean=[0.5], std=[0.25], classes=[f"c{i}" for i in range(10)])


def _gauss_mlp() -> KmModel:
    """MLP with a Gauss head whose centroids sit among real features, so κ spans (0, 1)."""
    torch.manual_seed(1)
    net = zoo.create("mlp", num_classes=4, in_features=6, hidden=16, feature_dim=8).eval()
    base = wrap(net, arch="mlp", arch_kwargs={"num_classes": 4, "in_features": 6, "hidden": 16, "feature_dim": 8},
                input_shape=(6,))
    with torch.no_grad():
        f = base.features(torch.randn(64, 6))
    c = f[:4].clone()
    gamma = 1.0 / float((f.unsqueeze(1) - c).pow(2).sum(-1).mean())
    return base.with_head(GaussHead(c, gamma=gamma)).eval()


def _inputs(model: KmModel, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = (n, *model.input_shape)  # type: ignore[misc]
    return torch.rand(shape, generator=g) if len(shape) > 2 else torch.randn(shape, generator=g)


@pytest.fixture(scope="module")
def soft(tmp_path_factory: pytest.TempPathFactory) -> tuple[KmModel, ExportResult]:
    model = _smallcnn()
    return model, export(model, tmp_path_factory.mktemp("soft") / "out")


@pytest.fixture(scope="module")
def gauss(tmp_path_factory: pytest.TempPathFactory) -> tuple[KmModel, ExportResult]:
    model = _gauss_mlp()
    return model, export(model, tmp_path_factory.mktemp("gauss") / "gauss.onnx")


def _check_programs(model: KmModel, res: ExportResult) -> tuple[float, float]:
    """Run the written .pt2 and .onnx on fresh batches of 1, 7, 33 (not the check's inputs):
    both outputs must match the eager scores and confidences."""
    program = torch.export.load(str(res.paths["pt2"])).module()
    session = ort.InferenceSession(str(res.paths["onnx"]), providers=["CPUExecutionProvider"])
    worst_pt2 = worst_onnx = 0.0
    for i, n in enumerate(BATCHES):
        x = _inputs(model, n, seed=100 + i)
        with torch.no_grad():
            scores, conf = model(x), model.confidences(x)
            p_scores, p_conf = program(x)
        o_scores, o_conf = session.run(["scores", "confidences"], {"input": x.numpy()})
        assert p_scores.shape == o_scores.shape == (n, model.num_classes)
        worst_pt2 = max(worst_pt2, float((p_scores - scores).abs().max()), float((p_conf - conf).abs().max()))
        worst_onnx = max(worst_onnx, float(np.abs(o_scores - scores.numpy()).max()),
                         float(np.abs(o_conf - conf.numpy()).max()))
    return worst_pt2, worst_onnx


def test_softmax_parity_pt2_and_onnx(soft: tuple[KmModel, ExportResult]) -> None:
    model, res = soft
    assert set(res.files) == {"kmtools", "pt2", "onnx"} and res.checked
    for f in res.files.values():
        assert Path(f.path).is_file() and Path(f.path).stat().st_size == f.bytes > 0
        assert f.max_abs_diff is not None and f.max_abs_diff < 1e-4
    assert res.files["kmtools"].max_abs_diff == 0.0
    pt2, onx = _check_programs(model, res)
    assert pt2 < 1e-4 and onx < 1e-4
    # softmax model: confidences are the softmax of the logits, and they are not trivial
    x = _inputs(model, 5, seed=7)
    conf = torch.from_numpy(ort.InferenceSession(str(res.paths["onnx"])).run(["confidences"], {"input": x.numpy()})[0])
    torch.testing.assert_close(conf, torch.softmax(model(x), -1).detach(), atol=1e-5, rtol=1e-4)
    assert float(model(x).detach().std()) > 0.01
    # nothing left behind: exactly the three files
    assert sorted(p.name for p in Path(res.out_dir).iterdir()) == ["model.onnx", "model.pt2", "model.safetensors"]


def test_gauss_parity_and_kappa(gauss: tuple[KmModel, ExportResult]) -> None:
    model, res = gauss
    assert res.head_kind == "gauss"
    assert sorted(p.name for p in Path(res.out_dir).iterdir()) == ["gauss.onnx", "gauss.pt2", "gauss.safetensors"]
    pt2, onx = _check_programs(model, res)
    assert pt2 < 1e-4 and onx < 1e-4
    # the ONNX scores are κ = exp(-γ‖f - C‖²) computed independently, and confidences equal them
    x = _inputs(model, 50, seed=3)
    scores, conf = ort.InferenceSession(str(res.paths["onnx"])).run(None, {"input": x.numpy()})
    with torch.no_grad():
        f = model.features(x)
    head = model.head
    assert isinstance(head, GaussHead)
    kappa = torch.exp(-float(head.gamma) * torch.cdist(f, head.centroids).pow(2))
    np.testing.assert_allclose(scores, kappa.numpy(), atol=1e-5)
    np.testing.assert_array_equal(scores, conf)
    assert float(kappa.max(1).values.min()) > 0.05 and float(kappa.max()) < 1.0  # κ is spread, not ~0


def test_onnx_graph_contract(soft: tuple[KmModel, ExportResult]) -> None:
    _, res = soft
    proto = onnx.load(str(res.paths["onnx"]))
    onnx.checker.check_model(proto)
    assert res.opset == 18 and any(o.domain in ("", "ai.onnx") and o.version == 18 for o in proto.opset_import)
    assert [i.name for i in proto.graph.input] == ["input"]
    assert [o.name for o in proto.graph.output] == ["scores", "confidences"]
    in_dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert in_dims[0].dim_param == "batch" and [d.dim_value for d in in_dims[1:]] == [1, 8, 8]
    for out in proto.graph.output:
        dims = out.type.tensor_type.shape.dim
        assert dims[0].dim_param == "batch" and dims[1].dim_value == 10
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["kmtools.classes"])[:2] == ["c0", "c1"]
    assert meta["kmtools.head_kind"] == "softmax" and json.loads(meta["kmtools.mean"]) == [0.5]


def test_onnx_registry_reused_and_torch_left_unpatched(soft: tuple[KmModel, ExportResult]) -> None:
    """export() builds torch's ONNX operator registry once per opset and puts torch's own
    ``from_torchlib`` back afterwards (also when the export fails)."""
    import kmtools.export as ex

    reg = pytest.importorskip("torch.onnx._internal.exporter._registration")
    original = reg.ONNXRegistry.__dict__["from_torchlib"]
    assert 18 in ex._TORCHLIB_REGISTRIES  # filled by the fixture's export
    with ex._reuse_torchlib_registry():
        a = reg.ONNXRegistry.from_torchlib(opset_version=18)
        assert a is reg.ONNXRegistry().from_torchlib(opset_version=18) is ex._TORCHLIB_REGISTRIES[18]
    assert reg.ONNXRegistry.__dict__["from_torchlib"] is original
    with pytest.raises(RuntimeError), ex._reuse_torchlib_registry():
        raise RuntimeError("boom")
    assert reg.ONNXRegistry.__dict__["from_torchlib"] is original


def test_dynamic_batch_in_onnxruntime(soft: tuple[KmModel, ExportResult]) -> None:
    """One session, batch sizes 1 and 7 (and 33): the batch dimension is really dynamic."""
    _, res = soft
    session = ort.InferenceSession(str(res.paths["onnx"]), providers=["CPUExecutionProvider"])
    assert isinstance(session.get_inputs()[0].shape[0], str)
    for n in BATCHES:
        scores, conf = session.run(None, {"input": np.random.default_rng(n).random((n, 1, 8, 8), dtype=np.float32)})
        assert scores.shape == conf.shape == (n, 10)
    assert res.check_batches[:2] == [1, 7]


def _site_packages() -> str:
    """The folder holding onnxruntime, numpy and torch (the venv's site-packages)."""
    sp = Path(ort.__file__).resolve().parent.parent
    assert (sp / "torch").is_dir() and (sp / "numpy").is_dir()
    return str(sp)


def _run_isolated(code: str, cwd: Path, *args: str) -> str:
    """Run ``code`` with ``python -S`` (no site processing, so the editable-install finder of
    kmtools is never installed) and only the site-packages folder added by hand. The script
    first proves kmtools is not importable."""
    prelude = (
        "import sys, importlib.util\n"
        "sys.path.append(sys.argv[1])\n"
        "assert importlib.util.find_spec('kmtools') is None, 'kmtools importable'\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    proc = subprocess.run(
        [sys.executable, "-S", "-c", prelude + code, _site_packages(), *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_onnx_runs_without_kmtools(gauss: tuple[KmModel, ExportResult], tmp_path: Path) -> None:
    model, res = gauss
    x = _inputs(model, 7, seed=11)
    np.save(tmp_path / "x.npy", x.numpy())
    code = (
        "import json, numpy as np, onnxruntime as ort\n"
        "s = ort.InferenceSession(sys.argv[2], providers=['CPUExecutionProvider'])\n"
        "scores, conf = s.run(None, {'input': np.load('x.npy')})\n"
        "assert not [m for m in sys.modules if m.startswith('kmtools') or m == 'torch']\n"
        "print(json.dumps(scores.tolist()))\n"
    )
    out = np.array(json.loads(_run_isolated(code, tmp_path, res.files["onnx"].path)))
    np.testing.assert_allclose(out, model(x).detach().numpy(), atol=1e-4)


def test_refuses_to_overwrite_without_force(soft: tuple[KmModel, ExportResult], tmp_path: Path) -> None:
    model, first = soft
    for p in first.paths.values():
        shutil.copy2(p, tmp_path / p.name)
    paths = {k: tmp_path / p.name for k, p in first.paths.items()}
    before = {k: (p.read_bytes(), p.stat().st_mtime_ns) for k, p in paths.items()}
    with pytest.raises(OutputExistsError, match="--force"):
        export(model, tmp_path)
    with pytest.raises(OutputExistsError):
        export(model, tmp_path, formats=("kmtools",))
    assert {k: (p.read_bytes(), p.stat().st_mtime_ns) for k, p in paths.items()} == before
    # with force the file is replaced (a different model: its weights change)
    other = _smallcnn()
    with torch.no_grad():
        other.head.weight.mul_(2.0)  # type: ignore[operator]
    r2 = export(other, tmp_path, formats="kmtools", force=True)
    assert r2.paths["kmtools"].read_bytes() != before["kmtools"][0]
    back = load_model(r2.paths["kmtools"])
    x = _inputs(other, 4, seed=5)
    torch.testing.assert_close(back(x), other(x), atol=0, rtol=0)
    assert paths["onnx"].read_bytes() == before["onnx"][0]  # formats not asked for are untouched
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_kmtools_round_trip_gauss(gauss: tuple[KmModel, ExportResult]) -> None:
    model, res = gauss
    back = load_model(res.paths["kmtools"])
    assert back.head_kind == "gauss" and back.classes == model.classes and back.threshold == model.threshold
    assert isinstance(back.head, GaussHead) and isinstance(model.head, GaussHead)
    torch.testing.assert_close(back.head.centroids, model.head.centroids, atol=0, rtol=0)
    assert float(back.head.gamma) == pytest.approx(float(model.head.gamma))
    x = _inputs(model, 9, seed=4)
    torch.testing.assert_close(back(x), model(x), atol=0, rtol=0)


def test_parity_failure_writes_nothing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A program that disagrees with the eager model fails the export and leaves no file."""
    import kmtools.export as ex

    real = ex._runner

    def off_by_a_bit(fmt: str, path: Path):  # type: ignore[no-untyped-def]
        run = real(fmt, path)
        return lambda x: [t + 1e-3 for t in run(x)]

    monkeypatch.setattr(ex, "_runner", off_by_a_bit)
    out = tmp_path / "new" / "deeper"
    with pytest.raises(ExportError, match=r"pt2 export differs .* by 0\.001"):
        export(tiny_mlp_model(), out, formats="pt2")
    assert not out.exists() and not (tmp_path / "new").exists()
    out.mkdir(parents=True)
    with pytest.raises(ExportError):
        export(tiny_mlp_model(), out, formats="pt2")
    assert list(out.iterdir()) == []  # the staging folder is gone too


def test_no_arch_model_pt2_onnx_external_data(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A model without a zoo architecture cannot be written in kmtools format (clear error,
    nothing written) but exports to .pt2/ONNX; ONNX weights can go to an external-data file."""
    import kmtools.export as ex

    model = tiny_mlp_model()
    with pytest.raises(ConfigError, match="--formats pt2,onnx"):
        export(model, tmp_path / "a")
    assert not (tmp_path / "a").exists()
    monkeypatch.setattr(ex, "_ONNX_EXTERNAL_BYTES", 0)
    monkeypatch.setattr(ex, "_ONNX_EXTERNAL_MIN_TENSOR", 0)  # the tiny MLP's tensors are < 1 KiB
    res = export(model, tmp_path / "a", formats="pt2,onnx", example=torch.randn(1, 6))
    onnx_file = res.files["onnx"]
    assert onnx_file.extra_paths == [str(tmp_path / "a" / "model.onnx.data")]
    assert Path(onnx_file.extra_paths[0]).stat().st_size > 0
    assert onnx_file.max_abs_diff is not None and onnx_file.max_abs_diff < 1e-4
    x = torch.randn(5, 6)
    got = ort.InferenceSession(onnx_file.path).run(["scores"], {"input": x.numpy()})[0]
    np.testing.assert_allclose(got, model(x).detach().numpy(), atol=1e-5)


def test_options_validated_before_any_work(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    model = tiny_mlp_model()
    with pytest.raises(ConfigError, match="opset"):
        export(model, tmp_path / "o", formats="onnx", opset=16)
    with pytest.raises(ConfigError, match="unknown export format"):
        export(model, tmp_path / "o", formats="onnx,tflite")
    with pytest.raises(ConfigError, match="expects"):
        export(model, tmp_path / "o", formats="pt2", example=torch.rand(2, 5))
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ExportError, match=r"onnxruntime.*kmtools\[onnx\]"):
        export(model, tmp_path / "o", formats="onnx")
    assert not (tmp_path / "o").exists()
    assert parse_formats("TorchScript, onnx,onnx") == ("pt2", "onnx")
    paths = output_paths(tmp_path / "x" / "net.pt2", ["onnx", "kmtools"])
    assert paths == {"onnx": tmp_path / "x" / "net.onnx", "kmtools": tmp_path / "x" / "net.safetensors"}


def _head_cases() -> list[tuple[str, dict[str, object], int]]:
    """Every prototype head of kmtools.heads with two prototypes per class at opset 17 (the
    Gauss head is covered above), except the RBF head, exported with its Entmax-1.5
    normaliser at opset 18 (its softmax of negative distances at opset 17 is what RSLVQ's
    case already converts; one export fewer keeps this file fast)."""
    try:
        from kmtools.heads import HEADS
    except ImportError:  # pragma: no cover - heads ship with kmtools
        return []
    cases: list[tuple[str, dict[str, object], int]] = [
        (k, {"prototypes_per_class": 2}, 17) for k in HEADS if k not in ("gauss", "rbf")
    ]
    if "rbf" in HEADS:
        cases.append(("rbf", {"normaliser": "entmax15", "prototypes_per_class": 2}, 18))
    return cases


@pytest.mark.parametrize(("kind", "kwargs", "opset"), _head_cases(),
                         ids=lambda v: ",".join(f"{k}={w}" for k, w in v.items()) if isinstance(v, dict) else str(v))
def test_every_head_kind_exports(kind: str, kwargs: dict[str, object], opset: int, tmp_path: Path) -> None:
    """Each prototype head exports to kmtools/.pt2/ONNX with parity; at opset 17 the ONNX
    graph is converted from the exporter's optimised opset-18 graph."""
    from kmtools.heads import build_head

    if kwargs.get("normaliser") == "entmax15":
        pytest.importorskip("entmax")
    torch.manual_seed(0)
    net = zoo.create("mlp", num_classes=3, in_features=5, hidden=16, feature_dim=6).eval()
    base = wrap(net, arch="mlp", arch_kwargs={"num_classes": 3, "in_features": 5, "hidden": 16, "feature_dim": 6},
                input_shape=(5,))
    x = torch.randn(120, 5)
    with torch.no_grad():
        f = base.features(x)
    y = torch.arange(120) % 3
    model = base.with_head(build_head(kind, f, y, 3, **kwargs)).eval()  # type: ignore[arg-type]
    res = export(model, tmp_path, opset=opset, example=x[:4])
    assert res.opset == opset and res.head_kind == kind
    assert onnx.load(str(res.paths["onnx"])).opset_import[0].version == opset
    assert all(fl.max_abs_diff is not None and fl.max_abs_diff < 1e-4 for fl in res.files.values())
    assert load_model(res.paths["kmtools"]).head_kind == kind
    session = ort.InferenceSession(str(res.paths["onnx"]))
    xs = torch.randn(7, 5)
    scores, conf = session.run(None, {"input": xs.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(scores, model(xs).numpy(), atol=1e-4)
        np.testing.assert_allclose(conf, model.confidences(xs).numpy(), atol=1e-4)
        assert (scores.argmax(1) == model(xs).argmax(1).numpy()).all()


def _cli_app():  # type: ignore[no-untyped-def]
    from kmtools_cli import export_cmd
    from kmtools_cli.main import app

    if not any(c.name == "export" for c in app.registered_commands):
        export_cmd.register(app)
    return app


def _digits_gauss(tmp: Path) -> tuple[KmModel, Path]:
    """A Gauss network on digits: the SmallCNN of :func:`_smallcnn` (untrained: export parity
    does not need accuracy) with a GaussHead on the class means of its features on the
    digits training set and kmtools.tailor's auto feature scale, so κ is spread on real inputs."""
    from kmtools.centroids import class_means
    from kmtools.data import load_dataset
    from kmtools.tailor import auto_gamma

    soft = _smallcnn()
    tr = load_dataset("digits", split="train").dataset
    x, y = tr.tensors  # type: ignore[attr-defined]
    with torch.no_grad():
        f = soft.features(x)
    c = class_means(f, y.long(), 10)
    gauss = soft.with_head(GaussHead(c, gamma=auto_gamma(f, y.long(), c))).eval()
    return gauss, save_model(gauss, tmp / "gauss.safetensors")


def test_cli_gauss_network_runs_without_kmtools(tmp_path: Path) -> None:
    """``kmtools export MODEL --formats kmtools,torchscript,onnx --opset 17 --data digits`` on a
    digits Gauss network; then one ``python -S -c`` process that cannot import kmtools runs the
    .pt2 (torch.export) and the .onnx (onnxruntime) on real test inputs: both match the eager κ
    within 1e-4, as does the max abs diff the export reported. Then the CLI's refusals and
    its human output."""
    from kmtools.data import load_dataset

    model, ckpt = _digits_gauss(tmp_path)
    out = tmp_path / "exported"
    app, runner = _cli_app(), CliRunner()
    r = runner.invoke(app, ["export", str(ckpt), "--formats", "kmtools,torchscript,onnx", "--out", str(out),
                            "--opset", "17", "--data", "digits", "--format", "json", "--quiet"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    res = doc["results"]
    assert validate(doc) == [] and doc["command"] == "export" and doc["model"]["sha256"]
    assert doc["data"]["name"] == "digits" and res["head_kind"] == "gauss"
    assert list(res["files"]) == ["kmtools", "pt2", "onnx"] and res["opset"] == 17
    assert onnx.load(res["files"]["onnx"]["path"]).opset_import[0].version == 17
    assert res["max_abs_diff"] < 1e-4 and all(f["max_abs_diff"] < 1e-4 for f in res["files"].values())
    assert res["check_batches"] == [1, 7, 8]  # random batches, then the 8 digits inputs
    te = load_dataset("digits", split="test").dataset
    x = te.tensors[0][:50]  # type: ignore[attr-defined]
    np.save(tmp_path / "x.npy", x.numpy())
    code = (
        "import json, numpy as np, torch, onnxruntime as ort\n"
        "x = np.load('x.npy')\n"
        "with torch.no_grad():\n"
        "    ps, pc = torch.export.load(sys.argv[2]).module()(torch.from_numpy(x))\n"
        "os_, oc = ort.InferenceSession(sys.argv[3], providers=['CPUExecutionProvider']).run(None, {'input': x})\n"
        "assert not [m for m in sys.modules if m.startswith('kmtools')]\n"
        "print(json.dumps({'pt2': [ps.tolist(), pc.tolist()], 'onnx': [os_.tolist(), oc.tolist()]}))\n"
    )
    got = json.loads(_run_isolated(code, tmp_path, res["files"]["pt2"]["path"], res["files"]["onnx"]["path"]))
    with torch.no_grad():
        kappa = model(x).numpy()
    for fmt in ("pt2", "onnx"):
        scores, conf = (np.array(v) for v in got[fmt])
        assert scores.shape == (50, 10)
        assert np.abs(scores - kappa).max() < 1e-4 and np.abs(conf - kappa).max() < 1e-4
        assert (scores.argmax(1) == kappa.argmax(1)).all()
    # the check is not vacuous: κ of the predicted class is far from 0 on real digits
    assert float(np.median(kappa.max(1))) > 0.2
    back = load_model(res["files"]["kmtools"]["path"])
    torch.testing.assert_close(back(x), model(x), atol=0, rtol=0)
    # again without --force: exit 1, one-line message, files untouched
    before = (out / "model.onnx").read_bytes()
    r = runner.invoke(app, ["export", str(ckpt), "--out", str(out), "--formats", "onnx"])
    assert r.exit_code == 1 and "already exists: pass --force" in r.output
    assert (out / "model.onnx").read_bytes() == before
    # human output with --no-check and --force; --out is required
    r = runner.invoke(app, ["export", str(ckpt), "-o", str(out), "--formats", "kmtools,pt2", "--no-check",
                            "--force"], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert "model.safetensors" in r.stdout and "not checked" in r.stdout and "gauss" in r.stdout
    r = runner.invoke(app, ["export", str(ckpt), "--formats", "onnx"])
    assert r.exit_code == 1 and "--out" in r.output
