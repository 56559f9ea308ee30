"""report.md: the same facts as report.json, as tables a reviewer reads in a pull request."""

from __future__ import annotations

from pathlib import Path

from domain_embed.report.recommend import label, points

_HEADLINE = ("ndcg@10", "recall@10", "mrr@10", "recall@100", "map@10", "precision@1")


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def metrics_table(report: dict) -> str:
    systems = report["metrics"]
    names = [m for m in _HEADLINE if any(m in v for v in systems.values())]
    rows = []
    for system, values in systems.items():
        ci = report["ci95"].get(system, {})
        rows.append([system] + [f"{values[m]:.4f}" + (f" [{ci[m][0]:.3f}, {ci[m][1]:.3f}]" if m in ci else "")
                                for m in names])
    return table(["system", *names], rows)


def _comparisons(report: dict) -> str:
    rows = []
    for name, per_metric in report["comparisons"].items():
        for metric in _HEADLINE:
            if metric in per_metric:
                c = per_metric[metric]
                rows.append([name, metric, f"{c['delta']:+.4f}", f"[{c['ci95'][0]:+.4f}, {c['ci95'][1]:+.4f}]",
                             f"{c['p_value']:.4f}"])
    return table(["comparison (A-vs-B: A - B)", "metric", "delta", "95% CI", "p"], rows)


def _audit(audit: dict) -> str:
    rows = []
    groups = [("corpus", audit["corpus"]), ("all queries", audit["queries"])]
    for split, parts in audit["splits"].items():
        groups += [(f"{split} queries", parts["queries"]), (f"{split} positives", parts["positives"])]
    for name, s in groups:
        if s.get("count"):
            rows.append([name, str(s["count"]), str(s["max"]), f"{s['p50']:.0f}", f"{s['p95']:.0f}",
                         f"{s['p99']:.0f}", f"{s['share_over_limit']:.2%}"])
    grid = table(["texts", "count", "max", "p50", "p95", "p99", f"over {audit['max_seq_length']}"], rows)
    return (f"Tokenizer of `{audit['model']}`, window {audit['max_seq_length']} tokens, "
            f"`data.truncation={audit['truncation']}`.\n\n{grid}\n\n**Truncation:** {audit['truncated']['note']}.")


def _mining(m: dict, training: dict) -> str:
    """Mining and training each set a negatives count (`mining.num_negatives`, `training.num_negatives`): show both."""
    p = m["parameters"]
    rows = [[rule, str(n)] for rule, n in m["dropped_by_rule"].items()]
    split = m["split"]
    return (f"Ranks {p['range_min']}..{p['range_max']} of the base model ({m['backend']}), relative margin "
            f"{p['relative_margin']}, absolute margin {p['absolute_margin']}, max score {p['max_score']}, "
            f"{p['num_negatives']} negatives mined per pair ({p['sampling']}; `mining.num_negatives`), "
            f"{training['num_negatives']} used per training row (`training.num_negatives`, loss `{training['loss']}`). "
            f"{m['candidates']} candidates, "
            f"{m['kept_before_sampling']} passed every rule, {m['negatives_chosen']} chosen.\n\n"
            + table(["rule", "candidates removed"], rows)
            + f"\n\nTriplets: {split['train_rows']} train, {split['dev_rows']} dev (dev from {split['dev_source']}; "
            f"{split['dev_rows_dropped_for_leakage']} dev rows dropped because their query or positive is in train); "
            f"{m['pairs_without_negative']} pairs had no negative left.")


def _with_ci(r: dict, metric: str) -> str:
    ci = (r.get("ci95") or {}).get(metric)
    return f"{r['metrics'][metric]:.4f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def _tokens_cost(r: dict) -> list[str]:
    """Tokens to embed the corpus (the server's `usage` for a served model, the own tokenizer's count for a local
    one) and what that costs at the dated price (local: compute only, see docs/s)."""
    tokens = (r.get("tokens") or {}).get("corpus")
    cost = r.get("cost") or {}
    usd = cost.get("corpus_usd")
    return [_or_dash(tokens, ",.0f"), "self-hosted" if not r.get("endpoint") else
            (f"${usd:.4f}" if usd is not None else "no price")]


