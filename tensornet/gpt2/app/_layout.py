"""The layout of a training checkpoint (what ``_Run.checkpoint`` writes), checked by type and range.

A checkpoint's skeleton is read before its checksum is verified (the cheap checks of a run's settings read
it), so once decoded it may hold any value the decoder returns: a list where an object belongs, a string
where a number belongs, an optimizer-state key that is no parameter id, an RNG word of 33 bits. Every value
is checked here before anything uses it, and the first wrong one raises ``_checkpoint.Malformed`` naming where
it is (``rng.python[1][5] must be a 32-bit word, got 4294967296``). The ranges that depend on the run (the
step against ``--steps``, the shapes) are ``_resume``'s.
"""

from __future__ import annotations

from typing import Any

import torch

from ._checkpoint import INT64, Malformed, shown

_PARAM_ID = 2**31


def _need(ok: bool, at: str, rule: str, value: Any) -> None:
    if not ok:
        raise Malformed(f"{at} must be {rule}, got {shown(value)}")


def _is_int(value: Any, lo: int = 0, hi: int = INT64[1]) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi


def _is_float(value: Any) -> bool:
    return isinstance(value, float) or _is_int(value, INT64[0])


def _keys(value: Any, at: str, keys: set[str], optional: frozenset[str] = frozenset()) -> None:
    ok = isinstance(value, dict) and keys <= set(value) <= keys | optional
    _need(ok, at, f"an object of {', '.join(sorted(keys))}", value)


def _shallow(value: Any, depth: int = 0) -> bool:
    """Nested at most 64 deep (what the comparison of signatures recurses through)."""
    items = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else ()
    return depth <= 64 and all(_shallow(item, depth + 1) for item in items)


def check_layout(ckpt: dict) -> None:
    """Every value of a training checkpoint has its type and range; raises ``Malformed`` naming the first not.

    Cost: one pass over the skeleton's values (the tensors are not read).
    """
    _keys(ckpt, "the checkpoint", {"model", "optimizer", "step", "history", "rng", "signature"})
    _need(isinstance(ckpt["model"], dict), "model", "an object", ckpt["model"])
    for name, value in ckpt["model"].items():
        _need(
            isinstance(name, str) and isinstance(value, torch.Tensor), f"model[{name!r}]", "a tensor", value
        )
    _check_optimizer(ckpt["optimizer"])
    _need(_is_int(ckpt["step"]), "step", "an integer >= 0", ckpt["step"])
    _keys(ckpt["history"], "history", {"loss", "val"})
    loss, val = ckpt["history"]["loss"], ckpt["history"]["val"]
    _need(isinstance(loss, list) and isinstance(val, list), "history", "two lists", ckpt["history"])
    for i, value in enumerate(loss):
        _need(_is_float(value), f"history.loss[{i}]", "a number", value)
    for i, pair in enumerate(val):
        ok = isinstance(pair, tuple) and len(pair) == 2 and _is_int(pair[0]) and _is_float(pair[1])
        _need(ok, f"history.val[{i}]", "a (step, loss) pair", pair)
    _check_rng(ckpt["rng"])
    sig = ckpt["signature"]
    _need(isinstance(sig, dict) and _shallow(sig), "signature", "an object nested at most 64 deep", sig)


def _check_optimizer(opt: Any) -> None:
    """AdamW's ``state_dict()``: per-parameter states of tensors and numbers, and groups of parameter ids."""
    _keys(opt, "optimizer", {"state", "param_groups"})
    state, groups = opt["state"], opt["param_groups"]
    _need(isinstance(state, dict), "optimizer.state", "an object", state)
    for key, entry in state.items():
        at = f"optimizer.state[{key!r}]"
        _need(_is_int(key, 0, _PARAM_ID) and isinstance(entry, dict), at, "a parameter id's state", key)
        for name, value in entry.items():
            ok = isinstance(name, str) and (isinstance(value, torch.Tensor) or _is_float(value))
            _need(ok, f"{at}[{name!r}]", "a tensor or a number", value)
    _need(isinstance(groups, list), "optimizer.param_groups", "a list", groups)
    for i, group in enumerate(groups):
        at = f"optimizer.param_groups[{i}]"
        _need(
            isinstance(group, dict) and isinstance(group.get("params"), list),
            at,
            "an object with params",
            group,
        )
        _need(_shallow(group), at, "an object nested at most 64 deep", group)
        for j, value in enumerate(group["params"]):
            _need(_is_int(value, 0, _PARAM_ID), f"{at}.params[{j}]", "a parameter id in [0, 2**31]", value)


def _check_rng(rng: Any) -> None:
    """The RNG states: torch's (a tensor), CUDA's (tensors) and Python's Mersenne Twister state.

    Python's is version 3, 624 32-bit words and the position in them (at most 624), and the spare gauss.
    """
    _keys(rng, "rng", {"torch", "python"}, frozenset({"cuda"}))
    _need(isinstance(rng["torch"], torch.Tensor), "rng.torch", "a tensor", rng["torch"])
    cuda = rng.get("cuda", [])
    _need(
        isinstance(cuda, list) and all(isinstance(t, torch.Tensor) for t in cuda), "rng.cuda", "tensors", cuda
    )
    py = rng["python"]
    ok = (
        isinstance(py, tuple)
        and len(py) == 3
        and py[0] == 3
        and isinstance(py[1], tuple)
        and len(py[1]) == 625
    )
    _need(ok and (py[2] is None or _is_float(py[2])), "rng.python", "Python's random state (version 3)", py)
    for i, word in enumerate(py[1]):
        _need(_is_int(word, 0, 624 if i == 624 else 2**32 - 1), f"rng.python[1][{i}]", "a 32-bit word", word)
