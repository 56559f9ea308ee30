"""Keeps the tuned model's card in step with the final before/after table."""

from __future__ import annotations

import re
from pathlib import Path

from domain_embed.rundir import atomic_write_text

_SECTION = re.compile(r"(## Retrieval before and after fine-tuning\n\n)(.*?)(\n\n## Training configuration)",
                      re.DOTALL)


def update_model_card(model_dir: Path, table: str) -> None:
    """Replaces the card's before/after section (written at training time with dev figures) by the
    held-out test table, so the card says what the report says."""
    readme = Path(model_dir) / "README.md"
    card = readme.read_text(encoding="utf-8")
    updated = _SECTION.sub(lambda m: m.group(1) + table.strip() + m.group(3), card, count=1)
    if updated != card:
        atomic_write_text(readme, updated)
