"""Content negotiation: which response codings a client accepts."""

from aiohttp import hdrs, web

_GZIP = frozenset({"gzip", "x-gzip"})


def _weight(params: list[str]) -> float:
    """The ``q`` of one Accept-Encoding element: 1 when absent, 0 when unreadable."""
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "q":
            try:
                weight = float(value.strip())
            except ValueError:
                return 0.0
            # RFC 9110 §12.4.2: 0 to 1, at most three decimals; "nan", "inf", "1e3" are not.
            return weight if 0.0 <= weight <= 1.0 and value.strip()[0].isdigit() else 0.0
    return 1.0


def accepts_gzip(request: web.BaseRequest) -> bool:
    """True when Accept-Encoding gives gzip a non-zero weight (RFC 9110 §12.5.3).

    ``gzip;q=0`` (or ``*;q=0`` with no gzip entry of its own) means "not
    gzip": the answer is then sent as it is, the identity coding every client
    takes. An unreadable weight counts as 0, so doubt means no compression.
    """
    explicit: float | None = None
    wildcard: float | None = None
    for header in request.headers.getall(hdrs.ACCEPT_ENCODING, []):
        for element in header.split(","):
            coding, *params = element.split(";")
            coding = coding.strip().lower()
            if coding in _GZIP:
                weight = _weight(params)
                explicit = weight if explicit is None else max(explicit, weight)
            elif coding == "*":
                wildcard = _weight(params)
    if explicit is not None:
        return explicit > 0
    return wildcard is not None and wildcard > 0
