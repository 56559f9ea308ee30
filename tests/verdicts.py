"""What each place that states the recommendation says: report.json, report.md's top paragraph and decision section,
and the console's recommendation line, read back from the text a run wrote."""

import re


def verdicts(report: dict, md: str, console: str) -> dict[str, tuple[str | None, bool]]:
    """(system, fine-tuning adopted) as each place states it."""
    rec = report["recommendation"]
    top = md.split("\n\n")[1]
    decision = md.split("## Decision\n\n", 1)[1].split("\n## ", 1)[0]
    line = next(x for x in console.splitlines() if "recommendation: " in x).split("recommendation: ", 1)[1]
    return {
        "report.json": (rec["system"], rec["decision"]["adopt"]),
        "top paragraph": (re.search(r"^\*\*Recommendation: [^*]+\*\* \(`([^`]+)`\)", top)[1],
                          "fine-tuning earns its cost" in top),
        "decision section": (re.search(r"Recommended: `([^`]+)`", decision)[1],
                             "**Fine-tuning adopted**" in decision),
        "console": (line.split(" ", 1)[0], "fine-tuning earns its cost" in line),
    }


def agree(report: dict, md: str, console: str) -> tuple[str | None, bool]:
    """The one (system, adopted) every place states; fails naming the places that differ."""
    said = verdicts(report, md, console)
    assert len(set(said.values())) == 1, said
    return next(iter(said.values()))
