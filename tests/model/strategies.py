"""Hypothesis strategies that generate valid processes of every step, call and auth kind."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

import orchestra as o
from orchestra.model._call import HTTP_METHODS

NAME_RE = r"[A-Za-z_][A-Za-z0-9_-]*"
names = st.from_regex(NAME_RE, fullmatch=True).filter(lambda s: len(s) <= 20)
identifiers = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True)
fragments = st.text(max_size=30)
positive = st.floats(min_value=0.001, max_value=1e6, allow_nan=False, allow_infinity=False)
not_negative = st.floats(min_value=0.0, max_value=1e6, allow_nan=False, allow_infinity=False)

json_values: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
json_objects = st.dictionaries(st.text(max_size=5), json_values, max_size=3)

hosts = st.from_regex(r"[a-z][a-z0-9]{0,8}(\.[a-z][a-z0-9]{0,5}){0,2}", fullmatch=True)
segments = st.from_regex(r"[A-Za-z0-9_.~-]{1,8}", fullmatch=True)
path_params = identifiers.map(lambda n: "{" + n + "}")


@st.composite
def urls(draw: st.DrawFn) -> tuple[str, bool]:
    """Return an absolute http(s) URL and whether it has path parameters."""
    scheme = draw(st.sampled_from(["http", "https"]))
    port = draw(st.none() | st.integers(1, 65535))
    parts = draw(st.lists(segments | path_params, max_size=4))
    query = draw(st.none() | st.from_regex(r"[a-z]{1,5}=[a-z0-9]{0,5}", fullmatch=True))
    url = (
        f"{scheme}://{draw(hosts)}" + (f":{port}" if port else "") + "".join("/" + p for p in parts)
    )
    if query:
        url += "?" + query
    return url, any(p.startswith("{") for p in parts)


retries = st.builds(
    o.Retry,
    attempts=st.integers(1, 10),
    backoff=not_negative,
    max_backoff=not_negative,
    jitter=st.booleans(),
    methods=st.none() | st.lists(st.sampled_from(sorted(HTTP_METHODS)), max_size=3).map(tuple),
)

auths = st.none() | st.one_of(
    st.builds(o.BearerAuth, token=names),
    st.builds(o.BasicAuth, username=st.text(max_size=10), password=names),
    st.builds(o.ApiKeyAuth, key=names, header=st.sampled_from(["X-API-Key", "X-Token"])),
    st.builds(
        o.OAuth2ClientCredentials,
        token_url=urls().map(lambda u: u[0]),
        client_id=st.text(min_size=1, max_size=10),
        client_secret=names,
        scope=st.none() | st.text(max_size=10),
    ),
)


@st.composite
def http_calls(draw: st.DrawFn) -> o.HttpCall:
    """Return a valid HTTP call; a URL with parameters gets a ``path`` fragment."""
    url, has_params = draw(urls())
    return o.HttpCall(
        url=url,
        method=draw(st.sampled_from(sorted(HTTP_METHODS))),
        path=draw(fragments) if has_params else draw(st.none() | fragments),
        headers=draw(st.none() | fragments),
        query=draw(st.none() | fragments),
        body=draw(st.none() | fragments),
        auth=draw(auths),
        timeout=draw(positive),
        retry=draw(st.just(o.Retry()) | retries),
        max_response_bytes=draw(st.integers(1, 2**40)),
        idempotency_key=draw(st.none() | st.just("Idempotency-Key")),
    )


calls = st.one_of(
    http_calls(),
    st.builds(o.FunctionCall, name=names, timeout=st.none() | positive),
    st.builds(o.ActionCall, kind=names, params=json_objects, timeout=st.none() | positive),
)


@st.composite
def processors(draw: st.DrawFn, name: str, earlier: list[str]) -> o.Processor:
    """Return a processor called ``name`` that needs some of ``earlier`` (so needs form a DAG)."""
    on_error: Any = draw(st.sampled_from(["fail", "fallback"]))
    needs = draw(st.lists(st.sampled_from(earlier), unique=True, max_size=3)) if earlier else []
    return o.Processor(
        name=name,
        call=draw(calls),
        needs=tuple(needs),
        when=draw(st.none() | fragments),
        input=draw(st.none() | fragments),
        output=draw(st.none() | fragments),
        for_each=draw(st.none() | fragments),
        concurrency=draw(st.integers(1, 100)),
        on_error=on_error,
        fallback=draw(json_values) if on_error == "fallback" else None,
        script_timeout=draw(st.none() | positive),
    )


@st.composite
def process_steps(draw: st.DrawFn, name: str) -> o.ProcessStep:
    """Return a process step with unique processor names and a DAG of needs."""
    proc_names = draw(st.lists(names, min_size=1, max_size=4, unique=True))
    procs = [draw(processors(n, proc_names[:i])) for i, n in enumerate(proc_names)]
    procs = draw(st.permutations(procs))
    return o.ProcessStep(name=name, processors=tuple(procs), when=draw(st.none() | fragments))


durations = st.sampled_from(["P5D", "PT30M", "P1DT12H", "PT0.5S", "P2W", "PT1H30M"])


@st.composite
def resume_steps(draw: st.DrawFn, name: str, step_names: list[str]) -> o.ResumeStep:
    """Return a resume step whose timeout settings are consistent."""
    on_timeout: Any = draw(st.sampled_from(["fail", "continue", "goto"]))
    timeout = draw(durations) if on_timeout != "fail" else draw(st.none() | durations)
    return o.ResumeStep(
        name=name,
        event=draw(names),
        key=draw(fragments),
        event_key=draw(st.none() | fragments),
        timeout=timeout,
        on_timeout=on_timeout,
        default=draw(json_values) if on_timeout == "continue" else None,
        goto=draw(st.sampled_from(step_names)) if on_timeout == "goto" else None,
    )


events = st.builds(
    o.Event,
    name=names,
    schema=st.none() | json_objects,
    key=st.none() | fragments,
)

trigger_paths = st.lists(segments | path_params, max_size=3).map(lambda ps: "/" + "/".join(ps))
triggers = st.none() | st.one_of(
    st.builds(o.RequestTrigger, path=trigger_paths, method=st.sampled_from(sorted(HTTP_METHODS))),
    events,
)


@st.composite
def processes(draw: st.DrawFn) -> o.Process:
    """Return a valid process of any shape."""
    step_names = draw(st.lists(names, min_size=1, max_size=4, unique=True))
    steps: list[Any] = [
        draw(resume_steps(n, step_names) if draw(st.booleans()) else process_steps(n))
        for n in step_names
    ]
    declared = draw(st.lists(events, max_size=3, unique_by=lambda e: e.name))
    return o.Process(
        name=draw(names),
        steps=tuple(steps),
        trigger=draw(triggers),
        output=draw(st.none() | fragments),
        events=tuple(declared),
        description=draw(st.none() | st.text(max_size=20)),
    )
