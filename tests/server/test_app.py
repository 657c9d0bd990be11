"""The application shell: health, OpenAPI, error bodies, size limits, hook points."""

import asyncio
from pathlib import Path

import httpx
import pytest
import schemathesis
from fastapi import APIRouter
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.core.result import Ok
from schemathesis.generation import GenerationMode

from pqcall import __version__
from pqcall.server.app import create_app, describe_validation_error
from pqcall.server.context import AppContext
from pqcall.server.settings import ServerSettings, default_data_dir
from pqcall.signaling.callstate import Action, Party, State, transition

from .conftest import SERVER_NAME, RunningServer, make_settings


@pytest.fixture
def server(shared_server: RunningServer) -> RunningServer:
    """One server for the module: its tests only send requests that change nothing."""
    return shared_server


def test_health(server):
    with server.client() as client:
        answer = client.get("/health")
    assert answer.status_code == 200
    assert answer.json() == {"status": "ok", "version": __version__, "server_name": SERVER_NAME}


def test_openapi(server):
    with server.client() as client:
        spec = client.get("/openapi.json").json()
        assert client.get("/docs").status_code == 200
    assert spec["info"]["title"] == "pqcall signaling server"
    for path in (
        "/register",
        "/users/{name}",
        "/keys/bundle",
        "/presence",
        "/auth/challenge",
        "/auth/login",
        "/auth/logout",
        "/health",
    ):
        assert path in spec["paths"], path
    register = spec["paths"]["/register"]["post"]
    assert register["responses"]["409"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorResponse"
    }
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


# ---------------------------------------------------------------- error bodies


@pytest.mark.parametrize(
    ("request_options", "message"),
    [
        pytest.param(
            {"content": b"{", "headers": {"content-type": "application/json"}},
            "request body is not valid JSON: Expecting property name enclosed in double quotes",
            id="truncated-json",
        ),
        pytest.param(
            {"content": b'{"username": "alice"}'},
            "request body must be JSON (Content-Type: application/json)",
            id="no-content-type",
        ),
        pytest.param({"json": [1]}, "request body must be a JSON object", id="array"),
        pytest.param({}, "request body is missing", id="missing"),
        pytest.param({"json": {}}, "username: field required", id="missing-field"),
        pytest.param(
            {"json": {"username": 5}}, "username: input should be a valid string", id="number"
        ),
        pytest.param(
            {"json": {"username": "alice", "admin": True}},
            "admin: extra inputs are not permitted",
            id="extra-field",
        ),
        pytest.param(
            {"json": {"username": "a"}}, "username: username must be 3 to 32 characters", id="short"
        ),
        pytest.param(
            {"json": {"username": "x" * 200}},
            "username: string should have at most 128 characters",
            id="long",
        ),
    ],
)
def test_malformed_requests(server, request_options, message):
    with server.client() as client:
        answer = client.post("/auth/challenge", **request_options)
    assert answer.status_code == 422
    assert answer.json() == {"error": message}


def test_invalid_utf8_body(server):
    with server.client() as client:
        answer = client.post(
            "/auth/challenge",
            content=b'{"username": "\xff"}',
            headers={"content-type": "application/json"},
        )
    assert answer.status_code in (400, 422)
    assert "error" in answer.json()


def test_several_problems_are_counted(server):
    with server.client() as client:
        answer = client.post("/register", json={"username": "alice"})
    assert answer.json() == {"error": "identity: field required (and 2 more problems)"}


def test_bad_base64(server):
    with server.client() as client:
        body = {"username": "alice", "challenge": "a+b/", "signature": "AA"}
        answer = client.post("/auth/login", json=body)
    assert answer.status_code == 422
    assert answer.json() == {"error": "challenge: not valid base64url without padding"}


def test_unknown_endpoint_and_method(server):
    with server.client() as client:
        missing = client.get("/nope")
        wrong = client.delete("/health")
    assert missing.status_code == 404
    assert missing.json() == {"error": "no such endpoint: GET /nope"}
    assert wrong.status_code == 405
    assert wrong.json() == {"error": "method DELETE is not allowed on /health"}


def test_oversized_body_with_length(server):
    with server.client() as client:
        answer = client.post("/register", content=b"x" * (64 * 1024 + 1))
    assert answer.status_code == 413
    assert answer.json() == {"error": "request body is larger than 65536 bytes"}


