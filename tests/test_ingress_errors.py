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
    # raise_server_exceptions (the default): the exception must not reach the
    # server, which would log its message.
    with TestClient(ingress.api) as client:
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


def test_unknown_routes_and_methods_answer_in_the_api_error_shape():
    with TestClient(ingress.api) as client:
        missing = client.post("/v1/nope", json={})
        wrong_method = client.get("/v1/score")
    assert missing.status_code == 404
    assert missing.json() == {"error": "not_found", "message": "no route /v1/nope"}
    assert wrong_method.status_code == 405
    assert wrong_method.json() == {
        "error": "method_not_allowed",
        "message": "GET is not allowed here",
    }
    assert "POST" in wrong_method.headers["allow"]


def test_no_schema_page_and_no_trailing_slash_redirect():
    with TestClient(ingress.api) as client:
        assert client.get("/openapi.json").status_code == 404
        slash = client.post("/v1/score/", json={}, follow_redirects=False)
    assert slash.status_code == 404
    assert slash.json()["error"] == "not_found"


def test_a_number_too_long_to_read_is_an_error_naming_body():
    # json.loads refuses integers of more than 4,300 digits with a ValueError
    # that is not a JSONDecodeError; every route reads its body with _json_body.
    @ingress.api.post("/v1/test-only-echo")
    async def echo(request: ingress.Request):
        body, errors = await ingress._json_body(request)
        return {"body": body, "errors": errors}

    with TestClient(ingress.api) as client:
        r = client.post("/v1/test-only-echo",
                        content='{"amount": ' + "9" * 5000 + "}")
    ingress.api.router.routes.pop()
    assert r.status_code == 200
    [error] = r.json()["errors"]
    assert error["field"] == "body" and "too long" in error["message"]
