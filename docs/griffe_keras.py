"""A griffe extension (mkdocs.yml) for Keras-style docstrings.

The package's docstrings follow Keras: Google-style `Args:` / `Returns:`
sections, plus an `Example:` heading whose doctest lines are *not* indented
under it. Griffe's Google parser knows `Examples:` with indented content, so
this extension renames the heading and indents its block (up to the next
`References:` / `Reference:` heading). `Call arguments:`, `Input shape:` and
`Output shape:` become titled boxes (griffe's admonitions); the items of
`Call arguments:` become a list there. `Returns:` becomes a box titled
"Return value" too: its text describes the value (shape, dtype), which
mkdocstrings' Returns list would show after an empty name, as "– ...".
Only the rendered text changes; the source and the doctests do not.
"""

import re

import griffe

_EXAMPLE = re.compile(r"^(Example|Examples):\s*$")
_NEXT_SECTION = re.compile(r"^(Reference|References):\s*$")
_CALL_ARGUMENTS = re.compile(r"^Call arguments:\s*$")
_ITEM = re.compile(r"^    (\*{0,2}\w+): (.*)$")
_RETURNS = re.compile(r"^Returns:\s*$")


def call_arguments_as_list(lines):
    """`Call arguments:` items (`name: text`, continued at 8 spaces) become
    a Markdown list inside the titled box griffe makes of the section."""
    out = []
    inside = False
    for line in lines:
        if _CALL_ARGUMENTS.match(line):
            inside = True
            out.append(line)
            continue
        if inside and line and not line.startswith("    "):
            inside = False
        item = _ITEM.match(line) if inside else None
        if item:
            out.append(f"    - `{item.group(1)}`: {item.group(2)}")
        elif inside and line.startswith("        "):
            out.append("      " + line[8:])
        else:
            out.append(line)
    return out


def keras_to_google(text):
    lines = call_arguments_as_list(text.splitlines())
    out = []
    inside = False
    for line in lines:
        if _RETURNS.match(line):
            out.append("Return value:")
            continue
        if _EXAMPLE.match(line):
            out.append("Examples:")
            inside = True
            continue
        if inside and _NEXT_SECTION.match(line):
            inside = False
        out.append(("    " + line) if inside and line.strip() else line)
    return "\n".join(out)


class KerasDocstrings(griffe.Extension):
    def on_object(self, *, obj, **kwargs):
        if obj.docstring is not None and not obj.is_alias:
            obj.docstring.value = keras_to_google(obj.docstring.value)
