"""The read-only admin pages render for a superuser, refuse writes, and their actions go
through runledger: cancel and requeue jobs, cancel runs, pause and resume schedules."""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

import runledger
from runledger.contrib import django as rl
from runledger.core.progress import progress_json


@pytest.fixture
def client() -> Any:
    """A test client logged in as a superuser."""
    from django.contrib.auth.models import User
    from django.test import Client

    user, created = User.objects.get_or_create(
        username="admin", defaults={"is_staff": True, "is_superuser": True}
    )
    if created:
        user.set_password("admin")
        user.save()
    browser = Client()
    browser.force_login(user)
    return browser


@pytest.fixture
def ledger(observer: psycopg.Connection[Any]) -> dict[str, Any]:
    """A job, a workflow run with its steps, and a schedule."""
    workflow = (
        runledger.WorkflowBuilder("rltest.admin-flow")
        .step("first").job("rltest.echo").payload({"n": 1})
        .step("approve").after("first").external()
        .build()
    )  # fmt: skip
    job_id = rl.enqueue("rltest.echo", {"shown": "in the admin"}, queue="default")
    run_id = rl.enqueue_workflow(workflow)
    runledger.upsert_schedule(
        observer,
        runledger.ScheduleSpec(name="rltest-hourly", cron="0 * * * *", job_type="rltest.echo"),
    )
    return {"job": job_id, "run": run_id, "schedule": "rltest-hourly"}


def action(client: Any, url: str, name: str, *keys: object) -> Any:
    return client.post(
        url,
        {"action": name, "_selected_action": [str(k) for k in keys], "index": 0},
        follow=True,
    )


@pytest.mark.parametrize(
    ("page", "shows"),
    [
        ("/admin/runledger/job/", "rltest.echo"),
        ("/admin/runledger/workflowrun/", "rltest.admin-flow"),
        ("/admin/runledger/workflowsteprun/", "approve"),
        ("/admin/runledger/schedule/", "rltest-hourly"),
        ("/admin/runledger/job/?status__exact=queued&queue=default", "rltest.echo"),
        ("/admin/runledger/job/?q=rltest", "rltest.echo"),
        ("/admin/", "Runledger"),
    ],
)
def test_the_changelists_render(client: Any, ledger: dict[str, Any], page: str, shows: str) -> None:
    response = client.get(page)

    assert response.status_code == 200
    assert shows in response.content.decode()


def test_the_detail_pages_render_read_only_with_attempts_and_steps(
    client: Any,
    ledger: dict[str, Any],
    worker: Callable[..., runledger.Runtime],
    wait_until: Callable[..., None],
    observer: psycopg.Connection[Any],
) -> None:
    worker()
    wait_until(
        lambda: runledger.get_job(observer, ledger["job"]).status == runledger.JobStatus.SUCCEEDED
    )

    job_page = client.get(f"/admin/runledger/job/{ledger['job']}/change/")
    run_page = client.get(f"/admin/runledger/workflowrun/{ledger['run']}/change/")
    schedule_page = client.get("/admin/runledger/schedule/rltest-hourly/change/")

    assert job_page.status_code == 200
    job_html = job_page.content.decode()
    assert "in the admin" in job_html  # the payload
    assert "Job attempts" in job_html or "job attempts" in job_html.lower()
    assert 'name="_save"' not in job_html  # read-only: no save button
    assert run_page.status_code == 200
    run_html = run_page.content.decode()
    assert "first" in run_html
    assert "approve" in run_html
    assert schedule_page.status_code == 200


def test_the_job_pages_show_the_progress_in_one_line(
    client: Any, ledger: dict[str, Any], observer: psycopg.Connection[Any]
) -> None:
    stored = progress_json(
        0.4, note="page 4 of 10", attempt=1, at=datetime.datetime.now(datetime.UTC)
    )
    observer.execute(
        "update runledger.jobs set progress = %s::jsonb where id = %s", (stored, ledger["job"])
    )

    listing = client.get("/admin/runledger/job/").content.decode()
    detail = client.get(f"/admin/runledger/job/{ledger['job']}/change/").content.decode()

    assert "40% page 4 of 10" in listing
    assert "40% page 4 of 10" in detail
    assert "&quot;fraction&quot;: 0.4" in detail  # the stored JSON too


def test_adding_and_deleting_are_refused(client: Any, ledger: dict[str, Any]) -> None:
    assert client.get("/admin/runledger/job/add/").status_code == 403
    assert client.get(f"/admin/runledger/job/{ledger['job']}/delete/").status_code == 403
    assert client.post(f"/admin/runledger/job/{ledger['job']}/change/", {}).status_code == 403


