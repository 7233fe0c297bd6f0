"""A user's own model class: ``--arch path/to/file.py:Class`` or ``--arch package.module:Class``.

Importing a user's file runs its code, so it happens only when the user asks for it:

* ``--arch FILE.py:Class`` (or ``module:Class``) on the command line names the code to run;
* a kmtools file whose metadata names user code (saved by ``tailor``/``export`` of such a
  model) loads only with that ``--arch`` given again or with ``trust_code`` (``--trust-code``).
  Without either it is refused with :class:`UntrustedCodeError`; it never imports silently.

The kmtools format records the reference with the file path relative to the checkpoint's
folder and the source file's sha256 (``meta["code"]``); with ``--trust-code`` the file found
there must still have that hash.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from kmtools.errors import ConfigError, UntrustedCheckpointError

#: Prefixes of architecture names that are not user code.
RESERVED = ("torchvision:", "timm:")
_IDENT = re.compile(r"^[A-Za-z_]\w*$")
_MODULE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


class UntrustedCodeError(UntrustedCheckpointError):
    """A file's metadata names Python code to import and the user did not allow it."""


@dataclass(frozen=True)
class CodeRef:
    """``file`` (absolute path) or ``module`` (dotted name), and the class name."""

    cls: str
    file: Path | None = None
    module: str | None = None

    @property
    def text(self) -> str:
        """The reference as an ``--arch`` value (absolute file path)."""
        return f"{self.file}:{self.cls}" if self.file is not None else f"{self.module}:{self.cls}"


def is_user_ref(arch: str | None) -> bool:
    """``FILE.py:Class`` or ``package.module:Class`` (not ``torchvision:``/``timm:``)."""
    if not arch or ":" not in arch or arch.startswith(RESERVED):
        return False
    target, _, cls = arch.rpartition(":")
    return bool(_IDENT.match(cls)) and (target.endswith(".py") or bool(_MODULE.match(target)))


def parse(arch: str, base: Path | None = None) -> CodeRef:
    """Parse an ``--arch`` value; a relative file path is taken from ``base`` (default: cwd)."""
    target, _, cls = arch.rpartition(":")
    if not _IDENT.match(cls) or not target:
        raise ConfigError(f"--arch {arch!r}: write FILE.py:ClassName or package.module:ClassName")
    if target.endswith(".py"):
        p = Path(target).expanduser()
        if not p.is_absolute():
            p = (base or Path.cwd()) / p
        return CodeRef(cls, file=p.resolve())
    if not _MODULE.match(target):
        raise ConfigError(f"--arch {arch!r}: {target!r} is neither a .py file nor a dotted module name")
    return CodeRef(cls, module=target)


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def source_file(ref: CodeRef) -> Path | None:
    """The ``.py`` file that defines ``ref`` (imports a module reference)."""
    if ref.file is not None:
        return ref.file
    try:
        found = inspect.getsourcefile(load_class(ref))
    except TypeError:  # a class built in C
        return None
    return Path(found).resolve() if found else None


def load_class(ref: CodeRef) -> type[nn.Module]:
    """Import the module or file of ``ref`` (this runs its code) and return the class."""
    if ref.file is not None:
        if not ref.file.is_file():
            raise ConfigError(f"--arch: model file {ref.file} does not exist: check the path before ':'")
        name = f"kmtools_user_{hashlib.sha256(str(ref.file).encode()).hexdigest()[:10]}_{ref.file.stem}"
        module = sys.modules.get(name)
        if module is None:
            spec = importlib.util.spec_from_file_location(name, ref.file)
            if spec is None or spec.loader is None:
                raise ConfigError(f"--arch: cannot import {ref.file} as Python code")
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module  # so deepcopy, dataclasses and pickling find the class
            try:
                spec.loader.exec_module(module)
            except Exception as exc:
                del sys.modules[name]
                raise ConfigError(
                    f"--arch: importing {ref.file} failed ({type(exc).__name__}: {_first(exc)}): fix that file"
                ) from exc
        where = str(ref.file)
    else:
        try:
            module = importlib.import_module(str(ref.module))
        except ImportError as exc:
            raise ConfigError(
                f"--arch: cannot import module {ref.module!r} ({_first(exc)}): install it or add its folder "
                "to PYTHONPATH, or give the file as FILE.py:Class"
            ) from exc
        where = f"module {ref.module}"
    cls = getattr(module, ref.cls, None)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        found = sorted(k for k, v in vars(module).items()
                       if isinstance(v, type) and issubclass(v, nn.Module) and v.__module__ == module.__name__)
        raise ConfigError(
            f"--arch: {where} has no nn.Module class {ref.cls!r} (its nn.Module classes: {', '.join(found) or 'none'})"
        )
    return cls


