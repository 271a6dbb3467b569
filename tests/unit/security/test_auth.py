"""app/security/auth.py: API keys, scopes, key store, header parsing, path classes, CLI."""

from __future__ import annotations

import hashlib
import hmac
import io
import json
from typing import Any

import pytest
from pydantic import ValidationError

from app.security import auth
from app.security.auth import (
    ANONYMOUS,
    WWW_AUTHENTICATE,
    ApiKey,
    Authenticator,
    AuthSettings,
    KeyStore,
    Principal,
    generate_key,
    hash_key,
    main,
    presented_key,
    www_authenticate,
)
from app.security.paths import PUBLIC_PATHS, classify
from app.serving.errors import Forbidden, ModellaneError, Unauthorized

PREDICT_PLAIN = "ml_predict-secret-0123456789"
ADMIN_PLAIN = "ml_admin-secret-9876543210"
LIMITED_PLAIN = "ml_limited-secret-abcdef"
UNKNOWN_PLAIN = "ml_nobody-has-this-one"


def key(name: str, plain: str, scopes: list[str], **limits: Any) -> ApiKey:
    return ApiKey.model_validate(
        {"name": name, "sha256": hash_key(plain), "scopes": scopes, **limits}
    )


def settings(**overrides: Any) -> AuthSettings:
    values: dict[str, Any] = {
        "predict_requires_key": True,
        "keys": [
            key("app", PREDICT_PLAIN, ["predict"]),
            key("ops", ADMIN_PLAIN, ["admin"]),
            key("batch", LIMITED_PLAIN, ["predict"], rate_per_s=2.5),
        ],
    }
    values.update(overrides)
    return AuthSettings.model_validate(values)


def authenticator(**overrides: Any) -> Authenticator:
    cfg = settings(**overrides)
    return Authenticator(cfg, KeyStore.from_settings(cfg, environ={}))


def bearer(plain: str) -> dict[str, str]:
    return {"authorization": f"Bearer {plain}"}


def assert_no_secret(exc: ModellaneError, *secrets: str) -> None:
    rendered = [str(exc), repr(exc), json.dumps(exc.body()), exc.message]
    for secret in secrets:
        for text in rendered:
            assert secret not in text
            assert hash_key(secret) not in text


# -- hashing and key generation --------------------------------------------------------


def test_hash_key_is_sha256_hex_of_utf8() -> None:
    assert hash_key("ml_x") == hashlib.sha256(b"ml_x").hexdigest()
    assert hash_key("ключ") == hashlib.sha256("ключ".encode()).hexdigest()


def test_generate_key_is_prefixed_random_and_urlsafe() -> None:
    keys = {generate_key() for _ in range(50)}
    assert len(keys) == 50
    for plain in keys:
        assert plain.startswith("ml_")
        assert len(plain) == 3 + 43
        assert all(c.isalnum() or c in "-_" for c in plain[3:])


# -- ApiKey ----------------------------------------------------------------------------


def test_api_key_accepts_a_valid_entry() -> None:
    k = key("team.a-1_x", PREDICT_PLAIN, ["predict"], rate_per_s=5, burst=10)
    assert k.scopes == ["predict"]
    assert (k.rate_per_s, k.burst) == (5.0, 10)


@pytest.mark.parametrize("name", ["", "-lead", "has space", "a" * 65, "ünicode", "a/b"])
def test_api_key_rejects_bad_names(name: str) -> None:
    with pytest.raises(ValidationError):
        key(name, PREDICT_PLAIN, ["predict"])


@pytest.mark.parametrize("digest", ["", "ab" * 31, "AB" * 32, "g" * 64, "a" * 65])
def test_api_key_rejects_bad_hashes(digest: str) -> None:
    with pytest.raises(ValidationError, match="64 lowercase hex"):
        ApiKey(name="k", sha256=digest, scopes=["predict"])


def test_a_plain_key_in_sha256_is_not_echoed_by_the_validation_error() -> None:
    with pytest.raises(ValidationError) as info:
        ApiKey(name="k", sha256=PREDICT_PLAIN, scopes=["predict"])
    assert PREDICT_PLAIN not in str(info.value)
    with pytest.raises(ValidationError) as info:
        AuthSettings.model_validate({"keys": [{"name": "k", "sha256": PREDICT_PLAIN}]})
    assert PREDICT_PLAIN not in str(info.value)


