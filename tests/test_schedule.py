"""The learning-rate schedules of Section 5 (train/schedule.py)."""
import pytest


def test_step_schedule_and_plateau():
    from train.schedule import PlateauSchedule, StepSchedule

    s = StepSchedule(0.01, steps=(2, 4))
    assert [round(s.on_epoch(e), 6) for e in range(6)] == [0.01, 0.01, 0.001, 0.001, 0.0001, 0.0001]
    p = PlateauSchedule(0.01, drops=3, patience=1)
    lrs = [p.on_validation(e) for e in (0.5, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4)]
    assert lrs == pytest.approx([0.01, 0.01, 0.001, 0.0001, 0.00001, 0.00001, 0.00001])  # three drops, no more


def test_plateau_does_not_fire_before_the_error_starts_to_improve():
    """A flat start at chance (10 classes: 0.9) is not "stopped improving"; once below 0.9 x chance
    the usual rule applies, and the state survives a checkpoint."""
    from train.schedule import PlateauSchedule

    p = PlateauSchedule(0.01, drops=3, patience=2, started_below=0.81)
    flat = [p.on_validation(e) for e in (0.9, 0.905, 0.9, 0.895, 0.9, 0.9)]
    assert flat == [0.01] * 6 and not p.started
    assert [p.on_validation(e) for e in (0.6, 0.5)] == [0.01, 0.01] and p.started
    q = PlateauSchedule(0.01, drops=3, patience=2, started_below=0.81)
    q.load_state_dict(p.state_dict())
    assert [q.on_validation(e) for e in (0.5, 0.5, 0.5, 0.5)] == pytest.approx([0.01, 0.001, 0.001, 0.0001])
