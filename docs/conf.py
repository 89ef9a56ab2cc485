"""Sphinx configuration of the tensornet documentation site.

Built with Sphinx, numpydoc (the docstrings are numpy style and use Sphinx's cross-reference roles), myst-nb
(the Markdown pages and the notebooks, executed at build time) and the PyData theme. ``nitpicky`` turns every
cross-reference that does not resolve into a warning, and ``sphinx-build -W`` (CI, the README's command)
turns warnings into errors; :func:`check_api` adds a warning for every public name that no page documents.
"""

from __future__ import annotations

import importlib
import inspect
import os
import pkgutil
import shutil
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))

import tensornet  # noqa: E402

project = "tensornet"
author = "the tensornet authors"
copyright = "the tensornet authors"
version = release = tensornet.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "numpydoc",
    "myst_nb",
]
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "**.ipynb_checkpoints"]
html_theme = "pydata_sphinx_theme"
html_title = f"tensornet {release}"
html_theme_options = {"navigation_with_keys": False, "show_toc_level": 2}

# --- strictness ---------------------------------------------------------------------------------------
nitpicky = True  # every cross-reference must resolve
# names outside this project (no intersphinx: the build needs no network) and private modules that
# docstrings mention for the curious reader: shown as code, not links
nitpick_ignore_regex = [
    (r"py:.*", r"(numpy|torch|matplotlib|hypothesis|transformers|safetensors|opt_einsum|scipy)(\..*)?"),
    (r"py:.*", r"(torchtt|tntorch|teneva|tensorly|quimb|peft|array_api_compat)(\..*)?"),
    (r"py:.*", r"tensornet(\.\w+)*\._\w+(\..*)?"),  # private modules and names
    (r"py:.*", r"_\w+"),
    (r"py:.*", r"(optional|array|arrays|callable|sequence|int|float|str|bool|complex|dict|list|tuple|None)"),
    (r"py:.*", r"(pathlib\.Path|os\.PathLike|Any|typing\..*|collections\.abc\..*)"),
]
numpydoc_validation_checks = {"GL08"}  # an object without a docstring is an error
# hypothesis' composite strategies have no source numpydoc can read (its validator then fails); their
# docstrings are checked by check_api below like every public name's
numpydoc_validation_exclude = {r"tensornet\.testing\.strategies\.\w+$"}
numpydoc_show_class_members = False  # autodoc lists the members
numpydoc_xref_param_type = False
# members inherited from tensornet's own (private) base classes are part of each class's API; those of
# torch.nn.Module, exceptions and builtins are not repeated
autodoc_default_options = {
    "members": True,
    "undoc-members": True,
    "inherited-members": "Module,Function,BaseException,Exception,Warning,UserWarning,RuntimeWarning,tuple,dict,object",
    "member-order": "bysource",
}
autodoc_typehints = "none"  # types are in the docstrings' Parameters; annotations use private aliases
autodoc_inherit_docstrings = True
myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 3

# --- notebooks: copied from ../notebooks, executed at build time -------------------------------------
# TENSORNET_DOCS_EXECUTE=off skips execution (a quick local look at the pages without outputs)
nb_execution_mode = "off" if os.environ.get("TENSORNET_DOCS_EXECUTE") == "off" else "force"
nb_execution_raise_on_error = True
nb_execution_timeout = 900
nb_merge_streams = True
_NOTEBOOKS = DOCS / "notebooks"
_NOTEBOOKS.mkdir(exist_ok=True)
for _source in sorted((ROOT / "notebooks").glob("*.ipynb")):
    _target = _NOTEBOOKS / _source.name
    if not _target.exists() or _target.read_bytes() != _source.read_bytes():
        shutil.copyfile(_source, _target)

# --- the public API and its pages --------------------------------------------------------------------
# a public module is documented on its own page (docs/api/<name>.rst, ``.. automodule::``); the names of
# tensornet's own namespace are grouped on docs/api/tensornet.rst. Modules whose public names are all
# re-exported by ``tensornet`` (or that hold implementation only) are listed here as not needing a page.
IMPLEMENTATION = {
    "tensornet.construct",
    "tensornet.decomp",
    "tensornet.ops",
    "tensornet.random",
    "tensornet.structure",
    "tensornet.tt",
}


