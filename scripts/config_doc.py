"""Render docs/configuration.md's settings tables from node/config.py.

Each setting is documented where it is defined, by the ``#:`` comment lines above it;
this script collects them so the docs cannot drift from the code. Run it with --check to
fail when docs/configuration.md is out of date (the test suite does).
"""

from __future__ import annotations

import ast
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
SOURCE = ROOT / "node" / "config.py"
DOC = ROOT / "docs" / "configuration.md"
BEGIN, END = "<!-- settings:begin -->", "<!-- settings:end -->"


def settings_tables(source: pathlib.Path = SOURCE) -> str:
    text = source.read_text()
    lines = text.splitlines()
    tree = ast.parse(text)
    sections = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == "NodeConfig":
            for item in node.body:
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    sections[ast.unparse(item.annotation)] = item.target.id
    out = []
    for node in tree.body:
        if not (isinstance(node, ast.ClassDef) and node.name in sections):
            continue
        section = sections[node.name]
        out.append(f"### `{section}`\n")
        doc = ast.get_docstring(node)
        if doc:
            out.append(doc.strip() + "\n")
        out.append("| setting | type | default | meaning |")
        out.append("|---|---|---|---|")
        for item in node.body:
            if not (isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)):
                continue
            comment = []
            i = item.lineno - 2
            while i >= 0 and lines[i].strip().startswith("#:"):
                comment.insert(0, lines[i].strip()[2:].strip())
                i -= 1
            default = ast.unparse(item.value) if item.value is not None else ""
            for wrapper in ("Size(", "Seconds("):
                if default.startswith(wrapper):
                    default = default[len(wrapper):-1]
            kind = ast.unparse(item.annotation).replace("|", "\\|")
            meaning = " ".join(comment).replace("|", "\\|").replace("<", "&lt;")
            out.append(f"| `{section}.{item.target.id}` | `{kind}` | `{default}` | {meaning} |")
        out.append("")
    return "\n".join(out)


def render(doc: str, source: pathlib.Path = SOURCE) -> str:
    head, rest = doc.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{settings_tables(source)}\n{END}{tail}"


def main() -> int:
    doc = DOC.read_text()
    source = pathlib.Path(sys.argv[sys.argv.index("--source") + 1]) if "--source" in sys.argv else SOURCE
    new = render(doc, source)
    if "--check" in sys.argv:
        if new != doc:
            print("docs/configuration.md is out of date: run python scripts/config_doc.py", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
