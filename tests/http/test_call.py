"""HTTP actions: auth, request building, retries and backoff, timeouts, limits, decoding."""

from __future__ import annotations

import base64
import email.utils
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

import orchestra as o
from orchestra.executors import InMemoryExecutor
from orchestra.http import RequestParts, TokenCache, perform
from orchestra.sandbox import InProcessSandbox

pytestmark = pytest.mark.anyio

Handler = Callable[[httpx.Request], httpx.Response | Awaitable[httpx.Response]]
NO_RETRY = o.Retry(attempts=1)
NO_JITTER = o.Retry(attempts=4, backoff=0.1, jitter=False)


class Api:
    """A mock API on a virtual clock that records every request and when it came."""

    def __init__(self, handler: Handler, *, secrets: dict[str, str] | None = None) -> None:
        self.executor = InMemoryExecutor()
        self.start = self.executor.now()
        self.requests: list[httpx.Request] = []
        self.times: list[float] = []
        self.secrets = secrets or {}
        self.tokens = TokenCache()

        async def record(request: httpx.Request) -> httpx.Response:
            self.requests.append(request)
            self.times.append(self.executor.now() - self.start)
            result = handler(request)
            if not isinstance(result, httpx.Response):
                result = await result
            return result

        self.client = httpx.AsyncClient(transport=httpx.MockTransport(record))

    async def call(self, call: o.HttpCall, parts: RequestParts | None = None) -> Any:
        return await perform(
            call,
            parts or RequestParts(),
            client=self.client,
            executor=self.executor,
            secrets=self.secrets,
            tokens=self.tokens,
        )

    @property
    def elapsed(self) -> float:
        return self.executor.now() - self.start


def ok(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json={"ok": True})


def statuses(*codes: int, headers: dict[str, str] | None = None) -> Handler:
    """Answer with the given statuses in turn, then 200."""
    it = iter(codes)

    def handler(request: httpx.Request) -> httpx.Response:
        code = next(it, 200)
        return httpx.Response(code, json={"code": code}, headers=headers if code != 200 else None)

    return handler


class TestAuth:
    async def test_bearer(self) -> None:
        """Bearer auth sends the named secret as a bearer token."""
        api = Api(ok, secrets={"cms": "s3cret"})
        await api.call(o.HttpCall(url="http://api/x", auth=o.BearerAuth(token="cms")))
        assert api.requests[0].headers["authorization"] == "Bearer s3cret"

    async def test_basic(self) -> None:
        """Basic auth sends base64(user:password-secret)."""
        api = Api(ok, secrets={"pw": "p:ss"})
        await api.call(
            o.HttpCall(url="http://api/x", auth=o.BasicAuth(username="me", password="pw"))
        )
        expected = "Basic " + base64.b64encode(b"me:p:ss").decode()
        assert api.requests[0].headers["authorization"] == expected

    async def test_api_key_default_and_custom_header(self) -> None:
        """API keys go in X-API-Key or the header named."""
        api = Api(ok, secrets={"k": "key1"})
        await api.call(o.HttpCall(url="http://api/x", auth=o.ApiKeyAuth(key="k")))
        await api.call(o.HttpCall(url="http://api/x", auth=o.ApiKeyAuth(key="k", header="X-Token")))
        assert api.requests[0].headers["x-api-key"] == "key1"
        assert api.requests[1].headers["x-token"] == "key1"
        assert "x-api-key" not in api.requests[1].headers

    @pytest.mark.parametrize(
        "auth",
        [
            o.BearerAuth(token="missing"),
            o.BasicAuth(username="u", password="missing"),
            o.ApiKeyAuth(key="missing"),
            o.OAuth2ClientCredentials(
                token_url="http://auth/token", client_id="c", client_secret="missing"
            ),
        ],
    )
    async def test_missing_secret_is_a_clear_http_error(self, auth: Any) -> None:
        """A secret not given to the engine is an HttpError naming it; nothing is sent."""
        api = Api(ok)
        with pytest.raises(o.HttpError) as info:
            await api.call(o.HttpCall(url="http://api/x", auth=auth))
        assert "'missing'" in str(info.value)
        assert "secrets" in str(info.value)
        assert api.requests == []


