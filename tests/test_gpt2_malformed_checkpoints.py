"""A malformed checkpoint is one clear error naming the file, never a traceback: a damaged one fails its
checksum; a crafted one (its checksum recomputed) fails while it is checked or loaded into the run, and that
failure, whatever it is, is one ValueError naming the file. Property-tested with malformed checkpoints made
from a real one."""

from __future__ import annotations

import copy
import math
import shutil
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import cli_status
from hypothesis import given
from hypothesis import strategies as st

from tensornet.gpt2 import build_model, gpt2_config
from tensornet.gpt2.app import _checkpoint, _resume, _train
from tensornet.gpt2.app._data import cached_tokenizer, stdlib_corpus

pytestmark = pytest.mark.usefixtures("one_thread")  # the tiny models run faster on one thread (conftest)

CKPT = "checkpoint.pt"
DELETE = object()  # a replacement that removes the node


@pytest.fixture(scope="module")
def base(shared):
    """The shared run's checkpoint payload, and a model/optimizer/config that fit it."""
    payload = _checkpoint.load_checkpoint(shared["run"] / CKPT)
    tokenizer = cached_tokenizer(stdlib_corpus(max_chars=20000), 300, shared["cache"])
    config = gpt2_config(vocab_size=tokenizer.get_vocab_size(), block_size=16, n_layer=1, n_embd=32, n_head=2)
    cfg = _train.TrainConfig(steps=3, batch_size=4, block_size=16, lr=1e-3, warmup=2)
    return {"payload": payload, "model": build_model(config), "cfg": cfg, "signature": payload["signature"]}


def write(folder: Path, payload, *, valid_checksum: bool = True) -> Path:
    """A checkpoint with this payload; its checksum valid (crafted) or not (damaged)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / CKPT
    if valid_checksum:
        _checkpoint.save_checkpoint(path, payload)
    else:
        record = {"format": _checkpoint.CHECKPOINT_FORMAT, "version": _checkpoint.CHECKPOINT_VERSION}
        torch.save({**record, "sha256": "0" * 64, "payload": payload}, path)
    return path


def every_check(base, folder: Path) -> None:
    """What --resume runs on a checkpoint: the cheap checks, the checkpoint against the model, the restore.

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


def replaced(node, path: tuple, value):
    """``node`` with the value at ``path`` (keys and indices) replaced by ``value`` (or removed: DELETE)."""
    if not path:
        return value
    key, rest = path[0], path[1:]
    if isinstance(node, dict):
        out = dict(node)
        if rest or value is not DELETE:
            out[key] = replaced(node.get(key), rest, value)
        else:
            del out[key]
        return out
    items = list(node)
    if rest or value is not DELETE:
        items[key] = replaced(node[key], rest, value)
    else:
        del items[key]
    return type(node)(items) if isinstance(node, tuple) else items


def with_key(node, path: tuple, key):
    """``node`` with the dict at ``path`` holding its first entry under ``key`` instead."""
    parent = node
    for k in path:
        parent = parent[k]
    first, *others = parent.items()
    return replaced(node, path, {key: first[1], **dict(others)})


def words_at(i: int) -> tuple:
    return ("rng", "python", 1, i)  # Python's RNG state: (version, 625 words, gauss)


# (a crafted value that loads without an error, e.g. an RNG word of 2**32 that Python's random truncates, is
# the crafter's own run: the checksum is the guard against damage, not against the user)
EXAMPLES = {
    "tuple-as-key": lambda p: with_key(p, ("optimizer", "state"), (0, 1.5)),
    "string-as-key": lambda p: with_key(p, ("optimizer", "state"), "0"),
    "loss-10^400": lambda p: replaced(p, ("history", "loss", 0), 10**400),
    "rng-word-2^64": lambda p: replaced(p, words_at(5), 2**64),
    "rng-position-625": lambda p: replaced(p, words_at(624), 625),
    "rng-word-negative": lambda p: replaced(p, words_at(0), -1),
    "step-bool": lambda p: replaced(p, ("step",), True),
    "history-as-list": lambda p: replaced(p, ("history",), [p["history"]]),
    "param-id-2^40": lambda p: with_key(p, ("optimizer", "state"), 2**40),
    "signature-100-deep": lambda p: replaced(p, ("signature", "deep"), deep(100)),
    "signature-train-tensor": lambda p: replaced(p, ("signature", "train", "lr"), torch.ones(2)),
    "model-not-tensor": lambda p: replaced(p, ("model", next(iter(p["model"]))), [1.0]),
    "payload-a-list": lambda p: [p],
}


