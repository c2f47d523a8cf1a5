"""Safe checkpoint loading, readable state-dict checks and file hashing.

Loading (:func:`load_checkpoint`) never runs code from a checkpoint:

1. ``torch.load(path, weights_only=True)``: torch's own restricted unpickler. Every released
   FOMM checkpoint and the MS-Sync ``{'checkpoints': ..., 'steps': ...}`` layouts load this way.
2. If torch refuses the file (the MS-Sync ``trainer.save()`` full layout also pickles the training
   ``DataLoader``s, optimizers and schedulers, see fixture README section 5), it is read again with
   :class:`RestrictedUnpickler` passed to ``torch.load`` as its ``pickle_module``. That unpickler
   resolves only the globals of :func:`allowed_globals` (tensor/storage rebuild functions,
   ``OrderedDict``, ``torch.Size``, dtypes, devices, builtin containers). Every other global, such
   as ``torch.utils.data.DataLoader`` or an exploit's ``posix.system``, ``builtins.exec``/``eval``,
   ``getattr``, ``__import__`` or ``subprocess.Popen``, is never imported: it becomes an inert
   :class:`UnloadedObject` class. Calling it (pickle REDUCE), instantiating it (NEWOBJ), setting
   its state (BUILD) or adding items to it only records the arguments in another
   :class:`UnloadedObject`. Tensors load normally, both in the zip format and in torch's legacy
   (pre-1.6, non-zip) format. A warning is logged (``logging``, logger ``talkhead.checkpoints``)
   naming the replaced globals.
3. Placeholders are tolerated only for what a training dump legitimately holds: globals of
   :data:`TRAINER_NAMESPACES` (``torch.*`` such as ``torch.utils.data.DataLoader``, ``numpy.*``,
   ``collections.*``, the reference repositories' own packages such as ``dataset.*``/``nets.*``)
   and builtin data types. Any other global (``posix.system``, ``builtins.eval``/``exec``/
   ``getattr``/``__import__``, ``subprocess.*``, an unknown module) means the file was tampered
   with or is not a checkpoint: it is refused with a :class:`~talkhead.errors.CheckpointError`,
   nothing of it is returned, and unpickling stops at that global (it is never imported).

:func:`require_finite` rejects state dicts holding NaN or Inf weights (a damaged or diverged
checkpoint); :func:`file_digests` hashes a file once for several algorithms.

Errors are :class:`~talkhead.errors.CheckpointError` with one readable line (file, what is wrong,
the decoder's short reason); the underlying exception is kept as ``__cause__``.

:func:`load_state_dict_checked` compares keys and shapes before a strict ``load_state_dict`` and
raises :class:`~talkhead.errors.StateDictMismatchError` listing the missing, unexpected and
wrong-shape keys (see :func:`state_dict_diff` and :meth:`StateDictDiff.report`).
"""
from __future__ import annotations

import _compat_pickle
import collections
import contextlib
import functools
import hashlib
import logging
import os
import pickle
import types
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch

from .errors import CheckpointError, StateDictMismatchError

__all__ = [
    "UnloadedObject",
    "RefusedGlobal",
    "RestrictedUnpickler",
    "StateDictDiff",
    "ShapeMismatch",
    "TRAINER_NAMESPACES",
    "allowed_globals",
    "file_digests",
    "state_dict_shapes",
    "strip_key_prefix",
    "load_checkpoint",
    "require_finite",
    "load_state_dict_checked",
    "state_dict_diff",
]

logger = logging.getLogger(__name__)

MapLocation = Union[str, torch.device, Mapping[str, str], None]