class OAuthApi(Api):
    """An API with a token endpoint; tokens are t1, t2, ...; the API accepts ``valid``."""

    def __init__(
        self, *, expires_in: float = 3600, valid: Callable[[str], bool] = lambda t: True
    ) -> None:
        self.fetches: list[httpx.Request] = []

        def handler(request: httpx.Request) -> httpx.Response:
            if request.url.path == "/token":
                self.fetches.append(request)
                return httpx.Response(
                    200, json={"access_token": f"t{len(self.fetches)}", "expires_in": expires_in}
                )
            token = request.headers["authorization"].removeprefix("Bearer ")
            return httpx.Response(200 if valid(token) else 401, json={"token": token})

        super().__init__(handler, secrets={"cs": "client-secret"})
        self.auth = o.OAuth2ClientCredentials(
            token_url="http://auth/token", client_id="app", client_secret="cs", scope="read"
        )

    async def get(self) -> Any:
        return await self.call(o.HttpCall(url="http://api/x", auth=self.auth, retry=NO_RETRY))


class TestOAuth2:
    async def test_token_fetched_once_for_many_calls(self) -> None:
        """One token request serves many calls, concurrent ones included."""
        import anyio

        api = OAuthApi()
        async with anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(api.get)
        await api.get()
        assert len(api.fetches) == 1
        api_calls = [r for r in api.requests if r.url.path == "/x"]
        assert len(api_calls) == 6
        assert {r.headers["authorization"] for r in api_calls} == {"Bearer t1"}

    async def test_token_request_form(self) -> None:
        """The token request is a client-credentials form with basic client auth and scope."""
        api = OAuthApi()
        await api.get()
        (req,) = api.fetches
        assert req.method == "POST"
        form = dict(x.split("=") for x in req.content.decode().split("&"))
        assert form == {"grant_type": "client_credentials", "scope": "read"}
        expected = "Basic " + base64.b64encode(b"app:client-secret").decode()
        assert req.headers["authorization"] == expected

    async def test_token_fetched_again_after_expiry(self) -> None:
        """Past the token's lifetime (virtual clock) a new token is fetched."""
        api = OAuthApi(expires_in=600)
        await api.get()
        await api.executor.clock.advance(300)
        await api.get()
        assert len(api.fetches) == 1
        await api.executor.clock.advance(301)
        result = await api.get()
        assert len(api.fetches) == 2
        assert result.body == {"token": "t2"}

    async def test_refreshed_once_on_401(self) -> None:
        """A 401 fetches a fresh token once and the call succeeds with it."""
        api = OAuthApi(valid=lambda t: t != "t1")
        result = await api.get()
        assert result.status == 200
        assert result.body == {"token": "t2"}
        assert len(api.fetches) == 2
        assert result.attempts == 1

    async def test_401_twice_fails(self) -> None:
        """If the fresh token is refused too, the call fails with 401 (no third token)."""
        api = OAuthApi(valid=lambda t: False)
        with pytest.raises(o.HttpError) as info:
            await api.get()
        assert info.value.status == 401
        assert len(api.fetches) == 2
        assert len([r for r in api.requests if r.url.path == "/x"]) == 2

    async def test_token_endpoint_error(self) -> None:
        """A failing token endpoint is an HttpError naming the token URL."""

        def handler(request: httpx.Request) -> httpx.Response:
            return httpx.Response(400, json={"error": "invalid_client"})

        api = Api(handler, secrets={"cs": "x"})
        auth = o.OAuth2ClientCredentials(
            token_url="http://auth/token", client_id="a", client_secret="cs"
        )
        with pytest.raises(o.HttpError) as info:
            await api.call(o.HttpCall(url="http://api/x", auth=auth))
        assert info.value.status == 400
        assert "http://auth/token" in str(info.value)


