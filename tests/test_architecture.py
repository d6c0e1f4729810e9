"""The house's rules, checked on the code: which module may import which, and the public face.

A call travels one way — decorators → job database → backends → MPI worker → statistics
(see docs/architecture.md). These tests read every module's imports (without running
it) and fail on an arrow that goes back: the ranks importing the caller's side, the job
database importing anything above it, the job-folder formats importing the backends.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import parallelaverage

PACKAGE = Path(parallelaverage.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """The parallelaverage modules a file imports (anywhere in it, lazy imports too)."""
    tree = ast.parse(path.read_text())
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rsplit(".", 1)[0]
    found = set()
    skipped = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
               and "TYPE_CHECKING" in ast.unparse(block.test) for n in ast.walk(block)}  # never executed
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("parallelaverage"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            if not target.startswith("parallelaverage"):
                continue
            names_only_modules = True
            for alias in node.names:  # `from parallelaverage import errors` imports a module
                candidate = f"{target}.{alias.name}"
                if (PACKAGE.parent / Path(*candidate.split("."))).with_suffix(".py").exists() or \
                        (PACKAGE.parent / Path(*candidate.split("."))).is_dir():
                    found.add(candidate)
                else:
                    names_only_modules = False
            if not names_only_modules:
                found.add(target)
    found.discard(here)
    return found


GRAPH = {module_name(path): imports_of(path) for path in PACKAGE.rglob("*.py")}

RANK_SIDE = {"parallelaverage.worker", "parallelaverage.mpi", "parallelaverage._allreduce",
             "parallelaverage._context", "parallelaverage.stats", "parallelaverage._kernels",
             "parallelaverage._launch_check", "parallelaverage.runspace", "parallelaverage.errors",
             "parallelaverage._atomic", "parallelaverage._packed", "parallelaverage._welford",
             "parallelaverage._accumulator", "parallelaverage._moments", "parallelaverage._momentkernels",
             "parallelaverage._batches", "parallelaverage._histogram", "parallelaverage._binning",
             "parallelaverage._collective", "parallelaverage._target", "parallelaverage._runcounter"} | {m for m in GRAPH if m.startswith("parallelaverage.jobfiles")}


def in_group(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_the_ranks_import_nothing_of_the_caller_side():
    """What every MPI rank loads: the worker, the engine, the statistics, the job-folder formats."""
    wrong = {(m, i) for m in RANK_SIDE for i in GRAPH.get(m, ()) if i != "parallelaverage" and i not in RANK_SIDE}
    assert not wrong, sorted(wrong)


def test_the_job_database_imports_nothing_above_it():
    allowed = ("parallelaverage.jobdb", "parallelaverage.errors", "parallelaverage._atomic", "parallelaverage.runspace")
    wrong = {(m, i) for m, found in GRAPH.items() if in_group(m, ("parallelaverage.jobdb",))
             for i in found if not in_group(i, allowed)}
    assert not wrong, sorted(wrong)


def names_imported_from(path: Path, module: str) -> set[str]:
    """The names a file imports with ``from <module> import ...``."""
    return {alias.name for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.ImportFrom) and node.module == module and not node.level for alias in node.names}


def test_the_job_database_owns_its_folder():
    """Outside jobdb/, the database is reached through ``parallelaverage.jobdb``'s public names
    (JobDatabase's methods for its folder), never its modules (their layout constants, index
    files, name patterns): the tools above it (cli/, viewer/, _cleanup...) ask the database."""
    wrong = {(m, i) for m, found in GRAPH.items() if not in_group(m, ("parallelaverage.jobdb",))
             for i in found if i.startswith("parallelaverage.jobdb.")}
    assert not wrong, sorted(wrong)
    import parallelaverage.jobdb as jobdb

    for path in PACKAGE.rglob("*.py"):
        if not in_group(module_name(path), ("parallelaverage.jobdb",)):
            private = names_imported_from(path, "parallelaverage.jobdb") - set(jobdb.__all__)
            assert not private, (module_name(path), sorted(private))


def test_the_message_prefix_has_one_home():
    """``[parallelaverage]`` is written by errors.say / errors.warn (PREFIX): no other code spells it."""
    spelled = []
    for path in PACKAGE.rglob("*.py"):
        if path == PACKAGE / "errors.py":
            continue
        tree = ast.parse(path.read_text())
        docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                      if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                      and node.body and isinstance(node.body[0], ast.Expr)
                      and isinstance(node.body[0].value, ast.Constant)}
        spelled += [f"{module_name(path)}:{node.lineno}" for node in ast.walk(tree)
                    if isinstance(node, ast.Constant) and isinstance(node.value, str)
                    and "parallelaverage]" in node.value and id(node) not in docstrings]
    assert spelled == []


RETIRED_WORDS = {"attempt": "launch_no", "attempts": "launch_numbers", "attempt_dir": "launch_dir"}
"""Names the code no longer uses (docs/architecture.md, "Words"): a launch is a launch. Only
strings keep the old word where files on disk and users' templates need it (``attempts/<k>``,
``{{attempt}}``)."""


def test_one_word_for_a_launch_in_every_name():
    """No identifier (variable, argument, attribute, function) says ``attempt``."""
    found = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Name):
                names = [node.id]
            elif isinstance(node, ast.Attribute):
                names = [node.attr]
            elif isinstance(node, ast.arg):
                names = [node.arg]
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names = [node.name]
            elif isinstance(node, ast.keyword) and node.arg:
                names = [node.arg]
            found += [f"{module_name(path)}:{node.lineno} {name}" for name in names if "attempt" in name.lower()]
    assert found == [], f"say launch (see RETIRED_WORDS {RETIRED_WORDS}): {found}"


def test_the_job_folder_layout_knows_nothing_of_statistics_and_the_formats_nothing_of_backends():
    assert not {i for i in GRAPH["parallelaverage.jobfiles.layout"] if "stats" in i or "_kernels" in i}
    above = ("parallelaverage.backends", "parallelaverage.jobdb", "parallelaverage.job", "parallelaverage._state",
             "parallelaverage._decorators", "parallelaverage.cli", "parallelaverage.viewer")
    wrong = {(m, i) for m, found in GRAPH.items() if in_group(m, ("parallelaverage.jobfiles",))
             for i in found if in_group(i, above)}
    assert not wrong, sorted(wrong)


def test_backends_import_neither_each_other_nor_the_job_layer():
    above = ("parallelaverage.job", "parallelaverage._state", "parallelaverage._decorators", "parallelaverage.cli",
             "parallelaverage.viewer", "parallelaverage.jobdb")
    for module, found in GRAPH.items():
        if not in_group(module, ("parallelaverage.backends",)):
            continue
        assert not {i for i in found if in_group(i, above)}, module
        if module.endswith(("local", "slurm", "slurm_script")):
            siblings = {i for i in found if i.rsplit(".", 1)[-1] in ("local", "slurm") and i != module}
            assert not siblings, (module, siblings)


def test_no_circle_of_imports():
    def reaches(start: str) -> set[str]:
        seen, frontier = set(), [start]
        while frontier:
            for nxt in GRAPH.get(frontier.pop(), ()):
                if nxt not in seen and nxt in GRAPH:
                    seen.add(nxt)
                    frontier.append(nxt)
        return seen

    circles = sorted(m for m in GRAPH if m in reaches(m))
    assert circles == []


def test_the_public_names_and_the_lazy_table_agree_and_each_has_a_docstring():
    table = parallelaverage._WHERE
    assert list(table) == parallelaverage.__all__
    for name, where in table.items():
        module = importlib.import_module(f"parallelaverage.{where}")
        value = getattr(module, name)
        assert getattr(parallelaverage, name) is value, name
        if callable(value):
            assert (value.__doc__ or "").strip(), f"parallelaverage.{name} has no docstring"


PUBLIC_MODULES = ["parallelaverage", "parallelaverage.mpi", "parallelaverage.stats", "parallelaverage.job",
                  "parallelaverage.runspace", "parallelaverage.errors", "parallelaverage.results",
                  "parallelaverage.jobdb"]


def documented_in_source(module: object, name: str) -> bool:
    """Whether the module (or, for a package, one of its modules) that assigns the constant
    ``name`` documents it: a ``#:`` comment right above, or a string right after (what
    Sphinx's autodoc reads)."""
    path = Path(module.__file__)
    # a façade (stats.py) imports its constants from the private module that documents them
    sources = [PACKAGE.parent / Path(*node.module.split(".")).with_suffix(".py")
               for node in ast.walk(ast.parse(path.read_text()))
               if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("parallelaverage.")
               and any(alias.name == name for alias in node.names)]
    for candidate in [path, *(sorted(path.parent.glob("*.py")) if path.name == "__init__.py" else []), *sources]:
        source = candidate.read_text()
        body, lines = ast.parse(source).body, source.splitlines()
        for i, node in enumerate(body):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                after = body[i + 1] if i + 1 < len(body) else None
                if isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str):
                    return True
                return lines[node.lineno - 2].lstrip().startswith("#:")
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("parallelaverage") \
                    and any(alias.name == name and alias.asname is None for alias in node.names):
                return documented_in_source(importlib.import_module(node.module), name)  # re-exported
    return False


def undocumented_members(cls: type) -> list[str]:
    """The public methods and properties a class defines without a docstring."""
    missing = []
    for name, member in vars(cls).items():
        if name.startswith("_"):
            continue
        function = member.fget if isinstance(member, property) else getattr(member, "__func__", member)
        if callable(function) and not (function.__doc__ or "").strip():
            missing.append(f"{cls.__name__}.{name}")
    return missing


@pytest.mark.parametrize("module", PUBLIC_MODULES)
def test_every_public_name_of_a_public_module_has_a_docstring(module):
    """Functions and classes (and the public methods and properties of those classes) by
    their docstring, constants by a ``#:`` comment or a string after them."""
    loaded = importlib.import_module(module)
    missing = []
    for name in loaded.__all__:
        value = getattr(loaded, name)
        if not callable(value):
            if not documented_in_source(loaded, name):
                missing.append(name)
        elif not (value.__doc__ or "").strip():
            missing.append(name)
        elif isinstance(value, type) and not issubclass(value, BaseException):
            missing += undocumented_members(value)
    assert missing == []