def test_the_models_refuse_to_save_or_delete(ledger: dict[str, Any]) -> None:
    from runledger.contrib.django.models import Job

    job = Job.objects.get(pk=ledger["job"])

    with pytest.raises(TypeError, match="written by runledger only"):
        job.save()
    with pytest.raises(TypeError, match="written by runledger only"):
        job.delete()


def test_the_cancel_action_cancels_the_selected_jobs(
    client: Any, ledger: dict[str, Any], observer: psycopg.Connection[Any]
) -> None:
    other = rl.enqueue("rltest.echo", {})

    response = action(client, "/admin/runledger/job/", "cancel_jobs", ledger["job"])

    assert response.status_code == 200
    assert "1 jobs cancelled" in response.content.decode()
    job = runledger.get_job(observer, ledger["job"])
    assert job.status == runledger.JobStatus.CANCELLED
    assert job.cancel_reason == "cancelled in the Django admin by admin"
    assert runledger.get_job(observer, other).status == runledger.JobStatus.QUEUED

    again = action(client, "/admin/runledger/job/", "cancel_jobs", ledger["job"])
    assert "1 jobs had already finished" in again.content.decode()


def test_cancelling_a_step_job_cascades_through_the_workflow(
    client: Any, ledger: dict[str, Any], observer: psycopg.Connection[Any]
) -> None:
    run = runledger.get_workflow_run(observer, ledger["run"])
    [first] = [s for s in run.steps if s.step_key == "first"]

    action(client, "/admin/runledger/job/", "cancel_jobs", first.job_id)

    run = runledger.get_workflow_run(observer, ledger["run"])
    assert {s.step_key: s.status for s in run.steps} == {
        "first": runledger.StepStatus.CANCELLED,
        "approve": runledger.StepStatus.CANCELLED,
    }


def test_the_requeue_action_requeues_a_cancelled_job_and_refuses_a_step(
    client: Any, ledger: dict[str, Any], observer: psycopg.Connection[Any]
) -> None:
    run = runledger.get_workflow_run(observer, ledger["run"])
    step_job = next(s.job_id for s in run.steps if s.job_id is not None)
    runledger.cancel_job(observer, ledger["job"])
    runledger.cancel_job(observer, step_job)

    response = action(client, "/admin/runledger/job/", "requeue_jobs", ledger["job"], step_job)

    html = response.content.decode()
    assert "1 jobs requeued" in html
    assert "enqueue the workflow again instead" in html
    assert runledger.get_job(observer, ledger["job"]).status == runledger.JobStatus.QUEUED
    assert runledger.get_job(observer, step_job).status == runledger.JobStatus.CANCELLED


def test_the_cancel_runs_action_cancels_the_workflow(
    client: Any, ledger: dict[str, Any], observer: psycopg.Connection[Any]
) -> None:
    response = action(client, "/admin/runledger/workflowrun/", "cancel_runs", ledger["run"])

    assert "1 workflow runs cancelled" in response.content.decode()
    run = runledger.get_workflow_run(observer, ledger["run"])
    assert run.status == runledger.RunStatus.CANCELLED


def test_pause_and_resume_schedules(
    client: Any, ledger: dict[str, Any], observer: psycopg.Connection[Any]
) -> None:
    def enabled() -> bool:
        [schedule] = runledger.list_schedules(observer)
        return schedule.enabled

    action(client, "/admin/runledger/schedule/", "pause_schedules", "rltest-hourly")
    assert not enabled()

    response = action(client, "/admin/runledger/schedule/", "resume_schedules", "rltest-hourly")
    assert "1 schedules resumed" in response.content.decode()
    assert enabled()


def test_a_staff_user_without_permissions_sees_nothing_and_cannot_act(
    ledger: dict[str, Any], observer: psycopg.Connection[Any]
) -> None:
    from django.contrib.auth.models import Permission, User
    from django.test import Client

    viewer, _ = User.objects.get_or_create(username=f"viewer-{uuid.uuid4().hex[:6]}")
    viewer.is_staff = True
    viewer.save()
    browser = Client()
    browser.force_login(viewer)

    assert browser.get("/admin/runledger/job/").status_code == 403

    viewer.user_permissions.add(Permission.objects.get(codename="view_job"))
    viewer = User.objects.get(pk=viewer.pk)  # drop the permission cache
    browser.force_login(viewer)
    page = browser.get("/admin/runledger/job/")
    assert page.status_code == 200
    assert "cancel_jobs" not in page.content.decode()  # the actions need change_job

    action(browser, "/admin/runledger/job/", "cancel_jobs", ledger["job"])
    assert runledger.get_job(observer, ledger["job"]).status == runledger.JobStatus.QUEUED