class TestRequestBuilding:
    async def test_path_params_percent_encoded(self) -> None:
        """Path parameters are percent-encoded, slashes and spaces included; numbers as text."""
        api = Api(ok)
        call = o.HttpCall(url="http://api/p/{sku}/{n}/x")
        await api.call(call, RequestParts(path={"sku": "a b/c?d#e%", "n": 42}))
        assert api.requests[0].url.raw_path == b"/p/a%20b%2Fc%3Fd%23e%25/42/x"

    async def test_missing_path_param(self) -> None:
        """A path parameter without a value is an HttpError before anything is sent."""
        api = Api(ok)
        with pytest.raises(o.HttpError) as info:
            await api.call(o.HttpCall(url="http://api/p/{sku}"), RequestParts(path={"other": 1}))
        assert "'sku'" in str(info.value)
        assert api.requests == []

    async def test_query(self) -> None:
        """Query: strings as is, numbers and booleans as text, lists repeated, null left out."""
        api = Api(ok)
        query: dict[str, Any] = {
            "q": "a b",
            "n": 5,
            "f": True,
            "tags": ["x", "y"],
            "none": None,
            "obj": {"a": 1},
        }
        await api.call(o.HttpCall(url="http://api/s?fixed=1"), RequestParts(query=query))
        params = api.requests[0].url.params
        assert params["q"] == "a b"
        assert params["n"] == "5"
        assert params["f"] == "true"
        assert params.get_list("tags") == ["x", "y"]
        assert "none" not in params
        assert json.loads(params["obj"]) == {"a": 1}

    async def test_headers(self) -> None:
        """Header values are sent as text."""
        api = Api(ok)
        await api.call(o.HttpCall(url="http://api/x"), RequestParts(headers={"X-A": "v", "X-N": 3}))
        assert api.requests[0].headers["x-a"] == "v"
        assert api.requests[0].headers["x-n"] == "3"

    async def test_json_body(self) -> None:
        """A body is sent as JSON with its content type."""
        api = Api(ok)
        body: Any = {"a": [1, 2.5, None], "s": "ü", "big": 2**53 - 1}
        await api.call(
            o.HttpCall(url="http://api/x", method="POST"), RequestParts(body=body, has_body=True)
        )
        req = api.requests[0]
        assert req.method == "POST"
        assert req.headers["content-type"] == "application/json"
        assert json.loads(req.content) == body

    async def test_no_body_without_body_fragment(self) -> None:
        """Without a body fragment, no content is sent."""
        api = Api(ok)
        await api.call(o.HttpCall(url="http://api/x", method="DELETE"))
        assert api.requests[0].content == b""
        assert "content-type" not in api.requests[0].headers

    async def test_idempotency_key(self) -> None:
        """With idempotency_key set, the key is sent in that header."""
        api = Api(ok)
        call = o.HttpCall(url="http://api/x", method="POST", idempotency_key="Idempotency-Key")
        await api.call(call, RequestParts(idempotency_key="run:s:p:0"))
        assert api.requests[0].headers["idempotency-key"] == "run:s:p:0"


