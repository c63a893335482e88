"""Install and remove the project's crontab entries, idempotently, between marker lines."""
from __future__ import annotations

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BEGIN, END = "# BEGIN medical_etl", "# END medical_etl"


def _read(crontab_cmd: str) -> str:
    r = subprocess.run([crontab_cmd, "-l"], capture_output=True, text=True)
    if r.returncode != 0:
        if "no crontab" in r.stderr.lower():
            return ""
        raise RuntimeError(f"{crontab_cmd} -l failed: {r.stderr.strip()}")
    return r.stdout


def _write(crontab_cmd: str, text: str) -> None:
    r = subprocess.run([crontab_cmd, "-"], input=text, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{crontab_cmd} - failed: {r.stderr.strip()}")


def _without_block(text: str, project_dir: Path) -> str:
    out, skipping = [], False
    for line in text.splitlines():
        if line == f"{BEGIN} {project_dir}":
            skipping = True
        elif skipping and line == f"{END} {project_dir}":
            skipping = False
        elif not skipping:
            out.append(line)
    return "\n".join(out).rstrip("\n") + ("\n" if out else "")


def block(project_dir: Path = REPO) -> str:
    body = (project_dir / "crontab").read_text(encoding="utf-8").replace("@PROJECT_DIR@", str(project_dir))
    return f"{BEGIN} {project_dir}\n{body.rstrip()}\n{END} {project_dir}\n"


def install(crontab_cmd: str = "crontab", project_dir: Path = REPO) -> str:
    current = _without_block(_read(crontab_cmd), project_dir)
    new = (current + ("\n" if current else "") + block(project_dir))
    _write(crontab_cmd, new)
    return new


def uninstall(crontab_cmd: str = "crontab", project_dir: Path = REPO) -> str:
    new = _without_block(_read(crontab_cmd), project_dir)
    _write(crontab_cmd, new)
    return new
