import contextlib
import os
import random
import secrets
import signal
import subprocess
import sys
import threading
import time

from django.conf import settings
from django.contrib.auth.models import User
from django.core.management import call_command
from django.core.management.base import BaseCommand
from django.urls import reverse

from dashboard.models import Connection, release_managers_group
from providers import registry
from providers.simulators import SIMULATORS


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)  # the group outlives its leader: reach what is left


def _stop_groups(processes: list[subprocess.Popen], grace: float = 10.0) -> None:
    """SIGTERM every process's group, wait up to `grace` seconds, SIGKILL what remains."""
    for process in processes:
        _signal_group(process, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for process in processes:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
    time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))  # children exiting too
    for process in processes:
        _signal_group(process, signal.SIGKILL)
        process.wait()


class Command(BaseCommand):
    help = ("Start the whole product for a look around: simulators of every provider with "
            "sample data, a Celery worker with beat, and the web server.")

    def add_arguments(self, parser):
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument("--spawn-every", type=float, default=20.0,
                            help="Seconds between new runs appearing in each simulator")
        parser.add_argument("--no-processes", action="store_true",
                            help="Only start the simulators (run web and worker yourself)")

    def handle(self, *args, port, spawn_every, no_processes, **options):
        settings.VAR_DIR.mkdir(parents=True, exist_ok=True)
        call_command("migrate", interactive=False, verbosity=0)
        rng = random.Random(7)
        stop = threading.Event()
        simulators, senders = [], []
        for key, simulator_class in SIMULATORS.items():
            sim = simulator_class(token=secrets.token_urlsafe(16))
            scope = sim.seed_demo(rng)
            sim.start()
            simulators.append(sim)
            connection, _ = Connection.objects.update_or_create(
                name=f"Demo {registry.provider_class(key).label}",
                defaults={"provider": key, "base_url": sim.url, "token": sim.token,
                          "scope": scope, "enabled": True, "next_attempt_at": None,
                          "lease_until": None, "last_error": ""},
            )
            # The simulators announce changes as their platforms do, so the demo is as
            # fresh as a real account with webhooks registered.
            secret = connection.set_webhook_secret()
            Connection.objects.filter(pk=connection.pk).update(webhooks_enabled=True)
            hook = f"http://127.0.0.1:{port}" + reverse("webhook", args=[connection.webhook_key])
            senders.append(sim.send_webhooks(hook, secret, interval=0.5))
            threading.Thread(target=self._spawn, args=(sim, rng, spawn_every, stop),
                             daemon=True).start()
            self.stdout.write(f"Simulator {key} listening on {sim.url}")
        credentials = self._users()

        processes = []
        if not no_processes:
            # Each in a process group of its own, so stopping one stops its children too:
            # the worker's pool and its embedded beat, which would otherwise outlive a
            # worker that died and go on queueing syncs.
            processes = [
                subprocess.Popen([sys.executable, "-m", "celery", "-A", "dashboard", "worker",
                                  "--beat", "--loglevel", "warning", "--concurrency", "2"],
                                 start_new_session=True),
                subprocess.Popen([sys.executable, "manage.py", "runserver", "--noreload",
                                  f"127.0.0.1:{port}"], start_new_session=True),
            ]
        self.stdout.write(self.style.SUCCESS(
            f"\nRunboard is starting at http://127.0.0.1:{port}/\n"
            + "".join(f"  log in as {u} / {p}  ({role})\n" for u, p, role in credentials)
            + "Press Ctrl-C to stop everything.\n"
        ))
        signal.signal(signal.SIGTERM, lambda *a: stop.set())
        try:
            while not stop.is_set():
                if any(p.poll() is not None for p in processes):
                    self.stderr.write("A Runboard process exited; stopping the demo.")
                    break
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
        finally:
            stop.set()
            _stop_groups(processes)
            for sender in senders:
                sender.stop()
            for sim in simulators:
                sim.stop()

    @staticmethod
    def _spawn(sim, rng, every, stop):
        while not stop.wait(every):
            sim.spawn_demo(rng)

    @staticmethod
    def _users():
        managers = release_managers_group()
        credentials = []
        for username, role in (("manager", "release manager"), ("viewer", "read only")):
            password = secrets.token_urlsafe(9)
            user, _ = User.objects.get_or_create(username=username)
            user.set_password(password)
            user.is_staff = user.is_superuser = username == "manager"
            user.save()
            if username == "manager":
                user.groups.add(managers)
            credentials.append((username, password, role))
        return credentials
