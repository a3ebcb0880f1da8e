"""Where the Cloud Run and Cloud Monitoring clients point: Google, or localcloud.

This module is the only place that knows the difference. Everything else receives clients
built here and calls them the same way in both cases.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import grpc
from google.auth.credentials import AnonymousCredentials
from google.cloud import monitoring_v3, run_v2
from google.cloud.monitoring_v3.services.alert_policy_service.transports import (
    AlertPolicyServiceGrpcTransport,
)
from google.cloud.monitoring_v3.services.metric_service.transports import (
    MetricServiceGrpcTransport,
)

logger = logging.getLogger(__name__)

GOOGLE = "google"
LOCALCLOUD = "localcloud"


@dataclass(frozen=True)
class PlatformConfig:
    """The Cloud Run platform an environment deploys to."""

    kind: str  # "google" or "localcloud"
    project: str
    region: str
    run_endpoint: str = ""  # localcloud only: its Cloud Run REST address, http://host:port
    monitoring_endpoint: str = ""  # localcloud only: its Monitoring gRPC address, host:port

    def __post_init__(self) -> None:
        if self.kind not in (GOOGLE, LOCALCLOUD):
            raise ValueError(
                f"platform kind must be {GOOGLE!r} or {LOCALCLOUD!r}, not {self.kind!r}"
            )
        if not self.project or not self.region:
            raise ValueError(f"{self.kind} platform needs a project and a region")
        if self.kind == LOCALCLOUD and not (self.run_endpoint or self.monitoring_endpoint):
            raise ValueError("localcloud platform needs run_endpoint and/or monitoring_endpoint")

    @property
    def is_local(self) -> bool:
        return self.kind == LOCALCLOUD

    @property
    def project_name(self) -> str:
        """`projects/P`, the parent of Monitoring resources."""
        return f"projects/{self.project}"

    @property
    def location_name(self) -> str:
        """`projects/P/locations/R`, the parent of Cloud Run services."""
        return f"projects/{self.project}/locations/{self.region}"

    def service_name(self, service: str) -> str:
        return f"{self.location_name}/services/{service}"

    def revision_name(self, service: str, revision: str) -> str:
        return f"{self.service_name(service)}/revisions/{revision}"

    @property
    def run_http_base(self) -> str:
        """localcloud's Cloud Run address with a scheme, for requests outside the client."""
        endpoint = self.run_endpoint
        return endpoint if "://" in endpoint else f"http://{endpoint}"


def _require_endpoint(config: PlatformConfig, endpoint: str, what: str) -> None:
    if not endpoint:
        raise ValueError(f"localcloud platform for project {config.project}: {what} is not set")


def _grpc_target(endpoint: str) -> str:
    # A gRPC target has no scheme; accept http://host:port too, as people write it.
    return endpoint.split("://", 1)[-1].rstrip("/")


def services_client(config: PlatformConfig) -> run_v2.ServicesClient:
    """Cloud Run Services client: Google with Application Default Credentials, or localcloud."""
    if config.kind == GOOGLE:
        return run_v2.ServicesClient()
    _require_endpoint(config, config.run_endpoint, "run_endpoint")
    return run_v2.ServicesClient(
        transport="rest",
        credentials=AnonymousCredentials(),
        client_options={"api_endpoint": config.run_http_base},
    )


def revisions_client(config: PlatformConfig) -> run_v2.RevisionsClient:
    """Cloud Run Revisions client, built like services_client."""
    if config.kind == GOOGLE:
        return run_v2.RevisionsClient()
    _require_endpoint(config, config.run_endpoint, "run_endpoint")
    return run_v2.RevisionsClient(
        transport="rest",
        credentials=AnonymousCredentials(),
        client_options={"api_endpoint": config.run_http_base},
    )


def metric_client(config: PlatformConfig) -> monitoring_v3.MetricServiceClient:
    """Cloud Monitoring MetricService client (gRPC: the Python client has no REST transport)."""
    if config.kind == GOOGLE:
        return monitoring_v3.MetricServiceClient()
    _require_endpoint(config, config.monitoring_endpoint, "monitoring_endpoint")
    channel = grpc.insecure_channel(_grpc_target(config.monitoring_endpoint))
    return monitoring_v3.MetricServiceClient(transport=MetricServiceGrpcTransport(channel=channel))


def alert_policy_client(config: PlatformConfig) -> monitoring_v3.AlertPolicyServiceClient:
    """Cloud Monitoring AlertPolicyService client, built like metric_client."""
    if config.kind == GOOGLE:
        return monitoring_v3.AlertPolicyServiceClient()
    _require_endpoint(config, config.monitoring_endpoint, "monitoring_endpoint")
    channel = grpc.insecure_channel(_grpc_target(config.monitoring_endpoint))
    return monitoring_v3.AlertPolicyServiceClient(
        transport=AlertPolicyServiceGrpcTransport(channel=channel)
    )