def deep(depth: int) -> list:
    out: list = []
    for _ in range(depth):
        out = [out]
    return out


@pytest.mark.parametrize("case", sorted(EXAMPLES))
@pytest.mark.parametrize("valid_checksum", [True, False])
def test_malformed_checkpoint_examples_are_errors_naming_the_file(base, tmp_path, case, valid_checksum):
    path = write(tmp_path, EXAMPLES[case](base["payload"]), valid_checksum=valid_checksum)
    model, cfg = base["model"], base["cfg"]
    described = {k: v for k, v in base["signature"].items() if k != "train"}
    for call in (
        lambda: _resume.check_checkpoint_fits(
            tmp_path, model, _train.make_optimizer(model, cfg), cfg, described
        ),
        lambda: _resume.restore(path, base["signature"], model, _train.make_optimizer(model, cfg), cfg),
    ):
        with pytest.raises(ValueError) as info:
            call()
        message = str(info.value)
        assert str(path) in message and len(message.splitlines()) == 1
        if not valid_checksum:  # damage is what the error says, whatever else is wrong
            assert "fails its checksum" in message, message


def test_a_tensor_in_the_signature_is_one_error_naming_the_file(base, tmp_path):
    # (once a traceback from comparing it: "Boolean value of Tensor with more than one value is ambiguous")
    path = write(tmp_path, EXAMPLES["signature-train-tensor"](base["payload"]))
    with pytest.raises(ValueError, match="is not a checkpoint this run can resume") as info:
        _resume.check_resume(tmp_path, base["cfg"], None)
    assert str(path) in str(info.value) and "RuntimeError: Boolean value of Tensor" in str(info.value)


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case", ["tuple-as-key", "loss-10^400", "rng-word-2^64"])
def test_train_resume_of_a_malformed_checkpoint_is_one_line_exit_2(shared, base, tmp_path, capsys, case):
    run = tmp_path / "run"
    shutil.copytree(shared["run"], run, ignore=shutil.ignore_patterns(".tensornet-run.lock"))
    path = write(run, EXAMPLES[case](base["payload"]))
    from conftest import GPT2_TINY

    before = tree(run)
    argv = ["train", *GPT2_TINY, "--steps", "3", "--cache-dir", str(shared["cache"]), "--out", str(run)]
    assert cli_status([*argv, "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and str(path) in err[0], err
    assert "is not a checkpoint this run can resume" in err[0], err
    assert tree(run) == before  # nothing changed on disk


def test_the_error_says_what_broke(base, tmp_path):
    # a crafted file's error is the exception that loading it raised, with its type, on one line
    for case, message in (
        ("loss-10^400", r"\(OverflowError: int too large to convert to float\)"),
        ("rng-word-2^64", r"\(OverflowError: "),
        ("step-bool", r"\(ValueError: its step 1 does not match its 3 losses"),
        ("model-not-tensor", r"\(RuntimeError: Error\(s\) in loading state_dict"),
    ):
        path = write(tmp_path / case, EXAMPLES[case](base["payload"]))
        model, cfg = base["model"], base["cfg"]
        with pytest.raises(ValueError, match=r"is not a checkpoint this run can resume " + message):
            _resume.restore(path, base["signature"], model, _train.make_optimizer(model, cfg), cfg)


def test_the_checksum_covers_every_value(base, tmp_path):
    # a crafted change anywhere, with the checksum of the original: the file fails its checksum
    path = write(tmp_path, base["payload"])
    record = torch.load(path, weights_only=True)
    for change in (
        lambda p: replaced(p, ("history", "loss", 0), p["history"]["loss"][0] + 1e-9),
        lambda p: replaced(p, ("history", "val", 0), (p["history"]["val"][0][0], 0.5)),
        lambda p: replaced(p, words_at(7), p["rng"]["python"][1][7] ^ 1),
        lambda p: replaced(p, ("step",), 2),
        lambda p: replaced(p, ("signature", "train", "lr"), 2e-3),
    ):
        torch.save({**record, "payload": change(record["payload"])}, path)
        with pytest.raises(ValueError, match="fails its checksum"):
            _checkpoint.load_checkpoint(path)
    model = dict(record["payload"]["model"])
    name = next(iter(model))
    model[name] = model[name].clone()
    model[name].view(-1)[0] = math.nextafter(float(model[name].view(-1)[0]), math.inf)
    torch.save({**record, "payload": {**record["payload"], "model": model}}, path)
    with pytest.raises(ValueError, match="fails its checksum"):
        _checkpoint.load_checkpoint(path)


def test_a_compressed_archive_is_refused_before_it_is_inflated(base, tmp_path):
    # torch.save stores its records uncompressed; a deflated record (a zip bomb's tool) is refused unread
    path = write(tmp_path, base["payload"])
    packed = tmp_path / "packed.pt"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(packed, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
    with pytest.raises(ValueError, match=r"compressed records, which torch\.save never writes"):
        _checkpoint.load_checkpoint(packed)
    assert _checkpoint.load_checkpoint(path)["step"] == base["payload"]["step"]  # the stored original reads


# ------------------------------------------------------------------ malformed checkpoints, property-tested
def node_paths(node, prefix: tuple = ()) -> list[tuple]:
    """Every node's path (dict keys and list/tuple indices), the root and the tensors' insides left out."""
    out = []
    items = (
        node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, (list, tuple)) else ()
    )
    for key, child in items:
        out.append((*prefix, key))
        out += node_paths(child, (*prefix, key))
    return out


def region(path: tuple) -> tuple:
    """Which part of the checkpoint a path is in (each part is drawn equally often, whatever its size)."""
    return path[:2] if path[0] in ("history", "rng", "optimizer", "signature") else path[:1]


HUGE = [10**400, -(10**400), 2**64, 2**63, 2**32, -1, 625, 10**20]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.sampled_from(HUGE),
    st.floats(),
    st.text(max_size=4),
    st.just(torch.zeros(2)),
)
containers = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.lists(inner, max_size=3).map(tuple),
        st.dictionaries(st.one_of(st.text(max_size=3), st.integers(-2, 2)), inner, max_size=2),
    ),
    max_leaves=6,
)
# out-of-range integers and containers as often as everything else together: the values that broke decoding
values = st.one_of(
    st.sampled_from(HUGE), containers.filter(lambda v: isinstance(v, (list, tuple, dict))), scalars
)
keys = st.one_of(
    st.sampled_from(HUGE), st.text(max_size=3), st.none(), st.tuples(st.integers(), st.integers())
)


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def at(node, path: tuple):
    for key in path:
        node = node[key]
    return node


