import re
from datetime import time

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from core.models import AuditEvent
from environments import services
from environments.models import ConfigVar, Environment, FreezeWindow, Secret


def html(response) -> str:
    return response.content.decode()


# The list


def test_the_list_shows_each_environment_with_badges_and_counts(
    staging, production, system_actor, freeze, victor, client_for
):
    services.set_config(system_actor, staging, {"A": "1", "B": "2"})
    services.set_secret(system_actor, staging, "TOKEN", "t")
    freeze(staging)

    response = client_for(victor).get("/environments/")

    assert response.status_code == 200
    page = html(response)
    assert "<h1>Environments</h1>" in page
    assert 'class="breadcrumb"' in page
    assert '<span class="badge protected">protected</span>' in page
    assert "frozen now" in page
    assert "<td>2</td>" in page and "<td>1</td>" in page
    assert "New environment" not in page  # admins only


def test_the_list_says_what_to_do_when_empty(db, alice, victor, client_for):
    assert "Create the first one" in html(client_for(alice).get("/environments/"))
    assert "Ask an admin" in html(client_for(victor).get("/environments/"))


def test_the_list_takes_the_same_queries_for_3_or_30_environments(
    db, system_actor, alice, client_for
):
    client = client_for(alice)

    def count_queries() -> int:
        with CaptureQueriesContext(connection) as queries:
            assert client.get("/environments/").status_code == 200
        return len(queries)

    def add(numbers) -> None:
        for i in numbers:
            env = services.create_environment(system_actor, f"env-{i}", order=i + 1)
            services.set_config(system_actor, env, {"A": "1"})
            services.set_secret(system_actor, env, "S", "s")
            services.add_freeze_window(
                system_actor, env, "quiet", weekday=i % 7, start_time=time(0), end_time=time(23)
            )

    add(range(3))
    few = count_queries()
    add(range(3, 30))
    assert html(client.get("/environments/")).count("/environments/env-") == 30
    assert count_queries() == few


# The detail page and its forms


def test_the_detail_page_shows_config_secrets_and_freezes(
    staging, production, system_actor, freeze, oscar, client_for
):
    services.set_config(system_actor, staging, {"LOG_LEVEL": "info"})
    services.set_secret(system_actor, staging, "DB_PASSWORD", "pw-value")
    freeze(staging, "launch week")

    page = html(client_for(oscar).get("/environments/staging/"))

    assert "<code>LOG_LEVEL</code>" in page and "<code>info</code>" in page
    assert "<code>DB_PASSWORD</code>" in page and "v1" in page
    assert "launch week" in page
    assert "Compare with production" in page
    assert "Promote config to production" in page
    assert 'name="value"' in page and 'type="password"' in page
    assert "Lift" not in page  # lifting a freeze is an admin's call
    assert "Edit environment" not in page


def test_a_viewer_sees_no_edit_forms_and_posts_get_403(staging, victor, client_for):
    client = client_for(victor)

    page = html(client.get("/environments/staging/"))

    assert "<form" not in page.split("</nav>", 1)[1]  # only the logout form, in the nav
    for url, body in [
        ("/environments/staging/config/", {"key": "A", "value": "1"}),
        ("/environments/staging/secrets/", {"name": "A", "value": "1"}),
        ("/environments/staging/freeze-windows/", {"reason": "x"}),
    ]:
        response = client.post(url, body)
        assert response.status_code == 403
        assert "Not allowed" in html(response)
    assert client.get("/environments/new/").status_code == 403
    assert client.get("/environments/promote/").status_code == 403
    assert not ConfigVar.objects.exists()


def test_an_unknown_environment_is_404(db, victor, client_for):
    assert client_for(victor).get("/environments/nowhere/").status_code == 404


def test_the_config_form_sets_and_removes_a_variable(staging, oscar, client_for):
    client = client_for(oscar)

    response = client.post("/environments/staging/config/", {"key": "LOG_LEVEL", "value": "info"})
    assert response.status_code == 302
    assert response["Location"] == "/environments/staging/#config"
    assert services.resolve_config(staging) == {"LOG_LEVEL": "info"}

    edit = html(client.get("/environments/staging/?key=LOG_LEVEL&service="))
    assert re.search(r'<input type="text" name="value" value="info"[^>]*id="config-value"', edit)

    client.post("/environments/staging/config/", {"key": "LOG_LEVEL", "remove": "on"})
    assert services.resolve_config(staging) == {}


def test_a_bad_config_form_shows_the_error_next_to_the_field(staging, oscar, client_for):
    response = client_for(oscar).post(
        "/environments/staging/config/", {"key": "log-level", "value": "x", "service": "Web"}
    )

    assert response.status_code == 400
    page = html(response)
    assert 'id="config-key-error">Expected UPPER_SNAKE_CASE' in page
    assert 'id="config-service-error">Expected a service name' in page
    assert not ConfigVar.objects.exists()