class TestRetry:
    @pytest.mark.parametrize("code", [500, 502, 503, 504, 429])
    async def test_retried_statuses(self, code: int) -> None:
        """5xx and 429 are retried; success after retries reports the attempts."""
        api = Api(statuses(code, code))
        result = await api.call(o.HttpCall(url="http://api/x", retry=NO_JITTER))
        assert result.status == 200
        assert result.attempts == 3
        assert len(api.requests) == 3

    @pytest.mark.parametrize("code", [400, 401, 403, 404, 409, 422, 501])
    async def test_other_errors_not_retried(self, code: int) -> None:
        """Other error statuses fail at once with the status."""
        api = Api(statuses(code))
        with pytest.raises(o.HttpError) as info:
            await api.call(o.HttpCall(url="http://api/x", retry=NO_JITTER))
        assert info.value.status == code
        assert info.value.attempts == 1
        assert len(api.requests) == 1

    async def test_gives_up_after_attempts(self) -> None:
        """After the last attempt the error carries status, URL and attempts."""
        api = Api(statuses(503, 503, 503, 503, 503))
        with pytest.raises(o.HttpError) as info:
            await api.call(o.HttpCall(url="http://api/x", retry=NO_JITTER))
        assert info.value.status == 503
        assert info.value.url == "http://api/x"
        assert info.value.attempts == 4
        assert len(api.requests) == 4

    async def test_exponential_backoff_without_jitter(self) -> None:
        """Delays double from backoff: 0.1, 0.2, 0.4 (virtual seconds)."""
        api = Api(statuses(500, 500, 500))
        await api.call(o.HttpCall(url="http://api/x", retry=NO_JITTER))
        assert api.times == pytest.approx([0.0, 0.1, 0.3, 0.7])

    async def test_backoff_capped(self) -> None:
        """Delays never exceed max_backoff."""
        api = Api(statuses(500, 500, 500, 500))
        retry = o.Retry(attempts=5, backoff=1, max_backoff=3, jitter=False)
        await api.call(o.HttpCall(url="http://api/x", retry=retry))
        assert api.times == pytest.approx([0, 1, 3, 6, 9])

    async def test_jitter_stays_below_backoff(self) -> None:
        """With full jitter every delay lies in [0, backoff * 2**n)."""
        api = Api(statuses(500, 500, 500))
        await api.call(o.HttpCall(url="http://api/x", retry=o.Retry(attempts=4, backoff=1)))
        delays = [b - a for a, b in zip(api.times, api.times[1:], strict=False)]
        assert all(0 <= d < 2**i for i, d in enumerate(delays))
        assert delays != [1, 2, 4]

    async def test_connect_errors_retried(self) -> None:
        """Connect errors are retried with backoff."""
        failures = iter([True, True])

        def handler(request: httpx.Request) -> httpx.Response:
            if next(failures, False):
                raise httpx.ConnectError("refused", request=request)
            return httpx.Response(200, json=1)

        api = Api(handler)
        result = await api.call(o.HttpCall(url="http://api/x", retry=NO_JITTER))
        assert result.body == 1
        assert result.attempts == 3
        assert api.times == pytest.approx([0.0, 0.1, 0.3])

    async def test_connect_error_after_attempts(self) -> None:
        """Persistent connect errors end in an HttpError without status."""

        def handler(request: httpx.Request) -> httpx.Response:
            raise httpx.ConnectError("refused", request=request)

        api = Api(handler)
        with pytest.raises(o.HttpError) as info:
            await api.call(o.HttpCall(url="http://api/x", retry=o.Retry(attempts=2, jitter=False)))
        assert info.value.status is None
        assert info.value.attempts == 2

    async def test_retry_after_seconds(self) -> None:
        """Retry-After in seconds sets the delay."""
        api = Api(statuses(429, headers={"Retry-After": "7"}))
        await api.call(o.HttpCall(url="http://api/x", retry=NO_JITTER))
        assert api.times == [0.0, 7.0]

    async def test_retry_after_http_date(self) -> None:
        """Retry-After as an HTTP date waits until then (virtual clock)."""
        api = Api(ok)
        when = datetime.fromtimestamp(api.start + 42, UTC)
        header = email.utils.format_datetime(when, usegmt=True)
        api2 = Api(statuses(503, headers={"Retry-After": header}))
        await api2.call(o.HttpCall(url="http://api/x", retry=NO_JITTER))
        assert api2.times == [0.0, 42.0]

    async def test_post_not_retried_by_default(self) -> None:
        """POST is not idempotent: a 503 fails at once."""
        api = Api(statuses(503))
        with pytest.raises(o.HttpError):
            await api.call(o.HttpCall(url="http://api/x", method="POST", retry=NO_JITTER))
        assert len(api.requests) == 1

    async def test_post_retried_when_allowed(self) -> None:
        """Retry(methods=('POST',)) retries POST."""
        api = Api(statuses(503, 503))
        retry = o.Retry(attempts=3, jitter=False, methods=("POST",))
        result = await api.call(o.HttpCall(url="http://api/x", method="POST", retry=retry))
        assert result.attempts == 3
        assert len(api.requests) == 3

    async def test_methods_limit_retries(self) -> None:
        """A GET is not retried when methods names only POST."""
        api = Api(statuses(503))
        retry = o.Retry(attempts=3, jitter=False, methods=("POST",))
        with pytest.raises(o.HttpError):
            await api.call(o.HttpCall(url="http://api/x", retry=retry))
        assert len(api.requests) == 1


class TestTimeout:
    async def test_timeout_on_virtual_clock(self) -> None:
        """A handler sleeping 30 s under a 1 s timeout is a StepTimeoutError after 1 virtual s."""
        api: Api

        async def slow(request: httpx.Request) -> httpx.Response:
            await api.executor.sleep(30)
            return httpx.Response(200)

        api = Api(slow)
        with pytest.raises(o.StepTimeoutError) as info:
            await api.call(o.HttpCall(url="http://api/x", timeout=1, retry=NO_RETRY))
        assert isinstance(info.value, TimeoutError)
        assert api.elapsed == 1.0
        assert info.value.attempts == 1

    async def test_timeouts_are_retried(self) -> None:
        """A timed-out GET is tried again; a fast second attempt succeeds."""
        api: Api
        calls = iter([30, 0])

        async def handler(request: httpx.Request) -> httpx.Response:
            await api.executor.sleep(next(calls))
            return httpx.Response(200, json="late")

        api = Api(handler)
        result = await api.call(o.HttpCall(url="http://api/x", timeout=1, retry=NO_JITTER))
        assert result.body == "late"
        assert result.attempts == 2
        assert api.times == pytest.approx([0.0, 1.1])


