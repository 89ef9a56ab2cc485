"""A checkpoint whose JSON skeleton has the wrong types or ranges is one clear error naming the file, never a
traceback: the skeleton is decoded (int64 integers, known tags) and its layout checked by type and range before
anything reads it, and before the checksum is checked (so a crafted file needs no valid checksum).
Property-tested with malformed skeletons made from a real one."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
from conftest import cli_status
from hypothesis import given
from hypothesis import strategies as st

from tensornet.gpt2 import build_model, gpt2_config
from tensornet.gpt2.app import _checkpoint, _resume, _train
from tensornet.gpt2.app._data import cached_tokenizer, stdlib_corpus

pytestmark = pytest.mark.usefixtures("one_thread")  # the tiny models run faster on one thread (conftest)

CKPT = "checkpoint.safetensors"


@pytest.fixture(scope="module")
def base(shared):
    """The shared run's checkpoint as JSON skeleton + tensors, and a model/optimizer/config that fit it."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = shared["run"] / CKPT
    with safe_open(str(path), framework="pt") as f:
        skeleton = json.loads(f.metadata()["skeleton"])
    tensors = load_file(str(path))
    tokenizer = cached_tokenizer(stdlib_corpus(max_chars=20000), 300, shared["cache"])
    config = gpt2_config(vocab_size=tokenizer.get_vocab_size(), block_size=16, n_layer=1, n_embd=32, n_head=2)
    cfg = _train.TrainConfig(steps=3, batch_size=4, block_size=16, lr=1e-3, warmup=2)
    model = build_model(config)
    signature = _checkpoint.load_checkpoint(path)["signature"]
    return {"skeleton": skeleton, "tensors": tensors, "model": model, "cfg": cfg, "signature": signature}


def write(folder: Path, skeleton, tensors, *, valid_checksum: bool = True) -> Path:
    """A checkpoint with this skeleton; its checksum valid (crafted) or not (damaged)."""
    folder.mkdir(parents=True, exist_ok=True)
    text = json.dumps(skeleton, separators=(",", ":"))
    header = f"{_checkpoint.CHECKPOINT_FORMAT}\n{_checkpoint.CHECKPOINT_VERSION}\n{text}"
    metadata = {
        "format": _checkpoint.CHECKPOINT_FORMAT,
        "version": str(_checkpoint.CHECKPOINT_VERSION),
        "skeleton": text,
        "sha256": _checkpoint.content_sha256(tensors, header) if valid_checksum else "0" * 64,
    }
    path = folder / CKPT
    _checkpoint.write_safetensors(path, tensors, metadata)
    return path


def every_check(base, folder: Path) -> None:
    """What --resume runs on a checkpoint: the cheap checks, the header against the model, the restore.

    Each either passes or raises one ValueError/FileNotFoundError naming the file; anything else fails.
    """
    cfg, model = base["cfg"], base["model"]
    path = folder / CKPT
    described = {k: v for k, v in base["signature"].items() if k != "train"}
    calls = (
        lambda: _resume.check_resume(folder, cfg, None),
        lambda: _resume.check_checkpoint_fits(
            folder, model, _train.make_optimizer(model, cfg), cfg, described
        ),
        lambda: _resume.restore(path, base["signature"], model, _train.make_optimizer(model, cfg), cfg),
    )
    for call in calls:
        try:
            call()
        except (ValueError, FileNotFoundError) as err:
            assert str(path) in str(err), err


def at(skeleton, path: tuple):
    node = skeleton
    for key in path:
        node = node[key]
    return node


# ------------------------------------------------------------------ the examples of the issue
def words(skeleton) -> list:
    """The 625 words of Python's RNG state in the skeleton (version, {"$tuple": words}, gauss)."""
    return skeleton["rng"]["python"]["$tuple"][1]["$tuple"]


EXAMPLES = {
    # a list where a key belongs: the optimizer state's {"$dict": [[param id, state], ...]}
    "list-as-key": lambda s: s["optimizer"]["state"]["$dict"][0].__setitem__(0, [0]),
    "dict-as-key": lambda s: s["optimizer"]["state"]["$dict"][0].__setitem__(0, {"a": 1}),
    "loss-10^400": lambda s: s["history"]["loss"].__setitem__(0, 10**400),
    "eval-step-10^400": lambda s: s["history"]["val"][0]["$tuple"].__setitem__(0, 10**400),
    "rng-word-2^64": lambda s: words(s).__setitem__(5, 2**64),
    "rng-word-2^32": lambda s: words(s).__setitem__(5, 2**32),
    "rng-position-625": lambda s: words(s).__setitem__(624, 625),
    "rng-word-negative": lambda s: words(s).__setitem__(0, -1),
    "step-bool": lambda s: s.__setitem__("step", True),
    # a list where an object belongs, an optimizer-state key no parameter id has, a signature too deep to compare
    "history-as-list": lambda s: s.__setitem__("history", [s["history"]]),
    "param-id-2^40": lambda s: s["optimizer"]["state"]["$dict"][0].__setitem__(0, 2**40),
    "signature-100-deep": lambda s: s["signature"].__setitem__("deep", json.loads("[" * 100 + "]" * 100)),
}


