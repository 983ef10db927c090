from gossip.config import CommunicationConfig
from gossip.runtime.trigger import CONFIDENCE, GRAD_NORM, SYNC_INTERVAL, Trigger


def test_sync_interval_is_a_hard_cap():
    t = Trigger(CommunicationConfig(sync_interval=5, confidence_threshold=0.0, grad_norm_threshold=0.0))
    fired = [t.observe(0.99, 1.0) for _ in range(15)]
    assert fired == ([None] * 4 + [SYNC_INTERVAL]) * 3
    assert t.fired[SYNC_INTERVAL] == 3


def test_low_confidence_syncs_every_batch():
    t = Trigger(CommunicationConfig(sync_interval=5, confidence_threshold=0.7, grad_norm_threshold=0.0))
    assert [t.observe(0.3, 1.0) for _ in range(3)] == [CONFIDENCE] * 3
    assert t.observe(0.9, 1.0) is None


def test_grad_norm_change_fires_only_on_a_real_change():
    t = Trigger(CommunicationConfig(sync_interval=100, confidence_threshold=0.0, grad_norm_threshold=0.15))
    for _ in range(20):
        assert t.observe(0.9, 1.0) is None or t.fired[GRAD_NORM] == 0
    t.mark_synced(SYNC_INTERVAL)
    assert all(t.observe(0.9, 1.02) is None for _ in range(5))
    results = [t.observe(0.9, 3.0) for _ in range(5)]
    assert GRAD_NORM in results


def test_state_round_trip():
    t = Trigger(CommunicationConfig())
    t.observe(0.5, 2.0)
    u = Trigger(CommunicationConfig())
    u.load_state_dict(t.state_dict())
    assert u.state_dict() == t.state_dict()