def test_a_freeze_blocks_the_operators_form_and_asks_the_admin_for_a_reason(
    staging, freeze, oscar, alice, client_for
):
    freeze(staging, "launch week")
    body = {"key": "LOG_LEVEL", "value": "debug"}

    refused = client_for(oscar).post("/environments/staging/config/", body)
    assert refused.status_code == 400
    assert "staging is frozen" in html(refused)
    assert "launch week" in html(refused)

    no_reason = client_for(alice).post("/environments/staging/config/", body)
    assert no_reason.status_code == 400
    assert 'id="config-override_reason-error">Required during a freeze window.' in html(no_reason)

    ok = client_for(alice).post(
        "/environments/staging/config/", {**body, "override_reason": "hotfix"}
    )
    assert ok.status_code == 302
    assert AuditEvent.objects.get(action="config.set").summary["freeze_override"] == "hotfix"


def test_an_operator_gets_no_config_form_on_a_protected_environment(
    production, oscar, alice, client_for
):
    page = html(client_for(oscar).get("/environments/production/"))
    assert "production is protected" in page
    assert 'action="/environments/production/config/"' not in page

    crafted = client_for(oscar).post("/environments/production/config/", {"key": "A", "value": "1"})
    assert crafted.status_code == 400
    assert "production is protected" in html(crafted)

    admin = client_for(alice).post("/environments/production/config/", {"key": "A", "value": "1"})
    assert admin.status_code == 302


def test_the_secret_form_sets_a_new_version(staging, oscar, client_for):
    client = client_for(oscar)

    client.post("/environments/staging/secrets/", {"name": "DB_PASSWORD", "value": "first"})
    response = client.post(
        "/environments/staging/secrets/", {"name": "DB_PASSWORD", "value": "2nd"}
    )

    assert response.status_code == 302
    assert Secret.objects.get().version == 2
    assert "secret DB_PASSWORD set (version 2)" in html(client.get(response["Location"]))
    missing = client.post("/environments/staging/secrets/", {"name": "OTHER"})
    assert missing.status_code == 400
    assert 'id="secret-value-error">Enter the new value' in html(missing)


def test_freeze_windows_are_added_and_lifted_through_forms(staging, oscar, alice, client_for):
    bad = client_for(oscar).post(
        "/environments/staging/freeze-windows/",
        {"reason": "launch", "starts_at": "2031-05-02T08:00", "ends_at": "2031-05-01T08:00"},
    )
    assert bad.status_code == 400
    assert 'id="freeze-ends_at-error">Expected a time after starts_at.' in html(bad)

    ok = client_for(oscar).post(
        "/environments/staging/freeze-windows/",
        {"reason": "Friday", "weekday": "4", "start_time": "15:00", "end_time": "23:00"},
    )
    assert ok.status_code == 302
    window = FreezeWindow.objects.get()
    assert window.describe() == "every Fri 15:00–23:00 UTC"

    url = f"/environments/staging/freeze-windows/{window.pk}/remove/"
    assert client_for(oscar).post(url).status_code == 403
    assert client_for(alice).post(url, {"reason": "done"}).status_code == 302
    assert not FreezeWindow.objects.exists()


# Creating and editing environments


def test_an_admin_creates_and_edits_an_environment(db, alice, client_for):
    client = client_for(alice)
    assert "New environment" in html(client.get("/environments/new/"))

    response = client.post(
        "/environments/new/", {"name": "qa", "order": "", "platform": "localcloud", "region": "r1"}
    )
    assert response.status_code == 302, html(response)
    assert Environment.objects.get(name="qa").order == 10

    bad = client.post("/environments/new/", {"name": "QA!", "platform": "aws", "region": "r1"})
    assert bad.status_code == 400
    assert 'id="id_name-error"' in html(bad) and 'id="id_platform-error"' in html(bad)

    reserved = client.post(
        "/environments/new/", {"name": "parity", "platform": "localcloud", "region": "r"}
    )
    assert reserved.status_code == 400
    assert "Choose a name other than" in html(reserved)

    edited = client.post(
        "/environments/qa/edit/",
        {"order": "15", "platform": "google", "region": "europe-west1", "protected": "on"},
    )
    assert edited.status_code == 302
    qa = Environment.objects.get(name="qa")
    assert (qa.order, qa.platform, qa.protected) == (15, "google", True)


def test_an_operator_cannot_create_or_edit_environments(staging, oscar, client_for):
    client = client_for(oscar)
    assert client.get("/environments/new/").status_code == 403
    assert client.post("/environments/staging/edit/", {"order": "5"}).status_code == 403