@pytest.mark.parametrize(
    "fields",
    [
        {"scopes": []},
        {"scopes": ["root"]},
        {"rate_per_s": 0},
        {"rate_per_s": -1},
        {"rate_per_s": 1, "burst": 0},
        {"burst": 5},  # a burst needs a rate
        {"extra": 1},
    ],
)
def test_api_key_rejects_bad_fields(fields: dict[str, Any]) -> None:
    values: dict[str, Any] = {"name": "k", "sha256": hash_key("x"), "scopes": ["predict"]}
    values.update(fields)
    with pytest.raises(ValidationError):
        ApiKey.model_validate(values)


def test_api_key_repr_holds_no_hash() -> None:
    k = key("app", PREDICT_PLAIN, ["predict"])
    assert hash_key(PREDICT_PLAIN) not in repr(k)
    assert hash_key(PREDICT_PLAIN) not in str(k)


def test_scopes_admin_may_also_predict() -> None:
    predict = key("p", "a", ["predict"])
    admin = key("a", "b", ["admin"])
    both = key("b", "c", ["predict", "admin"])
    assert predict.allows("predict") and not predict.allows("admin")
    assert admin.allows("predict") and admin.allows("admin")
    assert both.allows("predict") and both.allows("admin")


# -- AuthSettings ----------------------------------------------------------------------


def test_auth_settings_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(auth.ENV_PREDICT_AUTH, raising=False)
    cfg = AuthSettings()
    assert cfg.predict_requires_key is True
    assert cfg.keys == []
    assert cfg.keys_env == "MODELLANE_API_KEYS"
    assert cfg.default_rate_per_s is None and cfg.default_burst is None


@pytest.mark.parametrize(
    ("value", "required"),
    [
        ("off", False),
        ("OFF", False),
        ("false", False),
        (" False ", False),
        ("0", False),
        ("on", True),
        ("true", True),
        ("1", True),
        ("", True),
        ("nope", True),
    ],
)
def test_predict_requires_key_default_comes_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, value: str, required: bool
) -> None:
    monkeypatch.setenv(auth.ENV_PREDICT_AUTH, value)
    assert AuthSettings().predict_requires_key is required
    # An explicit setting wins over the environment.
    assert AuthSettings(predict_requires_key=not required).predict_requires_key is not required


def test_every_auth_setting_is_described() -> None:
    for model in (AuthSettings, ApiKey):
        for name, info in model.model_fields.items():
            assert info.description, f"{model.__name__}.{name} has no description"


def test_auth_settings_reject_duplicate_names_and_hashes() -> None:
    with pytest.raises(ValidationError, match="'app' appears twice"):
        AuthSettings(keys=[key("app", "a", ["predict"]), key("app", "b", ["admin"])])
    with pytest.raises(ValidationError, match="same hash"):
        AuthSettings(keys=[key("one", "a", ["predict"]), key("two", "a", ["admin"])])


def test_auth_settings_reject_burst_without_rate_and_unknown_fields() -> None:
    with pytest.raises(ValidationError, match="default_burst needs default_rate_per_s"):
        AuthSettings(default_burst=5)
    with pytest.raises(ValidationError):
        AuthSettings.model_validate({"keyz": []})
    with pytest.raises(ValidationError):
        AuthSettings(keys_env="NOT A NAME")


def test_limit_resolution() -> None:
    own = key("own", "a", ["predict"], rate_per_s=2.5)
    own_burst = key("own_burst", "b", ["predict"], rate_per_s=2.5, burst=7)
    slow = key("slow", "c", ["predict"], rate_per_s=0.1)
    bare = key("bare", "d", ["predict"])
    unlimited = AuthSettings()
    assert unlimited.limit_for(bare) == (None, None)
    assert unlimited.limit_for(own) == (2.5, 3)  # burst = ceil(rate)
    assert unlimited.limit_for(own_burst) == (2.5, 7)
    assert unlimited.limit_for(slow) == (0.1, 1)  # at least 1
    with_rate = AuthSettings(default_rate_per_s=10)
    assert with_rate.limit_for(bare) == (10, 10)
    assert with_rate.limit_for(own) == (2.5, 3)  # the key's own limit wins
    with_both = AuthSettings(default_rate_per_s=10, default_burst=40)
    assert with_both.limit_for(bare) == (10, 40)


