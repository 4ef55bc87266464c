"""The CLI build table's metric columns come from the metric specs, never from family names in cli.py.

The expected columns are the ones cli.py listed by hand before the specs existed, so the table a user sees
is unchanged: the six core figures, then a family's own figures only where some artifact reports them.
"""

from __future__ import annotations

from voxport.cli import metric_columns

CORE = [
    ("forced SNR dB", "forced_snr_db", 1),
    ("SNR dB", "snr_db", 1),
    ("log-mel dB", "logmel_dtw_db", 2),
    ("MCD dB", "mcd_db", 2),
    ("dur match", "duration_match", 3),
    ("len ratio", "length_ratio", 3),
]


def test_core_columns_for_a_family_without_metrics_of_its_own() -> None:
    measured = [{"forced_snr_db": 30.0, "snr_db": None, "hidden_snr_db": 12.0}]
    assert metric_columns("vits", measured) == CORE
    assert metric_columns(None, measured) == CORE  # no family recorded: core only
    assert metric_columns("no_such_family", measured) == CORE


def test_a_family_metric_shows_only_where_an_artifact_has_a_figure() -> None:
    # one artifact measured the hidden state, none the latent: one extra column
    measured = [
        {"hidden_snr_db": None, "latent_snr_db": None},
        {"hidden_snr_db": 41.5, "latent_snr_db": None},
    ]
    assert metric_columns("pocket_tts", measured) == [*CORE, ("hidden SNR dB", "hidden_snr_db", 1)]
    both = [{"hidden_snr_db": 41.5, "latent_snr_db": 20.0}]
    assert metric_columns("pocket_tts", both)[len(CORE) :] == [
        ("hidden SNR dB", "hidden_snr_db", 1),
        ("latent SNR dB", "latent_snr_db", 1),
    ]
    assert metric_columns("pocket_tts", [{"hidden_snr_db": None}]) == CORE
