import hashlib
import logging
import re
import uuid

from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from django.db import IntegrityError, transaction
from django.http import HttpResponse, JsonResponse

from core import context
from core.api import error_body
from core.models import IdempotencyRecord

logger = logging.getLogger(__name__)

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")

# Only the portal's own files: no inline script, no inline style, no third-party origin.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'self'; "
    "form-action 'self'; frame-ancestors 'none'"
)


def client_ip(request) -> str | None:
    # REMOTE_ADDR only: X-Forwarded-For is trusted only behind a proxy that sets it.
    if getattr(settings, "TRUST_X_FORWARDED_FOR", False):
        forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
        if forwarded:
            return forwarded.split(",")[0].strip()
    return request.META.get("REMOTE_ADDR") or None


class RequestContextMiddleware:
    """A request id (X-Request-ID when sane, else a new one) and the source IP for the audit
    log; the id is echoed in the response."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        incoming = request.headers.get("X-Request-ID", "")
        request_id = incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex
        request.request_id = request_id
        token = context.set_current(context.RequestInfo(request_id, client_ip(request)))
        try:
            response = self.get_response(request)
        finally:
            context.reset(token)
        response["X-Request-ID"] = request_id
        return response


class SecurityHeadersMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        response.setdefault("Content-Security-Policy", CSP)
        response.setdefault("Cross-Origin-Opener-Policy", "same-origin")
        return response


# Reachable without a login: the probes, the login page, static files (served before this).
PUBLIC_URL_NAMES = {"healthz", "readyz", "login"}
# Under /api/ but pages for a browser: they send an anonymous visitor to the login page.
API_PAGE_VIEW_NAMES = {"api:docs"}


class LoginRequiredMiddleware:
    """Every page needs a login. API views (/api/) answer 401 themselves through DRF."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_view(self, request, view_func, view_args, view_kwargs):
        match = request.resolver_match
        if request.path.startswith("/api/") and (
            match is None or match.view_name not in API_PAGE_VIEW_NAMES
        ):
            return None
        if match is not None and match.url_name in PUBLIC_URL_NAMES:
            return None
        if request.user.is_authenticated:
            return None
        # redirect_to_login quotes `next`, so a query string (?status=failed&page=2) survives.
        login = redirect_to_login(request.get_full_path())
        if request.headers.get("HX-Request"):
            # An HTMX poll after the session ended: send the whole page to the login.
            response = HttpResponse(status=401)
            response["HX-Redirect"] = login.url
            return response
        return login


class IdempotencyMiddleware:
    """POST /api/ with an Idempotency-Key: the same key and body replays the first response;
    the same key with another body, or while the first is still running, is a 409."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        key = request.headers.get("Idempotency-Key")
        if request.method != "POST" or not key or not request.path.startswith("/api/"):
            return self.get_response(request)
        if len(key) > 200:
            return JsonResponse(
                error_body(
                    "invalid",
                    "Idempotency-Key is too long.",
                    {"Idempotency-Key": ["Expected at most 200 characters."]},
                ),
                status=400,
            )

        principal = self._principal(request)
        if principal is None:
            return self.get_response(request)  # DRF answers 401
        body = request.body
        request_hash = hashlib.sha256(request.path.encode() + b"\n" + body).hexdigest()

        try:
            # The unique constraint decides the race between two requests with one key.
            with transaction.atomic():
                IdempotencyRecord.objects.create(
                    key=key, principal=principal, request_hash=request_hash, path=request.path
                )
        except IntegrityError:
            existing = IdempotencyRecord.objects.get(principal=principal, key=key)
            if existing.request_hash != request_hash:
                return self._conflict("was used with a different request")
            if existing.status_code is None:
                return self._conflict("belongs to a request still in progress")
            response = HttpResponse(
                bytes(existing.body or b""),
                status=existing.status_code,
                content_type=existing.content_type,
            )
            response["Idempotent-Replayed"] = "true"
            return response

        response = self.get_response(request)
        if response.status_code >= 500 or response.status_code in (401, 429):
            # Not an answer worth replaying: let the client try again with the same key.
            IdempotencyRecord.objects.filter(principal=principal, key=key).delete()
            return response
        if hasattr(response, "render") and not response.is_rendered:
            response.render()
        IdempotencyRecord.objects.filter(principal=principal, key=key).update(
            status_code=response.status_code,
            content_type=response.get("Content-Type", ""),
            body=response.content,
        )
        return response

    @staticmethod
    def _principal(request) -> str | None:
        auth = request.headers.get("Authorization", "")
        if auth:
            return hashlib.sha256(auth.encode()).hexdigest()
        user = getattr(request, "user", None)
        if user is not None and user.is_authenticated:
            return hashlib.sha256(f"user:{user.pk}".encode()).hexdigest()
        return None

    @staticmethod
    def _conflict(why: str) -> JsonResponse:
        return JsonResponse(
            error_body("idempotency_conflict", f"This Idempotency-Key {why}."), status=409
        )
