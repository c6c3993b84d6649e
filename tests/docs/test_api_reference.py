"""The documentation site's API reference (docs/api.rst) documents every public object.

Every name of ``psycancel.__all__`` must have its directive in ``docs/api.rst``
(``autofunction``, ``autoclass``, ``autoexception``, ``autodata`` or, for
``__version__``, ``py:data``), so that a new public object cannot be left out
of the reference. ``tools/quickstart.sh`` builds the site itself (warnings as
errors).
"""

from __future__ import annotations

import re
from pathlib import Path

import psycancel

API = Path(__file__).resolve().parents[2] / "docs" / "api.rst"


def documented() -> set[str]:
    text = API.read_text(encoding="utf-8")
    pattern = r"^\.\. (?:auto(?:function|class|exception)|py:data):: (\w+)"
    return set(re.findall(pattern, text, flags=re.MULTILINE))


def test_every_public_name_is_in_the_reference() -> None:
    assert sorted(set(psycancel.__all__) - documented()) == []


def test_the_reference_documents_only_public_names() -> None:
    assert sorted(documented() - set(psycancel.__all__)) == []


def test_the_default_timeout_shown_is_the_real_one() -> None:
    text = API.read_text(encoding="utf-8")
    shown = re.search(r"py:data:: DEFAULT_TIMEOUT\n(?:   :.*\n)*?   :value: (.+)\n", text)
    assert shown is not None
    assert float(shown.group(1)) == psycancel.DEFAULT_TIMEOUT
