"""House rules read from the sources.

- The package's and the benchmarks' import graph has no cycles, and no
  module reaches into another's underscore names unless that module is a
  private one (its own name starts with `_`), which exists to be shared.
  Every import counts, module level or inside a function.
- Private Keras and TensorFlow API is used only where a module says so:
  `keras.src` in `_compat` (and, for tests, `tests/harness.py`),
  `tensorflow.python` in `_xla`, Keras's private attribute names in
  `_compat`, and MultiHeadAttention's (`_compat.MULTI_HEAD_ATTENTION_STATE`)
  in the modules that build on it.
"""

import ast
import pathlib

import keras
import numpy as np

from keras_addons_qa import _compat

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGES = ("keras_addons_qa", "benchmarks")


def _modules():
    """`{dotted name: path}` of every module of the packages."""
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _is_private(module):
    return module.rsplit(".", 1)[-1].startswith("_") and not module.endswith("__main__")


def _imports(name, path, modules):
    """Yields `(target module, imported name or None, line)` for each of
    our modules `name` imports, and `aliases`: local name -> module."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    aliases, found = {}, []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in modules:
                    found.append((alias.name, None, node.lineno))
                    aliases[alias.asname or alias.name] = alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                if full in modules:  # a module
                    found.append((full, None, node.lineno))
                    aliases[alias.asname or alias.name] = full
                elif base in modules:  # a name of a module
                    found.append((base, alias.name, node.lineno))
    return found, aliases, tree


def _graph():
    modules = _modules()
    edges, reaches = {}, []
    for name, path in modules.items():
        found, aliases, tree = _imports(name, path, modules)
        edges[name] = {target for target, _, _ in found if target != name}
        for target, imported, line in found:
            if imported and imported.startswith("_") and not _is_private(target):
                reaches.append(f"{path.relative_to(ROOT)}:{line} imports {target}.{imported}")
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in aliases and node.attr.startswith("_")
                    and not node.attr.startswith("__")
                    and not _is_private(aliases[node.value.id])):
                reaches.append(f"{path.relative_to(ROOT)}:{node.lineno} reads "
                               f"{aliases[node.value.id]}.{node.attr}")
    return edges, reaches


def _cycles(edges):
    """Every strongly connected component with more than one module."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_the_import_graph_has_no_cycles():
    edges, _ = _graph()
    assert len(edges) > 40  # the modules were found
    assert "keras_addons_qa.text._chain" in edges["keras_addons_qa.layers.crf"]
    assert _cycles(edges) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_reaches_into_another_modules_private_names():
    _, reaches = _graph()
    assert reaches == []


# Where each private import root may appear.
PRIVATE_IMPORTS = {
    "keras.src": {"keras_addons_qa._compat", "tests.harness"},
    "tensorflow.python": {"keras_addons_qa._xla"},
    "jax._src": set(),
    "torch._": set(),
}


def _private_imports():
    """`(module, imported name)` of every import of a private root."""
    found = []
    for base in ("keras_addons_qa", "benchmarks", "tests", "examples"):
        for path in sorted((ROOT / base).rglob("*.py")):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    imported = [node.module]
                elif isinstance(node, ast.Import):
                    imported = [alias.name for alias in node.names]
                else:
                    continue
                for target in imported:
                    if any(target.startswith(root) for root in PRIVATE_IMPORTS):
                        found.append((name, target))
    return found


def test_private_imports_stay_where_a_module_says():
    found = _private_imports()
    assert ("keras_addons_qa._compat", "keras.src.backend") in found  # the scan sees them
    misplaced = [
        (name, target) for name, target in found
        if not any(target.startswith(root) and name in allowed
                   for root, allowed in PRIVATE_IMPORTS.items())
    ]
    assert misplaced == []


def _keras_private_names():
    """Private attribute names of Keras's own objects (layers, models,
    variables, losses, optimizers), as the installed Keras has them."""
    mha = keras.layers.MultiHeadAttention(2, 4)
    x = np.zeros((1, 3, 8), "float32")
    mha(x, x)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])
    objects = [mha, mha._query_dense, model, model.layers[0].kernel, keras.losses.Loss(),
               keras.constraints.Constraint(), keras.optimizers.Adam(), keras.layers.Layer,
               keras.Model]
    names = set()
    for obj in objects:
        names |= set(dir(obj)) | set(getattr(obj, "__dict__", ()))
    return {n for n in names if n.startswith("_") and not n.startswith("__")}


def test_private_keras_names_stay_where_compat_says():
    private = _keras_private_names()
    assert _compat.MULTI_HEAD_ATTENTION_STATE <= private | {"_use_gate", "_sliding_window"}
    misplaced = []
    for name, path in _modules().items():
        if name == "keras_addons_qa._compat":
            continue
        allowed = _compat.MULTI_HEAD_ATTENTION_STATE if name in _compat.MULTI_HEAD_ATTENTION_MODULES else set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Attribute):
                used = node.attr
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                used = node.value  # getattr(layer, "_name")
            else:
                continue
            if used in private and used not in allowed:
                misplaced.append(f"{path.relative_to(ROOT)}:{node.lineno} uses {used}")
    assert misplaced == []
