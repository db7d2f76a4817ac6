"""The attention views as one self-contained HTML file: head view, model view and neuron view
(``attention_view.html``, ``.css`` and ``.js`` beside this module, inlined; no network).

The data is plain JSON (what :meth:`lmlab.generation.attention_trace.AttentionTrace.as_dict`
returns) embedded in a ``<script type="application/json">`` block with ``<``, ``>`` and ``&``
escaped, so no token text can end the block; the page sets token text with ``textContent`` only.
"""

from __future__ import annotations

import html
import json
from importlib import resources
from pathlib import Path
from typing import Any

from lmlab.errors import LmlabError

VIEWS = ("head", "model", "neuron")
_JSON_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def embedded_json(data: Any) -> str:
    """``data`` as JSON that is safe inside a ``<script>`` element."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    for character, escape in _JSON_ESCAPES.items():
        text = text.replace(character, escape)
    return text


def attention_view_html(data: dict[str, Any], title: str, view: str = "head") -> str:
    """The page showing ``data``, opening on ``view`` (head, model or neuron)."""
    if view not in VIEWS:
        raise LmlabError(f"unknown view {view!r}; choose one of {', '.join(VIEWS)}")
    parts = {
        "__LMLAB_STYLE__": _asset("attention_view.css"),
        "__LMLAB_SCRIPT__": _asset("attention_view.js"),
        "__LMLAB_TITLE__": html.escape(title),
        "__LMLAB_VIEW__": view,
    }
    page = _asset("attention_view.html")
    for marker, text in parts.items():
        page = page.replace(marker, text)
    return page.replace("__LMLAB_DATA__", embedded_json(data))  # last: the data may contain a marker's text


def write_attention_view(data: dict[str, Any], path: str | Path, title: str, view: str = "head") -> Path:
    """Write the page (see :func:`attention_view_html`) to ``path``."""
    path = Path(path)
    path.write_text(attention_view_html(data, title, view), encoding="utf-8")
    return path


def _asset(name: str) -> str:
    return resources.files("lmlab.viz").joinpath(name).read_text(encoding="utf-8")
