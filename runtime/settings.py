"""Settings from four layers: command-line flag > environment variable > config.ini > default.

Each program declares its options once (`Option`); `load_settings` builds the
argparse parser and the `--help` text from them, reads the layers, parses every
value, and turns any bad value into one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import configparser
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence


class SettingError(ValueError):
    """A value that cannot be used; the message names where it came from."""


@dataclass(frozen=True)
class Option:
    """One setting: its flag, environment variable, config.ini place, default and parser."""

    name: str  # attribute name; the flag is --name-with-dashes
    env: str
    section: str
    key: str
    default: Any
    parse: Callable[[str], Any]
    help: str
    metavar: str | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError("must be at least 1")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError("must be 0 or more")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError("must be more than 0")
    return value


def choice(*allowed: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}")
        return value

    return parse


def log_level(text: str) -> str:
    value = text.strip().upper()
    if value not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ValueError("must be DEBUG, INFO, WARNING, ERROR or CRITICAL")
    return value


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse prints usage too; one line is enough
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser(prog: str, description: str, options: Sequence[Option], config_env: str) -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog=prog,
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Each setting is read from its flag, else its environment variable, else "
        f"config.ini, else its default. The config file is --config (or {config_env}), "
        "default ./config.ini when it exists.",
    )
    parser.add_argument("--config", metavar="PATH", help=f"config.ini to read [env {config_env}]")
    for option in options:
        where = f"env {option.env}; config.ini [{option.section}] {option.key}; default {option.default}"
        parser.add_argument(option.flag, dest=option.name, metavar=option.metavar, help=f"{option.help} [{where}]")
    return parser


def resolve(
    options: Sequence[Option],
    flags: Mapping[str, Any],
    environ: Mapping[str, str],
    config: configparser.ConfigParser,
) -> dict[str, Any]:
    """Picks each option's layer and parses its value; SettingError names the layer."""
    values = {}
    for option in options:
        if flags.get(option.name) is not None:
            raw, origin = flags[option.name], option.flag
        elif option.env in environ:
            raw, origin = environ[option.env], option.env
        elif config.has_option(option.section, option.key):
            raw, origin = config.get(option.section, option.key), f"config.ini [{option.section}] {option.key}"
        else:
            values[option.name] = option.default
            continue
        try:
            values[option.name] = option.parse(raw)
        except ValueError as error:
            detail = str(error) if str(error) and "invalid literal" not in str(error) else "is not a valid value"
            raise SettingError(f"{origin}={raw!r}: {detail}") from None
    return values


def read_config(path: str | None, environ: Mapping[str, str], config_env: str) -> configparser.ConfigParser:
    config = configparser.ConfigParser(interpolation=None)
    config.optionxform = str  # keys keep their case (maxAmount)
    explicit = path or environ.get(config_env)
    candidate = Path(explicit) if explicit else Path("config.ini")
    if candidate.exists():
        try:
            config.read(candidate, encoding="utf-8")
        except configparser.Error as error:
            raise SettingError(f"{candidate}: {error.message.splitlines()[0]}") from None
    elif explicit:
        raise SettingError(f"config file {candidate} does not exist")
    return config


def load_settings(
    prog: str,
    description: str,
    options: Sequence[Option],
    config_env: str,
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> argparse.Namespace:
    """Parses argv and the other layers; on a bad value prints one line and exits 2."""
    environ = os.environ if environ is None else environ
    parser = build_parser(prog, description, options, config_env)
    args = parser.parse_args(argv)
    try:
        config = read_config(args.config, environ, config_env)
        values = resolve(options, vars(args), environ, config)
    except SettingError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    return argparse.Namespace(**values)
