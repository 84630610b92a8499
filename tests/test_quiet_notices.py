"""fraudmesh.logging.quiet_library_notices hides two library notices only."""

import warnings

from fraudmesh.logging import quiet_library_notices


def test_only_the_two_library_notices_are_hidden():
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")  # what Feast's filters amount to
        quiet_library_notices()
        warnings.warn(
            "On demand feature view is an experimental feature. This API is stable",
            RuntimeWarning,
            stacklevel=1,
        )
        warnings.warn(
            "fetch_arrow_table() is deprecated, use to_arrow_table() instead.",
            DeprecationWarning,
            stacklevel=1,
        )
        warnings.warn("something else", RuntimeWarning, stacklevel=1)
    assert [str(w.message) for w in seen] == ["something else"]
