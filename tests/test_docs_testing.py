"""docs/testing.md: its code blocks run, in order, in one namespace, and the tests they define pass."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGE = (ROOT / "docs" / "testing.md").read_text(encoding="utf-8")
BLOCKS = re.findall(r"^```python\n(.*?)^```", PAGE, re.S | re.M)


@pytest.fixture(scope="module")
def namespace():
    names: dict = {"__name__": "docs_testing"}
    for code in BLOCKS:
        exec(compile(code, "docs/testing.md", "exec"), names)
    return names


def _tests(names: dict) -> list[str]:
    return sorted(name for name, value in names.items() if name.startswith("test_") and callable(value))


def test_the_page_has_five_recipes_and_their_tests():
    assert len(re.findall(r"^### \d\. ", PAGE, re.M)) == 5
    names: dict = {}
    for code in BLOCKS:
        names.update(dict.fromkeys(re.findall(r"^def (test_\w+)", code, re.M)))
    assert len(names) >= 6  # at least one test per recipe, and the planted wrong rule


@pytest.mark.parametrize(
    "name",
    [
        "test_marginal_mean_depends_on_the_tensor_only",
        "test_weighted_sum_against_numpy",
        "test_energy_gradient",
        "test_a_wrong_rule_is_named",
        "test_norm_and_rounding_at_every_scale",
        "test_matvec_is_linear_and_rounding_finds_the_tt_ranks",
    ],
)
def test_recipe_runs(namespace, name):
    assert name in _tests(namespace)
    namespace[name]()


def test_every_test_on_the_page_is_run_here(namespace):
    listed = set(test_recipe_runs.pytestmark[0].args[1])
    assert set(_tests(namespace)) == listed
