"""Install and remove the project's crontab entries, idempotently, between marker lines.

The ``crontab`` file states its schedules in UTC. Debian's cron ignores ``CRON_TZ`` and runs every
entry in the system's zone, so :func:`block` converts each schedule to the zone of the machine it
installs on: a fixed local time where the zone keeps one offset all year, and where it has
daylight saving one entry per offset, each guarded by the UTC clock so exactly one fires, at
the UTC time, all year.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone, tzinfo
from pathlib import Path

from medical_etl import resources
from medical_etl.errors import PermanentError

REPO = resources.CHECKOUT  # cron runs scripts/cron_run.sh of a checkout
BEGIN, END = "# BEGIN medical_etl", "# END medical_etl"
_ENTRY = re.compile(r"^(\d{1,2})\s+(\d{1,2})\s+\*\s+\*\s+(\*|[0-7])\s+(.+)$")
_DAY = 24 * 60


class CronError(PermanentError):
    """The crontab cannot be read, written or converted; the message says what to do."""


@dataclass
class Rendered:
    text: str
    zone: str
    notes: list[str] = field(default_factory=list)


def system_zone() -> tuple[tzinfo, str]:
    """The zone cron runs entries in: the system's /etc/localtime (UTC where there is none)."""
    from zoneinfo import ZoneInfo

    path = Path("/etc/localtime")
    try:
        name = str(path.resolve()).split("zoneinfo/", 1)[1] if "zoneinfo/" in str(path.resolve()) else "localtime"
        with open(path, "rb") as fh:
            return ZoneInfo.from_file(fh, key=name), name
    except (OSError, ValueError):
        return timezone.utc, "UTC"


