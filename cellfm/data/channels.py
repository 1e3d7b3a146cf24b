"""Match channels across stores by name, so every crop has the same channels in the same order."""

from __future__ import annotations

from cellfm.data.stores import Image


def match_channels(images: list[Image], channels: list[str] | None = None) -> list[str]:
    """Set each image's channel selection to `channels` (default: the first store's channels).

    Stores whose channel sets differ fail with a message listing both sets, unless `channels`
    names a subset every store has. Same set in another order is reordered by name.
    """
    by_store: dict[str, list[Image]] = {}
    for im in images:
        by_store.setdefault(im.uri, []).append(im)
    first_uri = next(iter(by_store))
    first = by_store[first_uri][0].stored_channel_names
    wanted = list(channels) if channels else list(first)
    if len(set(wanted)) != len(wanted):
        raise ValueError(f"duplicate channel names in {wanted}")
    for uri, group in by_store.items():
        names = group[0].stored_channel_names
        if len(set(names)) != len(names):
            raise ValueError(f"{uri}: duplicate channel names {names}; cannot match channels by name")
        if not channels and set(names) != set(first):
            raise ValueError(
                f"channel sets differ: {first_uri} has {first}, {uri} has {names}; "
                "pass channels=[...] to use the channels they share"
            )
        missing = [c for c in wanted if c not in names]
        if missing:
            raise ValueError(f"{uri}: lacks channels {missing}; it has {names}, requested {wanted}")
        select = [names.index(c) for c in wanted]
        for im in group:
            im.channel_select = None if select == list(range(len(names))) else select
    return wanted
