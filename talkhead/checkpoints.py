"""Safe checkpoint loading, readable state-dict checks and file hashing.

Loading (:func:`load_checkpoint`) never runs code from a checkpoint:

1. ``torch.load(path, weights_only=True)``: torch's own restricted unpickler. Every released
   FOMM checkpoint and the MS-Sync ``{'checkpoints': ..., 'steps': ...}`` layouts load this way.
2. If torch refuses the file (the MS-Sync ``trainer.save()`` full layout also pickles the training
   ``DataLoader``s, optimizers and schedulers, see fixture README section 5), it is read again with
   :class:`RestrictedUnpickler` passed to ``torch.load`` as its ``pickle_module``. That unpickler
   resolves only the globals of :func:`allowed_globals` (tensor/storage rebuild functions,
   ``OrderedDict``, ``torch.Size``, dtypes, devices, builtin containers built from pickled items). Every other global, such
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

Before either, the file's pickle is read once without its tensor data (``_scan_pickles``, no
allocation beyond the pickle itself): a constructor given a size (``bytearray(2_000_000_000)``, a
``set`` of a ``range``), a call (pickle REDUCE) of a tolerated function (``torch.hub.load(...)``) or a
tensor with more elements than its storage (a stride-0 view) is refused there, since torch's own
``weights_only`` unpickler would build them.

:func:`check_top_level` refuses top-level entries other than state dicts and scalars;
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
    "is_zip_format",
    "require_finite",
    "check_top_level",
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


_REDUCIBLE_NAMESPACES = ("numpy", "collections")
"""Namespaces whose functions a training dump legitimately calls while unpickling (pickle REDUCE):
numpy's ``_reconstruct``/``scalar``/``dtype``, ``collections.defaultdict``/``deque``."""


def _reducible(module: str, name: str) -> bool:
    """Whether pickle may *call* (REDUCE) the placeholder of ``module.name``: a class (a name starting
    with a capital, e.g. a DataLoader or sampler rebuilt through its reduce tuple) or a callable of
    :data:`_REDUCIBLE_NAMESPACES`. A call of any other tolerated function (``torch.hub.load(...)``,
    ``torch.load(...)``) is how an exploit is written, not how a tensor or a trainer object is."""
    return name[:1].isupper() or module.split(".", 1)[0] in _REDUCIBLE_NAMESPACES


