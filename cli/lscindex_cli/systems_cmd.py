"""`lscindex systems`: how big each vector system is for a class count."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.table import Table

import lscindex
from lscindex import schema
from lscindex_cli._common import console, default_of, human_bytes, shown


def systems(
    classes: Annotated[int, typer.Option("--classes", "-n", help="Number of classes.")],
    kind: Annotated[
        list[str] | None,
        typer.Option(
            "--kind",
            help=f"System kind, repeatable (default: {', '.join(lscindex.systems.DEFAULT_KINDS)}).",
        ),
    ] = None,
    feature_dim: Annotated[
        int, typer.Option(help="Feature width of the softmax head it is compared with.")
    ] = default_of(lscindex.softmax_head_size, "feature_dim"),
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Sizing table: n_min, vector count, mcs and memory per system, next to a softmax head."""
    rows = lscindex.size_systems(classes, kind or lscindex.systems.DEFAULT_KINDS)
    head = lscindex.softmax_head_size(classes, feature_dim=feature_dim)
    if as_json:
        document = schema.document("systems", n_classes=classes, systems=rows, softmax_head=head)
        sys.stdout.write(schema.to_json(document) + "\n")
        return
    table = Table(title=f"Vector systems for {classes:,} classes")
    for column in ("kind", "n_min", "vectors", "mcs", "emb fp16", "emb fp32", "target matrix"):
        table.add_column(column, justify="left" if column == "kind" else "right")
    for r in rows:
        table.add_row(
            shown(r.kind),
            str(r.dim),
            f"{r.n_vectors:,}",
            f"{r.mcs:.3f}",
            f"{r.embedding_bytes_fp16} B",
            f"{r.embedding_bytes_fp32} B",
            human_bytes(r.target_matrix_bytes),
        )
    console.print(table)
    console.print(
        f"A learned {feature_dim}-d softmax head for {classes:,} classes: {head.params:,} params, "
        f"{human_bytes(head.weight_bytes)} fp32, {human_bytes(head.training_bytes)} with gradient "
        f"and Adam state. The analytic decoder needs no target matrix at all."
    )
