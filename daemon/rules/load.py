"""Read the hand-edited `rules/*.yaml` into one validated `Rules`, or say exactly what is wrong.

The owner edits these files with a text editor, so every problem comes back as a value,
`FILE:LINE:COL: what is wrong; what was expected`, all of them in one pass (beancount's
habit): the owner fixes a file once, not once per error. Nothing here raises for bad input;
`relance check` prints the list and `relance run` keeps its old rules when the list is not
empty.

How positions survive: ruamel.yaml's round-trip loader keeps the line and column of every
key, value and list item. The files are merged into one mapping, turned into plain Python
values for pydantic, and each pydantic error `loc` (such as `("steps", 2, "template")`) is
walked back down the ruamel tree to the node it names, or to its nearest existing parent.
"""

from __future__ import annotations

import difflib
import re
import types
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, time
from pathlib import Path
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.reader import ReaderError
from ruamel.yaml.tokens import TagToken

from relance.rules.model import Offset, Rules

__all__ = ["RuleError", "load_rules"]

_OFFSET_EXAMPLES = "+5d, -5d, +2w, +3 business days"
_TIME = re.compile(r"^\s*(\d{1,2}):(\d{2})(?::(\d{2}))?\s*$")
# A plain scalar as written in the source: what the owner typed, before YAML read it as a number.
_RAW_SCALAR = re.compile(r"[^\s,\]\}#]+")

Loc = tuple[int | str, ...]

# A check on a whole block blames one of its keys: "end must come after start" is fixed at
# `end` (when the file has no `end`, the position falls back to the block).
_BLAME: dict[Loc, str] = {("send_window",): "end"}


@dataclass(frozen=True)
class RuleError:
    """One problem in one rule file, where the owner's editor can jump to it.

    `line` and `col` are 1-based; 0 means the problem has no place inside the file (an
    unreadable file, a key that no file sets), and is then left out of the text.
    """

    file: str
    line: int
    col: int
    message: str

    def __str__(self) -> str:
        if self.line <= 0:
            return f"{self.file}: {self.message}"
        if self.col <= 0:
            return f"{self.file}:{self.line}: {self.message}"
        return f"{self.file}:{self.line}:{self.col}: {self.message}"


@dataclass(frozen=True)
class _Source:
    """One parsed rule file: its name as shown in errors, its lines, its top-level mapping."""

    file: str
    lines: list[str]
    doc: CommentedMap


def load_rules(rules_dir: Path) -> tuple[Rules | None, list[RuleError]]:
    """Read every `*.yaml` in `rules_dir` (sorted) into `Rules`, with every problem found.

    Returns `(rules, [])` when all is well, else `(None, errors)`: the caller keeps what it
    had rather than run on half a calendar. Hidden files (editor lock files such as
    `.#calendar.yaml`) are skipped. The same top-level key in two files is an error at the
    second place, so that no file silently overrides another.
    """
    errors: list[RuleError] = []
    paths, dir_error = _rule_files(rules_dir)
    if dir_error is not None:
        return None, [dir_error]

    origin: dict[Any, _Source] = {}
    some_file_unparsed = False
    for path in paths:
        source, error = _parse(path)
        if error is not None:
            errors.append(error)
            some_file_unparsed = True
            continue
        if source is None:  # empty, or only comments
            continue
        for key in source.doc:
            first = origin.get(key)
            if first is None:
                origin[key] = source
                continue
            line, col = first.doc.lc.key(key)
            errors.append(
                _at(
                    source,
                    source.doc.lc.key(key),
                    f'key "{key}" is already set in {first.file}:{line + 1}:{col + 1}; '
                    "each top-level key belongs in one file",
                )
            )

    problems: dict[Loc, RuleError] = {}
    plain = {
        key: _prepare(src.doc[key], _field_type(Rules, key), (key,), src.doc, key, src, problems)
        for key, src in origin.items()
    }
    errors.extend(problems.values())

    rules: Rules | None = None
    try:
        rules = Rules.model_validate(plain)
    except ValidationError as exc:
        errors.extend(
            _validation_errors(exc, origin, rules_dir, problems, skip_missing=some_file_unparsed)
        )
    except (TypeError, ValueError) as exc:  # a validator that slipped past pydantic's wrapping
        errors.append(RuleError(str(rules_dir), 0, 0, f"rules are not valid: {exc}"))

    errors.extend(_check_meaning(plain, origin, rules_dir))
    errors.sort(key=lambda e: (e.file, e.line, e.col))
    return (rules if not errors else None), errors