@st.composite
def malformed(draw, payload):
    """The payload with one node replaced by an arbitrary value, one entry removed, or one key replaced.

    The node is a number (replaced by an out-of-range integer or a container), a dict key (replaced by another
    key) or any node (by anything, or removed), its part of the checkpoint drawn first so that the small parts
    (step, history) are hit as often as the large ones (the RNG's 625 words).
    """
    paths = node_paths(payload)
    kind = draw(st.sampled_from(["number", "key", "any"]))
    if kind == "number":
        paths = [p for p in paths if is_number(at(payload, p))]
    elif kind == "key":
        paths = [p for p in paths if isinstance(at(payload, p), dict) and at(payload, p)]
    regions = sorted({region(p) for p in paths}, key=str)
    chosen = draw(st.sampled_from(regions))
    path = draw(st.sampled_from([p for p in paths if region(p) == chosen]))
    if kind == "key":
        return with_key(payload, path, draw(keys))
    if kind == "any" and draw(st.booleans()):
        return replaced(payload, path, DELETE)
    return replaced(
        payload, path, draw(values if kind == "any" else st.one_of(st.sampled_from(HUGE), containers))
    )


def test_malformed_checkpoints_are_one_clear_error(base, tmp_path_factory):
    @given(data=st.data())
    def check(data):
        payload = data.draw(malformed(copy.copy(base["payload"])), label="payload")
        valid = data.draw(st.booleans(), label="valid checksum")
        folder = tmp_path_factory.mktemp("malformed")
        write(folder, payload, valid_checksum=valid)
        every_check(base, folder)
        shutil.rmtree(folder)

    check()
