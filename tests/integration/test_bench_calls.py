"""`python -m bench.calls` drives the real interceptor and servicers: every scenario answers OK."""

from __future__ import annotations

from bench.calls import run


def test_every_scenario_runs_through_the_real_call_path() -> None:
    # run() raises when a call answers with an error status, so reaching the figures means
    # each call (authenticated, logged, counted) succeeded.
    # It also checks the operations reads answer a page of the seeded incidents (3 of 300).
    results = run(runs=2, calls=3, instances=300)
    assert set(results) == {
        "ping",
        "get_instance",
        "start_process",
        "signal",
        "set_variable",
        "search_incident",
        "list_incidents",
    }
    for figures in results.values():
        assert figures["cpu_us_min"] <= figures["cpu_us_median"]
        assert figures["wall_us_min"] > 0
    # Reads write nothing; each write writes the pages of the rows and index entries it changes.
    for read in ("ping", "get_instance", "search_incident", "list_incidents"):
        assert results[read]["pages_per_call"] == 0, read
    for write in ("start_process", "signal", "set_variable"):
        assert results[write]["pages_per_call"] >= 2, write
    # A start writes an instance, its variable, its token and an audit row, with their indexes.
    assert results["start_process"]["pages_per_call"] > results["set_variable"]["pages_per_call"]
