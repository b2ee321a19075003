"""What every bench writes when asked: its result as JSON, and its plot as PNG."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any


def write_outputs(result: Any, json_path: Path | None, png_path: Path | None = None,
                  plot: Callable[[Any, Path], None] | None = None) -> None:
    """Write ``result`` to ``json_path`` and ``plot(result, png_path)``, each when given (folders made)."""
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(result, indent=2, default=str))
    if png_path is not None and plot is not None:
        png_path.parent.mkdir(parents=True, exist_ok=True)
        plot(result, png_path)
