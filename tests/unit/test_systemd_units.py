"""The shipped systemd units: valid for systemd, hardened, and in step with the defaults.

`systemd-analyze verify` and `systemd-analyze security --offline=true` read unit files
without a running systemd (Debian package `systemd`, which `.ci/run` installs).
"""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from relance import defaults

UNITS_DIR = Path(__file__).resolve().parents[2] / "systemd"
UNITS = ("relance.service", "relance@.service")
SHIPPED_EXEC = "/usr/local/bin/relance"
MAX_EXPOSURE = 2.0
_EXPOSURE = re.compile(r"Overall exposure level for (\S+): (\d+\.\d+) (\w+)")


def systemd_analyze() -> str:
    found = shutil.which("systemd-analyze") or shutil.which(
        "systemd-analyze", path="/usr/bin:/bin:/usr/sbin")
    if found is None:
        pytest.skip("systemd-analyze missing: apt-get install -y systemd (.ci/run does)")
    probe = subprocess.run([found, "--version"], capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip(f"systemd-analyze cannot run here: {probe.stderr.strip()}")
    return found


def staged(tmp_path: Path, name: str) -> Path:
    """A copy of the unit whose ExecStart names a program that exists on this machine:
    `verify` checks that the binary is there, and the test machine need not have
    relance in /usr/local/bin."""
    program = shutil.which("relance") or sys.executable
    text = (UNITS_DIR / name).read_text(encoding="utf-8")
    assert SHIPPED_EXEC in text
    target = tmp_path / name
    target.write_text(text.replace(SHIPPED_EXEC, program), encoding="utf-8")
    return target


def service_section(name: str) -> dict[str, list[str]]:
    """The [Service] settings, each with every value it is given (systemd repeats keys)."""
    settings: dict[str, list[str]] = {}
    section = None
    for raw in (UNITS_DIR / name).read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
            continue
        if section == "[Service]":
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


@pytest.mark.parametrize("name", [*UNITS, "relance@acme.service"])
def test_unit_verifies_clean(tmp_path: Path, name: str) -> None:
    analyze = systemd_analyze()
    for unit in UNITS:
        staged(tmp_path, unit)
    result = subprocess.run([analyze, "verify", f"./{name}"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


@pytest.mark.parametrize("name", [*UNITS, "relance@acme.service"])
def test_unit_exposure_is_ok(tmp_path: Path, name: str) -> None:
    analyze = systemd_analyze()
    for unit in UNITS:
        staged(tmp_path, unit)
    result = subprocess.run([analyze, "security", "--offline=true", f"./{name}"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=60)
    found = _EXPOSURE.search(result.stdout + result.stderr)
    assert found is not None, result.stdout + result.stderr
    exposure = float(found[2])
    assert exposure <= MAX_EXPOSURE, result.stdout
    assert found[3] == "OK", found[0]


@pytest.mark.parametrize("name", UNITS)
def test_unit_runs_relance_as_a_notify_service(name: str) -> None:
    service = service_section(name)
    assert service["Type"] == ["notify"]
    assert service["ExecStart"][0].startswith(f"{SHIPPED_EXEC} run --config /etc/relance/")
    assert service["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert service["Restart"] == ["on-failure"]
    assert service["WatchdogSec"]
    assert "NotifyAccess" in service
    assert service["StateDirectory"][0].startswith("relance")
    assert {c.split(":", 1)[0] for c in service["LoadCredential"]} == {"imap", "smtp"}


def test_default_config_reads_the_credentials_the_unit_loads() -> None:
    """`relance init` writes password_file paths that match relance.service's credentials."""
    text = defaults.config_text()
    paths = re.findall(r'^password_file = "([^"]+)"', text, flags=re.MULTILINE)
    assert paths == ["/run/credentials/relance.service/imap",
                     "/run/credentials/relance.service/smtp"]
    loaded = {c.split(":", 1)[0] for c in service_section("relance.service")["LoadCredential"]}
    assert {Path(p).name for p in paths} == loaded


def test_units_parse_as_ini() -> None:
    """A stray character would make systemd ignore a line with only a warning at boot."""
    for name in UNITS:
        parser = configparser.ConfigParser(strict=False, interpolation=None)
        parser.optionxform = str  # type: ignore[assignment,method-assign]
        parser.read_string((UNITS_DIR / name).read_text(encoding="utf-8"))
        assert set(parser.sections()) == {"Unit", "Service", "Install"}
