"""Per-endpoint API keys: one random key per server, kept in an owner-only file the registry record points to.

The key is passed to the engine (`vllm serve --api-key`, llama.cpp `--api-key`) through the environment and read
back by the router and `status`. No function here puts a key into a message or a log line.
"""

from __future__ import annotations

import os
import re
import secrets
import stat
from pathlib import Path

from grace_hpc.errors import RegistryError

_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def new_api_key() -> str:
    """A fresh 256-bit key, URL-safe (fits an HTTP `Authorization: Bearer` header as is)."""
    return secrets.token_urlsafe(32)


def _owner_only_folder(folder: Path) -> None:
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = folder.stat()
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise RegistryError(f"{folder}: key folder is writable by group or others, so another user could replace "
                            f"keys; run `chmod 700 {folder}`")


def key_path(folder: Path, endpoint_id: str) -> Path:
    """Where the key of `endpoint_id` lives: `folder/<endpoint_id>.key`."""
    if not _SAFE_ID.match(endpoint_id):
        raise RegistryError(f"endpoint id {endpoint_id!r} cannot name a key file (use letters, digits, . _ -)")
    return folder / f"{endpoint_id}.key"


def write_key_file(folder: Path, endpoint_id: str, key: str) -> Path:
    """Write `key` to `key_path(folder, endpoint_id)` (mode 0600; the folder is created 0700). Returns the path."""
    path = key_path(folder, endpoint_id)
    _owner_only_folder(folder)
    # O_NOFOLLOW: a planted symlink must not redirect the key elsewhere
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        os.fchmod(f.fileno(), 0o600)  # the file may have existed with a wider mode
        f.write(key + "\n")
    return path


def read_key_file(path: Path | str) -> str:
    """The key in `path`; refuses a file that group or others can read or write (the message never has the key)."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            mode = os.fstat(f.fileno()).st_mode
            if mode & (stat.S_IRWXG | stat.S_IRWXO):
                raise RegistryError(f"{path}: API key file is readable by group or others (mode "
                                    f"{stat.S_IMODE(mode):o}); run `chmod 600 {path}` and consider the key leaked")
            key = f.read().strip()
    except OSError as exc:
        raise RegistryError(f"{path}: cannot read API key file ({exc.strerror})") from exc
    if not key or any(c.isspace() for c in key):
        raise RegistryError(f"{path}: API key file must hold one key on one line")
    return key
