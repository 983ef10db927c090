from gossip.runtime.ledger import SEQ_WINDOW, Ledger


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


def test_missing_seqs_below_the_newest_seen_and_up_to_done():
    led = Ledger(0, 3, now=0.0)
    assert led.missing(1, window=10) == [] and led.top(1) == -1
    for seq in (0, 1, 4, 6):
        led.first_time(1, seq)
    assert led.top(1) == 6
    assert led.missing(1, window=10) == [2, 3, 5]
    assert led.missing(1, window=3) == [5]  # only the newest seqs: older gaps are left to the give-up
    led.mark_done(1, last_seq=8)
    assert led.missing(1, window=10) == [2, 3, 5, 7, 8]  # the tail that Done announced
    led.give_up(1)
    assert led.missing(1, window=10) == []
    led.first_time(2, 10**5 - 1)  # however far ahead a neighbour claims to be, the scan is bounded
    assert led.missing(2, window=64) == list(range(10**5 - 64, 10**5 - 1))


def test_a_complete_peer_is_still_waited_for():
    """``complete`` says it has everything, not that we have all of its updates (a lossy link)."""
    led = Ledger(0, 2, now=0.0)
    led.mark_done(1, last_seq=2)
    led.mark_complete(1)
    led.first_time(1, 0)
    assert not led.all_delivered() and led.waiting_for() == [1]
    assert led.missing(1, window=10) == [1, 2]
    led.first_time(1, 2)
    led.first_time(1, 1)
    assert led.all_delivered()


def test_skip_below_counts_older_seqs_as_seen():
    led = Ledger(0, 2, now=0.0)
    led.first_time(1, 7)
    led.skip_below(1, 5)
    assert (led.views[1].floor, led.views[1].above) == (5, {7})
    assert not led.first_time(1, 3)  # held by an adopted state: a late copy is a duplicate
    led.skip_below(1, 7)
    assert (led.views[1].floor, led.views[1].above) == (8, set())
    led.skip_below(1, 2)  # never backwards
    assert led.views[1].floor == 8
