"""Load and save models: the public entry (:func:`load_model`, :func:`save_model`).

Accepted: a state dict (``.pt``/``.pth``/``.safetensors``, ``{"state_dict": ...}`` wrappers,
``module.`` prefixes) with ``--arch`` (a zoo name, ``torchvision:NAME``, ``timm:NAME`` or the
user's ``FILE.py:Class``); TorchScript archives (scores only without ``--arch``; with it,
their state dict loads into the class); kmtools' own format (``.safetensors`` + JSON
metadata, no arch needed); a pickled whole ``nn.Module`` only with ``trust=True``.

The pieces live in :mod:`~kmtools.models.formats` (reading files safely),
:mod:`~kmtools.models.inputs` (input shape and normalisation) and
:mod:`~kmtools.models.usercode` (a user's own class, imported only when asked).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kmtools.errors import CheckpointError, ConfigError, KmtoolsError
from kmtools.models import usercode, zoo
from kmtools.models.core import GaussHead, KmModel, Normalize, split
from kmtools.models.formats import (  # noqa: F401  (re-exported: the historic names of this module)
    FORMAT,
    MAX_ZIP_RATIO,
    READABLE,
    _json_safe,
    _short,
    _sort_metadata,
    check_finite,
    digest,
    read_safetensors,
    read_state,
    unwrap_state_dict,
)
from kmtools.models.inputs import (  # noqa: F401  (re-exported)
    MAX_INPUT_ELEMENTS,
    NORM_PRESETS,
    any_size,
    arch_norm,
    check_shape,
    count_outputs,
    example,
    infer_in_channels,
    infer_in_features,
    probe_shape,
    resolve_norm,
)


def build(arch: str, **kwargs: Any) -> nn.Module:
    """Build ``arch``: a zoo/torchvision/timm name, or (imports it) a user's ``FILE.py:Class``."""
    if usercode.is_user_ref(arch):
        return usercode.build(usercode.parse(arch), kwargs)
    return zoo.create(arch, **kwargs)


def in_module_order(sd: Mapping[str, torch.Tensor], arch: str | None = None,
                    arch_kwargs: dict[str, Any] | None = None) -> dict[str, torch.Tensor]:
    """``sd`` with its keys in ``arch``'s module order (safetensors files come back sorted by
    name, where ``fc.weight`` precedes ``fc1.weight``); the architecture is built on the meta
    device, so this costs no memory. Unknown keys keep their order at the end."""
    if arch is None:
        return dict(sd)
    try:
        with torch.device("meta"):
            order = {k: i for i, k in enumerate(build(arch, **(arch_kwargs or {})).state_dict())}
    except Exception:
        return dict(sd)
    return dict(sorted(sd.items(), key=lambda kv: order.get(kv[0], len(order))))


def infer_num_classes(sd: Mapping[str, torch.Tensor], arch: str | None = None) -> int | None:
    """Output size of the last 2-D weight in module order (the usual head position)."""
    weights = [v for k, v in in_module_order(sd, arch).items() if k.endswith("weight") and v.dim() == 2]
    return int(weights[-1].shape[0]) if weights else None


def load_into(model: nn.Module, sd: Mapping[str, torch.Tensor], what: str = "checkpoint", hint: str = "") -> None:
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
            f"{what} does not fit the architecture: {', '.join(parts)}: {hint or 'check --arch/--num-classes'}"
        )
    model.load_state_dict(sd, strict=True)


def better_arch(sd: Mapping[str, torch.Tensor], arch: str, num_classes: int | None) -> str | None:
    """Another spelling of ``arch`` whose parameter names are exactly those of ``sd``: the
    CIFAR ``resnet18`` vs ``torchvision:resnet18`` vs ``timm:resnet18`` confusion."""
    base = arch.split(":", 1)[-1]
    candidates = [c for c in (base, f"torchvision:{base}", f"timm:{base}") if c != arch]
    keys = set(sd)
    for cand in candidates:
        if cand == base and base not in zoo._REGISTRY:
            continue
        try:
            with torch.device("meta"):
                net = zoo.create(cand, num_classes=num_classes)
        except Exception:  # not a model of that family, or timm absent
            continue
        if set(net.state_dict()) == keys:
            return cand
    return None


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
        backbone, head, path = split(net, example(input_shape), head_path)
    except RuntimeError as exc:
        raise CheckpointError(
            f"the model does not run on inputs of shape {tuple(input_shape)} ({_short(exc)}): "
            "check --arch or --input-shape"
        ) from exc
    return KmModel(
        backbone, head, Normalize(mean, std), arch=arch, arch_kwargs=arch_kwargs,
        classes=classes, input_shape=input_shape, head_path=path,
    )


