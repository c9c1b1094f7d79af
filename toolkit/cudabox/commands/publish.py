"""`cudabox publish`: push built and verified images to a registry."""

from __future__ import annotations

import argparse
from dataclasses import asdict

from cudabox.commands._registry import registry_from
from cudabox.engine import Engine
from cudabox.errors import ExitCode
from cudabox.images.build import BUILD_READ_TIMEOUT_S
from cudabox.images.catalog import load_catalog
from cudabox.images.publish import publish_image
from cudabox.images.targets import resolve_targets
from cudabox.options import PackageSources, registry_settings
from cudabox.output import print_json, table
from cudabox.registry import RegistryClient


def cmd_publish(args: argparse.Namespace) -> int:
    repo = registry_from(args.registry)
    _, ca = registry_settings(args.tag, args.registry_ca)
    sources = PackageSources.resolve(
        ca_cert=args.ca_cert,
        index_url=args.index_url,
        wheelhouses=args.wheelhouse,
        host_pip=args.host_pip,
    )
    catalog = load_catalog()
    specs = resolve_targets(catalog, args.targets)
    with (
        Engine.connect(read_timeout=BUILD_READ_TIMEOUT_S) as engine,
        RegistryClient(ca_bundle=ca) as client,
    ):
        results = [
            publish_image(engine, spec, repo, catalog.root, sources, client) for spec in specs
        ]
    if args.json:
        print_json([asdict(r) for r in results])
        return int(ExitCode.OK)
    rows = [
        [
            r.name,
            r.pinned,
            r.immutable.rpartition(":")[2],
            f"{r.layers_uploaded}/{r.layers}",
            "yes" if r.immutable_existed else "no",
        ]
        for r in results
    ]
    print(table(["image", "pinned", "immutable tag", "layers uploaded", "was there"], rows))
    return int(ExitCode.OK)
