"""Loading the hand-edited rule files: every mistake comes back as FILE:LINE:COL: message.

Each case writes a few readable YAML files into a temporary `rules/` and states the exact
errors the owner would see, all of them at once. Texts are written as the owner would
type them; a line and column in an expected message can be checked by counting in the text.
"""

from __future__ import annotations

import os
import re
import textwrap
from datetime import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relance.model import Channel
from relance.rules.load import RuleError, load_rules
from relance.rules.model import Offset

DEFAULT_RULES_DIR = Path(__file__).resolve().parents[2] / "rules"

# A calendar that is valid alone, for cases that break another file.
CALENDAR = """\
steps:
  - name: reminder-1
    offset: +5d
    template: reminder-1
"""


def write_rules(root: Path, files: dict[str, str]) -> Path:
    """Write `files` (name -> YAML text) into root/rules and return that directory."""
    rules_dir = root / "rules"
    rules_dir.mkdir()
    for name, text in files.items():
        (rules_dir / name).write_text(textwrap.dedent(text), encoding="utf-8")
    return rules_dir


def messages(files: dict[str, str], root: Path) -> list[str]:
    """The errors for `files`, as `relance check` prints them (paths relative to root)."""
    rules_dir = write_rules(root, files)
    rules, errors = load_rules(rules_dir)
    assert (rules is None) == bool(errors)
    return [str(e).replace(f"{root}{os.sep}", "") for e in errors]


