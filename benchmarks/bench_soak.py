"""The graph under load, at full size: a 1,000-dialogue soak, 100 dialogues at once, a flood.

Everything runs through the brought-up graph over real DDS with the parameters of
`config/dialogue.yaml` (info-gain questioner, evidence update, request_timeout 5 s,
max_live_dialogues 200, max_requests_in_flight 8), on the benchmark map of
`bench_dialogue.py` (200 places x 2 views, learned evidence). The people are
`dlgpr_ros.soak_user.SoakUser`s in the same process, answering from each place's annotations
and keeping only outcomes, so the resident memory measured is the graph's:

- soak: 1,000 dialogues, `--wave` at a time (people queueing at the robot); resident memory
  every 50 dialogues, its least-squares slope over the run after a warm-up and over the
  second half, and how every dialogue ended (nothing may be lost: each ends localised or
  in a final state naming why).
- burst: 100 dialogues started at the same moment.
- flood: 10,000 descriptions of 9 KB that nobody answers (issue 13's finding: 20,000 such
  left 20,000 live dialogues and 200 MB), into a graph of its own whose answer time-out is
  `--flood-answer-timeout` s (120 s by default in the config): live dialogues never exceed
  the cap, the rest are refused with a FAILED state naming it, and after the time-out
  nothing is left running. Sent in bursts of 500 (the utterance queue is 1000 deep), each
  once the manager has taken the previous one.

Run (about 20 minutes on 2 shared cores, most of it the soak):
``python benchmarks/bench_soak.py --out docs/results/soak``
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import statistics
import sys
import time
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dlgpr_ros.bringup import Graph, bringup
from dlgpr_ros.soak_user import SoakUser

sys.path.insert(0, str(Path(__file__).parent))
from bench_dialogue import ensure_map  # the same cached benchmark map

LOCALIZED = ("confident", "max_rounds")


def rss_mib() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of ys against xs (nan with fewer than two points)."""
    if len(xs) < 2:
        return float("nan")
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den


