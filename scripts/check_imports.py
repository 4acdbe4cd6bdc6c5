"""Checks alignjax's import graph: no import cycle and no import that runs up the layer table.

    python scripts/check_imports.py            # prints the layer table and the graph; exit 1 on
                                               # a cycle, an upward import or an unknown module

Every `import alignjax...`, `from alignjax... import ...` and relative import counts, wherever it
stands (module level, inside a function, under `if TYPE_CHECKING:`). `from pkg import name` is
an edge to `pkg.name` when that is a module, else to `pkg`. A module may import modules of its
own layer (no cycles) and of the layers below. Inside `models/` and `data/` the modules also
keep a fixed order (ORDER_WITHIN): each imports only those listed before it, and the package
`__init__` comes last. Layers may name modules that do not exist yet. Standard library only.
"""

from __future__ import annotations

import argparse
import ast
import os
import sys

PACKAGE = "alignjax"

# Lowest first. An entry names a module, or a package and everything in it.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("alignjax", "alignjax.assets", "alignjax.logprobs", "alignjax.losses")),
    ("sharding", ("alignjax.sharding",)),
    ("models", ("alignjax.models",)),
    ("data", ("alignjax.data",)),
    ("steps", ("alignjax.steps",)),
    ("objectives", ("alignjax.objectives",)),
    ("services", ("alignjax.metrics", "alignjax.checkpoint", "alignjax.evaluate",
                  "alignjax.reference", "alignjax.sampler", "alignjax.draw", "alignjax.memory",
                  "alignjax.workdir")),
    ("rl", ("alignjax.rl",)),  # rewards, rollout, loop: the RL loop needs no runner
    ("runners", ("alignjax.aligner", "alignjax.aligner_w2s", "alignjax.train",
                 "alignjax.online_dpo", "alignjax.sample_job", "alignjax.rejection_sampling",
                 "alignjax.spin")),
    ("entry", ("alignjax.main",)),
]

# Inside these packages each module imports only the modules listed before it.
ORDER_WITHIN: dict[str, tuple[str, ...]] = {
    "alignjax.models": ("config", "transformer", "weights", "hf", "gguf", "tokenizer", "load",
                        "generate"),
    "alignjax.data": ("records", "readers", "hh_rlhf", "formats", "tfds_builder", "load",
                      "embedded", "splits", "chat", "truncation", "tokenization", "packing",
                      "collate", "pipeline", "sentiment"),
}


def find_modules(root: str) -> dict[str, str]:
    """Module name -> file, for every .py file of the package directory `root`."""
    modules = {}
    parent = os.path.dirname(os.path.abspath(root))
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for f in sorted(filenames):
            if not f.endswith(".py"):
                continue
            rel = os.path.relpath(os.path.join(dirpath, f), parent)[:-3].split(os.sep)
            if rel[-1] == "__init__":
                rel = rel[:-1]
            modules[".".join(rel)] = os.path.join(dirpath, f)
    return modules


def imports_of(name: str, file: str, modules: dict[str, str]) -> tuple[set[str], set[str]]:
    """(alignjax modules that `name` imports, alignjax names it imports that do not exist)."""
    with open(file, encoding="utf-8") as f:
        tree = ast.parse(f.read(), filename=file)
    is_package = file.endswith("__init__.py")
    package = name if is_package else name.rpartition(".")[0]
    found, missing = set(), set()

    def add(target: str):
        if target in modules:
            found.add(target)
        else:
            missing.add(target)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == PACKAGE or alias.name.startswith(PACKAGE + "."):
                    add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if not (source == PACKAGE or source.startswith(PACKAGE + ".")):
                continue
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                if sub in modules or source not in modules:
                    add(sub if sub in modules else source)
                elif alias.name == "*" or _binds(modules[source], alias.name):
                    add(source)
                else:
                    missing.add(sub)
    found.discard(name)  # `from alignjax.x import y` inside alignjax/x/__init__.py
    return found, missing


def _binds(file: str, name: str) -> bool:
    """Whether module `file` defines or imports `name` at top level (or has `__getattr__`)."""
    with open(file, encoding="utf-8") as f:
        body = ast.parse(f.read(), filename=file).body
    bound = set()
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            bound |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return name in bound or "__getattr__" in bound


