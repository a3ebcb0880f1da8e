"""The Cloud Run Admin API v2 over REST: routes, JSON in and out, errors as Google sends them.

The client libraries send `?$alt=json;enum-encoding=int`, so enums travel as integers both
ways; bodies are proto JSON (camelCase). Besides the API there are two routes of our own:
`GET .../revisions/<id>:logs` for a revision's captured output and `GET /localcloud/healthz`.
"""

from __future__ import annotations

import json
import logging
import re
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from google.cloud import run_v2
from google.protobuf import json_format

from localcloud import errors
from localcloud.control import ControlPlane

logger = logging.getLogger(__name__)

_LOCATION = r"/v2/(?P<location>projects/[^/]+/locations/[^/]+)"
_SERVICE = _LOCATION + r"/services/(?P<service>[^/:]+)"
_ROUTES: list[tuple[str, re.Pattern, str]] = [
    (method, re.compile(f"^{pattern}$"), handler)
    for method, pattern, handler in [
        ("GET", _LOCATION + "/services", "list_services"),
        ("POST", _LOCATION + "/services", "create_service"),
        ("GET", _SERVICE, "get_service"),
        ("PATCH", _SERVICE, "update_service"),
        ("DELETE", _SERVICE, "delete_service"),
        ("GET", _SERVICE + "/revisions", "list_revisions"),
        ("GET", _SERVICE + r"/revisions/(?P<revision>[^/:]+):logs", "revision_logs"),
        ("GET", _SERVICE + r"/revisions/(?P<revision>[^/:]+)", "get_revision"),
        ("DELETE", _SERVICE + r"/revisions/(?P<revision>[^/:]+)", "delete_revision"),
        ("GET", _LOCATION + r"/operations/(?P<operation>[^/:]+)", "get_operation"),
        ("GET", "/localcloud/healthz", "healthz"),
    ]
]


class ApiServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], control: ControlPlane):
        super().__init__(address, ApiHandler)
        self.control = control


class ApiHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # the client keeps its connection open between calls
    server_version = "localcloud"
    server: ApiServer

    def do_GET(self) -> None:  # noqa: N802 (names http.server dispatches to)
        self._dispatch()

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch()

    def do_PATCH(self) -> None:  # noqa: N802
        self._dispatch()

    def do_DELETE(self) -> None:  # noqa: N802
        self._dispatch()

    def _dispatch(self) -> None:
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode() if length else ""
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        try:
            for method, pattern, handler in _ROUTES:
                match = pattern.match(url.path)
                if match and method == self.command:
                    status, payload = getattr(self, handler)(match.groupdict(), query, body)
                    self._send(status, payload)
                    return
            raise errors.not_found(f"No route for {self.command} {url.path}")
        except errors.ApiError as exc:
            self._send(exc.http_status, json.dumps(exc.body()))
        except Exception:
            logger.exception("api: %s %s failed", self.command, url.path)
            self._send(500, json.dumps(errors.ApiError("INTERNAL", "internal error").body()))

    def _send(self, status: int, payload: str) -> None:
        data = payload.encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (the base class's name)
        logger.debug("api: %s %s", self.address_string(), format % args)

    # -- handlers: each returns (HTTP status, JSON text) ---------------------------------

    @property
    def control(self) -> ControlPlane:
        return self.server.control

    # TODO: lists ignore page_size and page_token and answer everything in one page; a
    # location with very many services or revisions answers slowly.
    def list_services(self, path: dict, query: dict, body: str) -> tuple[int, str]:
        services = self.control.list_services(path["location"])
        return 200, _json({"services": [_message(run_v2.Service, s) for s in services]})

    def create_service(self, path: dict, query: dict, body: str) -> tuple[int, str]:
        op = self.control.create_service(
            path["location"],
            query.get("serviceId", ""),
            body,
            validate_only=_flag(query, "validateOnly"),
        )
        return 200, _operation(op)

    def get_service(self, path: dict, query: dict, body: str) -> tuple[int, str]:
        service = self.control.get_service(_service_name(path))
        return 200, _json(_message(run_v2.Service, service))

    def update_service(self, path: dict, query: dict, body: str) -> tuple[int, str]:
        op = self.control.update_service(
            _service_name(path),
            body,
            update_mask=query.get("updateMask", ""),
            allow_missing=_flag(query, "allowMissing"),
            validate_only=_flag(query, "validateOnly"),
        )
        return 200, _operation(op)

    def delete_service(self, path: dict, query: dict, body: str) -> tuple[int, str]:
        return 200, _operation(self.control.delete_service(_service_name(path)))

    def list_revisions(self, path: dict, query: dict, body: str) -> tuple[int, str]:
        revisions = self.control.list_revisions(_service_name(path))
        return 200, _json({"revisions": [_message(run_v2.Revision, r) for r in revisions]})

    def get_revision(self, path: dict, query: dict, body: str) -> tuple[int, str]:
        revision = self.control.get_revision(_revision_name(path))
        return 200, _json(_message(run_v2.Revision, revision))

    def delete_revision(self, path: dict, query: dict, body: str) -> tuple[int, str]:
        return 200, _operation(self.control.delete_revision(_revision_name(path)))

    def revision_logs(self, path: dict, query: dict, body: str) -> tuple[int, str]:
        try:
            since = float(query["since"]) if query.get("since") else None
            limit = int(query.get("limit") or 1000)
        except ValueError as exc:
            raise errors.invalid_argument(f"since and limit must be numbers: {exc}") from exc
        entries = self.control.revision_logs(
            _revision_name(path), since, query.get("q") or None, limit
        )
        return 200, _json({"entries": entries})

    def get_operation(self, path: dict, query: dict, body: str) -> tuple[int, str]:
        name = f"{path['location']}/operations/{path['operation']}"
        return 200, _operation(self.control.get_operation(name))

    def healthz(self, path: dict, query: dict, body: str) -> tuple[int, str]:
        return 200, _json({"status": "ok"})


def _service_name(path: dict) -> str:
    return f"{path['location']}/services/{path['service']}"


def _revision_name(path: dict) -> str:
    return f"{_service_name(path)}/revisions/{path['revision']}"


def _flag(query: dict, key: str) -> bool:
    return query.get(key, "").lower() in ("1", "true")


def _message(message_type, message) -> dict:
    return json.loads(message_type.to_json(message, indent=None))


def _operation(op) -> str:
    return json_format.MessageToJson(op, use_integers_for_enums=True, indent=None)


def _json(data: dict) -> str:
    return json.dumps(data)