class _PlaceholderMeta(type):
    """Metaclass of the placeholder classes: calling one (pickle REDUCE, not NEWOBJ which uses
    ``__new__``) is refused unless :func:`_reducible`."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        if not _reducible(cls.module, cls.name):
            raise RefusedGlobal(f"{cls.module}.{cls.name}", "called")
        return super().__call__(*args, **kwargs)


def _placeholder_class(module: str, name: str) -> type:
    return _PlaceholderMeta("Unloaded:" + name, (UnloadedObject,), {"module": module, "name": name,
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


def _bytearray(source: Any = b"", *args: Any) -> bytearray:
    """``bytearray`` as pickles use it (a copy of pickled bytes or latin-1 text, bounded by the file's
    size); ``bytearray(n)`` (``n`` zero bytes: 40 bytes of pickle for gigabytes) is refused."""
    if not isinstance(source, (bytes, str)):
        raise RefusedGlobal("builtins.bytearray", f"called with a {type(source).__name__} (a size)")
    return bytearray(source, *args)


def _bounded_container(kind: type) -> Any:
    def build(items: Any = ()) -> Any:
        if not isinstance(items, (list, tuple, set, frozenset)):
            raise RefusedGlobal(f"builtins.{kind.__name__}",
                                f"called with a {type(items).__name__} (only pickled items, not a generator)")
        return kind(items)

    build.__name__ = build.__qualname__ = kind.__name__
    return build


_set = _bounded_container(set)
_frozenset = _bounded_container(frozenset)


@functools.lru_cache(maxsize=1)
def allowed_globals() -> Mapping[tuple[str, str], Any]:
    """The globals the fallback unpickler resolves: ``{(module, name): object}``.

    Only constructors of data: ``collections.OrderedDict``; ``torch._utils._rebuild_tensor``,
    ``_rebuild_tensor_v2``, ``_rebuild_tensor_v3``, ``_rebuild_parameter``,
    ``_rebuild_parameter_with_state``; ``torch.nn.Parameter``, ``torch.Size``, ``torch.device``,
    every ``torch.<dtype>``; builtins ``complex``, ``slice``, and ``set``, ``frozenset``, ``bytearray``
    restricted to what a pickle holds (a list of items, bytes: never a size or a lazy ``range``, which
    is not resolved); ``_codecs.encode`` restricted to latin-1 (how protocol 2 stores ``bytes``).
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
    for cls in (complex, slice):
        allowed[("builtins", cls.__name__)] = cls
    allowed[("builtins", "set")] = _set
    allowed[("builtins", "frozenset")] = _frozenset
    allowed[("builtins", "bytearray")] = _bytearray
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

    def __init__(self, qualified: str, how: str = ""):
        super().__init__(f"refused global {qualified}" + (f" ({how})" if how else ""))
        self.qualified, self.how = qualified, how

    def describe(self) -> str:
        """What the file does, for a message: ``"references posix.system"``, ``"calls torch.hub.load"``."""
        if self.how == "called":
            return f"calls {self.qualified}"
        if self.how == "nested":
            return "nests its pickle too deeply"
        if self.how:
            return f"builds {self.qualified} {self.how}"
        return f"references {self.qualified}"


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
# dry scan: the pickle read without its tensor data, before anything is allocated
# ------------------------------------------------------------------------------------------------
class _StorageStub:
    """What a persistent storage id says (element count), instead of the storage's bytes."""

    def __init__(self, pid: Any):
        numel = pid[4] if isinstance(pid, tuple) and len(pid) > 4 else None
        self.numel = numel if isinstance(numel, int) and not isinstance(numel, bool) else None


class _TensorStub:
    """A tensor of the dry scan: its shape only."""

    def __init__(self, size: tuple):
        self.shape = size


def _tensor_extent(size: Any, stride: Any, offset: Any) -> tuple[int, int]:
    """``(numel, elements of storage needed)`` of a tensor view; ValueError on a malformed one."""
    if not (isinstance(size, (tuple, list)) and isinstance(stride, (tuple, list)) and len(size) == len(stride)
            and isinstance(offset, int) and offset >= 0
            and all(isinstance(v, int) and v >= 0 for v in (*size, *stride))):
        raise ValueError("a malformed tensor header")
    numel = 1
    for n in size:
        numel *= n
    if numel == 0:
        return 0, 0
    return numel, offset + sum((n - 1) * st for n, st in zip(size, stride)) + 1


def _scan_rebuild(storage: Any, offset: Any = 0, size: Any = (), stride: Any = (), *_: Any, **__: Any) -> _TensorStub:
    numel, needed = _tensor_extent(tuple(size), tuple(stride), offset)
    have = storage.numel if isinstance(storage, _StorageStub) else None
    if have is not None and (numel > have or needed > have):
        raise RefusedGlobal("torch._utils._rebuild_tensor",
                            f"for a {tuple(size)} tensor of {numel} elements over a storage of {have} "
                            "(a view repeating its data, e.g. stride 0)")
    return _TensorStub(tuple(size))


_SCAN_OVERRIDES: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor"): _scan_rebuild,
    ("torch._utils", "_rebuild_tensor_v2"): _scan_rebuild,
    ("torch._utils", "_rebuild_tensor_v3"): _scan_rebuild,
    ("torch._utils", "_rebuild_parameter"): lambda data, *a, **k: data,
    ("torch._utils", "_rebuild_parameter_with_state"): lambda data, *a, **k: data,
    ("torch.nn.parameter", "Parameter"): lambda data=None, *a, **k: data,
}


