"""One settings schema (``config.SCHEMA``): the VS Code extension, Neovim docs, README and CLI agree."""

from __future__ import annotations

import json
import re
from dataclasses import fields
from pathlib import Path

import pytest

from diffgemma_ls.cli import build_parser
from diffgemma_ls.config import CLIENT_KEYS, OPTIONS, SCHEMA, Settings, settings_table, validate_setting

ROOT = Path(__file__).resolve().parents[1]
EXTENSION_OWN = {"enable", "server.command", "trace.server"}  # the extension's keys, not the server's


def vscode_properties() -> dict[str, dict]:
    manifest = json.loads((ROOT / "editors" / "vscode" / "package.json").read_text())
    configuration = manifest["contributes"]["configuration"]
    properties = (
        configuration["properties"] if isinstance(configuration, dict) else configuration[0]["properties"]
    )
    return {key.removeprefix("diffgemma."): value for key, value in properties.items()}


def test_every_setting_has_one_schema_entry() -> None:
    assert sorted(o.field for o in SCHEMA) == sorted(f.name for f in fields(Settings))
    assert len(SCHEMA) == len(OPTIONS)


def test_the_vscode_extension_declares_exactly_the_servers_settings() -> None:
    properties = vscode_properties()
    assert set(properties) - EXTENSION_OWN == set(CLIENT_KEYS)
    for key, field in CLIENT_KEYS.items():
        option, declared = OPTIONS[field], properties[key]
        default = list(option.default) if isinstance(option.default, tuple) else option.default
        assert declared["default"] == default, key
        if option.choices:
            assert tuple(declared["enum"]) == option.choices, key
        if option.bounds:
            assert (declared["minimum"], declared["maximum"]) == option.bounds, key
        types = declared["type"] if isinstance(declared["type"], list) else [declared["type"]]
        if option.nullable:
            assert "null" in types, key  # unset: the server's (or the checkpoint's) default


def test_the_extension_sends_every_server_key() -> None:
    source = (ROOT / "editors" / "vscode" / "src" / "settings.ts").read_text()
    keys = re.search(r"const SERVER_KEYS = \[(.*?)\] as const", source, re.S).group(1)
    assert re.findall(r'"(\w+)"', keys) == list(CLIENT_KEYS)


def test_the_readme_table_is_the_schemas() -> None:
    readme = (ROOT / "README.md").read_text()
    assert settings_table() in readme


def test_the_neovim_docs_name_every_setting() -> None:
    docs = (ROOT / "editors" / "nvim" / "README.md").read_text()
    missing = [key for key in CLIENT_KEYS if f"`{key}`" not in docs]
    assert not missing


def test_cli_flags_come_from_the_schema_and_validate_as_the_client() -> None:
    parser = build_parser()
    usage = parser.format_help()
    assert all(o.flag in usage for o in SCHEMA if o.flag)
    args = parser.parse_args(["--typing-max-steps", "4", "--debounce-ms", "auto", "--no-prefetch"])
    assert (args.typing_max_steps, args.debounce_ms, args.prefetch) == (4, "auto", False)
    with pytest.raises(SystemExit):
        parser.parse_args(["--typing-max-steps", "0"])


@pytest.mark.parametrize(
    ("field", "value"),
    [("candidates", 9), ("quantize", "3bit"), ("canvas_length", 2), ("debounce_ms", "soon")],
)
def test_bounds_and_choices_reject(field: str, value: object) -> None:
    with pytest.raises(ValueError):
        validate_setting(field, value)