# --- reading files ------------------------------------------------------------------------


def _rule_files(rules_dir: Path) -> tuple[list[Path], RuleError | None]:
    """The rule files to read, or the one error that explains why there are none."""
    if not rules_dir.is_dir():
        what = "is not a directory" if rules_dir.exists() else "does not exist"
        return [], RuleError(
            str(rules_dir), 0, 0, f"rules directory {what}; `relance init` writes the defaults"
        )
    paths = sorted(p for p in rules_dir.glob("*.yaml") if not p.name.startswith("."))
    if not paths:
        return [], RuleError(
            str(rules_dir),
            0,
            0,
            "no rule files (*.yaml) in this directory; `relance init` writes the defaults",
        )
    return paths, None


def _parse(path: Path) -> tuple[_Source | None, RuleError | None]:
    """One file as a round-trip mapping (positions kept), or the error that stops it."""
    file = str(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        return None, RuleError(file, 0, 0, f"cannot read: {exc.strerror or exc}")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start)
        col = exc.start - (data.rfind(b"\n", 0, exc.start) + 1)
        return None, RuleError(
            file, line + 1, col + 1, "this is not UTF-8 text; save the file as UTF-8"
        )
    lines = text.splitlines()
    tag = _first_tag(text)
    if tag is not None:
        return None, RuleError(
            file,
            tag[0] + 1,
            tag[1] + 1,
            f'type tags such as "{tag[2]}" are not used in rule files; remove it',
        )
    try:
        doc = YAML(typ="rt").load(text)
    except YAMLError as exc:
        return None, _syntax_error(file, text, lines, exc)
    except Exception as exc:  # a constructor's own ValueError, KeyError...: never a traceback
        return None, RuleError(file, 0, 0, f"cannot read as YAML: {exc}")
    if doc is None:
        return None, None
    if not isinstance(doc, CommentedMap):
        line = next(
            (i for i, t in enumerate(lines) if t.strip() and not t.lstrip().startswith("#")), 0
        )
        return None, RuleError(
            file,
            line + 1,
            1,
            f'expected "key: value" lines at the top of the file (like "steps:"); '
            f"got {_describe(doc)}",
        )
    return _Source(file, lines, doc), None


def _first_tag(text: str) -> tuple[int, int, str] | None:
    """The first explicit tag (`!!int x`, `!foo x`) and where it is.

    Rule files never need one, and ruamel's constructors answer some of them with a bare
    ValueError or KeyError, without a position. A syntax error stops the scan; the full
    load then reports it properly.
    """
    try:
        for token in YAML(typ="rt").scan(text):
            if isinstance(token, TagToken):
                handle, suffix = token.value
                return token.start_mark.line, token.start_mark.column, f"{handle or ''}{suffix}"
    except YAMLError:
        return None
    return None


