"""Load and save checkpoints safely.

Accepted: a state dict (``.pt``/``.pth``/``.safetensors``) with an architecture name;
TorchScript archives; kmtools' own format (``.safetensors`` + JSON metadata, no arch
needed); a pickled whole ``nn.Module`` only with ``trust=True``. Nothing is unpickled with
``weights_only=False`` unless the user says so.
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
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kmtools.errors import CheckpointError, ConfigError, KmtoolsError, UntrustedCheckpointError
from kmtools.models import zoo
from kmtools.models.core import GaussHead, KmModel, Normalize, split

FORMAT = "kmtools/1"
_WRAPPERS = ("state_dict", "model_state_dict", "model", "net", "module", "weights")

NORM_PRESETS: dict[str, tuple[list[float], list[float]]] = {
    "cifar10": ([0.4914, 0.4822, 0.4465], [0.2023, 0.1994, 0.2010]),
    "cifar100": ([0.5071, 0.4865, 0.4409], [0.2673, 0.2564, 0.2762]),
    "imagenet": ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    "mnist": ([0.1307], [0.3081]),
    "fashion-mnist": ([0.2860], [0.3530]),
    "svhn": ([0.4377, 0.4438, 0.4728], [0.1980, 0.2010, 0.1970]),
    "none": ([], []),
}


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


def in_module_order(sd: Mapping[str, torch.Tensor], arch: str | None = None) -> dict[str, torch.Tensor]:
    """``sd`` with its keys in ``arch``'s module order (safetensors files come back sorted by
    name, where ``fc.weight`` precedes ``fc1.weight``); the architecture is built on the meta
    device, so this costs no memory. Unknown keys keep their order at the end."""
    if arch is None:
        return dict(sd)
    try:
        with torch.device("meta"):
            order = {k: i for i, k in enumerate(zoo.create(arch).state_dict())}
    except Exception:
        return dict(sd)
    return dict(sorted(sd.items(), key=lambda kv: order.get(kv[0], len(order))))


def infer_num_classes(sd: Mapping[str, torch.Tensor], arch: str | None = None) -> int | None:
    """Output size of the last 2-D weight in module order (the usual head position)."""
    weights = [v for k, v in in_module_order(sd, arch).items() if k.endswith("weight") and v.dim() == 2]
    return int(weights[-1].shape[0]) if weights else None


def load_into(model: nn.Module, sd: Mapping[str, torch.Tensor], what: str = "checkpoint") -> None:
    """``load_state_dict(strict=True)`` with a one-line message naming the first mismatches."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [
        f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in own if k in sd and sd[k].shape != own[k].shape
    ]
    dtypes = [
        f"{k} is {sd[k].dtype}"
        for k in own
        if k in sd and own[k].is_floating_point() and not sd[k].is_floating_point()
    ]
    parts = []
    if missing:
        parts.append(f"missing {len(missing)} keys ({', '.join(missing[:3])})")
    if unexpected:
        parts.append(f"unexpected {len(unexpected)} keys ({', '.join(unexpected[:3])})")
    if shapes:
        parts.append(f"shape mismatch ({'; '.join(shapes[:3])})")
    if dtypes:
        parts.append(f"wrong dtype ({'; '.join(dtypes[:3])})")
    if parts:
        raise CheckpointError(
            f"{what} does not fit the architecture: {', '.join(parts)}: check --arch/--num-classes"
        )
    model.load_state_dict(sd, strict=True)


def _example(shape: Sequence[int]) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand((2, *shape), generator=g)