def compare_table(c: dict) -> str:
    """One row per candidate (a served model once per requested dimension), best first, with 95% bootstrap CIs and
    what embedding this corpus and re-indexing a million documents would cost."""
    rows = []
    for r in c["rows"]:
        w, t, x = r["window"], r["throughput"], r["reindex"]
        gb = x["gb_per_million_docs"]["float32"][str(r["dims"])]
        over = f"{r['doc_tokens']['share_over_limit']:.1%}" if r["doc_tokens"] else "unknown"
        rows.append([str(r["domain_rank"]), r["model"], r["kind"], _or_dash(r["mteb_retrieval"]),
                     *[_with_ci(r, m) for m in ("ndcg@10", "recall@10", "mrr@10")], str(r["dims"]),
                     _or_dash(w["effective"]), over, *_tokens_cost(r), _or_dash(t["docs_per_s"], ".1f"),
                     f"{gb:.2f}", _or_dash(x["hours_per_million_docs"], ".1f"),
                     _or_dash(x.get("usd_per_million_docs"), ",.2f"), _or_dash(r["licence"])])
    if c.get("bm25"):
        b = c["bm25"]
        rows.append(["", "bm25", "lexical", "-", f"{b['ndcg@10']:.4f}", f"{b['recall@10']:.4f}", f"{b['mrr@10']:.4f}",
                     *["-"] * 10])
    return table(["rank", "model", "kind", "MTEB retrieval", "nDCG@10 [95% CI]", "Recall@10 [95% CI]",
                  "MRR@10 [95% CI]", "dims", "window", "docs over window", "corpus tokens", "corpus cost (USD)",
                  "docs/s", "GB / 1M docs (fp32)", "hours to re-encode 1M", "USD to re-embed 1M", "licence"], rows)


def _compare_notes(c: dict) -> list[str]:
    """Where the corpus went (served candidates), how each row's tokens were counted, and the price table's date."""
    out = []
    if c.get("corpus_sent_to"):
        where = ", ".join(f"`{s['model']}` ({s['endpoint']}, {'off this machine' if s['remote'] else 'loopback'})"
                          for s in c["corpus_sent_to"])
        out.append(f"**Data egress:** the corpus was sent to {where}.")
    audits = [f"`{r['model']}`: {r['token_audit']}" for r in c["rows"] if r.get("endpoint")]
    if audits:
        out.append("Token audit of served models: " + "; ".join(audits) + ".")
    dates = sorted({r["cost"]["prices_date"] for r in c["rows"] if (r.get("cost") or {}).get("prices_date")})
    if dates:
        out.append(f"Costs use `compare.prices` (USD per 1M tokens, as of {', '.join(dates)}) and the tokens each "
                   "server reported (`usage`).")
    return out


def _rounds(training: dict) -> str:
    """`mining.rounds` > 1: what each round trained on, its score on the one dev set of every round, and which
    round's model was kept; round 1's mining is the mine stage's (## Hard negatives)."""
    rows = []
    for r in training["rounds"]:
        m = r["mining"]
        mined = ([str(m["negatives_chosen"]), str(m["dropped_by_rule"]["labelled_positive"]),
                  str(m["dropped_by_rule"]["relative_margin"])] if m else ["stage `mine`"] * 3)
        rows.append([str(r["round"]), str(r["train_rows"]), str(r["global_step"]),
                     _or_dash(r["best_dev_ndcg@10"], ".4f"), "yes" if r.get("kept") else "no", *mined])
    kept = training.get("kept_round", training["rounds"][-1]["round"])
    stopped = len(training["rounds"]) < training.get("rounds_planned", len(training["rounds"]))
    return ("Each round after the first re-mined with the previous round's model (same rules; "
            "`finetune/round<r>/`) and trained it again; every round is scored on the same dev set (the base "
            "model's negatives), and a round's model is kept only if it beats the model kept before it. "
            f"**Round {kept}'s model is the published one**"
            + (" (a round that did not beat it ends the rounds: the next would re-mine with the same model)"
               if stopped else "") + ".\n\n"
            + table(["round", "triplets", "steps", "best dev nDCG@10", "kept", "negatives chosen",
                     "dropped: labelled positive", "dropped: relative margin"], rows))


def _or_dash(value, spec: str = "") -> str:
    return "-" if value is None else format(value, spec)


