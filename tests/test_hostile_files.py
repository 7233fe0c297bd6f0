"""Hostile checkpoint files (issue 10, item 1): nothing runs, nothing crashes, memory stays bounded.

Every file goes through ``kmtools inspect FILE`` (CliRunner) and ``kmtools.models.load_model``.
The CLI must answer with exit code 1 and exactly one ``error: ...`` line on stderr, no
traceback, within seconds; the library must raise a ``CheckpointError``/``KmtoolsError``.
"""

from __future__ import annotations

import collections
import io
import json
import os
import pickle
import random
import resource
import struct
import time
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from kmtools.errors import CheckpointError, KmtoolsError, UntrustedCheckpointError
from kmtools.models import load_model, save_model, wrap, zoo
from kmtools.models.checkpoint import FORMAT, digest
from kmtools_cli.main import app

SECONDS = 10.0  # generous: the test machine is shared; a healthy refusal takes ~0.2 s


# --------------------------------------------------------------------------- helpers
def cli(*args: Any) -> Any:
    t0 = time.perf_counter()
    res = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})
    res.seconds = time.perf_counter() - t0  # type: ignore[attr-defined]
    return res


def assert_refused(res: Any, *needles: str) -> str:
    """Exit 1, exactly one ``error:`` line on stderr, no traceback, quick."""
    assert res.exit_code == 1, (res.exit_code, res.output, res.exception)
    assert isinstance(res.exception, SystemExit), repr(res.exception)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert "internal error" not in lines[0], lines[0]  # the CLI's catch-all for bugs: not a handled error
    assert "Traceback" not in res.output
    assert res.seconds < SECONDS
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def refused_by_api(path: Path, exc: type[Exception] = CheckpointError, **kw: Any) -> str:
    with pytest.raises(exc) as info:
        load_model(path, **kw)
    return str(info.value)


def _net(width: int = 8) -> torch.nn.Module:
    torch.manual_seed(0)
    return zoo.create("smallcnn", width=width).eval()


def maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class _Payload:
    """Unpickling this calls os.system, which would create ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def write_kmtools(path: Path, tensors: dict[str, torch.Tensor], info: Any, *, sign: bool = True) -> Path:
    """A kmtools-format file with arbitrary (possibly forged) metadata and a valid digest."""
    text = info if isinstance(info, str) else json.dumps(info)
    meta = {"kmtools": text, "format": FORMAT}
    if sign:
        meta["sha256"] = digest(tensors, text)
    save_file(tensors, str(path), metadata=meta)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("hostile")
    model = wrap(_net(), arch="smallcnn", arch_kwargs={"num_classes": 10, "in_channels": 1, "width": 8},
                 input_shape=(1, 8, 8))
    out = {"dir": d, "kmtools": save_model(model, d / "good.safetensors")}
    sd = _net(16).state_dict()  # default smallcnn: loads with --arch smallcnn alone
    torch.save(sd, d / "good.pt")
    out["pt"] = d / "good.pt"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(d / "plain.safetensors"))
    out["plain_st"] = d / "plain.safetensors"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.script(_net(16))
        torch.jit.save(scripted, str(d / "scripted.pt"))
    out["torchscript"] = d / "scripted.pt"
    out["onnx"] = _tiny_onnx(d / "model.onnx")
    return out


def _tiny_onnx(path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Relu", ["input"], ["scores"])], "g", [x], [y])
    onnx.save(helper.make_model(graph), str(path))
    return path


def _extra(kind: str) -> list[str]:
    return ["--arch", "smallcnn"] if kind in ("pt", "plain_st", "torchscript") else []


# --------------------------------------------------------------------------- sanity: the good files load
@pytest.mark.parametrize("kind", ["kmtools", "pt", "plain_st", "torchscript"])
def test_good_files_load(files: dict[str, Path], kind: str) -> None:
    res = cli("inspect", files[kind], *_extra(kind), "-f", "json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["results"]["num_classes"] == 10


# --------------------------------------------------------------------------- code execution
def _pickle_variants(d: Path, marker: Path) -> dict[str, Path]:
    evil = _Payload(marker)
    out: dict[str, Path] = {}
    torch.save({"state_dict": {"w": torch.zeros(2)}, "extra": evil}, d / "zip.pt")
    out["torch-zip"] = d / "zip.pt"
    torch.save({"w": evil}, d / "legacy.pt", _use_new_zipfile_serialization=False)
    out["torch-legacy"] = d / "legacy.pt"
    for proto in (2, 4):
        p = d / f"raw{proto}.pkl"
        p.write_bytes(pickle.dumps(evil, protocol=proto))
        out[f"pickle-protocol-{proto}"] = p
    return out


@pytest.mark.parametrize("variant", ["torch-zip", "torch-legacy", "pickle-protocol-2", "pickle-protocol-4"])
def test_pickle_payload_never_runs_without_trust(tmp_path: Path, variant: str) -> None:
    marker = tmp_path / "PWNED"
    path = _pickle_variants(tmp_path, marker)[variant]
    assert_refused(cli("inspect", path, "--arch", "smallcnn"), "--trust-checkpoint")
    msg = refused_by_api(path, UntrustedCheckpointError, arch="smallcnn")
    assert "--trust-checkpoint" in msg
    assert not marker.exists(), "the payload ran while loading an untrusted file"
    # positive control: the payload is live, and runs only when the user says so
    with pytest.raises(KmtoolsError):
        load_model(path, arch="smallcnn", trust=True)
    assert marker.exists()


def test_pickle_named_safetensors_is_not_unpickled(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    p = tmp_path / "evil.safetensors"
    p.write_bytes(pickle.dumps(_Payload(marker), protocol=2))
    assert_refused(cli("inspect", p, "--trust-checkpoint"), "not a valid safetensors file")
    assert not marker.exists()


# --------------------------------------------------------------------------- truncation
@pytest.mark.parametrize("kind", ["kmtools", "pt", "plain_st", "torchscript"])
@pytest.mark.parametrize("keep", [1, 8, 0.5, -1])
def test_truncated_files_are_refused(files: dict[str, Path], tmp_path: Path, kind: str, keep: float) -> None:
    data = files[kind].read_bytes()
    n = len(data) + int(keep) if keep < 0 else (int(keep) if keep >= 1 else int(len(data) * keep))
    p = tmp_path / f"cut{files[kind].suffix}"
    p.write_bytes(data[:n])
    assert_refused(cli("inspect", p, *_extra(kind)))
    refused_by_api(p, arch="smallcnn" if _extra(kind) else None)


# --------------------------------------------------------------------------- bit flips
def _flips(data: bytes, count: int, seed: int) -> list[tuple[int, int]]:
    rng = random.Random(seed)
    edges = [rng.randrange(min(256, len(data))) for _ in range(count // 4)]
    edges += [len(data) - 1 - rng.randrange(min(256, len(data))) for _ in range(count // 4)]
    rest = [rng.randrange(len(data)) for _ in range(count - len(edges))]
    return [(pos, 1 << rng.randrange(8)) for pos in edges + rest]


def test_bitflips_in_kmtools_files_are_always_detected(files: dict[str, Path], tmp_path: Path) -> None:
    """The sha256 that save_model records covers metadata and tensors: a single-bit flip, in
    the header or in the weights, is refused, or (a flip in a key name that changes nothing
    the model is built from) loads the identical model; never a silently different one."""
    data = files["kmtools"].read_bytes()
    original = load_model(files["kmtools"]).state_dict()
    p = tmp_path / "flip.safetensors"
    refused = 0
    for i, (pos, bit) in enumerate(_flips(data, 32, seed=1)):
        b = bytearray(data)
        b[pos] ^= bit
        p.write_bytes(bytes(b))
        if i < 3:
            assert_refused(cli("inspect", p))
        try:
            sd = load_model(p).state_dict()
        except KmtoolsError:
            refused += 1
            continue
        assert sd.keys() == original.keys() and all(torch.equal(sd[k], original[k]) for k in sd)
    assert refused >= 30


@pytest.mark.parametrize(("kind", "count"), [("pt", 16), ("plain_st", 16), ("torchscript", 8)])
def test_bitflips_in_foreign_files_never_crash(files: dict[str, Path], tmp_path: Path, kind: str, count: int) -> None:
    """Files without a checksum: a flip in the weights can go unnoticed (documented), but every
    flip either loads into a working model or is refused with a KmtoolsError, never a crash."""
    data = files[kind].read_bytes()
    p = tmp_path / f"flip{files[kind].suffix}"
    refused = 0
    for pos, bit in _flips(data, count, seed=2):
        b = bytearray(data)
        b[pos] ^= bit
        p.write_bytes(bytes(b))
        try:
            m = load_model(p, arch="smallcnn")
        except KmtoolsError:
            refused += 1
            continue
        with torch.no_grad():
            assert m(torch.rand(2, 1, 8, 8)).shape == (2, 10)
    print(f"{kind}: {refused}/{count} flips refused, the rest loaded a working model")
    assert refused >= 1
    b = bytearray(data)
    b[len(b) - 10] ^= 0xFF  # zip directory / safetensors data: the CLI copes as well
    p.write_bytes(bytes(b))
    res = cli("inspect", p, *_extra(kind))
    if res.exit_code != 0:
        assert_refused(res)


# --------------------------------------------------------------------------- safetensors headers
def _header(n: int, body: bytes) -> bytes:
    return struct.pack("<Q", n) + body


HEADERS: dict[str, Callable[[], bytes]] = {
    "length-2^62": lambda: _header(2**62, b"{}"),
    "length-past-end": lambda: _header(50_000_000, b'{"a":'),
    "huge-shape": lambda: _header(
        *(lambda h: (len(h), h + b"\0" * 16))(
            json.dumps({"w": {"dtype": "F32", "shape": [100000, 100000], "data_offsets": [0, 40_000_000_000]}})
            .encode()
        )
    ),
    "shape-offsets-disagree": lambda: _header(
        *(lambda h: (len(h), h + b"\0" * 4))(
            json.dumps({"w": {"dtype": "F32", "shape": [1_000_000], "data_offsets": [0, 4]}}).encode()
        )
    ),
    "deeply-nested-json": lambda: _header(200_002, b"[" * 100_001 + b"]" * 100_001),
    "not-json": lambda: _header(8, b"\xff\xfe\x00garbage"),
}


@pytest.mark.parametrize("name", sorted(HEADERS))
def test_hostile_safetensors_headers(tmp_path: Path, name: str) -> None:
    p = tmp_path / "h.safetensors"
    p.write_bytes(HEADERS[name]())
    before = maxrss_mib()
    assert_refused(cli("inspect", p), "safetensors")
    refused_by_api(p)
    assert maxrss_mib() - before < 100


# --------------------------------------------------------------------------- zip bomb
def _zip_bomb(path: Path, numel: int = 25_000_000) -> Path:
    """A torch zip checkpoint whose one tensor (numel float32 zeros) is stored deflated:
    ~100 KB on disk, 100 MB once loaded. Built by streaming, so the test never holds it."""

    class Storage:
        pass

    class Tensor:
        def __reduce__(self) -> tuple[Any, ...]:
            return (torch._utils._rebuild_tensor_v2,
                    (Storage(), 0, (numel,), (1,), False, collections.OrderedDict()))

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj: Any) -> Any:
            return ("storage", torch.FloatStorage, "0", "cpu", numel) if isinstance(obj, Storage) else None

    buf = io.BytesIO()
    Pickler(buf, protocol=2).dump({"features.0.weight": Tensor()})
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        z.writestr("archive/data.pkl", buf.getvalue())
        z.writestr("archive/byteorder", "little")
        with z.open("archive/data/0", "w", force_zip64=True) as w:
            block = bytes(1 << 20)
            left = numel * 4
            while left:
                w.write(block[: min(left, len(block))])
                left -= min(left, len(block))
        z.writestr("archive/version", "3\n")
    return path


def test_zip_bomb_is_refused_in_bounded_memory(tmp_path: Path) -> None:
    """Refused from the zip directory, before torch allocates the tensor. Memory is measured in
    a fresh process: this one's peak RSS may already be above 100 MB from other tests."""
    import subprocess
    import sys

    p = _zip_bomb(tmp_path / "bomb.pt")
    assert p.stat().st_size < 2_000_000
    assert_refused(cli("inspect", p, "--arch", "smallcnn"), "zip bomb")
    assert_refused(cli("inspect", p, "--arch", "smallcnn", "--trust-checkpoint"), "zip bomb")
    code = (
        "import resource, sys\n"
        "from kmtools.errors import CheckpointError\n"
        "from kmtools.models import load_model\n"
        "r0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "try:\n    load_model(sys.argv[1], arch='smallcnn')\nexcept CheckpointError as e:\n    print(e)\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - r0) // 1024)\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code, str(p)], capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).resolve().parents[1], env=env)
    lines = out.stdout.strip().splitlines()
    assert out.returncode == 0 and "zip bomb" in lines[0], out.stderr[-2000:]
    assert int(lines[-1]) < 50  # MiB; loading it takes 100 MB (262 MB peak before the check existed)


