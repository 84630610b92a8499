"""fraudmesh.logging hides one library warning and one Ray notice, nothing else."""

import warnings

from fraudmesh.logging import quiet_library_notices


def test_only_the_library_notice_is_hidden():
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")  # what Feast's filters amount to
        quiet_library_notices()
        warnings.warn(
            "fetch_arrow_table() is deprecated, use to_arrow_table() instead.",
            DeprecationWarning,
            stacklevel=1,
        )
        warnings.warn("something else", RuntimeWarning, stacklevel=1)
    assert [str(w.message) for w in seen] == ["something else"]


def test_ray_token_auth_on_notice_is_hidden_and_the_off_notice_is_not(caplog):
    import logging

    from fraudmesh.logging import quiet_ray_notices

    quiet_ray_notices()
    quiet_ray_notices()  # twice: one filter
    logger = logging.getLogger(
        "ray._private.authentication.authentication_token_setup")
    assert len(logger.filters) == 1
    with caplog.at_level(logging.WARNING, logger=logger.name):
        logger.warning("Token authentication is enabled for this Ray cluster. "
                       "Set RAY_AUTH_MODE=disabled to opt out.")
        logger.warning("Token authentication is disabled for this Ray cluster.")
    assert [r.getMessage()[:40] for r in caplog.records] == [
        "Token authentication is disabled for thi"]
