"""Add and remove entries of configs/models.yaml as text, so every comment and every other byte of the file stays.

ruamel.yaml (round-trip YAML) is not a dependency. An entry is a block of lines: the comment lines directly above
its `- name:` line, the item, and its indented body. Each edit is checked before anything is written
(`checked_edit`): the new text must parse to the old file with exactly that entry added to (or removed from) its
section and nothing else changed, and must validate as a Catalog; an insertion must also give back the old text
byte for byte when its block is cut out again. `write_catalog` keeps the previous file as models.yaml.bak and
replaces the file atomically through the registry's file-system seam (grace_hpc/registry/fs.py).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import yaml

from grace_hpc.config.catalog import Catalog, IncompleteModel, ModelSpec
from grace_hpc.errors import ConfigError, GraceError

__all__ = ["SECTIONS", "insert_entry", "remove_entry", "checked_edit", "write_catalog", "entry_yaml"]

#: the catalog's lists: complete entries, and entries a page could not complete
SECTIONS = ("models", "incomplete")
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when built with it: 10x faster, same result
_TOP_KEY = re.compile(r"^[A-Za-z_][\w-]*\s*:")


def _span(lines: list[str], section: str) -> tuple[int, int] | None:
    """(first line after `section:`, first line of the next top-level key or len(lines)); None if absent."""
    start = next((i + 1 for i, line in enumerate(lines) if re.match(rf"^{section}\s*:\s*(#.*)?$", line)), None)
    if start is None:
        return None
    end = next((i for i in range(start, len(lines)) if _TOP_KEY.match(lines[i])), len(lines))
    return start, end


def entry_yaml(entry: ModelSpec | IncompleteModel, comment: str) -> str:
    """The entry as a catalog block: `  # comment` then `  - name: ...` (defaults left out, as hand-written ones)."""
    data = entry.model_dump(mode="json", exclude_defaults=True)
    data = {"name": data.pop("name"), **data}
    body = yaml.safe_dump([data], sort_keys=False, default_flow_style=False, width=110, allow_unicode=False)
    note = " ".join(comment.split())  # one line: nothing from a page can end the comment and start YAML
    return f"  # {note}\n" + "".join(f"  {line}\n" for line in body.splitlines())


def insert_entry(text: str, section: str, block: str) -> tuple[str, str]:
    """(new text, the exact text inserted): `block` appended to `section`'s list, after its last item with a blank
    line before it; the section is added at the end of the file when absent."""
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    span = _span(lines, section)
    if span is None:
        inserted = f"\n{section}:\n{block}"
        return "".join(lines) + inserted, inserted
    start, end = span
    last = max((i for i in range(start, end) if lines[i].strip() and lines[i][0] in " -"), default=start - 1)
    return "".join(lines[: last + 1]) + "\n" + block + "".join(lines[last + 1:]), "\n" + block


def _item_start(lines: list[str], name: str, section: str) -> tuple[int, int] | None:
    span = _span(lines, section)
    if span is None:
        return None
    pattern = re.compile(rf"^(\s*)- name:\s*['\"]?{re.escape(name)}['\"]?\s*(#.*)?$")
    for i in range(*span):
        match = pattern.match(lines[i])
        if match:
            return i, len(match.group(1))
    return None


def remove_entry(text: str, name: str) -> tuple[str, str]:
    """(text without the entry's block, the section it was in); ConfigError when no entry has that name."""
    lines = text.splitlines(keepends=True)
    for section in SECTIONS:
        found = _item_start(lines, name, section)
        if found is None:
            continue
        item, indent = found
        first = item
        while first > 0 and lines[first - 1].startswith(" " * indent + "#"):
            first -= 1
        last = item + 1
        while last < len(lines) and (not lines[last].strip() or len(lines[last]) - len(lines[last].lstrip()) > indent):
            last += 1
        while last > item + 1 and not lines[last - 1].strip():
            last -= 1  # trailing blank lines separate it from the next entry: keep one of them
        if first > 0 and not lines[first - 1].strip():
            first -= 1
        rest = lines[:first] + lines[last:]
        return "".join(_without_empty(rest, section)), section
    raise ConfigError(f"no `- name: {name}` line under {' or '.join(SECTIONS)}: an entry written in flow style "
                      "(`- {name: ...}`) is not edited automatically; remove it by hand")


def _without_empty(lines: list[str], section: str) -> list[str]:
    """`lines` without `section:` (and the blank line above it) once its last entry is gone: `incomplete:` left
    empty would be null, and removing what `models add` appended gives back the file as it was."""
    span = _span(lines, section)
    if section == "models" or span is None or any(line.strip() for line in lines[span[0]:span[1]]):
        return lines
    first = span[0] - 1
    first -= 1 if first > 0 and not lines[first - 1].strip() else 0
    return lines[:first] + lines[span[1]:]


def _load(text: str, where: str) -> dict[str, Any]:
    try:
        data = yaml.load(text, Loader=_LOADER) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: not valid YAML ({exc})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping at the top level")
    return data


def checked_edit(old: str, new: str, section: str, *, added: dict[str, Any] | None = None,
                 removed: str | None = None, inserted: str | None = None) -> Catalog:
    """The catalog `new` describes, after proving it is `old` with one entry added to or removed from `section`
    and nothing else changed (GraceError, nothing written, otherwise)."""
    before, after = _load(old, "models.yaml"), _load(new, "edited models.yaml")
    expected = list(before.get(section) or [])
    if added is not None:
        expected.append(added)
    if removed is not None:
        expected = [e for e in expected if not (isinstance(e, dict) and e.get("name") == removed)]
    others_same = {k: v for k, v in before.items() if k != section} == {k: v for k, v in after.items() if k != section}
    # an insertion is nothing but its block: cut out again, the old text comes back byte for byte
    text_same = inserted is None or new.replace(inserted, "", 1) == (old if old.endswith("\n") or not old else old + "\n")
    if not (others_same and list(after.get(section) or []) == expected and text_same):
        raise GraceError(f"internal error: editing models.yaml's {section} would change more than one entry; "
                         "nothing was written (please report this with the file)")
    try:
        return Catalog.model_validate(after)
    except ValueError as exc:
        raise ConfigError(f"models.yaml after the edit would be invalid: {exc}") from exc


def write_catalog(path: Path, expected_old: str, new: str) -> Path:
    """Replace `path` with `new` (atomically, same permissions), after copying it to `path.bak`; ConfigError if the
    file changed since `expected_old` was read (a concurrent edit: nothing is overwritten). Returns the backup."""
    from grace_hpc.registry.fs import LocalFileSystem

    fs = LocalFileSystem()
    backup = path.with_name(path.name + ".bak")
    try:
        if path.read_text(encoding="utf-8") != expected_old:
            raise ConfigError(f"{path} changed while it was being edited; nothing was written: run the command again")
        mode = path.stat().st_mode & 0o777
        shutil.copy2(path, backup)
        tmp = fs.write_temp(path.parent, f".{path.name}", new.encode("utf-8"))
        tmp.chmod(mode)  # write_temp makes owner-only files (registry keys); the catalog keeps its own mode
        fs.replace(tmp, path)
        fs.fsync_dir(path.parent)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot write ({exc.strerror or exc}); the previous file is {backup}") from exc
    return backup