def wrap(
    net: nn.Module,
    *,
    arch: str | None,
    arch_kwargs: dict[str, Any],
    input_shape: Sequence[int],
    head_path: str | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    classes: Sequence[str] | None = None,
) -> KmModel:
    """Split a plain classifier at its head and wrap it as a :class:`KmModel`."""
    net.eval()
    try:
        backbone, head, path = split(net, _example(input_shape), head_path)
    except RuntimeError as exc:
        raise CheckpointError(
            f"the model does not run on inputs of shape {tuple(input_shape)} ({_short(exc)}): "
            "check --arch or --input-shape"
        ) from exc
    return KmModel(
        backbone, head, Normalize(mean, std), arch=arch, arch_kwargs=arch_kwargs,
        classes=classes, input_shape=input_shape, head_path=path,
    )


def resolve_norm(
    mean: Sequence[float] | str | None, std: Sequence[float] | None
) -> tuple[list[float] | None, list[float] | None]:
    """``--norm PRESET`` or explicit ``--mean``/``--std``."""
    if isinstance(mean, str):
        if mean not in NORM_PRESETS:
            raise ConfigError(f"unknown normalisation preset {mean!r}: choose one of {', '.join(NORM_PRESETS)}")
        m, s = NORM_PRESETS[mean]
        return m, s
    return (list(mean) if mean else None), (list(std) if std else None)


def load_model(
    path: str | Path,
    *,
    arch: str | None = None,
    num_classes: int | None = None,
    in_channels: int | None = None,
    input_shape: Sequence[int] | None = None,
    head: str | None = None,
    trust: bool = False,
    mean: Sequence[float] | str | None = None,
    std: Sequence[float] | None = None,
    classes: Sequence[str] | None = None,
) -> KmModel:
    """Load any supported checkpoint as a :class:`KmModel` on the CPU, in eval mode."""
    obj, meta = read_state(path, trust=trust)
    m_mean, m_std = resolve_norm(mean, std)
    if "kmtools" in meta:
        try:
            model = _from_kmtools(obj, meta, path)
        except (KmtoolsError, MemoryError):
            raise
        except Exception as exc:  # forged or damaged metadata that passed the JSON parse
            raise CheckpointError(
                f"{path}: kmtools metadata does not describe a loadable model ({type(exc).__name__}: "
                f"{_short(exc)}): the file is corrupt or forged"
            ) from exc
        if num_classes is not None and num_classes != model.num_classes:
            raise ConfigError(
                f"{path} is a kmtools model with {model.num_classes} classes, not {num_classes}: drop --num-classes"
            )
        if m_mean is not None:
            model.normalize = Normalize(m_mean, m_std)
        return model.eval()
    if isinstance(obj, torch.jit.ScriptModule):
        if arch is None:
            return _opaque(obj, path, input_shape, m_mean, m_std, classes)
        obj = obj.state_dict()
    if isinstance(obj, nn.Module):  # trusted pickle of a whole module
        shape = input_shape or (zoo.default_input_shape(arch, in_channels) if arch else None)
        if shape is None:
            raise ConfigError(f"{path}: a whole pickled module needs --input-shape (e.g. 3,32,32) or --arch")
        return wrap(obj, arch=None, arch_kwargs={}, input_shape=shape, head_path=head,
                    mean=m_mean, std=m_std, classes=classes).eval()
    sd = unwrap_state_dict(obj)
    check_finite(sd)
    if arch is None:
        raise ConfigError(
            f"{path} is a plain state dict: name its architecture with --arch "
            f"({', '.join(zoo.names())})"
        )
    ordered = in_module_order(sd, arch)
    n = num_classes or infer_num_classes(ordered)
    kwargs: dict[str, Any] = {"num_classes": n, "in_channels": in_channels}
    if in_channels is None and not arch.startswith("torchvision:"):
        kwargs["in_channels"] = _infer_in_channels(ordered)
    if arch == "mlp":
        kwargs.pop("in_channels")
        kwargs["in_features"] = _infer_in_features(ordered)
    net = zoo.create(arch, **kwargs)
    load_into(net, sd, what=str(path))
    shape = input_shape or zoo.default_input_shape(arch, kwargs.get("in_channels"))
    if arch == "mlp":
        shape = input_shape or (kwargs["in_features"],)
    clean = {k: v for k, v in kwargs.items() if v is not None}
    return wrap(net, arch=arch, arch_kwargs=clean, input_shape=shape, head_path=head,
                mean=m_mean, std=m_std, classes=classes).eval()