# -- KeyStore --------------------------------------------------------------------------


def test_key_store_authenticates_known_keys_only() -> None:
    store = KeyStore.from_settings(settings(), environ={})
    assert len(store) == 3
    found = store.authenticate(PREDICT_PLAIN)
    assert found is not None and found.name == "app"
    found = store.authenticate(ADMIN_PLAIN)
    assert found is not None and found.name == "ops"
    assert store.authenticate(UNKNOWN_PLAIN) is None
    assert store.authenticate(hash_key(PREDICT_PLAIN)) is None  # the hash is not the key
    assert store.authenticate("") is None
    assert KeyStore().authenticate(PREDICT_PLAIN) is None


@pytest.mark.parametrize("presented", [PREDICT_PLAIN, LIMITED_PLAIN, UNKNOWN_PLAIN])
def test_authenticate_compares_with_every_stored_hash(
    monkeypatch: pytest.MonkeyPatch, presented: str
) -> None:
    store = KeyStore.from_settings(settings(), environ={})
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)
    store.authenticate(presented)
    # No early exit, whether the first, the last or no key matches.
    assert len(calls) == len(store) == 3
    assert {b for _, b in calls} == {bytes.fromhex(k.sha256) for k in store.keys}


def test_key_store_reads_more_keys_from_the_environment() -> None:
    env_key = key("ci", "ml_ci-secret", ["predict"], rate_per_s=1)
    environ = {"MODELLANE_API_KEYS": json.dumps([env_key.model_dump()])}
    store = KeyStore.from_settings(settings(), environ=environ)
    assert [k.name for k in store.keys] == ["app", "ops", "batch", "ci"]
    found = store.authenticate("ml_ci-secret")
    assert found is not None and found.rate_per_s == 1


def test_key_store_reads_the_variable_the_settings_name() -> None:
    env_key = key("ci", "ml_ci-secret", ["predict"])
    environ = {
        "OTHER_KEYS": json.dumps([env_key.model_dump()]),
        "MODELLANE_API_KEYS": "not even json",
    }
    store = KeyStore.from_settings(settings(keys_env="OTHER_KEYS"), environ=environ)
    assert store.authenticate("ml_ci-secret") is not None


@pytest.mark.parametrize("raw", ["", "   ", "[]"])
def test_empty_environment_variable_adds_no_keys(raw: str) -> None:
    store = KeyStore.from_settings(settings(), environ={"MODELLANE_API_KEYS": raw})
    assert len(store) == 3


@pytest.mark.parametrize(
    "raw",
    [
        f"{PREDICT_PLAIN}",  # not JSON at all: a key pasted in the wrong place
        f'["{PREDICT_PLAIN}"]',  # a list, but of strings
        f'{{"name": "x", "sha256": "{PREDICT_PLAIN}", "scopes": ["predict"]}}',  # not a list
        f'[{{"name": "x", "sha256": "{PREDICT_PLAIN}", "scopes": ["predict"]}}]',
        f'[{{"name": "x", "sha256": "{"a" * 64}", "scopes": ["predict"], "{PREDICT_PLAIN}": 1}}]',
        f'[{{"name": "x", "sha256": "{"a" * 64}", "scopes": ["{PREDICT_PLAIN}"]}}]',
    ],
)
def test_malformed_environment_variable_is_named_but_never_echoed(raw: str) -> None:
    with pytest.raises(ValueError, match=r"\$MODELLANE_API_KEYS") as info:
        KeyStore.from_settings(settings(), environ={"MODELLANE_API_KEYS": raw})
    message = str(info.value)
    assert PREDICT_PLAIN not in message
    assert "a" * 64 not in message
    # Nothing chained either: a traceback would print the cause.
    exc = info.value
    assert exc.__cause__ is None
    assert exc.__context__ is None or exc.__suppress_context__


