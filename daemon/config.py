"""`relance.toml`: the settings a firm writes once, read with pydantic-settings.

Every key may also come from the environment as `RELANCE_SECTION__KEY`, which wins over
the file (so systemd units and containers can override one value). Problems come back as
`FILE:LINE: message`, all at once, never as a traceback.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from pathlib import Path
from typing import Any, ClassVar, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from relance.model import Firm, Mode

DEFAULT_PATHS = (Path("relance.toml"), Path("/etc/relance/relance.toml"))


class ConfigError(Exception):
    """The config cannot be used; `problems` are `FILE:LINE: message` lines."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ServerConfig(BaseModel):
    """How to reach one mail server (the `[imap]` and `[smtp]` sections)."""

    model_config = ConfigDict(extra="forbid")

    host: str
    port: int = Field(gt=0, lt=65536)
    security: Literal["tls", "starttls", "none"] = "tls"
    username: str
    password: SecretStr | None = None
    password_file: Path | None = None
    timeout: float = Field(default=30.0, gt=0)

    def secret(self) -> str:
        """The password, read from `password_file` when one is named (systemd credentials)."""
        if self.password_file is not None:
            return self.password_file.read_text(encoding="utf-8").rstrip("\r\n")
        return self.password.get_secret_value() if self.password else ""


class SmtpConfig(ServerConfig):
    """The `[smtp]` section: a server, and whether relance files its own copy in Sent."""

    # Gmail and a few others already file what their SMTP server sends in Sent Mail;
    # set this to false there, or every reminder would show twice.
    copy_to_sent: bool = True


class FirmConfig(BaseModel):
    """Who the firm is: its addresses tell its own mail from everybody else's."""

    model_config = ConfigDict(extra="forbid")

    name: str
    sender: str
    addresses: list[str] = Field(min_length=1)
    owners: list[str] = Field(default_factory=list)
    payment_senders: list[str] = Field(default_factory=list)
    authserv_id: str = ""
    iban: str = ""
    payment_link: str = ""

    @field_validator("addresses", "owners", "payment_senders")
    @classmethod
    def _lower(cls, values: list[str]) -> list[str]:
        return [v.strip().lower() for v in values]

    def as_firm(self) -> Firm:
        return Firm(
            name=self.name,
            sender=self.sender,
            addresses=tuple(self.addresses),
            owners=tuple(self.owners),
            iban=self.iban,
            payment_link=self.payment_link,
        )


class Config(BaseSettings):
    """The whole of `relance.toml`, environment overrides applied."""

    model_config = SettingsConfigDict(
        env_prefix="RELANCE_", env_nested_delimiter="__", extra="forbid"
    )
    toml_path: ClassVar[Path | None] = None

    mode: Mode = Mode.SEND
    timezone: str = "Europe/Paris"
    state_dir: Path = Path("state")
    evidence_dir: Path = Path("evidence")
    rules_dir: Path = Path("rules")
    templates_dir: Path = Path("templates")
    imap: ServerConfig
    smtp: SmtpConfig
    firm: FirmConfig

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if cls.toml_path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=cls.toml_path))
        return tuple(sources)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f'unknown time zone "{value}"; expected e.g. "Europe/Paris"') from exc
        return value

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


def find_config(explicit: str | None) -> Path:
    """The config file a verb uses: --config, then $RELANCE_CONFIG, then the defaults."""
    if explicit:
        return Path(explicit)
    if env := os.environ.get("RELANCE_CONFIG"):
        return Path(env)
    for candidate in DEFAULT_PATHS:
        try:
            if candidate.exists():
                return candidate
        except OSError:  # e.g. run as another user from a folder it cannot enter
            continue
    return DEFAULT_PATHS[-1]


def load_config(path: Path) -> Config:
    """Read and validate `path`; raise ConfigError listing every problem with its line."""
    if not path.exists():
        raise ConfigError([f"{path}:0: no such config file; `relance init` writes one"])
    text = path.read_text(encoding="utf-8")
    try:
        tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"at line (\d+), column (\d+)", str(exc))
        where = f"{m[1]}:{m[2]}" if m else "0"
        reason = re.sub(r"\s*\(at line.*\)$", "", str(exc))
        raise ConfigError([f"{path}:{where}: {reason}"]) from None
    settings_cls = type("FileConfig", (Config,), {"toml_path": path})
    try:
        config: Config = settings_cls()
    except ValidationError as exc:
        raise ConfigError(
            [f"{path}:{_line_of(text, err['loc'])}: {_describe(err)}" for err in exc.errors()]
        ) from None
    problems = _check_security(config, path, text)
    if problems:
        raise ConfigError(problems)
    return _resolve_paths(config, path.parent.resolve())


def _describe(err: Any) -> str:
    key = ".".join(str(p) for p in err["loc"])
    msg = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "missing":
        return f'missing key "{key}"'
    if err["type"] == "extra_forbidden":
        return f'unknown key "{key}"'
    return f"{key}: {msg}"


def _line_of(text: str, loc: tuple[Any, ...]) -> int:
    """The line where a key sits: its `[section]`, then `key =` below it (0 if absent)."""
    lines = text.splitlines()
    start = 0
    keys = [str(p) for p in loc if isinstance(p, str)]
    if len(keys) > 1:
        for i, line in enumerate(lines):
            if line.strip() == f"[{keys[0]}]":
                start = i
                break
        else:
            return 0
        keys = keys[1:]
    if not keys:
        return start + 1
    pattern = re.compile(rf"^\s*{re.escape(keys[0])}\s*=")
    for i in range(start, len(lines)):
        if i > start and start and lines[i].lstrip().startswith("["):
            break
        if pattern.match(lines[i]):
            return i + 1
    return start + 1 if start else 0


def _check_security(config: Config, path: Path, text: str) -> list[str]:
    problems = []
    for section in ("imap", "smtp"):
        server: ServerConfig = getattr(config, section)
        if server.security == "none" and not _is_loopback(server.host):
            line = _line_of(text, (section, "security"))
            problems.append(
                f'{path}:{line}: {section}.security = "none" sends the password in clear; '
                'allowed only for a loopback host; use "tls" or "starttls"'
            )
        if server.password is None and server.password_file is None:
            line = _line_of(text, (section,))
            problems.append(f'{path}:{line}: {section}: needs "password" or "password_file"')
    return problems


def _resolve_paths(config: Config, base: Path) -> Config:
    """Relative paths in the file are relative to the file, not to the working directory."""

    def resolve(p: Path) -> Path:
        return p if p.is_absolute() else base / p

    updates: dict[str, Any] = {
        name: resolve(getattr(config, name))
        for name in ("state_dir", "evidence_dir", "rules_dir", "templates_dir")
    }
    for section in ("imap", "smtp"):
        server: ServerConfig = getattr(config, section)
        if server.password_file is not None:
            updates[section] = server.model_copy(
                update={"password_file": resolve(server.password_file)}
            )
    return config.model_copy(update=updates)
