"""Files for trains: :func:`save` and :func:`load` (safetensors with a small JSON header; never pickle).

A train file is a `safetensors <https://huggingface.co/docs/safetensors>`_ file: the cores as tensors named
``core_0`` ... ``core_{d-1}`` in their own layout, and in the safetensors metadata one entry, ``tensornet``,
a JSON object (``format``, ``format_version``, ``kind``, ``shapes``, ``dtype``, ``backend``, ``version``,
``sha256``). safetensors holds raw little-endian numbers and a JSON header, so reading a file runs no code.
complex128, which safetensors has no type for, is stored as float64 with a trailing axis of 2 (real,
imaginary) and the header says so; every other dtype a train holds (float16, bfloat16, float32, float64,
complex64) is stored as itself. Any safetensors reader (Rust, C++, JavaScript, Python) can read the cores.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import os
import secrets
from pathlib import Path
from typing import Any

import numpy as np

from . import _backend as B
from . import _place
from .tt import TT, TTM, Train

__all__ = ["load", "save"]

FORMAT = "tensornet.train"
FORMAT_VERSION = 1
_KEY = "tensornet"  # the safetensors metadata entry that holds the header
_DTYPES = ("float16", "bfloat16", "float32", "float64", "complex64", "complex128")
_PAIRS = "complex128"  # stored as float64 (..., 2): safetensors has no complex128


def _version() -> str:
    from . import __version__

    return __version__


def _host_cores(t: Train) -> list[Any]:
    """The cores as contiguous host arrays in the stored layout (complex128 as float64 pairs)."""
    if t.backend == "torch":
        stored = [c.detach().cpu().contiguous() for c in t.cores]
        if B.dtype_name(t.dtype) == _PAIRS:
            torch = importlib.import_module("torch")
            stored = [torch.view_as_real(c).contiguous() for c in stored]
        return stored
    stored = [np.ascontiguousarray(c) for c in t.cores]
    if B.dtype_name(t.dtype) == _PAIRS:
        stored = [np.ascontiguousarray(c.view(np.float64).reshape((*c.shape, 2))) for c in stored]
    return stored


def digest(core: Any) -> str:
    """SHA-256 of an array's bytes (a contiguous numpy array or CPU torch tensor); shared with ``tensornet.nn``."""
    if isinstance(core, np.ndarray):
        return hashlib.sha256(core.data).hexdigest()  # contiguous: its buffer is its bytes
    torch = importlib.import_module("torch")
    return hashlib.sha256(memoryview(core.reshape(-1).view(torch.uint8).numpy())).hexdigest()


def save(path: str | os.PathLike[str], t: Train, *, overwrite: bool = False) -> Path:
    """Write a TT or TTM to a file (safetensors with a JSON header); :func:`load` reads it back.

    Parameters
    ----------
    path : str or path-like
        The file to write (``.safetensors`` is the usual suffix; any name is taken as given).
    t : TT or TTM
        numpy or torch cores (any device: they are copied to the host), in any dtype a train holds.
    overwrite : bool
        Replace an existing file at ``path``. Without it an existing path is refused and left as it is.

    Returns
    -------
    pathlib.Path
        The path written.

    Raises
    ------
    TypeError
        ``t`` is not a TT or TTM, ``path`` is not a str or path-like.
    FileExistsError
        ``path`` exists and ``overwrite`` is False.
    IsADirectoryError
        ``path`` is a directory.

    Notes
    -----
    The file is written to a new temporary file beside ``path`` (created exclusively, never through a
    symbolic link) and then renamed into place, so a reader never sees half a file and an interrupted save
    leaves the old file as it was. torch cores are detached: a file holds numbers, not a graph.

    Cost: ``O(nparams)`` time and memory.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> import tensornet as tn
    >>> t = tn.random_tt((4, 5, 6), 3, seed=0)
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "t.safetensors"
    >>> tn.save(path, t).name
    't.safetensors'
    >>> u = tn.load(path)
    >>> u.ranks, all((a == b).all() for a, b in zip(u.cores, t.cores))
    ((1, 3, 3, 1), True)
    """
    if not isinstance(t, (TT, TTM)):
        raise TypeError(f"tn.save: t must be a TT or TTM, got {type(t).__name__}")
    target = _check_path("tn.save", path)
    if target.is_dir():
        raise IsADirectoryError(f"tn.save: {target} is a directory; give the path of a file to write")
    if not overwrite and os.path.lexists(target):
        raise FileExistsError(f"tn.save: {target} exists; pass overwrite=True to replace it")
    stored = _host_cores(t)
    header = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": type(t).__name__,
        "shapes": [[int(n) for n in c.shape] for c in t.cores],
        "dtype": B.dtype_name(t.dtype),
        "backend": t.backend,
        "version": _version(),
        "sha256": [digest(c) for c in stored],
    }
    tensors = {f"core_{k}": c for k, c in enumerate(stored)}
    metadata = {_KEY: json.dumps(header)}
    framework = "torch" if t.backend == "torch" else "numpy"
    data = importlib.import_module(f"safetensors.{framework}").save(tensors, metadata=metadata)
    write_atomic(target, data, overwrite=overwrite, fn="tn.save")
    return target