def _offsets(zone: tzinfo, now: datetime) -> list[int]:
    """The zone's distinct UTC offsets (minutes) over the coming year, sorted (so the entries do not
    change with the season in which they are written)."""
    seen: list[int] = []
    for day in range(0, 366, 7):
        off = (now + timedelta(days=day)).astimezone(zone).utcoffset()
        minutes = int(off.total_seconds() // 60) if off is not None else 0
        if minutes not in seen:
            seen.append(minutes)
    return sorted(seen)


def convert_line(line: str, offsets: list[int]) -> list[str]:
    """One UTC schedule line as entries for a zone with these offsets (minutes east of UTC)."""
    m = _ENTRY.match(line.strip())
    if not m:
        raise CronError(f"cannot convert {line!r}: only 'MINUTE HOUR * * DAY-OF-WEEK command' lines are supported")
    minute, hour, dow, command = int(m.group(1)), int(m.group(2)), m.group(3), m.group(4)
    if minute > 59 or hour > 23:
        raise CronError(f"cannot convert {line!r}: no such time")
    out = []
    for off in offsets:
        local = hour * 60 + minute + off
        shift, local = divmod(local, _DAY)
        local_dow = "*" if dow == "*" else str((int(dow) + shift) % 7)
        entry_cmd = command
        if len(offsets) > 1:  # daylight saving: the entry for the offset not in force must not fire
            utc = f"{hour:02d}{minute:02d}"
            guard = (f'[ "$(date -u +\\%H\\%M)" = {utc} ]' if dow == "*"
                     else f'[ "$(date -u +\\%u\\%H\\%M)" = {int(dow) % 7 or 7}{utc} ]')
            entry_cmd = f"{guard} && {command}"
        out.append(f"{local % 60} {local // 60} * * {local_dow} {entry_cmd}")
    return out


def block(project_dir: Path = REPO, zone: tzinfo | None = None, zone_name: str | None = None,
          now: datetime | None = None) -> Rendered:
    """The marker-delimited entries for ``project_dir``, converted from UTC to ``zone``."""
    if zone is None:
        zone, zone_name = system_zone()
    zone_name = zone_name or str(zone)
    now = now or datetime.now(timezone.utc)
    offsets = _offsets(zone, now)
    if not (project_dir / "scripts" / "cron_run.sh").is_file():
        raise CronError(f"{project_dir} is not a checkout (no scripts/cron_run.sh): the entries run a checkout's "
                        "jobs through Make; install them from a checkout, or use deploy/systemd")
    template = describe_jobs((project_dir / "crontab").read_text(encoding="utf-8")).replace(
        "@PROJECT_DIR@", str(project_dir))
    lines, notes = [], []
    for line in template.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            lines.append(line)
        elif re.match(r"^(CRON_TZ|TZ)\s*=", stripped):
            continue  # converted instead: Debian's cron ignores CRON_TZ, cronie would apply it twice
        elif re.match(r"^[A-Za-z_][A-Za-z0-9_]*\s*=", stripped):
            lines.append(line)
        else:
            lines.extend(convert_line(stripped, offsets))
    hours = ", ".join(f"UTC{o / 60:+g}" for o in offsets)
    if len(offsets) == 1:
        notes.append(f"system zone {zone_name} ({hours}): UTC schedules written as fixed local times")
    else:
        notes.append(f"warning: system zone {zone_name} has daylight saving ({hours}): each schedule is "
                     "written once per offset, guarded by the UTC clock, so it fires at its UTC time all year")
    body = "\n".join(lines).rstrip()
    header = f"# schedules converted from UTC for zone {zone_name} by `make install-cron`"
    return Rendered(f"{BEGIN} {project_dir}\n{header}\n{body}\n{END} {project_dir}\n", zone_name, notes)


def _run(crontab_cmd: str, args: list[str], text: str | None = None) -> subprocess.CompletedProcess:
    if shutil.which(crontab_cmd) is None:
        raise CronError(f"no {crontab_cmd!r} program: install cron first (Debian: apt-get install cron), "
                        "or use the systemd timers in deploy/systemd/")
    return subprocess.run([crontab_cmd, *args], input=text, capture_output=True, text=True)


def _read(crontab_cmd: str) -> str | None:
    """The user's crontab, or None when there is none."""
    r = _run(crontab_cmd, ["-l"])
    if r.returncode != 0:
        if "no crontab" in r.stderr.lower():
            return None
        raise CronError(f"{crontab_cmd} -l failed: {r.stderr.strip()}")
    return r.stdout


def _write(crontab_cmd: str, text: str | None) -> None:
    r = _run(crontab_cmd, ["-r"], "") if text is None else _run(crontab_cmd, ["-"], text)
    if r.returncode != 0 and not (text is None and "no crontab" in r.stderr.lower()):
        raise CronError(f"{crontab_cmd} {'-r' if text is None else '-'} failed: {r.stderr.strip()}")


def _without_block(text: str, project_dir: Path) -> str:
    out, skipping = [], False
    for line in text.splitlines(keepends=True):
        bare = line.rstrip("\n")
        if bare == f"{BEGIN} {project_dir}":
            skipping = True
        elif skipping and bare == f"{END} {project_dir}":
            skipping = False
        elif not skipping:
            out.append(line)
    return "".join(out)


def installed_block(crontab_cmd: str = "crontab", project_dir: Path = REPO) -> str | None:
    current = _read(crontab_cmd) or ""
    start = current.find(f"{BEGIN} {project_dir}\n")
    end_marker = f"{END} {project_dir}\n"
    end = current.find(end_marker, start)
    return None if start < 0 or end < 0 else current[start:end + len(end_marker)]


def install(crontab_cmd: str = "crontab", project_dir: Path = REPO, rendered: Rendered | None = None) -> Rendered:
    rendered = rendered or block(project_dir)
    current = _without_block(_read(crontab_cmd) or "", project_dir)
    if current and not current.endswith("\n"):
        current += "\n"
    _write(crontab_cmd, current + rendered.text)
    return rendered


def uninstall(crontab_cmd: str = "crontab", project_dir: Path = REPO) -> str | None:
    """Remove exactly the project's block; a crontab that held nothing else is removed entirely."""
    current = _read(crontab_cmd)
    if current is None:
        return None
    rest = _without_block(current, project_dir)
    _write(crontab_cmd, rest if rest.strip() else None)
    return rest if rest.strip() else None


def check(crontab_cmd: str = "crontab", project_dir: Path = REPO) -> tuple[bool, str]:
    """Doctor: are the installed entries the ones this system's zone needs now?"""
    try:
        installed = installed_block(crontab_cmd, project_dir)
    except CronError as exc:
        return False, str(exc)
    if installed is None:
        return False, "not installed (make install-cron), or scheduled elsewhere (systemd timers)"
    expected = block(project_dir)
    if installed != expected.text:
        return False, (f"installed entries do not match the schedules for zone {expected.zone} "
                       "(zone or crontab changed since): run make install-cron again")
    return True, f"installed; {expected.notes[0]}"


def describe_jobs(text: str) -> str:
    """``text`` with each ``@JOB:<name>@`` replaced by what the job runs (its Makefile line: stages and
    options), so the installed crontab's comments say what the job definition says."""
    from medical_etl.jobs.definitions import job_definitions

    defined = job_definitions()

    def one(m: re.Match) -> str:
        job = defined.get(m.group(1))
        if job is None:
            raise CronError(f"crontab: @JOB:{m.group(1)}@ names no job of the Makefile ({', '.join(defined)})")
        return job.describe()

    return re.sub(r"@JOB:([a-z][a-z0-9-]*)@", one, text)