# --------------------------------------------------------------------------- forged kmtools metadata
def _good_meta(files: dict[str, Path]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from kmtools.models.checkpoint import read_safetensors

    tensors, meta = read_safetensors(files["kmtools"])
    return tensors, json.loads(meta["kmtools"])


FORGERIES: dict[str, Callable[[dict[str, Any]], Any]] = {
    "width-1e6 (memory bomb)": lambda i: {**i, "arch_kwargs": {**i["arch_kwargs"], "width": 1_000_000}},
    "torchvision resnet50": lambda i: {**i, "arch": "torchvision:resnet50", "arch_kwargs": {"num_classes": 10}},
    "input 3x100000x100000": lambda i: {**i, "input_shape": [3, 100000, 100000]},
    "unknown arch": lambda i: {**i, "arch": "no-such-net"},
    "arch_kwargs not a dict": lambda i: {**i, "arch_kwargs": 5},
    "bogus arch_kwargs": lambda i: {**i, "arch_kwargs": {"bogus": 1}},
    "metadata is a list": lambda i: "[1, 2, 3]",
    "metadata not json": lambda i: "{not json",
    "unknown head kind": lambda i: {**i, "head_kind": "trojan"},
    "gauss head without centroids": lambda i: {**i, "head_kind": "gauss"},
}


@pytest.mark.parametrize("name", sorted(FORGERIES))
def test_forged_kmtools_metadata(files: dict[str, Path], tmp_path: Path, name: str) -> None:
    """A forger can recompute the digest; the loader still refuses metadata that does not
    describe the tensors in the file, before allocating the network it names."""
    tensors, info = _good_meta(files)
    p = write_kmtools(tmp_path / "forged.safetensors", tensors, FORGERIES[name](info))
    import torchvision  # noqa: F401  (imported before measuring: its import alone is ~100 MB)

    before = maxrss_mib()
    assert_refused(cli("inspect", p))
    refused_by_api(p, KmtoolsError)
    assert maxrss_mib() - before < 100


def test_digest_mismatch_names_the_problem(files: dict[str, Path], tmp_path: Path) -> None:
    tensors, info = _good_meta(files)
    tensors = dict(tensors)
    key = next(k for k in tensors if k.endswith("weight"))
    signed = digest(tensors, json.dumps(info))
    tensors[key] = tensors[key] + 1e-3  # weights edited after signing
    text = json.dumps(info)
    save_file(tensors, str(tmp_path / "edited.safetensors"),
              metadata={"kmtools": text, "format": FORMAT, "sha256": signed})
    assert_refused(cli("inspect", tmp_path / "edited.safetensors"), "sha256")


# --------------------------------------------------------------------------- wrong dtypes, shapes, values
def _sd_variant(name: str) -> dict[str, torch.Tensor]:
    sd = dict(_net(16).state_dict())
    first = "features.0.weight"
    if name == "int-weights":
        sd[first] = sd[first].to(torch.int32)
    elif name == "bool-weights":
        sd[first] = sd[first] > 0
    elif name == "wrong-shape":
        sd[first] = sd[first][:, :, :2, :2].contiguous()
    elif name == "missing-key":
        del sd[first]
    elif name == "nan":
        sd[first] = sd[first].clone()
        sd[first][0, 0, 0, 0] = float("nan")
    elif name == "inf":
        key = next(k for k in sd if k.endswith("running_var")) if any(k.endswith("running_var") for k in sd) \
            else first
        sd[key] = sd[key].clone().fill_(float("inf"))
    elif name == "complex":
        sd[first] = sd[first].to(torch.complex64)
    return sd


@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
@pytest.mark.parametrize("name", ["int-weights", "bool-weights", "wrong-shape", "missing-key", "nan", "inf", "complex"])
def test_wrong_tensors_in_state_dicts(tmp_path: Path, fmt: str, name: str) -> None:
    sd = _sd_variant(name)
    p = tmp_path / f"bad.{fmt}"
    if fmt == "pt":
        torch.save(sd, p)
    else:
        save_file({k: v.contiguous() for k, v in sd.items()}, str(p))
    line = assert_refused(cli("inspect", p, "--arch", "smallcnn"))
    if name in ("nan", "inf"):
        assert "NaN or Inf" in line
    refused_by_api(p, arch="smallcnn")


@pytest.mark.parametrize("name", ["int-weights", "wrong-shape", "nan", "extra-key"])
def test_wrong_tensors_in_signed_kmtools_files(files: dict[str, Path], tmp_path: Path, name: str) -> None:
    tensors, info = _good_meta(files)
    tensors = dict(tensors)
    key = next(k for k in tensors if k.startswith("backbone") and k.endswith("weight"))
    if name == "int-weights":
        tensors[key] = tensors[key].to(torch.int64)
    elif name == "wrong-shape":
        tensors[key] = tensors[key].flatten()[:5].contiguous()
    elif name == "nan":
        tensors[key] = torch.full_like(tensors[key], float("nan"))
    else:
        tensors["backbone.trojan"] = torch.zeros(3)
    p = write_kmtools(tmp_path / "t.safetensors", tensors, info)
    assert_refused(cli("inspect", p))
    refused_by_api(p)


def test_half_precision_state_dict_still_loads(tmp_path: Path) -> None:
    """Not hostile: fp16/fp64 checkpoints are common and load (cast to the network's dtype)."""
    net = _net(16)
    x = torch.rand(3, 1, 8, 8)
    for dtype in (torch.float16, torch.float64):
        p = tmp_path / f"w-{dtype}.pt"
        torch.save({k: v.to(dtype) if v.is_floating_point() else v for k, v in net.state_dict().items()}, p)
        m = load_model(p, arch="smallcnn")
        with torch.no_grad():
            assert torch.allclose(m(x), net(x), atol=5e-2)


# --------------------------------------------------------------------------- empty files and odd paths
@pytest.mark.parametrize("suffix", [".pt", ".safetensors", ".bin"])
@pytest.mark.parametrize("content", [b"", b"\x00", b"PK\x03\x04", b"\x80\x02", b'{"a": 1}', b"hello\n"])
def test_tiny_and_garbage_files(tmp_path: Path, suffix: str, content: bytes) -> None:
    p = tmp_path / f"x{suffix}"
    p.write_bytes(content)
    line = assert_refused(cli("inspect", p, "--arch", "smallcnn"))
    if not content:
        assert "empty" in line


def test_random_bytes(tmp_path: Path) -> None:
    rng = random.Random(3)
    p = tmp_path / "noise.pt"
    for size in (16, 1000, 100_000):
        p.write_bytes(bytes(rng.randrange(256) for _ in range(size)))
        assert_refused(cli("inspect", p, "--arch", "smallcnn"))


def test_directories_symlinks_and_special_files(files: dict[str, Path], tmp_path: Path) -> None:
    d = tmp_path / "ckpt.pt"
    d.mkdir()
    assert_refused(cli("inspect", d), "is a directory")
    dangling = tmp_path / "dangling.pt"
    dangling.symlink_to(tmp_path / "nowhere.pt")
    assert_refused(cli("inspect", dangling), "does not exist")
    to_dir = tmp_path / "to_dir.pt"
    to_dir.symlink_to(d)
    assert_refused(cli("inspect", to_dir), "is a directory")
    loop = tmp_path / "loop.pt"
    loop.symlink_to(loop)
    assert_refused(cli("inspect", loop))
    fifo = tmp_path / "fifo.pt"
    os.mkfifo(fifo)  # opening it would block forever: must be refused without reading
    assert_refused(cli("inspect", fifo), "not a regular file")
    assert_refused(cli("inspect", "/dev/zero", "--arch", "smallcnn"), "not a regular file")
    for p in (d, dangling, to_dir, loop, fifo):
        refused_by_api(p)
    ok = tmp_path / "link.safetensors"
    ok.symlink_to(files["kmtools"])  # a symlink to a good file is fine
    assert cli("inspect", ok).exit_code == 0


def test_export_formats_are_named(files: dict[str, Path], tmp_path: Path) -> None:
    line = assert_refused(cli("inspect", files["onnx"]), "ONNX")
    assert "--trust-checkpoint" not in line  # not mistaken for a pickle
    (tmp_path / "m.pt2").write_bytes(files["pt"].read_bytes())
    assert_refused(cli("inspect", tmp_path / "m.pt2"), "torch.export")
    data = files["onnx"].read_bytes()
    (tmp_path / "cut.onnx").write_bytes(data[: len(data) // 2])
    assert_refused(cli("inspect", tmp_path / "cut.onnx"), "ONNX")


def test_onnx_bytes_under_a_pt_name_are_not_called_pickles(files: dict[str, Path], tmp_path: Path) -> None:
    p = tmp_path / "actually-onnx.pt"
    p.write_bytes(files["onnx"].read_bytes())
    line = assert_refused(cli("inspect", p, "--arch", "smallcnn"), "corrupt or not a PyTorch checkpoint")
    assert "--trust-checkpoint" not in line