# ------------------------------------------------------------------------------------------------
# inert placeholders
# ------------------------------------------------------------------------------------------------
class UnloadedObject:
    """Inert stand-in for a pickled global that is not on the allow-list, and for anything built
    from one.

    The restricted unpickler hands out a fresh *subclass* per global (``cls.module``,
    ``cls.name``), so pickle's NEWOBJ opcode (which needs a class) works too. Nothing is ever
    imported or called: constructing, calling, ``__setstate__``, ``__setitem__``, ``append`` and
    ``extend`` only record their arguments.

    Attributes (instances):
        module, name: the global it stands for (e.g. ``"posix"``, ``"system"``).
        args, kwargs: arguments of the call/instantiation that produced it.
        called_on: the :class:`UnloadedObject` that was called to produce it, or ``None``.
        state: the pickled state (BUILD), or ``None``.
        items: ``(key, value)`` pairs set on it; ``appended``: values appended to it.
    """

    module: str = "?"
    name: str = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> "UnloadedObject":
        self = object.__new__(cls)
        object.__setattr__(self, "args", args)
        object.__setattr__(self, "kwargs", kwargs)
        object.__setattr__(self, "called_on", None)
        object.__setattr__(self, "state", None)
        object.__setattr__(self, "items", [])
        object.__setattr__(self, "appended", [])
        return self

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # recorded by __new__
        pass

    def __call__(self, *args: Any, **kwargs: Any) -> "UnloadedObject":
        out = type(self).__new__(type(self), *args, **kwargs)
        object.__setattr__(out, "called_on", self)
        return out

    def __setstate__(self, state: Any) -> None:
        object.__setattr__(self, "state", state)

    def __setitem__(self, key: Any, value: Any) -> None:
        self.items.append((key, value))

    def append(self, value: Any) -> None:
        self.appended.append(value)

    def extend(self, values: Any) -> None:
        if isinstance(values, (list, tuple)):
            self.appended.extend(values)
        else:
            self.appended.append(values)

    def __repr__(self) -> str:
        depth, obj = 0, self
        while obj.called_on is not None:
            depth, obj = depth + 1, obj.called_on
        return f"<UnloadedObject {self.module}.{self.name}{'(...)' * depth}>"


def _placeholder_class(module: str, name: str) -> type:
    return type("Unloaded:" + name, (UnloadedObject,), {"module": module, "name": name,
                                                        "__module__": __name__})


# ------------------------------------------------------------------------------------------------
# allow-list and restricted unpickler
# ------------------------------------------------------------------------------------------------
def _latin1_encode(obj: Any, encoding: str = "latin1", errors: str = "strict") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it for ``bytes``, limited to latin-1."""
    if not isinstance(obj, str) or encoding.replace("-", "").replace("_", "").lower() not in ("latin1", "iso88591"):
        raise pickle.UnpicklingError(f"refused _codecs.encode with encoding {encoding!r}")
    return obj.encode("latin-1", errors="strict")


def _py3_name(module: str, name: str) -> tuple[str, str]:
    """Python 3 name of a global that a protocol < 3 pickle wrote under its Python 2 name
    (``__builtin__.eval``, ``copy_reg``, ``commands.call`` for ``subprocess.call``), as
    ``pickle.Unpickler(fix_imports=True)`` maps it (``_compat_pickle``)."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


@functools.lru_cache(maxsize=1)
def allowed_globals() -> Mapping[tuple[str, str], Any]:
    """The globals the fallback unpickler resolves: ``{(module, name): object}``.

    Only constructors of data: ``collections.OrderedDict``; ``torch._utils._rebuild_tensor``,
    ``_rebuild_tensor_v2``, ``_rebuild_tensor_v3``, ``_rebuild_parameter``,
    ``_rebuild_parameter_with_state``; ``torch.nn.Parameter``, ``torch.Size``, ``torch.device``,
    every ``torch.<dtype>``; builtins ``set``, ``frozenset``, ``bytearray``, ``complex``, ``slice``,
    ``range``; ``_codecs.encode`` restricted to latin-1 (how protocol 2 stores ``bytes``).
    Storage classes (``torch.FloatStorage`` ...) are resolved by ``torch.load`` itself.
    """
    import torch._utils as tu

    allowed: dict[tuple[str, str], Any] = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch.nn.parameter", "Parameter"): torch.nn.Parameter,
        ("torch", "Size"): torch.Size,
        ("torch", "device"): torch.device,
        ("_codecs", "encode"): _latin1_encode,
    }
    for name in ("_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_parameter",
                 "_rebuild_parameter_with_state"):
        if hasattr(tu, name):
            allowed[("torch._utils", name)] = getattr(tu, name)
    for name in dir(torch):
        value = getattr(torch, name, None)
        if isinstance(value, torch.dtype):
            allowed[("torch", name)] = value
    for cls in (set, frozenset, bytearray, complex, slice, range):
        allowed[("builtins", cls.__name__)] = cls
    return types.MappingProxyType(allowed)


TRAINER_NAMESPACES = ("torch", "numpy", "collections", "dataset", "nets", "metrics", "fomm", "modules",
                      "sync_batchnorm", "frames_dataset", "logger", "augmentation")