def _flexible(arch: str | None) -> bool:
    """Architectures whose input size may follow the data (adaptive pooling is checked)."""
    return bool(arch) and (str(arch).startswith(("torchvision:", "timm:")) or usercode.is_user_ref(arch))


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
    arch_kwargs: Mapping[str, Any] | None = None,
    trust_code: bool = False,
) -> KmModel:
    """Load any supported checkpoint as a :class:`KmModel` on the CPU, in eval mode.

    ``arch_kwargs`` go to the architecture's constructor (``--arch-kwargs``); ``trust_code``
    allows importing the user code a kmtools file's metadata names (``--trust-code``).
    """
    if arch is not None and ":" in arch and not arch.startswith(usercode.RESERVED) and not usercode.is_user_ref(arch):
        usercode.parse(arch)  # raises the one-line message for a malformed FILE:Class
    obj, meta = read_state(path, trust=trust)
    m_mean, m_std = resolve_norm(mean, std)
    if "kmtools" in meta:
        try:
            model = _from_kmtools(obj, meta, path, given_arch=arch, trust_code=trust_code)
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
        model.norm_from = "kmtools file"
        if m_mean is not None:
            model.normalize = Normalize(m_mean, m_std)
            model.norm_from = "--norm/--mean/--std"
        if input_shape is not None:
            model.input_shape = tuple(int(v) for v in input_shape)
        return model.eval()
    if isinstance(obj, torch.jit.ScriptModule):
        if arch is None:
            return _opaque(obj, path, input_shape, num_classes, m_mean, m_std, classes)
        obj = obj.state_dict()
    if isinstance(obj, nn.Module):  # trusted pickle of a whole module
        return _whole_module(obj, path, arch, in_channels, input_shape, head, m_mean, m_std, classes)
    sd = unwrap_state_dict(obj)
    check_finite(sd)
    if arch is None:
        raise ConfigError(
            f"{path} is a plain state dict: name its architecture with --arch "
            f"({', '.join(zoo.names())})"
        )
    user = dict(arch_kwargs or {})
    if usercode.is_user_ref(arch):
        ref = usercode.parse(arch)
        arch = ref.text
        n: int | None = None
        kwargs = dict(user)
        if "num_classes" not in kwargs and usercode.accepts(ref, "num_classes"):
            n = num_classes or infer_num_classes(in_module_order(sd, arch, user))
            if n is not None:
                kwargs["num_classes"] = n
        net = usercode.build(ref, kwargs)
        load_into(net, sd, what=str(path), hint=f"check the class and --arch-kwargs of {ref.cls}")
        shape = tuple(input_shape) if input_shape else probe_shape(net, in_module_order(sd, arch, kwargs))
        clean = kwargs
    else:
        ordered = in_module_order(sd, arch)
        n = num_classes or infer_num_classes(ordered)
        kwargs = {"num_classes": n, "in_channels": in_channels}
        if in_channels is None and not arch.startswith("torchvision:"):
            kwargs["in_channels"] = infer_in_channels(ordered)
        if arch == "mlp":
            kwargs.pop("in_channels")
            kwargs["in_features"] = infer_in_features(ordered)
        kwargs.update(user)
        net = zoo.create(arch, **kwargs)
        better = better_arch(sd, arch, n)
        load_into(net, sd, what=str(path),
                  hint=f"the keys fit --arch {better}" if better else "check --arch/--num-classes")
        shape = tuple(input_shape) if input_shape else zoo.input_shape_of(arch, net, kwargs.get("in_channels"))
        if arch == "mlp":
            shape = tuple(input_shape) if input_shape else (kwargs["in_features"],)
        clean = {k: v for k, v in kwargs.items() if v is not None}
    source = "--norm/--mean/--std"
    if m_mean is None:
        m_mean, m_std, source = arch_norm(arch, n, net, shape[0] if len(shape) == 3 else None)
    model = wrap(net, arch=arch, arch_kwargs=clean, input_shape=shape, head_path=head,
                 mean=m_mean, std=m_std, classes=classes)
    model.norm_from = source
    if _flexible(arch) and input_shape is None:
        model.any_size = any_size(net, shape)
    return model.eval()


def norm_source(model: KmModel) -> str:
    """Where ``model``'s input normalisation came from (``inspect`` shows it): the options,
    the kmtools file, the architecture's convention (:func:`arch_norm`), or none."""
    norm = getattr(model, "normalize", None)
    if norm is None or not norm.active:
        return "none"
    return str(getattr(model, "norm_from", "checkpoint"))