def test_environment_key_named_like_a_configured_key_is_an_error() -> None:
    env_key = key("app", "ml_other-secret", ["admin"])
    environ = {"MODELLANE_API_KEYS": json.dumps([env_key.model_dump()])}
    with pytest.raises(ValueError, match="'app' in \\$MODELLANE_API_KEYS is also configured"):
        KeyStore.from_settings(settings(), environ=environ)


def test_duplicates_within_the_environment_variable_are_an_error() -> None:
    twice = [key("ci", "a", ["predict"]).model_dump(), key("ci", "b", ["predict"]).model_dump()]
    with pytest.raises(ValueError, match="'ci' appears twice in \\$MODELLANE_API_KEYS"):
        KeyStore.from_settings(settings(), environ={"MODELLANE_API_KEYS": json.dumps(twice)})


def test_an_environment_key_with_a_configured_hash_is_an_error() -> None:
    env_key = key("copy", PREDICT_PLAIN, ["admin"])
    environ = {"MODELLANE_API_KEYS": json.dumps([env_key.model_dump()])}
    with pytest.raises(ValueError, match="same hash") as info:
        KeyStore.from_settings(settings(), environ=environ)
    assert hash_key(PREDICT_PLAIN) not in str(info.value)


# -- presented_key ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"authorization": "Bearer abc"}, "abc"),
        ({"authorization": "bearer abc"}, "abc"),
        ({"authorization": "BEARER   abc  "}, "abc"),
        ({"x-api-key": "abc"}, "abc"),
        ({"x-api-key": "  abc "}, "abc"),
        ({"authorization": "Bearer abc", "x-api-key": "def"}, "abc"),
        ({"authorization": "Basic dXNlcjpwdw==", "x-api-key": "def"}, "def"),
        ({"authorization": "Basic dXNlcjpwdw=="}, None),
        ({"authorization": "Bearer"}, None),
        ({"authorization": "Bearer   "}, None),
        ({"authorization": "Bearer ", "x-api-key": "def"}, "def"),
        ({"authorization": "abc"}, None),
        ({"x-api-key": ""}, None),
        ({"x-api-key": "   "}, None),
        ({}, None),
    ],
)
def test_presented_key(headers: dict[str, str], expected: str | None) -> None:
    assert presented_key(headers) == expected


# -- classify --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/healthz",
        "/readyz",
        "/v2/health/live",
        "/v2/health/ready",
        "/docs",
        "/docs/oauth2-redirect",
        "/redoc",
        "/openapi.json",
    ],
)
def test_classify_public(path: str) -> None:
    assert classify(path) == "public"


@pytest.mark.parametrize(
    "path", ["/admin", "/admin/", "/admin/models", "/admin/models/iris/traffic"]
)
def test_classify_admin(path: str) -> None:
    assert classify(path) == "admin"


@pytest.mark.parametrize(
    ("path", "needed"),
    [
        ("/admin/models/iris/versions/3/approve", "approve"),
        ("/admin/models/iris/versions/3", "admin"),
        ("/admin/models/iris/versions/3/approve/x", "admin"),
    ],
)
def test_classify_approve_is_one_path_only(path: str, needed: str) -> None:
    assert classify(path) == needed


def test_an_approve_key_approves_and_reaches_nothing_else() -> None:
    approver = "ml_approver-secret-0123456789"
    auth = authenticator(
        keys=[key("lead", approver, ["approve"]), key("ops", ADMIN_PLAIN, ["admin"])]
    )
    bearer = {"authorization": f"Bearer {approver}"}
    path = "/admin/models/iris/versions/3/approve"
    assert auth.check(path, bearer).key_name == "lead"
    assert auth.check(path, {"authorization": f"Bearer {ADMIN_PLAIN}"}).key_name == "ops"
    for elsewhere in ("/admin/models/iris/rollback", "/admin/events", "/v1/models/iris/predict"):
        with pytest.raises(Forbidden):
            auth.check(elsewhere, bearer)
    with pytest.raises(Unauthorized, match="an approve \\(or admin\\) API key"):
        auth.check(path, {})


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/predict/iris",
        "/v2/models/iris/infer",
        "/v1/chat/completions",
        "/administrator",  # only /admin and what is under it
        "/adminx/models",
        "/healthz/",  # exact public paths only
        "/healthz/x",
        "/docs/other",
        "/v2/health",
        "/metrics",
    ],
)
def test_classify_predict(path: str) -> None:
    assert classify(path) == "predict"


