"""Benchmarks of relance against a real Dovecot on loopback: run by hand, never in CI.

Each script is a module run from the repository root (`python -m bench.sync --sizes 1k
10k`); `python -m bench.run_all` runs them all and writes docs/benchmarks.md. Results go
to build/bench/results/NAME.json; generated mailboxes are cached in build/bench/corpus-*.

This module holds what every script shares: where files go, the firm's relance.toml for
a bench mailbox, and small statistics.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

WORK_DIR = REPO_ROOT / "build" / "bench"
RESULTS_DIR = WORK_DIR / "results"
PARIS = ZoneInfo("Europe/Paris")
# The bench's "today": every generated mailbox is dated relative to it. A Monday.
NOW = datetime(2026, 3, 2, 7, 0, tzinfo=PARIS)

FIRM_ADDRESS = "compta@atelier.example"
BILLING_ADDRESS = "facturation@atelier.example"
OWNER_ADDRESS = "marie@atelier.example"
FIRM_NAME = "Atelier Dupont SARL"

SIZES = {"1k": 1_000, "10k": 10_000, "100k": 100_000}


def parse_sizes(names: Sequence[str]) -> list[int]:
    """"1k 10k" → [1000, 10000]; plain numbers are accepted too."""
    return [SIZES[n] if n in SIZES else int(n) for n in names]


def size_label(n: int) -> str:
    return next((k for k, v in SIZES.items() if v == n), str(n))


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile: p95 of 50 values is the 48th smallest."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(pct / 100 * len(ordered) + 0.4999)))
    return ordered[rank - 1]


def timed(action: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = action()
    return time.perf_counter() - start, result


def vm_hwm_mb(pid: int | str = "self") -> float:
    """Peak resident set size (VmHWM) of a process, in MB."""
    return _status_kb(pid, "VmHWM") / 1024


def vm_rss_mb(pid: int | str = "self") -> float:
    """Current resident set size (VmRSS) of a process, in MB."""
    return _status_kb(pid, "VmRSS") / 1024


def _status_kb(pid: int | str, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise LookupError(f"/proc/{pid}/status has no {key}")


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    return {
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "relance_code": _relance_code(),
    }


def _relance_code() -> str:
    """Which relance was measured: the editable install may point at another checkout."""
    import subprocess

    import relance

    source = Path(relance.__file__).resolve().parent.parent
    done = subprocess.run(["git", "-C", str(source), "describe", "--always", "--dirty"],
                          capture_output=True, text=True, check=False)
    return f"{source} {done.stdout.strip() or '(not a git checkout)'}"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def save_results(name: str, command: str, results: dict[str, Any]) -> Path:
    """build/bench/results/NAME.json: the figures, the command and the machine."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    payload = {"name": name, "command": command, "machine": machine(),
               "measured_at": datetime.now(PARIS).isoformat(timespec="seconds"), **results}
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    print(f"results: {path.relative_to(REPO_ROOT)}", file=sys.stderr)
    return path


def load_results(name: str) -> dict[str, Any] | None:
    path = RESULTS_DIR / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def write_office(home: Path, *, host: str, port: int, username: str, password: str,
                 mode: str = "dry-run", smtp_port: int = 2525) -> Path:
    """relance.toml for the bench firm, with the default rules and templates beside it."""
    from relance import defaults

    home.mkdir(parents=True, exist_ok=True)
    config = home / "relance.toml"
    config.write_text(f"""\
mode = "{mode}"
timezone = "Europe/Paris"
state_dir = "state"

[imap]
host = "{host}"
port = {port}
security = "none"
username = "{username}"
password = "{password}"
timeout = 30

[smtp]
host = "127.0.0.1"
port = {smtp_port}
security = "none"
username = "bench"
password = "bench"
timeout = 10

[firm]
name = "{FIRM_NAME}"
sender = "Atelier Dupont - Comptabilité <{FIRM_ADDRESS}>"
addresses = ["{FIRM_ADDRESS}", "{BILLING_ADDRESS}"]
owners = ["{OWNER_ADDRESS}"]
iban = "FR76 3000 6000 0112 3456 7890 189"
""", encoding="utf-8")
    for name in ("rules", "templates"):
        if not (home / name).exists():
            defaults.copy_defaults(name, home / name)
    return config


def new_daemon(config_path: Path) -> Any:
    """A Daemon as `relance run` builds it, from a bench relance.toml."""
    from relance import app
    from relance.config import load_config
    from relance.store.journal import Journal
    from relance.store.state import StateStore

    config = load_config(config_path)
    runtime, problems = app.load_runtime(config)
    if runtime is None:
        raise RuntimeError("bench config rejected: " + "; ".join(problems))
    return app.Daemon(runtime, StateStore(config.state_dir), Journal(config.state_dir))


def quiet_logs() -> None:
    """relance logs one line per event; thousands of them would cost more than the pass."""
    import logging

    logging.getLogger("relance").setLevel(logging.WARNING)
