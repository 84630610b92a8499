"""The ingress's error answers for what no route handles itself (no Ray needed:
the FastAPI app is exercised in process with Starlette's test client)."""

from __future__ import annotations

from fastapi.testclient import TestClient

from services import ingress


def _failed(route: str) -> float:
    value = ingress._metrics().registry.get_sample_value(
        "fraudmesh_failed_requests_total", {"route": route}
    )
    return value or 0.0


def test_an_unexpected_error_is_a_counted_json_500():
    @ingress.api.get("/v1/test-only-boom")
    async def boom():
        raise RuntimeError("card 4242 4242 4242 4242 in a message")

    before = _failed("other")
    with TestClient(ingress.api, raise_server_exceptions=False) as client:
        r = client.get("/v1/test-only-boom")
    ingress.api.router.routes.pop()  # the route exists for this test only
    assert r.status_code == 500
    assert r.json() == {
        "error": "internal",
        "message": "unexpected error; see the log",
    }
    assert "4242" not in r.text
    assert _failed("other") == before + 1


def test_a_body_above_the_limit_is_413_naming_body(monkeypatch):
    monkeypatch.setattr(ingress, "MAX_BODY_BYTES", 10)

    @ingress.api.post("/v1/test-only-echo")
    async def echo(request: ingress.Request):
        body, errors = await ingress._json_body(request)
        return {"body": body, "errors": errors}

    with TestClient(ingress.api) as client:
        r = client.post("/v1/test-only-echo", content=b'{"x": "0123456789"}')
        small = client.post("/v1/test-only-echo", content=b"[[1]]")
    ingress.api.router.routes.pop()
    assert r.status_code == 413
    assert r.json()["errors"] == [{"field": "body", "message": "larger than 10 bytes"}]
    assert small.json() == {"body": [[1]], "errors": None}