# -- Authenticator ---------------------------------------------------------------------


def test_www_authenticate_header_value() -> None:
    assert WWW_AUTHENTICATE == www_authenticate == 'Bearer realm="modellane"'


@pytest.mark.parametrize("path", sorted(PUBLIC_PATHS))
@pytest.mark.parametrize(
    "headers", [{}, bearer(UNKNOWN_PLAIN), bearer(PREDICT_PLAIN), {"x-api-key": "x"}]
)
def test_public_paths_are_anonymous_whatever_the_key(path: str, headers: dict[str, str]) -> None:
    assert authenticator().check(path, headers) == ANONYMOUS


def test_valid_predict_key_on_a_predict_path() -> None:
    principal = authenticator().check("/predict/iris", bearer(PREDICT_PLAIN))
    assert principal == Principal(key_name="app", scopes=("predict",))
    assert not principal.anonymous and not principal.limited


def test_x_api_key_header_works_too() -> None:
    principal = authenticator().check("/predict/iris", {"x-api-key": PREDICT_PLAIN})
    assert principal.key_name == "app"


def test_principal_carries_the_resolved_limit() -> None:
    auth_ = authenticator(default_rate_per_s=10, default_burst=30)
    limited = auth_.check("/predict/iris", bearer(LIMITED_PLAIN))
    assert (limited.key_name, limited.rate_per_s, limited.burst) == ("batch", 2.5, 3)
    assert limited.limited
    default = auth_.check("/predict/iris", bearer(PREDICT_PLAIN))
    assert (default.rate_per_s, default.burst) == (10, 30)


def test_admin_key_may_call_admin_and_predict_paths() -> None:
    auth_ = authenticator()
    assert auth_.check("/admin/models", bearer(ADMIN_PLAIN)).key_name == "ops"
    assert auth_.check("/admin", {"x-api-key": ADMIN_PLAIN}).key_name == "ops"
    assert auth_.check("/v2/models/iris/infer", bearer(ADMIN_PLAIN)).scopes == ("admin",)


def test_predict_key_on_an_admin_path_is_forbidden_naming_key_and_scope() -> None:
    with pytest.raises(Forbidden) as info:
        authenticator().check("/admin/models", bearer(PREDICT_PLAIN))
    exc = info.value
    assert exc.status == 403
    assert "'app'" in exc.message and "'admin'" in exc.message
    assert_no_secret(exc, PREDICT_PLAIN)


@pytest.mark.parametrize("requires", [True, False])
def test_no_key_on_an_admin_path_is_unauthorized_whatever_the_setting(requires: bool) -> None:
    with pytest.raises(Unauthorized) as info:
        authenticator(predict_requires_key=requires).check("/admin/models", {})
    assert info.value.status == 401
    assert "admin API key is required" in info.value.message
    assert "Authorization: Bearer <key>" in info.value.message
    assert "X-API-Key" in info.value.message


def test_no_key_on_a_predict_path_when_required() -> None:
    with pytest.raises(Unauthorized, match="API key is required"):
        authenticator().check("/predict/iris", {})


def test_no_key_on_a_predict_path_when_not_required_is_anonymous_and_unlimited() -> None:
    auth_ = authenticator(predict_requires_key=False, default_rate_per_s=1)
    principal = auth_.check("/predict/iris", {})
    assert principal == ANONYMOUS
    assert principal.anonymous and not principal.limited
    assert principal.rate_per_s is None


@pytest.mark.parametrize("requires", [True, False])
@pytest.mark.parametrize("path", ["/predict/iris", "/admin/models"])
def test_a_wrong_key_is_always_unauthorized(requires: bool, path: str) -> None:
    with pytest.raises(Unauthorized) as info:
        authenticator(predict_requires_key=requires).check(path, bearer(UNKNOWN_PLAIN))
    assert info.value.message == "the API key is not valid"
    assert_no_secret(info.value, UNKNOWN_PLAIN)


