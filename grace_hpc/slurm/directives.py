"""Pure: `#SBATCH` lines written the way sbatch itself reads them. The one renderer of directives.

sbatch does not hand `#SBATCH` lines to a shell: it splits each one into arguments with its own parser,
`get_argument()` in `src/sbatch/opt.c` of SchedMD/slurm (the quoting rules date from commit 6207bfc0fc, 2009, and
are the same in the Slurm 22.05 the tests run and in 25.x):

- whitespace separates arguments;
- `"..."` and `'...'` group characters, whitespace included; the quote characters are dropped;
- a backslash makes the next character literal (inside quotes too) and is dropped;
- an unquoted `#` starts a comment: the rest of the line is ignored;
- a line ends at a newline; an unmatched quote is fatal. Nothing is expanded (`$`, backticks, globs).

So a shell-quoted value is wrong exactly where the shell and sbatch differ: `shlex.quote("a\\b")` is `'a\\b'`, which
sbatch reads as `ab`. A value here is written bare when it has only plain characters, otherwise in double quotes
with `"` and `\\` escaped by a backslash; a newline (or any control character) cannot be written and is refused.
"""

from __future__ import annotations

import re

from grace_hpc.errors import ConfigError

_NAME = re.compile(r"^[a-z][a-z0-9-]*$")
#: characters sbatch's parser never treats specially: such a value is written as it is
_PLAIN = re.compile(r"^[A-Za-z0-9_.,:%@+=/-]+$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def directive_value(name: str, value: object) -> str:
    """`value` as one argument of sbatch's directive parser (see the module docstring)."""
    text = str(value)
    if _CONTROL.search(text):
        raise ConfigError(f"SLURM option --{name}={text!r}: a control character (newline, tab, ...) cannot be "
                          "written in an #SBATCH line")
    if _PLAIN.match(text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def directive(name: str, value: object | None = None) -> str:
    """`#SBATCH --name=value`, or `#SBATCH --name` for a flag (`value` None)."""
    if not _NAME.match(name):
        raise ConfigError(f"SLURM option name {name!r} is not of the form --lower-case-name")
    return f"#SBATCH --{name}" if value is None else f"#SBATCH --{name}={directive_value(name, value)}"
