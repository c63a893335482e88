"""The shipped systemd units: checked by systemd itself, timers at the crontab's UTC times, with the limits."""
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import REPO

UNITS = REPO / "deploy" / "systemd"
TIMERS = {"medical-etl-daily.timer": ("pipeline", "*-*-* 02:00:00 UTC"),
          "medical-etl-weekly.timer": ("weekly", "Sun *-*-* 03:00:00 UTC"),
          "medical-etl-backup.timer": ("backup", "Sun *-*-* 01:00:00 UTC")}


@pytest.fixture(scope="module")
def analyze() -> str:
    exe = shutil.which("systemd-analyze")
    assert exe, "Debian's systemd (systemd-analyze) is required for this test (make test installs it)"
    return exe


def _installed(tmp_path: Path, edit=None) -> Path:
    """The units as an operator installs them: the checkout's path in place of /opt/medical_etl."""
    out = tmp_path / "units"
    out.mkdir()
    for unit in UNITS.iterdir():
        text = unit.read_text().replace("/opt/medical_etl", str(REPO))
        (out / unit.name).write_text(edit(unit.name, text) if edit else text)
    return out


def _verify(analyze: str, folder: Path) -> tuple[int, list[str]]:
    names = [p.name for p in sorted(folder.glob("*.timer"))] + [f"medical-etl@{job}.service"
                                                                 for job, _ in TIMERS.values()]
    r = subprocess.run([analyze, "verify", *names], cwd=folder, capture_output=True, text=True, timeout=120)
    # systemd also reports problems of the host's own units; ours are the lines naming our files
    ours = [line for line in (r.stdout + r.stderr).splitlines()
            if str(folder) in line or "medical-etl" in line]
    return r.returncode, ours


def test_units_pass_systemd_analyze_verify(analyze, tmp_path):
    rc, problems = _verify(analyze, _installed(tmp_path))
    assert rc == 0 and problems == [], problems


@pytest.mark.parametrize("unit,old,new,expect", [
    ("medical-etl@.service", "MemoryMax=", "MemoryMaxx=", "Unknown key"),
    ("medical-etl-daily.timer", "02:00:00 UTC", "26:00:00 UTC", "calendar"),
    ("medical-etl@.service", "scripts/cron_run.sh", "scripts/cron-run.sh", "not executable"),
])
def test_a_typo_in_a_unit_fails_the_check(analyze, tmp_path, unit, old, new, expect):
    folder = _installed(tmp_path, lambda name, text: text.replace(old, new) if name == unit else text)
    rc, problems = _verify(analyze, folder)
    assert rc != 0 or problems
    assert any(expect in p for p in problems), problems


def _cron_times() -> dict[str, tuple[int, int, str]]:
    out = {}
    for line in (REPO / "crontab").read_text().splitlines():
        m = re.match(r"(\d+) (\d+) \* \* (\S+) \S+/scripts/cron_run\.sh (\S+)$", line)
        if m:
            out[m.group(4)] = (int(m.group(2)), int(m.group(1)), m.group(3))
    return out


def test_timers_fire_at_the_crontabs_utc_times(analyze):
    cron = _cron_times()
    assert set(cron) == {job for job, _ in TIMERS.values()}
    for name, (job, spec) in TIMERS.items():
        text = (UNITS / name).read_text()
        assert f"OnCalendar={spec}\n" in text and "Persistent=true\n" in text
        assert f"Unit=medical-etl@{job}.service\n" in text
        r = subprocess.run([analyze, "calendar", "--iterations=3", spec], capture_output=True, text=True,
                           timeout=60, env={"TZ": "Africa/Addis_Ababa", "PATH": "/usr/bin:/bin"})
        assert r.returncode == 0, r.stderr
        assert f"Normalized form: {spec}" in r.stdout
        # the machine runs at UTC+3 here: systemd shows local times, and each one again "(in UTC)"
        assert re.search(r"Next elapse: \w{3} \d{4}-\d\d-\d\d \d\d:\d\d:00 EAT", r.stdout), r.stdout
        elapses = re.findall(r"\(in UTC\): (\w{3}) \d{4}-\d\d-\d\d (\d\d):(\d\d):00 UTC", r.stdout)
        assert len(elapses) == 3, r.stdout
        hour, minute, dow = cron[job]
        for day, h, m in elapses:  # in UTC whatever the machine's zone (here UTC+3)
            assert (int(h), int(m)) == (hour, minute)
            assert dow == "*" or day == "Sun" and dow == "0"


def test_service_carries_the_resource_limits():
    text = (UNITS / "medical-etl@.service").read_text()
    values = dict(re.findall(r"^(\w+)=(.*)$", text, re.M))
    assert values["MemoryMax"] == "3G" and values["MemoryHigh"] == "2560M"
    assert int(values["Nice"]) > 0 and values["IOSchedulingClass"] == "best-effort"
    assert values["TimeoutStartSec"] == "8h"
    # the justification: the largest stage's measured peak, grown to 16 workers, stays below MemoryHigh
    one, two = (int(x) for x in re.search(r"enrich (\d+) MB with YOLO_WORKERS=1, (\d+) MB with 2", text).groups())
    job = int(re.search(r"job process (\d+) MB", text).group(1))
    assert job + one + 15 * (two - one) < 2560 < 3 * 1024
