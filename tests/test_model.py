"""The network, training loop, artefacts and Scorer on small synthetic arrays."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from feature_repo import transforms
from fraudmesh.errors import ArtifactError
from models.artifact import feature_contract, find_latest, save_artifact
from models.network import FraudNet, left_to_right_padded
from models.scorer import Scorer
from models.training import Normaliser, TrainConfig, split_by_day, train_model

F = len(transforms.STATIC_FEATURES)
E = len(transforms.SEQUENCE_FEATURES)
N = transforms.HISTORY_LENGTH


def synthetic(n: int = 3000, seed: int = 0):
    """Frauds are the rows whose first static feature is large."""
    rng = np.random.default_rng(seed)
    static = rng.gamma(2.0, 50.0, size=(n, F)).astype(np.float32)
    lengths = rng.integers(0, N + 1, size=n)
    sequence = rng.normal(size=(n, N, E)).astype(np.float32)
    pad = np.arange(N)[None, :] < (N - lengths)[:, None]
    sequence[pad] = 0.0
    labels = (static[:, 0] > np.quantile(static[:, 0], 0.97)).astype(np.float32)
    days = np.repeat(np.arange(20), n // 20 + 1)[:n] + 17_000
    return static, sequence, lengths, labels, days


def _identity_normaliser() -> Normaliser:
    return Normaliser(static_log=[False] * F, static_mean=[0.0] * F,
                      static_std=[1.0] * F, sequence_log=[False] * E,
                      sequence_mean=[0.0] * E, sequence_std=[1.0] * E)


def small_config(**kw) -> TrainConfig:
    base = dict(
        max_epochs=4,
        members=1,
        negative_fraction=1.0,
        patience=3,
        hidden=8,
        static_hidden=16,
        val_days=3,
        gap_days=2,
        batch_size=64,
        lr=5e-3,
    )
    base.update(kw)
    return TrainConfig(**base)


def save(tmp_path, result, **extra):
    meta = {
        "network": {
            "n_static": F,
            "n_sequence": E,
            "encoder": result.config.encoder,
            "hidden": result.config.hidden,
            "static_hidden": result.config.static_hidden,
            "dropout": result.config.dropout,
            "max_events": result.config.max_events,
            "members": result.config.members,
        },
        "normalisation": result.normaliser.to_dict(),
        **extra,
    }
    return save_artifact(tmp_path, result.net.state_dict(), meta)


@pytest.fixture(scope="module")
def trained():
    static, sequence, lengths, labels, days = synthetic()
    return train_model(static, sequence, lengths, labels, days, small_config())


def test_left_to_right_padding_keeps_order():
    seq = torch.tensor([[[0.0], [0.0], [1.0], [2.0]], [[1.0], [2.0], [3.0], [4.0]]])
    out = left_to_right_padded(seq, torch.tensor([2, 4]))
    assert out[0, :2, 0].tolist() == [1.0, 2.0]
    assert out[1, :, 0].tolist() == [1.0, 2.0, 3.0, 4.0]


@pytest.mark.parametrize("encoder", ["gru", "attention", "none"])
def test_network_ignores_padding_and_handles_empty_history(encoder):
    torch.manual_seed(0)
    net = FraudNet(F, E, encoder=encoder, hidden=8, static_hidden=8).eval()
    static = torch.randn(3, F)
    seq = torch.randn(3, N, E)
    lengths = torch.tensor([0, 3, N])
    changed = seq.clone()
    changed[1, : N - 3] = 99.0  # padding positions of row 1
    changed[0] = 5.0  # row 0 has no history at all
    with torch.no_grad():
        a = net(static, seq, lengths)
        b = net(static, changed, lengths)
    assert a.shape == (3,)
    torch.testing.assert_close(a[:2], b[:2])


@pytest.mark.parametrize("encoder", ["gru", "attention", "none"])
def test_predict_serves_a_trace_only_when_it_matches_the_network(encoder):
    torch.manual_seed(0)
    net = FraudNet(F, E, encoder=encoder, hidden=8, static_hidden=8)
    normaliser = _identity_normaliser()
    scorer = Scorer(net, normaliser, transforms.STATIC_FEATURES, version="t")
    static, sequence, lengths, _, _ = synthetic(40, seed=3)
    for n_events in (N, 5):  # one module per history length
        got = scorer.predict(static, sequence[:, -n_events:],
                             np.minimum(lengths, n_events))
        with torch.inference_mode():
            want = torch.sigmoid(net(*[torch.from_numpy(a) for a in normaliser.apply(
                static, sequence[:, -n_events:], np.minimum(lengths, n_events))],
                torch.from_numpy(np.minimum(lengths, n_events))))
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-6)
        module = scorer._inference(n_events)
        # Whichever module serves, it gave the network's scores; the pooled
        # encoders trace (the point: batch-1 speed), and a trace is frozen.
        if encoder != "gru":
            assert isinstance(module, torch.jit.ScriptModule)
    scorer.prepare(7)
    assert 7 in scorer._traced


def test_normaliser_fits_training_rows_and_zeroes_padding():
    static = np.array([[1.0, 1000.0], [3.0, 1.0], [np.nan, 2.0]], dtype=np.float32)
    seq = np.ones((3, 4, 1), dtype=np.float32)
    lengths = np.array([1, 4, 0])
    norm = Normaliser.fit(static[:2, :1], seq[:2], lengths[:2])
    s, q = norm.apply(static[:, :1], seq, lengths)
    assert s[:, 0].tolist() == pytest.approx([-1.0, 1.0, 0.0])  # NaN -> mean
    assert (q[0, :3] == 0).all() and (q[2] == 0).all()


def test_split_by_day_leaves_the_gap_out():
    days = np.arange(30)
    train, val = split_by_day(days, val_days=7, gap_days=7)
    assert days[val].tolist() == list(range(23, 30))
    assert days[train].max() == 15
    train, val = split_by_day(np.arange(7), val_days=7, gap_days=7)
    assert val.sum() == 1 and train.sum() == 6  # short window: no gap


def test_training_learns_and_is_deterministic(trained):
    static, sequence, lengths, labels, days = synthetic()
    again = train_model(static, sequence, lengths, labels, days, small_config())
    assert trained.val_metrics["val_ap"] > 0.5
    assert trained.best_epoch >= 1
    for key, value in trained.net.state_dict().items():
        torch.testing.assert_close(value, again.net.state_dict()[key])


def test_artifact_round_trip_and_scorer_contract(tmp_path, trained):
    path = save(tmp_path, trained, training_window={"start": "2018-07-01"})
    assert find_latest(tmp_path) == path
    meta = json.loads((path / "metadata.json").read_text())
    assert meta["static_features"] == transforms.STATIC_FEATURES
    assert set(meta["libraries"]) >= {"torch", "numpy", "feast", "python"}

    scorer = Scorer.load(tmp_path)
    assert scorer.version == path.name
    static, sequence, lengths, _, _ = synthetic(50, seed=1)
    scores = scorer.predict(static, sequence, lengths)
    assert scores.dtype == np.float32 and scores.shape == (50,)
    assert ((scores >= 0) & (scores <= 1)).all()
    order = np.random.default_rng(2).permutation(50)
    shuffled = scorer.predict(static[order], sequence[order], lengths[order])
    np.testing.assert_allclose(shuffled, scores[order], rtol=1e-5, atol=1e-6)
    single = scorer.predict(static[:1], sequence[:1], lengths[:1])
    np.testing.assert_allclose(single, scores[:1], rtol=1e-5, atol=1e-6)
    expected = torch.sigmoid(
        trained.net(
            *[
                torch.from_numpy(a)
                for a in trained.normaliser.apply(static, sequence, lengths)
            ],
            torch.from_numpy(lengths),
        )
    )
    np.testing.assert_allclose(scores, expected.detach().numpy(), rtol=1e-5)

    reasons = scorer.explain(static, sequence, lengths, top_k=2)
    assert len(reasons) == 50
    for row in reasons:
        assert len(row) <= 2
        for name, value in row:
            assert name in transforms.STATIC_FEATURES and value > 0
    assert scorer.predict(static[:0], sequence[:0], lengths[:0]).shape == (0,)


def test_find_latest_picks_the_newest_and_ignores_partial(tmp_path, trained):
    first = save(tmp_path, trained)
    (tmp_path / ".v99999999T000000Z-dead.tmp-1").mkdir()
    (tmp_path / "v99999999T000000Z-nometa").mkdir()
    assert find_latest(tmp_path) == first
    assert find_latest(tmp_path / "absent") is None


def test_load_refuses_a_feature_list_mismatch(tmp_path, trained):
    contract = feature_contract()
    path = save(
        tmp_path,
        trained,
        static_features=contract["static_features"][:-1] + ["retired_feature"],
    )
    with pytest.raises(ArtifactError) as info:
        Scorer.load(path)
    message = str(info.value)
    assert str(path) in message
    assert "retired_feature" in message
    assert contract["static_features"][-1] in message


def test_load_names_the_directory_when_empty_or_corrupt(tmp_path, trained):
    with pytest.raises(ArtifactError, match=str(tmp_path)):
        Scorer.load(tmp_path)
    path = save(tmp_path, trained)
    (path / "model.pt").write_bytes(b"not torch")
    with pytest.raises(ArtifactError, match="model.pt"):
        Scorer.load(path)


def test_predict_rejects_inputs_of_the_wrong_shape(tmp_path, trained):
    scorer = Scorer.load(save(tmp_path, trained))
    static, sequence, lengths, _, _ = synthetic(4)
    with pytest.raises(ArtifactError, match="do not fit"):
        scorer.predict(static[:, :-1], sequence, lengths)


def test_score_inputs_explains_only_payments_at_or_above_the_threshold(
    tmp_path, trained
):
    from feature_repo.transforms import ModelInput
    from services.model import score_inputs

    save(tmp_path, trained)
    scorer = Scorer.load(tmp_path)
    static, sequence, lengths, _, _ = synthetic(40, seed=3)
    inputs = [
        ModelInput(static=static[i], sequence=sequence[i], length=int(lengths[i]))
        for i in range(40)
    ]
    everything = score_inputs(scorer, inputs)
    threshold = float(np.median([r["score"] for r in everything]))
    some = score_inputs(scorer, inputs, explain_min_score=threshold)

    assert [r["score"] for r in some] == [r["score"] for r in everything]
    for full, partial in zip(everything, some, strict=True):
        if full["score"] >= threshold:
            assert partial["contributions"] == full["contributions"]
        else:
            assert partial["contributions"] == []
    assert any(r["contributions"] for r in some)


@pytest.mark.parametrize("encoder", ["attention", "none"])
def test_a_stacked_ensemble_gives_the_ensembles_logits(encoder):
    from models.network import FraudEnsemble, StackedEnsemble

    torch.manual_seed(1)
    ensemble = FraudEnsemble([
        FraudNet(F, E, encoder=encoder, hidden=8, static_hidden=16, max_events=6)
        for _ in range(3)]).eval()
    stacked = StackedEnsemble.of(ensemble)
    assert stacked is not None
    gen = torch.Generator().manual_seed(2)
    for batch, n_events in ((1, N), (9, N), (4, 3), (3, 0)):
        lengths = torch.randint(0, n_events + 1, (batch,), generator=gen)
        lengths[0] = 0  # an empty history in every batch
        args = (torch.randn(batch, F, generator=gen),
                torch.randn(batch, n_events, E, generator=gen), lengths)
        with torch.inference_mode():
            torch.testing.assert_close(stacked(*args), ensemble(*args),
                                       rtol=1e-5, atol=1e-6)


def test_only_ensembles_of_pooled_or_no_encoders_are_stacked():
    from models.network import FraudEnsemble, StackedEnsemble

    def net(encoder, hidden=8):
        return FraudNet(F, E, encoder=encoder, hidden=hidden, static_hidden=8)

    assert StackedEnsemble.of(net("attention")) is None  # one network
    assert StackedEnsemble.of(FraudEnsemble([net("gru"), net("gru")])) is None
    mixed = FraudEnsemble([net("attention", 8), net("attention", 16)])
    assert StackedEnsemble.of(mixed) is None


def test_a_scorer_serves_an_ensemble_as_a_stacked_trace():
    from models.network import FraudEnsemble

    torch.manual_seed(0)
    ensemble = FraudEnsemble([
        FraudNet(F, E, encoder="attention", hidden=8, static_hidden=8)
        for _ in range(2)])
    normaliser = _identity_normaliser()
    scorer = Scorer(ensemble, normaliser, transforms.STATIC_FEATURES, version="t")
    static, sequence, lengths, _, _ = synthetic(30, seed=4)
    got = scorer.predict(static, sequence, lengths)
    assert scorer._inference(N).original_name == "StackedEnsemble"
    s, q = normaliser.apply(static, sequence, lengths)
    with torch.inference_mode():
        want = torch.sigmoid(ensemble(torch.from_numpy(s), torch.from_numpy(q),
                                      torch.from_numpy(lengths)))
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-6)


def test_an_ensemble_is_the_mean_logit_of_members_trained_apart(tmp_path):
    from models.network import FraudEnsemble

    static, sequence, lengths, labels, days = synthetic()
    result = train_model(
        static, sequence, lengths, labels, days, small_config(members=2, max_epochs=2)
    )
    assert isinstance(result.net, FraudEnsemble)
    first, second = result.net.members
    # Different seeds: the members differ.
    assert not torch.equal(
        first.static_mlp[0].weight, second.static_mlp[0].weight
    )
    assert result.network_spec()["members"] == 2
    assert len(result.history) == result.epochs_run

    path = save(tmp_path, result)
    scorer = Scorer.load(path)
    probe = synthetic(20, seed=5)
    got = scorer.predict(*probe[:3])
    s, q = result.normaliser.apply(*probe[:3])
    args = (torch.from_numpy(s), torch.from_numpy(q), torch.from_numpy(probe[2]))
    with torch.inference_mode():
        mean_logit = (first(*args) + second(*args)) / 2
    np.testing.assert_allclose(got, torch.sigmoid(mean_logit).numpy(), rtol=1e-5)
    assert len(scorer.explain(*probe[:3])) == 20
