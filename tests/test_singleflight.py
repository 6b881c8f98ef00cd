from twisted.internet.defer import Deferred, ensureDeferred

from devpi_tx.singleflight import SingleFlight

from .conftest import result_of


def test_callers_during_a_run_share_its_result_and_the_key_is_freed():
    flight: SingleFlight[str] = SingleFlight()
    gate: Deferred = Deferred()
    runs = []

    async def work():
        runs.append(1)
        await gate
        return "done"

    first = ensureDeferred(flight.run("k", work))
    second = ensureDeferred(flight.run("k", work))
    other = ensureDeferred(flight.run("other", lambda: _value("x")))
    assert "k" in flight and result_of(other) == "x"
    gate.callback(None)
    assert (result_of(first), result_of(second), len(runs)) == ("done", "done", 1)
    assert "k" not in flight
    assert result_of(ensureDeferred(flight.run("k", lambda: _value("again")))) == "again"


def test_callers_during_a_run_share_its_exception():
    flight: SingleFlight[str] = SingleFlight()
    gate: Deferred = Deferred()

    async def work():
        await gate
        raise ValueError("upstream down")

    first = ensureDeferred(flight.run("k", work))
    second = ensureDeferred(flight.run("k", work))
    gate.callback(None)
    for d in (first, second):
        failures = []
        d.addErrback(failures.append)
        assert failures[0].check(ValueError)
    assert "k" not in flight


async def _value(value):
    return value
