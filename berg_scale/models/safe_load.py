"""Load BERG's pickled weight and metadata files without running code from them.

BERG's `.npy` files are pickled dicts and its `.pt` checkpoints pickle NumPy arrays
and an `argparse.Namespace`, so neither loads with the plain safe options. Both
readers here resolve only the handful of globals those files need; anything else (a
pickle asking for `os.system`, say) is refused with `UnsafeFileError` before any
object is built from it.
"""

from __future__ import annotations

import _codecs
import io
import pickle
import re
from typing import IO, Any, Callable

import numpy as np

from berg_scale.errors import BergScaleError, UnsafeFileError

_reconstruct = np.ndarray.__reduce__(np.zeros(0))[0]  # numpy's array reconstructor
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


def restricted_unpickle(file: IO[bytes], source: str, extra: dict[str, Any] | None = None) -> Any:
    """Unpickle allowing only NumPy reconstruction names and plain builtins."""
    allowed = {**NUMPY_GLOBALS, **PLAIN_BUILTINS, **(extra or {})}
    try:
        return _RestrictedUnpickler(file, source, allowed).load()
    except UnsafeFileError:
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

    Tensors land on the CPU whatever device they were saved from.
    """
    import torch

    try:
        with torch.serialization.safe_globals(_torch_safe_globals()):
            return torch.load(file, map_location="cpu", weights_only=True)
    except UnsafeFileError as exc:
        raise UnsafeFileError(f"{source}: {exc}") from None
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


def read_bytes_loader(opener: Callable[[], IO[bytes]], source: str, kind: str) -> Any:
    """Open a file via `opener` and load it as `kind` ("npy" or "pt")."""
    with opener() as handle:
        if kind == "npy":
            return load_npy(handle, source)
        data = handle.read()
    return load_checkpoint(io.BytesIO(data), source)
