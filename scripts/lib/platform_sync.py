#!/usr/bin/env python3
"""Brings examples/platform over a freshly generated platform, after checking for drift.

    platform_sync.py EXAMPLE FRESH ARQ_ROOT

EXAMPLE is examples/platform, FRESH a platform just made by `arq init` + `arq new service` with
the arguments EXAMPLE was made with, ARQ_ROOT the arq checkout both depend on by relative path.

1. Drift check. Every file EXAMPLE/.arq/generated.toml records whose content still has the
   recorded hash (generated and never edited) must equal the fresh generation's file, and both
   must record the same set of files. The only difference allowed is where the arq crates are:
   the path dependencies in Cargo.toml files and `[arq] path` in arq.toml are relative to each
   platform's own location, so both are compared with those paths normalised to `<arq>`.
   On drift: a unified diff per file and exit status 1, with what to do.
2. Copy. Every file of EXAMPLE (except target/, Cargo.lock and .arq/generated.toml, which stays
   the fresh one so that `arq new service` in FRESH knows what it generated) is written into
   FRESH, its arq paths rewritten to FRESH's location; files FRESH has that EXAMPLE deleted
   (the generated example resource the services replaced) are removed.

Prints one line per action group; exit 0 on success, 1 on drift, 2 on bad input.
"""

import difflib
import hashlib
import os
import re
import sys
import tomllib
from pathlib import Path

ARQ_CRATES = ("arq-core", "arq-auth", "arq-tenancy", "arq-queue")
SKIP_DIRS = {"target", ".git"}
SKIP_FILES = {"Cargo.lock", ".arq/generated.toml"}


def fail(code, message):
    print(f"platform_sync: {message}", file=sys.stderr)
    sys.exit(code)


def files_of(root: Path):
    out = set()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS]
        for name in filenames:
            rel = (Path(dirpath) / name).relative_to(root).as_posix()
            if rel not in SKIP_FILES:
                out.add(rel)
    return out


def records(root: Path):
    path = root / ".arq" / "generated.toml"
    try:
        with open(path, "rb") as f:
            return tomllib.load(f).get("files", {})
    except (OSError, tomllib.TOMLDecodeError) as e:
        fail(2, f"cannot read {path}: {e}")


def arq_paths(platform: Path, rel: str, arq_root: Path):
    """The quoted strings that name the arq checkout in `rel`, mapped to placeholders."""
    here = (platform / rel).parent
    mapping = {}
    for crate in ARQ_CRATES:
        mapping[os.path.relpath(arq_root / crate, here)] = f"<arq>/{crate}"
    if rel == "arq.toml":
        mapping[os.path.relpath(arq_root, platform)] = "<arq>"
    return mapping


def rewrite(text: str, mapping: dict) -> str:
    # Only whole quoted TOML strings: `path = "../../../../arq-core"`.
    def sub(m):
        return '"' + mapping.get(m.group(1), m.group(1)) + '"'

    return re.sub(r'"([^"\n]*)"', sub, text)


def read(path: Path):
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def main():
    if len(sys.argv) != 4:
        fail(2, "usage: platform_sync.py EXAMPLE FRESH ARQ_ROOT")
    example, fresh, arq_root = (Path(a).resolve() for a in sys.argv[1:])
    ex_records, fresh_records = records(example), records(fresh)

    drift = []
    only_example = sorted(set(ex_records) - set(fresh_records))
    only_fresh = sorted(set(fresh_records) - set(ex_records))
    for rel in only_fresh:
        drift.append(f"the templates now generate {rel}, which examples/platform lacks")
    for rel in only_example:
        drift.append(f"examples/platform records {rel}, which the templates no longer generate")

    checked = 0
    for rel, entry in sorted(ex_records.items()):
        ex_file, fresh_file = example / rel, fresh / rel
        if rel in only_example or not ex_file.is_file():
            continue
        if hashlib.sha256(ex_file.read_bytes()).hexdigest() != entry.get("sha256"):
            continue  # edited by hand: the example's intent, not drift
        checked += 1
        ex_text, fresh_text = read(ex_file), read(fresh_file) if fresh_file.is_file() else None
        if ex_text is None or fresh_text is None:
            if fresh_text is None and fresh_file.is_file() is False:
                drift.append(f"{rel}: the fresh generation has no such file")
            elif ex_file.read_bytes() != fresh_file.read_bytes():
                drift.append(f"{rel}: binary content differs")
            continue
        a = rewrite(ex_text, {k: v for k, v in arq_paths(example, rel, arq_root).items()})
        b = rewrite(fresh_text, {k: v for k, v in arq_paths(fresh, rel, arq_root).items()})
        if a != b:
            diff = difflib.unified_diff(
                a.splitlines(keepends=True),
                b.splitlines(keepends=True),
                f"examples/platform/{rel}",
                f"fresh generation/{rel}",
                n=2,
            )
            drift.append(f"{rel} differs from what the templates generate now:\n" + "".join(list(diff)[:60]))

    if drift:
        print("platform_sync: examples/platform has drifted from the templates:", file=sys.stderr)
        for d in drift:
            print(f"  - {d}", file=sys.stderr)
        print(
            "  Regenerate the unedited files of examples/platform from the templates (see "
            "docs/quickstart.md, \"When the drift check fails\"), or, for a file you meant to "
            "change, edit it: edited files are the example's own and are not compared.",
            file=sys.stderr,
        )
        sys.exit(1)
    print(f"drift check: {checked} generated files identical to a fresh generation")

    copied, removed = 0, []
    ex_files = files_of(example)
    for rel in sorted(ex_files):
        src, dst = example / rel, fresh / rel
        text = read(src)
        dst.parent.mkdir(parents=True, exist_ok=True)
        if text is None:
            dst.write_bytes(src.read_bytes())
        else:
            old = arq_paths(example, rel, arq_root)
            new = {v: k for k, v in arq_paths(fresh, rel, arq_root).items()}
            text = rewrite(text, {k: new[v] for k, v in old.items()})
            dst.write_text(text, encoding="utf-8")
        os.chmod(dst, src.stat().st_mode & 0o777)
        copied += 1
    for rel in sorted(files_of(fresh) - ex_files):
        (fresh / rel).unlink()
        removed.append(rel)
    # Directories the removals emptied.
    for dirpath, _dirs, _files in sorted(os.walk(fresh), key=lambda t: -len(t[0])):
        p = Path(dirpath)
        if p != fresh and not any(p.iterdir()) and p.name not in SKIP_DIRS:
            p.rmdir()
    print(f"copied {copied} files of examples/platform over it")
    if removed:
        print(f"removed {len(removed)} generated files the example replaced: {', '.join(removed)}")


if __name__ == "__main__":
    main()