def pct(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def people(graph: Graph, places: Any, name: str, **kwargs: Any) -> SoakUser:
    """Simulated people in `graph`, once the dialogue manager hears them and they it."""
    dm = graph.node("dialogue_manager")
    listeners = dm._state_pub.get_subscription_count()
    user = SoakUser(places, name, context=graph.context, namespace=graph.namespace, **kwargs)
    graph.add(user)
    if not graph.run_until(
        lambda: (
            user._pub.get_subscription_count() >= 1
            and dm._state_pub.get_subscription_count() > listeners
        ),
        20,
    ):
        raise RuntimeError("the simulated people never matched the dialogue manager")
    return user


def wait_all(graph: Graph, user: SoakUser, timeout: float) -> None:
    if not graph.run_until(lambda: user.open == 0, timeout):
        raise RuntimeError(f"{user.open} dialogues never ended ({dict(user.tally)})")


def outcomes(user: SoakUser, n: int) -> dict[str, Any]:
    last = list(user.outcomes)[-n:]
    counts = Counter(o.status for o in last)
    failed = Counter(o.detail.split(" for round")[0][:80] for o in last if o.status == "failed")
    secs = [o.seconds for o in last]
    return {
        "dialogues": len(last),
        "ended": dict(counts),
        "localized": sum(counts[s] for s in LOCALIZED),
        "failures": dict(failed),
        "seconds_p50": round(pct(secs, 50), 2),
        "seconds_p95": round(pct(secs, 95), 2),
        "questions_mean": round(statistics.fmean(o.questions for o in last), 2) if last else 0.0,
    }


def soak(graph: Graph, user: SoakUser, places: list[str], n: int, wave: int) -> dict[str, Any]:
    dm = graph.node("dialogue_manager")
    before, ended = Counter(dm.counters), user.ended()
    xs: list[int] = []
    ys: list[float] = []
    t0 = time.perf_counter()
    done = 0
    rng = random.Random(0)
    while done < n:
        for _ in range(min(wave, n - done)):
            user.start(rng.choice(places))
            done += 1
        wait_all(graph, user, 300)
        if done % 50 == 0 or done == n:
            gc.collect()
            xs.append(done)
            ys.append(rss_mib())
            print(f"  soak {done}/{n}: RSS {ys[-1]:.1f} MiB, {dict(user.tally)}", flush=True)
    seconds = time.perf_counter() - t0
    warm = [i for i, x in enumerate(xs) if x >= min(100, n // 4)]
    half = [i for i, x in enumerate(xs) if x >= n // 2]
    counters = {k: v - before[k] for k, v in dm.counters.items() if v != before[k]}
    return {
        **outcomes(user, n),
        "lost": n - (user.ended() - ended),
        "wave": wave,
        "seconds": round(seconds, 1),
        "dialogues_per_s": round(n / seconds, 2),
        "rss_mib": [round(y, 1) for y in ys],
        "rss_at": xs,
        "slope_kib_per_dialogue": round(
            1024 * slope([xs[i] for i in warm], [ys[i] for i in warm]), 2
        ),
        "slope_second_half_kib_per_dialogue": round(
            1024 * slope([xs[i] for i in half], [ys[i] for i in half]), 2
        ),
        "manager": counters,
        "live_after": dm.sessions.live,
        "remembered_after": len(dm.sessions),
        "callback_errors": graph.callback_errors,
    }


def burst(graph: Graph, user: SoakUser, places: list[str], n: int) -> dict[str, Any]:
    dm = graph.node("dialogue_manager")
    before, ended = Counter(dm.counters), user.ended()
    t0 = time.perf_counter()
    for i in range(n):
        user.start(places[i % len(places)])
    wait_all(graph, user, 900)
    seconds = time.perf_counter() - t0
    counters = {k: v - before[k] for k, v in dm.counters.items() if v != before[k]}
    return {
        **outcomes(user, n),
        "lost": n - (user.ended() - ended),
        "seconds": round(seconds, 1),
        "manager": counters,
        "live_after": dm.sessions.live,
        "callback_errors": graph.callback_errors,
    }


def flood(map_path: Path, places: Any, n: int, answer_timeout: float) -> dict[str, Any]:
    overrides = {"map_path": str(map_path), "answer_timeout": answer_timeout}
    text = "a street corner with a red door and a tall tree " * 184  # ~9 KB
    with bringup(None, overrides, "typed", print_dialogue=False, namespace="flood") as graph:
        flooder = people(graph, places, "flood_user", answer=False, keep_outcomes=100)
        dm = graph.node("dialogue_manager")
        cap = dm.sessions.limits.max_live
        gc.collect()
        rss0 = rss_mib()
        ids = sorted(places)
        live_max, sent, t0 = 0, 0, time.perf_counter()
        while sent < n:
            for _ in range(min(500, n - sent)):
                flooder.start(ids[sent % len(ids)], text)
                sent += 1
            c = dm.counters
            if not graph.run_until(lambda: c["started"] + c["refused_full"] >= sent, 120):  # noqa: B023
                raise RuntimeError(f"the manager took {c['started'] + c['refused_full']} of {sent}")
            live_max = max(live_max, dm.sessions.live)
        taken = time.perf_counter() - t0
        gc.collect()
        rss_flooded = rss_mib()
        t1 = time.perf_counter()
        # every accepted description is searched first (a 9 KB one takes ~0.5 s), then asked
        graph.run_until(lambda: flooder.open == 0 and dm.sessions.live == 0, answer_timeout + 900)
        expired_after = time.perf_counter() - t1
        gc.collect()
        tally, c = flooder.tally, dm.counters
        refusal = next((d for r, d in flooder.examples.items() if r.startswith("refused")), "")
        return {
            "utterances": n,
            "utterance_bytes": len(text.encode()),
            "max_live_dialogues": cap,
            "answer_timeout_s": answer_timeout,
            "accepted": c["started"],
            "refused": c["refused_full"],
            "refusals_received": tally["refused"],
            "questions_asked": tally["questions"],
            "ended_no_answer": tally["failed"],
            "lost": n - tally["refused"] - tally["failed"] - flooder.open,
            "live_max": live_max,
            "live_after_timeout": dm.sessions.live,
            "seconds_to_take": round(taken, 1),
            "utterances_per_s": round(n / taken, 1),
            "seconds_until_nothing_live": round(expired_after, 1),
            "rss_mib_before": round(rss0, 1),
            "rss_mib_flooded": round(rss_flooded, 1),
            "rss_mib_after": round(rss_mib(), 1),
            "example_refusal": refusal,
            "reasons": dict(flooder.reasons),
            "manager": dict(dm.counters),
            "retrieval": dict(graph.node("retrieval").counters),
            "callback_errors": graph.callback_errors,
        }


def markdown(r: dict[str, Any]) -> str:
    s, b, f = r.get("soak"), r.get("burst"), r.get("flood")
    lines = [
        "# The graph under load",
        "",
        f"`{r['command']}` on {r['date']}, {r['machine']} (load average "
        f"{r['load_average'][0]} before, {r['load_average'][1]} after); map: {r['map']}; "
        f"{r['seconds_total']} s in all.",
        "",
    ]
    if s:
        lines += [
            f"**Soak**: {s['dialogues']} dialogues, {s['wave']} at a time, in {s['seconds']} s "
            f"({s['dialogues_per_s']} dialogues/s).",
            "",
            "| measure | value |",
            "|---|---|",
            f"| ended localised (confident / round limit) | {s['localized']} of {s['dialogues']} |",
            f"| ended otherwise | {s['dialogues'] - s['localized']} ({s['failures'] or 'none'}) |",
            f"| lost (never ended) | {s['lost']} |",
            f"| dialogue duration p50 / p95 (s) | {s['seconds_p50']} / {s['seconds_p95']} |",
            f"| resident memory, first sample -> last (MiB) | {s['rss_mib'][0]} -> "
            f"{s['rss_mib'][-1]} |",
            f"| memory slope after warm-up (KiB / dialogue) | {s['slope_kib_per_dialogue']} |",
            f"| memory slope, second half (KiB / dialogue) | "
            f"{s['slope_second_half_kib_per_dialogue']} |",
            f"| live dialogues after / remembered finished | {s['live_after']} / "
            f"{s['remembered_after']} |",
            f"| manager re-sends / requests held back | {s['manager'].get('resends', 0)} / "
            f"{s['manager'].get('requests_held', 0)} |",
            f"| callback exceptions | {s['callback_errors']} |",
            "",
        ]
    if b:
        lines += [
            f"**Burst**: {b['dialogues']} dialogues started at once, all ended after "
            f"{b['seconds']} s.",
            "",
            "| measure | value |",
            "|---|---|",
            f"| ended localised | {b['localized']} of {b['dialogues']} |",
            f"| ended otherwise | {b['dialogues'] - b['localized']} ({b['failures'] or 'none'}) |",
            f"| lost (never ended) | {b['lost']} |",
            f"| dialogue duration p50 / p95 (s) | {b['seconds_p50']} / {b['seconds_p95']} |",
            f"| manager re-sends / requests held back | {b['manager'].get('resends', 0)} / "
            f"{b['manager'].get('requests_held', 0)} |",
            "",
        ]
    if f:
        lines += [
            f"**Flood**: {f['utterances']} descriptions of {f['utterance_bytes']} bytes that "
            f"nobody answers, max_live_dialogues {f['max_live_dialogues']}, answer_timeout "
            f"{f['answer_timeout_s']:g} s.",
            "",
            "| measure | value |",
            "|---|---|",
            f"| accepted / refused (FAILED state naming the cap) | {f['accepted']} / "
            f"{f['refused']} |",
            f"| most dialogues live at once | {f['live_max']} |",
            f"| accepted that were asked a question, then ended on the time-out | "
            f"{f['questions_asked']}, {f['ended_no_answer']} |",
            f"| lost | {f['lost']} |",
            f"| taken in (s), rate (utterances/s) | {f['seconds_to_take']}, "
            f"{f['utterances_per_s']} |",
            f"| live after the time-out ({f['seconds_until_nothing_live']} s later) | "
            f"{f['live_after_timeout']} |",
            f"| resident memory before -> flooded -> after (MiB) | {f['rss_mib_before']} -> "
            f"{f['rss_mib_flooded']} -> {f['rss_mib_after']} |",
            "",
            f'A refusal reads: "{f["example_refusal"]}"',
            "",
        ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--places", type=int, default=200)
    ap.add_argument("--views", type=int, default=2)
    ap.add_argument("--data", type=Path, default=Path("data/bench"), help="map cache")
    ap.add_argument("--soak", type=int, default=1000, help="dialogues of the soak (0: skip)")
    ap.add_argument("--wave", type=int, default=10, help="soak dialogues started together")
    ap.add_argument("--burst", type=int, default=100, help="dialogues started at once (0: skip)")
    ap.add_argument("--flood", type=int, default=10_000, help="flood descriptions (0: skip)")
    ap.add_argument("--flood-answer-timeout", type=float, default=10.0)
    ap.add_argument("--questioner", default="info-gain")
    ap.add_argument("--out", type=Path, default=None, help="writes OUT.json and OUT.md")
    args = ap.parse_args(argv)

    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.setdefault("ROS_DOMAIN_ID", str(random.SystemRandom().randint(101, 200)))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from dlgpr_core.mapdb.ground_truth import map_annotations

    torch.set_num_threads(1)
    t_all = time.perf_counter()
    load_before = os.getloadavg()[0]
    map_path = ensure_map(args.data, args.places, args.views)
    places = map_annotations(map_path)
    ids = sorted(places)
    result: dict[str, Any] = {
        "command": "python benchmarks/bench_soak.py " + " ".join(argv or sys.argv[1:]),
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "machine": f"{os.cpu_count()} shared CPU cores ({platform.machine()})",
        "map": f"{args.places} places x {args.views} views, learned evidence, "
        f"questioner {args.questioner}",
    }
    if args.soak or args.burst:
        overrides = {"map_path": str(map_path), "questioner.questioner": args.questioner}
        with bringup(None, overrides, "typed", print_dialogue=False) as graph:
            user = people(graph, places, "soak_user")
            if args.soak:
                print(f"soak: {args.soak} dialogues, {args.wave} at a time", flush=True)
                result["soak"] = soak(graph, user, ids, args.soak, args.wave)
            if args.burst:
                print(f"burst: {args.burst} dialogues at once", flush=True)
                result["burst"] = burst(graph, user, ids, args.burst)
    if args.flood:
        print(f"flood: {args.flood} descriptions", flush=True)
        result["flood"] = flood(map_path, places, args.flood, args.flood_answer_timeout)
    result["load_average"] = [round(load_before, 1), round(os.getloadavg()[0], 1)]
    result["seconds_total"] = round(time.perf_counter() - t_all, 1)
    text = markdown(result)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
        args.out.with_suffix(".md").write_text(text + "\n")


if __name__ == "__main__":
    main()