def _whole_module(obj: nn.Module, path: str | Path, arch: str | None, in_channels: int | None,
                  input_shape: Sequence[int] | None, head: str | None, mean: Sequence[float] | None,
                  std: Sequence[float] | None, classes: Sequence[str] | None) -> KmModel:
    """A trusted pickle of a whole module; it can be saved when its class is importable."""
    cls = type(obj)
    shape: Sequence[int] | None = input_shape
    if shape is None and arch is not None and not usercode.is_user_ref(arch):
        shape = zoo.default_input_shape(arch, in_channels)
    if shape is None:
        obj.eval()
        shape = probe_shape(obj, obj.state_dict())
    ref: str | None = None
    if cls.__module__ not in ("__main__", "builtins") and not cls.__module__.startswith("kmtools_user_"):
        ref = f"{cls.__module__}:{cls.__qualname__}" if "." not in cls.__qualname__ else None
    model = wrap(obj, arch=ref, arch_kwargs={}, input_shape=shape, head_path=head,
                 mean=mean, std=std, classes=classes)
    if input_shape is None and (arch is None or _flexible(arch)):
        model.any_size = any_size(obj, shape)  # adaptive pooling: the size comes from the data
    return model.eval()


class _Opaque(nn.Module):
    """A TorchScript classifier kmtools cannot split (no ``--arch``): scores only."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x)
        return out


def _opaque(net: nn.Module, path: str | Path, input_shape: Sequence[int] | None, num_classes: int | None,
            mean: Sequence[float] | None, std: Sequence[float] | None,
            classes: Sequence[str] | None) -> KmModel:
    """TorchScript without ``--arch``: the backbone is the whole network, the head an identity.

    The input shape is ``--input-shape`` or probed (:func:`probe_shape`); the class count
    is ``--num-classes``, else the width of one forward pass's output. Commands that need
    penultimate features refuse such a model (see :func:`require_split`).
    """
    shape: Sequence[int] | None = input_shape
    if shape is None:
        try:
            shape = probe_shape(net, net.state_dict())
        except ConfigError:
            shape = None
    if classes is None:
        n = num_classes or count_outputs(net, shape)
        if n:
            classes = [str(i) for i in range(n)]
    model = KmModel(_Opaque(net), nn.Identity(), Normalize(mean, std), classes=classes,
                    input_shape=shape, head_path=None)
    if input_shape is None and shape is not None:
        model.any_size = any_size(net, shape)
    return model.eval()


def require_split(model: KmModel, command: str) -> None:
    if model.head_path is None and isinstance(model.head, nn.Identity):
        raise ConfigError(
            f"{command} needs the penultimate features, but this TorchScript model was loaded without "
            "--arch: pass --arch FILE.py:Class (or a zoo name) so its weights load into a splittable network"
        )


def _from_kmtools(tensors: dict[str, torch.Tensor], meta: dict[str, str], path: str | Path, *,
                  given_arch: str | None = None, trust_code: bool = False) -> KmModel:
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
    fmt = meta.get("format", FORMAT)
    if fmt not in READABLE:
        raise CheckpointError(
            f"{path} has format {fmt!r}, newer than this kmtools reads ({', '.join(READABLE)}): upgrade kmtools"
        )
    check_finite(tensors)
    arch = info.get("arch")
    if not arch or not isinstance(arch, str):
        raise CheckpointError(f"{path}: kmtools metadata names no architecture")
    if usercode.is_user_ref(arch):  # refused here, before anything is imported, unless allowed
        arch = usercode.resolve_saved(arch, info.get("code"), Path(path), given=given_arch, trust_code=trust_code)
    kwargs = dict(info.get("arch_kwargs") or {})
    _check_size(arch, kwargs, tensors, path)
    net = build(arch, **kwargs)
    shape = check_shape(info.get("input_shape") or zoo.input_shape_of(arch, net, kwargs.get("in_channels")),
                        str(path))
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
    model.any_size = bool(info.get("any_size", False))
    return model


def _check_size(arch: str, kwargs: dict[str, Any], tensors: Mapping[str, torch.Tensor], path: str | Path) -> None:
    """Build the architecture on the meta device (no memory) and refuse metadata that asks for
    a network far larger than the tensors in the file (a memory bomb by arch_kwargs)."""
    with torch.device("meta"):
        probe = build(arch, **kwargs)
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
    normalisation, head kind and config, centroids in the tensors). A user class is recorded
    by its file path relative to ``path``'s folder and the file's sha256 (``meta["code"]``)."""
    from safetensors.torch import save_file

    from kmtools.io import write_with

    if model.arch is None:
        raise ConfigError(
            "this model has no known architecture, so it cannot be saved in kmtools format: "
            "load it with --arch (a zoo name or FILE.py:Class), or export it to .pt2/ONNX instead"
        )
    meta = model.meta()
    cfg = getattr(model.head, "config", None)
    meta["head_config"] = cfg() if callable(cfg) else {}
    meta["format"] = FORMAT
    if model.any_size:
        meta["any_size"] = True
    if usercode.is_user_ref(model.arch):
        meta["arch"], meta["code"] = usercode.record(model.arch, usercode.final_path(Path(path)))
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
