"""MkDocs hook: the configuration reference, generated from the typed schema that maia_adapt/config.py composes.

Every key of `Config` (and of the dataclasses its fields hold) becomes a row with its type, its default
and the comment written beside it in the source, so the reference is never written a second time by hand
and cannot drift from what the app accepts. mkdocs.yml names this file under `hooks:`; the page is
added to the build as a generated file (nothing is written into docs/).
"""
from __future__ import annotations

import dataclasses
import inspect
import io
import re
import tokenize

PAGE = "config-reference.md"

_FIELD = re.compile(r"^(\s+)([A-Za-z_]\w*)\s*:")


def field_comments(cls) -> dict[str, str]:
    """name -> the comment on a field's line and on the comment lines right above it, for `cls` and its
    dataclass bases (a field defined in a base, e.g. Maia2Config's shape keys, keeps the base's comment)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            src = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        comments: dict[int, str] = {}
        for tok in tokenize.generate_tokens(io.StringIO(src).readline):
            if tok.type == tokenize.COMMENT:
                comments[tok.start[0]] = tok.string.lstrip("#").strip()
        lines = src.splitlines()
        body_indent = None
        for i, line in enumerate(lines, start=1):
            m = _FIELD.match(line)
            if not m or line.strip().startswith("#"):
                continue
            indent, name = m.group(1), m.group(2)
            body_indent = body_indent or indent
            if indent != body_indent:
                continue
            above, j = [], i - 1
            while j >= 1 and lines[j - 1].strip().startswith("#"):
                above.insert(0, comments.get(j, ""))
                j -= 1
            text = " ".join(above + ([comments[i]] if i in comments else []))
            if text:
                docs[name] = text
    return docs


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        value = f.default_factory()  # type: ignore[misc]
    else:
        return "(required)"
    if dataclasses.is_dataclass(value):
        return "(section)"
    if value == "???":
        return "(set by its group)"
    return repr(value) if not isinstance(value, str) else f'"{value}"'


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _class_doc(cls) -> str:
    doc = inspect.getdoc(cls) or ""
    return "" if doc.startswith(cls.__name__ + "(") else doc  # dataclasses' generated signature is no doc


def rows(cls, prefix: str = ""):
    """(key, type, default, comment) for every field of `cls`, with nested sections flattened
    (`ladder.rungs` stays one row: a list of dataclasses is a value, not a section)."""
    docs = field_comments(cls)
    out = []
    for f in dataclasses.fields(cls):
        key = prefix + f.name
        sub = _section_class(cls, f)
        if sub is not None:
            out += rows(sub, key + ".")
        else:
            out.append((key, str(f.type), _default(f), docs.get(f.name, "")))
    return out


def sections(cls):
    """(name, dataclass, comment) for the fields of `cls` that are sections (`train`, `sae`, ...)."""
    docs = field_comments(cls)
    return [(f.name, sub, docs.get(f.name, "")) for f in dataclasses.fields(cls)
            if (sub := _section_class(cls, f)) is not None]


def _section_class(cls, f):
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        value = f.default_factory()  # type: ignore[misc]
        if dataclasses.is_dataclass(value):
            return type(value)
    # a group field (`model: ModelConfig = MISSING`): the annotation names the dataclass
    candidate = getattr(inspect.getmodule(cls), str(f.type), None)
    return candidate if isinstance(candidate, type) and dataclasses.is_dataclass(candidate) else None


def _table(rows_):
    out = ["| key | type | default | what |", "|---|---|---|---|"]
    out += [f"| `{k}` | `{_cell(t)}` | `{_cell(d)}` | {_cell(doc)} |" for k, t, d, doc in rows_]
    return out


def markdown() -> str:
    from maia_adapt.config import Config

    lines = [
        "# Configuration reference",
        "",
        "Every key the app accepts, generated at build time from the dataclasses `maia_adapt/config.py` composes",
        "(`docs/gen_config_ref.py`; each stage's section is defined in its module under `maia_adapt/stages/`):",
        "its type, the schema's default and the comment beside it in the source.",
        "A group option (`model=maia2_small`, `sae=jumprelu`, an `experiment=` preset, `protocol=`) may set",
        "other values: `python -m maia_adapt.run <overrides> --cfg job` prints the resolved configuration.",
        "Value ranges the types cannot express (an Elo bucket in 0..10, a positive step count, a fraction in",
        "[0, 1]) are checked before a stage starts; see [Configuration](configuration.md).",
        "",
    ]
    lines += ["## Top-level keys", ""] + _table([r for r in rows(Config) if "." not in r[0]])
    for name, sub, doc in sections(Config):
        lines += ["", f"## `{name}`", ""]
        about = " ".join(x for x in (doc, _class_doc(sub).replace("\n", " ")) if x)
        if about:
            lines += [about, ""]
        lines += _table(rows(sub, name + "."))
    return "\n".join(lines) + "\n"


def on_files(files, config):
    from mkdocs.structure.files import File

    files.append(File.generated(config, PAGE, content=markdown()))
    return files