@pytest.mark.parametrize("case", sorted(EXAMPLES))
@pytest.mark.parametrize("valid_checksum", [True, False])
def test_malformed_checkpoint_examples_are_errors_naming_the_file(base, tmp_path, case, valid_checksum):
    skeleton = copy.deepcopy(base["skeleton"])
    EXAMPLES[case](skeleton)
    path = write(tmp_path, skeleton, base["tensors"], valid_checksum=valid_checksum)
    for call in (
        lambda: _resume.check_resume(tmp_path, base["cfg"], None),
        lambda: _checkpoint.checkpoint_outline(path, "--resume", _resume.check_layout),
        lambda: _resume.restore(
            path,
            base["signature"],
            base["model"],
            _train.make_optimizer(base["model"], base["cfg"]),
            base["cfg"],
        ),
    ):
        with pytest.raises(ValueError) as info:
            call()
        assert str(path) in str(info.value)


@pytest.mark.parametrize("case", ["list-as-key", "loss-10^400", "rng-word-2^64"])
def test_train_resume_of_a_malformed_skeleton_is_one_line_exit_2(shared, base, tmp_path, capsys, case):
    run = tmp_path / "run"
    shutil.copytree(shared["run"], run, ignore=shutil.ignore_patterns(".tensornet-run.lock"))
    skeleton = copy.deepcopy(base["skeleton"])
    EXAMPLES[case](skeleton)
    path = write(run, skeleton, base["tensors"])
    from conftest import GPT2_TINY

    argv = ["train", *GPT2_TINY, "--steps", "3", "--cache-dir", str(shared["cache"]), "--out", str(run)]
    assert cli_status([*argv, "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and str(path) in err[0], err


def test_the_error_says_where_the_value_is(base, tmp_path):
    for case, message in (
        ("loss-10^400", r"history\.loss\[0\] must be an integer of int64, got an integer of 401 digits"),
        ("rng-word-2^32", r"rng\.python\[1\]\[5\] must be a 32-bit word, got 4294967296"),
        ("step-bool", r"step must be an integer >= 0, got True"),
    ):
        skeleton = copy.deepcopy(base["skeleton"])
        EXAMPLES[case](skeleton)
        path = write(tmp_path / case, skeleton, base["tensors"])
        with pytest.raises(ValueError, match=message):
            _checkpoint.checkpoint_outline(path, "--resume", _resume.check_layout)
    # the generic decoder (any payload save_checkpoint writes) refuses unhashable keys and huge integers too
    for bad in ({"$dict": [[[1], 2]]}, {"a": 10**400}, {"$dict": [[{"$tuple": [[1]]}, 2]]}):
        write(tmp_path / "generic", bad, {})
        with pytest.raises(ValueError, match="is not a checkpoint tensornet wrote"):
            _checkpoint.load_checkpoint(tmp_path / "generic" / CKPT)


# ------------------------------------------------------------------ malformed skeletons, property-tested
def node_paths(node, prefix: tuple = ()) -> list[tuple]:
    """Every node's path in a JSON value (object keys and list indices), the root left out."""
    out = []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in items:
        out.append((*prefix, key))
        out += node_paths(child, (*prefix, key))
    return out


def region(path: tuple) -> tuple:
    """Which part of the checkpoint a path is in (each part is drawn equally often, whatever its size)."""
    return path[:2] if path[0] in ("history", "rng", "optimizer", "signature") else path[:1]


HUGE = [10**400, -(10**400), 2**64, 2**63, 2**32, -1, 625, 10**20]
TAGS = ["$tensor", "$tuple", "$dict", "$float", "$odd"]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.sampled_from(HUGE),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=4),
    st.sampled_from(["nan", "inf", "t0", "t99"]),
)
containers = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.one_of(st.sampled_from(TAGS), st.text(max_size=3)), inner, max_size=2),
        st.builds(lambda tag, value: {tag: value}, st.sampled_from(TAGS), inner),
    ),
    max_leaves=6,
)
# out-of-range integers and containers as often as everything else together: the values that broke decoding
values = st.one_of(st.sampled_from(HUGE), containers.filter(lambda v: isinstance(v, (list, dict))), scalars)


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@st.composite
def malformed(draw, skeleton):
    """The skeleton with one node replaced by an arbitrary JSON value, or one object entry removed.

    The node is a number (replaced by an out-of-range integer or a container), a key of a ``$dict`` pair (by a
    container or a number) or any node (by anything, or removed), its part of the checkpoint drawn first so
    that the small parts (step, history) are hit as often as the large ones (the RNG's 625 words).
    """
    paths = node_paths(skeleton)
    kind = draw(st.sampled_from(["number", "key", "any"]))
    if kind == "number":
        paths = [p for p in paths if is_number(at(skeleton, p))]
    elif kind == "key":
        paths = [p for p in paths if len(p) >= 3 and p[-3] == "$dict" and p[-1] == 0]
    regions = sorted({region(p) for p in paths}, key=str)
    chosen = draw(st.sampled_from(regions))
    path = draw(st.sampled_from([p for p in paths if region(p) == chosen]))
    out = copy.deepcopy(skeleton)
    parent = at(out, path[:-1])
    if kind == "any" and isinstance(parent, dict) and draw(st.booleans()):
        del parent[path[-1]]
    elif kind == "any":
        parent[path[-1]] = draw(values)
    else:
        parent[path[-1]] = draw(st.one_of(st.sampled_from(HUGE), containers))
    return out


def test_malformed_skeletons_are_one_clear_error(base, tmp_path_factory):
    @given(data=st.data())
    def check(data):
        skeleton = data.draw(malformed(base["skeleton"]), label="skeleton")
        valid = data.draw(st.booleans(), label="valid checksum")
        folder = tmp_path_factory.mktemp("malformed")
        write(folder, skeleton, base["tensors"], valid_checksum=valid)
        every_check(base, folder)
        shutil.rmtree(folder)

    check()