BROKEN: list[tuple[str, dict[str, str], list[str]]] = [
    (
        "syntax_error_missing_colon",
        {
            "calendar.yaml": """\
                steps:
                  - name: reminder-1
                    offset +5d
                    template: reminder-1
                """
        },
        ['rules/calendar.yaml:3:5: "offset +5d" is not "key: value"; is a ":" missing?'],
    ),
    (
        "syntax_error_tab",
        {"calendar.yaml": "steps:\n\t- name: reminder-1\n"},
        ["rules/calendar.yaml:2:1: a tab is used for indentation; indent with spaces"],
    ),
    (
        "syntax_error_unquoted_at",
        {
            "calendar.yaml": CALENDAR,
            "clients.yaml": """\
                clients:
                  - match: [@client.fr]
                """,
        },
        ['rules/clients.yaml:2:13: a value starting with "@" must be in quotes, like "@client.fr"'],
    ),
    (
        "syntax_error_duplicate_key_in_one_file",
        {"calendar.yaml": CALENDAR + "min_gap: 7d\nmin_gap: 8d\n"},
        ['rules/calendar.yaml:6:1: key "min_gap" appears twice in the same block; keep one'],
    ),
    (
        "type_tag",
        {"calendar.yaml": CALENDAR, "timing.yaml": "min_gap: !!int 7\n"},
        ['rules/timing.yaml:1:10: type tags such as "!!int" are not used in rule files; remove it'],
    ),
    (
        "unknown_key",
        {
            "calendar.yaml": """\
                steps:
                  - name: reminder-1
                    offset: +5d
                    template: reminder-1
                    foo: 1
                """
        },
        [
            'rules/calendar.yaml:5:5: unknown key "foo"; expected one of: '
            "name, offset, channel, template, tone, attach_previous"
        ],
    ),
    (
        "unknown_key_close_to_a_known_one",
        {"calendar.yaml": CALENDAR, "timing.yaml": "min_gaps: 7d\n"},
        [
            'rules/timing.yaml:1:1: unknown key "min_gaps"; did you mean "min_gap"? '
            "expected one of: steps, send_window, holidays, min_gap, default_terms, "
            "language, tone, clients, adopt_max_age, after_reply, after_auto_reply, "
            "late_payment, digest, instalment_reminder"
        ],
    ),
    (
        "missing_template",
        {
            "calendar.yaml": """\
                steps:
                  - name: courtesy
                    offset: -5d
                    template: courtesy

                  # the owner forgot the template of the second step
                  - name: reminder-1
                    offset: +5d
                    tone: friendly
                """
        },
        ['rules/calendar.yaml:7:5: missing key "template"'],
    ),
    (
        "offset_without_unit",
        {
            "calendar.yaml": """\
                steps:
                  - name: reminder-1
                    offset: +5
                    template: reminder-1
                """
        },
        ['rules/calendar.yaml:3:13: offset "+5" needs a unit: +5d, -5d, +2w, +3 business days'],
    ),
    (
        "offset_without_unit_quoted",
        {
            "calendar.yaml": """\
                steps:
                  - {name: reminder-1, offset: "-5", template: reminder-1}
                """
        },
        ['rules/calendar.yaml:2:32: offset "-5" needs a unit: +5d, -5d, +2w, +3 business days'],
    ),
    (
        "bad_day",
        {
            "calendar.yaml": CALENDAR,
            "timing.yaml": """\
                send_window:
                  days: [mon, tue, mom, thu]
                """,
        },
        [
            'rules/timing.yaml:2:20: unknown day "mom"; '
            "expected one of mon, tue, wed, thu, fri, sat, sun"
        ],
    ),
    (
        "bad_time",
        {
            "calendar.yaml": CALENDAR,
            "timing.yaml": """\
                send_window:
                  start: 8h30
                """,
        },
        ['rules/timing.yaml:2:10: "8h30" is not a time; expected HH:MM'],
    ),
    (
        "bare_hour_is_not_read_as_seconds",
        {
            "calendar.yaml": CALENDAR,
            "timing.yaml": """\
                send_window:
                  start: 8
                  end: "25:00"
                """,
        },
        [
            'rules/timing.yaml:2:10: "8" is not a time; expected HH:MM',
            'rules/timing.yaml:3:8: "25:00" is not a time; expected HH:MM',
        ],
    ),
    (
        "end_before_start",
        {
            "calendar.yaml": CALENDAR,
            "timing.yaml": """\
                send_window:
                  start: "10:00"
                  end: "08:30"
                """,
        },
        ["rules/timing.yaml:3:8: window end 08:30 must come after start 10:00"],
    ),
    (
        "same_top_level_key_in_two_files",
        {
            "calendar.yaml": CALENDAR + "min_gap: 7d\n",
            "timing.yaml": """\
                # the gap again, by mistake
                min_gap: 10d
                """,
        },
        [
            'rules/timing.yaml:2:1: key "min_gap" is already set in rules/calendar.yaml:5:1; '
            "each top-level key belongs in one file"
        ],
    ),
    (
        "empty_steps",
        {"calendar.yaml": "steps: []\n"},
        ["rules/calendar.yaml:1:8: steps is empty; expected at least one step"],
    ),
    (
        "no_steps_anywhere",
        {"timing.yaml": "min_gap: 7d\n"},
        ['rules: missing key "steps": no file lists the calendar (usually rules/calendar.yaml)'],
    ),
    (
        "wrong_type",
        {"calendar.yaml": CALENDAR, "timing.yaml": "min_gap: [1, 2]\n"},
        [
            "rules/timing.yaml:1:10: min_gap should be an offset like "
            "+5d, -5d, +2w, +3 business days; got a list"
        ],
    ),
    (
        "wrong_types_in_a_client",
        {
            "calendar.yaml": CALENDAR,
            "clients.yaml": """\
                clients:
                  - match: client.fr
                    never_chase: maybe
                    extra_contacts_from: last
                """,
        },
        [
            "rules/clients.yaml:2:12: match should be a list, like [a, b] or lines starting "
            'with -; got "client.fr"',
            'rules/clients.yaml:3:18: never_chase should be true or false; got "maybe"',
            'rules/clients.yaml:4:26: extra_contacts_from should be a whole number; got "last"',
        ],
    ),
    (
        "unknown_channel",
        {
            "calendar.yaml": """\
                steps:
                  - name: reminder-1
                    offset: +5d
                    channel: fax
                    template: reminder-1
                """
        },
        ['rules/calendar.yaml:4:14: unknown channel "fax"; expected one of email, letter, task'],
    ),
    (
        "several_errors_in_one_file_all_reported",
        {
            "calendar.yaml": """\
                steps:
                  - name: courtesy
                    offset: -5
                    template: courtesy
                  - name: reminder-1
                    offset: +5d
                    channel: fax
                    template:
                  - name: courtesy
                    offset: +18d
                    template: reminder-2
                    tone: firm
                    colour: red
                """
        },
        [
            'rules/calendar.yaml:3:13: offset "-5" needs a unit: +5d, -5d, +2w, +3 business days',
            'rules/calendar.yaml:7:14: unknown channel "fax"; expected one of email, letter, task',
            "rules/calendar.yaml:8:5: template should be text; got nothing (the value is empty)",
            'rules/calendar.yaml:9:11: step name "courtesy" is already used by step 1; '
            "each step needs its own name",
            'rules/calendar.yaml:13:5: unknown key "colour"; expected one of: '
            "name, offset, channel, template, tone, attach_previous",
        ],
    ),
    (
        "errors_in_several_files_all_reported",
        {
            "calendar.yaml": "steps:\n  - name: a\n    offset: +5d\n",
            "timing.yaml": "send_window: {days: [mon], start: 8h30}\nholidays: {country: fr}\n",
        },
        [
            'rules/calendar.yaml:2:5: missing key "template"',
            'rules/timing.yaml:1:35: "8h30" is not a time; expected HH:MM',
            'rules/timing.yaml:2:21: unknown country "fr"; did you mean "FR"? '
            "expected a two-letter code such as FR, BE, CH, LU",
        ],
    ),
    (
        "a_broken_file_does_not_hide_the_others",
        {
            "calendar.yaml": "steps:\n  - name: a\n    offset +5d\n",
            "timing.yaml": "min_gap: 7\n",
        },
        [
            'rules/calendar.yaml:3:5: "offset +5d" is not "key: value"; is a ":" missing?',
            'rules/timing.yaml:1:10: offset "7" needs a unit: +5d, -5d, +2w, +3 business days',
        ],
    ),
    (
        "unknown_holiday_region",
        {
            "calendar.yaml": CALENDAR,
            "timing.yaml": "holidays:\n  country: FR\n  subdivision: Bas-Rhin\n",
        },
        [
            'rules/timing.yaml:3:16: unknown subdivision "Bas-Rhin" for FR; expected null or '
            "one of 57, 6AE, 971, 972, 973, 974, 976, BL, MF, NC, PF, PM, TF, WF, "
            "Zone A, Zone B, Zone C"
        ],
    ),
    (
        "steps_out_of_order",
        {
            "calendar.yaml": """\
                steps:
                  - {name: reminder-2, offset: +18d, template: reminder-2}
                  - {name: reminder-1, offset: +5d, template: reminder-1}
                """
        },
        [
            'rules/calendar.yaml:3:32: step "reminder-1" (+5d) comes before the step above '
            'it, "reminder-2" (+18d); list steps in calendar order'
        ],
    ),
    (
        "extra_contacts_from_a_step_that_does_not_exist",
        {
            "calendar.yaml": CALENDAR,
            "clients.yaml": """\
                clients:
                  - match: ["@client.fr"]
                    extra_contacts: ["boss@client.fr"]
                    extra_contacts_from: 4
                """,
        },
        [
            "rules/clients.yaml:4:26: extra_contacts_from 4 is not a step of the calendar; "
            "expected 1 to 1 (the steps of calendar.yaml, counted from 1)"
        ],
    ),
    (
        "top_level_is_not_a_mapping",
        {"calendar.yaml": "# the calendar\n- name: courtesy\n"},
        [
            'rules/calendar.yaml:2:1: expected "key: value" lines at the top of the file '
            '(like "steps:"); got a list'
        ],
    ),
]


