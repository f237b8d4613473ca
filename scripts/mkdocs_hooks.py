"""MkDocs hooks (mkdocs.yml `hooks:`) for the notebook pages of the docs site.

The notebooks link to other pages as GitHub and Jupyter read them (`../concepts.md`, `grow.ipynb`);
mkdocs-jupyter leaves those links as they are, so here they become the site's pages (`../concepts.html`,
`grow.html`); each notebook page gets a link to download its .ipynb (mkdocs-jupyter's `include_source`
copies it beside the page); and mkdocs-jupyter's MathJax loader, which has no address to load from here
(`<script src="">`; the notebooks have no formulas), is left out. tests/test_docs.py checks every local link
of the built site.
"""
from __future__ import annotations

import re

# a relative link to a Markdown page or a notebook: no scheme, no leading "/" or "#"
_LOCAL_PAGE = re.compile(r'href="(?![a-zA-Z][a-zA-Z0-9+.-]*:|[/#])([^"#?]+)\.(?:md|ipynb)((?:#[^"]*)?)"')
_EMPTY_SCRIPT = re.compile(r'<script src="">\s*</script>')


def on_page_content(html: str, page, config, files) -> str:
    source = page.file.src_uri
    if not source.endswith(".ipynb"):
        return html
    html = _LOCAL_PAGE.sub(lambda m: f'href="{m[1]}.html{m[2]}"', html)
    html = _EMPTY_SCRIPT.sub("", html)
    name = source.rsplit("/", 1)[-1]
    return (f'<p class="notebook-download"><a href="{name}" download>Download this notebook</a> '
            f"and run it where deqnca is installed (it writes only to a temporary folder).</p>\n{html}")