class _ScanUnpickler(RestrictedUnpickler):
    """The restricted unpickler with storages replaced by their element counts and tensor rebuilds
    by an extent check: reads a checkpoint's pickle without allocating its tensors."""

    def find_class(self, module: str, name: str) -> Any:  # noqa: D102 - pickle API
        key = _py3_name(module, name)
        if key in _SCAN_OVERRIDES:
            return _SCAN_OVERRIDES[key]
        return super().find_class(module, name)

    def persistent_load(self, pid: Any) -> Any:  # noqa: D102 - pickle API
        return _StorageStub(pid)


def _scan_pickles(path: Path) -> None:
    """Read the pickle(s) of the checkpoint at ``path`` with :class:`_ScanUnpickler` before torch
    does: a size-taking constructor, a call of a tolerated function or a tensor larger than its
    storage raises :class:`RefusedGlobal` here, before anything is allocated. Any other decoding
    problem is left to ``torch.load`` to report."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                names = [n for n in zf.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
                if not names:
                    return
                with zf.open(names[0]) as fh:
                    _ScanUnpickler(fh).load()
            return
        with open(path, "rb") as fh:  # legacy: magic number, protocol, sys info, then the object
            for _ in range(4):
                _ScanUnpickler(fh).load()
    except RefusedGlobal:
        raise
    except RecursionError as exc:
        raise RefusedGlobal("its pickle", "nested") from exc
    except Exception:  # noqa: BLE001 - torch.load describes a file it cannot decode
        return


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
    elif isinstance(exc, zipfile.BadZipFile) or any(
            s in text for s in ("zip archive", "PytorchStreamReader", "central directory", "CRC", "file not found")):
        what = "the zip archive is corrupt or truncated"  # the container itself, not what it holds
    elif zipfile.is_zipfile(path):
        what = "the zip archive opens but what it holds is not a valid checkpoint (damaged, tampered with, or " \
               "written by another program)"
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


def is_zip_format(path: Union[str, os.PathLike]) -> bool:
    """Whether ``path`` starts like torch's zip serialization format (a local zip file header)."""
    try:
        with open(path, "rb") as fh:
            return fh.read(4) == b"PK\x03\x04"
    except OSError:
        return False


def _refused(path: Path, exc: RefusedGlobal) -> CheckpointError:
    what = "a callable no checkpoint has a reason to hold" if not exc.how else \
        "what no checkpoint holds (it would allocate memory or run code out of proportion to the file)"
    return CheckpointError(f"refused checkpoint {path}: it {exc.describe()}, {what} (tampered with, or not a "
                           "checkpoint); nothing of it was loaded")


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
            training dump holds (``posix.system``, ``builtins.eval``...: tampered with), calls a
            tolerated function, builds a container of a given size, or holds a tensor larger than its
            storage; the message is one readable line naming the file.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint path is not a file: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"cannot read checkpoint {path}: the file is empty")
    mmap = bool(mmap) and is_zip_format(path)
    try:
        _scan_pickles(path)
    except RefusedGlobal as exc:
        raise _refused(path, exc) from exc
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
        raise _refused(path, exc) from exc
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


def load_state_dict_checked(module: torch.nn.Module, state_dict: Mapping[str, Any], what: str, *,
                            assign: bool = False) -> None:
    """Strictly load ``state_dict`` into ``module`` after checking every key and shape.

    Args:
        module: the model (its ``state_dict()`` gives the expected keys and shapes, buffers
            included, e.g. BatchNorm ``num_batches_tracked``).
        state_dict: ``{key: tensor}`` from a checkpoint.
        what: a name for messages, e.g. ``"FOMM generator"``.
        assign: make the checkpoint's tensors the module's (``load_state_dict(assign=True)``: no copy;
            a module built on the ``meta`` device gets real tensors), each cast to the module's dtype
            for that key where it differs (a copy for that tensor only).

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
    if assign:
        expected = module.state_dict()
        state_dict = {k: v.to(expected[k].dtype) if torch.is_tensor(v) and v.dtype != expected[k].dtype else v
                      for k, v in state_dict.items()}
    try:
        module.load_state_dict(state_dict, strict=True, assign=assign)
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


_FINITE_CHUNK = 1 << 22
"""Elements checked per ``torch.isfinite`` call: the check's scratch memory stays a few MB."""

