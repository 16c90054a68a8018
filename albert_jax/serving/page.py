"""The model's page: name, rendered model card, price, a prompt box and the API key field.

Plain HTML from ``static/page.html`` (``string.Template``), with ``page.js`` calling
``POST /v1/inference/{model}`` and drawing the ranked completions; no build step. Each
model's page is rendered once, when the app is made (:func:`render_pages`).

The card is third-party Markdown (a hub README) on the page that holds the API key, so it is
rendered, then sanitised with nh3 against an allowlist (the sanitiser is the guarantee, not
the Markdown options), and every response carries :data:`SECURITY_HEADERS`: a
Content-Security-Policy with no inline script and no third-party origin.
"""

from __future__ import annotations

import html
import json
import os
import re
import string
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from xml.etree.ElementTree import Element

    from albert_jax.serving.service import Service

STATIC_DIR = os.path.join(os.path.dirname(__file__), "static")
EXAMPLE = "where is my [MASK]?"


def _swagger_dir() -> str | None:
    """Swagger UI's files, served from our own origin at ``/static/swagger``; None without
    them (then no ``/docs``, the page links the spec). They come from the ``fastapi-offline``
    package (Swagger UI 5: FastAPI's spec is OpenAPI 3.1, which Swagger UI 4 cannot render);
    its ``FastAPIOffline`` is not used: its page has an inline script."""
    import importlib.util

    spec = importlib.util.find_spec("fastapi_offline")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(next(iter(spec.submodule_search_locations)), "static")
    return path if os.path.isfile(os.path.join(path, "swagger-ui-bundle.js")) else None


SWAGGER_DIR = _swagger_dir()
API_URL = "/docs" if SWAGGER_DIR else "/openapi.json"

# 'self' only: no inline script or style, nothing from another origin, no framing. A card's
# https: images do not load either (the request would tell their host who reads the page).
# img-src also allows data: (no request at all: Swagger UI's stylesheet draws its icons with
# data: images; the card's own data: URLs are removed by the sanitiser).
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
)

# What Markdown with the tables and fenced_code extensions produces, and nothing else.
CARD_TAGS = frozenset({
    "p", "h1", "h2", "h3", "h4", "h5", "h6", "a", "em", "strong", "code", "pre", "blockquote",
    "ul", "ol", "li", "table", "thead", "tbody", "tr", "th", "td", "hr", "br", "img",
})
CARD_ATTRIBUTES: dict[str, set[str]] = {
    "a": {"href", "title"}, "img": {"src", "alt", "title"}, "ol": {"start"}}
# Column alignment as classes (page.css), not style attributes (the CSP blocks those).
_ALIGN = {"left", "center", "right"}
CARD_CLASSES: dict[str, set[str]] = {cell: {f"align-{a}" for a in _ALIGN} for cell in ("th", "td")}
# Relative URLs pass too (ammonia's default); every other scheme is removed.
CARD_URL_SCHEMES = frozenset({"http", "https", "mailto"})
_SCHEME = re.compile(r"[a-z][a-z0-9+.-]*:")
_INVISIBLE = re.compile(r"[\x00-\x20\x7f-\x9f]+")  # whitespace and control characters
# A hub README's YAML metadata block: not for the reader (Markdown would show it as text).
_FRONT_MATTER = re.compile(r"\A---[ \t]*\r?\n.*?^(?:---|\.\.\.)[ \t]*\r?$\n?",
                           re.DOTALL | re.MULTILINE)


def _tables(root: Element) -> None:
    """Tables as the page shows them: no header row when every header cell is empty (a
    key-value card table, ``| | |``), and column alignment as a class."""
    for table in list(root.iter("table")):
        thead = table.find("thead")
        if thead is not None and not "".join(thead.itertext()).strip():
            table.remove(thead)
        for cell in table.iter():
            align = cell.attrib.pop("align", None) if cell.tag in ("th", "td") else None
            if align in _ALIGN:
                cell.set("class", f"align-{align}")


def _url_filter(tag: str, attribute: str, value: str) -> str | None:
    """Drops a URL that names another scheme even once entity-decoded again and stripped of
    whitespace and control characters (``&amp;#106;avascript:``, ``java    script:``). The
    browser reads these as harmless relative URLs; dropping them is for any reader that
    decodes twice or strips spaces."""
    if attribute not in ("href", "src"):
        return value
    seen = value
    for _ in range(4):  # nested encodings, a few levels deep
        seen = html.unescape(seen)
    match = _SCHEME.match(_INVISIBLE.sub("", seen).lower())
    return None if match and match.group()[:-1] not in CARD_URL_SCHEMES else value


def sanitize(fragment: str) -> str:
    """An HTML fragment reduced to the card allowlist: tags, attributes, classes, URL schemes;
    script and style elements go with their content, links get ``rel="noopener
    noreferrer"``."""
    import nh3

    return nh3.clean(fragment, tags=set(CARD_TAGS), attributes=CARD_ATTRIBUTES,
                     allowed_classes=CARD_CLASSES, url_schemes=set(CARD_URL_SCHEMES),
                     attribute_filter=_url_filter, link_rel="noopener noreferrer",
                     strip_comments=True)


def render_card(markdown_text: str | None) -> str:
    """The model card as safe HTML: Markdown (tables, fenced code) with the card's raw HTML
    shown as text, then :func:`sanitize`, the last step whatever Markdown let through."""
    if not markdown_text or not markdown_text.strip():
        return "<p>No model card.</p>"
    import markdown
    from markdown.treeprocessors import Treeprocessor

    class Tables(Treeprocessor):
        def run(self, root: Element) -> None:
            _tables(root)

    md = markdown.Markdown(extensions=["tables", "fenced_code"],
                           extension_configs={"tables": {"use_align_attribute": True}})
    md.preprocessors.deregister("html_block")  # Card HTML shows as text, never runs.
    md.inlinePatterns.deregister("html")
    md.treeprocessors.register(Tables(md), "albert_tables", 15)  # after inline (20)
    return sanitize(md.convert(_FRONT_MATTER.sub("", markdown_text, count=1)))


def _price(price: float) -> str:
    return f"${price:g} / sec"


def _read_template() -> string.Template:
    with open(os.path.join(STATIC_DIR, "page.html"), encoding="utf-8") as f:
        return string.Template(f.read())


def render(service: Service, name: str, template: string.Template | None = None) -> str:
    """One model's page."""
    served = service.models[name]
    template = template or _read_template()
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
        # The served model's own count, as /v1/models gives it (a card may count the
        # checkpoint's other heads too).
        parameters=f"{served.info()['parameters']:,}",
        models=others,
        api_url=API_URL,
    )


def render_pages(service: Service) -> dict[str, str]:
    """Every model's page (model name -> HTML), rendered once: the pages do not change while
    the service runs."""
    template = _read_template()
    return {name: render(service, name, template) for name in service.models}


def docs_page() -> str | None:
    """The ``/docs`` page (``static/docs.html``: Swagger UI from ``/static/swagger``, started
    by ``static/docs.js``); None when Swagger UI's files are not installed."""
    if SWAGGER_DIR is None:
        return None
    with open(os.path.join(STATIC_DIR, "docs.html"), encoding="utf-8") as f:
        return f.read()