def _infer_in_channels(sd: Mapping[str, torch.Tensor]) -> int | None:
    for v in sd.values():
        if v.dim() == 4:
            return int(v.shape[1])
    return None


def _infer_in_features(sd: Mapping[str, torch.Tensor]) -> int | None:
    for v in sd.values():
        if v.dim() == 2:
            return int(v.shape[1])
    return None


class _Opaque(nn.Module):
    """A TorchScript classifier kmtools cannot split (no ``--arch``): scores only."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x)
        return out


def _opaque(net: nn.Module, path: str | Path, input_shape: Sequence[int] | None,
            mean: Sequence[float] | None, std: Sequence[float] | None,
            classes: Sequence[str] | None) -> KmModel:
    """TorchScript without ``--arch``: the backbone is the whole network, the head an identity.

    Commands that need penultimate features refuse such a model (see :func:`require_split`).
    """
    if classes is None and input_shape is not None:  # count the outputs on one example input
        try:
            with torch.no_grad():
                out = net(torch.zeros(1, *input_shape))
            if isinstance(out, torch.Tensor) and out.dim() == 2:
                classes = [str(i) for i in range(out.shape[1])]
        except Exception:  # an opaque model may reject zeros; its class count stays unknown
            classes = None
    model = KmModel(_Opaque(net), nn.Identity(), Normalize(mean, std), classes=classes,
                    input_shape=input_shape, head_path=None)
    return model.eval()


def require_split(model: KmModel, command: str) -> None:
    if model.head_path is None and isinstance(model.head, nn.Identity):
        raise ConfigError(
            f"{command} needs the penultimate features, but this TorchScript model was loaded without "
            "--arch: pass --arch NAME so its weights load into a splittable network"
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


#: Largest input (elements per sample) a checkpoint's metadata may declare.
MAX_INPUT_ELEMENTS = 1 << 26


def _from_kmtools(tensors: dict[str, torch.Tensor], meta: dict[str, str], path: str | Path) -> KmModel:
    try:
        info = json.loads(meta["kmtools"])
        if not isinstance(info, dict):
            raise ValueError("not a JSON object")
    except (json.JSONDecodeError, KeyError, ValueError) as exc:
        raise CheckpointError(f"{path}: kmtools metadata is not valid JSON ({_short(exc)})") from exc
    if "sha256" in meta and meta["sha256"] != digest(tensors, meta["kmtools"]):
        raise CheckpointError(
            f"{path} is corrupt: its contents do not match the sha256 recorded when it was saved; "
            "re-download it or save it again"
        )
    check_finite(tensors)
    arch = info.get("arch")
    if not arch or not isinstance(arch, str):
        raise CheckpointError(f"{path}: kmtools metadata names no architecture")
    kwargs = dict(info.get("arch_kwargs") or {})
    _check_size(arch, kwargs, tensors, path)
    net = zoo.create(arch, **kwargs)
    shape = info.get("input_shape") or zoo.default_input_shape(arch, kwargs.get("in_channels"))
    if math.prod(int(v) for v in shape) > MAX_INPUT_ELEMENTS or min(int(v) for v in shape) < 1:
        raise CheckpointError(f"{path}: metadata declares an implausible input shape {shape}")
    base = wrap(net, arch=arch, arch_kwargs=kwargs, input_shape=shape, head_path=info.get("head_path"),
                mean=info.get("mean") or None, std=info.get("std") or None, classes=info.get("classes"))
    kind = info.get("head_kind", "softmax")
    head_cfg = info.get("head_config") or {}
    if kind == "softmax":
        head: nn.Module = base.head
    elif kind == "gauss":
        c = tensors.get("head.centroids")
        if c is None:
            raise CheckpointError(f"{path}: a Gauss model without 'head.centroids'")
        head = GaussHead(torch.zeros_like(c), gamma=float(head_cfg.get("gamma", 1.0)))
        tensors.setdefault("head.offsets", torch.zeros(len(c)))  # files from before offsets existed
    else:
        head = _prototype_head(kind, head_cfg, tensors, path)
    model = KmModel(base.backbone, head, base.normalize, arch=arch, arch_kwargs=kwargs,
                    classes=info.get("classes"), input_shape=shape, head_path=base.head_path,
                    outlier_threshold=info.get("outlier_threshold"))
    load_into(model, tensors, what=str(path))
    return model


def _check_size(arch: str, kwargs: dict[str, Any], tensors: Mapping[str, torch.Tensor], path: str | Path) -> None:
    """Build the architecture on the meta device (no memory) and refuse metadata that asks for
    a network far larger than the tensors in the file (a memory bomb by arch_kwargs)."""
    with torch.device("meta"):
        probe = zoo.create(arch, **kwargs)
    wanted = sum(p.numel() for p in probe.parameters())
    held = sum(t.numel() for t in tensors.values())
    if wanted > 2 * held + 100_000:
        raise CheckpointError(
            f"{path}: metadata describes a {arch} with {wanted:,} parameters but the file holds only "
            f"{held:,} values: the file is corrupt or forged"
        )


#: Head kinds a checkpoint may name -> classes with ``from_config(config, state_dict)``.
#: The package defining a head kind fills it (:func:`register_head`), so ``models/`` does
#: not import ``heads/``; the built-in prototype heads register themselves when
#: :data:`BUILTIN_HEADS` is imported, which loading does on first need.
HEAD_CLASSES: dict[str, Any] = {}
BUILTIN_HEADS = "kmtools.heads"


def register_head(kind: str, cls: Any) -> None:
    """Make checkpoints with head kind ``kind`` loadable: ``cls.from_config(config, state)``."""
    HEAD_CLASSES[kind] = cls


def _prototype_head(kind: str, cfg: dict[str, Any], tensors: dict[str, torch.Tensor], path: str | Path) -> nn.Module:
    if kind not in HEAD_CLASSES:
        import importlib

        importlib.import_module(BUILTIN_HEADS)  # registers the built-in kinds
    if kind not in HEAD_CLASSES:
        raise CheckpointError(f"{path}: unknown head kind {kind!r} (known: {', '.join(HEAD_CLASSES)})")
    state = {k[len("head."):]: v for k, v in tensors.items() if k.startswith("head.")}
    built: nn.Module = HEAD_CLASSES[kind].from_config(cfg, state)
    return built


def save_model(model: KmModel, path: str | Path, force: bool = False, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model`` in kmtools format: safetensors + JSON metadata (arch, classes,
    normalisation, head kind and config, centroids in the tensors)."""
    from safetensors.torch import save_file

    from kmtools.io import write_with

    if model.arch is None:
        raise ConfigError(
            "this model has no known architecture, so it cannot be saved in kmtools format: "
            "load it with --arch, or export it to .pt2/ONNX instead"
        )
    meta = model.meta()
    cfg = getattr(model.head, "config", None)
    meta["head_config"] = cfg() if callable(cfg) else {}
    meta["format"] = FORMAT
    if extra:
        meta.update(extra)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    for k, v in tensors.items():
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise CheckpointError(f"refusing to save: tensor {k!r} holds NaN or Inf")
    text = json.dumps(meta, default=_json_safe)
    header = {"kmtools": text, "format": FORMAT, "sha256": digest(tensors, text)}

    def writer(tmp: Path) -> None:
        save_file(tensors, str(tmp), metadata=header)
        _sort_metadata(tmp)

    return write_with(path, writer, force)


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
