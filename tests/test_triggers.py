import pytest

from polyak.triggers import Plateau


def fire_epochs(values, **kw):
    trig = Plateau(**kw)
    return [e for e, v in enumerate(values) if trig.update(v, epoch=e)]


def test_fires_patience_epochs_after_last_best_once():
    # best at epoch 3 (value 1.0); patience 4 -> fires at epoch 7 and never again
    values = [5.0, 4.0, 3.0, 1.0, 2.0, 1.5, 1.2, 1.1, 0.5, 3.0, 3.0, 3.0, 3.0, 3.0]
    assert fire_epochs(values, patience=4) == [7]


def test_never_fires_while_improving():
    assert fire_epochs([10.0 - e for e in range(20)], patience=1) == []


def test_mode_max_and_min_delta():
    accs = [0.5, 0.6, 0.605, 0.607, 0.61]  # improvements below min_delta 0.02 do not count
    assert fire_epochs(accs, patience=3, mode="max", min_delta=0.02) == [4]
    assert fire_epochs(accs, patience=3, mode="max") == []


def test_patience_zero_fires_on_first_update():
    assert fire_epochs([1.0, 0.5], patience=0) == [0]


def test_state_dict_round_trip_mid_count():
    values = [3.0, 2.0, 2.5, 2.6, 2.7, 2.8]
    a = Plateau(patience=4)
    for e, v in enumerate(values[:3]):
        a.update(v, e)
    b = Plateau(patience=4)
    b.load_state_dict(a.state_dict())
    assert [b.update(v, e) for e, v in enumerate(values[3:], 3)] == [False, False, True]
    with pytest.raises(ValueError, match="patience"):
        Plateau(patience=3).load_state_dict(a.state_dict())


@pytest.mark.parametrize(
    "kw, match",
    [({"patience": -1}, "patience"), ({"patience": 2.5}, "patience"),
     ({"patience": 1, "mode": "up"}, "mode"), ({"patience": 1, "min_delta": -0.1}, "min_delta")],
)
def test_invalid_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        Plateau(**kw)


def test_nan_is_rejected():
    with pytest.raises(ValueError, match="NaN"):
        Plateau(patience=1).update(float("nan"))


def test_at_epoch_fires_once_at_its_epoch_and_reads_no_metric():
    from polyak.triggers import AtEpoch

    trig = AtEpoch(3)
    assert trig.mode is None
    assert [trig.update(None, e) for e in range(6)] == [False, False, False, True, False, False]
    again = AtEpoch(3)
    again.load_state_dict(trig.state_dict())
    assert again.fired
    with pytest.raises(ValueError, match="fires at epoch 3"):
        AtEpoch(3).load_state_dict({"epoch": 4, "fired": False})
    with pytest.raises(ValueError, match="Invalid epoch"):
        AtEpoch(-1)
