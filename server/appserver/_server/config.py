"""
Where each option's value comes from: the command line, the environment, a
TOML configuration file, or the default, in that order of precedence.

Every option of L{appserver._server.settings.OPTION_SPECS} can be given in each of
the three places: C{--max-connections 500}, C{APPSERVER_MAX_CONNECTIONS=500},
or C{max-connections = 500} (or C{max_connections}) in the file named by
C{--config} or C{APPSERVER_CONFIG}. A repeatable option replaces, never
merges with, what a lower source said: a list in the file, comma-separated
in the environment, the flag repeated on the command line.

Mistakes stop the start-up with a message naming the option and where it
came from; an unknown key in the file is a mistake (a typo would otherwise
be silently ignored). Unknown C{APPSERVER_*} variables are not: the prefix
is shared with other settings (C{APPSERVER_SHARE}) and deployment tooling.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from appserver._redis.location import masked_url
from appserver._server.settings import OPTION_SPECS, OptionSpec, Settings, SettingsError

__all__ = ["ResolvedConfiguration", "resolve_configuration", "read_config_file", "environment_values",
           "render_toml", "CONFIG_ENVIRONMENT_VARIABLE", "DEFAULT"]

#: Names the configuration file when C{--config} is not given.
CONFIG_ENVIRONMENT_VARIABLE = "APPSERVER_CONFIG"

#: The source of a value nobody set.
DEFAULT = "default"

_SPECS = {spec.attribute: spec for spec in OPTION_SPECS}

#: Options whose value is a secret: L{render_toml} does not print them.
_SECRET_OPTIONS = frozenset({"publish-token"})


@dataclass(frozen=True)
class ResolvedConfiguration:
    """
    The effective settings and, per option name, where its value came from:
    C{"command line"}, the environment variable's name, the file's path, or
    L{DEFAULT}.
    """

    settings: Settings
    sources: dict[str, str]


def _spec(key: str) -> OptionSpec | None:
    return _SPECS.get(key.replace("-", "_"))


def read_config_file(path: str | Path) -> dict[str, Any]:
    """
    Read a flat TOML file of options into raw values keyed by option name.

    @raise SettingsError: the file cannot be read or parsed, has an unknown
        key, the same option twice (C{a-b} and C{a_b}), or a value of a type
        the option cannot take.
    """
    try:
        with open(path, "rb") as file:
            document = tomllib.load(file)
    except OSError as error:
        raise SettingsError(f"cannot read the configuration file {str(path)!r}: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise SettingsError(f"the configuration file {str(path)!r} is not valid TOML: {error}") from None
    values: dict[str, Any] = {}
    for key, value in document.items():
        spec = _spec(key)
        if spec is None:
            raise SettingsError(f"unknown option {key!r} in the configuration file {str(path)!r}; "
                                f"known options: {', '.join(s.name for s in OPTION_SPECS)}")
        if spec.name in values:
            raise SettingsError(f"option {spec.name!r} is given twice in the configuration file {str(path)!r}")
        values[spec.name] = _from_toml(spec, value, f"in the configuration file {str(path)!r}")
    return values


def _from_toml(spec: OptionSpec, value: Any, where: str) -> Any:
    """
    A TOML value as the text the option's parser expects (so a file, the
    environment and the command line are validated identically).
    """
    if spec.repeatable:
        items = value if isinstance(value, list) else [value]
        return [_scalar_text(spec, item, where) for item in items]
    if isinstance(value, list):
        raise SettingsError(f"bad value for {spec.name} {where}: expected one value, not a list")
    return _scalar_text(spec, value, where)


def _scalar_text(spec: OptionSpec, value: Any, where: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        return str(value)
    raise SettingsError(f"bad value for {spec.name} {where}: {type(value).__name__} values are not accepted "
                        f"(use a string, a number or a boolean)")


def environment_values(environ: Mapping[str, str]) -> dict[str, tuple[Any, str]]:
    """
    The options set in the environment as C{APPSERVER_<NAME>}, each with the
    variable's name. Repeatable options are comma-separated.
    """
    found: dict[str, tuple[Any, str]] = {}
    for spec in OPTION_SPECS:
        variable = spec.environment_variable
        if variable not in environ:
            continue
        raw = environ[variable]
        if spec.repeatable:
            found[spec.name] = ([item.strip() for item in raw.split(",") if item.strip()], variable)
        else:
            found[spec.name] = (raw, variable)
    return found


def resolve_configuration(command_line: Mapping[str, Any], environ: Mapping[str, str],
                          config_path: str | None = None) -> ResolvedConfiguration:
    """
    Merge the sources: command line over environment over file over
    defaults. C{command_line} holds only the options actually given.

    @param config_path: the C{--config} argument; without one, the file
        named by C{APPSERVER_CONFIG}, if any.
    @raise SettingsError: naming the option and its source.
    """
    layers: list[tuple[dict[str, Any], dict[str, str]]] = []
    if config_path is None:
        config_path = environ.get(CONFIG_ENVIRONMENT_VARIABLE) or None
    if config_path is not None:
        from_file = read_config_file(config_path)
        layers.append((from_file, {name: str(config_path) for name in from_file}))
    from_environment = environment_values(environ)
    layers.append(({name: value for name, (value, _) in from_environment.items()},
                   {name: variable for name, (_, variable) in from_environment.items()}))
    given = {}
    for key, value in command_line.items():
        spec = _spec(key)
        if spec is None:
            raise SettingsError(f"unknown option {key!r}")
        given[spec.name] = value
    layers.append((given, {name: "command line" for name in given}))

    values: dict[str, Any] = {}
    sources: dict[str, str] = {spec.name: DEFAULT for spec in OPTION_SPECS}
    for layer, layer_sources in layers:
        for name, value in layer.items():
            # Each value is checked where it is given, so the message can
            # say where to fix it, even when a higher source overrides it.
            _check_one(name, value, layer_sources[name])
            values[name] = value
            sources[name] = layer_sources[name]
    return ResolvedConfiguration(Settings.from_mapping(values), sources)


def _check_one(name: str, value: Any, source: str) -> None:
    try:
        Settings.from_mapping({name: value})
    except SettingsError as error:
        where = "on the command line" if source == "command line" else \
            f"in {source}" if source.startswith("APPSERVER_") else f"in the configuration file {source!r}"
        raise SettingsError(f"{error} ({where})") from None


# Printing ---------------------------------------------------------------------

def render_toml(resolved: ResolvedConfiguration) -> str:
    """
    The effective configuration as a TOML file that C{--config} accepts,
    each value commented with its source. Secrets are not printed, and a
    password in the backplane URL is masked.
    """
    settings = resolved.settings
    lines = ["# appserver effective configuration",
             "# precedence: command line > environment (APPSERVER_*) > configuration file > default", ""]
    for spec in OPTION_SPECS:
        value = getattr(settings, spec.attribute)
        source = resolved.sources.get(spec.name, DEFAULT)
        if value is None:
            lines.append(f"# {spec.name} is not set ({source})")
        elif spec.name in _SECRET_OPTIONS:
            lines.append(f"# {spec.name} is set ({source}; not printed)")
        else:
            if spec.name == "backplane":
                value = masked_url(value)
            lines.append(f"{spec.name} = {_toml_value(value)}  # {source}")
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    return _toml_string(str(value))


def _toml_string(text: str) -> str:
    escaped = []
    for character in text:
        if character == '"':
            escaped.append('\\"')
        elif character == "\\":
            escaped.append("\\\\")
        elif character == "\t" or (ord(character) >= 0x20 and ord(character) != 0x7F):
            escaped.append(character)
        else:
            escaped.append(f"\\u{ord(character):04X}")
    return '"' + "".join(escaped) + '"'

