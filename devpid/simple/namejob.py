"""The heavy work on a project list, in a child process: ``python -m devpid.simple.namejob``.

Parsing an upstream's 700,000-name list, sorting it, rendering it as HTML and
JSON and gzipping those is seconds of C code that holds the GIL (a thread
would stop the reactor all that time) and transient memory several times the
list's size. A child process isolates both: the worker's reactor keeps serving
and its peak RSS does not grow.

The job is one JSON object on the command line; the answer one JSON object on
stdout (exit 0), or a one-line reason on stderr (exit 2). Jobs:

``{"job": "parse", "input": BODY, "content_type": CT, "output": NAMES}``
    The upstream's body (a file) parsed into the names file ``NAMES``; with
    ``"legacy": true`` the body is the older one-line names file; with
    ``"remove_input": true`` the body's file is removed once read. Answers
    ``{"tag", "count", "offset"}``, plus ``"rendered"`` as for ``render``
    when ``variants`` are given (rendered from the new list, ``tag`` its tag).
``{"job": "render", "tag": T, "dir": D, "sources": [...], "only": [...]|null,
"variants": [{"key": K, "media": M, "base": B}]}``
    The join of ``sources`` (``namelist.Source``) rendered, per variant, into
    ``D/T-K.body`` and ``D/T-K.body.gz``. Answers ``{"rendered": {K: files}}``.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from devpid.simple.namelist import (
    NameListError,
    Source,
    joined,
    legacy_names,
    parse_upstream_list,
    render_to_files,
    write_names_file,
)


def rendered_path(directory: Path | str, tag: str, key: str) -> Path:
    return Path(directory) / f"{tag}-{key}.body"


def meta_path(directory: Path | str, tag: str, key: str) -> Path:
    """What a rendering's files are (``RenderedFiles``): written last, so once it is
    there, so are they."""
    return Path(directory) / f"{tag}-{key}.meta"


def _render(spec: dict[str, Any], tag: str, sources: list[Source]) -> dict[str, Any]:
    directory = Path(spec["dir"])
    directory.mkdir(parents=True, exist_ok=True)
    only = frozenset(spec["only"]) if spec.get("only") is not None else None
    rendered = {}
    for variant in spec.get("variants") or ():
        target = rendered_path(directory, tag, variant["key"])
        files = render_to_files(
            joined(sources, only), variant["media"], variant["base"], target, spec.get("level", 6)
        )
        rendered[variant["key"]] = files.to_json()
        meta = meta_path(directory, tag, variant["key"])
        partial = meta.with_name(f".{meta.name}.{os.getpid()}.tmp")
        partial.write_text(json.dumps(files.to_json()))
        os.replace(partial, meta)
    _prune(directory, tag, spec.get("keep", ()))
    return {"rendered": rendered}


#: Rendered lists of other contents are removed this long after their last change
#: (a worker that has not yet seen the new list may still open one).
PRUNE_AGE = 120.0


def _prune(directory: Path, tag: str, keep: list[str]) -> None:
    """Remove the renderings of other lists, once no worker can still be opening them."""
    now = time.time()
    for entry in os.scandir(directory):
        owner = entry.name.split("-", 1)[0]
        if owner == tag or owner in keep:
            continue
        try:
            if now - entry.stat().st_mtime > PRUNE_AGE:
                os.unlink(entry.path)
        except FileNotFoundError:
            continue


def run(spec: dict[str, Any]) -> dict[str, Any]:
    """Do one job (in this process: the tests, and in the child)."""
    if spec["job"] == "parse":
        body = Path(spec["input"]).read_bytes()
        if spec.get("remove_input"):
            # here, not in the worker: freeing a 40 MB file's blocks blocks the caller
            Path(spec["input"]).unlink(missing_ok=True)
        if spec.get("legacy"):
            names = legacy_names(body)
        else:
            names = parse_upstream_list(body, spec.get("content_type", ""))
        del body
        header = write_names_file(spec["output"], names)
        del names
        answer: dict[str, Any] = {
            "tag": header.tag,
            "count": header.count,
            "offset": header.offset,
        }
        if spec.get("variants"):
            source = Source(path=spec["output"], offset=header.offset)
            answer.update(_render(spec, header.tag, [source]))
        return answer
    if spec["job"] == "render":
        sources = [Source.from_json(s) for s in spec["sources"]]
        return _render(spec, spec["tag"], sources)
    raise NameListError(f"unknown job {spec['job']!r}")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    # behind the workers: a busy machine serves requests before it renders lists
    with contextlib.suppress(OSError):
        os.nice(10)
    try:
        spec = json.loads(args[0] if args else sys.stdin.read())
        answer = run(spec)
    except (NameListError, OSError, ValueError, KeyError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        sys.stderr.write(reason[:500] + "\n")
        return 2
    sys.stdout.write(json.dumps(answer) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
