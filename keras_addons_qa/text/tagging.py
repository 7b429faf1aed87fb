"""Which tag may follow which under a span tagging scheme."""

import numpy as np

# For each scheme: the prefixes it knows; which of them may begin and end
# a sequence; after which a tag of each prefix may come (`"same"`: only a
# tag of the same entity type with one of those prefixes, `"any"`: a tag of
# any type with one of them).
_SCHEMES = {
    "BIO": dict(
        prefixes="BIO", start="BO", end="BIO",
        after={"B": ("any", "BIO"), "I": ("same", "BI"), "O": ("any", "BIO")},
    ),
    "IOB1": dict(
        prefixes="BIO", start="IO", end="BIO",
        after={"B": ("same", "BI"), "I": ("any", "BIO"), "O": ("any", "BIO")},
    ),
    "BIOUL": dict(
        prefixes="BIOUL", start="BOU", end="OUL",
        after={"B": ("any", "OUL"), "I": ("same", "BI"), "L": ("same", "BI"),
               "O": ("any", "OUL"), "U": ("any", "OUL")},
    ),
    "BMES": dict(
        prefixes="BMES", start="BS", end="ES",
        after={"B": ("any", "ES"), "M": ("same", "BM"), "E": ("same", "BM"), "S": ("any", "ES")},
    ),
}


def _split(index, label, scheme, prefixes):
    if label == "O" and "O" in prefixes:
        return "O", ""
    prefix, dash, entity = str(label).partition("-")
    if prefix not in prefixes or prefix == "O" or not dash or not entity:
        raise ValueError(
            f"allowed_transitions: the labels of {scheme} are "
            + ("'O' and " if "O" in prefixes else "")
            + f"'<prefix>-<type>' with a prefix in {sorted(set(prefixes) - {'O'})}. "
            f"Received: labels[{index}]={label!r}"
        )
    return prefix, entity


def allowed_transitions(constraint_type, labels):
    """The transitions a span tagging scheme allows, for a constrained CRF.

    Under BIO, `I-PER` may only follow `B-PER` or `I-PER`; a CRF that
    knows it never gives probability to, nor decodes, a sequence that
    breaks the scheme (`CRF(num_tags, allowed_transitions=("BIO",
    labels))`). The schemes: `"BIO"` (IOB2), `"IOB1"` (a chunk starts with
    `I-` unless it follows a chunk of its type), `"BIOUL"` (also BILOU /
    IOBES: `U-` a one-tag chunk, `L-` a chunk's last tag) and `"BMES"`
    (begin, middle, end, single; no `O`). A label is `"O"` or
    `"<prefix>-<type>"`.

    Args:
        constraint_type: `"BIO"`, `"IOB1"`, `"BIOUL"` or `"BMES"`.
        labels: The tag of each index, a sequence of strings (or a dict
            from index to string).

    Returns:
        `(transitions, start, end)`, NumPy bool arrays: `transitions[i,
        j]` whether tag `j` may follow tag `i`, `start[j]` whether a
        sequence may begin with tag `j`, `end[i]` whether it may end with
        tag `i`.

    Example:

    >>> transitions, start, end = allowed_transitions("BIO", ["O", "B-PER", "I-PER"])
    >>> transitions.astype(int).tolist()
    [[1, 1, 0], [1, 1, 1], [1, 1, 1]]
    >>> start.tolist(), end.tolist()
    ([True, True, False], [True, True, True])
    """
    scheme = _SCHEMES.get(str(constraint_type).upper())
    if scheme is None:
        raise ValueError(
            f"allowed_transitions: constraint_type must be one of {list(_SCHEMES)}. "
            f"Received: constraint_type={constraint_type!r}"
        )
    if isinstance(labels, dict):
        if sorted(labels) != list(range(len(labels))):
            raise ValueError(
                "allowed_transitions: a dict of labels maps the indices 0 to "
                f"num_tags - 1 to labels. Received: labels={labels!r}"
            )
        labels = [labels[i] for i in range(len(labels))]
    if isinstance(labels, str) or not hasattr(labels, "__len__") or not len(labels):
        raise ValueError(f"allowed_transitions: labels must be a non-empty list of strings. Received: labels={labels!r}")
    tags = [_split(i, label, constraint_type, scheme["prefixes"]) for i, label in enumerate(labels)]
    transitions = np.zeros((len(tags), len(tags)), bool)
    for j, (prefix, entity) in enumerate(tags):
        kind, before = scheme["after"][prefix]
        for i, (previous, other) in enumerate(tags):
            same = kind == "any" or other == entity
            transitions[i, j] = previous in before and same
    start = np.array([prefix in scheme["start"] for prefix, _ in tags])
    end = np.array([prefix in scheme["end"] for prefix, _ in tags])
    return transitions, start, end
