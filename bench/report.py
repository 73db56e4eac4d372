"""The combined report: every bench/results/<name>.json as markdown, and the goals.

The goals are issue 5's, issue 12's bar for the warm path (bench/warm.py), and issue 14's
for autoscaling (bench/autoscale.py).

Usage: python -m bench.report [--results bench/results] [--out bench/results/summary.md]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.tools import RESULTS

# The order of the report; each name is a results file and a scenario.
SCENARIOS = ("warm", "coldstart", "kubernetes", "hold", "routes", "sleep_accuracy",
             "autoscale")


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _table(head: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _yes(met: bool | None) -> str:
    return "-" if met is None else ("yes" if met else "**no**")


def warm_bar(result: dict[str, Any]) -> list[list[Any]]:
    """Issue 12's bar as goal rows: (goal, figure, met)."""
    b = result.get("bar")
    if not b:
        return []
    rows: list[list[Any]] = [
        [f"{b['target']} ≥ {b['rps_ratio_min']:g} x nginx req/s (issue 12; goal "
         f"{b['goal']['rps_ratio_min']:g}: {_yes(b['goal']['rps_met'])})",
         b["rps_ratio"], _yes(b["rps_pass"])],
        [f"{b['target']} CPU per request ≤ {b['cpu_ratio_max']:g} x nginx's (issue 12; goal "
         f"{b['goal']['cpu_ratio_max']:g}: {_yes(b['goal']['cpu_met'])})",
         b["cpu_ratio"], _yes(b["cpu_pass"])],
    ]
    if "added_p50_ms" in b:
        added = b["added_p50_ms"]
        rows.append([f"{b['target']} p50 added over direct ≤ {b['added_p50_max_ms']:g} ms at "
                     f"{result['settings']['rate']:g} req/s (issue 12)",
                     None if added is None else f"{added:.3f} ms", _yes(b["added_p50_pass"])])
    return rows


def warm_table(result: dict[str, Any]) -> str:
    ratios = result["ratios"]["throughput"]
    cpu_ratios = result["ratios"].get("cpu_per_request", {})
    added = result["ratios"]["added_p50_ms"]
    rate = result["settings"]["rate"]
    rows = []
    for name, t in result["targets"].items():
        c, o = t.get("closed_loop") or {}, t.get("open_loop") or {}
        rows.append([f"{name} ({t['note']})", c.get("rps"), ratios.get(f"{name}/nginx"),
                     c.get("cpu_us_per_request"), cpu_ratios.get(f"{name}/nginx"),
                     ratios.get(f"{name}/direct"), c.get("p50_ms"), c.get("p99_ms"),
                     o.get("latency_p50_ms"), o.get("latency_p99_ms"), o.get("latency_p999_ms"),
                     added.get(name), o.get("achieved_rps"),
                     (c.get("errors") or 0) + (o.get("errors") or 0)])
    s = result["settings"]
    out = [_table(["target", "wrk req/s", "x nginx", "CPU µs/req", "x nginx CPU", "x direct",
                   "wrk p50 ms", "wrk p99 ms", f"open {rate:g}/s p50 ms", "p99 ms", "p99.9 ms",
                   "p50 added ms", "achieved/s", "errors"], rows),
           f"\nwrk: {s['connections']} keep-alive connections, {s['wrk_threads']} thread, "
           f"{s['rounds']} x {s['wrk_seconds']:g} s rounds after a {s['warmup_seconds']:g} s "
           f"warm-up (median round). Open loop: {rate:g} req/s, {s['openloop_rounds']} x "
           f"{s['openloop_seconds']:g} s per target, latency from the scheduled send time "
           f"(median over rounds), generator processes: {result['generator']['processes']}."]
    if "cpu_method" in result:
        out.append(f"CPU µs/req: {result['cpu_method']} Counted:")
        out += [f"- {name}: {'; '.join(t.get('cpu_counted') or ['-'])}"
                + (f" (not counted: {'; '.join(t['cpu_not_counted'])})"
                   if t.get("cpu_not_counted") else "")
                for name, t in result["targets"].items()]
    bar_rows = warm_bar(result)
    if bar_rows:
        verdict = {True: "passes", False: "**fails**", None: "cannot be decided"}
        out += ["", f"Bar of issue 12: {verdict[result['bar']['pass']]}.", "",
                _table(["bar", "figure", "met"], bar_rows)]
    if result["generator"].get("note"):
        out.append(f"Generator: {result['generator']['note']}.")
    out += [f"Skipped: {name}: {why}" for name, why in result.get("skipped", {}).items()]
    return "\n".join(out)


