import pytest

from tinylm.train import lr_at


def lr(step, progress, schedule, **kw):
    return lr_at(step, progress, lr=1.0, schedule=schedule, warmup_steps=kw.pop("warmup", 0), **kw)


def test_warmup_is_linear_in_steps():
    assert [lr(s, 0.0, "constant", warmup=4) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]


def test_cosine_runs_from_peak_to_floor():
    assert lr(0, 0.0, "cosine") == pytest.approx(1.0)
    assert lr(0, 0.5, "cosine", min_lr_ratio=0.1) == pytest.approx(0.55)
    assert lr(0, 1.0, "cosine", min_lr_ratio=0.1) == pytest.approx(0.1)


def test_wsd_is_flat_then_decays_linearly_to_the_floor():
    values = [lr(0, p, "wsd", decay_fraction=0.4) for p in (0.0, 0.3, 0.6, 0.8, 1.0)]
    assert values == pytest.approx([1.0, 1.0, 1.0, 0.5, 0.0])


def test_unknown_schedule_is_rejected():
    with pytest.raises(ValueError, match="cosine, wsd, constant"):
        lr(0, 0.5, "linear")