# Parity


def test_the_parity_page_colours_each_difference(
    staging, production, system_actor, victor, client_for
):
    services.set_config(system_actor, staging, {"LOG_LEVEL": "debug", "ONLY_STAGING": "1"})
    services.set_config(system_actor, production, {"LOG_LEVEL": "warning", "ONLY_PROD": "1"})
    services.set_secret(system_actor, production, "API_KEY", "k")

    response = client_for(victor).get("/environments/parity/?a=staging&b=production")

    page = html(response)
    assert response.status_code == 200
    assert "<h1>Parity: staging and production</h1>" in page
    # Each count includes the legend's sample.
    assert page.count('class="diff-changed"') == 1 + 1
    assert page.count('class="diff-removed"') == 1 + 1
    assert page.count('class="diff-added"') == 2 + 1
    assert "<code>debug</code>" in page and "<code>warning</code>" in page
    assert "<code>v1</code>" in page


def test_the_parity_page_offers_a_choice_first_and_names_a_bad_one(
    staging, production, victor, client_for
):
    client = client_for(victor)

    first = html(client.get("/environments/parity/"))
    assert "Choose two environments and press Compare." in first
    assert '<option value="staging" selected>' in first

    bad = client.get("/environments/parity/?a=nowhere&b=production")
    assert bad.status_code == 400
    assert "Select a valid choice" in html(bad)


# Promotion


@pytest.fixture
def promotable(staging, production, system_actor):
    services.set_config(system_actor, staging, {"LOG_LEVEL": "info", "WORKERS": "4"})
    services.set_config(system_actor, production, {"LOG_LEVEL": "warning"})


def test_promotion_previews_then_applies(promotable, staging, production, alice, client_for):
    client = client_for(alice)

    chooser = html(client.get("/environments/promote/?source=staging&target=production"))
    assert 'name="keys" value="LOG_LEVEL"' in chooser and 'name="keys" value="WORKERS"' in chooser

    body = {"source": "staging", "target": "production", "keys": ["LOG_LEVEL", "WORKERS"]}
    preview = client.post("/environments/promote/", {**body, "step": "preview"})
    page = html(preview)
    assert preview.status_code == 200
    assert "<code>warning</code>" in page and "<code>info</code>" in page
    assert "<em>not set</em>" in page
    assert "Apply 2 changes to production" in page
    assert services.resolve_config(production) == {"LOG_LEVEL": "warning"}

    applied = client.post("/environments/promote/", {**body, "step": "apply"})
    assert applied.status_code == 302
    assert applied["Location"] == "/environments/production/#config"
    assert services.resolve_config(production) == {"LOG_LEVEL": "info", "WORKERS": "4"}


def test_the_promote_page_refreshes_its_keys_with_htmx(promotable, oscar, client_for):
    response = client_for(oscar).get(
        "/environments/promote/?source=staging&service=", HTTP_HX_REQUEST="true"
    )

    page = html(response)
    assert page.startswith('<fieldset id="promote-keys">')
    assert 'value="WORKERS"' in page


def test_a_bad_promotion_shows_errors_next_to_the_fields(promotable, alice, client_for):
    response = client_for(alice).post(
        "/environments/promote/",
        {"source": "staging", "target": "staging", "keys": ["LOG_LEVEL"], "step": "preview"},
    )
    assert response.status_code == 400
    assert "Choose an environment other than the source." in html(response)

    no_keys = client_for(alice).post(
        "/environments/promote/", {"source": "staging", "target": "production", "step": "preview"}
    )
    assert no_keys.status_code == 400
    assert "This field is required." in html(no_keys)


def test_promotion_into_a_frozen_target_asks_the_admin_for_a_reason_on_the_preview(
    promotable, staging, system_actor, freeze, alice, oscar, client_for
):
    qa = services.create_environment(system_actor, "qa", order=25)
    freeze(qa, "launch week")
    body = {"source": "staging", "target": "qa", "keys": ["WORKERS"], "step": "apply"}

    operator_preview = html(
        client_for(oscar).post("/environments/promote/", {**body, "step": "preview"})
    )
    assert "Only an admin can apply this" in operator_preview
    assert 'value="apply"' not in operator_preview

    no_reason = client_for(alice).post("/environments/promote/", body)
    assert no_reason.status_code == 400
    assert 'id="promote-override-error">Required during a freeze window.' in html(no_reason)
    assert services.resolve_config(qa) == {}

    ok = client_for(alice).post("/environments/promote/", {**body, "override_reason": "launch fix"})
    assert ok.status_code == 302
    assert services.resolve_config(qa) == {"WORKERS": "4"}
