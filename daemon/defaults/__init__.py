"""Default rules and templates shipped with relance, copied by `relance init`.

In a source checkout they are the top-level `rules/` and `templates/` folders; the
package maps them to `relance.defaults.rules` and `relance.defaults.templates`.
"""

from __future__ import annotations

import importlib.resources
import shutil
from pathlib import Path


def config_text() -> str:
    """The commented `relance.toml` that `relance init` writes."""
    return importlib.resources.files(__name__).joinpath("relance.toml").read_text("utf-8")


def copy_defaults(name: str, dest: Path) -> None:
    """Copy the default `rules` or `templates` folder to `dest`."""
    ignore = shutil.ignore_patterns("__pycache__", "__init__.py", "*.pyc")
    checkout = Path(__file__).resolve().parents[2] / name
    if (checkout / ".." / "daemon" / "defaults").is_dir() and checkout.is_dir():
        # A source checkout or an editable install: the top-level folder is the default.
        shutil.copytree(checkout, dest, dirs_exist_ok=True, ignore=ignore)
        return
    source = importlib.resources.files(f"{__name__}.{name}")
    with importlib.resources.as_file(source) as src:
        shutil.copytree(src, dest, dirs_exist_ok=True, ignore=ignore)
