"""fraudmesh.replica.settle: start-up objects leave the cyclic collector's reach."""

import gc

from fraudmesh.replica import settle


def test_settle_freezes_what_is_alive_now():
    made_at_start = [{"n": i} for i in range(1000)]
    try:
        settle()
        assert gc.get_freeze_count() >= len(made_at_start)
        assert gc.isenabled()  # later garbage is still collected
    finally:
        gc.unfreeze()
