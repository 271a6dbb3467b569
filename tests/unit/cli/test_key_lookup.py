"""Where the ``modellane`` CLI finds its admin key (and its gateway's URL), in order:
``--key`` / ``$MODELLANE_API_KEY``, ``./.run/admin.key``, the checkout's ``.run/admin.key``
(where scripts/up.sh wrote it), then ``$XDG_CONFIG_HOME/modellane/config.toml``.

Pure logic over ``tmp_path``: the current directory, the checkout, ``HOME`` and
``XDG_CONFIG_HOME`` are all temporary; no request leaves the process.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from app.cli import client
from app.cli import main as cli_mod
from app.cli.client import (
    EXIT_REFUSED,
    EXIT_USAGE,
    CliError,
    FoundKey,
    Gateway,
    config_file,
    find_key,
    gateway_for,
    read_config,
)

CWD_KEY = "ml_key_of_the_current_directory"
CHECKOUT_KEY = "ml_key_of_the_checkout"
CONFIG_KEY = "ml_key_of_the_config_file"


@pytest.fixture
def where(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """A current directory, a checkout and a config folder, all empty, all temporary."""
    places = {name: tmp_path / name for name in ("cwd", "checkout", "home", "xdg")}
    for place in places.values():
        place.mkdir()
    monkeypatch.chdir(places["cwd"])
    monkeypatch.setattr(client, "CHECKOUT", places["checkout"])
    monkeypatch.setenv("HOME", str(places["home"]))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(places["xdg"]))
    for name in ("MODELLANE_API_KEY", "MODELLANE_GATEWAY"):
        monkeypatch.delenv(name, raising=False)
    places["config"] = places["xdg"] / "modellane" / "config.toml"
    return places


def key_file(root: Path, key: str) -> Path:
    path = root / ".run" / "admin.key"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(key + "\n")
    return path


def config(where: dict[str, Path], text: str) -> Path:
    path = where["config"]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def refused(message: str) -> CliError:
    """The :class:`CliError` ``find_key`` raises, checked to be a usage error."""
    with pytest.raises(CliError) as caught:
        find_key(None)
    assert caught.value.exit_code == EXIT_USAGE
    assert message in caught.value.message, caught.value.message
    return caught.value


# -- each source, in order -------------------------------------------------------------------


def test_an_explicit_key_wins_over_every_file(where: dict[str, Path]) -> None:
    key_file(where["cwd"], CWD_KEY)
    key_file(where["checkout"], CHECKOUT_KEY)
    config(where, f'admin_key = "{CONFIG_KEY}"\n')
    found = find_key("  explicit \n")
    assert found == FoundKey("explicit")
    assert found.source is None  # given, so nothing to say


def test_the_current_directory_comes_before_the_checkout(where: dict[str, Path]) -> None:
    here = key_file(where["cwd"], CWD_KEY)
    key_file(where["checkout"], CHECKOUT_KEY)
    found = find_key(None)
    assert (found.key, found.source) == (CWD_KEY, str(here))


def test_the_checkout_from_any_directory(where: dict[str, Path]) -> None:
    up = key_file(where["checkout"], CHECKOUT_KEY)
    found = find_key(None)
    assert (found.key, found.source) == (CHECKOUT_KEY, str(up))
    assert found.looked == (
        "--key", "$MODELLANE_API_KEY", str(where["cwd"] / ".run" / "admin.key"),
        str(where["config"]), str(up),
    )  # fmt: skip


def test_the_users_config_comes_before_the_checkouts_key(where: dict[str, Path]) -> None:
    """A config naming another gateway must never be sent the local development key."""
    key_file(where["checkout"], CHECKOUT_KEY)
    config(where, f'admin_key = "{CONFIG_KEY}"\ngateway = "http://gw.example:8000"\n')
    assert find_key(None).key == CONFIG_KEY


def test_the_checkout_is_looked_at_once_from_its_own_root(
    where: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(where["checkout"])
    found = find_key(None)
    assert found.key is None
    assert found.looked.count(str(where["checkout"] / ".run" / "admin.key")) == 1


def test_the_checkout_is_the_parent_of_the_app_package() -> None:
    import app

    assert Path(app.__file__).resolve().parent.parent == Path(client.__file__).parents[2]
    assert (client.CHECKOUT / "scripts" / "up.sh").is_file()


def test_admin_key_in_the_config_file(where: dict[str, Path]) -> None:
    path = config(where, f'admin_key = "{CONFIG_KEY}"\n')
    found = find_key(None)
    assert (found.key, found.source) == (CONFIG_KEY, f"{path} (admin_key)")


def test_admin_key_file_in_the_config_file(where: dict[str, Path]) -> None:
    stored = where["home"] / "keys" / "admin.key"
    stored.parent.mkdir()
    stored.write_text(CONFIG_KEY)
    path = config(where, 'admin_key_file = "~/keys/admin.key"\n')
    found = find_key(None)
    assert (found.key, found.source) == (CONFIG_KEY, f"{stored} (admin_key_file in {path})")
    (path.parent / "relative.key").write_text(CHECKOUT_KEY)
    config(where, 'admin_key_file = "relative.key"\n')  # relative to config.toml's folder
    assert find_key(None).key == CHECKOUT_KEY


def test_the_config_file_is_under_xdg_config_home_else_home(where: dict[str, Path]) -> None:
    assert config_file() == where["xdg"] / "modellane" / "config.toml"
    home = {"HOME": str(where["home"])}
    default = where["home"] / ".config" / "modellane" / "config.toml"
    assert config_file(home) == default
    assert config_file({**home, "XDG_CONFIG_HOME": ""}) == default
    assert config_file({**home, "XDG_CONFIG_HOME": "relative/dir"}) == default  # XDG: ignored


def test_nothing_found_lists_every_place_looked(where: dict[str, Path]) -> None:
    config(where, 'gateway = "http://gw.example:8000"\n')  # a config without a key
    found = find_key(None)
    assert found.key is None and found.source is None
    places = [
        "--key", "$MODELLANE_API_KEY", str(where["cwd"] / ".run" / "admin.key"),
        str(where["config"]), str(where["checkout"] / ".run" / "admin.key"),
    ]  # fmt: skip
    assert list(found.looked) == places
    assert all(place in found.hint for place in places)


# -- files that are there but cannot be used: errors naming them, never "no key" -------------


def test_an_empty_key_file_is_an_error(where: dict[str, Path]) -> None:
    path = key_file(where["cwd"], "  ")
    key_file(where["checkout"], CHECKOUT_KEY)  # not taken instead
    refused(f"the admin key file {path} is empty")


def test_an_unreadable_key_file_is_an_error(where: dict[str, Path]) -> None:
    path = where["checkout"] / ".run" / "admin.key"
    path.mkdir(parents=True)  # there, but not a file
    error = refused(f"cannot read the admin key file {path}")
    assert "--key" in (error.hint or "")


def test_a_key_file_that_is_not_text_is_an_error(where: dict[str, Path]) -> None:
    path = key_file(where["cwd"], "x")
    path.write_bytes(b"\xff\xfe\x00key")
    refused(f"the admin key file {path} is not UTF-8 text")


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("admin_key = ", "is not valid TOML"),
        ("admin_key = 42\n", "admin_key: Input should be a valid string"),
        ('gateway = ["http://a"]\n', "gateway: Input should be a valid string"),
        ('admin-key = "k"\n', "admin-key: Extra inputs are not permitted"),
        ('admin_key = "k"\nadmin_key_file = "f"\n', "not both"),
        ('admin_key = "  "\n', "admin_key in the config file"),
        ('admin_key_file = "missing.key"\n', "names"),
    ],
)
def test_a_bad_config_file_is_an_error_naming_it(
    where: dict[str, Path], text: str, said: str
) -> None:
    path = config(where, text)
    error = refused(said)
    assert str(path) in error.message


def test_read_config_tells_no_file_from_an_empty_one(tmp_path: Path) -> None:
    assert read_config(tmp_path / "none.toml") is None
    (tmp_path / "empty.toml").write_text("")
    empty = read_config(tmp_path / "empty.toml")
    assert empty is not None and empty.admin_key is None and empty.gateway is None


# -- gateway_for: what it says, and the gateway's URL ----------------------------------------


def said_by(url: str | None, key: str | None) -> tuple[Gateway, list[str]]:
    lines: list[str] = []
    return gateway_for(url, key, say=lines.append), lines


def test_it_says_which_key_file_it_used_never_the_key(where: dict[str, Path]) -> None:
    up = key_file(where["checkout"], CHECKOUT_KEY)
    gateway, lines = said_by("http://127.0.0.1:9", None)
    assert (gateway.url, gateway.key) == ("http://127.0.0.1:9", CHECKOUT_KEY)
    assert lines == [f"using the admin key from {up}"]
    assert CHECKOUT_KEY not in repr(gateway)


def test_an_explicit_key_is_not_announced(where: dict[str, Path]) -> None:
    key_file(where["cwd"], CWD_KEY)
    gateway, lines = said_by("http://127.0.0.1:9", "explicit")
    assert gateway.key == "explicit" and lines == []


def test_the_gateway_from_the_config_file_unless_given(where: dict[str, Path]) -> None:
    path = config(where, f'admin_key = "{CONFIG_KEY}"\ngateway = "http://gw.example:8000"\n')
    gateway, lines = said_by("", None)
    assert (gateway.url, gateway.key) == ("http://gw.example:8000", CONFIG_KEY)
    assert lines == [
        f"using the admin key from {path} (admin_key)",
        f"using the gateway http://gw.example:8000 from {path}",
    ]
    assert said_by("http://given:1", None)[0].url == "http://given:1"
    path.unlink()
    gateway, lines = said_by("", "k")
    assert gateway.url == client.DEFAULT_GATEWAY and lines == []


def test_a_bad_config_file_fails_even_with_a_key_when_it_gives_the_gateway(
    where: dict[str, Path],
) -> None:
    config(where, "gateway = \n")
    with pytest.raises(CliError, match="is not valid TOML"):
        gateway_for("", "explicit")
    assert gateway_for("http://given:1", "explicit").url == "http://given:1"


def refusing(gateway: Gateway, status: int) -> CliError:
    """The error of a request the gateway refuses with ``status``."""
    answer = httpx.Response(status, json={"error": {"message": "no", "code": "unauthorized"}})
    gateway._client = httpx.Client(
        base_url=gateway.url, transport=httpx.MockTransport(lambda _: answer)
    )
    with pytest.raises(CliError) as caught:
        gateway.models()
    assert caught.value.exit_code == EXIT_REFUSED
    return caught.value


def test_a_refused_key_names_its_file_and_a_missing_one_every_place(
    where: dict[str, Path],
) -> None:
    gateway, _ = said_by("http://127.0.0.1:9", None)
    hint = refusing(gateway, 401).hint or ""
    assert str(where["checkout"] / ".run" / "admin.key") in hint and str(where["config"]) in hint
    assert "--key" in hint and "MODELLANE_API_KEY" in hint
    up = key_file(where["checkout"], CHECKOUT_KEY)
    gateway, _ = said_by("http://127.0.0.1:9", None)
    hint = refusing(gateway, 403).hint or ""
    assert f"the admin key from {up} was refused" in hint and CHECKOUT_KEY not in hint


# -- through the CLI -------------------------------------------------------------------------


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str | None, str]]:
    """Every request the CLI makes: (gateway URL, key, path); none leaves the process."""
    made: list[tuple[str, str | None, str]] = []

    def request(self: Gateway, method: str, path: str, **kwargs: Any) -> Any:
        made.append((self.url, self.key, path))
        return {"rollout": None}

    monkeypatch.setattr(Gateway, "request", request)
    return made


def test_the_cli_uses_the_checkout_key_from_anywhere_and_says_so_on_stderr(
    where: dict[str, Path], calls: list[tuple[str, str | None, str]]
) -> None:
    up = key_file(where["checkout"], CHECKOUT_KEY)
    result = CliRunner().invoke(cli_mod.cli, ["rollout", "pause", "iris", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["ok"] is True  # stdout: the JSON alone
    assert result.stderr == f"using the admin key from {up}\n"
    assert CHECKOUT_KEY not in result.output
    assert calls == [(client.DEFAULT_GATEWAY, CHECKOUT_KEY, "/admin/models/iris/rollout/pause")]


def test_the_cli_key_from_the_environment_is_not_announced(
    where: dict[str, Path],
    calls: list[tuple[str, str | None, str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key_file(where["checkout"], CHECKOUT_KEY)
    monkeypatch.setenv("MODELLANE_API_KEY", "from_env")
    result = CliRunner().invoke(cli_mod.cli, ["rollout", "pause", "iris", "--json"])
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    assert calls[0][1] == "from_env"
    result = CliRunner().invoke(cli_mod.cli, ["--key", "from_flag", "rollout", "pause", "iris"])
    assert result.exit_code == 0 and calls[1][1] == "from_flag"


def test_the_cli_reports_a_bad_config_file_with_exit_2(
    where: dict[str, Path], calls: list[tuple[str, str | None, str]]
) -> None:
    path = config(where, "admin_key = 42\n")
    result = CliRunner().invoke(cli_mod.cli, ["rollout", "pause", "iris", "--json"])
    assert result.exit_code == EXIT_USAGE
    assert f"error: the config file {path} is not a modellane config" in result.stderr
    assert result.stdout == "" and calls == []


def test_commands_without_the_gateway_and_help_do_not_look(
    where: dict[str, Path], calls: list[tuple[str, str | None, str]]
) -> None:
    config(where, "not toml at all")
    for args in (["rollout", "pause", "--help"], ["--help"]):
        result = CliRunner().invoke(cli_mod.cli, args)
        assert result.exit_code == 0, result.output
        assert "config.toml" not in result.stderr
    text = " ".join(CliRunner().invoke(cli_mod.cli, ["--help"]).stdout.split())
    for place in (".run/admin.key", "scripts/up.sh", "modellane/config.toml", "admin_key_file"):
        assert place in text, place
