"""The package's layers: imports flow one way (edges -> orchestration -> stages -> supporting), and the
four stages do not import each other."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "medical_etl"
STAGES = ("scrape", "load", "transform", "enrich")
LAYERS = {  # top-level name below medical_etl -> layer (higher calls lower)
    **dict.fromkeys(("errors", "secrets", "resources", "config", "logsetup", "progress", "tracing", "filelock", "dbhealth",
                     "lake", "runlog", "live_runs", "housekeeping", "db", "migrate"), 0),
    **dict.fromkeys(STAGES, 1),
    "jobs": 2,
    **dict.fromkeys(("ops", "monitor", "api"), 3),
    **dict.fromkeys(("cli", "__main__", "orchestration"), 4),
}


def imports_of(path: Path) -> set[str]:
    """The medical_etl modules a file imports (absolute names; at any depth, lazy imports included)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.startswith("medical_etl"):
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("medical_etl"))
    return out


def top(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def test_every_module_has_a_layer_and_imports_flow_one_way():
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(rel.parts).removesuffix(".__init__")
        if name == "medical_etl":
            continue  # the public API re-exports from every layer (lazily)
        own = top(name)
        assert own is not None, f"{name}: no layer in LAYERS"
        for imported in imports_of(path):
            other = top(imported)
            if other is None or other == own:
                continue
            if LAYERS[other] > LAYERS[own]:
                problems.append(f"{name} imports {imported} (layer {LAYERS[other]} above {LAYERS[own]})")
            elif LAYERS[own] == LAYERS[other] == 1:
                problems.append(f"stage {own} imports stage {other} ({name} -> {imported})")
    assert problems == []


def test_the_layer_check_sees_an_upward_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from medical_etl.jobs.job import run_job\n")
    assert "medical_etl.jobs.job" in imports_of(bad) and top("medical_etl.jobs.job") == "jobs"


def test_every_stage_is_a_package_with_its_stage_module():
    for stage in STAGES:
        assert (PACKAGE / stage / "stage.py").is_file(), f"medical_etl/{stage}/stage.py"
        assert not (PACKAGE / f"{stage}.py").exists(), f"medical_etl/{stage}.py beside the package"


def test_no_module_is_over_500_lines():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 500}
    assert long == {}


def test_module_names_do_not_collide():
    """No two modules share a file name (the package's own __init__ aside), so a search for one finds it."""
    names: dict[str, list[str]] = {}
    for p in PACKAGE.rglob("*.py"):
        if p.name not in ("__init__.py", "stage.py", "__main__.py"):
            names.setdefault(p.stem, []).append(str(p.relative_to(PACKAGE)))
    assert {k: v for k, v in names.items() if len(v) > 1} == {}
