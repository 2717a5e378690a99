"""The ``bmkt`` command line.

Every command turns a :class:`~bmkt.errors.BmktError` into one readable
message on stderr and a non-zero exit code, never a traceback. ``-v`` shows
progress logs.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import click

from bmkt import __version__, config
from bmkt.errors import BmktError, ValidationError

log = logging.getLogger("bmkt")

#: Exit codes: 1 for a failed check or job, 2 for bad usage (click's own).
EXIT_FAILED = 1


class _Group(click.Group):
    """A click group that reports BmktError as a one-line message."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ValidationError as exc:
            click.echo(str(exc.report), err=True)
            click.echo("validation failed", err=True)
            ctx.exit(EXIT_FAILED)
        except BmktError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(EXIT_FAILED)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="bmkt")
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
def cli(verbose: int) -> None:
    """bmkt — behavioral marketing analytics: scores, segments, send plans, reports."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@cli.command()
@click.option("--customers", "n_customers", type=int, default=10_000, show_default=True)
@click.option("--days", type=int, default=730, show_default=True, help="Length of the history.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--end", default="2024-06-30", show_default=True, help="Last day of the history.")
@click.option(
    "--privacy-proxy-share",
    type=float,
    default=0.4,
    show_default=True,
    help="Share of customers behind a privacy proxy that opens every email.",
)
@click.option("--campaigns-per-week", type=float, default=1.0, show_default=True)
@click.option("--no-email", is_flag=True, help="Simulate purchases only (pure BG/NBD store).")
@click.option(
    "--dropout-at-first-purchase",
    is_flag=True,
    help="Let buyers drop out right after their first order (MBG/NBD) as well.",
)
@click.option(
    "--block-size",
    type=int,
    default=1_000_000,
    show_default=True,
    help="Above this many customers, simulate and write in blocks (one folder per table) "
    "so that memory stays that of one block.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Folder to write the Parquet tables and truth.parquet into.",
)
def simulate(
    n_customers: int,
    days: int,
    seed: int,
    end: str,
    privacy_proxy_share: float,
    campaigns_per_week: float,
    no_email: bool,
    dropout_at_first_purchase: bool,
    block_size: int,
    out: Path,
) -> None:
    """Simulate an online store with known ground truth (Parquet tables + truth)."""
    from bmkt.simulate import simulate_store, simulate_to_folder, write_store

    settings = {
        "days": days,
        "seed": seed,
        "end": end,
        "privacy_proxy_share": privacy_proxy_share,
        "campaigns_per_week": campaigns_per_week,
        "email": not no_email,
        "dropout_at_first_purchase": dropout_at_first_purchase,
        "progress": sys.stderr.isatty(),
    }
    if n_customers > block_size:  # larger than memory: block by block, one folder per table
        folders = simulate_to_folder(out, n_customers, block_size=block_size, **settings)
        for name, folder in folders.items():
            click.echo(f"{name:<13} {folder}")
        return
    tables = simulate_store(n_customers=n_customers, **settings)
    paths = write_store(tables, out)
    for name, path in paths.items():
        click.echo(f"{name:<13} {len(tables[name]):>12,} rows  {path}")


@cli.command()
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--db",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help=f"DuckDB file to load into [default: {config.DEFAULT_DB}]",
)
@click.option("--as-of", default=None, help="Run date; later timestamps are errors.")
def ingest(source: Path, db: Path | None, as_of: str | None) -> None:
    """Validate a folder of CSV/Parquet tables and load it into the DuckDB store.

    Idempotent: loading the same folder twice leaves the same rows.
    """
    from bmkt.io import ingest as run_ingest

    db = db or config.DEFAULT_DB
    counts = run_ingest(source, db, as_of=as_of)
    for name, n in counts.items():
        click.echo(f"{name:<13} {n:>12,} rows")
    click.echo(f"loaded into {db}")


@cli.command()
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@click.option("--as-of", default=None, help="Run date; later timestamps are errors.")
def validate(source: Path, as_of: str | None) -> None:
    """Check a folder or DuckDB file against the data contracts.

    Reports every problem (table, column, rows, examples); exits 1 if any.
    """
    from bmkt.validate import validate as run_validation

    report = run_validation(source, as_of=as_of)
    if report.ok:
        click.echo(str(report))
    else:
        click.echo(str(report), err=True)
        sys.exit(EXIT_FAILED)


@cli.command()
@click.argument("customer_ids", nargs=-1)
@click.option(
    "--from-file",
    "from_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="File of ids (one per line, or CSV with a customer_id column).",
)
@click.option(
    "--db",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help=f"DuckDB store [default: {config.DEFAULT_DB}]",
)
@click.option(
    "--suppression",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Suppression list to append to [default: next to the store].",
)
def forget(
    customer_ids: tuple[str, ...],
    from_file: Path | None,
    db: Path | None,
    suppression: Path | None,
) -> None:
    """Erase customers (right to erasure) and suppress them in every later plan."""
    from bmkt.errors import ConfigError
    from bmkt.privacy import forget as run_forget

    if bool(customer_ids) == bool(from_file):
        raise ConfigError("give customer ids or --from-file (one of the two).")
    removed = run_forget(db or config.DEFAULT_DB, from_file or list(customer_ids), suppression)
    for name, n in removed.items():
        click.echo(f"{name:<13} {n:>12,} rows removed")


@cli.command()
def contracts() -> None:
    """Print the data contracts (tables, columns, kinds, meaning) as Markdown."""
    from bmkt.schema import contracts_markdown

    click.echo(contracts_markdown())


def _value(text: str) -> Any:
    """Interpret a ``-p`` value like papermill: numbers and booleans, else text."""
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _echo_result(result: Any) -> None:
    for nb, html in zip(result.notebooks, result.html, strict=False):
        click.echo(f"executed {nb}  (report: {html.name})")
    click.echo(f"run {result.run_id}: results in {result.out_dir}")


_reports_option = click.option(
    "--reports",
    "reports_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help=f"Reports folder [default: {config.REPORTS_DIR}]",
)


@cli.command("run")
@click.argument("notebook")
@click.option(
    "-p",
    "--parameter",
    "params",
    nargs=2,
    multiple=True,
    metavar="NAME VALUE",
    help="Notebook parameter (repeatable).",
)
@click.option("--run-id", default=None, help="Run id [default: as_of + UTC timestamp].")
@_reports_option
def run_cmd(
    notebook: str, params: tuple[tuple[str, str], ...], run_id: str | None, reports_dir: Path | None
) -> None:
    """Execute NOTEBOOK with papermill and publish it to reports/<run_id>/.

    Writes the executed notebook, an HTML export with code hidden and the
    notebook's artifacts. A failing cell exits 1 and publishes nothing.
    """
    from bmkt.runner import run_notebook

    parameters = {k: _value(v) for k, v in params}
    result = run_notebook(
        notebook,
        parameters,
        run_id=run_id,
        reports_dir=reports_dir,
        progress=sys.stderr.isatty(),
    )
    _echo_result(result)


@cli.command()
@click.option("--as-of", required=True, help="Run date (YYYY-MM-DD).")
@click.option(
    "-p",
    "--parameter",
    "params",
    nargs=2,
    multiple=True,
    metavar="NAME VALUE",
    help="Parameter handed to every notebook that declares it (repeatable).",
)
@click.option("--run-id", default=None, help="Run id [default: as_of + UTC timestamp].")
@_reports_option
def pipeline(
    as_of: str, params: tuple[tuple[str, str], ...], run_id: str | None, reports_dir: Path | None
) -> None:
    """Run the notebooks 10 -> 20 -> 30 -> 40 on one run id and publish them together."""
    from bmkt.runner import run_pipeline

    parameters = {k: _value(v) for k, v in params}
    result = run_pipeline(
        as_of, parameters, run_id=run_id, reports_dir=reports_dir, progress=sys.stderr.isatty()
    )
    _echo_result(result)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``bmkt`` console script."""
    cli.main(args=argv, prog_name="bmkt")


if __name__ == "__main__":  # pragma: no cover
    main()
