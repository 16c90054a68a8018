"""The model's page: name, rendered model card, price, a prompt box and the API key field.

Plain HTML from ``static/page.html`` (``string.Template``), with ``page.js`` calling
``POST /v1/inference/{model}`` and drawing the ranked completions; no build step.
"""

from __future__ import annotations

import html
import json
import os
import re
import string
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from albert_jax.serving.service import Service

STATIC_DIR = os.path.join(os.path.dirname(__file__), "static")
EXAMPLE = "where is my [MASK]?"
_SCRIPT_URL = re.compile(r'\b(href|src)="\s*(?:javascript|vbscript|data):[^"]*"', re.IGNORECASE)


def render_card(markdown_text: str | None) -> str:
    """The model card as HTML (Python-Markdown, with tables); raw HTML in it is escaped and
    script URLs are dropped, so a card cannot run code in the page."""
    if not markdown_text:
        return "<p>No model card.</p>"
    import markdown

    md = markdown.Markdown(extensions=["tables", "fenced_code"])
    md.preprocessors.deregister("html_block")  # Card HTML shows as text, never runs.
    md.inlinePatterns.deregister("html")
    # No script URLs in links or images either.
    return _SCRIPT_URL.sub(r'\1="#"', md.convert(markdown_text))


def _price(price: float) -> str:
    return f"${price:g} / sec"


def render(service: Service, name: str) -> str:
    served = service.models[name]
    with open(os.path.join(STATIC_DIR, "page.html"), encoding="utf-8") as f:
        template = string.Template(f.read())
    others = "".join(
        f'<a href="/models/{html.escape(m)}">{html.escape(m)}</a> ' for m in service.models)
    login = ("Anonymous calls are open and rate-limited; an API key lifts the limit."
             if service.options.allow_anonymous else "You need an API key to use this model.")
    return template.substitute(
        name=html.escape(name),
        name_json=html.escape(json.dumps(name)),
        source=html.escape(served.source),
        price=html.escape(_price(served.price_per_second)),
        price_value=repr(float(served.price_per_second)),
        example=html.escape(EXAMPLE),
        card=render_card(served.card),
        login=html.escape(login),
        max_length=served.max_length,
        models=others,
    )
