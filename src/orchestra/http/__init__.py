"""HTTP actions on httpx: building, authenticating, retrying and decoding requests."""

from orchestra.http._auth import TokenCache
from orchestra.http._call import HttpResult, RequestParts, perform
from orchestra.http._client import default_client

__all__ = ["HttpResult", "RequestParts", "TokenCache", "default_client", "perform"]
