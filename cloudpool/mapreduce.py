"""``CloudPoolExecutor.map_reduce``: map over inputs, then reduce all results or one set per object.

Lithops users expect ``map_reduce``; here it is a thin layer over ``map`` and ``submit``:
the map calls run as usual (an ``objects(...)`` input is partitioned for the executor),
and each reduction is one more call on the same executor, so it runs where the map ran
(on a cloud backend, next to the data and the results) rather than on the client.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, List, Optional

__all__ = ["map_reduce"]


def map_reduce(executor: Any, map_fn: Callable[[Any], Any], data: Iterable[Any],
               reduce_fn: Callable[[List[Any]], Any], *, per_object: bool = False,
               timeout: Optional[float] = None) -> Any:
    """``reduce_fn([map_fn(x) for x in data])``, computed on ``executor``.

    With ``per_object=True`` the items must be object parts (``objects(...)``): the result
    is a dict ``{object url: reduce_fn([map_fn(part) for each part of that object])}`` in
    listing order, one reduction call per object. Exceptions of ``map_fn`` or
    ``reduce_fn`` are raised here, as ``map`` does; ``timeout`` is
    passed to ``map`` and to each wait for a reduction.
    """
    if not callable(map_fn) or not callable(reduce_fn):
        raise TypeError("map_reduce() needs a callable map_fn and reduce_fn")
    if not isinstance(per_object, bool):
        raise TypeError(f"per_object must be True or False, not {per_object!r}")
    items = list(executor._partitioned(data))
    if per_object:
        missing = [x for x in items if not isinstance(getattr(x, "url", None), str)]
        if missing:
            raise TypeError(f"map_reduce(per_object=True) needs object parts (from "
                            f"cloudpool.objects(...)), got {type(missing[0]).__name__}")
    results = list(executor.map(map_fn, items, timeout=timeout))
    if not per_object:
        return executor.submit(reduce_fn, results).result(timeout)
    groups: Dict[str, List[Any]] = {}
    for item, result in zip(items, results):
        groups.setdefault(item.url, []).append(result)
    futures = {url: executor.submit(reduce_fn, group) for url, group in groups.items()}
    return {url: fut.result(timeout) for url, fut in futures.items()}