def _syntax_error(file: str, text: str, lines: list[str], exc: YAMLError) -> RuleError:
    """A YAML syntax error in words an owner can act on, at the place to look."""
    if isinstance(exc, ReaderError):
        line = text.count("\n", 0, exc.position)
        col = exc.position - (text.rfind("\n", 0, exc.position) + 1)
        return RuleError(
            file, line + 1, col + 1, f"character {chr(exc.character)!r} is not allowed in YAML"
        )
    if not isinstance(exc, MarkedYAMLError) or exc.problem_mark is None:
        return RuleError(file, 0, 0, f"YAML syntax error: {exc}")
    problem = str(exc.problem or "")
    context = str(exc.context or "")
    mark, ctx = exc.problem_mark, exc.context_mark
    where = (mark.line, mark.column)
    if "found duplicate key" in problem:
        key = re.search(r'key "([^"]*)"', problem)
        message = f'key "{key[1] if key else "?"}" appears twice in the same block; keep one'
    elif "'\\t'" in problem:
        message = "a tab is used for indentation; indent with spaces"
    elif reserved := re.search(r"found character '(.)' that cannot start any token", problem):
        example = ', like "@client.fr"' if reserved[1] == "@" else ""
        message = f'a value starting with "{reserved[1]}" must be in quotes{example}'
    elif "could not find expected ':'" in problem and ctx is not None:
        where = (ctx.line, ctx.column)
        written = lines[ctx.line].strip() if ctx.line < len(lines) else ""
        message = f'"{written}" is not "key: value"; is a ":" missing?'
    elif "while parsing a flow" in context and ctx is not None:
        opener = "[" if "sequence" in context else "{"
        closer = "]" if opener == "[" else "}"
        message = (
            f'the "{opener}" opened at line {ctx.line + 1} is not closed; '
            f'expected "," or "{closer}"'
        )
    elif "while scanning a quoted scalar" in context and ctx is not None:
        where = (ctx.line, ctx.column)
        message = "this quote is never closed; add the closing quote"
    elif "expected <block end>" in problem or "expected <block mapping start>" in problem:
        message = "this line is not indented like the lines above it; check the spaces"
    elif "another document" in problem:
        message = 'a rule file holds one document; remove this "---" line'
    else:
        message = f"YAML syntax error: {problem}" + (f" ({context})" if context else "")
    return RuleError(file, where[0] + 1, where[1] + 1, message)


# --- turning the ruamel tree into plain values ---------------------------------------------


def _prepare(
    value: Any,
    ann: Any,
    loc: Loc,
    parent: Any,
    key: Any,
    src: _Source,
    problems: dict[Loc, RuleError],
) -> Any:
    """A plain copy of `value` for pydantic, with the owner's writing of times and offsets
    read as the owner meant it.

    YAML reads `offset: +5` as the number 5 and, under YAML 1.1, `start: 8:30` as 510; the
    model would then word its error on a number the owner never wrote, or read 510 as
    seconds. So where the model wants an Offset or a time, a number is replaced by its text
    in the file. Problems found here go to `problems` by loc, and the value becomes None so
    that pydantic's own error at that loc can be dropped as a repeat.
    """
    ann = _unwrap_optional(ann)
    if ann is Offset:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return _raw_text(value, parent, key, src)
        if isinstance(value, dict):
            problems[loc] = _at(src, _value_pos(parent, key), _offset_message(loc, value))
            return None
    elif ann is time:
        if isinstance(value, int | float) and not isinstance(value, bool):
            value = _raw_text(value, parent, key, src)
        if isinstance(value, str):
            m = _TIME.match(value)
            if m and int(m[1]) < 24 and int(m[2]) < 60 and int(m[3] or 0) < 60:
                return f"{int(m[1]):02d}:{m[2]}:{m[3] or '00'}"
            problems[loc] = _at(src, _value_pos(parent, key), _time_message(value))
            return None
    elif isinstance(ann, type) and issubclass(ann, BaseModel) and isinstance(value, dict):
        return {
            _plain(k): _prepare(v, _field_type(ann, k), (*loc, k), value, k, src, problems)
            for k, v in value.items()
        }
    elif get_origin(ann) in (tuple, list) and isinstance(value, list):
        item_type = get_args(ann)[0]
        return [
            _prepare(v, item_type, (*loc, i), value, i, src, problems) for i, v in enumerate(value)
        ]
    return _plain(value)


def _plain(value: Any) -> Any:
    """ruamel's subclasses (CommentedMap, ScalarFloat, TimeStamp...) as plain Python values."""
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, bool):
        return bool(value)
    for kind in (int, float, str):
        if isinstance(value, kind):
            return kind(value)
    if isinstance(value, datetime):
        return datetime.fromisoformat(value.isoformat())
    if isinstance(value, date):
        return date(value.year, value.month, value.day)
    return value