def _recommendation(rec: dict) -> str:
    """The report's first paragraph: what to deploy, the best system without fine-tuning, what fine-tuning adds over
    it, and whether the same rule on the evaluated split agrees (the reasoning is in ## Decision)."""
    s, untuned, d = rec["system"], rec["untuned"]["system"], rec["decision"]
    where = f", chosen on the {rec['split']} split" if s is not None else ""
    out = [f"**Recommendation: {label(s)}**" + (f" (`{s}`)" if s else "") + f"{where}."]
    if untuned is not None:
        out.append(f"The best system without fine-tuning is {label(untuned)} (`{untuned}`).")
    out.append(f"Fine-tuning: {d['reason']}." if d["system"] is not None else f"{rec['reason'][0].upper()}"
               f"{rec['reason'][1:]}.")
    t = rec.get("test", {})
    if "agrees" in t:
        out.append(f"The same rule on the {t['split']} split picks {t['pick']} too: dev and test agree." if t["agrees"]
                   else f"Dev and test disagree: the same rule on the {t['split']} split would pick {t['pick']}; the "
                        f"recommendation stays the one chosen on {rec['split']}.")
    elif "note" in rec:
        out.append(f"Note: {rec['note']}.")
    return " ".join(out)


def _decision(rec: dict) -> str:
    """How the recommendation was reached: the cost order, questions (a) and (b), the adoption, and the chosen
    system's figures on the evaluated split, reported once."""
    d, untuned, tuned = rec["decision"], rec["untuned"], rec["fine_tuned"]
    chosen = f"Recommended: `{rec['system']}`" if rec["system"] is not None else "Nothing recommended"
    lines = [f"{chosen}, chosen on the {rec['split']} split. Cost order (`eval.cost_order`, cheapest first): "
             f"{' < '.join(rec['cost_order']) or 'no system'}; the systems without fine-tuning and the fine-tuned ones "
             "are each weighed among themselves, then fine-tuning's best against the best without it."]
    if untuned["reason"] is not None:
        lines.append(f"**(a) The best system without fine-tuning: {untuned['system'] or 'none'}**, "
                     f"{untuned['reason']}.")
    if tuned["reason"] is not None:
        lines.append(f"**(b) The best fine-tuned system: {tuned['system'] or 'none'}**, {tuned['reason']}.")
    if d["system"] is not None:
        lines.append(f"**Fine-tuning {'adopted' if d['adopt'] else 'not adopted'}** (the article's rule: more than "
                     f"{d['min_gain'] * 100:g} points on {d['metric']} with a CI that excludes 0): {d['reason']}.")
    if t := rec.get("test"):
        versus = "".join(f"; against {o['other']} {points(o['delta'], o['ci95'])}" for o in t["compared"])
        lines.append(f"{rec['system']} on the {t['split']} split, reported once: {t['metric']} {t['mean']:.4f} (95% CI "
                     f"{t['ci95'][0]:.4f} to {t['ci95'][1]:.4f}){versus}.")
    if "tuned_vs_bm25" in rec:
        lines.append(rec["tuned_vs_bm25"])
    return "\n\n".join(lines)


def _mrl(mrl: dict) -> str:
    rows = [[d, *[f"{v[s]['ndcg@10']:.4f}" for s in ("baseline", "tuned")]] for d, v in mrl.items()]
    return table(["dims", "baseline nDCG@10", "tuned nDCG@10"], rows)


def _ood(o: dict) -> str:
    return (f"`{o['path']}` ({o['split']}, {o['queries']} queries, {o['documents']} documents): nDCG@10 "
            f"{o['baseline']['ndcg@10']:.4f} -> {o['tuned']['ndcg@10']:.4f} ({o['delta']['ndcg@10']:+.4f}).")


def _formats(rows: list[dict]) -> str:
    """Each format's quality and storage, against float32 at the largest dimension (the plain dense ranking)."""
    ref = next((r for r in rows if r["precision"] == "float32" and r["dims"] == max(x["dims"] for x in rows)), None)
    body = [[str(r["dims"]), r["precision"] + (" (rescored)" if r["rescored"] else ""),
             f"{r['bytes_per_document']:,.1f}", f"{r['ndcg@10']:.4f}", f"{r['recall@10']:.4f}",
             f"{r['ndcg@10'] - ref['ndcg@10']:+.4f}" if ref else "-"] for r in rows]
    return ("Tuned model's vectors stored as an index stores them, the query kept in float32: int8 as FAISS's 8-bit "
            "scalar quantizer (`IndexScalarQuantizer`, ranges trained on the corpus; the query scored against the "
            "decoded codes); binary with sentence-transformers' `quantize_embeddings`, ranked by Hamming distance, "
            "then its top documents re-scored with the float32 query; bytes per document counts every window's "
            "vector.\n\n"
            + table(["dims", "precision", "bytes/doc", "nDCG@10", "Recall@10", "nDCG@10 vs float32 full dims"], body))