"""Top-level modules whose globals may appear in a training dump and become inert placeholders:
torch (``torch.utils.data`` DataLoaders, samplers, optimizers), numpy arrays, ``collections``
containers, and the packages of the reference repositories that pickle them (HMo-audio's
``dataset``, ``nets``, ``metrics``, ``fomm``; first-order-model's ``modules``, ``sync_batchnorm``,
``frames_dataset``, ``logger``, ``augmentation``)."""

_INERT_BUILTINS = frozenset({"list", "dict", "tuple", "int", "float", "str", "bool", "bytes", "object"})
"""Builtin data types tolerated as placeholders (e.g. a ``defaultdict(list)`` factory)."""


def _tolerated(module: str, name: str) -> bool:
    """Whether a global off the allow-list may become an inert placeholder instead of being refused."""
    if module == "builtins":
        return name in _INERT_BUILTINS
    return module.split(".", 1)[0] in TRAINER_NAMESPACES


class RefusedGlobal(pickle.UnpicklingError):
    """Raised by :class:`RestrictedUnpickler` at a global that no checkpoint has a reason to hold.

    Attributes:
        qualified: ``"module.name"`` of the global (e.g. ``"posix.system"``).
    """

    def __init__(self, qualified: str):
        super().__init__(f"refused global {qualified}")
        self.qualified = qualified


class RestrictedUnpickler(pickle.Unpickler):
    """A ``pickle.Unpickler`` that imports and calls nothing outside :func:`allowed_globals`.

    Globals off the list that a training dump may hold (:data:`TRAINER_NAMESPACES`, builtin data
    types) resolve to a fresh :class:`UnloadedObject` subclass (nothing is imported); their
    ``"module.name"`` is added to ``_replaced_sink`` when a subclass sets one (see
    :func:`_restricted_pickle_module`). Any other global raises :class:`RefusedGlobal` at once.
    Python 2 names (``__builtin__``, ``copy_reg``, ``commands``) that protocol-2 pickles use are
    mapped to their Python 3 names first.
    """

    _replaced_sink: Optional[set] = None

    def find_class(self, module: str, name: str) -> Any:  # noqa: D102 - pickle API
        module, name = _py3_name(module, name)
        obj = allowed_globals().get((module, name))
        if obj is not None:
            return obj
        qualified = f"{module}.{name}"
        if not _tolerated(module, name):
            raise RefusedGlobal(qualified)
        if self._replaced_sink is not None:
            self._replaced_sink.add(qualified)
        return _placeholder_class(module, name)


def _restricted_pickle_module(replaced: set) -> types.ModuleType:
    """A stand-in ``pickle`` module for ``torch.load(pickle_module=...)`` whose unpickler is
    restricted and reports replaced globals into ``replaced``."""

    class _Unpickler(RestrictedUnpickler):
        _replaced_sink = replaced

    mod = types.ModuleType("talkhead_restricted_pickle")
    mod.Unpickler = _Unpickler
    mod.UnpicklingError = pickle.UnpicklingError

    def load(file, **kwargs):
        return _Unpickler(file, **kwargs).load()

    mod.load = load
    return mod


# ------------------------------------------------------------------------------------------------
# loading
# ------------------------------------------------------------------------------------------------
def _first_line(exc: BaseException, limit: int = 200) -> str:
    """First line (first sentence if long) of an exception's text, without torch's advice."""
    text = str(exc).strip()
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1].strip()
    line = text.splitlines()[0].strip() if text else type(exc).__name__
    if len(line) > limit and ". " in line:
        line = line.split(". ", 1)[0]
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _describe_failure(path: Path, exc: BaseException) -> str:
    text = str(exc)
    if isinstance(exc, EOFError) or "truncated" in text or "Ran out of input" in text:
        what = "the file ends early (truncated, e.g. an incomplete download)"
    elif zipfile.is_zipfile(path) or "zip archive" in text or "PytorchStreamReader" in text:
        what = "the zip archive is corrupt or truncated"
    elif isinstance(exc, pickle.UnpicklingError) or "magic number" in text:
        what = "it is not a PyTorch checkpoint"
    else:
        what = "it could not be decoded"
    return f"cannot read checkpoint {path}: {what} ({type(exc).__name__}: {_first_line(exc)})"


@contextlib.contextmanager
def _quiet_torch_load():
    """Silence torch's protocol-version UserWarning (the outcome is reported by our own log)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
        yield


def _is_zip_format(path: Path) -> bool:
    """Whether ``path`` starts like torch's zip serialization format (a local zip file header)."""
    try:
        with open(path, "rb") as fh:
            return fh.read(4) == b"PK\x03\x04"
    except OSError:
        return False


