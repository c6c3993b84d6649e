"""Sphinx configuration of the documentation site (``tools/quickstart.sh`` builds it).

Build: ``python -m sphinx -W --keep-going -b html docs build/docs``. The pages
are the Markdown files of ``docs/`` (MyST); ``api.rst`` is the reference made
from the docstrings of ``psycancel.__all__``. Nothing here reaches the network
(no intersphinx): links to other projects' documentation are plain URLs.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from docutils import nodes
from sphinx import addnodes
from sphinx.application import Sphinx
from sphinx.transforms.post_transforms import SphinxPostTransform
from sphinx.util import logging

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
logger = logging.getLogger(__name__)
sys.path.insert(0, str(ROOT))  # autodoc imports psycancel from this checkout

import psycancel  # noqa: E402

project = "psycancel"
author = "The psycancel developers"
copyright = "the psycancel developers"
release = psycancel.__version__
version = release

extensions = ["myst_parser", "sphinx.ext.autodoc"]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "build", "Thumbs.db", ".DS_Store"]

# Markdown: headings get anchors (``page.md#a-heading`` links resolve), and a
# link to a page that does not exist is a warning (an error with -W).
myst_heading_anchors = 4
myst_enable_extensions = ["colon_fence"]

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
# Signatures name the type users see, not the union behind it.
autodoc_type_aliases = {"Cancellable": "psycancel.Cancellable"}

html_theme = "alabaster"
html_title = f"psycancel {release}"
html_static_path: list[str] = []

# --- links from a page to a file of the repository outside docs/ -----------------------
# ``[text](../benchmarks/README.md#a-heading)`` is no page of the site: it becomes a
# link to the file in the repository, once the file (and the heading the anchor
# names, GitHub's slug of it) is found to exist; otherwise it stays a warning.

REPOSITORY_FILES = "https://github.com/psycancel/psycancel/blob/main/"


def _github_slug(heading: str) -> str:
    text = re.sub(r"[`*]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    found: set[str] = set()
    fenced = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (match := re.match(r"#{1,6} (.+)", line)):
            found.add(_github_slug(match.group(1)))
    return found


class RepositoryLinks(SphinxPostTransform):
    """Resolve MyST links to repository files outside docs/ (before MyST warns about them)."""

    default_priority = 8  # MyST's resolver runs at 9

    def run(self, **kwargs: object) -> None:
        for node in list(self.document.findall(addnodes.pending_xref)):
            if node.get("reftype") != "myst" or node.get("refdomain") != "doc":
                continue
            target = Path(node["reftarget"])
            if not target.is_absolute() or DOCS in target.parents:
                continue
            for suffix in ("", ".md", ".rst", ".txt"):
                file = target.with_name(target.name + suffix)
                if file.is_file() and ROOT in file.parents:
                    break
            else:
                continue  # no such file: MyST warns
            anchor = node.get("reftargetid")
            if anchor and file.suffix == ".md" and anchor not in _anchors(file):
                logger.warning(
                    "%s has no heading for the anchor #%s",
                    file.relative_to(ROOT),
                    anchor,
                    location=node,
                    type="myst",
                    subtype="xref_missing",
                )
            uri = REPOSITORY_FILES + file.relative_to(ROOT).as_posix()
            if anchor:
                uri += "#" + anchor
            ref = nodes.reference("", "", internal=False, refuri=uri)
            ref += node[0].deepcopy() if len(node) else nodes.Text(uri)
            node.replace_self(ref)


def setup(app: Sphinx) -> None:
    app.add_post_transform(RepositoryLinks)