def _check_path(fn: str, path: Any) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{fn}: path must be a str or path-like, got {type(path).__name__}")
    return Path(path)


def write_atomic(target: Path, data: bytes, *, overwrite: bool, fn: str) -> None:
    """Write ``data`` to a new temporary file beside ``target``, flush it to disk, then move it to ``target``.

    The temporary file gets a random name and is created exclusively (``open(..., "x")``: never a planted file,
    never through a symbolic link; the umask applies, as for any file the user creates). With ``overwrite`` it
    is renamed over ``target``, otherwise linked to it (``os.link`` refuses a name created since the caller
    checked). A reader never sees half a file; an interrupted write leaves ``target`` as it was. Shared by
    :func:`save` and ``tensornet.nn.save_adapter``.
    """
    temp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
    handle = open(temp, "xb")  # noqa: SIM115  (closed below; outside the try: a name taken is not ours to remove)
    try:
        with handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if overwrite:
            os.replace(temp, target)
        else:
            try:
                os.link(temp, target)
            except FileExistsError:
                raise FileExistsError(f"{fn}: {target} exists; pass overwrite=True to replace it") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)


class _NotATrainFile(ValueError):
    """Raised inside :func:`load` with the reason; turned into the one message."""


def load(path: str | os.PathLike[str], like: Any = None) -> Train:
    """Read a TT or TTM written by :func:`save`.

    Parameters
    ----------
    path : str or path-like
        A file written by :func:`save`.
    like : array, TT or TTM, optional
        Whose backend and device the cores get. None: the backend the train was saved from, on the CPU.
        The dtype is always the file's (convert with ``.to(dtype=...)``): a load never loses precision.

    Returns
    -------
    TT or TTM
        As saved: kind, core shapes, dtype and values exactly.

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    ValueError
        The file is not a tensornet train file: not safetensors, a safetensors file without tensornet's
        header (a model checkpoint, say), a malformed header, cores that differ from the header's shapes or
        checksums (a damaged file), a newer format version; a bfloat16 train asked for on numpy.
    TypeError
        ``path`` is not a str or path-like; a bad ``like``.
    ModuleNotFoundError
        The train was saved from torch (or is bfloat16) and torch is not installed.

    Notes
    -----
    Nothing is unpickled: the file's numbers are read as numbers by the safetensors library, and the
    header is JSON. Every core is checked against the SHA-256 in the header, and the train is validated
    as :class:`tensornet.TT` validates any cores.

    Cost: ``O(nparams)`` time and memory.
    """
    source = _check_path("tn.load", path)
    if not source.exists():
        raise FileNotFoundError(f"tn.load: no file at {source}")
    ref = _place.reference("tn.load", like)
    try:
        header = _read_header(source)
        stored = _read_cores(source, header)
    except _NotATrainFile as error:
        raise ValueError(
            f"tn.load: {source} is not a tensornet train file ({error}); tn.load reads the files tn.save "
            "writes (safetensors with a 'tensornet' header) and never unpickles anything"
        ) from None
    backend = B.backend_name(ref) if ref is not None else header["backend"]
    device = B.device(ref) if ref is not None else None
    cores = [_from_stored(c, header["dtype"], backend, device, source) for c in stored]
    try:
        return (TT if header["kind"] == "TT" else TTM)(cores)
    except (TypeError, ValueError) as error:  # cores that do not chain: a damaged or crafted file
        raise ValueError(f"tn.load: {source} holds cores that do not form a train ({error})") from None