@pytest.mark.parametrize(
    ("files", "expected"), [(f, e) for _, f, e in BROKEN], ids=[name for name, _, _ in BROKEN]
)
def test_broken_rules_get_exact_messages(
    tmp_path: Path, files: dict[str, str], expected: list[str]
) -> None:
    assert messages(files, tmp_path) == expected


def test_default_rules_load_without_error() -> None:
    rules, errors = load_rules(DEFAULT_RULES_DIR)
    assert errors == []
    assert rules is not None
    assert [s.name for s in rules.steps] == [
        "courtesy",
        "reminder-1",
        "reminder-2",
        "reminder-3",
        "formal-notice",
    ]
    assert [s.offset for s in rules.steps] == [Offset(days=d) for d in (-5, 5, 18, 30, 40)]
    assert rules.steps[-1].channel is Channel.LETTER
    assert rules.steps[3].attach_previous
    assert (rules.send_window.start, rules.send_window.end) == (time(8, 30), time(10, 0))
    assert rules.min_gap == Offset(days=7)
    assert rules.default_terms == Offset(days=30)
    assert rules.clients == ()


def test_commented_client_examples_load_once_uncommented(tmp_path: Path) -> None:
    """The owner follows the comment: delete `clients: []`, remove the `# ` of the examples."""
    text = (DEFAULT_RULES_DIR / "clients.yaml").read_text(encoding="utf-8")
    head, _, examples = text.partition("clients: []\n")
    uncommented = re.sub(r"^# ?", "", examples, flags=re.MULTILINE)
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    for name in ("calendar.yaml", "timing.yaml"):
        (rules_dir / name).write_text((DEFAULT_RULES_DIR / name).read_text(encoding="utf-8"))
    (rules_dir / "clients.yaml").write_text(head + uncommented, encoding="utf-8")

    rules, errors = load_rules(rules_dir)

    assert errors == []
    assert rules is not None
    regular, direct_debit, group = rules.clients
    assert regular.tone == "warm" and regular.terms == Offset(days=45)
    assert regular.matches("compta@boulangerie-martin.fr")
    assert direct_debit.never_chase
    assert group.extra_contacts and group.extra_contacts_from == 4
    assert rules.profile_for(("ap@durand-industries.com",)) is group


