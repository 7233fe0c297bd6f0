"""Checkpoint file formats: detection and safe reading.

safetensors, ``torch.save`` zips and plain pickles (read with ``weights_only=True``),
TorchScript archives; ONNX and ``.pt2`` are recognised and refused with the fix. A pickle
that names Python objects is unpickled only with ``trust=True`` (``--trust-checkpoint``).
Also the state-dict helpers every loader needs (wrappers, prefixes, finiteness, digest).
"""

from __future__ import annotations

import hashlib
import json
import math
import pickle
import pickletools
import re
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kmtools.errors import CheckpointError, KmtoolsError, UntrustedCheckpointError

#: Format tag of kmtools model files. Files of every earlier tag listed in ``READABLE`` load.
FORMAT = "kmtools/1"
READABLE = ("kmtools/1",)
_WRAPPERS = ("state_dict", "model_state_dict", "model", "net", "module", "weights")

def _check_file(path: str | Path) -> Path:
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint {p} does not exist: check the path")
    if p.is_dir():
        raise CheckpointError(f"checkpoint {p} is a directory: give the checkpoint file inside it")
    if not p.is_file():
        raise CheckpointError(f"checkpoint {p} is not a regular file")
    if p.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {p} is empty (0 bytes): re-save or re-download it")
    return p


def _is_torchscript(p: Path) -> bool:
    if not zipfile.is_zipfile(p):
        return False
    try:
        with zipfile.ZipFile(p) as zf:
            return any(n.split("/", 1)[-1].startswith(("code/", "constants.pkl")) for n in zf.namelist())
    except (zipfile.BadZipFile, OSError, UnicodeDecodeError, ValueError):
        return False


#: A zip checkpoint may unpack to at most this many times its size (torch.save stores its
#: entries uncompressed, so real checkpoints expand ~1x); beyond it, and past 64 MiB, it is
#: refused as a zip bomb before torch allocates anything.
MAX_ZIP_RATIO = 10


def _check_zip(p: Path) -> None:
    """A readable zip whose declared contents are not much larger than the file itself."""
    try:
        with zipfile.ZipFile(p) as zf:
            total = sum(i.file_size for i in zf.infolist())
    except (zipfile.BadZipFile, OSError, UnicodeDecodeError, ValueError, EOFError) as exc:
        raise CheckpointError(f"{p} is a corrupt zip archive ({_short(exc)}): re-save or re-download it") from exc
    size = p.stat().st_size
    if total > max(64 << 20, MAX_ZIP_RATIO * size):
        raise CheckpointError(
            f"{p} would unpack to {total / 2**20:.0f} MiB from a {size / 2**20:.1f} MiB file (a zip bomb?): "
            "kmtools refuses compressed checkpoints; re-save it with torch.save"
        )


_OBJECT_OPS = frozenset({"GLOBAL", "STACK_GLOBAL", "INST", "OBJ", "REDUCE", "NEWOBJ", "NEWOBJ_EX", "BUILD"})


def _pickle_names_objects(p: Path) -> bool:
    """True when ``p`` is a well-formed pickle stream that imports or builds Python objects.

    Reads the opcodes with :func:`pickletools.genops`, which executes nothing.
    """
    try:
        with open(p, "rb") as fh:
            return any(op.name in _OBJECT_OPS for op, _arg, _pos in pickletools.genops(fh))
    except Exception:
        return False