def build(ref: CodeRef, kwargs: dict[str, Any]) -> nn.Module:
    """``Class(**kwargs)`` with a one-line error when the arguments do not fit."""
    cls = load_class(ref)
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(
            f"{ref.cls}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())}) failed ({_first(exc)}): "
            "pass the constructor's arguments with --arch-kwargs '{\"name\": value}'"
        ) from exc


def accepts(ref: CodeRef, name: str) -> bool:
    """Whether the class's constructor takes a keyword ``name``."""
    try:
        params = inspect.signature(load_class(ref)).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def final_path(checkpoint: Path) -> Path:
    """Where a file ends up: ``kmtools.export`` stages its files one folder down."""
    if checkpoint.parent.name.startswith(".kmtools-export-"):
        return checkpoint.parent.parent / checkpoint.name
    return checkpoint


def record(arch: str, checkpoint: Path) -> tuple[str, dict[str, Any]]:
    """What a kmtools file stores for user code saved at ``checkpoint``: the ``arch`` text
    (a file path relative to the checkpoint's folder when it can be) and ``meta["code"]``."""
    ref = parse(arch)
    src = source_file(ref)
    info: dict[str, Any] = {"class": ref.cls, "sha256": sha256_of(src) if src else None}
    if ref.file is None:
        info["module"] = ref.module
        return arch, info
    folder = checkpoint.resolve().parent
    try:
        rel = Path(os.path.relpath(ref.file, folder)).as_posix()
    except ValueError:  # another drive on Windows
        rel = ref.file.as_posix()
    info["file"] = rel
    return f"{rel}:{ref.cls}", info


def resolve_saved(arch: str, code: dict[str, Any] | None, checkpoint: Path, *, given: str | None,
                  trust_code: bool) -> str:
    """The ``--arch`` reference to build a kmtools file whose metadata names user code.

    ``given`` (the user's own ``--arch``) wins when its class name matches; else
    ``trust_code`` allows the recorded reference, whose source must still hash to the
    recorded sha256. Otherwise the file is refused: nothing is imported.
    """
    saved = parse(arch, base=final_path(checkpoint.resolve()).parent)
    if given is not None and is_user_ref(given):
        ref = parse(given)
        if ref.cls != saved.cls:
            raise ConfigError(
                f"{checkpoint} was saved from class {saved.cls}, not {ref.cls}: pass --arch FILE.py:{saved.cls}"
            )
        return ref.text
    if not trust_code:
        raise UntrustedCodeError(
            f"{checkpoint} names Python code to import ({arch}); kmtools does not run it unasked: pass "
            f"--arch FILE.py:{saved.cls} (the file you trust) or --trust-code to import {arch}"
        )
    want = (code or {}).get("sha256")
    src = saved.file if saved.file is not None else source_file(saved)
    if want and src is not None and src.is_file() and sha256_of(src) != want:
        raise UntrustedCodeError(
            f"{src} changed since {checkpoint} was saved (sha256 differs), so --trust-code does not cover it: "
            f"pass --arch {src}:{saved.cls} to use it as it is now"
        )
    return saved.text


def _first(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:160]