def _raw_text(value: Any, parent: Any, key: Any, src: _Source) -> str:
    """The scalar as typed in the file (`+5`, `08:30`), falling back to the parsed value."""
    line, col = _value_pos(parent, key)
    if 0 <= line < len(src.lines):
        m = _RAW_SCALAR.match(src.lines[line], col)
        if m:
            return m[0]
    return str(value)


def _field_type(model: type[BaseModel], key: Any) -> Any:
    """The annotation of `model.key`, or None for a key the model does not have."""
    field = model.model_fields.get(key) if isinstance(key, str) else None
    return field.annotation if field is not None else None


def _unwrap_optional(ann: Any) -> Any:
    """`X | None` as X, so that optional fields are prepared like required ones."""
    if get_origin(ann) in (Union, types.UnionType):
        args = [a for a in get_args(ann) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return ann


def _model_at(loc: Loc) -> type[BaseModel] | None:
    """The model that validates the mapping at `loc` (for the list of keys it accepts)."""
    ann: Any = Rules
    for part in loc:
        ann = _unwrap_optional(ann)
        if isinstance(part, int) and get_origin(ann) in (tuple, list):
            ann = get_args(ann)[0]
        elif isinstance(ann, type) and issubclass(ann, BaseModel):
            ann = _field_type(ann, part)
        else:
            return None
    ann = _unwrap_optional(ann)
    return ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None


# --- positions ----------------------------------------------------------------------------


def _value_pos(parent: Any, key: Any) -> tuple[int, int]:
    """Where the owner should look for `parent[key]`: the value when it sits on the key's
    line (`offset: +5`, `days: [mon]`), else the key (an empty value, or a block below it)."""
    if isinstance(parent, CommentedSeq):
        line, col = parent.lc.item(key)
        return int(line), int(col)
    if not isinstance(parent, CommentedMap):
        return 0, 0
    key_line, key_col = parent.lc.key(key)
    if parent[key] is None:
        return int(key_line), int(key_col)
    line, col = parent.lc.value(key)
    if line != key_line:
        return int(key_line), int(key_col)
    return int(line), int(col)


def _position(
    loc: Loc, origin: dict[Any, _Source], rules_dir: Path, at_key: bool = False
) -> tuple[str, int, int]:
    """The file, line and column (1-based) of the node `loc` names, or of its nearest
    existing parent; `at_key` points at the last key itself (for an unknown key)."""
    if not loc or loc[0] not in origin:
        return str(rules_dir), 0, 0
    src = origin[loc[0]]
    parent: Any = src.doc
    pos = (0, 0)
    for depth, part in enumerate(loc):
        if isinstance(parent, CommentedMap) and part in parent:
            last = depth == len(loc) - 1
            pos = parent.lc.key(part) if (at_key and last) else _value_pos(parent, part)
        elif isinstance(parent, CommentedSeq) and isinstance(part, int) and 0 <= part < len(parent):
            pos = _value_pos(parent, part)
        else:
            break  # a missing key, or a loc part of pydantic's own: stay at the parent
        parent = parent[part]
    return src.file, int(pos[0]) + 1, int(pos[1]) + 1


def _at(src: _Source, pos: tuple[int, int], message: str) -> RuleError:
    return RuleError(src.file, int(pos[0]) + 1, int(pos[1]) + 1, message)


# --- pydantic errors in the owner's words -------------------------------------------------


def _validation_errors(
    exc: ValidationError,
    origin: dict[Any, _Source],
    rules_dir: Path,
    problems: dict[Loc, RuleError],
    skip_missing: bool,
) -> Iterable[RuleError]:
    """Each pydantic error as a RuleError, without repeats and without pydantic's noise."""
    raw = exc.errors(include_url=False)
    failed = [tuple(e["loc"]) for e in raw if e["type"] != "too_short"]
    seen: set[tuple[str, int, int, str]] = set()
    for err in raw:
        loc: Loc = tuple(err["loc"])
        if any(loc[: len(p)] == p for p in problems):
            continue  # already said, in the owner's words, while preparing
        if skip_missing and err["type"] == "missing" and len(loc) == 1:
            continue  # the key is probably in the file that did not parse
        if err["type"] == "too_short" and any(f[: len(loc)] == loc for f in failed):
            continue  # "0 items after validation" only because every item was wrong
        message = _message(err, loc)
        loc = _item_named(loc, message, origin)
        if err["type"] == "value_error" and loc in _BLAME:
            loc = (*loc, _BLAME[loc])
        file, line, col = _position(
            loc, origin, rules_dir, at_key=err["type"] in ("extra_forbidden", "invalid_key")
        )
        error = RuleError(file, line, col, message)
        if (error.file, error.line, error.col, error.message) not in seen:
            seen.add((error.file, error.line, error.col, error.message))
            yield error


def _item_named(loc: Loc, message: str, origin: dict[Any, _Source]) -> Loc:
    """A list-wide error that quotes one item (`unknown day "mom"`) as that item's loc, so
    the column points at the word to fix rather than at the list."""
    quoted = re.search(r'"([^"]+)"', message)
    if quoted is None or not loc or loc[0] not in origin:
        return loc
    node: Any = origin[loc[0]].doc
    for part in loc:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return loc
    if isinstance(node, CommentedSeq):
        for i, item in enumerate(node):
            if isinstance(item, str) and item.strip().lower().startswith(quoted[1].lower()):
                return (*loc, i)
    return loc


def _message(err: Any, loc: Loc) -> str:
    """What is wrong, then what was expected, for one pydantic error."""
    kind: str = err["type"]
    value = err.get("input")
    ctx = err.get("ctx") or {}
    name = next((str(p) for p in reversed(loc) if isinstance(p, str)), "the rules")
    if kind == "missing":
        if loc == ("steps",):
            return 'missing key "steps": no file lists the calendar (usually rules/calendar.yaml)'
        return f'missing key "{loc[-1]}"'
    if kind in ("extra_forbidden", "invalid_key"):
        model = _model_at(loc[:-1])
        known = list(model.model_fields) if model is not None else []
        near = difflib.get_close_matches(str(loc[-1]), known, n=1)
        hint = f'did you mean "{near[0]}"? ' if near else ""
        return f'unknown key "{loc[-1]}"; {hint}expected one of: {", ".join(known)}'
    if kind in ("value_error", "assertion_error") and "error" in ctx:
        return re.sub(r"\b(\d\d:\d\d):00\b", r"\1", str(ctx["error"]))
    if kind in ("time_type", "time_parsing"):
        return _time_message(value)
    if kind == "enum":
        expected = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
        return f"unknown {name} {_show(value)}; expected one of {', '.join(expected)}"
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        model = _model_at(loc)
        if model is Offset:
            return _offset_message(loc, value)
        keys = ", ".join(model.model_fields) if model is not None else "key: value"
        return f'{name} should be a block of "key: value" lines ({keys}); got {_describe(value)}'
    if kind in ("tuple_type", "list_type"):
        return f"{name} should be a list, like [a, b] or lines starting with -; got " + _describe(
            value
        )
    if kind == "too_short":
        if loc == ("steps",):
            return "steps is empty; expected at least one step"
        return f"{name} is empty; expected at least {ctx.get('min_length', 1)}"
    if kind in ("string_type", "string_sub_type"):
        return f"{name} should be text; got {_describe(value)}"
    if kind in ("bool_type", "bool_parsing"):
        return f"{name} should be true or false; got {_describe(value)}"
    if kind.startswith("int_"):
        return f"{name} should be a whole number; got {_describe(value)}"
    return str(err.get("msg", "")).removeprefix("Value error, ") + f"; got {_describe(value)}"


def _offset_message(loc: Loc, value: Any) -> str:
    name = next((str(p) for p in reversed(loc) if isinstance(p, str)), "offset")
    return f"{name} should be an offset like {_OFFSET_EXAMPLES}; got {_describe(value)}"


def _time_message(value: Any) -> str:
    if isinstance(value, str):
        return f'"{value}" is not a time; expected HH:MM'
    return f"expected a time as HH:MM; got {_describe(value)}"


def _show(value: Any) -> str:
    return f'"{value}"' if isinstance(value, str) else _describe(value)


def _describe(value: Any) -> str:
    """A value as the owner wrote it, in words: the tail of "…; got <this>"."""
    if value is None:
        return "nothing (the value is empty)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a block of keys"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, int | float):
        return f"the number {value}"
    return f'"{value}"'


