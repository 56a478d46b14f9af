"""The Markdown report of `benchmarks/flood.py` (`report(result)`), from the result it writes as JSON."""

from __future__ import annotations


def fmt(x, unit="s", nd=2) -> str:
    return "-" if x is None else f"{x:.{nd}f} {unit}".strip()


def report(r: dict) -> str:
    b, ph, L = r["b_latency"], r["phases"], r["learning"]
    lines = [
        "# Flood: one guest floods /ask and /correct; another user's chat and corrections",
        "",
        f"    {r['command']}",
        "",
        f"Real app (`app.py {' '.join(r['app_args'])}`, tiny model, in-app learning worker; {r['machine']['cpus']} CPU "
        f"cores, A's client on the same cores at nice {r['args']['a_nice']}). Total {r['total_wall_s']:.0f} s. Settings: "
        + ", ".join(f"{k} {v}" for k, v in r["settings"].items()) + ".",
        "",
        "## B's chat latency (wall time of `/ask`, upload + queue + answer)",
        "",
        "| phase | n | p50 | p95 | max | app CPU (cores) | other processes' CPU (cores) | load avg (1 min) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for p in ("idle", "flood", "after"):
        lines.append(f"| {p} | {b[p]['n']} | {fmt(b[p]['p50_s'])} | {fmt(b[p]['p95_s'])} | {fmt(b[p]['max_s'])} | "
                     f"{fmt(ph[p]['app_cpu_share'], '', 2)} | {fmt(ph[p]['others_cpu_share'], '', 2)} | "
                     f"{fmt(ph[p]['loadavg_1m_at_end'], '', 1)} |")
    for k in ("flood, worker training", "flood, worker idle", "after, worker training", "after, worker idle"):
        if b[k]["n"]:
            lines.append(f"| {k} | {b[k]['n']} | {fmt(b[k]['p50_s'])} | {fmt(b[k]['p95_s'])} | {fmt(b[k]['max_s'])} "
                         "| | | |")
    lines += ["", ("Other processes: the machine's busy CPU less the app's, client B's and client A's (another "
              "engineer's tests or benchmarks on a shared machine inflate every figure here).")]
    rt = r["ratio_flood_over_idle"]
    lines += ["", (f"Flood/idle: p50 x{fmt(rt['p50_s'], '', 2)}, p95 x{fmt(rt['p95_s'], '', 2)} "
                   f"(target at most x{r['limit']:.1f}): **{r['verdict']}**. A's client used "
                   f"{fmt(ph['flood'].get('a_client_cpu_s'), 's', 1)} CPU in the {ph['flood']['wall_s']:.0f} s flood.")]
    if r["b_errors"]:
        lines += ["", f"B's refused/failed calls: {len(r['b_errors'])}; first: {r['b_errors'][0]['error']}"]
    lines += ["", "## A's calls during the flood", "",
              f"{sum(r['a_counts'].values())} calls ({r['a_calls_per_s']:.1f}/s): "
              + ", ".join(f"{k} {v}" for k, v in r["a_counts"].items()) + ".",
              f"A's accepted questions at (s into the flood): {r['a_accepted_ask_times_s']}", "",
              "First refusal (or failure) of each kind:", ""]
    lines += [f"- {k}: {v}" for k, v in r["a_first_refusals"].items()]
    lines += ["", "Probes:", ""]
    lines += [(f"- {p['probe']} (at {p['t']:.1f} s): {'accepted' if p['accepted'] else 'refused'}; "
               f"expected {p['expected']}. {p['message']}") for p in r["a_probes"]]
    lines += ["", "## Learning: B's buffer among A's", ""]
    if L.get("b_buffer") is None:
        lines.append("B's buffer never became ready.")
    else:
        ab = L["a_buffers_at_b_ready"]
        if L.get("b_wait_to_learned_s") is not None:
            fate = (f"Claimed by the worker {fmt(L['b_claimed_after_s'], 's', 1)} later; {L['b_outcome']} "
                    f"{fmt(L['b_wait_to_learned_s'], 's', 1)} after the 8th correction"
                    + (f" ({L['b_reason']})." if L.get("b_reason") else "."))
        else:
            fate = (f"**Not learned** within the wait (--wait-timeout {r['args']['wait_timeout']} s after the flood): "
                    f"still {L['b_outcome']} at the end"
                    + (f", claimed {fmt(L['b_claimed_after_s'], 's', 1)} after it was ready." if L["b_claimed_after_s"]
                       is not None else ", never claimed."))
        trained = "; ".join(f"{v['who']}#{i} {v['training_s']:.0f} s ({v['status']}; {v['size']} items of "
                            f"{v['mean_item_chars']} characters, question + answer)" for i, v in L["training_s"].items())
        trained += "".join(f"; {v['who']}#{i} still training after {v['for_s']:.0f} s"
                           for i, v in L["still_training_at_end"].items())
        lines += [
            f"B's 8th correction at {L['b_ready_at_s']:.1f} s into the flood made buffer {L['b_buffer']} ready. {fate}",
            "",
            (f"A's buffers at that moment: training {ab['training']}, ready {ab['ready']}, open {ab['open']}. "
            f"A's buffers learned after B's was ready and before it: {L['a_learned_before_b']}; claimed after B's was "
            f"ready but before it: {L['a_started_after_b_ready_before_b']}. A's authors (one per guest session): "
            f"{', '.join(L['a_authors'])}."),
            "",
            f"Training time, claimed to decided: {trained or 'none finished'}.",
        ]
    lines += ["", "Buffer timeline (s into the flood): " + "; ".join(
        f"{c['t']:.1f} {c['who']}#{c['id']} {c['status']}" + (f"({c['size']})" if c["status"] == "ready" else "")
        for c in r["buffer_timeline"] if c["status"] != "open")]
    return "\n".join(lines)

