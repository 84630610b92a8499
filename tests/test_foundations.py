from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from fraudmesh.currency import minor_unit_exponent, to_major, to_minor
from fraudmesh.dataset import SAMPLE_PATH, load_transactions
from fraudmesh.errors import DataError
from fraudmesh.schemas import Payment, PaymentRequest


def _request(**overrides):
    body = {
        "id": "pi_1",
        "amount": 1050,
        "currency": "eur",
        "customer": "cus_1",
        "created": 1_533_081_600,
        "metadata": {"terminal_id": "term_1"},
    }
    body.update(overrides)
    return body


def test_minor_units_follow_the_currency():
    assert minor_unit_exponent("JPY") == 0
    assert minor_unit_exponent("kwd") == 3
    assert to_major(1050, "eur") == 10.5
    assert to_major(1050, "jpy") == 1050
    assert to_major(1050, "kwd") == 1.05
    assert to_minor(10.5, "eur") == 1050


def test_payment_is_normalised_to_utc_and_major_units():
    payment = Payment.from_request(PaymentRequest.model_validate(_request()))
    assert payment.amount == 10.5
    assert payment.created == datetime(2018, 8, 1, tzinfo=UTC)
    assert payment.terminal_id == "term_1"


@pytest.mark.parametrize(
    ("overrides", "field"),
    [({"currency": "zzz"}, "currency"), ({"amount": -1}, "amount")],
)
def test_bad_payment_names_the_field(overrides, field):
    with pytest.raises(ValidationError) as info:
        PaymentRequest.model_validate(_request(**overrides))
    assert info.value.errors()[0]["loc"] == (field,)


def test_sample_loads_in_time_order():
    frame = load_transactions(
        SAMPLE_PATH,
        start=datetime(2018, 8, 1, tzinfo=UTC),
        end=datetime(2018, 8, 2, tzinfo=UTC),
    )
    assert frame["tx_datetime"].is_monotonic_increasing
    assert frame["tx_datetime"].min() >= datetime(2018, 8, 1, tzinfo=UTC)
    assert frame["customer_key"].str.startswith("cus_").all()


def test_missing_column_names_file_and_column(tmp_path):
    import pandas as pd

    path = tmp_path / "bad.parquet"
    pd.DataFrame({"transaction_id": [1]}).to_parquet(path)
    with pytest.raises(DataError) as info:
        load_transactions(path)
    assert "bad.parquet" in str(info.value)
    assert "tx_datetime" in str(info.value)


def test_a_relative_state_dir_becomes_absolute(tmp_path, monkeypatch):
    from fraudmesh.config import Settings

    monkeypatch.chdir(tmp_path)
    settings = Settings(state_dir=".fraudmesh")
    assert settings.state_dir == tmp_path / ".fraudmesh"
    assert settings.models_path.is_absolute()
