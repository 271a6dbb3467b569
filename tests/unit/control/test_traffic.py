"""app/control/traffic.py: which version a request goes to; whether it is mirrored to the shadow."""

from __future__ import annotations

import hashlib
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from app import constants
from app.control.routing import ModelRoutes, Target
from app.control.traffic import choose_target, mirror_to_shadow, sticky_bucket
from app.serving.errors import ModelUnavailable

ROOT = Path(__file__).resolve().parents[3]


def target(version: str, role: str, model: str = "iris") -> Target:
    return Target(
        model=model,
        version=version,
        role=role,
        app_name=f"{model}-v{version}",
        source=f"alias:{role}",
        loaded_at=1_700_000_000.0,
    )


CHAMPION = target("2", constants.ROLE_CHAMPION)
CHALLENGER = target("3", constants.ROLE_CHALLENGER)
SHADOW = target("4", constants.ROLE_SHADOW)


def routes(**kwargs: object) -> ModelRoutes:
    data: dict[str, object] = {"name": "iris", "champion": CHAMPION}
    data.update(kwargs)
    return ModelRoutes.model_validate(data)


def within_3_sd(hits: int, n: int, p: float) -> bool:
    sd = math.sqrt(n * p * (1 - p))
    return abs(hits - n * p) <= 3 * sd


class NoRandom(random.Random):
    """An rng that fails the test if it is consulted."""

    def random(self) -> float:
        raise AssertionError("rng consulted")


# --- sticky_bucket --------------------------------------------------------------------------


