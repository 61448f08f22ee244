"""`dutrain.errors.disk_full`: ENOSPC found directly, through a cause chain, or as the text a Ray
task error carries — covered here too, where the tmpfs end-to-end tests skip."""

from __future__ import annotations

import errno

from dutrain.errors import disk_full


def test_enospc_direct_chained_and_by_text():
    full = OSError(errno.ENOSPC, "No space left on device")
    assert disk_full(full)
    try:
        try:
            raise full
        except OSError as inner:
            raise RuntimeError("writing part-3.parquet failed") from inner
    except RuntimeError as outer:
        assert disk_full(outer)
    assert disk_full(RuntimeError("ray.exceptions.RayTaskError: OSError: [Errno 28] "
                                  "No space left on device"))


def test_other_errors_are_not_a_full_disk():
    assert not disk_full(OSError(errno.EACCES, "Permission denied"))
    assert not disk_full(ValueError("bad value"))
    loop = RuntimeError("a")
    loop.__context__ = RuntimeError("b")
    loop.__context__.__context__ = loop  # a cycle must end, not hang
    assert not disk_full(loop)