TOP_LEVEL_SCALARS = (bool, int, float, str, type(None))
"""Types a checkpoint's top level may hold besides state dicts (``steps``, ``epoch``)."""


def check_top_level(data: Mapping[str, Any], path: Union[str, os.PathLike]) -> None:
    """Check that a checkpoint's top level holds only what checkpoints hold: state dicts (mappings,
    e.g. ``generator``, an optimizer's ``state_dict()``), scalars (``steps``, ``epoch``: strings up to
    1 KiB) and the inert placeholders of a training dump (pickled DataLoaders).

    Raises:
        CheckpointError: naming the file, the entry and its type (e.g. a ``bytearray`` or a ``set``
            beside the state dicts).
    """
    for key, value in data.items():
        if isinstance(value, (Mapping, UnloadedObject)) or (
                isinstance(value, TOP_LEVEL_SCALARS) and not (isinstance(value, str) and len(value) > 1024)):
            continue
        raise CheckpointError(f"{path}: top-level entry {key!r} is a {type(value).__name__}, not a state dict or a "
                              "scalar: a checkpoint holds nothing else (tampered with, or not a checkpoint)")


def require_finite(state_dict: Mapping[str, Any], path: Union[str, os.PathLike], what: str) -> None:
    """Check that every floating-point tensor of ``state_dict`` is finite (no NaN, no Inf), and that no
    tensor is larger than its storage.

    Non-floating entries (integer buffers such as BatchNorm ``num_batches_tracked``, placeholders)
    are skipped, and so is a ``state_dict`` that is not a mapping (the layout check reports it). Cost:
    one sum per tensor (NaN and Inf propagate through additions, so a finite sum proves every value
    finite); only a tensor whose sum is not finite (a bad value, or finite values summing past the
    float range) gets the exact ``torch.isfinite`` pass, :data:`_FINITE_CHUNK` elements at a time so no
    tensor-sized mask is built, which decides and counts (measured: ``benchmarks/README.md``,
    "Checkpoint checks").

    Args:
        state_dict: ``{key: tensor}`` from a checkpoint, e.g. ``checkpoint["generator"]``.
        path: the checkpoint file, for the message.
        what: which state dict, for the message (``"generator"``, ``"checkpoints"``).

    Raises:
        CheckpointError: naming the file, the state dict and the first tensor that holds a
            non-finite value, with the count of bad values in it; or a tensor with more elements
            than its storage (a stride-0 view: gigabytes of weights described by a few bytes).
    """
    if not isinstance(state_dict, Mapping):
        return
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            continue
        stored = value.untyped_storage().nbytes() // max(value.element_size(), 1)
        if value.numel() > stored:
            raise CheckpointError(f"{path}: {what} tensor {key!r} {tuple(value.shape)} has {value.numel()} elements "
                                  f"but its storage holds {stored} (a view repeating its data): refused")
        if not (value.is_floating_point() or value.is_complex()) or value.numel() == 0:
            continue
        if bool(torch.isfinite(value.sum()).all()):
            continue  # a NaN or an Inf makes the sum NaN or Inf: a finite sum means every value is finite
        flat = value.reshape(-1) if value.is_contiguous() else None
        bad = 0
        if flat is not None:
            for start in range(0, flat.numel(), _FINITE_CHUNK):
                part = flat[start:start + _FINITE_CHUNK]
                bad += int(part.numel() - int(torch.isfinite(part).sum()))
        else:
            rows = value.reshape(1, *value.shape) if value.dim() == 0 else value
            step = max(1, _FINITE_CHUNK // max(rows[0].numel(), 1))
            for start in range(0, rows.shape[0], step):
                part = rows[start:start + step]
                bad += int(part.numel() - int(torch.isfinite(part).sum()))
        if bad:
            raise CheckpointError(f"{path}: {what} tensor {key!r} {tuple(value.shape)} holds {bad} non-finite "
                                  "value(s) (NaN or Inf): the checkpoint is damaged or from a diverged run")
