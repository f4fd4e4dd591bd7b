"""The LFS batch API over HTTP (blocking httpx; the transfer agent asks it per object).

``hrefs`` posts one download batch to the LFS endpoint's candidates (the mirror rules'
rewrite of the endpoint, best first) until one answers. A 401 is answered once with the
user's git credential for *that candidate's* host (``git credential fill``): a credential is
never sent to a host it was not given for, so the origin's never reaches a mirror.
"""

from __future__ import annotations

import base64
from collections.abc import Callable

import httpx

from ..core.errors import SourceError
from ..core.lfs import (
    MEDIA_TYPE,
    Href,
    LfsProtocolError,
    ObjectError,
    batch_request,
    batch_url,
)
from ..core.lfs import (
    parse_batch as _parse,
)

Credentials = Callable[[str], tuple[str, str] | None]
TIMEOUT = 30.0


def hrefs(
    candidates: list[str],
    objects: list[tuple[str, int]],
    credentials: Credentials,
    client: httpx.Client | None = None,
) -> dict[str, Href | ObjectError]:
    """Each object's download href from the first endpoint candidate that answers."""
    http = client or httpx.Client(timeout=TIMEOUT, follow_redirects=False, trust_env=False)
    causes = []
    try:
        for endpoint in candidates:
            url = batch_url(endpoint)
            headers = {"Accept": MEDIA_TYPE, "Content-Type": MEDIA_TYPE}
            body = batch_request(objects)
            try:
                r = http.post(url, content=body, headers=headers)
                if r.status_code == 401:
                    cred = credentials(url)  # for this host alone
                    if cred is not None:
                        token = base64.b64encode(f"{cred[0]}:{cred[1]}".encode()).decode()
                        auth = {**headers, "Authorization": f"Basic {token}"}
                        r = http.post(url, content=body, headers=auth)
                if r.status_code != 200:
                    causes.append(f"{endpoint}: HTTP {r.status_code}")
                    continue
                return _parse(r.json(), {oid for oid, _ in objects})
            except (httpx.HTTPError, ValueError, LfsProtocolError) as e:
                causes.append(f"{endpoint}: {type(e).__name__}")
    finally:
        if client is None:
            http.close()
    raise SourceError(f"no LFS batch API answered ({'; '.join(causes) or 'no endpoint'})")