@pytest.mark.parametrize(
    "directive",
    ["", "%YAML 1.1\n---\n"],
    ids=["yaml_1_2", "yaml_1_1"],
)
def test_unquoted_times_are_read_as_written(tmp_path: Path, directive: str) -> None:
    """Unquoted `8:30` is text in YAML 1.2 but the number 510 (base 60) under a YAML 1.1
    directive; either way the owner meant half past eight, not 510 seconds."""
    rules_dir = write_rules(
        tmp_path,
        {
            "calendar.yaml": CALENDAR,
            "timing.yaml": directive + "send_window:\n  start: 8:30\n  end: 10:00\n",
        },
    )
    rules, errors = load_rules(rules_dir)
    assert errors == []
    assert rules is not None
    assert (rules.send_window.start, rules.send_window.end) == (time(8, 30), time(10, 0))


def test_business_day_offsets_in_words(tmp_path: Path) -> None:
    rules_dir = write_rules(
        tmp_path,
        {
            "calendar.yaml": """\
                steps:
                  - {name: a, offset: +3 business days, template: a}
                  - {name: b, offset: +2w, template: b}
                  - {name: c, offset: +10 jours ouvrés, template: c}
                """
        },
    )
    rules, errors = load_rules(rules_dir)
    assert errors == []
    assert rules is not None
    assert [s.offset for s in rules.steps] == [
        Offset(days=3, business=True),
        Offset(days=14),
        Offset(days=10, business=True),
    ]


