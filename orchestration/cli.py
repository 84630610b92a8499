"""The ``fraudmesh`` command line.

Each command parses its options here and hands over to the module that does the
work, imported lazily so that ``--help`` stays fast (``import feast`` alone takes
seconds). Errors of the project's own tree are printed as one line naming the file,
column or option at fault, with exit status 2; never a traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer

from fraudmesh.errors import FraudmeshError

app = typer.Typer(
    name="fraudmesh",
    help="Real-time payment fraud scoring on Ray Serve.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

T = TypeVar("T")


def _run(work: Callable[[], T]) -> T:
    """Run a command body, turning project errors into a one-line message."""
    try:
        return work()
    except FraudmeshError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2) from None
    except KeyboardInterrupt:
        typer.secho("interrupted", err=True)
        raise typer.Exit(code=130) from None


DataOption = Annotated[
    Path | None,
    typer.Option(
        "--data",
        help="Parquet file of payments with the handbook's schema "
        "(default: ../shared/data/transactions.parquet, else the shipped sample).",
    ),
]


@app.command()
def train(
    until: Annotated[
        str, typer.Option(help="Train on payments before this day, YYYY-MM-DD.")
    ],
    data: DataOption = None,
    out: Annotated[Path | None, typer.Option(help="Artefact directory.")] = None,
    train_days: Annotated[
        int | None, typer.Option(help="Only the last N days before --until.")
    ] = None,
) -> None:
    """Train the sequence model on point-in-time correct features."""
    from orchestration.training_job import run_train

    _run(lambda: run_train(data=data, until=until, out=out, train_days=train_days))


@app.command()
def backtest(
    out: Annotated[Path, typer.Option(help="Predictions Parquet file to write.")],
    data: DataOption = None,
    fold_starts: Annotated[
        str, typer.Option(help="Comma-separated fold start days, YYYY-MM-DD.")
    ] = "2018-07-25,2018-08-01,2018-08-08,2018-08-15",
    train_days: Annotated[
        int | None,
        typer.Option(
            help="Training window in days before S+7 (7 reproduces the handbook)."
        ),
    ] = None,
) -> None:
    """The handbook's prequential backtest, printed beside its published table."""
    from orchestration.backtest import run_backtest

    _run(
        lambda: run_backtest(
            data=data, fold_starts=fold_starts, out=out, train_days=train_days
        )
    )


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="HTTP port.")] = 8000,
) -> None:
    """Run the mesh in the foreground until Ctrl-C or SIGTERM."""
    from orchestration.serving import run_serve

    _run(lambda: run_serve(host=host, port=port))


@app.command()
def replay(
    from_: Annotated[str, typer.Option("--from", help="First day, YYYY-MM-DD.")],
    to: Annotated[str, typer.Option(help="Last day (inclusive), YYYY-MM-DD.")],
    data: DataOption = None,
    rate: Annotated[
        float | None,
        typer.Option(help="Payments per second (default: as fast as it goes)."),
    ] = None,
    report: Annotated[
        Path | None, typer.Option(help="Directory for report.json and report.html.")
    ] = None,
    url: Annotated[
        str, typer.Option(help="Base URL of the running mesh.")
    ] = "http://127.0.0.1:8000",
    stripe: Annotated[
        bool,
        typer.Option(
            "--stripe", help="Create each payment as a PaymentIntent in Stripe."
        ),
    ] = False,
    warm: Annotated[
        bool,
        typer.Option(
            "--materialize",
            help="First warm the mesh's online state for --from (needs REDIS_URL "
            "and FRAUDMESH_STATE_DIR of the running mesh); resets its history.",
        ),
    ] = False,
    concurrency: Annotated[
        int, typer.Option(min=1, help="Requests in flight at most.")
    ] = 16,
    batch_size: Annotated[
        int,
        typer.Option(
            min=1, max=1000, help="Payments per request (>1: /v1/score/batch)."
        ),
    ] = 1,
) -> None:
    """Stream real payments in time order to a running mesh and report."""
    from orchestration.replay import run_replay

    _run(
        lambda: run_replay(
            data=data,
            start=from_,
            end=to,
            rate=rate,
            report_dir=report,
            url=url,
            stripe=stripe,
            materialize=warm,
            concurrency=concurrency,
            batch_size=batch_size,
        )
    )


@app.command()
def materialize(
    until: Annotated[
        str,
        typer.Option(help="Warm the state as of 00:00 UTC of this day, YYYY-MM-DD."),
    ],
    data: DataOption = None,
    redis_url: Annotated[
        str | None, typer.Option(help="Redis URL (default: REDIS_URL).")
    ] = None,
) -> None:
    """Warm Redis history/aggregates and the Feast online store from a data file."""
    from orchestration.materialize import run_materialize

    summary = _run(lambda: run_materialize(data, until, redis_url=redis_url))
    typer.echo(
        f"materialized {summary.payments} payments of {summary.customers} customers "
        f"before {summary.until}; snapshot rows: {summary.snapshot_customers} "
        f"customers, {summary.snapshot_terminals} terminals "
        f"({summary.seconds:.1f} s)"
    )


@app.command()
def demo() -> None:
    """Set up, train or load a model, start the mesh, replay a week, report, stop."""
    from orchestration.demo import run_demo

    _run(run_demo)


def main() -> None:  # pragma: no cover - console entry
    sys.exit(app())
