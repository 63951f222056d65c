"""A griffe extension for the API reference: Sphinx roles in docstrings become code spans.

The docstrings use roles such as ``:class:`~latentgrad.estimators.Estimate``` (readable in
``help()`` and editors); markdown would show them verbatim. ``~path.Name`` becomes ``Name``, as
Sphinx shows it; other targets are kept whole.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|obj|exc):`(~?)([^`]+)`")


def _code_span(match: re.Match[str]) -> str:
    tilde, target = match.groups()
    return f"`{target.rsplit('.', 1)[-1] if tilde else target}`"


class RstRolesToCode(griffe.Extension):
    """Rewrite every docstring's Sphinx roles as code spans when griffe loads the object."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _ROLE.sub(_code_span, obj.docstring.value)