def load_checkpoint(path: Union[str, os.PathLike], *, map_location: MapLocation = "cpu", mmap: bool = False) -> Any:
    """Load a PyTorch checkpoint without running code from it.

    Tries ``torch.load(path, map_location, weights_only=True)``; if torch refuses the file, loads
    it with :class:`RestrictedUnpickler` (trainer objects off :func:`allowed_globals` become inert
    :class:`UnloadedObject` s) and logs a warning. Zip and legacy (non-zip) formats both work.

    Args:
        path: a ``torch.save`` file (e.g. FOMM ``vox-adv-cpk.pth.tar``, MS-Sync ``model_chkpt.pt``).
        map_location: where tensors go, as for ``torch.load`` (default ``"cpu"``: a checkpoint
            saved on a GPU loads on a CPU-only machine).
        mmap: for a zip-format file, map it instead of reading it (``torch.load(mmap=True)``): CPU
            tensors are views of a private (copy-on-write) mapping of the file, read from disk only
            where touched, and the memory is the page cache's, returned when the last tensor goes.
            For a caller that copies what it needs (``load_state_dict``) and drops the rest soon: the
            file must not be rewritten in place while they live. The values are the same as without;
            legacy (non-zip) files are read as usual.

    Returns:
        The unpickled object, typically a dict of state dicts (``OrderedDict[str, Tensor]``).

    Raises:
        CheckpointError: the file is missing, not a file, empty, truncated, corrupt or not a
            PyTorch checkpoint, or it references a callable outside the allow-list that no
            training dump holds (``posix.system``, ``builtins.eval``...: tampered with); the
            message is one readable line naming the file.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint path is not a file: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"cannot read checkpoint {path}: the file is empty")
    mmap = bool(mmap) and _is_zip_format(path)
    try:
        with _quiet_torch_load():
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception as exc:
        first = exc

    replaced: set[str] = set()
    try:
        with _quiet_torch_load():
            result = torch.load(path, map_location=map_location, pickle_module=_restricted_pickle_module(replaced),
                                mmap=mmap)
    except (MemoryError, KeyboardInterrupt):
        raise
    except RefusedGlobal as exc:
        raise CheckpointError(f"refused checkpoint {path}: it references {exc.qualified}, a callable no checkpoint "
                              "has a reason to hold (tampered with, or not a checkpoint); nothing of it was "
                              "loaded") from exc
    except Exception as exc:
        message = _describe_failure(path, exc)
        if isinstance(first, pickle.UnpicklingError) and "Weights only load failed" in str(first) \
                and not isinstance(exc, (EOFError, pickle.UnpicklingError)):
            message += f"; weights_only=True refused it: {_first_line(first)}"
        raise CheckpointError(message) from exc
    logger.warning(
        "%s: torch.load(weights_only=True) refused it (%s); loaded with the restricted unpickler. "
        "%d global(s) were not imported and became inert placeholders: %s",
        path, _first_line(first), len(replaced), ", ".join(sorted(replaced)) or "none")
    return result


# ------------------------------------------------------------------------------------------------
# state-dict checks
# ------------------------------------------------------------------------------------------------
Shape = tuple[int, ...]


@dataclass(frozen=True)
class ShapeMismatch:
    """One key whose tensor shape differs: ``expected`` (the model) vs ``found`` (the checkpoint);
    ``found`` is ``None`` when the checkpoint holds no tensor there (``found_type`` says what)."""

    key: str
    expected: Shape
    found: Optional[Shape]
    found_type: str = "Tensor"

    def describe(self) -> str:
        """One line: ``"<key>: model expects (a, b), checkpoint has (c, d)"`` (or the non-tensor type)."""
        got = _fmt_shape(self.found) if self.found is not None else f"a {self.found_type}, not a tensor"
        return f"{self.key}: model expects {_fmt_shape(self.expected)}, checkpoint has {got}"


def _fmt_shape(shape: Shape) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


@dataclass(frozen=True)
class StateDictDiff:
    """Differences between a model's expected state dict and a checkpoint's.

    Attributes:
        missing: keys the model has and the checkpoint lacks (model order).
        unexpected: keys the checkpoint has and the model lacks (checkpoint order).
        wrong_shape: keys present in both with different shapes (model order).
        num_expected, num_found: entry counts of both sides.
    """

    missing: tuple[str, ...]
    unexpected: tuple[str, ...]
    wrong_shape: tuple[ShapeMismatch, ...]
    num_expected: int
    num_found: int

    @property
    def count(self) -> int:
        """Total number of differing keys."""
        return len(self.missing) + len(self.unexpected) + len(self.wrong_shape)

    def __bool__(self) -> bool:
        return self.count > 0

    def report(self, what: str = "state dict", limit: int = 10) -> str:
        """A readable multi-line report; each list shows at most ``limit`` keys then "... and N more".

        The first line is a summary: ``"<what>: the checkpoint does not match the model:
        2 missing, 1 unexpected, 1 wrong shape (model has 112 entries, checkpoint has 111)"``.
        """
        parts = []
        if self.missing:
            parts.append(f"{len(self.missing)} missing")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected")
        if self.wrong_shape:
            parts.append(f"{len(self.wrong_shape)} wrong shape")
        if not parts:
            return f"{what}: the checkpoint matches the model ({self.num_expected} entries)"
        lines = [f"{what}: the checkpoint does not match the model: {', '.join(parts)} "
                 f"(model has {self.num_expected} entries, checkpoint has {self.num_found})"]

        def section(title: str, items: list[str]) -> None:
            if not items:
                return
            lines.append(f"  {title} ({len(items)}):")
            lines.extend(f"    {item}" for item in items[:limit])
            if len(items) > limit:
                lines.append(f"    ... and {len(items) - limit} more")

        section("missing from the checkpoint", list(self.missing))
        section("unexpected in the checkpoint", list(self.unexpected))
        section("wrong shape", [m.describe() for m in self.wrong_shape])
        hint = self._hint()
        if hint:
            lines.append(f"  hint: {hint}")
        return "\n".join(lines)

    def _hint(self) -> Optional[str]:
        if self.unexpected and self.missing:
            stripped = {k[len("module."):] for k in self.unexpected if k.startswith("module.")}
            if set(self.missing) <= stripped:
                return ("the checkpoint's keys carry a 'module.' prefix (saved from DataParallel/"
                        "DistributedDataParallel); strip it before loading")
        if self.missing and 0 < self.num_found <= 12 and len(self.unexpected) == self.num_found:
            return (f"the checkpoint has no key in common with the model, only {self.num_found} "
                    f"entries ({', '.join(self.unexpected)}): is this a whole checkpoint instead of "
                    "one of its state dicts?")
        return None


def state_dict_shapes(module: torch.nn.Module) -> dict[str, Shape]:
    """``{key: shape}`` of ``module.state_dict()`` in its order, buffers included: the expected
    listing :func:`state_dict_diff` compares a checkpoint with (build ``module`` on the ``meta``
    device to get it without memory)."""
    return {key: tuple(int(s) for s in value.shape) for key, value in module.state_dict().items()}


def _shape_of(value: Any) -> Optional[Shape]:
    shape = getattr(value, "shape", None)
    if shape is not None and not isinstance(value, UnloadedObject):
        try:
            return tuple(int(s) for s in shape)
        except TypeError:
            return None
    if isinstance(value, (tuple, list)) and all(isinstance(s, int) for s in value):
        return tuple(value)
    return None


def state_dict_diff(expected: Mapping[str, Any], found: Mapping[str, Any]) -> StateDictDiff:
    """Compare keys and shapes of two state dicts.

    Args:
        expected: the model's layout, ``{key: shape}`` where a shape is a tensor, ``torch.Size`` or
            tuple of ints (e.g. ``module.state_dict()`` or a layout read from JSON).
        found: the checkpoint's state dict, ``{key: tensor}`` (shapes/tuples also accepted).

    Returns:
        :class:`StateDictDiff` (falsy when keys and shapes agree). A value in ``found`` that is
        not a tensor counts as a wrong shape.

    Raises:
        TypeError: a value of ``expected`` is neither a tensor nor a shape (a programming error).
    """
    found_keys = set(found)
    expected_keys = set(expected)
    missing = tuple(k for k in expected if k not in found_keys)
    unexpected = tuple(k for k in found if k not in expected_keys)
    wrong = []
    for key, exp in expected.items():
        if key not in found_keys:
            continue
        exp_shape = _shape_of(exp)
        if exp_shape is None:
            raise TypeError(f"state_dict_diff: expected[{key!r}] is not a shape or tensor")
        value = found[key]
        got = _shape_of(value)
        if got != exp_shape:
            wrong.append(ShapeMismatch(key, exp_shape, got, type(value).__name__))
    return StateDictDiff(missing, unexpected, tuple(wrong), len(expected), len(found))


def load_state_dict_checked(module: torch.nn.Module, state_dict: Mapping[str, Any], what: str) -> None:
    """Strictly load ``state_dict`` into ``module`` after checking every key and shape.

    Args:
        module: the model (its ``state_dict()`` gives the expected keys and shapes, buffers
            included, e.g. BatchNorm ``num_batches_tracked``).
        state_dict: ``{key: tensor}`` from a checkpoint.
        what: a name for messages, e.g. ``"FOMM generator"``.

    Raises:
        StateDictMismatchError: ``state_dict`` is not a mapping, or keys/shapes differ (the message
            is :meth:`StateDictDiff.report`), or ``load_state_dict`` still fails (e.g. a dtype that
            cannot be copied).
    """
    if not isinstance(state_dict, Mapping):
        raise StateDictMismatchError(
            f"{what}: expected a state dict (a mapping of parameter names to tensors), "
            f"got {type(state_dict).__name__}")
    diff = state_dict_diff(module.state_dict(), state_dict)
    if diff:
        raise StateDictMismatchError(diff.report(what))
    try:
        module.load_state_dict(state_dict, strict=True)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise StateDictMismatchError(f"{what}: load_state_dict failed: {_first_line(exc, 500)}") from exc


def file_digests(path: Union[str, os.PathLike], algorithms: tuple[str, ...] = ("sha256",)) -> dict[str, str]:
    """Hex digests of a file's bytes for each of ``algorithms`` (``hashlib`` names, e.g.
    ``("sha256", "md5")``), computed in one pass, read in 1 MiB blocks (constant memory;
    speed measured: ``benchmarks/README.md``, "Checkpoint checks").

    Returns:
        ``{algorithm: lowercase hex digest}``, one entry per name in ``algorithms``.

    Raises:
        CheckpointError: the file is missing or unreadable.
    """
    path = Path(path)
    digests = {name: hashlib.new(name) for name in algorithms}
    try:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                for digest in digests.values():
                    digest.update(block)
    except FileNotFoundError:
        raise CheckpointError(f"cannot hash {path}: file not found") from None
    except OSError as exc:
        raise CheckpointError(f"cannot hash {path}: {exc.strerror or exc}") from exc
    return {name: digest.hexdigest() for name, digest in digests.items()}


def strip_key_prefix(state_dict: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """``state_dict`` with a leading ``prefix`` removed from every key that has it (DataParallel's
    ``"module."``, as the reference BasicSR ``load_network`` does); other keys unchanged."""
    if not prefix:
        return dict(state_dict)
    return {(k[len(prefix):] if isinstance(k, str) and k.startswith(prefix) else k): v for k, v in state_dict.items()}


def require_finite(state_dict: Mapping[str, Any], path: Union[str, os.PathLike], what: str) -> None:
    """Check that every floating-point tensor of ``state_dict`` is finite (no NaN, no Inf).

    Non-floating entries (integer buffers such as BatchNorm ``num_batches_tracked``, placeholders)
    are skipped, and so is a ``state_dict`` that is not a mapping (the layout check reports it). Cost:
    one ``torch.isfinite`` pass over the weights (measured: ``benchmarks/README.md``, "Checkpoint checks").

    Args:
        state_dict: ``{key: tensor}`` from a checkpoint, e.g. ``checkpoint["generator"]``.
        path: the checkpoint file, for the message.
        what: which state dict, for the message (``"generator"``, ``"checkpoints"``).

    Raises:
        CheckpointError: naming the file, the state dict and the first tensor that holds a
            non-finite value, with the count of bad values in it.
    """
    if not isinstance(state_dict, Mapping):
        return
    for key, value in state_dict.items():
        if isinstance(value, torch.Tensor) and (value.is_floating_point() or value.is_complex()):
            finite = torch.isfinite(value)
            if not bool(finite.all()):
                bad = int(finite.numel() - int(finite.sum()))
                raise CheckpointError(f"{path}: {what} tensor {key!r} {tuple(value.shape)} holds {bad} non-finite "
                                      "value(s) (NaN or Inf): the checkpoint is damaged or from a diverged run")