def public_modules() -> list[str]:
    """``tensornet`` and every importable module below it without a private (``_``) path component."""
    names = ["tensornet"]
    for info in pkgutil.walk_packages(tensornet.__path__, "tensornet."):
        parts = info.name.split(".")
        if any(p.startswith("_") for p in parts[1:]):
            continue
        names.append(info.name)
    return names


def _documented(env) -> set[str]:
    py = env.get_domain("py")
    return {name for name, *_ in py.get_objects()}


def _resolve(name: str) -> object:
    """The object a documented dotted name stands for (None if it does not import)."""
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return None
        return obj
    return None


def skip_reexports(app, what, name, obj, skip, options) -> bool | None:
    """Leave out of a module page the names documented on another page (one description per object).

    Names of ``tensornet``'s own namespace (documented on its page) and, on ``tensornet.gpt2``, the
    classes it re-exports from ``tensornet.nn``.
    """
    if name == "extra_repr":  # torch's printing hook, not an API
        return True
    if what != "module" or skip:
        return None
    if any(getattr(tensornet, n, None) is obj for n in tensornet.__all__):
        return True
    home = getattr(obj, "__module__", "") or ""
    return True if home.startswith("tensornet.nn") and app.env.docname == "api/gpt2" else None


def check_api(app, env) -> None:
    """Warn (an error under -W) for each public module without a page and each public name no page documents.

    A name counts as documented where it, or the same object under another public name, has a description
    with a docstring.
    """
    documented = _documented(env)
    objects = {id(obj) for obj in map(_resolve, documented) if obj is not None}
    logger = __import__("sphinx.util", fromlist=["logging"]).logging.getLogger("tensornet.api")
    for module_name in public_modules():
        if module_name not in documented and module_name not in IMPLEMENTATION:
            logger.warning(
                f"public module {module_name} has no API page: add docs/api/{module_name.split('.', 1)[-1]}.rst "
                f"with `.. automodule:: {module_name}` (and a line in docs/api/index.rst), or list it in "
                "IMPLEMENTATION in docs/conf.py"
            )
            continue
        if module_name in IMPLEMENTATION:
            continue
        module = importlib.import_module(module_name)
        for name in getattr(module, "__all__", []):
            if inspect.ismodule(getattr(module, name)):
                continue  # a submodule: checked as a module
            obj = getattr(module, name)
            if not (inspect.getdoc(obj) or "").strip():
                logger.warning(f"public name {module_name}.{name} has no docstring")
            if f"{module_name}.{name}" not in documented and id(obj) not in objects:
                page = "docs/api/tensornet.rst" if module_name == "tensornet" else "its module page"
                logger.warning(f"public name {module_name}.{name} is not documented: add it to {page}")


def resolve_short_names(app, env, node, contnode):
    """Resolve a short cross-reference that names exactly one documented public object.

    E.g. ``:func:`complete``` in ``tensornet.learn``, whose names ``tensornet`` re-exports and documents
    once, on its own page. Ambiguous or unknown names stay unresolved: an error.
    """
    if node.get("refdomain") != "py":
        return None
    target = node.get("reftarget", "").lstrip("~.")
    if not target or target.startswith("_"):
        return None
    py = env.get_domain("py")
    matches = [
        name
        for name in py.objects
        if name.endswith("." + target) and name.startswith("tensornet") and "._" not in name
    ]
    if len(matches) != 1:
        return None
    return py.resolve_xref(env, node["refdoc"], app.builder, node["reftype"], matches[0], node, contnode)


def setup(app) -> None:
    """Connect the checks and the resolver."""
    app.connect("missing-reference", resolve_short_names)
    app.connect("env-check-consistency", check_api)
    app.connect("autodoc-skip-member", skip_reexports)