def _hybrid(how: dict | str) -> str:
    """How a hybrid was fused and where its settings came from (a string: why it was not scored)."""
    if isinstance(how, str):
        return f"not run: {how}."
    fusion = (f"reciprocal rank fusion (k={how['rrf_k']})" if how["method"] == "rrf"
              else f"convex combination of min-max normalised scores, dense weight alpha={how['alpha']:g}")
    source = (f"chosen on the {how['dev_split']} split by {how['dev_metric']} ({how['dev_value']:.4f} there, best of "
              f"{len(how['grid'])} options)" if how["grid"] else "fixed by the config")
    return f"{fusion} over each system's top {how['depth']}; {source}."


def _rerank(r: dict) -> str:
    """How the reranked systems were made and chosen (dev only), and what reranking costs per query here."""
    m, lat = r["reranker"], r["latency"]
    if m["source"] == "trained":
        rows = m["rows"]
        where = "once for this sweep's jobs" if m.get("shared") else "in this run"
        made = (f"Cross-encoder trained {where} from `{m['base_model']}` (`rerank.init={m['init']}`, loss "
                f"{m['loss']}, lr {m['learning_rate']:g}) on the lists `{m['lists_from']}` gives "
                f"{rows['queries']} train queries (its top {m['list_depth']}: {rows['pairs']} pairs, "
                f"{rows['positives']} positives, {rows['negatives']} negatives; {rows['labelled_in_lists']} labelled "
                f"positives taken out of the lists), {m['global_step']} steps; best dev nDCG@10 over "
                f"`{m['lists_from']}`'s dev lists {_or_dash(m['best_dev_ndcg10'], '.4f')} ({m['dev_queries']} dev "
                f"queries, evaluated every {m['eval_steps']} steps); saved to `{m['path']}`.")
    else:
        made = f"The given cross-encoder `{m['path']}` (`rerank.model`), used as it is."
    chosen = r["depths"]
    grid = table(["first stage", "depth", "reranker weight", f"dev {r['metric']}", "first stage alone", "chosen"],
                 [[g["first_stage"], str(g["depth"]), f"{g['weight']:g}", f"{g['value']:.4f}",
                   f"{g['first_stage_value']:.4f}",
                   "yes" if (chosen[g["first_stage"]], r["weights"][g["first_stage"]]) == (g["depth"], g["weight"])
                   else ""] for g in r["grid"]])
    verdicts = " ".join(f"`rerank({f})`: weight {w:g} won on dev" + (
        f" at depth {chosen[f]}." if w > 0 else f", the reranker does not help on dev (`rerank({f})` is `{f}`).")
        for f, w in r["weights"].items())
    skipped = "".join(f" `{f}` not reranked: {why}." for f, why in r["not_reranked"].items())
    pps = _or_dash(lat["pairs_per_second"], ",.1f")
    ms = _or_dash(lat["ms_per_query"], ",.1f")
    together = f" ({lat['ranks']} ranks together)" if lat.get("ranks", 1) > 1 else ""
    return (f"{made}\n\nEach first stage's top documents re-scored (long documents by their best window) and mixed "
            f"with the first stage's score (per-query min-max; weight 0 is the first stage alone); the depth and "
            f"weight of each, and the best reranked system (**`{r['best']}`**), chosen on the {r['split']} split by "
            f"{r['metric']}; the evaluated split was scored once, each first stage at its choice. {verdicts}{skipped}"
            f"\n\n{grid}\n\n**Cost:** {lat['pairs_scored']:,} pairs scored in {lat['seconds']:.1f} s, "
            f"{pps} pairs/s{together}; "
            f"{ms} ms per query at depth {lat['depth']} over `{lat['first_stage']}` (median of "
            f"{lat['latency_queries']} dev queries, one at a time), on {lat['machine']}.")


