from gossip.ledger import SEQ_WINDOW, Ledger


def test_each_update_counts_once_and_floor_compacts():
    led = Ledger(0, 3, now=0.0)
    assert led.first_time(1, 1)
    assert led.first_time(1, 0)
    assert not led.first_time(1, 0)
    assert not led.first_time(1, 1)
    assert led.views[1].floor == 2 and not led.views[1].above
    assert led.in_window(1, 2 + SEQ_WINDOW - 1) and not led.in_window(1, 2 + SEQ_WINDOW)


def test_two_phase_finish():
    led = Ledger(0, 3, now=0.0)
    assert not led.all_delivered()
    led.mark_done(1, last_seq=1)
    led.mark_done(2, last_seq=-1)  # sent nothing
    assert led.waiting_for() == [1]
    led.first_time(1, 0)
    led.first_time(1, 1)
    assert led.all_delivered() and not led.all_complete()
    led.mark_complete(1)
    led.mark_complete(2)
    assert led.all_complete()


def test_silent_peer_goes_down_and_comes_back():
    led = Ledger(0, 3, now=0.0)
    led.heard(1, 9.0)
    assert led.check_down(10.0, silence_s=5.0) == [2]
    assert led.check_down(10.5, silence_s=5.0) == []
    assert led.all_delivered() is False  # peer 1 still owes its Done
    led.mark_done(1, -1)
    assert led.all_delivered()  # the down peer is not waited for
    assert led.heard(2, 11.0) is True
    assert led.down() == []
