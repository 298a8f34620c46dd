"""
Configuration from the command line, the environment and a TOML file
(appserver.config through appserver.tap.Options): precedence, errors that
name the option and its source, and --print-config.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib

import pytest
from twisted.python import usage

from appserver._server.config import render_toml, resolve_configuration
from appserver._server.settings import OPTION_SPECS, Settings
from appserver.tap import Options

TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "--pidfile=", "-n"]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    """
    No APPSERVER_* variable of the developer's shell leaks into a test.
    """
    for spec in OPTION_SPECS:
        monkeypatch.delenv(spec.environment_variable, raising=False)
    monkeypatch.delenv("APPSERVER_CONFIG", raising=False)


def parse(*argv):
    options = Options()
    options.parseOptions(list(argv))
    return options.settings


def write(tmp_path, text, name="appserver.toml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# Precedence -------------------------------------------------------------------

def test_defaults_apply_when_nothing_is_given():
    assert parse() == Settings()


def test_the_file_overrides_the_defaults(tmp_path):
    config = write(tmp_path, 'max-connections = 10\nrate_limit = 2.5\naccess-log = false\n'
                             'max-message-size = "64KiB"\n')
    settings = parse("--config", config)
    assert settings.max_connections == 10
    assert settings.rate_limit == 2.5
    assert settings.access_log is False
    assert settings.max_message_size == 64 * 1024


def test_the_environment_overrides_the_file(tmp_path, monkeypatch):
    config = write(tmp_path, "max-connections = 10\nping-interval = 5\n")
    monkeypatch.setenv("APPSERVER_MAX_CONNECTIONS", "20")
    settings = parse("--config", config)
    assert settings.max_connections == 20
    assert settings.ping_interval == 5.0


def test_the_command_line_overrides_the_environment(tmp_path, monkeypatch):
    config = write(tmp_path, "max-connections = 10\n")
    monkeypatch.setenv("APPSERVER_MAX_CONNECTIONS", "20")
    assert parse("--config", config, "--max-connections", "30").max_connections == 30


def test_a_repeatable_option_is_replaced_not_merged(tmp_path, monkeypatch):
    config = write(tmp_path, 'allowed-origin = ["https://file.example", "https://*.file.example"]\n')
    assert parse("--config", config).allowed_origin == ("https://file.example", "https://*.file.example")
    monkeypatch.setenv("APPSERVER_ALLOWED_ORIGIN", "https://env.example, https://other.example")
    assert parse("--config", config).allowed_origin == ("https://env.example", "https://other.example")
    assert parse("--config", config, "--allowed-origin", "https://cli.example").allowed_origin == \
        ("https://cli.example",)


def test_the_config_file_can_be_named_in_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("APPSERVER_CONFIG", write(tmp_path, 'queue-policy = "conflate"\n'))
    assert parse().queue_policy == "conflate"


def test_sources_say_where_each_value_came_from(tmp_path):
    config = write(tmp_path, "max-connections = 10\nrate-limit = 1\n")
    resolved = resolve_configuration({"rate-limit": "3"}, {"APPSERVER_HISTORY_SIZE": "5"}, config)
    assert resolved.sources["max-connections"] == config
    assert resolved.sources["rate-limit"] == "command line"
    assert resolved.sources["history-size"] == "APPSERVER_HISTORY_SIZE"
    assert resolved.sources["ajax"] == "default"


# Errors -----------------------------------------------------------------------

def test_an_unknown_key_in_the_file_is_refused_by_name(tmp_path):
    config = write(tmp_path, "max-conections = 10\n")
    with pytest.raises(usage.UsageError, match="unknown option 'max-conections' in the configuration file"):
        parse("--config", config)


def test_a_bad_value_in_the_file_names_option_and_file(tmp_path):
    config = write(tmp_path, 'max-connections = "many"\n')
    with pytest.raises(usage.UsageError) as raised:
        parse("--config", config)
    assert "max-connections" in str(raised.value) and config in str(raised.value)


def test_a_fractional_number_for_a_count_is_refused(tmp_path):
    with pytest.raises(usage.UsageError, match="max-queue-messages"):
        parse("--config", write(tmp_path, "max-queue-messages = 1.5\n"))


def test_a_list_for_a_single_value_option_is_refused(tmp_path):
    with pytest.raises(usage.UsageError, match="bad value for ajax .*expected one value"):
        parse("--config", write(tmp_path, 'ajax = ["tcp:1", "tcp:2"]\n'))


def test_a_table_in_the_file_is_refused(tmp_path):
    with pytest.raises(usage.UsageError, match="unknown option 'server'"):
        parse("--config", write(tmp_path, "[server]\najax = 'tcp:1'\n"))


def test_the_same_option_twice_in_the_file_is_refused(tmp_path):
    with pytest.raises(usage.UsageError, match="'max-connections' is given twice"):
        parse("--config", write(tmp_path, "max-connections = 1\nmax_connections = 2\n"))


def test_a_bad_value_in_the_environment_names_the_variable(monkeypatch):
    monkeypatch.setenv("APPSERVER_QUEUE_POLICY", "sometimes")
    with pytest.raises(usage.UsageError, match="queue-policy.*APPSERVER_QUEUE_POLICY"):
        parse()


def test_a_bad_value_is_refused_even_when_a_higher_source_overrides_it(monkeypatch):
    monkeypatch.setenv("APPSERVER_RATE_LIMIT", "-1")
    with pytest.raises(usage.UsageError, match="rate-limit.*APPSERVER_RATE_LIMIT"):
        parse("--rate-limit", "5")


def test_a_bad_endpoint_names_its_source(monkeypatch):
    monkeypatch.setenv("APPSERVER_AJAX", "nonsense:1")
    with pytest.raises(usage.UsageError, match=r"--ajax 'nonsense:1' \(from APPSERVER_AJAX\)"):
        parse()


def test_unknown_appserver_variables_are_ignored(monkeypatch):
    monkeypatch.setenv("APPSERVER_SHARE", "/usr/share/appserver")
    monkeypatch.setenv("APPSERVER_SOMETHING_ELSE", "x")
    assert parse() == Settings()


def test_a_missing_file_is_reported(tmp_path):
    with pytest.raises(usage.UsageError, match="cannot read the configuration file"):
        parse("--config", str(tmp_path / "nowhere.toml"))


def test_invalid_toml_is_reported_with_its_position(tmp_path):
    with pytest.raises(usage.UsageError, match=r"not valid TOML: .*line 2"):
        parse("--config", write(tmp_path, "rate-limit = 1\nping-interval = \n"))


# --print-config -----------------------------------------------------------------

def test_print_config_prints_toml_and_exits_zero(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("APPSERVER_MAX_CONNECTIONS", "20")
    with pytest.raises(SystemExit) as exited:
        parse("--config", write(tmp_path, "rate-limit = 1.5\n"), "--ws", "tcp:7002", "--print-config")
    assert exited.value.code == 0
    output = capsys.readouterr().out
    document = tomllib.loads(output)
    assert document["ws"] == "tcp:7002"
    assert document["max-connections"] == 20
    assert document["rate-limit"] == 1.5
    assert document["access-log"] is True
    assert 'ws = "tcp:7002"  # command line' in output
    assert "max-connections = 20  # APPSERVER_MAX_CONNECTIONS" in output


def test_printed_config_reads_back_as_the_same_settings(tmp_path, capsys):
    first = write(tmp_path, 'allowed-origin = ["https://a.example"]\nmax-message-size = "2MiB"\n'
                            'html = "/srv/pages"\nlisten = "tcp:8080"\n', "first.toml")
    (tmp_path / "pages").mkdir()
    with pytest.raises(SystemExit):
        parse("--config", first, "--html", str(tmp_path / "pages"), "--print-config")
    second = write(tmp_path, capsys.readouterr().out, "second.toml")
    assert parse("--config", second) == parse("--config", first, "--html", str(tmp_path / "pages"))


def test_print_config_hides_secrets():
    resolved = resolve_configuration({"publish-token": "s3cret", "backplane": "redis://:hunter2@db:6379/0"}, {})
    output = render_toml(resolved)
    assert "s3cret" not in output and "hunter2" not in output
    assert "# publish-token is set (command line; not printed)" in output
    assert 'backplane = "redis://:****@db:6379/0"' in output


def test_twistd_print_config_exits_without_starting(tmp_path):
    config = write(tmp_path, 'static = "tcp:7000"\n')
    result = subprocess.run([*TWISTD, "appserver", "--config", config, "--print-config"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert tomllib.loads(result.stdout)["static"] == "tcp:7000"
    assert "listening" not in result.stdout + result.stderr


def test_twistd_refuses_to_start_with_an_unknown_key(tmp_path):
    config = write(tmp_path, "colour = 'blue'\n")
    result = subprocess.run([*TWISTD, "appserver", "--config", config], cwd=tmp_path,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    assert "unknown option 'colour'" in result.stdout + result.stderr
    assert "listening" not in result.stdout + result.stderr
