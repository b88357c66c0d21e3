"""The upstream repository the benchmark serves: a base plus large "blob" projects.

The base comes from ``tests.fixtures.distbuilder.build_repository`` (the demo
packages) and, when it is present, the real corpus in ``shared/corpus`` (for the
``pip install flask requests`` run).  On top of it this module writes projects
that each hold one large file of random bytes, in the same static layout the
upstream fixture serves::

    simple/<name>/index.html   PEP 503 page (links ../../files/<filename>#sha256=...)
    simple/<name>/index.json   PEP 691 page
    files/<filename>           the file itself

so each cold measurement can ask for a file no cache has seen yet.
"""

from __future__ import annotations

import hashlib
import html
import json
import os
import random
import shutil
from pathlib import Path

import attrs

from devpid_bench.procs import REPO_ROOT

CHUNK = 1 << 20

#: Real distributions (for ``pip install flask requests``), next to the repository.
DEFAULT_CORPUS = REPO_ROOT.parent / "shared" / "corpus"


@attrs.frozen
class Blob:
    """One project holding one large file, as written into the repository."""

    project: str
    filename: str
    size: int
    sha256: str


def write_blob(root: Path, project: str, size: int, seed: bytes) -> Blob:
    """Write project ``project`` with one wheel-named file of ``size`` random-looking bytes.

    The body is a 1 MiB random block repeated with a per-chunk counter mixed in,
    which is fast to write and never compresses or deduplicates to anything.
    """
    filename = f"{project.replace('-', '_')}-1.0-py3-none-any.whl"
    files_dir = root / "files"
    files_dir.mkdir(parents=True, exist_ok=True)
    block = bytearray(hashlib.sha256(seed).digest() * (CHUNK // 32))
    block[32:] = os.urandom(CHUNK - 32)
    digest = hashlib.sha256()
    written = 0
    counter = 0
    with open(files_dir / filename, "wb") as out:
        while written < size:
            block[:8] = counter.to_bytes(8, "big")
            counter += 1
            piece = memoryview(block)[: min(CHUNK, size - written)]
            out.write(piece)
            digest.update(piece)
            written += len(piece)
    blob = Blob(project=project, filename=filename, size=size, sha256=digest.hexdigest())
    _write_project_pages(root, blob)
    return blob


def _write_project_pages(root: Path, blob: Blob) -> None:
    page_dir = root / "simple" / blob.project
    page_dir.mkdir(parents=True, exist_ok=True)
    href = f"../../files/{blob.filename}"
    (page_dir / "index.html").write_text(
        "<!DOCTYPE html>\n<html><head>"
        '<meta name="pypi:repository-version" content="1.1">'
        f"<title>Links for {html.escape(blob.project)}</title></head><body>"
        f"<h1>Links for {html.escape(blob.project)}</h1>\n"
        f'<a href="{html.escape(href)}#sha256={blob.sha256}">'
        f"{html.escape(blob.filename)}</a><br/>\n</body></html>\n"
    )
    page = {
        "meta": {"api-version": "1.1"},
        "name": blob.project,
        "versions": ["1.0"],
        "files": [
            {
                "filename": blob.filename,
                "url": href,
                "hashes": {"sha256": blob.sha256},
                "size": blob.size,
                "yanked": False,
            }
        ],
    }
    (page_dir / "index.json").write_text(json.dumps(page, indent=1) + "\n")


def copy_corpus(corpus: Path, root: Path) -> list[str]:
    """Copy the real corpus (pages and files) into ``root``; return its project names."""
    projects = []
    for page_dir in sorted((corpus / "simple").iterdir()):
        if page_dir.is_dir():
            shutil.copytree(page_dir, root / "simple" / page_dir.name, dirs_exist_ok=True)
            projects.append(page_dir.name)
    (root / "files").mkdir(parents=True, exist_ok=True)
    for path in (corpus / "files").iterdir():
        if path.is_file():
            shutil.copy2(path, root / "files" / path.name)
    return projects


def write_root_index(root: Path) -> None:
    """(Re)write ``simple/index.html`` and ``simple/index.json`` from the project directories."""
    simple = root / "simple"
    names = sorted(p.name for p in simple.iterdir() if p.is_dir())
    links = "\n".join(f'<a href="{html.escape(n)}/">{html.escape(n)}</a>' for n in names)
    (simple / "index.html").write_text(
        "<!DOCTYPE html>\n<html><head>"
        '<meta name="pypi:repository-version" content="1.1">'
        f"<title>Simple index</title></head><body>\n{links}\n</body></html>\n"
    )
    listing = {"meta": {"api-version": "1.1"}, "projects": [{"name": n} for n in names]}
    (simple / "index.json").write_text(json.dumps(listing, indent=1) + "\n")


@attrs.frozen
class ClusterFiles:
    """What the cluster section asks for: a page, and one cold file per process count."""

    page_project: str
    one: Blob  # cold file for 1 process
    two: Blob  # cold file for 2 processes


@attrs.frozen
class BenchRepository:
    """What ``build`` wrote: the pip requirements to install and the large files."""

    requirements: list[str]
    warm: Blob  # devpid-demo-big, for the cached-file run
    cold: list[Blob]  # one per cold run, never asked for twice from one cache
    herd: Blob  # for the concurrent cold requests
    huge: Blob  # for the peak-memory run
    cluster: ClusterFiles


def build_base(root: Path, corpus: Path, big_size: int) -> tuple[list[str], Blob]:
    """The demo packages + the real corpus when present: the pip requirements and the warm file."""
    from tests.fixtures.distbuilder import build_repository

    demo = build_repository(root, big_file_size=big_size)
    (warm_name,) = demo.projects["devpid-demo-big"]
    warm = Blob(
        project="devpid-demo-big",
        filename=warm_name,
        size=demo.path(warm_name).stat().st_size,
        sha256=demo.sha256(warm_name),
    )
    requirements = ["devpid-demo-app", "devpid-demo-sdist"]
    if (corpus / "simple").is_dir() and (corpus / "files").is_dir():
        copy_corpus(corpus, root)
        requirements = ["flask", "requests"]
    return requirements, warm


def _cluster_files(root: Path, page_project: str, size: int) -> ClusterFiles:
    one = write_blob(root, "bench-cluster-one", size, b"cluster-one")
    two = write_blob(root, "bench-cluster-two", size, b"cluster-two")
    return ClusterFiles(page_project, one, two)


def build(
    root: Path, corpus: Path, big_size: int, cold_repeats: int, huge_size: int
) -> BenchRepository:
    """The base + this run's blob projects."""
    requirements, warm = build_base(root, corpus, big_size)
    cold = [
        write_blob(root, f"bench-cold-{i}", big_size, f"cold{i}".encode())
        for i in range(1, cold_repeats + 1)
    ]
    herd = write_blob(root, "bench-herd", big_size, b"herd")
    huge = write_blob(root, "bench-huge", huge_size, b"huge")
    cluster = _cluster_files(root, requirements[0], big_size)
    write_root_index(root)
    return BenchRepository(requirements, warm, cold, herd, huge, cluster)


def build_cluster(root: Path, corpus: Path, big_size: int) -> ClusterFiles:
    """Only what the cluster section needs (for ``--cluster-only``)."""
    requirements, _ = build_base(root, corpus, big_size)
    cluster = _cluster_files(root, requirements[0], big_size)
    write_root_index(root)
    return cluster


def write_small_blobs(root: Path, prefix: str, count: int, size: int, seed: int = 0) -> list[Blob]:
    """``count`` projects ``<prefix>-<i>`` of one ``size``-byte file each, quickly.

    For the soak's cold fetches, which need thousands of projects no cache has
    seen: pseudo-random bytes from a seeded generator (any body would do, as long
    as each differs), no root index rewrite (the caller does it once).
    """
    rng = random.Random(seed)
    files_dir = root / "files"
    files_dir.mkdir(parents=True, exist_ok=True)
    blobs = []
    for i in range(count):
        project = f"{prefix}-{i}"
        body = rng.randbytes(size)
        filename = f"{project.replace('-', '_')}-1.0-py3-none-any.whl"
        (files_dir / filename).write_bytes(body)
        blob = Blob(project, filename, size, hashlib.sha256(body).hexdigest())
        _write_project_pages(root, blob)
        blobs.append(blob)
    return blobs