# --- what a valid schema can still get wrong ----------------------------------------------


def _check_meaning(
    plain: dict[Any, Any], origin: dict[Any, _Source], rules_dir: Path
) -> Iterable[RuleError]:
    """Mistakes the models cannot see alone: a holiday region the `holidays` package does
    not know (it would fail later, at scheduling time), steps out of order or named twice,
    an extra-contacts step number the calendar does not have (it spans two files).

    These read the plain data, not a validated `Rules`, so that they are reported in the
    same pass as the schema errors; whatever has the wrong type here is left to pydantic.
    """

    def at(loc: Loc, message: str) -> RuleError:
        return RuleError(*_position(loc, origin, rules_dir), message)

    section = plain.get("holidays")
    if isinstance(section, dict):
        import holidays  # lazy (~6 MB): only rules with a holidays section need it

        supported = holidays.list_supported_countries()
        country = section.get("country", "FR")
        subdivision = section.get("subdivision")
        if isinstance(country, str) and country not in supported:
            upper = country.upper()
            hint = f'did you mean "{upper}"? ' if upper in supported else ""
            yield at(
                ("holidays", "country"),
                f'unknown country "{country}"; {hint}expected a two-letter code such as '
                "FR, BE, CH, LU",
            )
        elif isinstance(country, str) and isinstance(subdivision, str):
            try:
                holidays.country_holidays(country, subdiv=subdivision)
            except NotImplementedError:
                yield at(
                    ("holidays", "subdivision"),
                    f'unknown subdivision "{subdivision}" for {country}; expected null or '
                    f"one of {', '.join(supported[country])}",
                )

    steps = plain.get("steps")
    steps = steps if isinstance(steps, list) else []
    names: dict[str, int] = {}
    previous: tuple[str, Offset] | None = None
    for i, step in enumerate(steps):
        if not isinstance(step, dict):
            previous = None
            continue
        name = step.get("name")
        if isinstance(name, str):
            if name in names:
                yield at(
                    ("steps", i, "name"),
                    f'step name "{name}" is already used by step {names[name] + 1}; '
                    "each step needs its own name",
                )
            names.setdefault(name, i)
        offset = _try_offset(step.get("offset"))
        if offset is None:
            previous = None
            continue
        if (
            previous is not None
            and previous[1].business == offset.business
            and offset.days < previous[1].days
        ):
            yield at(
                ("steps", i, "offset"),
                f'step "{name}" ({_offset_text(offset)}) comes before the step above it, '
                f'"{previous[0]}" ({_offset_text(previous[1])}); list steps in calendar order',
            )
        previous = (str(name), offset)

    clients = plain.get("clients")
    for i, client in enumerate(clients if isinstance(clients, list) else []):
        if not isinstance(client, dict) or not steps or not client.get("extra_contacts"):
            continue
        first = client.get("extra_contacts_from", 3)
        default = "" if "extra_contacts_from" in client else " (the default)"
        if isinstance(first, int) and not 1 <= first <= len(steps):
            yield at(
                ("clients", i, "extra_contacts_from"),
                f"extra_contacts_from {first}{default} is not a step of the calendar; "
                "expected 1 to "
                f"{len(steps)} (the steps of calendar.yaml, counted from 1)",
            )


def _try_offset(value: Any) -> Offset | None:
    """The offset as the model will read it, or None when the model will complain."""
    try:
        return Offset.parse(value) if isinstance(value, str) else None
    except ValueError:
        return None


def _offset_text(offset: Offset) -> str:
    return f"{offset.days:+d} business days" if offset.business else f"{offset.days:+d}d"
