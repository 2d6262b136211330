"""Stable content fingerprints of models, transforms and datasets: the keys of on-disk caches.

A :class:`Fingerprint` is a BLAKE2b-256 digest of a canonical walk over an object graph. Every
value is fed with a type tag and its length, so that different structures never feed the same
bytes. What is walked:

- numbers, strings, bytes, enums, dtypes: their value; paths: as their text;
- tensors and arrays: dtype, shape and every byte of their content; PIL images: mode, size,
  pixels; random generators (numpy, torch, ``random``): their state;
- lists, tuples, dicts, sets, ``functools.partial``: their items;
- functions and lambdas: qualified name, bytecode, constants, defaults and closure values (so
  two different ``torchvision.transforms.Lambda`` objects, whose ``repr`` is the same
  ``Lambda()``, differ); bound methods: the function and its object;
- ``nn.Module``: class, ``training`` flag, parameters, buffers, forward (pre-)hooks, submodules
  and every other attribute (kernel sizes, strides, ...);
- datasets (``torch.utils.data.Dataset``): all attributes, plus the path, size and modification
  time (with ``hash_files``, also the BLAKE2b of the bytes) of every file they list in
  ``samples`` / ``imgs`` (torchvision's ``DatasetFolder`` and ``ImageFolder``), ``files``
  (pytorch-ood's image datasets) or ``_image_files`` (several torchvision datasets), relative
  names resolved against ``basedir`` or ``root``;
- any other object: its class and its attributes (``__dict__`` and ``__slots__``).

An object that has none of these and whose ``repr`` contains a memory address cannot be
described stably; it is recorded in :attr:`Fingerprint.unstable`, and a cache must then not be
used (its key would differ in every process). torchvision's random transforms met on the way
(``Random*``, ``ColorJitter``, ``RandAugment``, ...) are recorded in :attr:`Fingerprint.random`.
Not covered: the source code of methods called through a class (e.g. a transform's
``__call__``) and module-level globals that functions read.

:func:`keyed_by_attributes` tells whether a dataset's attributes determine its samples (it lists
its files or holds its data); only then does its fingerprint stand for its content.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import os
import random
import re
import types
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import ConcatDataset, Dataset, Subset, TensorDataset

__all__ = ["Fingerprint", "dataset_files", "keyed_by_attributes", "qualified_name"]

_ADDRESS = re.compile(r"0x[0-9a-fA-F]{4,}")
_PRIMITIVES = (type(None), bool, int, float, complex, str, bytes)
# nn.Module's own bookkeeping; the parts that change outputs are fed explicitly
_MODULE_INTERNALS = frozenset(vars(nn.Module()))
_FILE_LIST_ATTRIBUTES = ("samples", "imgs", "files", "_image_files")
# torchvision transforms that draw random numbers on every call, besides the "Random*" classes
_RANDOM_TRANSFORMS = frozenset(
    {"ColorJitter", "AutoAugment", "RandAugment", "TrivialAugmentWide", "AugMix"}
    | {"ElasticTransform", "ScaleJitter", "MixUp", "CutMix", "GaussianNoise"}
)
_HASH_BLOCK = 1 << 20


def qualified_name(kind: type | types.FunctionType | types.BuiltinFunctionType) -> str:
    """``module.QualName`` of a class or function."""
    module = getattr(kind, "__module__", None) or "?"
    name = getattr(kind, "__qualname__", None) or getattr(kind, "__name__", repr(kind))
    return f"{module}.{name}"


def _is_flat_sequence(values: list | tuple) -> bool:
    """True for sequences of primitives, or of tuples of primitives (e.g. ``samples``)."""
    for value in values:
        if type(value) is tuple:
            if not all(type(inner) in _PRIMITIVES for inner in value):
                return False
        elif type(value) not in _PRIMITIVES:
            return False
    return True


def dataset_files(dataset: Any) -> list[str] | None:
    """The files a dataset reads, resolved to paths, or ``None`` if it lists none.

    Looks at ``samples`` / ``imgs`` (pairs ``(path, target)``), ``files`` and ``_image_files``;
    relative names are resolved against ``basedir``, ``root/base_folder`` or ``root``, the
    first where the first name exists.
    """
    for attribute in _FILE_LIST_ATTRIBUTES:
        entries = getattr(dataset, attribute, None)
        if not isinstance(entries, (list, tuple)) or not entries:
            continue
        names = [entry[0] if isinstance(entry, (tuple, list)) else entry for entry in entries]
        if not all(isinstance(name, (str, os.PathLike)) for name in names):
            continue
        return _resolve(dataset, [os.fspath(name) for name in names])
    return None


def _resolve(dataset: Any, names: list[str]) -> list[str]:
    if os.path.isabs(names[0]):
        return names
    root = getattr(dataset, "root", None)
    base_folder = getattr(dataset, "base_folder", None)
    bases = [getattr(dataset, "basedir", None)]
    if isinstance(root, (str, os.PathLike)):
        if isinstance(base_folder, str):
            bases.append(os.path.join(root, base_folder))
        bases.append(os.fspath(root))
    for base in bases:
        if isinstance(base, (str, os.PathLike)) and os.path.exists(os.path.join(base, names[0])):
            return [os.path.join(base, name) for name in names]
    return names


def keyed_by_attributes(dataset: Any) -> bool:
    """Whether a dataset's attributes determine its samples: it lists its files (see
    :func:`dataset_files`), holds its data as tensors or arrays (``TensorDataset``; ``data`` of
    torchvision's CIFAR, SVHN, MNIST), or concatenates or subsets such datasets."""
    if isinstance(dataset, ConcatDataset):
        return all(keyed_by_attributes(part) for part in dataset.datasets)
    if isinstance(dataset, Subset):
        return keyed_by_attributes(dataset.dataset)
    if isinstance(dataset, TensorDataset) or dataset_files(dataset) is not None:
        return True
    return isinstance(getattr(dataset, "data", None), (Tensor, np.ndarray))


def _file_digest(path: str) -> str:
    digest = hashlib.blake2b(digest_size=32)
    with open(path, "rb") as file:
        while block := file.read(_HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _file_line(path: str, hash_files: bool) -> str | None:
    """``path size mtime [content digest]``, or ``None`` if the file cannot be read."""
    try:
        stat = os.stat(path)
        content = f"\t{_file_digest(path)}" if hash_files else ""
    except OSError:
        return None
    return f"{path}\t{stat.st_size}\t{stat.st_mtime_ns}{content}"


def _is_random_transform(obj: Any) -> bool:
    for kind in type(obj).__mro__:
        if kind.__module__.startswith("torchvision.transforms") and (
            kind.__name__.startswith("Random") or kind.__name__ in _RANDOM_TRANSFORMS
        ):
            return True
    return False


class Fingerprint:
    """An incremental digest of objects; :meth:`add` them, then read :meth:`hexdigest`.

    ``unstable`` lists the places (attribute paths) of objects that could not be described
    stably, ``random`` those of torchvision's random transforms, ``missing_files`` the files
    listed by datasets that cannot be read.

    :param hash_files: feed the bytes of every file a dataset lists, not only its size and
        modification time
    """

    def __init__(self, hash_files: bool = False) -> None:
        self._hash = hashlib.blake2b(digest_size=32)
        self.hash_files = hash_files
        #: the places (attribute paths) of the objects that could not be described stably
        self.unstable: list[str] = []
        #: the places of torchvision's random transforms
        self.random: list[str] = []
        #: the files listed by datasets that cannot be read
        self.missing_files: list[str] = []
        # composite objects already fed -> ordinal; shared objects and cycles feed a reference.
        # The objects are kept alive so that their ids are not reused during the walk.
        self._seen: dict[int, int] = {}
        self._alive: list[Any] = []

    def hexdigest(self) -> str:
        """The digest of everything added so far, as 64 hexadecimal digits."""
        return self._hash.hexdigest()

    def add(self, obj: Any, where: str = "") -> Fingerprint:
        """Feed ``obj``; ``where`` names it in :attr:`unstable`."""
        self._add(obj, where or type(obj).__name__)
        return self

    def _token(self, tag: str, data: bytes = b"") -> None:
        self._hash.update(tag.encode() + b"\0" + len(data).to_bytes(8, "little") + data)

    def _add(self, obj: Any, where: str) -> None:
        if type(obj) in _PRIMITIVES:
            self._token(type(obj).__name__, repr(obj).encode())
        elif isinstance(obj, enum.Enum):
            self._token("enum", f"{qualified_name(type(obj))}.{obj.name}".encode())
        elif isinstance(obj, _PRIMITIVES):  # subclasses, e.g. torch's TorchVersion, np.float64
            base = next(kind for kind in _PRIMITIVES if isinstance(obj, kind))
            self._token(qualified_name(type(obj)), base.__repr__(obj).encode())
        elif isinstance(obj, (torch.dtype, torch.device, np.dtype)):
            self._token("dtype", repr(obj).encode())
        elif isinstance(obj, os.PathLike):  # the same as the path's text: the same files
            self._token(type(os.fspath(obj)).__name__, repr(os.fspath(obj)).encode())
        elif isinstance(obj, (type, types.ModuleType, types.BuiltinFunctionType)):
            self._token("name", qualified_name(obj).encode())
        elif isinstance(obj, np.generic):
            self._token("scalar", f"{obj.dtype}:{obj.item()!r}".encode())
        elif isinstance(obj, (np.random.Generator, np.random.RandomState, torch.Generator)):
            self._generator(obj, where)
        elif isinstance(obj, random.Random):
            self._add(obj.getstate(), where)
        elif self._seen_before(obj):
            return
        else:
            self._composite(obj, where)

    def _seen_before(self, obj: Any) -> bool:
        ordinal = self._seen.get(id(obj))
        if ordinal is not None:
            self._token("ref", str(ordinal).encode())
            return True
        self._seen[id(obj)] = len(self._seen)
        self._alive.append(obj)
        return False

    def _composite(self, obj: Any, where: str) -> None:
        if _is_random_transform(obj):
            self.random.append(f"{where} ({qualified_name(type(obj))})")
        if isinstance(obj, Tensor):
            self._tensor(obj, where)
        elif isinstance(obj, np.ndarray):
            self._array(obj, where)
        elif _is_pil_image(obj):
            self._token("image", f"{obj.mode}:{obj.size}".encode() + obj.tobytes())
        elif isinstance(obj, (list, tuple)):
            self._sequence(obj, where)
        elif isinstance(obj, Mapping):
            self._token("mapping", str(len(obj)).encode())
            for key, value in obj.items():
                self._add(key, where)
                self._add(value, f"{where}[{key!r}]")
        elif isinstance(obj, (set, frozenset)):
            self._token("set", str(len(obj)).encode())
            for value in sorted(obj, key=repr):
                self._add(value, where)
        elif isinstance(obj, functools.partial):
            self._token("partial")
            self._add((obj.func, obj.args, obj.keywords), where)
        elif isinstance(obj, types.FunctionType):
            self._function(obj, where)
        elif isinstance(obj, types.CodeType):
            self._token("code", obj.co_code)
            self._add((obj.co_consts, obj.co_names), where)
        elif isinstance(obj, types.MethodType):
            self._token("method")
            self._add(obj.__func__, where)
            self._add(obj.__self__, f"{where}.__self__")
        elif isinstance(obj, nn.Module):
            self._module(obj, where)
        else:
            self._object(obj, where)

    def _sequence(self, values: list | tuple, where: str) -> None:
        self._token(type(values).__name__, str(len(values)).encode())
        if _is_flat_sequence(values):
            # one token instead of a walk: long lists of (path, target) pairs are common
            self._token("flat", repr(values).encode())
            return
        for index, value in enumerate(values):
            self._add(value, f"{where}[{index}]")

    def _tensor(self, tensor: Tensor, where: str) -> None:
        self._token("tensor", f"{tensor.dtype}:{tuple(tensor.shape)}".encode())
        try:
            tensor = tensor.detach()
            if tensor.layout != torch.strided:
                tensor = tensor.to_dense()
            tensor = tensor.resolve_conj().resolve_neg().cpu().contiguous()
            raw = tensor.reshape(-1).view(torch.uint8).numpy()
        except (RuntimeError, TypeError, NotImplementedError):  # e.g. meta or quantized
            self._unstable(tensor, where)
            return
        self._hash.update(raw)

    def _array(self, array: np.ndarray, where: str) -> None:
        self._token("array", f"{array.dtype.str}:{array.shape}".encode())
        if array.dtype.hasobject:
            self._add(array.tolist(), where)
            return
        self._hash.update(np.ascontiguousarray(array).view(np.uint8).reshape(-1))

    def _generator(self, generator: Any, where: str) -> None:
        if isinstance(generator, torch.Generator):
            self._token("torch.Generator")
            self._add(generator.get_state(), where)
        elif isinstance(generator, np.random.Generator):
            self._token("numpy.Generator")
            self._add(generator.bit_generator.state, where)
        else:
            self._token("numpy.RandomState")
            self._add(generator.get_state(legacy=False), where)

    def _function(self, function: types.FunctionType, where: str) -> None:
        self._token("function", qualified_name(function).encode())
        self._add(function.__code__, where)
        self._add((function.__defaults__, function.__kwdefaults__), where)
        for index, cell in enumerate(function.__closure__ or ()):
            try:
                contents = cell.cell_contents
            except ValueError:  # an empty cell
                self._token("empty cell")
                continue
            self._add(contents, f"{where}.<closure {index}>")

    def _module(self, module: nn.Module, where: str) -> None:
        self._token("module", qualified_name(type(module)).encode())
        self._add(module.training, where)
        self._add(module._parameters, where)
        self._add(module._buffers, where)
        # hooks change outputs; their keys are process-wide handle counters, so values only
        self._add(list(module._forward_pre_hooks.values()), f"{where}.<forward pre-hooks>")
        self._add(list(module._forward_hooks.values()), f"{where}.<forward hooks>")
        for name, child in module._modules.items():
            self._add(name, where)
            self._add(child, f"{where}.{name}")
        for name, value in vars(module).items():
            if name not in _MODULE_INTERNALS:
                self._add(name, where)
                self._add(value, f"{where}.{name}")

    def _object(self, obj: Any, where: str) -> None:
        attributes = _attributes(obj)
        if attributes is None:
            text = repr(obj)
            if _ADDRESS.search(text):
                self._unstable(obj, where)
            else:
                self._token("repr", f"{qualified_name(type(obj))}:{text}".encode())
            return
        self._token("object", qualified_name(type(obj)).encode())
        for name, value in attributes.items():
            self._add(name, where)
            self._add(value, f"{where}.{name}")
        if isinstance(obj, Dataset):
            paths = dataset_files(obj)
            if paths is not None:
                self._files(paths)

    def _files(self, paths: list[str]) -> None:
        lines = []
        for path in paths:
            line = _file_line(path, self.hash_files)
            if line is None:
                self.missing_files.append(path)
            lines.append(f"{path}\tmissing" if line is None else line)
        self._token("files", "\n".join(lines).encode())

    def _unstable(self, obj: Any, where: str) -> None:
        self.unstable.append(f"{where} ({qualified_name(type(obj))})")
        self._token("unstable", repr(obj).encode())


def _attributes(obj: Any) -> dict[str, Any] | None:
    """``__dict__`` and ``__slots__`` values, or ``None`` if the object has neither."""
    attributes = dict(vars(obj)) if hasattr(obj, "__dict__") else {}
    for kind in type(obj).__mro__:
        for slot in getattr(kind, "__slots__", ()):
            if slot not in ("__dict__", "__weakref__") and hasattr(obj, slot):
                attributes.setdefault(slot, getattr(obj, slot))
    if not attributes and not hasattr(obj, "__dict__"):
        return None
    return attributes


def _is_pil_image(obj: Any) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - torchvision depends on Pillow
        return False
    return isinstance(obj, Image.Image)