def render_markdown(report: dict) -> str:
    run, data = report["run"], report["data"]
    rec = report["recommendation"]
    out = [f"# domain-embed report: {run['model']} on {data['source']}", "", _recommendation(rec), "",
           f"- run directory: `{run['dir']}`; stages: {', '.join(run['stages']) or 'none'} "
           f"(ran now: {', '.join(run['ran_now']) or 'none'}); budget: {run['budget']}",
           f"- data: {data['documents']} documents, {data['queries']} queries, splits {data['splits']}",
           f"- full corpus encodes: {report['cost']['corpus_encodes']}"]
    if rec["system"] is not None or rec["compared"]:
        out += ["", "## Decision", "", _decision(rec)]
    if report["warnings"]:
        out += ["", "## Warnings", *[f"- {w}" for w in report["warnings"]]]
    if "audit" in report:
        out += ["", "## Token-length audit", "", _audit(report["audit"])]
    if report["metrics"]:
        ev = report["eval"]
        out += ["", f"## Retrieval quality ({ev['split']} split, {ev['n_queries']} queries)", "",
                "Mean over queries, with 95% bootstrap CI.", "", metrics_table(report)]
    hybrids = {**report.get("hybrid", {}),
               **{n: why for n, why in report.get("not_run", {}).items() if n.startswith("hybrid")}}
    if hybrids:
        out += ["", "## Hybrid retrieval (BM25 + dense model)", "",
                *[f"- {name}: {_hybrid(how)}" for name, how in hybrids.items()]]
    if "compare" in report:
        c = report["compare"]
        out += ["", f"## Choosing a model ({c['split']} split, {c['n_queries']} queries, {c['documents']} documents)",
                "", compare_table(c), *[x for note in _compare_notes(c) for x in ("", note)], "",
                "**Model-selection guide:**",
                *[f"- {line}" for line in c["recommendation"]["lines"]]]
        if c["rank_correlation"].get("spearman") is not None:
            rc = c["rank_correlation"]
            out += ["", f"MTEB retrieval rank vs rank on this data: Spearman {rc['spearman']:+.2f} "
                        f"over {rc['n']} models."]
    if report["comparisons"]:
        out += ["", "## Paired comparisons", "", "Paired bootstrap CI of the difference and a paired "
                "randomization test over the same queries.", "", _comparisons(report)]
    if "gap_closed" in report:
        rows = [[m, f"{g['delta']:+.4f}", f"{g['relative']:.1%}" if g["relative"] is not None else "n/a",
                 f"[{g['ci95'][0]:+.4f}, {g['ci95'][1]:+.4f}]", f"{g['p_value']:.4f}"]
                for m, g in report["gap_closed"].items()]
        out += ["", "## Gap closed by fine-tuning", "",
                "delta = tuned - base; relative = delta / (1 - base), the share of the remaining gap closed.", "",
                table(["metric", "delta", "relative", "95% CI", "p"], rows), "",
                "The domain gap the tuned model closes over the base model it started from. It decides nothing "
                "alone: fine-tuning is judged against the best system that needs none (## Decision)."]
    if "training" in report:
        t = report["training"]
        out += ["", "## Training", "", f"{t['train_rows']} triplets, {t['global_step']} steps, "
                f"{t['samples_per_second']:.1f} samples/s; best dev nDCG@10 {_or_dash(t['best_dev_ndcg@10'], '.4f')} "
                f"({t['dev_queries']} dev queries, {t['dev_corpus']} dev documents)."]
        if len(t.get("rounds", [])) > 1:
            out += ["", _rounds(t)]
    if "rerank" in report or "rerank" in report.get("not_run", {}):
        out += ["", "## Reranking (cross-encoder)", "",
                _rerank(report["rerank"]) if "rerank" in report
                else f"Not run: {report['not_run']['rerank']}."]
    skipped = report.get("not_run", {})
    checks = (("mrl", "Matryoshka dimensions", _mrl), ("ood", "Forgetting check (another domain)", _ood),
              ("formats", "Vector formats", _formats))
    for name, heading, body in checks:
        if name in report or name in skipped:
            out += ["", f"## {heading}", "", body(report[name]) if name in report else f"Not run: {skipped[name]}."]
    if report.get("plots"):
        out += ["", "## Plots", "", *[f"![{Path(p).stem}]({Path(p).relative_to(Path(report['run']['dir']))})"
                                      for p in report["plots"]]]
    if "mining" in report:
        out += ["", "## Hard negatives", "", _mining(report["mining"], run["config"]["training"])]
    return "\n".join(out) + "\n"
