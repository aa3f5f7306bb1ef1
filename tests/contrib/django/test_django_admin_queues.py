"""The Queues admin lists each queue's settings with its running and queued jobs, and every
change it makes (pause, resume, limits) goes through runledger's functions: the settings the
claim obeys change and a ``queue.*`` event names the admin user."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest

import runledger
from runledger.contrib import django as rl
from runledger.postgres.attempts import claim

QUEUES = "/admin/runledger/queue/"


@pytest.fixture
def client() -> Any:
    """A test client logged in as the superuser ``ops-admin``."""
    from django.contrib.auth.models import User
    from django.test import Client

    user, created = User.objects.get_or_create(
        username="ops-admin", defaults={"is_staff": True, "is_superuser": True}
    )
    if created:
        user.save()
    browser = Client()
    browser.force_login(user)
    return browser


def action(client: Any, name: str, *queues: str) -> Any:
    return client.post(
        QUEUES, {"action": name, "_selected_action": list(queues), "index": 0}, follow=True
    )


def events(conn: psycopg.Connection[Any], queue: str) -> list[tuple[str, Any]]:
    return [(e.kind, e.data) for e in runledger.list_events(conn, queue=queue)]


def test_the_changelist_shows_settings_with_running_and_queued_jobs(
    client: Any, observer: psycopg.Connection[Any]
) -> None:
    for _ in range(3):
        rl.enqueue("rltest.echo", {}, queue="mail")
    with observer.transaction():
        [claimed] = claim(
            observer, worker="t", queues=["mail"], job_types=["rltest.echo"], limit=1,
            lease_seconds=300,
        )  # fmt: skip
    runledger.set_queue_limits(observer, "mail", concurrency=4, rate=10, per=60)
    runledger.pause_queue(observer, "mail", by="alice")

    html = client.get(QUEUES).content.decode()

    assert ">mail<" in html
    assert "1/4" in html  # running over the concurrency limit
    assert "10/60s" in html
    assert '<td class="field-queued_jobs">2</td>' in html
    assert "alice" in html
    assert "pause_queues" in html
    assert claimed.queue == "mail"


def test_pause_and_resume_actions_call_runledger_and_record_the_user(
    client: Any, observer: psycopg.Connection[Any]
) -> None:
    runledger.set_queue_limits(observer, "mail", concurrency=2)
    runledger.set_queue_limits(observer, "bulk", rate=5)

    paused = action(client, "pause_queues", "mail", "bulk").content.decode()

    assert "2 queues paused" in paused
    assert runledger.queue_settings(observer, "mail").paused
    assert runledger.queue_settings(observer, "mail").paused_by == "ops-admin"
    assert events(observer, "mail")[-1] == (
        "queue.paused",
        {"by": "ops-admin", "reason": "paused in the Django admin"},
    )

    again = action(client, "pause_queues", "mail").content.decode()
    assert "1 queues were already paused" in again
    assert [kind for kind, _ in events(observer, "mail")].count("queue.paused") == 1

    resumed = action(client, "resume_queues", "mail").content.decode()
    assert "1 queues resumed" in resumed
    assert not runledger.queue_settings(observer, "mail").paused
    assert runledger.queue_settings(observer, "bulk").paused
    kind, data = events(observer, "mail")[-1]
    assert (kind, data["by"]) == ("queue.resumed", "ops-admin")


def test_the_change_form_sets_limits_through_set_queue_limits(
    client: Any, observer: psycopg.Connection[Any]
) -> None:
    runledger.set_queue_limits(observer, "mail", concurrency=2, rate=10, per=60, by="setup")

    page = client.get(f"{QUEUES}mail/change/")
    assert page.status_code == 200
    assert 'name="_save"' in page.content.decode()

    response = client.post(
        f"{QUEUES}mail/change/",
        {"paused": "", "concurrency": "5", "rate": "", "per_seconds": "60", "pause_reason": ""},
    )

    assert response.status_code == 302, response.content.decode()[:2000]
    settings = runledger.queue_settings(observer, "mail")
    assert (settings.concurrency, settings.rate, settings.per, settings.paused) == (
        5,
        None,
        None,
        False,
    )
    assert events(observer, "mail")[-1] == (
        "queue.limited",
        {"by": "ops-admin", "concurrency": 5, "rate": None, "per": None},
    )
    assert [kind for kind, _ in events(observer, "mail")] == ["queue.limited", "queue.limited"]


def test_the_change_form_pauses_with_a_reason_without_touching_the_limits(
    client: Any, observer: psycopg.Connection[Any]
) -> None:
    runledger.set_queue_limits(observer, "mail", concurrency=2)

    response = client.post(
        f"{QUEUES}mail/change/",
        {"paused": "on", "concurrency": "2", "rate": "", "per_seconds": "",
         "pause_reason": "provider outage"},
    )  # fmt: skip

    assert response.status_code == 302
    assert runledger.queue_settings(observer, "mail").paused
    assert [kind for kind, _ in events(observer, "mail")] == ["queue.limited", "queue.paused"]
    assert events(observer, "mail")[-1][1] == {"by": "ops-admin", "reason": "provider outage"}


def test_the_add_form_limits_a_queue_that_had_no_settings(
    client: Any, observer: psycopg.Connection[Any]
) -> None:
    rl.enqueue("rltest.echo", {}, queue="reports")

    response = client.post(
        f"{QUEUES}add/",
        {"queue": "reports", "paused": "on", "concurrency": "1", "rate": "3",
         "per_seconds": "", "pause_reason": ""},
    )  # fmt: skip

    assert response.status_code == 302, response.content.decode()[:2000]
    settings = runledger.queue_settings(observer, "reports")
    assert (settings.concurrency, settings.rate, settings.per, settings.paused) == (1, 3, 1.0, True)
    assert [(kind, data["by"]) for kind, data in events(observer, "reports")] == [
        ("queue.limited", "ops-admin"),
        ("queue.paused", "ops-admin"),
    ]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"concurrency": "0"}, "concurrency=0 must be a positive integer or None"),
        ({"rate": "-2"}, "rate=-2 must be a positive integer or None"),
        ({"rate": "5", "per_seconds": "0"}, "per=0.0 must be a number of seconds"),
    ],
)
def test_the_form_refuses_what_set_queue_limits_refuses_writing_nothing(
    client: Any, observer: psycopg.Connection[Any], data: dict[str, str], message: str
) -> None:
    runledger.set_queue_limits(observer, "mail", concurrency=2)
    form = {"paused": "", "concurrency": "2", "rate": "", "per_seconds": "", **data}

    response = client.post(f"{QUEUES}mail/change/", form)

    assert response.status_code == 200  # the form again, with the error
    assert message in response.content.decode()
    assert runledger.queue_settings(observer, "mail").concurrency == 2
    assert len(events(observer, "mail")) == 1


def test_deleting_is_refused_and_the_model_refuses_to_save(
    client: Any, observer: psycopg.Connection[Any]
) -> None:
    from runledger.contrib.django.models import Queue

    runledger.pause_queue(observer, "mail")

    assert client.get(f"{QUEUES}mail/delete/").status_code == 403
    with pytest.raises(TypeError, match="written by runledger only"):
        Queue.objects.get(pk="mail").save()


def test_a_viewer_sees_the_queues_but_cannot_pause_or_change_them(
    observer: psycopg.Connection[Any],
) -> None:
    from django.contrib.auth.models import Permission, User
    from django.test import Client

    runledger.set_queue_limits(observer, "mail", concurrency=2)
    viewer, _ = User.objects.get_or_create(username=f"viewer-{uuid.uuid4().hex[:6]}")
    viewer.is_staff = True
    viewer.save()
    viewer.user_permissions.add(Permission.objects.get(codename="view_queue"))
    browser = Client()
    browser.force_login(User.objects.get(pk=viewer.pk))

    page = browser.get(QUEUES)
    assert page.status_code == 200
    assert "pause_queues" not in page.content.decode()
    action(browser, "pause_queues", "mail")
    denied = browser.post(
        f"{QUEUES}mail/change/",
        {"paused": "on", "concurrency": "9", "rate": "", "per_seconds": ""},
    )

    assert denied.status_code == 403
    settings = runledger.queue_settings(observer, "mail")
    assert (settings.paused, settings.concurrency) == (False, 2)