class TestResponse:
    async def test_size_limit_by_content_length(self) -> None:
        """A declared length over the limit fails."""
        api = Api(lambda r: httpx.Response(200, content=b"x" * 100))
        with pytest.raises(o.HttpError) as info:
            await api.call(o.HttpCall(url="http://api/x", max_response_bytes=50, retry=NO_RETRY))
        assert "limit" in str(info.value)

    async def test_size_limit_streamed(self) -> None:
        """A streamed body without a length fails once it passes the limit."""
        sent: list[int] = []

        async def chunks() -> AsyncIterator[bytes]:
            for i in range(100):
                sent.append(i)
                yield b"x" * 10

        api = Api(lambda r: httpx.Response(200, content=chunks()))
        with pytest.raises(o.HttpError) as info:
            await api.call(o.HttpCall(url="http://api/x", max_response_bytes=55, retry=NO_RETRY))
        assert "limit" in str(info.value)
        assert len(sent) < 100

    async def test_body_at_limit_is_fine(self) -> None:
        """A body of exactly the limit is accepted."""
        api = Api(lambda r: httpx.Response(200, content=b"x" * 50))
        result = await api.call(o.HttpCall(url="http://api/x", max_response_bytes=50))
        assert result.body == "x" * 50

    async def test_json_decoded(self) -> None:
        """JSON bodies are decoded, integers kept exact."""
        api = Api(lambda r: httpx.Response(200, json={"n": 2**60, "f": 1.5}))
        result = await api.call(o.HttpCall(url="http://api/x"))
        assert result.body == {"n": 2**60, "f": 1.5}
        assert result.status == 200

    async def test_non_json_kept_as_text(self) -> None:
        """A text body is kept as text."""
        api = Api(
            lambda r: httpx.Response(200, text="hello", headers={"content-type": "text/plain"})
        )
        result = await api.call(o.HttpCall(url="http://api/x"))
        assert result.body == "hello"

    async def test_text_decoded_with_its_charset(self) -> None:
        """A text body is decoded with the charset its content type names."""
        body = "café".encode("latin-1")
        api = Api(
            lambda r: httpx.Response(
                200, content=body, headers={"content-type": "text/plain; charset=iso-8859-1"}
            )
        )
        result = await api.call(o.HttpCall(url="http://api/x"))
        assert result.body == "café"

    async def test_invalid_json_kept_as_text(self) -> None:
        """A body claiming JSON that is not stays text."""
        api = Api(
            lambda r: httpx.Response(
                200, content=b"{nope", headers={"content-type": "application/json"}
            )
        )
        result = await api.call(o.HttpCall(url="http://api/x"))
        assert result.body == "{nope"

    async def test_empty_body_is_none(self) -> None:
        """An empty body is None."""
        api = Api(lambda r: httpx.Response(204))
        result = await api.call(o.HttpCall(url="http://api/x"))
        assert result.body is None
        assert result.status == 204

    async def test_error_body_in_message(self) -> None:
        """An error status names method, URL and status."""
        api = Api(lambda r: httpx.Response(404, json={"error": "no such sku"}))
        with pytest.raises(o.HttpError) as info:
            await api.call(o.HttpCall(url="http://api/x"))
        assert "GET http://api/x answered 404" in str(info.value)
        assert "no such sku" in str(info.value)


class TestHostClient:
    async def test_engine_uses_and_keeps_host_client(self) -> None:
        """The engine sends through the client it was given and does not close it."""
        seen: list[str] = []

        def handler(request: httpx.Request) -> httpx.Response:
            seen.append(str(request.url))
            return httpx.Response(200, json={"v": 1})

        client = httpx.AsyncClient(
            transport=httpx.MockTransport(handler), headers={"X-Host": "yes"}
        )
        p = o.Process(
            name="p",
            steps=(
                o.ProcessStep(
                    name="s",
                    processors=(o.Processor(name="a", call=o.HttpCall(url="http://api/a")),),
                ),
            ),
        )
        async with o.Engine(
            sandbox=InProcessSandbox(), executor=InMemoryExecutor(), client=client
        ) as engine:
            assert engine.client is client
            result = await engine.invoke(p)
        assert result.payload == {"a": {"v": 1}}
        assert seen == ["http://api/a"]
        assert not client.is_closed
        await client.aclose()
