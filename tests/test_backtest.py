"""The backtest and training job end to end on a slice of the shipped sample, and
the one-line errors of the ``train`` and ``backtest`` commands."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from fraudmesh.dataset import SAMPLE_PATH
from models.training import TrainConfig
from orchestration.backtest import parse_fold_starts
from orchestration.cli import app

runner = CliRunner()
FAST = TrainConfig(
    max_epochs=2, hidden=8, static_hidden=16, batch_size=256, members=1,
    negative_fraction=0.25,
)


@pytest.fixture(scope="module")
def sample_slice(tmp_path_factory) -> str:
    """300 customers of the sample, 2018-06-15 to 2018-08-21 (one fold)."""
    table = pq.read_table(SAMPLE_PATH).to_pandas()
    customers = np.sort(table["customer_id"].unique())[:300]
    keep = table["customer_id"].isin(customers) & table["tx_datetime"].between(
        pd.Timestamp("2018-06-15"), pd.Timestamp("2018-08-21 23:59:59")
    )
    path = tmp_path_factory.mktemp("slice") / "slice.parquet"
    table[keep].to_parquet(path, index=False)
    return str(path)


@pytest.mark.slow
def test_backtest_on_a_sample_slice(sample_slice, tmp_path, capsys):
    from orchestration.backtest import run_backtest

    out = tmp_path / "pred.parquet"
    reports = run_backtest(
        data=sample_slice,
        fold_starts="2018-08-01",
        out=out,
        train_days=14,
        config=FAST,
        state_dir=tmp_path / "state",
    )
    pred = pd.read_parquet(out)
    assert list(pred.columns) == ["fold_start", "transaction_id", "score"]
    source = pd.read_parquet(sample_slice)
    test_days = source["tx_datetime"].between(
        pd.Timestamp("2018-08-15"), pd.Timestamp("2018-08-21 23:59:59")
    )
    assert sorted(pred["transaction_id"]) == sorted(
        source.loc[test_days, "transaction_id"]
    )
    assert (pred["fold_start"] == "2018-08-01").all()
    assert pred["score"].between(0, 1).all()
    (report,) = reports
    assert 0 < report.metrics.n_payments <= test_days.sum()
    assert 0.5 < report.metrics.auc_roc <= 1.0
    printed = capsys.readouterr().out
    assert "XGBoost" in printed and "CP@100" in printed


@pytest.mark.slow
def test_train_writes_a_loadable_artefact(sample_slice, tmp_path):
    from models.scorer import Scorer
    from orchestration.training_job import run_train

    version_dir = run_train(
        data=sample_slice,
        until="2018-08-15",
        out=tmp_path / "models",
        train_days=14,
        config=FAST,
        state_dir=tmp_path / "state",
    )
    meta = json.loads((version_dir / "metadata.json").read_text())
    assert meta["training_window"]["label_end"].startswith("2018-08-08")
    assert meta["training_window"]["start"].startswith("2018-07-25")
    assert len(meta["data"]["sha256"]) == 64
    scorer = Scorer.load(tmp_path / "models")
    assert scorer.version == version_dir.name


def test_parse_fold_starts():
    assert [str(d) for d in parse_fold_starts("2018-08-08, 2018-08-01")] == [
        "2018-08-01",
        "2018-08-08",
    ]


@pytest.mark.parametrize(
    "args, expected",
    [
        (["train", "--until", "2018-13-01"], "--until: '2018-13-01'"),
        (
            ["train", "--until", "2018-08-01", "--data", "/nonexistent/x.parquet"],
            "/nonexistent/x.parquet: no such file",
        ),
        (
            ["backtest", "--out", "p.parquet", "--fold-starts", "2018-08-01,08-08"],
            "--fold-starts: '08-08'",
        ),
        (
            ["backtest", "--out", "p.parquet", "--data", "/nonexistent/x.parquet"],
            "/nonexistent/x.parquet: no such file",
        ),
        (["train", "--until", "2018-08-01", "--train-days", "1"], "--train-days"),
        (
            ["train", "--until", "2018-08-01", "--out", "pyproject.toml"],
            "--out: ",
        ),
        # Outputs that cannot be written are refused before the work, not after.
        (["train", "--until", "2018-08-01", "--out", "/proc/x"], "--out: "),
        (["backtest", "--out", "adir.parquet"], "--out: adir.parquet exists and"),
        (["backtest", "--out", "/proc/p.parquet"], "--out: cannot write in /proc"),
        (
            ["replay", "--from", "2018-09-04", "--to", "2018-09-04",
             "--report", "/proc/nope"],
            "--report: cannot make /proc/nope",
        ),
        (
            ["replay", "--from", "2018-09-04", "--to", "2018-09-04",
             "--rate", "nan"],
            "--rate: nan must be a positive number",
        ),
    ],
)
def test_cli_errors_are_one_line_with_exit_code_2(
    args, expected, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pyproject.toml").write_text("")  # a file where --out wants a dir
    (tmp_path / "adir.parquet").mkdir()  # a directory where --out wants a file
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    message = result.stderr if result.stderr else result.output
    lines = [line for line in message.splitlines() if line.strip()]
    assert len(lines) == 1, message
    assert expected in lines[0]
    assert "Traceback" not in result.output


def test_serve_refuses_a_taken_port_before_starting_anything():
    import socket

    from fraudmesh.errors import ConfigError
    from orchestration.serving import check_port_free

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        taken_message = f"--port: cannot listen on 127.0.0.1:{port}"
        with pytest.raises(ConfigError, match=taken_message):
            check_port_free("127.0.0.1", port)
    check_port_free("127.0.0.1", port)  # free again
    result = runner.invoke(app, ["serve", "--port", "99999"])
    assert result.exit_code == 2 and "--port" in result.output


def test_backtest_refuses_folds_beyond_the_data(sample_slice, tmp_path):
    result = runner.invoke(
        app,
        [
            "backtest",
            "--data",
            sample_slice,
            "--out",
            str(tmp_path / "p.parquet"),
            "--fold-starts",
            "2018-08-15",
        ],
    )
    assert result.exit_code == 2
    assert "fold 2018-08-15 tests up to 2018-09-04" in result.stderr