def expected_bucket(model: str, key: str) -> float:
    digest = hashlib.sha256(model.encode() + b"\x00" + key.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * 100.0


@pytest.mark.parametrize(
    ("model", "key"),
    [("iris", "user-1"), ("iris", "user-2"), ("minilm", "user-1"), ("m", ""), ("é", "ключ")],
)
def test_sticky_bucket_is_a_sha256_of_model_and_key(model: str, key: str) -> None:
    assert sticky_bucket(model, key) == expected_bucket(model, key)


def test_sticky_bucket_is_the_same_on_every_call() -> None:
    values = {sticky_bucket("iris", "customer-42") for _ in range(50)}
    assert len(values) == 1


def test_sticky_bucket_does_not_depend_on_the_hash_seed() -> None:
    code = (
        "from app.control.traffic import sticky_bucket; "
        "print(repr(sticky_bucket('iris', 'user-7')))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    assert float(out.stdout) == sticky_bucket("iris", "user-7") == expected_bucket("iris", "user-7")


def test_sticky_bucket_lies_in_0_100() -> None:
    points = [sticky_bucket("iris", f"key-{i}") for i in range(2000)]
    assert all(0.0 <= p < 100.0 for p in points)
    # Spread over the whole range, not bunched: every tenth has some.
    assert {int(p // 10) for p in points} == set(range(10))


def test_different_models_give_different_buckets_for_the_same_key() -> None:
    for key in ("user-1", "user-2", "abc", ""):
        assert sticky_bucket("iris", key) != sticky_bucket("minilm", key)


def test_model_and_key_are_separated() -> None:
    # Without a separator "ab" + "c" and "a" + "bc" would hash alike.
    assert sticky_bucket("ab", "c") != sticky_bucket("a", "bc")


# --- choose_target --------------------------------------------------------------------------


def test_no_champion_is_unavailable() -> None:
    r = routes(champion=None, challenger=CHALLENGER, challenger_weight=50.0)
    with pytest.raises(ModelUnavailable) as info:
        choose_target(r, rng=random.Random(0))
    assert info.value.status == 503
    assert info.value.model == "iris"
    assert "no healthy champion version yet" in info.value.message


def test_no_champion_reports_the_problem() -> None:
    r = routes(champion=None, problem="deploy of iris-v2 failed: OOM")
    with pytest.raises(ModelUnavailable, match="OOM"):
        choose_target(r, routing_key="k")


@pytest.mark.parametrize(
    "r",
    [
        routes(),
        routes(challenger_weight=50.0),  # a weight but no challenger
        routes(challenger=CHALLENGER, challenger_weight=0.0),
        routes(shadow=SHADOW, shadow_fraction=1.0),  # the shadow never answers the client
    ],
    ids=["champion-only", "weight-no-challenger", "weight-0", "shadow"],
)
def test_champion_always_without_a_weighted_challenger(r: ModelRoutes) -> None:
    rng = random.Random(1)
    for i in range(500):
        assert choose_target(r, rng=rng) == CHAMPION
        assert choose_target(r, routing_key=f"key-{i}", rng=rng) == CHAMPION


def test_weight_100_always_goes_to_the_challenger() -> None:
    r = routes(challenger=CHALLENGER, challenger_weight=100.0)
    rng = random.Random(2)
    for i in range(500):
        assert choose_target(r, rng=rng) == CHALLENGER
        assert choose_target(r, routing_key=f"key-{i}", rng=rng) == CHALLENGER


def test_a_routing_key_always_lands_in_the_same_arm() -> None:
    r = routes(challenger=CHALLENGER, challenger_weight=30.0)
    arms_seen = set()
    for key in ("alice", "bob", "carol", "dave", "eve", "frank", "grace", "heidi"):
        chosen = {
            choose_target(r, routing_key=key, rng=random.Random(i)).version for i in range(50)
        }
        assert len(chosen) == 1, key
        arms_seen |= chosen
        expected = CHALLENGER if sticky_bucket("iris", key) < 30.0 else CHAMPION
        assert chosen == {expected.version}
    assert arms_seen == {"2", "3"}  # these keys exercise both arms


def test_a_routing_key_does_not_consult_the_rng() -> None:
    r = routes(challenger=CHALLENGER, challenger_weight=30.0)
    for i in range(100):
        choose_target(r, routing_key=f"key-{i}", rng=NoRandom())


def test_sticky_challenger_share_matches_the_weight() -> None:
    weight = 30.0
    r = routes(challenger=CHALLENGER, challenger_weight=weight)
    n = 2000
    hits = sum(choose_target(r, routing_key=f"user-{i}") == CHALLENGER for i in range(n))
    assert within_3_sd(hits, n, weight / 100), hits


def test_raising_the_weight_only_moves_keys_to_the_challenger() -> None:
    keys = [f"session-{i}" for i in range(1000)]
    low = routes(challenger=CHALLENGER, challenger_weight=10.0)
    high = routes(challenger=CHALLENGER, challenger_weight=40.0)
    at_low = {k for k in keys if choose_target(low, routing_key=k) == CHALLENGER}
    at_high = {k for k in keys if choose_target(high, routing_key=k) == CHALLENGER}
    assert at_low < at_high
    assert within_3_sd(len(at_high), len(keys), 0.4)


@pytest.mark.parametrize("weight", [5.0, 30.0, 50.0, 90.0])
def test_random_challenger_share_matches_the_weight(weight: float) -> None:
    r = routes(challenger=CHALLENGER, challenger_weight=weight)
    rng = random.Random(1234)
    n = 5000
    hits = sum(choose_target(r, rng=rng) == CHALLENGER for _ in range(n))
    assert within_3_sd(hits, n, weight / 100), hits


def test_random_choice_is_reproducible_with_a_seed() -> None:
    r = routes(challenger=CHALLENGER, challenger_weight=50.0)
    rng_a, rng_b = random.Random(77), random.Random(77)
    a = [choose_target(r, rng=rng_a).version for _ in range(200)]
    b = [choose_target(r, rng=rng_b).version for _ in range(200)]
    assert a == b
    assert set(a) == {"2", "3"}


def test_an_empty_routing_key_routes_at_random() -> None:
    r = routes(challenger=CHALLENGER, challenger_weight=50.0)
    rng = random.Random(5)
    chosen = {choose_target(r, routing_key="", rng=rng).version for _ in range(100)}
    assert chosen == {"2", "3"}


FULL = {
    "challenger": CHALLENGER,
    "challenger_weight": 0.0,
    "shadow": SHADOW,
    "shadow_fraction": 0.5,
}


@pytest.mark.parametrize("forced", [CHAMPION, CHALLENGER, SHADOW], ids=lambda t: t.role)
def test_forced_version_is_honoured_with_override(forced: Target) -> None:
    r = routes(**FULL, allow_override=True)
    rng = random.Random(3)
    for i in range(50):
        assert choose_target(r, forced_version=forced.version, rng=rng) == forced
        chosen = choose_target(r, routing_key=f"k{i}", forced_version=forced.version, rng=rng)
        assert chosen == forced


@pytest.mark.parametrize("forced", [CHALLENGER, SHADOW], ids=lambda t: t.role)
def test_forced_version_is_ignored_without_override(forced: Target) -> None:
    r = routes(**FULL, allow_override=False)
    rng = random.Random(3)
    for _ in range(50):
        assert choose_target(r, forced_version=forced.version, rng=rng) == CHAMPION


def test_forced_champion_is_ignored_without_override() -> None:
    r = routes(**{**FULL, "challenger_weight": 100.0}, allow_override=False)
    assert choose_target(r, forced_version="2", rng=random.Random(0)) == CHALLENGER


@pytest.mark.parametrize("forced", ["1", "99", "", "3 "])
def test_forced_version_serving_no_role_falls_back_to_normal_routing(forced: str) -> None:
    champion_only = routes(**FULL, allow_override=True)
    assert choose_target(champion_only, forced_version=forced, rng=random.Random(0)) == CHAMPION
    all_challenger = routes(**{**FULL, "challenger_weight": 100.0}, allow_override=True)
    assert choose_target(all_challenger, forced_version=forced, rng=random.Random(0)) == CHALLENGER


def test_forced_version_of_an_absent_role_falls_back() -> None:
    # Version "3" was the challenger once; now there is none.
    r = routes(allow_override=True)
    assert choose_target(r, forced_version="3", rng=random.Random(0)) == CHAMPION


def test_forced_version_without_override_keeps_the_sticky_arm() -> None:
    r = routes(**{**FULL, "challenger_weight": 30.0}, allow_override=False)
    for i in range(200):
        key = f"user-{i}"
        assert choose_target(r, routing_key=key, forced_version="4") == choose_target(
            r, routing_key=key
        )


def test_forced_version_cannot_bypass_a_missing_champion() -> None:
    r = routes(champion=None, challenger=CHALLENGER, challenger_weight=50.0, allow_override=True)
    with pytest.raises(ModelUnavailable):
        choose_target(r, forced_version="3")


# --- mirror_to_shadow -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "r",
    [
        routes(),
        routes(shadow_fraction=1.0),
        routes(shadow=SHADOW, shadow_fraction=0.0),
    ],
    ids=["no-shadow", "fraction-without-shadow", "fraction-0"],
)
def test_no_mirror_without_shadow_or_fraction(r: ModelRoutes) -> None:
    rng = random.Random(0)
    assert all(mirror_to_shadow(r, rng) is None for _ in range(500))


def test_fraction_1_always_mirrors_without_consulting_the_rng() -> None:
    r = routes(shadow=SHADOW, shadow_fraction=1.0)
    assert all(mirror_to_shadow(r, NoRandom()) == SHADOW for _ in range(500))


@pytest.mark.parametrize("fraction", [0.01, 0.1, 0.5, 0.9])
def test_mirror_share_matches_the_fraction(fraction: float) -> None:
    r = routes(shadow=SHADOW, shadow_fraction=fraction)
    rng = random.Random(2024)
    n = 5000
    results = [mirror_to_shadow(r, rng) for _ in range(n)]
    assert all(result is None or result == SHADOW for result in results)
    hits = sum(result == SHADOW for result in results)
    assert within_3_sd(hits, n, fraction), hits


def test_mirroring_is_reproducible_with_a_seed() -> None:
    r = routes(shadow=SHADOW, shadow_fraction=0.3)
    rng_a, rng_b = random.Random(11), random.Random(11)
    assert [mirror_to_shadow(r, rng_a) for _ in range(300)] == [
        mirror_to_shadow(r, rng_b) for _ in range(300)
    ]