def hold_table(result: dict[str, Any]) -> str:
    statuses = ", ".join(f"{k}: {v}" for k, v in result["statuses"].items() if k != "200")
    row = [result["connections"], result["answered_200"], statuses or "none", result["errors"],
           result["peak_held"], result["last_wait_s"], result["drain_s"],
           result["rss_idle_mib"], result["rss_peak_mib"], result["rss_over_idle_mib"]]
    return (_table(["connections", "answered 200", "other statuses", "client errors",
                    "peak held", "last answer after s", "first → last answer s",
                    "idle RSS MiB", "peak RSS MiB", "peak over idle MiB"], [row])
            + f"\n\nThe instance's start takes {result['start_delay_s']:g} s (a deliberately slow "
            f"starter, so every request is held); hold_queue_size {result['hold_queue_size']}, "
            f"open-file limit {result['nofile']}.")


def routes_table(result: dict[str, Any]) -> str:
    rows = []
    for size in result["sizes"]:
        r = result["by_size"][str(size)]
        rows.append([size, r["start_to_ready_s"], r["rss_mib"], r["apply_s"],
                     r["route_visible_s"], r.get("rps"), r.get("vs_1_instance")])
    return _table(["instances", "start → ready s", "wakegate RSS MiB", "`wakegate apply` s",
                   "apply → new route answers s", "wrk req/s", "x 1 instance"], rows)


def sleep_table(result: dict[str, Any]) -> str:
    late, decided = result["stopped_after_idle_timeout"], result["stopping_after_idle_timeout"]
    rows = [["idle → stopping (decision)", decided["n"], decided["p50_ms"], decided["max_ms"]],
            ["idle → sleeping (process stopped)", late["n"], late["p50_ms"], late["max_ms"]]]
    return (_table(["after idle_timeout", "runs", "p50 ms", "max ms"], rows)
            + f"\n\nidle_timeout {result['idle_timeout_s']:g} s, measured from the end of the "
            "last response, state read from the controller's /v1/status every "
            f"{result['poll_ms']:g} ms.")


def _replicas(ready: Any, desired: Any) -> str:
    return f"{_fmt(ready)}/{_fmt(desired)}"


def autoscale_table(result: dict[str, Any]) -> str:
    """The figures, then one row per phase and one per second of the load."""
    f, s = result["figures"], result["settings"]
    step, latency = result["phases"][1], f["step_latency"]

    def seconds(value: float | None, unreached: str) -> str:
        return unreached if value is None else f"{value:.2f} s"

    figures = [
        [f"load step → {f['replicas_needed']} replicas ready (their capacity covers "
         f"{step['rate']:g} req/s)", seconds(f["step_to_enough_ready_s"], "not reached")],
        ["p50 / p99 / max latency during the step",
         f"{_fmt(latency['p50_ms'])} / {_fmt(latency['p99_ms'])} / {_fmt(latency['max_ms'])} ms"],
        ["requests failed during scale-up (the step)", f["failed_during_scale_up"]],
        ["requests failed during scale-down (after the step)", f["failed_during_scale_down"]],
        ["load drop → the replicas added for the step gone",
         seconds(f["drop_to_extra_replicas_gone_s"], "none added" if f["peak_ready"] is None
                 or f["peak_ready"] <= (f["replicas_before_step"] or 0) else "not within the run")],
        ["replicas ready before the step / at most / desired at most",
         f"{_fmt(f['replicas_before_step'])} / {_fmt(f['peak_ready'])} / "
         f"{_fmt(f['peak_desired'])}"],
    ]
    phases = [[p["name"], p["rate"], p["seconds"], p["requests"], p["failed"],
               p["latency"]["p50_ms"], p["latency"]["p99_ms"], p["latency"]["max_ms"]]
              for p in result["phases"]]
    per_second = [[r["t_s"], r["phase"], r["offered"], _replicas(r["ready"], r["desired"]),
                   r["p50_ms"], r["p99_ms"], r["non_2xx"], r["client_errors"]]
                  for r in result["seconds"]]
    out = [_table(["autoscale", "figure"], figures), "",
           f"One replica serves {s['concurrency']} requests at a time, {s['service_ms']:g} ms "
           f"each: {s['capacity_per_replica_rps']:g} req/s. {s['environment']}: replicas "
           f"{s['min_replicas']}..{s['max_replicas']}, target_concurrency {s['concurrency']}, "
           f"target_utilization {s['target_utilization']:g}; windows shortened for a one-minute "
           f"run: stable {s['window']:g} s, panic {s['panic_window']:g} s (threshold "
           f"{s['panic_threshold']:g}), scale_down_delay {s['scale_down_delay']:g} s, drain "
           f"before a replica stops {s['drain']:g} s. Open "
           f"loop over {s['connections']} connections, latency from each request's due time; "
           f"replicas read from /v1/status every {s['poll_ms']:g} ms.", "",
           _table(["phase", "req/s", "s", "requests", "failed", "p50 ms", "p99 ms", "max ms"],
                  phases), "",
           _table(["s", "phase", "offered", "ready/desired", "p50 ms", "p99 ms", "non-2xx",
                   "no answer"], per_second)]
    bad = result["non_2xx"]
    out.append("\nNot 2xx: " + (", ".join(f"{kind}: {n}" for kind, n in bad["by_kind"].items())
                                if bad["count"] else "none") + ".")
    if not result["desired_reported"]:
        out.append("The controller's /v1/status has no `desired_replicas`: desired is not shown.")
    return "\n".join(out)


