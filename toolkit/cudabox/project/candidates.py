"""A project's images as candidates: each catalog image the project is locked for, as the project
image built on it (its tag, and the GPU code of the extensions the lock adds).

Pure: the project, its lock and the catalog in, image specs out. The resolver judges these specs
as it judges catalog images, with the extensions' architectures added to its rule.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from cudabox.images.catalog import Catalog, ImageSpec
from cudabox.project.declaration import Project, candidate_images
from cudabox.project.lockfile import LOCK_FILE, ImageLock, ProjectLock, read_lock, require_current


def project_specs(project: Project, lock: ProjectLock, catalog: Catalog) -> tuple[ImageSpec, ...]:
    """The project image of every candidate catalog image the lock has an entry for.

    The lock must be current (a stale one is a DataError, exit 6, whose fix is `cudabox lock`).
    """
    allowed = candidate_images(project, catalog)
    require_current(project, lock, allowed, project.root / LOCK_FILE)
    specs = []
    for base in allowed:
        entry = lock.get(base.name)
        if entry is not None:
            specs.append(project_spec(project, base, entry))
    return tuple(specs)


def project_spec(project: Project, base: ImageSpec, entry: ImageLock) -> ImageSpec:
    """The catalog image `base` as the project's image: same facts, plus the extensions."""
    # Imported here: the build machinery, which a run of a catalog image does not load.
    from cudabox.project.building import project_tag

    return replace(
        base,
        tag=project_tag(project.image_name, base.name),
        project=project.name,
        base_name=base.name,
        extensions=tuple(p.extension() for p in entry.extensions),
    )


def read_project_lock(project: Project) -> ProjectLock:
    """The project's cudabox.lock (DataError, exit 6, with the fix `cudabox lock` when missing)."""
    return read_lock(Path(project.root) / LOCK_FILE)