def test_missing_directory_is_one_error(tmp_path: Path) -> None:
    rules, errors = load_rules(tmp_path / "nowhere")
    assert rules is None
    assert [e.message for e in errors] == [
        "rules directory does not exist; `relance init` writes the defaults"
    ]


def test_directory_without_rule_files_is_one_error(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("steps: []\n")
    rules, errors = load_rules(tmp_path)
    assert rules is None
    assert [str(e) for e in errors] == [
        f"{tmp_path}: no rule files (*.yaml) in this directory; `relance init` writes the defaults"
    ]


def test_unreadable_file_has_line_zero_and_the_rest_still_loads(tmp_path: Path) -> None:
    rules_dir = write_rules(tmp_path, {"calendar.yaml": CALENDAR})
    (rules_dir / "timing.yaml").symlink_to(tmp_path / "gone.yaml")  # a dangling link
    rules, errors = load_rules(rules_dir)
    assert rules is None
    assert errors == [
        RuleError(str(rules_dir / "timing.yaml"), 0, 0, "cannot read: No such file or directory")
    ]
    assert str(errors[0]) == f"{rules_dir}/timing.yaml: cannot read: No such file or directory"


def test_file_not_in_utf8_points_at_the_bad_byte(tmp_path: Path) -> None:
    rules_dir = write_rules(tmp_path, {"calendar.yaml": CALENDAR})
    (rules_dir / "clients.yaml").write_bytes(
        "language: fr\ntone: tr\xe8s ferme\n".encode("latin-1")
    )
    _, errors = load_rules(rules_dir)
    assert [(e.line, e.col, e.message) for e in errors] == [
        (2, 9, "this is not UTF-8 text; save the file as UTF-8")
    ]


def test_editor_lock_files_and_empty_files_are_ignored(tmp_path: Path) -> None:
    rules_dir = write_rules(
        tmp_path, {"calendar.yaml": CALENDAR, "notes.yaml": "# only comments\n"}
    )
    (rules_dir / ".#calendar.yaml").symlink_to("root@host.1234")  # how Emacs locks a file
    rules, errors = load_rules(rules_dir)
    assert errors == []
    assert rules is not None


def test_rule_error_prints_like_beancount() -> None:
    assert str(RuleError("rules/timing.yaml", 2, 8, "bad")) == "rules/timing.yaml:2:8: bad"
    assert str(RuleError("rules/timing.yaml", 2, 0, "bad")) == "rules/timing.yaml:2: bad"
    assert str(RuleError("rules/timing.yaml", 0, 0, "bad")) == "rules/timing.yaml: bad"


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    name=st.sampled_from(["calendar.yaml", "timing.yaml", "clients.yaml"]),
    where=st.floats(min_value=0, max_value=1),
    cut=st.integers(min_value=0, max_value=3),
    insert=st.sampled_from(["", ":", "-", "[", "{", '"', "\t", " ", "\n", "#", "@", "5", "x: 1"]),
)
def test_any_typo_in_the_defaults_is_reported_never_raised(
    tmp_path_factory: pytest.TempPathFactory, name: str, where: float, cut: int, insert: str
) -> None:
    """Whatever the owner's editing does to a file, the loader answers with errors."""
    rules_dir = tmp_path_factory.mktemp("typo") / "rules"
    rules_dir.mkdir()
    for default in DEFAULT_RULES_DIR.glob("*.yaml"):
        text = default.read_text(encoding="utf-8")
        if default.name == name:
            at = int(where * len(text))
            text = text[:at] + insert + text[at + cut :]
        (rules_dir / default.name).write_text(text, encoding="utf-8")

    rules, errors = load_rules(rules_dir)

    assert (rules is None) == bool(errors)
    for error in errors:
        assert error.file.startswith(str(rules_dir))
        assert error.line >= 0 and error.col >= 0 and error.message
        assert "pydantic" not in error.message and "Value error" not in error.message
