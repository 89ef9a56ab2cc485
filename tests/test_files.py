"""tn.save / tn.load: exact round trips on numpy and torch in every dtype, and refusal of anything else."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.numpy import save_file

import tensornet as tn
from tensornet.testing import strategies as tst

# tmp_path is function-scoped: each example gets a fresh name inside it
FILES = settings(suppress_health_check=[HealthCheck.function_scoped_fixture])


def _same(a, b) -> None:
    """Same kind, shapes, dtype, backend and bit-identical cores."""
    assert type(a) is type(b) and a.dtype == b.dtype and a.backend == b.backend
    assert [tuple(c.shape) for c in a.cores] == [tuple(c.shape) for c in b.cores]
    for x, y in zip(a.cores, b.cores):
        if isinstance(x, torch.Tensor):
            assert torch.equal(x.view(torch.uint8), y.view(torch.uint8))  # bitwise, NaN-free either way
        else:
            assert x.tobytes() == y.tobytes()


@FILES
@given(t=st.one_of(tst.tts(dtype=tst.dtypes(complex=True)), tst.ttms(dtype=tst.dtypes(complex=True))))
def test_round_trip_is_exact(tmp_path, t):
    path = tmp_path / f"t{np.random.default_rng().integers(1 << 62)}.safetensors"
    assert tn.save(path, t) == path
    _same(tn.load(path), t)


@pytest.mark.parametrize(
    "dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.complex64, torch.complex128]
)
def test_every_torch_dtype(tmp_path, dtype):
    base = tn.random_ttm((2, 3), (3, 2), 2, seed=1, like=torch.zeros(1, dtype=torch.float64))
    wide = torch.complex128 if dtype.is_complex else torch.float64
    t = tn.TTM([(c.to(wide) * (1 + 1j if dtype.is_complex else 1)).to(dtype) for c in base.cores])
    tn.save(tmp_path / "a", t)
    _same(tn.load(tmp_path / "a"), t)


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64", "complex64", "complex128"])
def test_numpy_file_loads_on_torch_and_back(tmp_path, dtype):
    t = tn.random_tt((3, 4, 2), 2, seed=2, dtype="complex128" if "complex" in dtype else None)
    t = tn.TT([c.astype(dtype) for c in t.cores])
    tn.save(tmp_path / "t", t)
    on_torch = tn.load(tmp_path / "t", like=torch.zeros(1))
    assert on_torch.backend == "torch" and on_torch.dtype == getattr(
        torch, dtype
    )  # the file's dtype, not like's
    _same(on_torch.to("numpy"), t)
    _same(tn.load(tmp_path / "t", like=tn.random_tt((2,), 1)), t)


def test_torch_file_loads_on_numpy(tmp_path):
    t = tn.random_tt((3, 4), 2, seed=0, like=torch.zeros(1, dtype=torch.float32))
    tn.save(tmp_path / "t", t)
    _same(tn.load(tmp_path / "t", like=np.zeros(1)), t.to("numpy"))


def test_bfloat16_on_numpy_is_refused(tmp_path):
    t = tn.TT([c.to(torch.bfloat16) for c in tn.random_tt((3, 4), 2, seed=0, like=torch.zeros(1)).cores])
    tn.save(tmp_path / "t", t)
    with pytest.raises(ValueError, match="bfloat16 train, which numpy cannot hold"):
        tn.load(tmp_path / "t", like=np.zeros(1))


def test_gradients_are_not_saved(tmp_path):
    cores = [c.requires_grad_() for c in tn.random_tt((3, 4), 2, seed=0, like=torch.zeros(1)).cores]
    t = tn.TT(cores)
    tn.save(tmp_path / "t", t)
    u = tn.load(tmp_path / "t")
    assert not any(c.requires_grad for c in u.cores)
    _same(u, tn.TT([c.detach() for c in cores]))


def test_header_is_small_json_with_kind_shapes_dtype_version(tmp_path):
    t = tn.random_ttm((2, 3), (4, 5), 3, seed=0, dtype="complex128")
    tn.save(tmp_path / "t", t)
    data = (tmp_path / "t").read_bytes()
    size = int.from_bytes(data[:8], "little")
    header = json.loads(json.loads(data[8 : 8 + size])["__metadata__"]["tensornet"])
    assert header["kind"] == "TTM" and header["dtype"] == "complex128" and header["backend"] == "numpy"
    assert header["shapes"] == [[1, 2, 4, 3], [3, 3, 5, 1]] and header["version"] == tn.__version__
    assert header["format"] == "tensornet.train" and header["format_version"] == 1
    assert len(header["sha256"]) == 2


def test_existing_file_is_kept_unless_overwrite(tmp_path):
    path = tmp_path / "mine.txt"
    path.write_text("precious")
    t = tn.random_tt((3, 4), 2, seed=0)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        tn.save(path, t)
    assert path.read_text() == "precious" and sorted(p.name for p in tmp_path.iterdir()) == ["mine.txt"]
    tn.save(path, t, overwrite=True)
    _same(tn.load(path), t)
    with pytest.raises(IsADirectoryError):
        tn.save(tmp_path, t)


def test_a_leftover_temporary_file_is_not_in_the_way(tmp_path, monkeypatch):
    """A crashed save's temporary file, or anyone's file, never blocks or receives a new save."""
    (tmp_path / ".t.safetensors.tmp").write_text("theirs")
    (tmp_path / ".t.safetensors.000000000000.tmp").write_text("theirs")
    monkeypatch.setattr("secrets.token_hex", lambda n: "000000000000")  # the next name is taken
    with pytest.raises(FileExistsError):
        tn.save(tmp_path / "t.safetensors", tn.random_tt((3,), 1))
    assert (tmp_path / ".t.safetensors.000000000000.tmp").read_text() == "theirs"
    assert not (tmp_path / "t.safetensors").exists()
    monkeypatch.undo()
    tn.save(tmp_path / "t.safetensors", tn.random_tt((3,), 1))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [".t.safetensors.tmp", ".t.safetensors.000000000000.tmp", "t.safetensors"]
    )


def test_overwrite_replaces_a_link_not_its_target(tmp_path):
    target = tmp_path / "target.txt"
    target.write_text("precious")
    link = tmp_path / "link"
    os.symlink(target, link)
    tn.save(link, tn.random_tt((3,), 1, seed=0), overwrite=True)
    assert target.read_text() == "precious" and not link.is_symlink()


def test_bad_arguments(tmp_path):
    with pytest.raises(TypeError, match=r"tn.save: t must be a TT or TTM, got ndarray"):
        tn.save(tmp_path / "x", np.zeros((2, 2)))
    with pytest.raises(TypeError, match="path must be a str or path-like"):
        tn.save(3, tn.random_tt((3,), 1))
    with pytest.raises(FileNotFoundError, match="no file at"):
        tn.load(tmp_path / "missing")
    tn.save(tmp_path / "t", tn.random_tt((3,), 1))
    with pytest.raises(TypeError, match="like must be an array, TT or TTM"):
        tn.load(tmp_path / "t", like="torch")


NOT_A_TRAIN = "is not a tensornet train file"


def test_a_pickle_is_refused_and_never_unpickled(tmp_path):
    marker = tmp_path / "ran"

    class Boom:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "t.pkl"
    path.write_bytes(pickle.dumps([Boom(), tn.random_tt((3, 4), 2, seed=0)]))
    with pytest.raises(ValueError, match=NOT_A_TRAIN + r".*never unpickles"):
        tn.load(path)
    assert not marker.exists()
    torch.save({"cores": [torch.zeros(1, 2, 1)]}, tmp_path / "t.pt")
    with pytest.raises(ValueError, match=NOT_A_TRAIN):
        tn.load(tmp_path / "t.pt")


@pytest.mark.parametrize("content", [b"", b"abc", b"\x08" + b"\x00" * 7 + b"{}", os.urandom(200)])
def test_garbage_is_refused(tmp_path, content):
    (tmp_path / "g").write_bytes(content)
    with pytest.raises(ValueError, match=NOT_A_TRAIN):
        tn.load(tmp_path / "g")


def test_other_safetensors_files_are_refused(tmp_path):
    save_file({"weight": np.ones((2, 3))}, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match=NOT_A_TRAIN + r" \(a safetensors file without tensornet's header"):
        tn.load(tmp_path / "model.safetensors")


def _rewrite(tmp_path, t, edit):
    """Save ``t``, let ``edit(header, tensors)`` change it, write it back with safetensors."""
    from safetensors.numpy import load_file

    tn.save(tmp_path / "t", t)
    data = (tmp_path / "t").read_bytes()
    size = int.from_bytes(data[:8], "little")
    header = json.loads(json.loads(data[8 : 8 + size])["__metadata__"]["tensornet"])
    tensors = load_file(tmp_path / "t")
    edit(header, tensors)
    (tmp_path / "t").unlink()
    save_file(tensors, tmp_path / "t", metadata={"tensornet": json.dumps(header)})
    return tmp_path / "t"


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (lambda h, t: t.__setitem__("core_1", t["core_1"] + 1.0), "core 1 is damaged"),
        (lambda h, t: h.__setitem__("format_version", 2), "format version 2, newer than"),
        (lambda h, t: h.__setitem__("kind", "MPS"), "kind 'MPS'"),
        (lambda h, t: h.__setitem__("dtype", "int8"), "dtype 'int8'"),
        (lambda h, t: h.__setitem__("format", "other"), "does not name the format"),
        (
            lambda h, t: h["shapes"].__setitem__(0, [1, 3, 3]),
            r"core 0 has shape \(1, 3, 2\) but the header says",
        ),
        (lambda h, t: h["shapes"].append([2, 2, 1]), "no SHA-256 for every core"),
        (lambda h, t: t.pop("core_1"), r"holds tensors \['core_0'\] where the header names"),
        (lambda h, t: h.__setitem__("shapes", [[1, 3, "2"], [2, 4, 1]]), "not a list of 3-D TT core shapes"),
        (
            lambda h, t: h.__setitem__("dtype", "float32"),
            "core 0 holds float64 numbers but the header says float32",
        ),
        (lambda h, t: h.__setitem__("dtype", "complex128"), "core 0 has shape"),
    ],
)
def test_damaged_or_forged_files_are_refused(tmp_path, edit, reason):
    path = _rewrite(tmp_path, tn.random_tt((3, 4), 2, seed=0), edit)
    with pytest.raises(ValueError, match=NOT_A_TRAIN + r" \(.*" + reason):
        tn.load(path)


def test_cores_that_do_not_chain_are_one_error_naming_the_file(tmp_path):
    # a crafted file with consistent shapes and checksums whose ranks do not chain: the error named neither
    # tn.load nor the file ("TT: core 0 has shape ...")
    import hashlib

    def edit(header, tensors):
        tensors["core_1"] = np.ones((3, 4, 1))
        header["shapes"][1] = [3, 4, 1]
        header["sha256"][1] = hashlib.sha256(tensors["core_1"].data).hexdigest()

    path = _rewrite(tmp_path, tn.random_tt((3, 4), 2, seed=0), edit)
    with pytest.raises(ValueError, match=r"tn.load: .*t holds cores that do not form a train \(.*core"):
        tn.load(path)


def test_a_file_opens_in_another_session_without_tensornet(tmp_path):
    """Any safetensors reader gets the cores (complex128 as float64 pairs); a new interpreter loads the train."""
    t = tn.random_tt((3, 4, 2), 2, seed=0, dtype="complex128")
    tn.save(tmp_path / "t.safetensors", t)
    code = (
        "import sys, tensornet as tn, numpy as np; u = tn.load(sys.argv[1]); "
        "print(u.ranks, u.dtype, 'torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "t.safetensors")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "(1, 2, 2, 1) complex128 False"
    from safetensors.numpy import load_file

    raw = load_file(tmp_path / "t.safetensors")
    np.testing.assert_array_equal(raw["core_1"][..., 0] + 1j * raw["core_1"][..., 1], t.cores[1])
