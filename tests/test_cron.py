"""The crontab: entries that fire at the UTC times in any zone and season, installed and removed exactly."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from helpers import REPO

from medical_etl.monitor.evaluate import metric_fields
from medical_etl.monitor.rules import RulesError, load_rules

# --- the schedule's hour ---------------------------------------------------------------------

def _fires(entries: list[str], instant: datetime, zone) -> bool:
    """Would cron, running in ``zone``, run one of ``entries`` at ``instant`` (guards evaluated)?"""
    local = instant.astimezone(zone)
    for e in entries:
        minute, hour, _dom, _mon, dow, cmd = e.split(None, 5)
        if int(minute) != local.minute or int(hour) != local.hour:
            continue
        if dow != "*" and int(dow) != local.isoweekday() % 7:
            continue
        if cmd.startswith("[ "):
            fmt, want = re.match(r'\[ "\$\(date -u \+([^)]*)\)" = (\d+) \] && ', cmd).groups()
            if instant.strftime(fmt.replace("\\", "")) != want:
                continue
        return True
    return False


@pytest.mark.parametrize("zone_name", ["UTC", "Africa/Addis_Ababa", "Asia/Kolkata", "Pacific/Honolulu",
                                       "Pacific/Kiritimati", "Europe/Berlin", "America/New_York",
                                       "Australia/Sydney"])
def test_cron_entries_fire_at_the_utc_times_in_any_zone(zone_name):
    from zoneinfo import ZoneInfo

    from medical_etl.ops import cron

    zone = ZoneInfo(zone_name)
    rendered = cron.block(REPO, zone=zone, zone_name=zone_name, now=datetime(2026, 1, 5, tzinfo=timezone.utc))
    assert "\nCRON_TZ=" not in rendered.text
    lines = [ln for ln in rendered.text.splitlines() if ln and ln[0].isdigit()]
    daily = [ln for ln in lines if ln.endswith("cron_run.sh pipeline")]
    weekly = [ln for ln in lines if ln.endswith("cron_run.sh weekly")]
    assert daily and weekly
    has_dst = zone_name in ("Europe/Berlin", "America/New_York", "Australia/Sydney")
    assert ("daylight saving" in rendered.notes[0]) == has_dst and (len(daily) == 2) == has_dst
    # every minute of two weeks around each daylight-saving change of 2026
    for start in (datetime(2026, 3, 25, tzinfo=timezone.utc), datetime(2026, 10, 20, tzinfo=timezone.utc),
                  datetime(2026, 3, 31, tzinfo=timezone.utc), datetime(2026, 10, 30, tzinfo=timezone.utc)):
        fired_daily, fired_weekly = [], []
        for m in range(0, 8 * 24 * 60):
            t = start + timedelta(minutes=m)
            if _fires(daily, t, zone):
                fired_daily.append(t)
            if _fires(weekly, t, zone):
                fired_weekly.append(t)
        assert [(t.hour, t.minute) for t in fired_daily] == [(2, 0)] * 8, (zone_name, fired_daily)
        assert [(t.weekday(), t.hour, t.minute) for t in fired_weekly] == [(6, 3, 0)], (zone_name, fired_weekly)


def test_cron_entries_do_not_depend_on_the_season_they_were_written_in():
    from zoneinfo import ZoneInfo

    from medical_etl.ops import cron

    zone = ZoneInfo("Europe/Berlin")
    january = cron.block(REPO, zone=zone, zone_name="Europe/Berlin", now=datetime(2026, 1, 5, tzinfo=timezone.utc))
    july = cron.block(REPO, zone=zone, zone_name="Europe/Berlin", now=datetime(2026, 7, 5, tzinfo=timezone.utc))
    assert january.text == july.text


def test_delivery_numbers_are_checked_when_the_rules_are_read(tmp_path):
    doc = {"rules": [], "delivery": {"webhook": {"url": "http://127.0.0.1:9/x", "timeout_s": float("nan")}}}
    path = tmp_path / "rules.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(RulesError, match="delivery.webhook: timeout_s"):
        load_rules(path, metric_fields())
    doc["delivery"]["webhook"] = {"url": "", "retries": -5}
    path.write_text(json.dumps(doc))
    with pytest.raises(RulesError, match="delivery.webhook: retries"):
        load_rules(path, metric_fields())


def _fake_crontab(tmp_path: Path) -> tuple[Path, Path]:
    store = tmp_path / "crontab.txt"
    fake = tmp_path / "crontab"
    fake.write_text(f"""#!/bin/sh
case "$1" in
  -l) [ -f {store} ] && cat {store} || {{ echo "no crontab for $(id -un)" >&2; exit 1; }} ;;
  -r) [ -f {store} ] && rm {store} || {{ echo "no crontab for $(id -un)" >&2; exit 1; }} ;;
  *) cat > {store} ;;
esac
""")
    fake.chmod(0o755)
    return fake, store


def test_cron_uninstall_restores_exactly_what_was_there(tmp_path):
    from medical_etl.ops import cron

    fake, store = _fake_crontab(tmp_path)
    cron.install(str(fake))
    assert "cron_run.sh pipeline" in store.read_text()
    ok, detail = cron.check(str(fake))
    assert ok, detail
    cron.uninstall(str(fake))
    assert not store.exists()  # there was no crontab before: none after

    store.write_text("MAILTO=ops@example.com\n\n15 * * * * /usr/bin/other-job\n")
    before = store.read_text()
    cron.install(str(fake))
    store.write_text(store.read_text().replace("0 2 * * *", "0 23 * * *"))  # edited by hand since
    ok, detail = cron.check(str(fake))
    assert not ok and "make install-cron" in detail
    cron.uninstall(str(fake))
    assert store.read_text() == before


def test_cron_without_a_crontab_program_says_to_install_cron(tmp_path):
    from medical_etl.ops import cron

    with pytest.raises(cron.CronError, match="install cron"):
        cron.install(str(tmp_path / "no-such-crontab"))
    r = subprocess.run([sys.executable, "-m", "medical_etl", "cron", "install", "--crontab",
                        str(tmp_path / "no-such-crontab")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "apt-get install cron" in r.stderr


def test_cron_install_is_idempotent_and_uninstall_exact(tmp_path):
    store = tmp_path / "crontab.txt"
    store.write_text("MAILTO=ops@example.com\n15 * * * * /usr/bin/other-job\n")
    fake = tmp_path / "crontab"
    fake.write_text(f"""#!/bin/sh
if [ "$1" = "-l" ]; then cat {store}; else cat > {store}; fi
""")
    fake.chmod(0o755)
    from medical_etl.ops import cron

    cron.install(str(fake))
    once = store.read_text()
    cron.install(str(fake))
    assert store.read_text() == once
    assert once.count("scripts/cron_run.sh pipeline") == 1 and "0 2 * * *" in once and "0 3 * * 0" in once
    assert "\nCRON_TZ=" not in once and "/usr/bin/other-job" in once
    from medical_etl.jobs.definitions import job_definitions

    # the comments say what the Makefile's job lines say (rendered from them at install)
    assert f"the weekly job: {job_definitions()['weekly'].describe()}" in once and "@JOB:" not in once
    assert "full dbt refresh; views re-read for 30 days" in once
    cron.uninstall(str(fake))
    assert store.read_text() == "MAILTO=ops@example.com\n15 * * * * /usr/bin/other-job\n"
