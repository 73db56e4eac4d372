"""The benchmarks must keep working: run them at a tiny size, check what they report.

Never timed here: speed is measured by `make bench`, not asserted in tests.
"""

from __future__ import annotations

from bench import coldstart


async def test_coldstart_bench_measures_both_sides() -> None:
    result = await coldstart.run(2)
    for side in ("service_start_to_ready", "through_wakegate_first_byte", "proxy_server_timing"):
        summary = result[side]
        assert summary["n"] == 2, (side, summary)
        assert 0 < summary["min_ms"] <= summary["p50_ms"] <= summary["max_ms"], (side, summary)
    # The client's wait contains the proxy's own hold (Server-Timing), run by run.
    assert (result["through_wakegate_first_byte"]["p50_ms"]
            >= result["proxy_server_timing"]["p50_ms"]), result
    assert result["overhead_p50_ms"] == round(
        result["through_wakegate_first_byte"]["p50_ms"]
        - result["service_start_to_ready"]["p50_ms"], 2), result
    table = coldstart.markdown(result)
    assert "| cold request through wakegate (first byte) | 2 |" in table, table


async def test_kubernetes_bench_measures_cold_starts_and_failover() -> None:
    from bench import kubernetes

    result = await kubernetes.run(2, 1)
    cold = result["coldstart"]
    assert cold["through_wakegate_first_byte"]["n"] == 2, cold
    # A cold start through the cluster includes the kubelet's simulated delay.
    assert cold["through_wakegate_first_byte"]["min_ms"] >= cold["simulated_start_delay_ms"]
    takeover = result["failover"]["takeover"]
    assert takeover["n"] == 1
    # The standby may only take over once the killed leader's 1 s lease expired.
    assert takeover["min_ms"] >= 900, takeover
    assert "leader failover" in kubernetes.markdown(result)