def test_a_valid_key_still_works_when_predict_needs_none() -> None:
    auth_ = authenticator(predict_requires_key=False)
    assert auth_.check("/predict/iris", bearer(PREDICT_PLAIN)).key_name == "app"


def test_a_hash_presented_as_key_is_refused_without_echo() -> None:
    digest = hash_key(ADMIN_PLAIN)
    with pytest.raises(Unauthorized) as info:
        authenticator().check("/admin/models", bearer(digest))
    assert digest not in str(info.value) and digest not in repr(info.value)


def test_no_error_ever_holds_a_presented_key_or_hash() -> None:
    auth_ = authenticator()
    cases = [
        ("/admin/models", bearer(PREDICT_PLAIN)),
        ("/admin/models", {"x-api-key": LIMITED_PLAIN}),
        ("/admin/models", bearer(UNKNOWN_PLAIN)),
        ("/predict/iris", bearer(UNKNOWN_PLAIN)),
        ("/predict/iris", {}),
        ("/admin", {}),
    ]
    every_secret = [PREDICT_PLAIN, ADMIN_PLAIN, LIMITED_PLAIN, UNKNOWN_PLAIN]
    for path, headers in cases:
        with pytest.raises(ModellaneError) as info:
            auth_.check(path, headers)
        assert_no_secret(info.value, *every_secret)


def test_authenticator_from_settings_reads_the_environment() -> None:
    env_key = key("ci", "ml_ci-secret", ["admin"])
    cfg = settings()
    auth_ = Authenticator.from_settings(
        cfg, environ={"MODELLANE_API_KEYS": json.dumps([env_key.model_dump()])}
    )
    assert auth_.check("/admin/x", bearer("ml_ci-secret")).key_name == "ci"


# -- CLI -------------------------------------------------------------------------------


def test_cli_new_prints_the_key_then_its_entry(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["new", "--name", "ci", "--scopes", "predict,admin", "--rate-per-s", "5"]) == 0
    out = capsys.readouterr()
    plain, entry_line = out.out.splitlines()
    assert plain.startswith("ml_")
    entry = json.loads(entry_line)
    assert entry == {
        "name": "ci",
        "sha256": hash_key(plain),
        "scopes": ["predict", "admin"],
        "rate_per_s": 5.0,
    }
    assert "not shown again" in out.err
    # The entry works as a configured key and as the environment variable's content.
    cfg = AuthSettings(keys=[ApiKey.model_validate(entry)])
    found = KeyStore.from_settings(cfg, environ={}).authenticate(plain)
    assert found is not None and found.name == "ci"
    store = KeyStore.from_settings(AuthSettings(), environ={auth.ENV_API_KEYS: f"[{entry_line}]"})
    assert store.authenticate(plain) is not None


def test_cli_new_with_burst_and_default_scope(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["new", "--name", "ci", "--rate-per-s", "1", "--burst", "4"]) == 0
    entry = json.loads(capsys.readouterr().out.splitlines()[1])
    assert entry["scopes"] == ["predict"]
    assert (entry["rate_per_s"], entry["burst"]) == (1.0, 4)


def test_cli_new_makes_a_different_key_each_time(capsys: pytest.CaptureFixture[str]) -> None:
    main(["new", "--name", "a"])
    first = capsys.readouterr().out.splitlines()[0]
    main(["new", "--name", "a"])
    assert capsys.readouterr().out.splitlines()[0] != first


@pytest.mark.parametrize(
    "argv",
    [
        ["new", "--name", "bad name"],
        ["new", "--name", "ci", "--scopes", "root"],
        ["new", "--name", "ci", "--scopes", ""],
        ["new", "--name", "ci", "--burst", "3"],
        ["new", "--name", "ci", "--rate-per-s", "0"],
        ["new"],
        [],
    ],
)
def test_cli_new_rejects_bad_arguments(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    out = capsys.readouterr()
    assert out.out == ""  # no key printed for an entry that would not validate


def test_cli_hash_reads_stdin(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(PREDICT_PLAIN + "\n"))
    assert main(["hash"]) == 0
    assert capsys.readouterr().out == hash_key(PREDICT_PLAIN) + "\n"


def test_cli_hash_without_input_fails(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert main(["hash"]) == 1
    assert "no key" in capsys.readouterr().err