def _coldstart(result: dict[str, Any]) -> str:
    from bench.coldstart import markdown

    return markdown(result)


def _kubernetes(result: dict[str, Any]) -> str:
    from bench.kubernetes import markdown

    return markdown(result)


TABLES: dict[str, Callable[[dict[str, Any]], str]] = {
    "warm": warm_table, "coldstart": _coldstart, "kubernetes": _kubernetes, "hold": hold_table,
    "routes": routes_table, "sleep_accuracy": sleep_table, "autoscale": autoscale_table,
}
TITLES = {"warm": "Warm path", "coldstart": "Cold start", "kubernetes": "Kubernetes runtime",
          "hold": "Hold capacity", "routes": "Route table scale",
          "sleep_accuracy": "Sleep accuracy", "autoscale": "Autoscaling"}


def goals(results: dict[str, dict[str, Any]]) -> str:
    """Issue 5's goals and issue 12's bar, each with the figure that decides it."""
    rows: list[list[Any]] = []

    def add(goal: str, figure: Any, met: bool | None) -> None:
        rows.append([goal, figure, "-" if met is None else ("yes" if met else "**no**")])

    warm = results.get("warm", {})
    if warm.get("status") == "ok":
        ratio = warm["ratios"]["throughput"].get("wakegate-w1/nginx")
        add("throughput ≥ 0.5 x nginx (1 worker)", ratio, None if ratio is None else ratio >= 0.5)
        added = warm["ratios"]["added_p50_ms"].get("wakegate-w1")
        add(f"p50 added over direct ≤ 1 ms at {warm['settings']['rate']:g} req/s",
            None if added is None else f"{added:.3f} ms", None if added is None else added <= 1)
        rows += warm_bar(warm)
    cold = results.get("coldstart", {})
    if "overhead_p50_ms" in cold:
        add("cold-start overhead ≤ 10 ms at p50", f"{cold['overhead_p50_ms']} ms",
            cold["overhead_p50_ms"] <= 10)
    hold = results.get("hold", {})
    if hold.get("status") == "ok":
        add(f"{hold['connections']:,} held requests all answered 200",
            f"{hold['answered_200']:,}", hold["answered_200"] == hold["connections"])
    routes = results.get("routes", {})
    if routes.get("status") == "ok":
        big = routes["by_size"][str(max(routes["sizes"]))]
        ratio = big.get("vs_1_instance")
        add(f"{max(routes['sizes']):,} instances: throughput within 10 % of 1", ratio,
            None if ratio is None else ratio >= 0.9)
    autoscale = results.get("autoscale", {})
    if autoscale.get("status") == "ok":
        f = autoscale["figures"]
        failed = f["failed_during_scale_up"] + f["failed_during_scale_down"]
        add("autoscale: 0 requests failed while scaling up and down (issue 14)", failed,
            failed == 0)
    return _table(["goal (issue 5 unless marked)", "figure", "met"], rows) if rows else ""


def load(folder: Path) -> dict[str, dict[str, Any]]:
    found = {}
    for name in SCENARIOS:
        path = folder / f"{name}.json"
        if path.exists():
            found[name] = json.loads(path.read_text())
    return found


def render(results: dict[str, dict[str, Any]]) -> str:
    out = ["# wakegate benchmarks", ""]
    machine = next((r["machine"] for r in results.values() if "nproc" in r.get("machine", {})),
                   None)
    if machine:
        tools = ", ".join(v for v in machine["tools"].values() if v)
        out += [f"Machine: {machine['nproc']} CPUs ({machine['cpu']}), kernel "
                f"{machine['kernel']}, Python {machine['python']}; {tools}.", ""]
    goal_table = goals(results)
    if goal_table:
        out += ["## Goals", "", goal_table, ""]
    for name in SCENARIOS:
        if name not in results:
            continue
        result = results[name]
        out += [f"## {TITLES[name]}", ""]
        status = result.get("status", "ok")
        if status != "ok":
            out += [f"{status}: {result.get('reason', '')}", ""]
            continue
        out += [TABLES[name](result), ""]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--out", type=Path, help="default: <results>/summary.md")
    args = parser.parse_args()
    text = render(load(args.results))
    (args.out or args.results / "summary.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