def test_oversized_chunked_body(server):
    def chunks():
        for _ in range(20):
            yield b"x" * 8192

    with server.client() as client:
        answer = client.post(
            "/register", content=chunks(), headers={"content-type": "application/json"}
        )
    assert answer.status_code == 413
    assert answer.json() == {"error": "request body is larger than 65536 bytes"}


def test_body_at_the_limit_is_read(start_server):
    with start_server(max_request_bytes=100) as server, server.client() as client:
        answer = client.post("/auth/challenge", json={"username": "a" * 70})
    assert answer.status_code == 422  # parsed, then refused by the schema


# ---------------------------------------------------------------- hook points


class Recorder:
    def __init__(self, name, log):
        self.name = name
        self.log = log

    async def start(self, context: AppContext) -> None:
        assert await context.storage.ping()
        context.extras[self.name] = self
        self.log.append(f"start {self.name}")

    async def stop(self) -> None:
        self.log.append(f"stop {self.name}")


def test_components_start_in_order_and_stop_in_reverse(start_server):
    log: list[str] = []
    with start_server(components=(Recorder("relay", log), Recorder("events", log))) as server:
        assert server.app.state.context.extras["relay"].name == "relay"
        assert log == ["start relay", "start events"]
    assert log == ["start relay", "start events", "stop events", "stop relay"]


def test_extra_routers_and_error_mapping(server_db_url, tmp_path):
    router = APIRouter()

    @router.post("/call/illegal")
    async def illegal() -> dict[str, str]:
        transition(State.ENDED, Action.HANGUP, Party.CALLER)
        return {}

    @router.get("/bug")
    async def bug() -> dict[str, str]:
        raise RuntimeError("secret internal detail")

    settings = make_settings(server_db_url, tmp_path / "data")
    app = create_app(settings, routers=[router])

    async def exercise():
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://test") as client,
        ):
            return await client.post("/call/illegal"), await client.get("/bug")

    illegal_answer, bug_answer = asyncio.run(exercise())
    assert illegal_answer.status_code == 409
    assert illegal_answer.json() == {"error": "caller cannot hangup a call that is ended"}
    assert bug_answer.status_code == 500
    assert bug_answer.json() == {"error": "internal server error"}


def test_describe_validation_error_without_errors():
    assert describe_validation_error([]) == "request is not valid"


# ---------------------------------------------------------------- settings


def test_settings_defaults(tmp_path, monkeypatch):
    monkeypatch.setenv("PQCALL_HOME", str(tmp_path))
    settings = ServerSettings()
    assert settings.host == "0.0.0.0"
    assert settings.port == 5001
    assert settings.data_dir == tmp_path / "server"
    assert settings.db_url == f"sqlite+aiosqlite:///{tmp_path / 'server' / 'pqcall.db'}"
    assert settings.relay_port == settings.relay_udp_port == 5001
    assert settings.ring_timeout_s == 45
    assert settings.token_ttl_s == 3600
    assert settings.challenge_ttl_s == 60
    assert settings.max_request_bytes == 65536
    assert not settings.uses_tls


def test_default_data_dir_without_home(monkeypatch):
    monkeypatch.delenv("PQCALL_HOME", raising=False)
    assert default_data_dir() == Path.home() / ".pqcall" / "server"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        pytest.param(
            {"tls_cert": Path("c.pem")}, "TLS needs both a certificate and a key", id="tls"
        ),
        pytest.param({"server_name": ""}, "server name must be 1 to 64 characters", id="name"),
    ],
)
def test_settings_refuse(tmp_path, options, message):
    with pytest.raises(ValueError, match=message):
        ServerSettings(data_dir=tmp_path, **options)


# ---------------------------------------------------------------- fuzzing


def test_no_input_causes_a_server_error(server, account):
    """Schemathesis: schema-valid and schema-invalid requests to every operation, no 5xx."""
    alice = account("alice")
    schema = schemathesis.openapi.from_url(f"{server.base_url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations() if isinstance(result, Ok)]
    assert len(operations) >= 8
    headers = {"Authorization": f"Bearer {alice.token}"}
    for operation in operations:
        if operation.path == "/auth/logout":
            continue  # it would revoke the token the other operations use
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @settings(
                max_examples=15,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            @given(case=operation.as_strategy(generation_mode=mode))
            def check(case):
                response = case.call(base_url=server.base_url, headers=headers)
                assert response.status_code < 500, (case.method, case.path, response.text)

            try:
                check()
            except Unsatisfiable:
                assert mode is GenerationMode.NEGATIVE  # nothing to break in e.g. GET /health
