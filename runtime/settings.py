"""Settings from four layers: command-line flag > environment variable > config.ini > default.

Each program declares its options once (`Option`); `load_settings` builds the
argparse parser and the `--help` text from them, reads the layers, parses every
value, and turns any bad value, and any section or key of config.ini that no
option reads, into one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import configparser
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

# The one place the version is written: pyproject.toml reads it from here, and
# both programs print it for --version.
__version__ = "0.1.0"

EXIT_CONFIG = 2  # a bad flag, variable, config file or value, in both programs
QUOTED_LIMIT = 40  # characters of a bad value an error line repeats


class SettingError(ValueError):
    """A value that cannot be used; the message names where it came from."""


@dataclass(frozen=True)
class Option:
    """One setting: its flag, environment variable, config.ini place, default and parser.

    `default` is used when no layer sets the option. Written as text, it is parsed
    like any layer's value, and --help shows it as a user would type it. An option
    with no `env` and no `section` is read from its flag only. A `secret` option's
    value is never repeated in an error line.
    """

    name: str  # attribute name; the flag is --name-with-dashes
    env: str | None
    section: str | None
    key: str | None
    default: Any
    parse: Callable[[str], Any]
    help: str
    metavar: str | None = None
    secret: bool = False

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def where(self) -> str:
        """The layers that set this option, for --help."""
        places = [f"env {self.env}"] if self.env else []
        if self.section:
            places.append(f"config.ini [{self.section}] {self.key}")
        if self.default is not None:
            places.append(f"default {self.default}")
        elif places:
            places.append("not set by default")
        return "; ".join(places)


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


def program_name(default: str) -> str:
    """The name the user ran: `default` (python -m reactor stats) from source, the
    installed script's own name in place of `python -m MODULE` (lottery-central stats).
    """
    name = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    if not name or name.endswith(".py") or name.startswith("-"):
        return default  # python -m reactor runs reactor/__main__.py; python -c says -c
    words = default.split()
    command = words[3:] if words[:2] == ["python", "-m"] else words[1:]
    return " ".join([name, *command])


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line (it prints the usage too) and exits 2."""

    def error(self, message: str) -> None:
        self.exit(EXIT_CONFIG, f"{self.prog}: error: {message} (see --help)\n")


def build_parser(prog: str, description: str, options: Sequence[Option], config_env: str) -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog=prog,
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Each setting is read from its flag, else its environment variable, else\n"
        f"config.ini, else its default. The config file is --config (or {config_env}),\n"
        "default ./config.ini when it exists; a section or key in it that no setting\n"
        "reads is an error.",
    )
    parser.add_argument("--version", action="version", version=f"{prog} {__version__}")
    parser.add_argument("--config", metavar="PATH", help=f"config.ini to read [env {config_env}]")
    for option in options:
        where = option.where()
        parser.add_argument(option.flag, dest=option.name, metavar=option.metavar,
                            help=f"{option.help} [{where}]" if where else option.help)
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
        elif option.env and option.env in environ:
            raw, origin = environ[option.env], option.env
        elif option.section and config.has_option(option.section, option.key):
            raw, origin = config.get(option.section, option.key), f"config.ini [{option.section}] {option.key}"
        elif isinstance(option.default, str):
            raw, origin = option.default, f"the default of {option.flag}"
        else:
            values[option.name] = option.default
            continue
        try:
            values[option.name] = option.parse(raw)
        except ValueError as error:
            detail = str(error) if str(error) and "invalid literal" not in str(error) else "is not a valid value"
            raise SettingError(f"{origin}={_shown(raw, option.secret)}: {detail}") from None
    return values


def _shown(raw: str, secret: bool) -> str:
    """A value as an error line repeats it: never a secret, at most QUOTED_LIMIT characters."""
    if secret:
        return "(hidden)"
    if len(raw) <= QUOTED_LIMIT:
        return repr(raw)
    return f"{raw[:QUOTED_LIMIT]!r}... ({len(raw)} characters)"


def read_config(
    path: str | None, environ: Mapping[str, str], config_env: str, known: Sequence[Option]
) -> configparser.ConfigParser:
    """The config file, if any; a section or key that none of `known` reads is a SettingError."""
    config = configparser.ConfigParser(interpolation=None)
    config.optionxform = str  # keys keep their case (maxAmount)
    explicit = path or environ.get(config_env)
    candidate = Path(explicit) if explicit else Path("config.ini")
    if candidate.exists():
        try:
            with open(candidate, encoding="utf-8-sig") as source:  # -sig: a BOM is not part of the first line
                config.read_file(source)
        except configparser.Error as error:
            raise SettingError(f"{candidate}: {error.message.splitlines()[0]}") from None
        except (OSError, UnicodeDecodeError) as error:
            raise SettingError(f"config file {candidate}: {getattr(error, 'strerror', None) or error}") from None
        _check_known(candidate, config, known)
    elif explicit:
        raise SettingError(f"config file {candidate} does not exist")
    return config


def _check_known(path: Path, config: configparser.ConfigParser, known: Sequence[Option]) -> None:
    # A key nothing reads is a typo or a misplaced line (agencys = 7, address under
    # [lottery]); ignoring it would run with a setting the operator did not choose.
    keys: dict[str, list[str]] = {}
    for option in known:
        if option.section:
            keys.setdefault(option.section, []).append(option.key)
    sections = ", ".join(f"[{section}]" for section in keys)
    if config.defaults():
        raise SettingError(f"{path}: unknown section [{config.default_section}] (known: {sections})")
    for section in config.sections():
        if section not in keys:
            raise SettingError(f"{path}: unknown section [{section}] (known: {sections})")
        for key in config.options(section):
            if key not in keys[section]:
                raise SettingError(f"{path}: [{section}] {key}: unknown key (known in [{section}]: "
                                   f"{', '.join(keys[section])})")


def load_settings(
    prog: str,
    description: str,
    options: Sequence[Option],
    config_env: str,
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
    known: Sequence[Option] | None = None,
) -> argparse.Namespace:
    """Parses argv and the other layers; on a bad value prints one line and exits 2.

    `prog` is how the program is run from source (`python -m reactor`); an installed
    script shows its own name instead. `known` are the options the config file may
    hold (default: `options`), for a command that reads a program's file but only a
    few of its settings.
    """
    environ = os.environ if environ is None else environ
    prog = program_name(prog)
    parser = build_parser(prog, description, options, config_env)
    args = parser.parse_args(argv)
    try:
        config = read_config(args.config, environ, config_env, options if known is None else known)
        values = resolve(options, vars(args), environ, config)
    except SettingError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None
    return argparse.Namespace(**values)
