"""
Settings (one validated value from any source) and C{twistd appserver}'s
options built from L{OPTION_SPECS}: defaults, parsing, and errors that
name the option at fault.
"""

import pytest
from twisted.python import usage

from appserver._server.service import AppServerService
from appserver._server.settings import OPTION_SPECS, Settings, SettingsError, parse_size
from appserver.tap import Options, makeService


def parsed(*args):
    options = Options()
    options.parseOptions(list(args))
    return options


def usage_error(*args):
    with pytest.raises(usage.UsageError) as caught:
        parsed(*args)
    return str(caught.value)


# Settings ----------------------------------------------------------------------------


def test_every_spec_default_is_the_settings_default():
    defaults = Settings()
    for spec in OPTION_SPECS:
        expected = spec.default if not spec.repeatable else tuple(spec.default)
        assert getattr(defaults, spec.attribute) == expected, spec.name


def test_from_mapping_with_nothing_gives_the_defaults():
    assert Settings.from_mapping({}) == Settings()


def test_from_mapping_parses_strings_and_accepts_typed_values():
    settings = Settings.from_mapping({"max-message-size": "64KiB", "max_queue_bytes": 4096,
                                      "ping-interval": "2.5", "rate_limit": 0, "access-log": "false",
                                      "max-queue-messages": "5"})
    assert settings.max_message_size == 65536 and settings.max_queue_bytes == 4096
    assert settings.ping_interval == 2.5 and settings.rate_limit == 0
    assert settings.access_log is False and settings.max_queue_messages == 5


def test_a_repeatable_option_takes_one_string_or_a_list():
    assert Settings.from_mapping({"allowed-origin": "https://a.test"}).allowed_origin == ("https://a.test",)
    assert Settings.from_mapping({"allowed_origin": ["https://a.test", "*"]}).allowed_origin == (
        "https://a.test", "*")


def test_an_unknown_option_is_refused_with_the_known_ones_listed():
    with pytest.raises(SettingsError) as caught:
        Settings.from_mapping({"max-mesage-size": 1})
    assert "max-mesage-size" in str(caught.value) and "max-message-size" in str(caught.value)


@pytest.mark.parametrize("name, value", [
    ("max-message-size", "lots"), ("max-message-size", "-1"), ("max-queue-messages", "0"),
    ("max-connections", "-3"), ("ping-interval", "-1"), ("ping-timeout", "soon"),
    ("queue-policy", "explode"), ("access-log", "maybe"), ("max-channels-per-client", "0"),
    ("history-size", "1.5"), ("log-format", "xml"), ("max-message-size", "0"),
])
def test_a_bad_value_is_a_settings_error_naming_the_option(name, value):
    with pytest.raises(SettingsError) as caught:
        Settings.from_mapping({name: value})
    assert name in str(caught.value)


@pytest.mark.parametrize("text, size", [("0", 0), ("1048576", 1048576), ("64KiB", 65536), ("64k", 65536),
                                        ("2MB", 2_000_000), ("1MiB", 1048576), ("1 GiB", 1024 ** 3),
                                        ("10b", 10), (" 7 ", 7), (4096, 4096), ("1.5KiB", 1536)])
def test_parse_size(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "KiB", "ten", "-5", "5 parsecs", "1e3x"])
def test_parse_size_refuses_what_is_not_a_size(text):
    with pytest.raises(ValueError):
        parse_size(text)


def test_as_dict_names_every_option_as_on_the_command_line():
    assert set(Settings().as_dict()) == {spec.name for spec in OPTION_SPECS}


# twistd options --------------------------------------------------------------------------


def test_every_option_spec_is_a_command_line_option():
    options = Options()
    known = {name.rstrip("=") for name in options.longOpt}
    for spec in OPTION_SPECS:
        assert spec.name in known, spec.name


def test_the_help_lists_every_option():
    text = str(Options())
    for spec in OPTION_SPECS:
        assert f"--{spec.name}" in text, spec.name


def test_no_arguments_give_the_default_settings_and_the_chat_app():
    options = parsed()
    assert options.settings == Settings()
    assert "chat" in options.app.handlers


def test_options_become_settings():
    options = parsed("--static", "tcp:8000", "--max-message-size", "2MiB", "--queue-policy", "drop-oldest",
                     "--allowed-origin", "https://a.test", "--allowed-origin", "https://*.b.test",
                     "--poll-timeout", "5", "--access-log", "false")
    settings = options.settings
    assert settings.static == "tcp:8000" and settings.max_message_size == 2 * 1024 * 1024
    assert settings.queue_policy == "drop-oldest" and settings.poll_timeout == 5.0
    assert settings.allowed_origin == ("https://a.test", "https://*.b.test")
    assert settings.access_log is False


@pytest.mark.parametrize("option", ["static", "ajax", "ws"])
def test_a_bad_endpoint_is_a_usage_error_naming_the_option(option):
    message = usage_error(f"--{option}", "bogus:1234")
    assert f"--{option}" in message and "bogus:1234" in message


def test_a_bad_listen_endpoint_is_a_usage_error_naming_the_option():
    assert "--listen" in usage_error("--listen", "tcp:notaport")


def test_in_single_port_mode_only_listen_is_checked():
    assert parsed("--listen", "tcp:8080", "--ws", "bogus:1").settings.listen == "tcp:8080"


def test_a_bad_value_is_a_usage_error_naming_the_option():
    assert "max-queue-messages" in usage_error("--max-queue-messages", "none")


def test_an_unknown_option_is_a_usage_error():
    with pytest.raises(usage.UsageError):
        parsed("--no-such-option", "1")


@pytest.mark.parametrize("reference, fragment", [
    ("nomodule", "module:app"),
    ("no_such_module_xyz:app", "cannot import"),
    ("appserver.apps.chat:nothing", "no attribute"),
    ("appserver.apps.chat:MAX_CHAT_LENGTH", "not an appserver.App"),
])
def test_a_bad_app_is_a_usage_error_saying_why(reference, fragment):
    message = usage_error("--app", reference)
    assert "--app" in message and fragment in message


def test_a_malformed_allowed_origin_is_a_usage_error_naming_the_option():
    message = usage_error("--allowed-origin", "example.com")
    assert "allowed-origin" in message and "example.com" in message


def test_make_service_builds_the_service_with_the_settings_and_app():
    options = parsed("--ws", "tcp:0:interface=127.0.0.1")
    service = makeService(options)
    assert isinstance(service, AppServerService)
    assert service.settings is options.settings and service.app is options.app
    assert {child.name for child in service} >= {"static", "ajax", "ws"}


def test_make_service_in_single_port_mode_has_one_site():
    service = makeService(parsed("--listen", "tcp:0:interface=127.0.0.1"))
    names = {child.name for child in service if child.name in ("static", "ajax", "ws", "single")}
    assert names == {"single"}


def test_the_plugin_is_found_and_loads_lazily():
    from twisted.plugin import getPlugins
    from twisted.application.service import IServiceMaker
    makers = {maker.tapname: maker for maker in getPlugins(IServiceMaker)}
    assert makers["appserver"].module == "appserver.tap"
    assert isinstance(makers["appserver"].options(), usage.Options)


def test_a_bad_redis_url_is_one_usage_line_without_its_passwords():
    # Under twistd, a URL refused only in makeService was a traceback.
    message = usage_error("--backplane", "redis+sentinel://:hunter2@s1:x/m/0?sentinel_password=s3cret")
    assert message.startswith("--backplane 'redis+sentinel://:****@s1:x/m/0?sentinel_password=****': bad Sentinel port")
    assert "\n" not in message and "hunter2" not in message and "s3cret" not in message
