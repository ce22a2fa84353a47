"""Build the compiled KV indexer core (``_radix.c``) in place, next to its source.

``make venv`` runs ``python -m dynamo.kv_router.native_build`` after installing the package. Where the
machine has no C compiler (or no Python headers) nothing is built and the pure-Python indexer is used;
that is not an error. A compiler that is present but fails on the source is one (exit status 1), so a
broken build cannot pass unnoticed in CI.

Only the interpreter's own ``sysconfig`` is used (no setuptools/build backend): one translation unit,
compiled with the compiler and flags CPython itself was built with.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

SOURCE = Path(__file__).with_name("_radix.c")


def target_path() -> Path:
    return SOURCE.with_name("_radix" + (sysconfig.get_config_var("EXT_SUFFIX") or ".so"))


def compiler_command(output: Path) -> list[str] | None:
    """The compile-and-link command, or None when no compiler or no Python.h is available."""
    cc = shlex.split(os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc")
    if not cc or shutil.which(cc[0]) is None:
        return None
    include = sysconfig.get_paths()["include"]
    if not (Path(include) / "Python.h").is_file():
        return None
    return [*cc, "-O2", "-fPIC", "-shared", "-fno-strict-aliasing", f"-I{include}", str(SOURCE), "-o", str(output)]


def build(quiet: bool = False) -> Path | None:
    """Compile the extension; returns its path, or None when this machine cannot compile it."""
    target = target_path()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / target.name
        cmd = compiler_command(out)
        if cmd is None:
            if not quiet:
                print("dynamo: no C compiler or Python headers; the KV indexer stays pure Python")
            return None
        subprocess.run(cmd, check=True)
        # Replace atomically: a process importing the old module must not see a half-written file.
        tmp_target = target.with_name(target.name + ".tmp")
        shutil.copyfile(out, tmp_target)
        os.replace(tmp_target, target)
    if not quiet:
        print(f"dynamo: built {target}")
    return target


def main() -> int:
    try:
        build()
    except subprocess.CalledProcessError as exc:
        print(f"dynamo: compiling the KV indexer failed ({exc})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
