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


def test_a_checkpoint_keeps_each_schedule_as_the_dict_of_its_attributes():
    """The saved format of every checkpoint so far: both schedules save their attributes as a plain
    dict and load such a dict back (what `train/resume.py` stores under "schedule")."""
    from train.schedule import PlateauSchedule, StepSchedule

    s = StepSchedule(0.01, steps=(2, 4))
    s.on_epoch(3)
    assert s.state_dict() == {"base": 0.01, "steps": (2, 4), "lr": pytest.approx(0.001)}
    t = StepSchedule(0.5)
    t.load_state_dict({"base": 0.1, "steps": (1,), "lr": 0.1})  # as an older checkpoint holds it
    assert (t.on_validation(0.3), t.on_epoch(1)) == pytest.approx((0.1, 0.01))
    p = PlateauSchedule(0.01, patience=1)
    p.on_validation(0.5)
    saved = p.state_dict()
    assert saved == {"lr": 0.01, "drops": 3, "patience": 1, "min_delta": 1e-4, "started_below": 1.0,
                     "started": True, "best": 0.5, "bad": 0, "dropped": 0}
    saved["lr"] = 1.0                                # a copy: the schedule is not changed
    assert p.lr == 0.01
