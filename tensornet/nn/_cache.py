"""The dense weight rebuilt from a TT layer's cores, kept while the cores are unchanged (inference)."""

from __future__ import annotations

from typing import Any

import torch

from tensornet._linear.binding import compute_dtype

__all__ = ["DenseCache", "linear_compute_dtype"]


class DenseCache:
    """The dense weight rebuilt from a layer's cores, reused while the cores are unchanged.

    Keyed by the cores' identities, storage pointers and in-place version counters (an optimizer step
    bumps ``_version``; ``.to()``/``load_state_dict`` replace or overwrite the tensors), with one matrix
    per compute dtype (a TT embedding tied to an LM head may need float32 rows and bf16 logits under
    autocast); a stale matrix is dropped before a new one is built. Used only when no gradient of the
    cores is needed and outside ``torch.compile``.
    """

    __slots__ = ("entries",)

    def __init__(self) -> None:
        self.entries: dict[Any, tuple[tuple[Any, ...], Any]] = {}

    # a pickled or deep-copied module (torch.save(module), EMA copies) carries an empty cache, not the matrices
    def __getstate__(self) -> dict[str, Any]:
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.entries = {}

    def __deepcopy__(self, memo: dict[int, Any]) -> DenseCache:
        return DenseCache()

    def clear(self) -> None:
        self.entries = {}

    def lookup(self, packed: Any, device: Any, compute: Any, build: Any) -> Any:
        """The cached dense weight of the cores packed in ``packed``, in dtype ``compute``.

        It is built by ``build(compute)`` on a miss. None when the cache must not be used: a gradient of the
        cores is needed, compiling, or the cores are on another device than ``device``.
        """
        if torch.compiler.is_compiling():
            return None
        if torch.is_grad_enabled() and packed.requires_grad:
            self.entries = {}  # training: the cores are about to change, free the matrices now
            return None
        if device != packed.device or packed.is_inference():
            return None  # inference tensors have no version counter to key on
        key = (id(packed), packed.data_ptr(), packed._version)
        entry = self.entries.get(compute)
        if entry is not None and entry[0] == key:
            return entry[1]
        # free stale matrices (other cores' versions) before building the new one
        self.entries = {dt: e for dt, e in self.entries.items() if e[0] == key and dt != compute}
        # rebuilt in the cores' own precision, then cast once (not in bf16 under autocast); as a normal
        # tensor even under inference_mode, so a later call that needs the input's gradient may save it
        with torch.inference_mode(False), torch.no_grad(), torch.autocast(device.type, enabled=False):
            value = build(compute)
        self.entries[compute] = (key, value)
        return value


def linear_compute_dtype(x: Any, cores: list[Any]) -> Any:
    """The dtype a linear map of ``x`` runs in (the autocast dtype for what autocast casts).

    None when ``x`` and the cores end up in different dtypes (the uncached path reports that with its
    own error).
    """
    device_type = x.device.type
    dtype = compute_dtype(x.dtype, device_type)
    return dtype if dtype == compute_dtype(cores[0].dtype, device_type) else None