def layer_of(module: str) -> int | None:
    """Index in LAYERS of the longest entry naming `module` (the package root only exactly)."""
    best, best_len = None, -1
    for i, (_, entries) in enumerate(LAYERS):
        for entry in entries:
            covers = module == entry or (entry != PACKAGE and module.startswith(entry + "."))
            if covers and len(entry) > best_len:
                best, best_len = i, len(entry)
    return best


def rank_within(module: str) -> tuple[str, int] | None:
    """(package, position) of a module of an ORDER_WITHIN package; its __init__ ranks last."""
    for package, order in ORDER_WITHIN.items():
        if module == package:
            return package, len(order)
        if module.startswith(package + "."):
            first = module[len(package) + 1:].split(".")[0]
            return package, order.index(first) if first in order else -1
    return None


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with a cycle (Tarjan), each as one cycle path."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
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
            if len(component) > 1 or v in graph.get(v, ()):
                out.append(_cycle_path(graph, set(component)))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _cycle_path(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """One cycle through the component, found by a breadth-first search back to its start."""
    start = min(component)
    paths, seen = [[start]], {start}
    while paths:
        path = paths.pop(0)
        for w in sorted(graph.get(path[-1], ())):
            if w == start:
                return [*path, start]
            if w in component and w not in seen:
                seen.add(w)
                paths.append([*path, w])
    return [start, start]


def check(root: str) -> tuple[dict[str, set[str]], list[str]]:
    """(import graph, violations) of the package directory `root`."""
    modules = find_modules(root)
    graph, problems = {}, []
    for name, file in sorted(modules.items()):
        graph[name], missing = imports_of(name, file, modules)
        problems += [f"{name} imports {m}, which does not exist" for m in sorted(missing)]
    for name in sorted(graph):
        if layer_of(name) is None:
            problems.append(f"{name}: not in the layer table (add it to LAYERS)")
        r = rank_within(name)
        if r is not None and r[1] < 0:
            problems.append(f"{name}: not in ORDER_WITHIN[{r[0]!r}] (add it where it belongs)")
    for name, targets in sorted(graph.items()):
        src = layer_of(name)
        for target in sorted(targets):
            dst = layer_of(target)
            if src is not None and dst is not None and dst > src:
                problems.append(f"upward import: {name} ({LAYERS[src][0]}) imports {target} "
                                f"({LAYERS[dst][0]})")
                continue
            a, b = rank_within(name), rank_within(target)
            if a and b and a[0] == b[0] and min(a[1], b[1]) >= 0 and b[1] > a[1]:
                problems.append(f"upward import within {a[0]}: {name} imports {target}, "
                                "listed after it in ORDER_WITHIN")
    problems += ["import cycle: " + " -> ".join(c) for c in cycles(graph)]
    return graph, problems


def main(argv: list[str] | None = None) -> int:
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=os.path.join(here, PACKAGE),
                        help="the package directory (default: alignjax/ of this repository)")
    args = parser.parse_args(argv)
    graph, problems = check(args.root)

    print("layers, lowest first (a module imports its own layer and those below):")
    for i, (label, entries) in enumerate(LAYERS):
        present = [e for e in entries if any(m == e or m.startswith(e + ".") for m in graph)]
        absent = [e for e in entries if e not in present]
        print(f"  {i} {label:<10} {', '.join(present) or '-'}"
              + (f"   (not yet: {', '.join(absent)})" if absent else ""))
    for package, order in ORDER_WITHIN.items():
        print(f"  within {package}: {' < '.join(order)} < __init__")
    print(f"\n{len(graph)} modules, {sum(map(len, graph.values()))} intra-package imports:")
    for name, targets in sorted(graph.items()):
        if targets:
            short = sorted(t.removeprefix(PACKAGE + ".") for t in targets)
            print(f"  {name.removeprefix(PACKAGE + '.') or PACKAGE} -> {', '.join(short)}")
    if problems:
        print(f"\n{len(problems)} violation(s):")
        for p in problems:
            print(f"  {p}")
        return 1
    print("\nno cycles, no upward imports")
    return 0


if __name__ == "__main__":
    sys.exit(main())
