"""should_sample() follows the daemon's sampling table: config rates, PUT rates, boosts."""

import http.client
import json

from conftest import eventually

from outrigger_client import Outrigger


def client_for(d, **kw):
    return Outrigger(d.socket, control_url=d.control_url, sampling_refresh=0.1, **kw)


def put_rates(d, rates):
    conn = http.client.HTTPConnection("127.0.0.1", d.control_port, timeout=5)
    conn.request("PUT", "/v1/sampling", json.dumps({"rates": rates}), {"Content-Type": "application/json"})
    assert conn.getresponse().status == 200
    conn.close()


def test_it_follows_the_config_then_rates_put_by_anyone(daemon_factory):
    d = daemon_factory({"sampling": {"rates": {"noisy": 0.0}}})
    obs = client_for(d)
    obs.should_sample("noisy")  # unknown until the first fetch: true; starts the fetcher
    assert eventually(lambda: obs.should_sample("noisy") is False, 5)
    assert obs.should_sample("other") is True
    put_rates(d, {"noisy": 1.0, "other": 0.0})  # another client changes the table
    assert eventually(lambda: obs.should_sample("noisy") and not obs.should_sample("other"), 5)
    obs.close()


def test_set_rate_takes_effect_at_once_and_draws_at_the_rate(daemon):
    obs = client_for(daemon)
    assert obs.set_rate("half", 0.5)
    kept = sum(obs.should_sample("half") for _ in range(20000))
    assert 8000 < kept < 12000, kept
    assert obs.set_rate("half", 0.0) and obs.should_sample("half") is False
    assert obs.set_rate(None, 0.0) and obs.should_sample("anything_else") is False
    obs.close()


def test_with_a_run_id_it_gives_the_daemons_own_decision(daemon):
    obs = client_for(daemon)
    assert obs.set_rate("keyed", 0.5)
    runs = ["run-%d" % i for i in range(300)]
    predicted = {r for r in runs if obs.should_sample("keyed", run_id=r)}
    assert all(obs.should_sample("keyed", run_id=r) == (r in predicted) for r in runs)  # stable
    assert 90 < len(predicted) < 210
    for r in runs:
        obs.observe("keyed", {"r": r}, run_id=r)
    assert obs.flush()
    kept = {e["run_id"] for e in daemon.events()}
    assert kept == predicted
    obs.close()


def test_an_anomaly_boost_samples_the_type_fully(daemon_factory):
    d = daemon_factory({"sampling": {"rates": {"rare": 0.0}}})
    obs = client_for(d)
    obs.should_sample("rare")
    assert eventually(lambda: obs.should_sample("rare") is False, 5)
    assert obs.report_anomaly("rare", "spike")
    assert obs.should_sample("rare") is True  # from the answer, before any refresh
    assert obs.refresh_sampling() and obs.should_sample("rare") is True  # the daemon agrees
    obs.close()


def test_it_never_raises(daemon):
    obs = client_for(daemon)
    assert obs.should_sample(["unhashable"]) is True
    assert obs.set_rate("t", 0.5)
    assert obs.should_sample("t", run_id=object()) is True  # not a string: cannot hash, says true
    obs.close()