def _read_header(source: Path) -> dict[str, Any]:
    safetensors = importlib.import_module("safetensors")
    try:
        with safetensors.safe_open(source, framework="numpy") as handle:
            metadata = handle.metadata() or {}
            names = sorted(handle.keys())
    except (safetensors.SafetensorError, OSError) as error:
        raise _NotATrainFile(f"not a safetensors file: {error}") from None
    if _KEY not in metadata:
        raise _NotATrainFile("a safetensors file without tensornet's header, e.g. a model checkpoint")
    try:
        header = json.loads(metadata[_KEY])
    except json.JSONDecodeError as error:
        raise _NotATrainFile(f"its header is not JSON: {error}") from None
    _check_header(header, names)
    return header


def _check_header(header: Any, names: list[str]) -> None:
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise _NotATrainFile(f"its header does not name the format {FORMAT!r}")
    version = header.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise _NotATrainFile(
            f"format version {version!r}, newer than the {FORMAT_VERSION} this tensornet reads; upgrade tensornet"
        )
    kind, shapes, dtype = header.get("kind"), header.get("shapes"), header.get("dtype")
    if kind not in ("TT", "TTM") or dtype not in _DTYPES or header.get("backend") not in ("numpy", "torch"):
        raise _NotATrainFile(
            f"its header has kind {kind!r}, dtype {dtype!r}, backend {header.get('backend')!r}"
        )
    ndim = 3 if kind == "TT" else 4
    if not isinstance(shapes, list) or not shapes or not all(_is_shape(s, ndim) for s in shapes):
        raise _NotATrainFile(f"its header's shapes are not a list of {ndim}-D {kind} core shapes")
    sums = header.get("sha256")
    if not isinstance(sums, list) or len(sums) != len(shapes):
        raise _NotATrainFile("its header has no SHA-256 for every core")
    expected = sorted(f"core_{k}" for k in range(len(shapes)))
    if names != expected:
        raise _NotATrainFile(f"it holds tensors {names} where the header names {expected}")


def _is_shape(shape: Any, ndim: int) -> bool:
    return isinstance(shape, list) and len(shape) == ndim and all(type(n) is int and n > 0 for n in shape)


def _read_cores(source: Path, header: dict[str, Any]) -> list[Any]:
    """The stored cores, checked against the header's shapes and checksums."""
    framework = "pt" if header["dtype"] == "bfloat16" else "numpy"  # numpy has no bfloat16
    if framework == "pt":
        _torch("tn.load", source)
    safetensors = importlib.import_module("safetensors")
    with safetensors.safe_open(source, framework=framework) as handle:
        stored = [handle.get_tensor(f"core_{k}") for k in range(len(header["shapes"]))]
    kind = "float64" if header["dtype"] == _PAIRS else header["dtype"]
    for k, (core, shape, expected_sha) in enumerate(zip(stored, header["shapes"], header["sha256"])):
        expected = [*shape, 2] if header["dtype"] == _PAIRS else shape
        if B.dtype_name(core.dtype) != kind:
            raise _NotATrainFile(
                f"core {k} holds {B.dtype_name(core.dtype)} numbers but the header says {kind}"
            )
        if [int(n) for n in core.shape] != expected:
            raise _NotATrainFile(
                f"core {k} has shape {tuple(core.shape)} but the header says {tuple(expected)}"
            )
        if digest(core) != expected_sha:
            raise _NotATrainFile(f"core {k} is damaged: its SHA-256 differs from the header's")
    return stored


def _torch(fn: str, source: Path) -> Any:
    try:
        return importlib.import_module("torch")
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            f"{fn}: {source} holds a train that needs torch (saved from torch, or bfloat16) and torch is not "
            "installed; install torch, or pass like=<a numpy array> for a float16/32/64 or complex train"
        ) from None


def _from_stored(core: Any, dtype: str, backend: str, device: Any, source: Path) -> Any:
    """A stored core in its train's dtype on ``backend`` and ``device``."""
    if dtype == _PAIRS:
        core = np.ascontiguousarray(core).view(np.complex128)[..., 0]
    if backend == "numpy":
        if dtype == "bfloat16":
            raise ValueError(
                f"tn.load: {source} holds a bfloat16 train, which numpy cannot hold; load it on torch "
                "(like=<a torch tensor>) and convert with .to(dtype=...) if needed"
            )
        return np.asarray(core)
    _torch("tn.load", source)
    return B.to_backend(core, "torch", device=device)