def read_safetensors(p: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file; corrupt files raise CheckpointError."""
    from safetensors import safe_open

    size = p.stat().st_size
    with open(p, "rb") as fh:
        head = fh.read(8)
    if len(head) < 8:
        raise CheckpointError(f"{p} is not a valid safetensors file (truncated header)")
    n = int.from_bytes(head, "little")
    if n <= 0 or n + 8 > size or n > 100_000_000:
        raise CheckpointError(f"{p} is not a valid safetensors file (header claims {n} bytes, file has {size})")
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except Exception as exc:
        raise CheckpointError(
            f"{p} is not a valid safetensors file ({_short(exc)}): re-save or re-download it"
        ) from exc
    return tensors, meta


def _short(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return msg[:160]


def _unpickle_reason(exc: BaseException) -> str:
    """The useful part of torch's weights-only error (its first line advises weights_only=False)."""
    text = " ".join(str(exc).split())
    if "WeightsUnpickler error:" in text:
        return text.split("WeightsUnpickler error:", 1)[1].split(" Check the documentation")[0].strip()[:160]
    return _short(exc)


def read_state(path: str | Path, trust: bool = False) -> tuple[Any, dict[str, str]]:
    """Read a checkpoint file: ``(object, metadata)``.

    The object is a state dict, a ``torch.jit.ScriptModule``, or (only with ``trust``) an
    arbitrary unpickled object such as a whole ``nn.Module``.
    """
    p = _check_file(path)
    try:
        return _read_state(p, trust)
    except (KmtoolsError, MemoryError):
        raise
    except OSError as exc:
        raise CheckpointError(f"checkpoint {p} cannot be read ({exc.strerror or _short(exc)})") from exc
    except Exception as exc:  # any other parser failure on a hostile file is a one-line error
        raise CheckpointError(
            f"{p} is corrupt or not a supported checkpoint ({type(exc).__name__}: {_short(exc)}): "
            "re-save or re-download it"
        ) from exc


def _read_state(p: Path, trust: bool) -> tuple[Any, dict[str, str]]:
    if p.suffix == ".safetensors":
        return read_safetensors(p)
    if p.suffix.lower() == ".onnx":
        raise CheckpointError(
            f"{p} is an ONNX model, an export format kmtools cannot load back: give the PyTorch "
            "checkpoint (state dict, TorchScript or kmtools .safetensors) it was exported from"
        )
    if p.suffix.lower() == ".pt2":
        raise CheckpointError(
            f"{p} is a torch.export program, which kmtools cannot split into backbone and head: give "
            "the kmtools .safetensors written beside it"
        )
    with open(p, "rb") as fh:
        magic = fh.read(8)
    if len(magic) >= 8 and int.from_bytes(magic, "little") < p.stat().st_size and magic[:1] not in (b"P", b"\x80"):
        # no zip/pickle signature but plausibly a safetensors header under another suffix
        try:
            return read_safetensors(p)
        except CheckpointError:
            pass
    is_zip = zipfile.is_zipfile(p)
    if is_zip:
        _check_zip(p)
    if _is_torchscript(p):
        try:
            with warnings.catch_warnings():  # torch.jit.load is deprecated (FutureWarning) but still served
                warnings.simplefilter("ignore")
                return torch.jit.load(str(p), map_location="cpu"), {}
        except Exception as exc:
            raise CheckpointError(f"{p} looks like TorchScript but cannot be loaded ({_short(exc)})") from exc
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols on hostile files
            warnings.simplefilter("ignore")
            obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # "GLOBAL x.y" = the weights-only unpickler met an import it refused; a plain pickle
        # stream (no zip) it cannot parse is checked opcode by opcode without running it.
        names_objects = "GLOBAL" in str(exc) or (not is_zip and _pickle_names_objects(p))
        if not names_objects:
            raise CheckpointError(
                f"{p} is corrupt or not a PyTorch checkpoint ({_unpickle_reason(exc)}): re-save or re-download it"
            ) from exc
        if not trust:
            found = re.search(r"GLOBAL ([\w.]+)", str(exc))
            what = f"it names {found.group(1)}" if found else "e.g. a whole nn.Module"
            raise UntrustedCheckpointError(
                f"{p} contains pickled Python objects ({what}) and loading it could run code "
                "from the file: save a state dict instead, or pass --trust-checkpoint if you trust its source"
            ) from exc
        try:
            obj = torch.load(str(p), map_location="cpu", weights_only=False)
        except Exception as exc2:
            missing = re.search(r"Can't get attribute '(\w+)' on <module '([\w.]+)'", str(exc2))
            if missing:
                cls, mod = missing.groups()
                script = mod == "__main__" or mod.endswith(".__main__")
                where = "the script that saved it (__main__)" if script else f"module {mod}"
                raise CheckpointError(
                    f"{p} holds a pickled {cls} from {where}, which cannot be imported here: save its "
                    f"state_dict() instead and pass --arch FILE.py:{cls}"
                ) from exc2
            raise CheckpointError(f"{p} could not be unpickled ({_short(exc2)})") from exc2
    except (RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile, KeyError, AttributeError) as exc:
        raise CheckpointError(
            f"{p} is corrupt or not a PyTorch checkpoint ({_short(exc)}): re-save or re-download it"
        ) from exc
    return obj, {}


def unwrap_state_dict(obj: Any) -> dict[str, torch.Tensor]:
    """Find the state dict inside common wrappers and strip DataParallel ``module.`` prefixes."""
    seen = 0
    while isinstance(obj, Mapping) and seen < 4:
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        inner = next((obj[k] for k in _WRAPPERS if k in obj and isinstance(obj[k], (Mapping, nn.Module))), None)
        if inner is None:
            break
        obj = inner.state_dict() if isinstance(inner, nn.Module) else inner
        seen += 1
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"checkpoint holds a {type(obj).__name__}, not a state dict")
    sd = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not sd:
        raise CheckpointError("checkpoint holds no tensors: is it a training log rather than a model?")
    for prefix in ("module.", "_orig_mod.", "model."):
        if all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def check_finite(sd: Mapping[str, torch.Tensor]) -> None:
    for k, v in sd.items():
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise CheckpointError(
                f"tensor {k!r} holds NaN or Inf values: the checkpoint is broken (diverged training?)"
            )

def digest(tensors: Mapping[str, torch.Tensor], text: str) -> str:
    """sha256 over the metadata text and every tensor's name, dtype, shape and bytes (sorted by
    name): stored by :func:`save_model`, checked on load, so a flipped bit anywhere is caught."""
    h = hashlib.sha256(text.encode())
    for k in sorted(tensors):
        t = tensors[k].detach().cpu().contiguous()
        h.update(f"|{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()



def _sort_metadata(p: Path) -> None:
    """Rewrite a safetensors header with its ``__metadata__`` keys sorted, in place.

    safetensors serialises metadata from a Rust HashMap, whose order changes from process to
    process; sorting makes a saved model byte-for-byte reproducible. The header keeps its
    length (same keys and values, same compact JSON), so only its bytes are rewritten."""
    with open(p, "r+b") as fh:
        n = int.from_bytes(fh.read(8), "little")
        raw = fh.read(n)
        header = json.loads(raw)
        meta = header.pop("__metadata__", None)
        if not meta:
            return
        ordered = {"__metadata__": dict(sorted(meta.items())), **header}
        text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode()
        if len(text) > n or raw.rstrip(b" ") == text:
            return
        fh.seek(8)
        fh.write(text + b" " * (n - len(text)))


def _json_safe(o: Any) -> Any:
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if hasattr(o, "tolist"):
        return o.tolist()
    return str(o)
