"""The arrival watcher on a real Redis, through the keyspace notifications the managed Redis has on
(`notify-keyspace-events Kl`): a message landing on a queue at zero wakes its watchers at once; a
busy queue wakes them once its backlog has grown by the threshold they set, sends less takes."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

import celery
import pytest
import redis

from celery_operator.broker.arrivals import ArrivalWatcher
from tests.helpers.brokers import arrival_subscriptions
from tests.helpers.waiting import wait_for

pytestmark = pytest.mark.integration


class Arrivals:
    def __init__(self) -> None:
        self.users: queue.Queue[str] = queue.Queue()
        self.thread_names: set[str] = set()

    def __call__(self, user: str) -> None:
        self.thread_names.add(threading.current_thread().name)
        self.users.put(user)

    def next(self, timeout: float = 5) -> str:
        return self.users.get(timeout=timeout)

    def drain(self) -> set[str]:
        users = set()
        while not self.users.empty():
            users.add(self.users.get_nowait())
        return users

    def none_within(self, seconds: float) -> bool:
        try:
            self.users.get(timeout=seconds)
        except queue.Empty:
            return True
        return False


def send(url: str, queue_name: str, **options: object) -> None:
    producer = celery.Celery(broker=url)
    with producer.connection_for_write() as connection:
        producer.send_task("myapp.tasks.add", args=[1, 2], queue=queue_name, connection=connection, **options)


def subscribe(watching: ArrivalWatcher, arrivals: Arrivals, url: str, growth: int = 1) -> None:
    """`tq` watches `jobs` for this growth; returns once subscribed and past the subscription's own
    wake-up (the scaler then reads what landed before it started)."""
    watching.watch("tq", {"jobs": growth})
    wait_for(lambda: arrival_subscriptions(url) == 1, 5, "the queue subscribed")
    assert arrivals.next() == "tq"


@pytest.fixture
def notifying_url(redis_url: str) -> str:
    redis.Redis.from_url(redis_url).config_set("notify-keyspace-events", "Kl")
    return redis_url


@pytest.fixture
def watcher(notifying_url: str) -> Iterator[tuple[ArrivalWatcher, Arrivals]]:
    arrivals = Arrivals()
    watching = ArrivalWatcher(notifying_url, arrivals, timeout=2)
    watching.start()
    yield watching, arrivals
    watching.stop()


def test_a_message_on_a_watched_queue_wakes_its_watchers_only(watcher: tuple[ArrivalWatcher, Arrivals],
                                                               notifying_url: str) -> None:
    watching, arrivals = watcher
    watching.watch("tq-a", {"jobs": 1})
    watching.watch("tq-b", {"other": 1})
    wait_for(lambda: arrival_subscriptions(notifying_url) == 2, 5, "both queues subscribed")
    # a new subscription wakes its watcher once: the scaler then reads what landed before it started
    woken: set[str] = set()
    wait_for(lambda: woken.update(arrivals.drain()) or woken == {"tq-a", "tq-b"}, 5, "both watchers woken once")

    send(notifying_url, "jobs")
    assert arrivals.next() == "tq-a"
    assert arrivals.none_within(0.5), "tq-b watches another queue"
    assert arrivals.thread_names and threading.current_thread().name not in arrivals.thread_names

    send(notifying_url, "jobs2")  # shares the prefix of a watched queue, is not it
    assert arrivals.none_within(0.5)


def test_priority_lists_count_as_the_queue(watcher: tuple[ArrivalWatcher, Arrivals], notifying_url: str) -> None:
    watching, arrivals = watcher
    subscribe(watching, arrivals, notifying_url)
    send(notifying_url, "jobs", priority=9)
    assert redis.Redis.from_url(notifying_url).llen("jobs\x06\x169") == 1, "landed on a priority list"
    assert arrivals.next() == "tq"


def test_a_queue_no_longer_watched_is_unsubscribed(watcher: tuple[ArrivalWatcher, Arrivals],
                                                    notifying_url: str) -> None:
    watching, arrivals = watcher
    watching.watch("tq", {"jobs": 1})
    wait_for(lambda: arrival_subscriptions(notifying_url) == 1, 5, "the queue subscribed")
    watching.watch("tq", {})
    wait_for(lambda: arrival_subscriptions(notifying_url) == 0, 5, "the subscription dropped")
    arrivals.drain()
    send(notifying_url, "jobs")
    assert arrivals.none_within(0.5)


def test_a_busy_queue_wakes_its_watcher_once_the_backlog_grows_by_the_threshold(
        watcher: tuple[ArrivalWatcher, Arrivals], notifying_url: str) -> None:
    watching, arrivals = watcher
    subscribe(watching, arrivals, notifying_url, growth=3)
    send(notifying_url, "jobs")
    send(notifying_url, "jobs")
    assert arrivals.none_within(0.5), "two messages stay within what the workers take"
    send(notifying_url, "jobs")
    assert arrivals.next() == "tq"
    send(notifying_url, "jobs")
    assert arrivals.none_within(0.5), "woken once: the tick it wakes sets the next threshold"
    watching.watch("tq", {"jobs": 1})
    send(notifying_url, "jobs")
    assert arrivals.next() == "tq", "counting starts afresh at every watch"


def test_messages_taken_by_workers_do_not_count_as_growth(watcher: tuple[ArrivalWatcher, Arrivals],
                                                          notifying_url: str) -> None:
    """A steady stream the workers keep up with never wakes the scaler: each send is matched by a take."""
    watching, arrivals = watcher
    subscribe(watching, arrivals, notifying_url, growth=2)
    worker = redis.Redis.from_url(notifying_url)
    for _ in range(5):
        send(notifying_url, "jobs")
        assert worker.brpop(["jobs"], timeout=2) is not None, "a worker takes it (kombu consumes with BRPOP)"
    assert arrivals.none_within(0.5)
    send(notifying_url, "jobs")
    send(notifying_url, "jobs")
    assert arrivals.next() == "tq"


def test_without_keyspace_notifications_nothing_arrives(redis_url: str) -> None:
    """An external Redis without notify-keyspace-events: no wake-up, the poll alone finds the message."""
    arrivals = Arrivals()
    watching = ArrivalWatcher(redis_url, arrivals, timeout=2)
    watching.start()
    try:
        subscribe(watching, arrivals, redis_url)
        send(redis_url, "jobs")
        assert arrivals.none_within(0.5)
    finally:
        watching.stop()


def test_the_watcher_resubscribes_after_the_connection_drops(watcher: tuple[ArrivalWatcher, Arrivals],
                                                              notifying_url: str) -> None:
    watching, arrivals = watcher
    subscribe(watching, arrivals, notifying_url)
    admin = redis.Redis.from_url(notifying_url)
    before = {client["id"] for client in admin.client_list(_type="pubsub")}
    admin.client_kill_filter(_type="pubsub")
    wait_for(lambda: (now := {client["id"] for client in admin.client_list(_type="pubsub")}) and not now & before
             and arrival_subscriptions(notifying_url) == 1, 15, "a new subscription")
    assert arrivals.next() == "tq", "resubscribing wakes the watcher: messages may have landed meanwhile"
    send(notifying_url, "jobs")
    assert arrivals.next() == "tq"
