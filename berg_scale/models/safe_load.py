"""Load BERG's pickled weight and metadata files without running code from them.

BERG's `.npy` files are pickled dicts and its `.pt` checkpoints pickle NumPy arrays
and an `argparse.Namespace`, so neither loads with the plain safe options. Both
readers here resolve only the handful of globals those files need; anything else (a
pickle asking for `os.system`, say) is refused with `UnsafeFileError` before any
object is built from it.

Sizes are untrusted too: a header (or a pickle) that claims more values than the file
holds would make NumPy or torch try to allocate terabytes and fail with a MemoryError
that names no file, or get the process killed. Claims are checked against the file's
size first, and the file is named when they do not fit.
"""

from __future__ import annotations

import _codecs
import io
import math
import os
import pickle
import pickletools
import re
import zipfile
from typing import IO, Any, Callable

import numpy as np

from berg_scale.errors import BergScaleError, UnsafeFileError

_reconstruct: Callable[..., Any] = np.ndarray.__reduce__(np.zeros(0))[0]  # type: ignore[assignment]  # numpy's array reconstructor
_scalar = np.float64(0).__reduce__()[0]  # numpy's scalar reconstructor


def _latin1_encode(text: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """`_codecs.encode` limited to the codec pickle protocol 2 uses for raw bytes."""
    if encoding.replace("-", "").lower() not in ("latin1", "iso88591"):
        raise UnsafeFileError(f"_codecs.encode with codec {encoding!r} is not allowed")
    return _codecs.encode(text, "latin1", errors)


class InertObject:
    """Stand-in for objects a checkpoint stores but inference never uses.

    It keeps the pickled state as plain data so nothing is lost for inspection, but has
    no behaviour (e.g. for `argparse.Namespace` holding training arguments).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args
        self.state: Any = kwargs or None

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"InertObject(state={self.state!r})"


# dotted name -> what to build it with
NUMPY_GLOBALS: dict[str, Any] = {
    "numpy.core.multiarray._reconstruct": _reconstruct,
    "numpy._core.multiarray._reconstruct": _reconstruct,
    "numpy.core.multiarray.scalar": _scalar,
    "numpy._core.multiarray.scalar": _scalar,
    "numpy.ndarray": np.ndarray,
    "numpy.dtype": np.dtype,
    "_codecs.encode": _latin1_encode,
}
PLAIN_BUILTINS: dict[str, Any] = {
    f"builtins.{t.__name__}": t
    for t in (set, frozenset, complex, bytearray, slice, list, dict, tuple, int, float, str, bool, bytes)
}
INERT_GLOBALS: dict[str, Any] = {"argparse.Namespace": InertObject}


def _human(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    raise AssertionError("unreachable")


def _too_large(source: str, claim: str, needed: int, available: int) -> BergScaleError:
    return BergScaleError(
        f"{source}: {claim} ({_human(needed)}) but the file holds only {_human(available)}; "
        "the file is truncated or damaged, re-download it"
    )


def _remaining_bytes(file: IO[bytes]) -> int | None:
    """Bytes from the current position to the end, or None when the stream cannot tell."""
    try:
        here = file.tell()
        end = file.seek(0, io.SEEK_END)
        file.seek(here)
    except (AttributeError, OSError, ValueError):
        return None
    return max(0, int(end) - int(here))


class _ArrayClassToken:
    """Stands for `numpy.ndarray` in a pickle: passed to the reconstructor, never called.

    NumPy pickles name the class only as `_reconstruct`'s first argument; calling it
    directly (`ndarray((10**12,))`) would allocate whatever shape the pickle asks for.
    """

    def __init__(self, source: str) -> None:
        self._source = source

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise UnsafeFileError(
            f"{self._source}: refusing to load: the pickle calls numpy.ndarray directly, "
            "which BERG files never do; the file is corrupt or not a BERG file (re-download it)"
        )


def _bounded_globals(source: str, budget: int | None) -> dict[str, Any]:
    """Allocating constructors, limited to what a file of `budget` bytes can fill."""
    token = _ArrayClassToken(source)

    def check(needed: int, claim: str) -> None:
        if budget is not None and needed > budget:
            raise _too_large(source, claim, needed, budget)

    def reconstruct(subtype: Any, shape: Any, dtype: Any, *rest: Any) -> Any:
        if subtype is token:
            subtype = np.ndarray
        dims = tuple(shape) if isinstance(shape, (tuple, list)) else (shape,)
        if not all(isinstance(d, int) and d >= 0 for d in dims):
            raise BergScaleError(f"{source}: the pickle asks for an array of shape {shape!r}; the file is damaged")
        try:
            itemsize = max(1, np.dtype(dtype).itemsize)
        except TypeError:
            itemsize = 1
        check(math.prod(dims) * itemsize, f"the pickle asks for an array of shape {dims}")
        return _reconstruct(subtype, shape, dtype, *rest)

    def sized(kind: type) -> Callable[..., Any]:
        def build(*args: Any) -> Any:
            if args and isinstance(args[0], int) and not isinstance(args[0], bool):
                check(args[0], f"the pickle asks for a {kind.__name__} of {args[0]} bytes")
            return kind(*args)

        return build

    return {
        "numpy.core.multiarray._reconstruct": reconstruct,
        "numpy._core.multiarray._reconstruct": reconstruct,
        "numpy.ndarray": token,
        "builtins.bytes": sized(bytes),
        "builtins.bytearray": sized(bytearray),
    }


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: IO[bytes], source: str, allowed: dict[str, Any]) -> None:
        super().__init__(file)
        self._source = source
        self._allowed = allowed

    def find_class(self, module: str, name: str) -> Any:
        dotted = f"{module}.{name}"
        if dotted in self._allowed:
            return self._allowed[dotted]
        raise UnsafeFileError(
            f"{self._source}: refusing to load: the pickle asks for the global {dotted!r}, "
            "which BERG weight/metadata files never contain; the file is corrupt or not a "
            "BERG file (re-download it)"
        )

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafeFileError(f"{self._source}: refusing to load: unexpected persistent id in pickle")


def restricted_unpickle(
    file: IO[bytes], source: str, extra: dict[str, Any] | None = None, max_bytes: int | None = None
) -> Any:
    """Unpickle allowing only NumPy reconstruction names and plain builtins.

    Arrays and byte buffers the pickle builds may not exceed `max_bytes` (default: the
    bytes left in `file`, when it can tell): their contents come from the file, so a
    larger claim means a damaged or crafted file.
    """
    budget = _remaining_bytes(file) if max_bytes is None else max_bytes
    allowed = {**NUMPY_GLOBALS, **PLAIN_BUILTINS, **_bounded_globals(source, budget), **(extra or {})}
    try:
        return _RestrictedUnpickler(file, source, allowed).load()
    except BergScaleError:
        raise
    except Exception as exc:  # corrupt stream: many exception types are possible
        raise BergScaleError(f"{source}: cannot read pickle ({type(exc).__name__}: {exc}); "
                             "the file is damaged, re-download it") from None


def load_npy(file: IO[bytes], source: str) -> Any:
    """Read a `.npy` file; a pickled 0-d object array is returned as its element.

    Plain numeric arrays are read with pickling disabled.
    """
    from numpy.lib import format as npformat

    try:
        version = npformat.read_magic(file)
        if version == (1, 0):
            shape, fortran, dtype = npformat.read_array_header_1_0(file)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = npformat.read_array_header_2_0(file)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    except ValueError as exc:
        raise BergScaleError(f"{source}: not a valid .npy file ({exc}); re-download it") from None
    _check_npy_size(file, source, shape, dtype)
    if not dtype.hasobject:
        file.seek(0)
        try:
            return npformat.read_array(file, allow_pickle=False)
        except ValueError as exc:
            raise BergScaleError(f"{source}: truncated or damaged .npy file ({exc})") from None
    array = restricted_unpickle(file, source)
    if not isinstance(array, np.ndarray):
        raise BergScaleError(f"{source}: expected a pickled NumPy array, found {type(array).__name__}")
    return array.item() if array.shape == () else array


def _check_npy_size(file: IO[bytes], source: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
    """Refuse a header whose shape x itemsize needs more bytes than follow it."""
    if not all(isinstance(d, int) and d >= 0 for d in shape):
        raise BergScaleError(f"{source}: not a valid .npy file (shape {shape!r}); re-download it")
    remaining = _remaining_bytes(file)
    if remaining is None:
        return
    count = math.prod(shape)
    if dtype.hasobject:
        # Each pickled element takes at least one byte.
        needed, what = count, f"{count} pickled objects"
    else:
        needed, what = count * dtype.itemsize, f"{count} values of {dtype}"
    if needed > remaining:
        raise _too_large(source, f"the .npy header promises shape {shape}, {what}", needed, remaining)


_UNSUPPORTED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
_UNSUPPORTED_OTHER = re.compile(r"(?:Unsupported operand|Trying to [^\n.]+|Unsupported class [\w.]+)")


def _torch_safe_globals() -> list[Any]:
    pairs: list[Any] = []
    for dotted, obj in {**NUMPY_GLOBALS, **INERT_GLOBALS}.items():
        pairs.append((obj, dotted))
    # NumPy 2 may pickle dtypes through their DType classes.
    for code in ("f2", "f4", "f8", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "b1", "O"):
        cls = type(np.dtype(code))
        pairs.append((cls, f"{cls.__module__}.{cls.__name__}"))
    return pairs


def load_checkpoint(file: IO[bytes] | str, source: str) -> Any:
    """Load a `torch.save` file with `weights_only=True` and an explicit allowlist.

    Tensors land on the CPU whatever device they were saved from. The sizes the file
    claims are checked against its length first (`check_checkpoint_sizes`).
    """
    import torch

    check_checkpoint_sizes(file, source)
    try:
        with torch.serialization.safe_globals(_torch_safe_globals()):
            return torch.load(file, map_location="cpu", weights_only=True)
    except UnsafeFileError as exc:
        raise UnsafeFileError(f"{source}: {exc}") from None
    except MemoryError:
        raise BergScaleError(
            f"{source}: the checkpoint asks for more memory than this machine has; the file "
            "is damaged or not a BERG checkpoint, re-download it"
        ) from None
    except Exception as exc:  # torch raises UnpicklingError or RuntimeError for bad files
        text = str(exc)
        match = _UNSUPPORTED_GLOBAL.search(text)
        if match:
            raise UnsafeFileError(
                f"{source}: refusing to load: the checkpoint asks for the global "
                f"{match.group(1)!r}, which BERG checkpoints never contain; the file is "
                "corrupt or not a BERG file (re-download it)"
            ) from None
        other = _UNSUPPORTED_OTHER.search(text)
        if other and ("WeightsUnpickler" in text or "Weights only load failed" in text):
            raise UnsafeFileError(f"{source}: refusing to load: {other.group(0)}") from None
        first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        raise BergScaleError(
            f"{source}: cannot read PyTorch checkpoint ({first[:300]}); the file is damaged "
            "or incomplete, re-download it"
        ) from None


def check_checkpoint_sizes(file: IO[bytes] | str, source: str) -> None:
    """Refuse a `torch.save` file whose records or storages claim more bytes than it has.

    Zip checkpoints (torch >= 1.6) list each record's offset and size in the central
    directory; legacy ones name each storage's element count in the pickle and allocate
    it before reading the bytes. Either claim must fit in the file.
    """
    handle: IO[bytes]
    if isinstance(file, (str, os.PathLike)):
        with open(file, "rb") as handle:
            return check_checkpoint_sizes(handle, source)
    handle = file
    start = handle.tell()
    size = _remaining_bytes(handle)
    if size is None:
        return
    try:
        magic = handle.read(4)
        handle.seek(start)
        if magic == b"PK\x03\x04":
            _check_zip_records(handle, source, size)
        else:
            _check_legacy_storages(handle, source, size)
    finally:
        handle.seek(start)


def _check_zip_records(handle: IO[bytes], source: str, size: int) -> None:
    try:
        infos = zipfile.ZipFile(handle).infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise BergScaleError(
            f"{source}: cannot read PyTorch checkpoint ({exc}); the file is damaged or incomplete, "
            "re-download it"
        ) from None
    for info in infos:
        end = info.header_offset + info.compress_size
        if end > size:
            raise _too_large(source, f"the checkpoint's record {info.filename!r} ends at byte {end}", end, size)


_INT_OPCODES = frozenset({"INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4"})


def _check_legacy_storages(handle: IO[bytes], source: str, size: int) -> None:
    """Sum the element counts of the storages a legacy checkpoint's pickle declares.

    The format is four pickles (magic number, protocol, system info, the object) and
    then the raw storages; each storage is a persistent id tuple whose last integer
    before BINPERSID is its element count. Every element takes at least one byte.
    """
    claimed: dict[str, int] = {}
    try:
        for _ in range(4):
            ints: list[int] = []
            key: str | None = None
            for opcode, arg, _pos in pickletools.genops(handle):
                if opcode.name == "MARK":
                    ints, key = [], None
                elif opcode.name in _INT_OPCODES and isinstance(arg, int) and not isinstance(arg, bool):
                    ints.append(arg)
                elif isinstance(arg, str) and opcode.name.endswith("UNICODE") and key is None and arg != "storage":
                    key = arg
                elif opcode.name == "BINPERSID" and ints:
                    claimed[key or str(len(claimed))] = ints[-1]
    except Exception:  # noqa: BLE001 - not a pickle stream: torch reports it with its own words
        return
    needed = sum(claimed.values())
    if needed > size:
        raise _too_large(source, f"the checkpoint declares storages of {needed} elements", needed, size)


def read_bytes_loader(opener: Callable[[], IO[bytes]], source: str, kind: str) -> Any:
    """Open a file via `opener` and load it as `kind` ("npy" or "pt")."""
    with opener() as handle:
        if kind == "npy":
            return load_npy(handle, source)
        data = handle.read()
    return load_checkpoint(io.BytesIO(data), source)
